//! A 3×3 "same" convolution of channels-last images as one fused CPU kernel with its own
//! gradient, for the U-Net.
//!
//! Why not im2col + candle's matmul (what the TransUNet's convolutions do): the column matrix of
//! a full-resolution layer is 9× the activation (75 MB for a batch of 8 at 128² with 16
//! channels), allocated, zero-filled by the kernel on first touch and read back once; on the
//! reference machine half of a training step went to page faults, `memset` and `memmove`,
//! and less than a third to the matrix products. Here each task builds the columns of a block
//! of image rows in a reused thread-local buffer and multiplies it at once, so the columns
//! never leave the cache:
//! - forward: `y = cols(x) · W` per block;
//! - input gradient: a 3×3 convolution of `dy` with the spatially flipped, transposed kernel
//!   (the same forward routine, no scatter);
//! - weight gradient: `Σ_blocks cols(x)ᵀ · dy`, one partial sum per block, added in block
//!   order so the result does not depend on the number of threads.
//!
//! The weight is the (9·C, O) matrix whose rows are ordered (ky, kx, c). Other devices and
//! dtypes fall back to im2col + matmul ([`super::ops::im2col3`]), which has gradients everywhere.

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;
use std::cell::RefCell;

type CResult<T> = candle_core::Result<T>;

/// Pixels per task: large enough for an efficient matrix product, small enough that the
/// columns (pixels × 9C floats) stay in cache.
const BLOCK_PIXELS: usize = 1024;

thread_local! {
    static COLS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

fn slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> CResult<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        return Err(candle_core::Error::Msg(format!(
            "conv3x3: {what} must be f32"
        )));
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => Err(candle_core::Error::Msg(format!(
            "conv3x3: {what} must be contiguous"
        ))),
    }
}

/// Rows of image rows per task for width `w`.
fn block_rows(w: usize) -> usize {
    (BLOCK_PIXELS / w.max(1)).max(1)
}

/// The 3×3 neighbourhoods (zero-padded) of image rows `r0..r1` of one (h, w, c) image into
/// `cols`, one row of 9c per pixel, ordered (ky, kx, c).
fn im2col_rows(img: &[f32], h: usize, w: usize, c: usize, r0: usize, r1: usize, cols: &mut [f32]) {
    let row_len = w * c;
    for y in r0..r1 {
        let out_row = &mut cols[(y - r0) * w * 9 * c..(y - r0 + 1) * w * 9 * c];
        for ky in 0..3 {
            // Source row y + ky − 1; outside the image the neighbourhood is zeros.
            let src = (y + ky).checked_sub(1).filter(|&sy| sy < h);
            for x in 0..w {
                let dst = &mut out_row[x * 9 * c + ky * 3 * c..x * 9 * c + (ky + 1) * 3 * c];
                let Some(sy) = src else {
                    dst.fill(0.0);
                    continue;
                };
                let line = &img[sy * row_len..(sy + 1) * row_len];
                // Pixels x − 1, x, x + 1 are contiguous in the source and the destination.
                if x >= 1 && x + 1 < w {
                    dst.copy_from_slice(&line[(x - 1) * c..(x + 2) * c]);
                } else {
                    for kx in 0..3 {
                        let d = &mut dst[kx * c..(kx + 1) * c];
                        match (x + kx).checked_sub(1).filter(|&sx| sx < w) {
                            Some(sx) => d.copy_from_slice(&line[sx * c..(sx + 1) * c]),
                            None => d.fill(0.0),
                        }
                    }
                }
            }
        }
    }
}

/// `c = a · b` (overwriting c) for row-major a (m×k), b (k×n), c (m×n); single-threaded.
pub(crate) fn matmul(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    accumulate: bool,
) {
    debug_assert!(a.len() >= m * k && b.len() >= k * n && c.len() >= m * n);
    // SAFETY: the slices hold at least the m×k, k×n and m×n elements the strides address.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.as_ptr(),
            k as isize,
            1,
            b.as_ptr(),
            n as isize,
            1,
            if accumulate { 1.0 } else { 0.0 },
            c.as_mut_ptr(),
            n as isize,
            1,
        );
    }
}

/// `y = conv3x3(x, wm)` for x (b, h, w, c) and wm (9c, o), in parallel over row blocks.
pub(crate) fn forward(
    x: &[f32],
    dims: (usize, usize, usize, usize),
    wm: &[f32],
    o: usize,
) -> Vec<f32> {
    let (b, h, w, _) = dims;
    let mut y = vec![0f32; b * h * w * o];
    forward_into(x, dims, wm, o, &mut y);
    y
}

/// [`forward`] into `y` (b·h·w·o values, all overwritten).
pub(crate) fn forward_into(
    x: &[f32],
    (_, h, w, c): (usize, usize, usize, usize),
    wm: &[f32],
    o: usize,
    y: &mut [f32],
) {
    let rows = block_rows(w);
    y.par_chunks_mut(h * w * o)
        .zip(x.par_chunks(h * w * c))
        .for_each(|(img_y, img)| {
            img_y
                .par_chunks_mut(rows * w * o)
                .enumerate()
                .for_each(|(blk, out)| {
                    let r0 = blk * rows;
                    let r1 = (r0 + rows).min(h);
                    let p = (r1 - r0) * w;
                    #[cfg(target_arch = "x86_64")]
                    if direct_available(o) {
                        // SAFETY: the CPU has AVX-512F (checked); the slices have the sizes
                        // the kernel addresses (asserted inside).
                        unsafe { direct::rows(img, (h, w, c), wm, o, (r0, r1), out) };
                        return;
                    }
                    COLS.with(|buf| {
                        let mut cols = buf.borrow_mut();
                        cols.resize(p * 9 * c, 0.0);
                        im2col_rows(img, h, w, c, r0, r1, &mut cols);
                        matmul(p, 9 * c, o, &cols, wm, out, false);
                    });
                });
        });
}

struct Conv3x3;

impl CustomOp2 for Conv3x3 {
    fn name(&self) -> &'static str {
        "biodc-conv3x3"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let x = slice(xs, xl, "the input")?;
        let wm = slice(ws, wl, "the weight")?;
        let (b, h, w, c) = xl.shape().dims4()?;
        let (k, o) = wl.shape().dims2()?;
        if k != 9 * c {
            return Err(candle_core::Error::Msg(format!(
                "conv3x3: weight has {k} rows for {c} input channels (expected {})",
                9 * c
            )));
        }
        let y = forward(x, (b, h, w, c), wm, o);
        Ok((CpuStorage::F32(y), Shape::from((b, h, w, o))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        wm: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>)> {
        let c = x.dim(3)?;
        let o = wm.dim(1)?;
        let grad = grad.contiguous()?;
        // Input gradient: dy convolved with the flipped kernel, input and output swapped.
        // The weight is small: copy it.
        let wv = wm.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let flipped = flip(&wv, c, o);
        let flipped = Tensor::from_vec(flipped, (9 * o, c), x.device())?;
        let dx = grad.apply_op2_no_bwd(&flipped, &Conv3x3)?;
        let dw = x.contiguous()?.apply_op2_no_bwd(&grad, &WeightGrad)?;
        Ok((Some(dx), Some(dw)))
    }
}

/// Whether the direct AVX-512 kernel computes a convolution with `o` outputs here.
#[cfg(target_arch = "x86_64")]
fn direct_available(o: usize) -> bool {
    o.is_multiple_of(16) && std::env::var_os("BIODC_CONV_GEMM").is_none() && {
        static AVX512: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *AVX512.get_or_init(|| is_x86_feature_detected!("avx512f"))
    }
}

/// A direct 3×3 convolution for CPUs with AVX-512: no column matrix, no packing. Each step
/// broadcasts one input value of 8 neighbouring pixels and multiplies it with 16 output
/// channels of the kernel (one register), accumulating 8 × 16 outputs in registers; the kernel
/// rows stay in L1. The sum over (ky, kx, c) runs in that order, as the column matrix's.
#[cfg(target_arch = "x86_64")]
mod direct {
    use std::arch::x86_64::*;

    const PX: usize = 8;

    /// Output rows `r0..r1` of one (h, w, c) image into `out` ((r1 − r0)·w·o values).
    ///
    /// # Safety
    /// The CPU must support AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn rows(
        img: &[f32],
        (h, w, c): (usize, usize, usize),
        wm: &[f32],
        o: usize,
        (r0, r1): (usize, usize),
        out: &mut [f32],
    ) {
        assert!(img.len() >= h * w * c && wm.len() >= 9 * c * o);
        assert!(out.len() >= (r1 - r0) * w * o && o % 16 == 0 && r1 <= h);
        let (xp, wp, op) = (img.as_ptr(), wm.as_ptr(), out.as_mut_ptr());
        for y in r0..r1 {
            for ob in (0..o).step_by(16) {
                let mut x0 = 0;
                while x0 < w {
                    let n = PX.min(w - x0);
                    let mut acc = [_mm512_setzero_ps(); PX];
                    for ky in 0..3 {
                        let Some(sy) = (y + ky).checked_sub(1).filter(|&sy| sy < h) else {
                            continue;
                        };
                        let row = xp.add(sy * w * c);
                        for kx in 0..3 {
                            let wk = wp.add((ky * 3 + kx) * c * o + ob);
                            // Interior: all 8 neighbours exist, no checks in the loop.
                            if n == PX && x0 + kx >= 1 && x0 + kx + PX <= w {
                                let base = row.add((x0 + kx - 1) * c);
                                for ci in 0..c {
                                    let wv = _mm512_loadu_ps(wk.add(ci * o));
                                    for (i, a) in acc.iter_mut().enumerate() {
                                        let xv = _mm512_set1_ps(*base.add(i * c + ci));
                                        *a = _mm512_fmadd_ps(xv, wv, *a);
                                    }
                                }
                            } else {
                                for ci in 0..c {
                                    let wv = _mm512_loadu_ps(wk.add(ci * o));
                                    for (i, a) in acc.iter_mut().enumerate().take(n) {
                                        let Some(sx) =
                                            (x0 + i + kx).checked_sub(1).filter(|&sx| sx < w)
                                        else {
                                            continue;
                                        };
                                        let xv = _mm512_set1_ps(*row.add(sx * c + ci));
                                        *a = _mm512_fmadd_ps(xv, wv, *a);
                                    }
                                }
                            }
                        }
                    }
                    for (i, a) in acc.iter().enumerate().take(n) {
                        _mm512_storeu_ps(op.add(((y - r0) * w + x0 + i) * o + ob), *a);
                    }
                    x0 += PX;
                }
            }
        }
    }

    /// The weight gradient Σ_p x[p + offset(ky, kx), ci] · dy[p, o] over output rows `r0..r1`
    /// of one image, into `part` (9c × o, rows (ky, kx, ci)). Per (tap, 8 input channels, 16
    /// outputs): one load of dy and 8 broadcasts of x per pixel, 8 × 16 sums in registers.
    ///
    /// # Safety
    /// The CPU must support AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn weight_grad(
        img: &[f32],
        (h, w, c): (usize, usize, usize),
        dy: &[f32],
        o: usize,
        (r0, r1): (usize, usize),
        part: &mut [f32],
    ) {
        assert!(img.len() >= h * w * c && dy.len() >= (r1 - r0) * w * o);
        assert!(part.len() >= 9 * c * o && o % 16 == 0 && r1 <= h);
        let (xp, dp, pp) = (img.as_ptr(), dy.as_ptr(), part.as_mut_ptr());
        for ky in 0..3 {
            // Output rows whose neighbour row y + ky − 1 is inside the image.
            let ys = r0.max(1 - ky.min(1))..r1.min(h + 1 - ky);
            for kx in 0..3 {
                let xs = (1 - kx.min(1))..w.min(w + 1 - kx);
                for c0 in (0..c).step_by(PX) {
                    let n = PX.min(c - c0);
                    for ob in (0..o).step_by(16) {
                        let mut acc = [_mm512_setzero_ps(); PX];
                        for y in ys.clone() {
                            let src = xp.add(((y + ky - 1) * w) * c + c0);
                            let grad = dp.add(((y - r0) * w) * o + ob);
                            for x in xs.clone() {
                                let g = _mm512_loadu_ps(grad.add(x * o));
                                let xv = src.add((x + kx - 1) * c);
                                if n == PX {
                                    for (i, a) in acc.iter_mut().enumerate() {
                                        *a = _mm512_fmadd_ps(_mm512_set1_ps(*xv.add(i)), g, *a);
                                    }
                                } else {
                                    for (i, a) in acc.iter_mut().enumerate().take(n) {
                                        *a = _mm512_fmadd_ps(_mm512_set1_ps(*xv.add(i)), g, *a);
                                    }
                                }
                            }
                        }
                        for (i, a) in acc.iter().enumerate().take(n) {
                            let row = (ky * 3 + kx) * c + c0 + i;
                            _mm512_storeu_ps(pp.add(row * o + ob), *a);
                        }
                    }
                }
            }
        }
    }
}

/// The kernel of the input gradient: flipped[(ky, kx, o), c] = W[(2 − ky, 2 − kx, c), o], a
/// (9o, c) matrix, so that dx = conv3x3(dy, flipped).
pub(crate) fn flip(wm: &[f32], c: usize, o: usize) -> Vec<f32> {
    let mut flipped = vec![0f32; 9 * o * c];
    for ky in 0..3 {
        for kx in 0..3 {
            let src = (2 - ky) * 3 + (2 - kx);
            for oi in 0..o {
                for ci in 0..c {
                    flipped[((ky * 3 + kx) * o + oi) * c + ci] = wm[(src * c + ci) * o + oi];
                }
            }
        }
    }
    flipped
}

/// The weight gradient of [`Conv3x3`]: (x, dy) → Σ_blocks cols(x)ᵀ · dy (9C, O), one partial
/// sum per block, added in block order.
struct WeightGrad;

impl CustomOp2 for WeightGrad {
    fn name(&self) -> &'static str {
        "biodc-conv3x3-weight-grad"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let xv = slice(xs, xl, "the input")?;
        let g = slice(gs, gl, "the gradient")?;
        let (b, h, w, c) = xl.shape().dims4()?;
        let o = gl.shape().dims4()?.3;
        let dw = weight_grad(xv, (b, h, w, c), g, o);
        Ok((CpuStorage::F32(dw), Shape::from((9 * c, o))))
    }
}

/// Σ_blocks cols(x)ᵀ · dy: the (9c, o) weight gradient for input x (b, h, w, c) and output
/// gradient dy (b, h, w, o), one partial sum per block added in block order.
pub(crate) fn weight_grad(
    xv: &[f32],
    (b, h, w, c): (usize, usize, usize, usize),
    g: &[f32],
    o: usize,
) -> Vec<f32> {
    let rows = block_rows(w);
    let blocks_per_image = h.div_ceil(rows);
    let partials: Vec<Vec<f32>> = (0..b * blocks_per_image)
        .into_par_iter()
        .map(|t| {
            let (bi, blk) = (t / blocks_per_image, t % blocks_per_image);
            let r0 = blk * rows;
            let r1 = (r0 + rows).min(h);
            let p = (r1 - r0) * w;
            let img = &xv[bi * h * w * c..(bi + 1) * h * w * c];
            let dy = &g[(bi * h * w + r0 * w) * o..(bi * h * w + r1 * w) * o];
            let mut part = vec![0f32; 9 * c * o];
            #[cfg(target_arch = "x86_64")]
            if direct_available(o) {
                // SAFETY: the CPU has AVX-512F (checked); sizes are asserted inside.
                unsafe { direct::weight_grad(img, (h, w, c), dy, o, (r0, r1), &mut part) };
                return part;
            }
            COLS.with(|buf| {
                let mut cols = buf.borrow_mut();
                cols.resize(p * 9 * c, 0.0);
                im2col_rows(img, h, w, c, r0, r1, &mut cols);
                // part (9c × o) = colsᵀ (9c × p) · dy (p × o).
                // SAFETY: cols holds p×9c, dy p×o and part 9c×o elements.
                unsafe {
                    matrixmultiply::sgemm(
                        9 * c,
                        p,
                        o,
                        1.0,
                        cols.as_ptr(),
                        1,
                        (9 * c) as isize,
                        dy.as_ptr(),
                        o as isize,
                        1,
                        0.0,
                        part.as_mut_ptr(),
                        o as isize,
                        1,
                    );
                }
            });
            part
        })
        .collect();
    let mut dw = vec![0f32; 9 * c * o];
    for part in &partials {
        for (d, p) in dw.iter_mut().zip(part) {
            *d += p;
        }
    }
    dw
}

/// 3×3 "same" convolution of channels-last `x` (B, H, W, C) with `wm` (9C, O), rows ordered
/// (ky, kx, c): (B, H, W, O), with gradients for both.
pub fn conv3x3(x: &Tensor, wm: &Tensor) -> candle_core::Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == candle_core::DType::F32 && wm.dtype() == x.dtype() {
        return x.contiguous()?.apply_op2(&wm.contiguous()?, Conv3x3);
    }
    let (b, h, w, c) = x.dims4()?;
    let cols = super::ops::im2col3(x)?.reshape((b * h * w, 9 * c))?;
    cols.matmul(wm)?.reshape((b, h, w, wm.dim(1)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::test_util::{max_diff, uniform};
    use candle_core::Var;

    fn randn(shape: &[usize], seed: u64) -> Tensor {
        uniform(shape, seed, -1.0, 1.0)
    }

    /// The direct AVX-512 kernel (where the CPU has it) against the column-matrix product.
    #[test]
    fn direct_kernel_matches_the_matrix_product() {
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx512f") {
            for (h, w, c, o) in [
                (5usize, 7usize, 3usize, 16usize),
                (19, 21, 16, 32),
                (4, 9, 2, 16),
            ] {
                let x = randn(&[1, h, w, c], 4)
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap();
                let wm = randn(&[9 * c, o], 5)
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap();
                let mut direct = vec![0f32; h * w * o];
                // SAFETY: AVX-512F is present (checked above).
                unsafe { super::direct::rows(&x, (h, w, c), &wm, o, (0, h), &mut direct) };
                let mut cols = vec![0f32; h * w * 9 * c];
                im2col_rows(&x, h, w, c, 0, h, &mut cols);
                let mut gemm = vec![0f32; h * w * o];
                matmul(h * w, 9 * c, o, &cols, &wm, &mut gemm, false);
                let d = direct
                    .iter()
                    .zip(&gemm)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                assert!(d < 1e-4, "{h}×{w}×{c}→{o}: {d}");
            }
        }
    }

    /// Values and both gradients against im2col + matmul, on shapes with one and with several
    /// row blocks per image (a ragged last block included).
    #[test]
    fn matches_im2col_and_matmul_with_gradients() {
        for (shape, o) in [([2usize, 5, 7, 3], 4usize), ([2, 70, 33, 2], 5)] {
            let x = Var::from_tensor(&randn(&shape, 1)).unwrap();
            let wm = Var::from_tensor(&randn(&[9 * shape[3], o], 2)).unwrap();
            let r = randn(&[shape[0], shape[1], shape[2], o], 3);
            let fused = conv3x3(x.as_tensor(), wm.as_tensor()).unwrap();
            let (b, h, w, c) = x.as_tensor().dims4().unwrap();
            let reference = super::super::ops::im2col3(x.as_tensor())
                .unwrap()
                .reshape((b * h * w, 9 * c))
                .unwrap()
                .matmul(wm.as_tensor())
                .unwrap()
                .reshape((b, h, w, o))
                .unwrap();
            assert!(max_diff(&fused, &reference) < 1e-5, "forward {shape:?}");
            let ga = (&fused * &r)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let gb = (&reference * &r)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            for v in [&x, &wm] {
                let (a, b) = (ga.get(v).unwrap(), gb.get(v).unwrap());
                assert!(max_diff(a, b) < 1e-4, "gradient {shape:?}");
            }
        }
    }
}

//! A linear layer, x·Wᵀ + b over the last dimension, as one node of candle's graph.
//!
//! Written with candle's operations, a linear layer is six graph nodes (reshape, transpose,
//! matrix product, broadcast, add, reshape), and candle's backward pass accumulates every
//! node's gradient into a fresh zero tensor: two extra passes over memory per node. The bias
//! gradient is worse: candle sums over leading dimensions element by element with a division
//! and a modulo each, on one thread. MAE pretraining of ViT-S spent ~8 % of its time there.
//!
//! Here the forward pass is the same `gemm` call candle makes, then the bias added in place;
//! the backward pass is candle's own two matrix products and column sums
//! (`ops::sum_to_last_dim`), which add rows in order from 0.0 as candle's sum does. Values and gradients are bit for bit those of the
//! composite (tested below), for any number of threads. Off the CPU or for other dtypes,
//! [`linear`] is the composite.

use super::ops::{f32_slice, on_cpu_f32, par_rows, sum_to_last_dim};
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor};

type CResult<T> = candle_core::Result<T>;

/// `x`: (…, in), `w`: (out, in), `b`: (out) or none → (…, out).
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> CResult<Tensor> {
    let fused = on_cpu_f32(x) && on_cpu_f32(w) && b.is_none_or(on_cpu_f32);
    if !fused {
        return composite(x, w, b);
    }
    let (x, w) = (x.contiguous()?, w.contiguous()?);
    match b {
        Some(b) => x.apply_op3(&w, &b.contiguous()?, Linear),
        None => x.apply_op2(&w, Linear),
    }
}

/// The same layer in candle's operations (other devices; the reference in tests).
fn composite(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> CResult<Tensor> {
    let dims = x.dims().to_vec();
    let inp = *dims.last().unwrap_or(&1);
    let rows = x.elem_count() / inp.max(1);
    let mut y = x.reshape((rows, inp))?.matmul(&w.t()?)?;
    if let Some(b) = b {
        y = y.broadcast_add(b)?;
    }
    let mut out = dims;
    if let Some(last) = out.last_mut() {
        *last = w.dim(0)?;
    }
    y.reshape(out)
}

struct Linear;

struct Dims {
    rows: usize,
    inp: usize,
    out: usize,
}

fn dims(lx: &Layout, lw: &Layout) -> CResult<Dims> {
    let (out, inp) = lw.shape().dims2()?;
    let xd = lx.shape().dims();
    if xd.last() != Some(&inp) {
        return Err(candle_core::Error::Msg(format!(
            "linear: input {:?} does not end in the weight's {inp} columns",
            xd
        )));
    }
    Ok(Dims {
        rows: lx.shape().elem_count() / inp.max(1),
        inp,
        out,
    })
}

/// x·Wᵀ (+ b), with the arguments candle's CPU matrix product passes to `gemm` for
/// `x.matmul(&w.t())`, so the bits are the same.
fn forward(x: &[f32], w: &[f32], b: Option<&[f32]>, d: &Dims, lx: &Layout) -> (CpuStorage, Shape) {
    let mut y = vec![0f32; d.rows * d.out];
    let threads = candle_core::utils::get_num_threads();
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    if d.rows > 0 && d.out > 0 && d.inp > 0 {
        // SAFETY: y is rows×out, x rows×in and w out×in, all contiguous; the strides below
        // stay inside them (w read as its transpose: column stride `in`, row stride 1).
        unsafe {
            gemm::gemm(
                d.rows,
                d.out,
                d.inp,
                y.as_mut_ptr(),
                1,
                d.out as isize,
                false,
                x.as_ptr(),
                1,
                d.inp as isize,
                w.as_ptr(),
                d.inp as isize,
                1,
                0.0,
                1.0,
                false,
                false,
                false,
                parallelism,
            )
        }
    }
    if let Some(b) = b {
        par_rows(&mut y, d.out, |_, rows| {
            for row in rows.chunks_mut(d.out) {
                for (v, &b) in row.iter_mut().zip(b) {
                    *v += b;
                }
            }
        });
    }
    let mut shape = lx.shape().dims().to_vec();
    if let Some(last) = shape.last_mut() {
        *last = d.out;
    }
    (CpuStorage::F32(y), Shape::from(shape))
}

type Arg<'a> = (&'a CpuStorage, &'a Layout);

/// The forward pass from the ops' storages: checks the shapes, then [`forward`].
fn cpu_linear(x: Arg, w: Arg, b: Option<Arg>) -> CResult<(CpuStorage, Shape)> {
    let d = dims(x.1, w.1)?;
    let b = b.map(|(s, l)| f32_slice(s, l, "linear")).transpose()?;
    if let Some(b) = b.filter(|b| b.len() != d.out) {
        return Err(candle_core::Error::Msg(format!(
            "linear: bias of {} for {} outputs",
            b.len(),
            d.out
        )));
    }
    let (xs, ws) = (
        f32_slice(x.0, x.1, "linear")?,
        f32_slice(w.0, w.1, "linear")?,
    );
    Ok(forward(xs, ws, b, &d, x.1))
}

/// Gradients of x and W from the output gradient `g`, as candle's matrix-product backward
/// computes them for the composite.
fn backward(x: &Tensor, w: &Tensor, g: &Tensor) -> CResult<(Tensor, Tensor)> {
    let (out, inp) = w.dims2()?;
    let rows = x.elem_count() / inp.max(1);
    let g2 = g.contiguous()?.reshape((rows, out))?;
    let x2 = x.detach().reshape((rows, inp))?;
    let dx = g2.matmul(&w.detach())?.reshape(x.dims())?;
    let dw = x2.t()?.matmul(&g2)?.t()?;
    Ok((dx, dw))
}

impl CustomOp2 for Linear {
    fn name(&self) -> &'static str {
        "biodc-linear"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sw: &CpuStorage,
        lw: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        cpu_linear((sx, lx), (sw, lw), None)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw) = backward(x, w, g)?;
        Ok((Some(dx), Some(dw)))
    }
}

impl CustomOp3 for Linear {
    fn name(&self) -> &'static str {
        "biodc-linear-bias"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sw: &CpuStorage,
        lw: &Layout,
        sb: &CpuStorage,
        lb: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        cpu_linear((sx, lx), (sw, lw), Some((sb, lb)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dw) = backward(x, w, g)?;
        Ok((Some(dx), Some(dw), Some(sum_to_last_dim(g)?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::test_util::uniform;
    use candle_core::Var;

    /// Value and gradients of `sum(f(x, w, b) ⊙ r)`.
    fn run(
        f: &dyn Fn(&Tensor, &Tensor, Option<&Tensor>) -> Tensor,
        x: &Tensor,
        w: &Tensor,
        b: Option<&Tensor>,
    ) -> Vec<Vec<f32>> {
        let (x, w) = (Var::from_tensor(x).unwrap(), Var::from_tensor(w).unwrap());
        let b = b.map(|b| Var::from_tensor(b).unwrap());
        let y = f(
            x.as_tensor(),
            w.as_tensor(),
            b.as_ref().map(|b| b.as_tensor()),
        );
        let r = uniform(y.dims(), 9, -1.0, 1.0);
        let grads = (&y * r).unwrap().sum_all().unwrap().backward().unwrap();
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let mut out = vec![
            flat(&y),
            flat(grads.get(&x).unwrap()),
            flat(grads.get(&w).unwrap()),
        ];
        if let Some(b) = &b {
            out.push(flat(grads.get(b).unwrap()));
        }
        out
    }

    /// The fused layer gives the composite's value and gradients bit for bit, with and without
    /// bias, below and above the parallel grain, for rank-2 and rank-3 inputs.
    #[test]
    fn linear_is_the_composite_bit_for_bit() {
        for (xs, out) in [
            (vec![3usize, 5], 4usize),
            (vec![8, 50, 192], 576),
            (vec![7, 33], 300),
        ] {
            let inp = *xs.last().unwrap();
            let x = uniform(&xs, 1, -2.0, 2.0);
            let w = uniform(&[out, inp], 2, -0.1, 0.1);
            let b = uniform(&[out], 3, -0.5, 0.5);
            for bias in [Some(&b), None] {
                let fused = run(&|x, w, b| linear(x, w, b).unwrap(), &x, &w, bias);
                let reference = run(&|x, w, b| composite(x, w, b).unwrap(), &x, &w, bias);
                assert_eq!(fused.len(), reference.len());
                for (i, (a, r)) in fused.iter().zip(&reference).enumerate() {
                    let same = a.len() == r.len()
                        && a.iter().zip(r).all(|(a, r)| a.to_bits() == r.to_bits());
                    assert!(same, "{xs:?} → {out}, bias {}: output {i}", bias.is_some());
                }
            }
        }
    }

    #[test]
    fn column_sums_add_rows_in_order() {
        let x = uniform(&[300, 70], 4, -1.0, 1.0);
        let v = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let sums = super::super::ops::column_sums(&v, 70);
        for (c, &s) in sums.iter().enumerate() {
            let mut want = 0f32;
            for r in 0..300 {
                want += v[r * 70 + c];
            }
            assert_eq!(s.to_bits(), want.to_bits(), "column {c}");
        }
    }
}

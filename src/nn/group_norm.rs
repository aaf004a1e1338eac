//! Group normalisation followed by ReLU, on channels-last images, as one fused CPU kernel with
//! its own gradient (the U-Net's normalisation).
//!
//! Group norm rather than batch norm: statistics per image, so a model behaves the same at
//! training and at inference (no running averages to keep, no dependence on the batch), which
//! matters with batches of a few crops from ten patches. One pass forward, two backward, in
//! parallel over the images of the batch; per-channel parameter gradients are summed over the
//! images in order, so results do not depend on the number of threads. Other devices fall back
//! to candle's composite operations.

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

type CResult<T> = candle_core::Result<T>;

const EPS: f64 = 1e-5;

fn slice<'a>(s: &'a CpuStorage, l: &Layout) -> CResult<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        return Err(candle_core::Error::Msg("group norm: f32 only".into()));
    };
    l.contiguous_offsets()
        .map(|(a, b)| &v[a..b])
        .ok_or_else(|| candle_core::Error::Msg("group norm: inputs must be contiguous".into()))
}

/// Mean and 1/σ of each of the `g` channel groups of one image (pixels × c, row-major).
fn stats(img: &[f32], c: usize, g: usize) -> Vec<(f32, f32)> {
    // Per-channel sums first (a vectorisable pass), per-group afterwards; f64 per row of
    // pixels keeps the variance of large images accurate.
    let mut sum = vec![0f64; c];
    let mut sq = vec![0f64; c];
    let (mut s, mut q) = (vec![0f32; c], vec![0f32; c]);
    for row in img.chunks(c * 256) {
        s.fill(0.0);
        q.fill(0.0);
        for px in row.chunks_exact(c) {
            for ((a, b), &v) in s.iter_mut().zip(q.iter_mut()).zip(px) {
                *a += v;
                *b += v * v;
            }
        }
        for ch in 0..c {
            sum[ch] += s[ch] as f64;
            sq[ch] += q[ch] as f64;
        }
    }
    let per = c / g;
    let n = (img.len() / c * per) as f64;
    (0..g)
        .map(|gi| {
            let mean = sum[gi * per..(gi + 1) * per].iter().sum::<f64>() / n;
            let mean_sq = sq[gi * per..(gi + 1) * per].iter().sum::<f64>() / n;
            let var = (mean_sq - mean * mean).max(0.0);
            (mean as f32, (1.0 / (var + EPS).sqrt()) as f32)
        })
        .collect()
}

/// Per-channel scale and shift that normalise one image: x̂ = x·a + b.
fn affine(st: &[(f32, f32)], c: usize) -> (Vec<f32>, Vec<f32>) {
    let per = c / st.len();
    (0..c)
        .map(|ch| {
            let (m, r) = st[ch / per];
            (r, -m * r)
        })
        .unzip()
}

/// relu(group norm(x)·γ + β) of images of `pixels` × `c` (channels last), one after another.
pub(crate) fn forward(
    x: &[f32],
    pixels: usize,
    c: usize,
    gamma: &[f32],
    beta: &[f32],
    groups: usize,
) -> Vec<f32> {
    let mut y = vec![0f32; x.len()];
    forward_into(x, pixels, c, gamma, beta, groups, &mut y);
    y
}

/// [`forward`] into `y` (as long as `x`, all overwritten).
pub(crate) fn forward_into(
    x: &[f32],
    pixels: usize,
    c: usize,
    gamma: &[f32],
    beta: &[f32],
    groups: usize,
    y: &mut [f32],
) {
    y.par_chunks_mut(pixels * c)
        .zip(x.par_chunks(pixels * c))
        .for_each(|(out, img)| {
            let (a, b) = affine(&stats(img, c, groups), c);
            // y = relu(γ (x·a + b) + β) = relu(x·(γa) + (γb + β)).
            let scale: Vec<f32> = (0..c).map(|ch| gamma[ch] * a[ch]).collect();
            let shift: Vec<f32> = (0..c).map(|ch| gamma[ch] * b[ch] + beta[ch]).collect();
            for (o, px) in out.chunks_exact_mut(c).zip(img.chunks_exact(c)) {
                for ch in 0..c {
                    o[ch] = (px[ch] * scale[ch] + shift[ch]).max(0.0);
                }
            }
        });
}

struct GroupNormRelu {
    groups: usize,
}

impl CustomOp3 for GroupNormRelu {
    fn name(&self) -> &'static str {
        "biodc-group-norm-relu"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let (x, gamma, beta) = (slice(xs, xl)?, slice(gs, gl)?, slice(bs, bl)?);
        let (_, h, w, c) = xl.shape().dims4()?;
        let y = forward(x, h * w, c, gamma, beta, self.groups);
        Ok((CpuStorage::F32(y), xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _beta: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let c = x.dim(3)?;
        let grad = grad.contiguous()?;
        let gv = gamma.to_vec1::<f32>()?;
        let dx = x.apply_op3_no_bwd(
            res,
            &grad,
            &InputGrad {
                gamma: gv,
                groups: self.groups,
            },
        )?;
        let dparams = x.apply_op3_no_bwd(
            res,
            &grad,
            &ParamGrad {
                groups: self.groups,
            },
        )?;
        Ok((
            Some(dx),
            Some(dparams.get(0)?),
            Some(dparams.get(1)?.reshape(c)?),
        ))
    }
}

/// dx of [`forward`] from its input x, output y and output gradient dy.
pub(crate) fn input_grad(
    x: &[f32],
    y: &[f32],
    dy: &[f32],
    pixels: usize,
    c: usize,
    gamma: &[f32],
    groups: usize,
) -> Vec<f32> {
    let mut dx = vec![0f32; x.len()];
    backward_into(x, y, dy, pixels, c, gamma, groups, &mut dx);
    dx
}

/// The backward pass of [`forward`] from its input x, output y and output gradient dy: the
/// input gradient into `dx` (as long as `x`, all overwritten); returns [dγ; dβ] (2c values).
///
/// Per image, one pass gathers per channel Σdz and Σdz·x̂ (dz = dy·[y > 0], x̂ the normalised
/// input) — they are dβ and dγ, and with γ they give the group means the input gradient
/// needs — and a second pass writes dx = (dz·γ − mean(dz·γ) − x̂·mean(dz·γ·x̂)) / σ.
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward_into(
    x: &[f32],
    y: &[f32],
    dy: &[f32],
    pixels: usize,
    c: usize,
    gamma: &[f32],
    groups: usize,
    dx: &mut [f32],
) -> Vec<f32> {
    let (per, n) = (c / groups, pixels * c);
    let partials: Vec<Vec<f64>> = dx
        .par_chunks_mut(n)
        .enumerate()
        .map(|(bi, dxi)| {
            let img = &x[bi * n..(bi + 1) * n];
            let (a, b) = affine(&stats(img, c, groups), c);
            let (y, dy) = (&y[bi * n..(bi + 1) * n], &dy[bi * n..(bi + 1) * n]);
            // Per channel: Σdz and Σdz·x̂ (f32 within a run of 256 pixels, f64 across runs).
            let (mut s_dz, mut s_dzx) = (vec![0f64; c], vec![0f64; c]);
            let (mut r_dz, mut r_dzx) = (vec![0f32; c], vec![0f32; c]);
            for ((xr, yr), dr) in img
                .chunks(256 * c)
                .zip(y.chunks(256 * c))
                .zip(dy.chunks(256 * c))
            {
                r_dz.fill(0.0);
                r_dzx.fill(0.0);
                for ((xp, yp), dp) in xr
                    .chunks_exact(c)
                    .zip(yr.chunks_exact(c))
                    .zip(dr.chunks_exact(c))
                {
                    for (((((s1, s2), &xv), &yv), &dv), (&av, &bv)) in r_dz
                        .iter_mut()
                        .zip(r_dzx.iter_mut())
                        .zip(xp)
                        .zip(yp)
                        .zip(dp)
                        .zip(a.iter().zip(&b))
                    {
                        let dz = if yv > 0.0 { dv } else { 0.0 };
                        *s1 += dz;
                        *s2 += dz * (xv * av + bv);
                    }
                }
                for ch in 0..c {
                    s_dz[ch] += r_dz[ch] as f64;
                    s_dzx[ch] += r_dzx[ch] as f64;
                }
            }
            let count = (n / c * per) as f64;
            let group_mean = |s: &[f64], gi: usize| -> f32 {
                ((gi * per..(gi + 1) * per)
                    .map(|ch| gamma[ch] as f64 * s[ch])
                    .sum::<f64>()
                    / count) as f32
            };
            let m1: Vec<f32> = (0..c).map(|ch| group_mean(&s_dz, ch / per)).collect();
            let m2: Vec<f32> = (0..c).map(|ch| group_mean(&s_dzx, ch / per)).collect();
            for (((o, xp), yp), dp) in dxi
                .chunks_exact_mut(c)
                .zip(img.chunks_exact(c))
                .zip(y.chunks_exact(c))
                .zip(dy.chunks_exact(c))
            {
                for (((((o, &xv), &yv), &dv), (&av, &bv)), ((&g, &m1), &m2)) in o
                    .iter_mut()
                    .zip(xp)
                    .zip(yp)
                    .zip(dp)
                    .zip(a.iter().zip(&b))
                    .zip(gamma.iter().zip(&m1).zip(&m2))
                {
                    let dz = if yv > 0.0 { dv } else { 0.0 };
                    *o = (dz * g - m1 - (xv * av + bv) * m2) * av;
                }
            }
            s_dzx.extend(s_dz);
            s_dzx
        })
        .collect();
    let mut out = vec![0f64; 2 * c];
    for p in &partials {
        for (o, v) in out.iter_mut().zip(p) {
            *o += v;
        }
    }
    out.into_iter().map(|v| v as f32).collect()
}

/// (x, y, dy) → dx of [`GroupNormRelu`].
struct InputGrad {
    gamma: Vec<f32>,
    groups: usize,
}

impl CustomOp3 for InputGrad {
    fn name(&self) -> &'static str {
        "biodc-group-norm-relu-input-grad"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ys: &CpuStorage,
        yl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let (x, y, dy) = (slice(xs, xl)?, slice(ys, yl)?, slice(gs, gl)?);
        let (_, h, w, c) = xl.shape().dims4()?;
        let dx = input_grad(x, y, dy, h * w, c, &self.gamma, self.groups);
        Ok((CpuStorage::F32(dx), xl.shape().clone()))
    }
}

/// [dγ; dβ] (2c values) of [`forward`] from its input x, output y and output gradient dy.
pub(crate) fn param_grad(
    x: &[f32],
    y: &[f32],
    dy: &[f32],
    pixels: usize,
    c: usize,
    groups: usize,
) -> Vec<f32> {
    let mut scratch = vec![0f32; x.len()];
    backward_into(x, y, dy, pixels, c, &vec![1.0; c], groups, &mut scratch)
}

/// (x, y, dy) → (2, C): the gradients of γ (row 0) and β (row 1) of [`GroupNormRelu`], one
/// partial per image, summed in image order.
struct ParamGrad {
    groups: usize,
}

impl CustomOp3 for ParamGrad {
    fn name(&self) -> &'static str {
        "biodc-group-norm-relu-param-grad"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ys: &CpuStorage,
        yl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let (x, y, dy) = (slice(xs, xl)?, slice(ys, yl)?, slice(gs, gl)?);
        let (_, h, w, c) = xl.shape().dims4()?;
        let out = param_grad(x, y, dy, h * w, c, self.groups);
        Ok((CpuStorage::F32(out), Shape::from((2, c))))
    }
}

/// ReLU(group norm of channels-last `x` (B, H, W, C) in `groups` groups of channels, scaled by
/// `gamma` and shifted by `beta` (C)), with gradients for all three.
pub fn group_norm_relu(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    groups: usize,
) -> candle_core::Result<Tensor> {
    let c = x.dim(3)?;
    if groups == 0 || c % groups != 0 {
        return Err(candle_core::Error::Msg(format!(
            "group norm: {c} channels do not split into {groups} groups"
        )));
    }
    if x.device().is_cpu() && x.dtype() == candle_core::DType::F32 {
        return x.contiguous()?.apply_op3(
            &gamma.contiguous()?,
            &beta.contiguous()?,
            GroupNormRelu { groups },
        );
    }
    composite(x, gamma, beta, groups)
}

/// The same from candle's elementary operations.
fn composite(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    groups: usize,
) -> candle_core::Result<Tensor> {
    let (b, h, w, c) = x.dims4()?;
    let xg = x.reshape((b, h * w, groups, c / groups))?;
    let mean = xg.mean_keepdim(3)?.mean_keepdim(1)?;
    let centred = xg.broadcast_sub(&mean)?;
    let var = centred.sqr()?.mean_keepdim(3)?.mean_keepdim(1)?;
    let xh = centred
        .broadcast_div(&(var + EPS)?.sqrt()?)?
        .reshape((b, h, w, c))?;
    xh.broadcast_mul(gamma)?.broadcast_add(beta)?.relu()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::test_util::{max_diff, uniform};
    use candle_core::Var;

    #[test]
    fn matches_the_composite_with_gradients() {
        let x = Var::from_tensor(&(uniform(&[3, 5, 4, 8], 1, -2.0, 2.0) + 0.7).unwrap()).unwrap();
        let gamma = Var::from_tensor(&uniform(&[8], 2, 0.5, 1.5)).unwrap();
        let beta = Var::from_tensor(&uniform(&[8], 3, -0.3, 0.3)).unwrap();
        let r = uniform(&[3, 5, 4, 8], 4, -1.0, 1.0);
        let a = group_norm_relu(x.as_tensor(), gamma.as_tensor(), beta.as_tensor(), 4).unwrap();
        let b = composite(x.as_tensor(), gamma.as_tensor(), beta.as_tensor(), 4).unwrap();
        assert!(max_diff(&a, &b) < 1e-5);
        let ga = (&a * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let gb = (&b * &r).unwrap().sum_all().unwrap().backward().unwrap();
        for v in [&x, &gamma, &beta] {
            assert!(max_diff(ga.get(v).unwrap(), gb.get(v).unwrap()) < 1e-4);
        }
        assert!(group_norm_relu(x.as_tensor(), gamma.as_tensor(), beta.as_tensor(), 3).is_err());
    }
}

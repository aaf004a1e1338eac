//! Convolutions on channels-last images (B, H, W, C) as matrix products, shared by the
//! segmentation networks: 3×3 "same", 1×1, 2×2 stride-2 downsampling over space-to-depth and
//! 2×2 stride-2 upsampling over depth-to-space (a transposed convolution), plus nearest
//! upsampling.

use super::layers::{Init, Params};
use super::ops;
use anyhow::Result;
use candle_core::{Device, Tensor};
use rand_chacha::ChaCha8Rng;

/// A 2D convolution (`{name}.weight` (out, in, k, k) as PyTorch stores it, `{name}.bias`),
/// He-normal initialised, on channels-last images (B, H, W, C): k = 3 ("same" padding), k = 1,
/// or a 2×2 stride-2 downsampling (`down`, weights (out, 4·in, 1, 1) over space-to-depth).
///
/// Each is one matrix product (B·H·W, k²·in) × (k²·in, out) after [`ops::im2col3`]; candle's
/// own CPU `conv2d` backward (a naive transposed convolution) made a training step 5–10×
/// slower.
#[derive(Debug, Clone)]
pub struct Conv {
    pub w: Tensor,
    pub b: Tensor,
    down: bool,
}

impl Conv {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        p: &mut Params,
        rng: &mut ChaCha8Rng,
        dev: &Device,
        name: &str,
        inp: usize,
        out: usize,
        k: usize,
        down: bool,
    ) -> Result<Conv> {
        let (k, inp) = if down { (1, inp * 4) } else { (k, inp) };
        let std = (2.0 / (inp * k * k) as f32).sqrt();
        Ok(Conv {
            w: p.make(
                rng,
                dev,
                &format!("{name}.weight"),
                &[out, inp, k, k],
                Init::Normal(std),
            )?,
            b: p.make(rng, dev, &format!("{name}.bias"), &[out], Init::Zeros)?,
            down,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = if self.down {
            space_to_depth(x)?
        } else {
            x.clone()
        };
        let (b, h, w, c) = x.dims4()?;
        let (out, _, k, _) = self.w.dims4()?;
        let cols = if k == 3 { ops::im2col3(&x)? } else { x };
        // (out, in, ky, kx) → rows (ky, kx, in) to match the columns.
        let wm = self
            .w
            .permute((0, 2, 3, 1))?
            .reshape((out, k * k * c))?
            .t()?;
        let y = cols
            .reshape((b * h * w, k * k * c))?
            .matmul(&wm)?
            .broadcast_add(&self.b)?;
        Ok(y.reshape((b, h, w, out))?)
    }

    pub fn relu(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.forward(x)?.relu()?)
    }
}

/// (B, H, W, C) → (B, H/2, W/2, 4C): each 2×2 block of pixels becomes 4C channels, ordered
/// (c, dy, dx) as PyTorch's `pixel_unshuffle`.
pub fn space_to_depth(x: &Tensor) -> Result<Tensor> {
    let (b, h, w, c) = x.dims4()?;
    Ok(x.reshape((b, h / 2, 2, w / 2, 2, c))?
        .permute((0, 1, 3, 5, 2, 4))?
        .reshape((b, h / 2, w / 2, c * 4))?)
}

/// Nearest-neighbour ×`f` upsampling of (B, H, W, C) from reshapes and a broadcast (whose
/// gradient is a sum).
pub fn upsample(x: &Tensor, f: usize) -> Result<Tensor> {
    let (b, h, w, c) = x.dims4()?;
    Ok(x.reshape((b, h, 1, w, 1, c))?
        .broadcast_as((b, h, f, w, f, c))?
        .reshape((b, h * f, w * f, c))?)
}

/// (B, H, W, 4C) → (B, 2H, 2W, C): the inverse of [`space_to_depth`] (PyTorch's
/// `pixel_shuffle` with channels ordered (c, dy, dx)).
pub fn depth_to_space(x: &Tensor) -> Result<Tensor> {
    let (b, h, w, c4) = x.dims4()?;
    let c = c4 / 4;
    Ok(x.reshape((b, h, w, c, 2, 2))?
        .permute((0, 1, 4, 2, 5, 3))?
        .reshape((b, h * 2, w * 2, c))?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn matrix_product_convolution_matches_candles() {
        let dev = Device::Cpu;
        let mut p = Params::default();
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let nchw = Tensor::randn(0f32, 1.0, (2, 3, 6, 8), &dev).unwrap();
        let nhwc = nchw.permute((0, 2, 3, 1)).unwrap();
        let to_nchw = |t: Tensor| t.permute((0, 3, 1, 2)).unwrap();
        let close = |a: &Tensor, b: &Tensor| {
            let d = (a - b)
                .unwrap()
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap();
            d.to_scalar::<f32>().unwrap() < 1e-5
        };
        let conv = Conv::new(&mut p, &mut rng, &dev, "c", 3, 4, 3, false).unwrap();
        let want = nchw
            .conv2d(&conv.w, 1, 1, 1, 1)
            .unwrap()
            .broadcast_add(&conv.b.reshape((1, 4, 1, 1)).unwrap())
            .unwrap();
        assert!(close(&to_nchw(conv.forward(&nhwc).unwrap()), &want), "3×3");
        // Downsampling = a 2×2 stride-2 convolution with weights (out, in, dy, dx).
        let down = Conv::new(&mut p, &mut rng, &dev, "d", 3, 5, 1, true).unwrap();
        let k = down.w.reshape((5, 3, 2, 2)).unwrap();
        let want = nchw
            .conv2d(&k, 0, 2, 1, 1)
            .unwrap()
            .broadcast_add(&down.b.reshape((1, 5, 1, 1)).unwrap())
            .unwrap();
        assert!(close(&to_nchw(down.forward(&nhwc).unwrap()), &want), "down");
        let up = to_nchw(upsample(&nhwc, 2).unwrap());
        assert!(
            close(&up, &nchw.upsample_nearest2d(12, 16).unwrap()),
            "upsample"
        );
    }

    #[test]
    fn depth_to_space_inverts_space_to_depth() {
        let x = Tensor::randn(0f32, 1.0, (2, 4, 6, 3), &Device::Cpu).unwrap();
        let back = depth_to_space(&space_to_depth(&x).unwrap()).unwrap();
        let d = (back - &x).unwrap().abs().unwrap().sum_all().unwrap();
        assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0);
    }
}

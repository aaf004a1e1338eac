//! The segmentation loss: binary cross-entropy plus soft Dice on logits, and the logistic
//! function it uses, written so that neither overflows.

use anyhow::Result;
use candle_core::Tensor;

/// Logistic function from elementary operations (all of which have gradients).
pub fn sigmoid(z: &Tensor) -> Result<Tensor> {
    // As (tanh(z/2) + 1)/2: 1/(1 + e^{−z}) overflows for z < −88 and its gradient is then
    // 0·∞ = NaN, which poisons training once a logit is confidently negative.
    Ok((((z * 0.5)?.tanh()? + 1.0)? * 0.5)?)
}

/// Mean binary cross-entropy of logits `z` against `y`, plus 1 − soft Dice over the batch.
pub fn bce_dice(z: &Tensor, y: &Tensor) -> Result<Tensor> {
    // log(1 + e^{−|z|}) + max(z, 0) − z·y: the numerically stable form.
    let bce = ((z.abs()?.neg()?.exp()? + 1.0)?.log()? + z.relu()? - (z * y)?)?.mean_all()?;
    let p = sigmoid(z)?;
    let inter = (&p * y)?.sum_all()?;
    let total = (p.sum_all()? + y.sum_all()?)?;
    let dice = ((inter * 2.0)? + 1.0)?.div(&(total + 1.0)?)?;
    Ok((bce + (1.0 - dice)?)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn loss_is_low_for_confident_right_logits() {
        let dev = Device::Cpu;
        let y = Tensor::from_vec(vec![0f32, 1.0, 1.0, 0.0], (1, 1, 2, 2), &dev).unwrap();
        let right = ((&y * 2.0).unwrap() - 1.0).unwrap() * 20.0;
        let wrong = right.as_ref().unwrap().neg().unwrap();
        let l_right = bce_dice(&right.unwrap(), &y).unwrap();
        let l_wrong = bce_dice(&wrong, &y).unwrap();
        assert!(l_right.to_scalar::<f32>().unwrap() < 1e-3);
        assert!(l_wrong.to_scalar::<f32>().unwrap() > 10.0);
    }
}

//! Training: AdamW with warmup + cosine learning rate, all randomness from one ChaCha RNG, and
//! a state (weights, optimiser moments, step, RNG) that saves to bytes and resumes bit-exactly.
//!
//! AdamW is written out here rather than taken from `candle_nn::AdamW` for two reasons:
//! candle's keeps its moments and step count private, so a run could not be saved and resumed
//! bit-exactly; and it decays every tensor, while MAE (and timm/PyTorch practice) exempts
//! biases and layer-norm weights. The update is PyTorch's AdamW (decoupled weight decay):
//! `m ← β₁m + (1−β₁)g`, `v ← β₂v + (1−β₂)g²`, `θ ← θ − lr·(m̂/(√v̂+ε) + λθ)` for tensors of
//! rank ≥ 2, without the `λθ` term for rank-1 tensors.

use super::adamw_step::Step;
use super::checkpoint::{from_safetensors, to_safetensors};
use super::layers::Params;
use super::mae::{Mae, MaeConfig};
use anyhow::{Context, Result};
use candle_core::{backprop::GradStore, DType, Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Optimiser settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub lr: f64,
    pub weight_decay: f64,
    pub betas: (f64, f64),
    /// Linear warm-up steps, then cosine decay to 10 % of `lr` at `total_steps`.
    pub warmup: u64,
    pub total_steps: u64,
}

impl TrainConfig {
    pub fn new(lr: f64, total_steps: u64) -> TrainConfig {
        TrainConfig {
            lr,
            weight_decay: 0.05,
            betas: (0.9, 0.95),
            warmup: (total_steps / 20).max(1),
            total_steps,
        }
    }

    pub fn lr_at(&self, step: u64) -> f64 {
        if step < self.warmup {
            return self.lr * (step + 1) as f64 / self.warmup as f64;
        }
        let span = self.total_steps.saturating_sub(self.warmup).max(1) as f64;
        let t = ((step - self.warmup) as f64 / span).min(1.0);
        self.lr * (0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * t).cos()))
    }
}

/// AdamW over a model's [`Params`]: moments per tensor and the step count, public so a
/// training state saves and resumes bit-exactly.
pub struct AdamW {
    pub cfg: TrainConfig,
    pub step: u64,
    pub moments: BTreeMap<String, (Tensor, Tensor)>,
}

impl AdamW {
    /// Zero moments for every tensor of `params`, step 0.
    pub fn new(params: &Params, cfg: TrainConfig) -> Result<AdamW> {
        let moments = params
            .vars
            .iter()
            .map(|(n, v)| Ok((n.clone(), (v.zeros_like()?, v.zeros_like()?))))
            .collect::<Result<_>>()?;
        Ok(AdamW {
            cfg,
            step: 0,
            moments,
        })
    }

    /// Learning rate of the next step.
    pub fn lr(&self) -> f64 {
        self.cfg.lr_at(self.step)
    }

    /// One update of every tensor of `params` that has a gradient in `grads`.
    pub fn update(&mut self, params: &Params, grads: &GradStore) -> Result<()> {
        let lr = self.cfg.lr_at(self.step);
        self.step += 1;
        let (b1, b2) = self.cfg.betas;
        let t = self.step as i32;
        let (c1, c2) = (1.0 - b1.powi(t), 1.0 - b2.powi(t));
        for (name, var) in &params.vars {
            let Some(g) = grads.get(var) else { continue };
            let (m, v) = self
                .moments
                .get_mut(name)
                .expect("moments for every parameter");
            let step = Step {
                beta1: b1,
                beta2: b2,
                correction1: c1,
                correction2: c2,
                lr,
                weight_decay: (var.rank() >= 2).then_some(self.cfg.weight_decay),
            };
            if !super::adamw_step::update_in_place(var.as_tensor(), m, v, g, step)? {
                let w;
                (w, *m, *v) = composite_update(var.as_tensor(), m, v, g, step)?;
                var.set(&w)?;
            }
        }
        Ok(())
    }
}

/// One AdamW update in candle's operations: (new weights, m, v). Other devices and layouts;
/// the reference for [`super::adamw_step`].
fn composite_update(
    w: &Tensor,
    m: &Tensor,
    v: &Tensor,
    g: &Tensor,
    k: Step,
) -> Result<(Tensor, Tensor, Tensor)> {
    let m = ((m * k.beta1)? + (g * (1.0 - k.beta1))?)?;
    let v = ((v * k.beta2)? + (g.sqr()? * (1.0 - k.beta2))?)?;
    let mut update = ((&m / k.correction1)? / ((&v / k.correction2)?.sqrt()? + 1e-8)?)?;
    if let Some(decay) = k.weight_decay {
        update = (update + (w * decay)?)?;
    }
    Ok(((w - (update * k.lr)?)?, m, v))
}

/// An MAE being trained.
pub struct Trainer {
    pub mae: Mae,
    pub opt: AdamW,
    pub step: u64,
    rng: ChaCha8Rng,
}

impl Trainer {
    /// A fresh model and optimiser; every random number comes from `seed`.
    pub fn new(model: &MaeConfig, cfg: TrainConfig, seed: u64, dev: &Device) -> Result<Trainer> {
        Trainer::around(Mae::new(model, seed, dev)?, cfg, seed)
    }

    /// A trainer at step 0 for `mae`; masks and dropout from `seed` (stream 1; the weights
    /// were drawn from stream 0).
    fn around(mae: Mae, cfg: TrainConfig, seed: u64) -> Result<Trainer> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(1);
        let opt = AdamW::new(&mae.params, cfg)?;
        Ok(Trainer {
            mae,
            opt,
            step: 0,
            rng,
        })
    }

    /// The trainer's RNG (data order is drawn from it too, so a resumed run sees the same data).
    pub fn rng(&mut self) -> &mut ChaCha8Rng {
        &mut self.rng
    }

    /// One AdamW step on `batch`; returns the loss before the step.
    pub fn step(&mut self, batch: &Tensor) -> Result<f32> {
        let loss = self.mae.loss(batch, &mut self.rng, true)?;
        self.opt.update(&self.mae.params, &loss.backward()?)?;
        self.step = self.opt.step;
        Ok(loss.to_scalar::<f32>()?)
    }

    /// Saves weights, moments, step and RNG state (safetensors bytes).
    pub fn save_state(&self) -> Result<Vec<u8>> {
        let dev = Device::Cpu;
        let mut t: BTreeMap<String, Tensor> = BTreeMap::new();
        for (name, var) in &self.mae.params.vars {
            let (m, v) = &self.opt.moments[name];
            t.insert(format!("w/{name}"), var.as_tensor().clone());
            t.insert(format!("m/{name}"), m.clone());
            t.insert(format!("v/{name}"), v.clone());
        }
        if let Some(p) = self.mae.projection() {
            t.insert(super::checkpoint::PROJECTION.into(), p.clone());
        }
        let mut rng_state = self.rng.get_seed().to_vec();
        rng_state.extend(self.rng.get_stream().to_le_bytes());
        rng_state.extend(self.rng.get_word_pos().to_le_bytes());
        let len = rng_state.len();
        t.insert("rng".into(), Tensor::from_vec(rng_state, len, &dev)?);
        t.insert(
            "step".into(),
            Tensor::from_vec(vec![self.step as u32], 1, &dev)?,
        );
        to_safetensors(&t)
    }

    /// Restores a state saved by [`Trainer::save_state`] for the same model and settings.
    pub fn load_state(
        model: &MaeConfig,
        cfg: TrainConfig,
        bytes: &[u8],
        dev: &Device,
    ) -> Result<Trainer> {
        let t = from_safetensors(bytes, dev)?;
        let mut trainer = Trainer::around(Mae::zeroed(model, dev)?, cfg, 0)?;
        let get = |k: &str| {
            t.get(k)
                .with_context(|| format!("training state lacks {k}"))
        };
        for (name, var) in &trainer.mae.params.vars {
            var.set(get(&format!("w/{name}"))?)?;
        }
        for (name, (m, v)) in trainer.opt.moments.iter_mut() {
            for (slot, key) in [(m, format!("m/{name}")), (v, format!("v/{name}"))] {
                let t = get(&key)?;
                anyhow::ensure!(
                    t.dims() == slot.dims(),
                    "training state tensor {key} is {:?}, expected {:?}",
                    t.dims(),
                    slot.dims()
                );
                *slot = t.clone();
            }
        }
        if let Some(p) = t.get(super::checkpoint::PROJECTION) {
            if model.encoder.dim != super::mae::EMBED_DIM {
                trainer.mae.set_projection(p.clone())?;
            }
        }
        let rng: Vec<u8> = get("rng")?.to_dtype(DType::U8)?.to_vec1()?;
        anyhow::ensure!(rng.len() == 56, "training state has a malformed RNG");
        let mut r = ChaCha8Rng::from_seed(rng[..32].try_into().unwrap());
        r.set_stream(u64::from_le_bytes(rng[32..40].try_into().unwrap()));
        r.set_word_pos(u128::from_le_bytes(rng[40..56].try_into().unwrap()));
        trainer.rng = r;
        trainer.step = get("step")?.to_vec1::<u32>()?[0] as u64;
        trainer.opt.step = trainer.step;
        Ok(trainer)
    }
}

/// Images per second of a training step and of [`Mae::embed`], measured on `dev`.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Throughput {
    pub train_images_per_s: f64,
    pub embed_images_per_s: f64,
}

/// Times `steps` training steps and `steps` embedding batches of `batch` random images of the
/// configured size (after one warm-up of each). For benchmarks; no assertion on the result.
pub fn measure_throughput(
    model: &MaeConfig,
    batch: usize,
    steps: usize,
    dev: &Device,
) -> Result<Throughput> {
    let s = model.encoder.image_size;
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let data: Vec<f32> = (0..batch * s * s)
        .map(|_| super::layers::normal(&mut rng))
        .collect();
    let x = Tensor::from_vec(data, (batch, 1, s, s), dev)?;
    let mut trainer = Trainer::new(model, TrainConfig::new(1e-4, steps as u64 + 1), 0, dev)?;
    trainer.step(&x)?;
    let t0 = std::time::Instant::now();
    for _ in 0..steps {
        trainer.step(&x)?;
    }
    let train = (steps * batch) as f64 / t0.elapsed().as_secs_f64();
    trainer.mae.embed(&x)?.to_vec2::<f32>()?;
    let t0 = std::time::Instant::now();
    for _ in 0..steps {
        trainer.mae.embed(&x)?.to_vec2::<f32>()?;
    }
    let embed = (steps * batch) as f64 / t0.elapsed().as_secs_f64();
    Ok(Throughput {
        train_images_per_s: train,
        embed_images_per_s: embed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::test_util::uniform;

    /// The in-place CPU update and the composite give the same bits, with and without weight
    /// decay, below and above the parallel grain, over several steps.
    #[test]
    fn in_place_update_is_the_composite_bit_for_bit() {
        for (n, decay) in [(7usize, None), (100_003, Some(0.05)), (40_000, None)] {
            let w0 = uniform(&[n], 1, -1.0, 1.0);
            let (w, m, v) = (
                w0.copy().unwrap(),
                w0.zeros_like().unwrap(),
                w0.zeros_like().unwrap(),
            );
            let (mut rw, mut rm, mut rv) =
                (w0.copy().unwrap(), m.copy().unwrap(), v.copy().unwrap());
            for t in 1..=3 {
                let g = uniform(&[n], 10 + t, -0.1, 0.1);
                let k = Step {
                    beta1: 0.9,
                    beta2: 0.95,
                    correction1: 1.0 - 0.9f64.powi(t as i32),
                    correction2: 1.0 - 0.95f64.powi(t as i32),
                    lr: 1.5e-3 * t as f64,
                    weight_decay: decay,
                };
                assert!(crate::nn::adamw_step::update_in_place(&w, &m, &v, &g, k).unwrap());
                (rw, rm, rv) = composite_update(&rw, &rm, &rv, &g, k).unwrap();
                for (a, b) in [(&w, &rw), (&m, &rm), (&v, &rv)] {
                    let (a, b) = (a.to_vec1::<f32>().unwrap(), b.to_vec1::<f32>().unwrap());
                    assert!(
                        a.iter().zip(&b).all(|(a, b)| a.to_bits() == b.to_bits()),
                        "n {n}, step {t}"
                    );
                }
            }
        }
    }
}

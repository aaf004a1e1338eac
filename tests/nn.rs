//! The MAE in candle: gradients reach every parameter, training is deterministic, learns, and
//! resumes bit-exactly; embeddings are unit vectors independent of batch composition.

use biodc::nn::checkpoint;
use biodc::nn::data::{batch, normalize_patch};
use biodc::nn::mae::{Mae, MaeConfig, EMBED_DIM};
use biodc::nn::train::{TrainConfig, Trainer};
use biodc::nn::vit::VitConfig;
use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn small_cfg() -> MaeConfig {
    MaeConfig {
        encoder: VitConfig {
            image_size: 32,
            patch_size: 8,
            channels: 1,
            dim: 48,
            depth: 2,
            heads: 3,
            mlp_ratio: 2,
            dropout: 0.1,
        },
        decoder_dim: 32,
        decoder_depth: 1,
        decoder_heads: 2,
        mask_ratio: 0.75,
        norm_pix_loss: true,
    }
}

/// Oriented stripes with random frequency, phase and angle, plus noise.
fn stripes(n: usize, size: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let (a, f, ph): (f32, f32, f32) = (
                rng.random_range(0.0..std::f32::consts::PI),
                rng.random_range(0.3..0.9),
                rng.random_range(0.0..std::f32::consts::TAU),
            );
            let px: Vec<f32> = (0..size * size)
                .map(|i| {
                    let (y, x) = ((i / size) as f32, (i % size) as f32);
                    1000.0
                        + 300.0 * ((x * a.cos() + y * a.sin()) * f + ph).sin()
                        + rng.random_range(-30.0..30.0)
                })
                .collect();
            normalize_patch(&px)
        })
        .collect()
}

fn eval_loss(mae: &Mae, x: &Tensor) -> f32 {
    let mut rng = ChaCha8Rng::seed_from_u64(99);
    mae.loss(x, &mut rng, false)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn every_parameter_gets_a_gradient() {
    let dev = Device::Cpu;
    let mae = Mae::new(&small_cfg(), 1, &dev).unwrap();
    let x = batch(&stripes(4, 32, 1), 32, &dev).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let grads = mae.loss(&x, &mut rng, true).unwrap().backward().unwrap();
    for (name, var) in &mae.params.vars {
        let g = grads
            .get(var)
            .unwrap_or_else(|| panic!("{name} has no gradient"));
        let norm = g
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(
            norm > 0.0 && norm.is_finite(),
            "{name}: gradient norm {norm}"
        );
    }
}

#[test]
fn gradient_matches_finite_differences() {
    let dev = Device::Cpu;
    let mae = Mae::new(&small_cfg(), 2, &dev).unwrap();
    let x = batch(&stripes(2, 32, 2), 32, &dev).unwrap();
    let loss = |m: &Mae| {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        m.loss(&x, &mut rng, false).unwrap()
    };
    let grads = loss(&mae).backward().unwrap();
    for name in [
        "vit.encoder.layer.0.layernorm_before.weight",
        "vit.encoder.layer.1.attention.attention.query.weight",
        "decoder.decoder_norm.bias",
    ] {
        let var = &mae.params.vars[name];
        let g: Vec<f32> = grads
            .get(var)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let orig: Vec<f32> = var.flatten_all().unwrap().to_vec1().unwrap();
        let i = g
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))
            .unwrap()
            .0;
        let eps = 1e-2f32;
        let at = |delta: f32| {
            let mut w = orig.clone();
            w[i] += delta;
            var.set(&Tensor::from_vec(w, var.shape(), &dev).unwrap())
                .unwrap();
            loss(&mae).to_scalar::<f32>().unwrap()
        };
        let numeric = (at(eps) - at(-eps)) / (2.0 * eps);
        var.set(&Tensor::from_vec(orig, var.shape(), &dev).unwrap())
            .unwrap();
        assert!(
            (numeric - g[i]).abs() <= 0.05 * g[i].abs().max(1e-3),
            "{name}[{i}]: analytic {} numeric {numeric}",
            g[i]
        );
    }
}

fn train(seed: u64, steps: usize, data: &[Vec<f32>]) -> Trainer {
    let dev = Device::Cpu;
    let mut t = Trainer::new(
        &small_cfg(),
        TrainConfig::new(2e-3, steps as u64),
        seed,
        &dev,
    )
    .unwrap();
    for s in 0..steps {
        let b = batch(&data[(s * 8) % data.len()..][..8], 32, &dev).unwrap();
        t.step(&b).unwrap();
    }
    t
}

#[test]
fn same_seed_same_weights_other_seed_differs() {
    let data = stripes(32, 32, 3);
    let a = checkpoint::weights(&train(7, 5, &data).mae).unwrap();
    let b = checkpoint::weights(&train(7, 5, &data).mae).unwrap();
    let c = checkpoint::weights(&train(8, 5, &data).mae).unwrap();
    assert_eq!(blake3::hash(&a), blake3::hash(&b));
    assert_ne!(blake3::hash(&a), blake3::hash(&c));
}

#[test]
fn held_out_loss_falls_and_resume_is_exact() {
    let dev = Device::Cpu;
    let data = stripes(64, 32, 4);
    let held_out = batch(&stripes(16, 32, 5), 32, &dev).unwrap();
    let steps = 120;
    let fresh = Mae::new(&small_cfg(), 11, &dev).unwrap();
    let before = eval_loss(&fresh, &held_out);
    let full = train(11, steps, &data);
    let after = eval_loss(&full.mae, &held_out);
    println!("held-out masked loss {before:.3} → {after:.3}");
    assert!(
        after <= 0.7 * before,
        "loss fell only from {before} to {after}"
    );

    // Stop halfway, save, load, continue: the same weights as never stopping.
    let mut half =
        Trainer::new(&small_cfg(), TrainConfig::new(2e-3, steps as u64), 11, &dev).unwrap();
    for s in 0..steps / 2 {
        half.step(&batch(&data[(s * 8) % data.len()..][..8], 32, &dev).unwrap())
            .unwrap();
    }
    let state = half.save_state().unwrap();
    let mut resumed = Trainer::load_state(
        &small_cfg(),
        TrainConfig::new(2e-3, steps as u64),
        &state,
        &dev,
    )
    .unwrap();
    assert_eq!(resumed.step, (steps / 2) as u64);
    for s in steps / 2..steps {
        resumed
            .step(&batch(&data[(s * 8) % data.len()..][..8], 32, &dev).unwrap())
            .unwrap();
    }
    assert_eq!(
        checkpoint::weights(&resumed.mae).unwrap(),
        checkpoint::weights(&full.mae).unwrap()
    );
}

#[test]
fn embeddings_are_unit_vectors_independent_of_the_batch() {
    let dev = Device::Cpu;
    let mae = Mae::new(&small_cfg(), 3, &dev).unwrap();
    let data = stripes(5, 32, 6);
    let all: Vec<Vec<f32>> = mae
        .embed(&batch(&data, 32, &dev).unwrap())
        .unwrap()
        .to_vec2()
        .unwrap();
    assert_eq!(all[0].len(), EMBED_DIM);
    for row in &all {
        let n: f32 = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((n - 1.0).abs() < 1e-4);
    }
    let alone: Vec<Vec<f32>> = mae
        .embed(&batch(&data[2..3], 32, &dev).unwrap())
        .unwrap()
        .to_vec2()
        .unwrap();
    for (a, b) in alone[0].iter().zip(&all[2]) {
        assert!((a - b).abs() < 1e-5);
    }
    // Checkpoint round trip gives the same embeddings.
    let bytes = checkpoint::weights(&mae).unwrap();
    let back = checkpoint::load(&small_cfg(), &bytes, &dev).unwrap();
    let again: Vec<Vec<f32>> = back
        .embed(&batch(&data, 32, &dev).unwrap())
        .unwrap()
        .to_vec2()
        .unwrap();
    assert_eq!(again, all);
}

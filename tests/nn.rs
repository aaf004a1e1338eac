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

// As in the biodc binary, so `throughput` measures what users get.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
            qkv_bias: true,
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

/// Patches drawn from a few fixed structures (stripes at 3 angles × 2 frequencies) with a
/// random gain, offset and noise: masked patches are predictable from the visible ones once
/// the structure is recognised, so a working MAE must get well below the trivial loss (1.0 for
/// per-patch-normalised targets, predicting each patch's mean).
fn textures(n: usize, size: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let k = rng.random_range(0..6usize);
            let a = (k % 3) as f32 * std::f32::consts::PI / 3.0;
            let f = if k < 3 { 0.5 } else { 0.9 };
            let gain = rng.random_range(100.0..2000.0f32);
            let offset = rng.random_range(0.0..20_000.0f32);
            let px: Vec<f32> = (0..size * size)
                .map(|i| {
                    let (y, x) = ((i / size) as f32, (i % size) as f32);
                    offset
                        + gain
                            * (((x * a.cos() + y * a.sin()) * f).sin()
                                + rng.random_range(-0.1..0.1))
                })
                .collect();
            normalize_patch(&px)
        })
        .collect()
}

/// The device the gradient tests run on: a GPU when this build has CUDA and one answers
/// (`cargo test --release --features cuda --test nn` on a GPU machine), else the CPU, whose
/// fused kernels these tests then check.
fn gradient_device() -> Device {
    let dev = biodc::nn::device::select(biodc::nn::device::DeviceChoice::Auto).unwrap();
    eprintln!("gradient tests on {}", biodc::nn::device::name(&dev));
    dev
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
    let dev = gradient_device();
    let mae = Mae::new(&small_cfg(), 1, &dev).unwrap();
    let x = batch(&stripes(4, 32, 1), 32, &dev).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let grads = mae.loss(&x, &mut rng, true).unwrap().backward().unwrap();
    let norm = |name: &str| -> f32 {
        let g = grads
            .get(&mae.params.vars[name])
            .unwrap_or_else(|| panic!("{name} has no gradient"));
        g.sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            .sqrt()
    };
    // Encoder: patch embedding (2), CLS, 2 blocks of 16, final norm (2); decoder: embed (2),
    // mask token, 1 block of 16, norm (2), prediction (2).
    assert_eq!(mae.params.vars.len(), 3 + 2 * 16 + 2 + 2 + 1 + 16 + 2 + 2);
    for name in mae.params.vars.keys() {
        let n = norm(name);
        if name.ends_with("attention.key.bias") {
            // Adding a constant to every score of a softmax row changes nothing, so the key
            // bias has a zero gradient in exact arithmetic (it is kept for Hugging Face's
            // layout); here it only carries rounding noise.
            let q = norm(&name.replace("key.bias", "query.bias"));
            assert!(
                n.is_finite() && n < 1e-3 * q,
                "{name}: {n} vs query bias {q}"
            );
        } else {
            assert!(n > 0.0 && n.is_finite(), "{name}: gradient norm {n}");
        }
    }
}

#[test]
fn gradient_matches_finite_differences() {
    let dev = gradient_device();
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
        "vit.encoder.layer.1.attention.attention.value.bias",
        "vit.encoder.layer.0.intermediate.dense.weight",
        "vit.layernorm.weight",
        "decoder.mask_token",
        "decoder.decoder_layers.0.layernorm_after.weight",
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

fn train(seed: u64, steps: usize, lr: f64, data: &[Vec<f32>]) -> Trainer {
    let dev = Device::Cpu;
    let mut t = Trainer::new(&small_cfg(), TrainConfig::new(lr, steps as u64), seed, &dev).unwrap();
    for s in 0..steps {
        t.step(&batch_at(data, s)).unwrap();
    }
    t
}

/// The `s`-th batch of 8 of `data` (cycling).
fn batch_at(data: &[Vec<f32>], s: usize) -> Tensor {
    batch(&data[(s * 8) % data.len()..][..8], 32, &Device::Cpu).unwrap()
}

#[test]
fn same_seed_same_weights_other_seed_differs() {
    let data = stripes(32, 32, 3);
    let a = checkpoint::weights_to_safetensors(&train(7, 5, 2e-3, &data).mae).unwrap();
    let b = checkpoint::weights_to_safetensors(&train(7, 5, 2e-3, &data).mae).unwrap();
    let c = checkpoint::weights_to_safetensors(&train(8, 5, 2e-3, &data).mae).unwrap();
    assert_eq!(a, b);
    assert_ne!(a, c);
}

#[test]
fn held_out_masked_loss_falls() {
    let dev = Device::Cpu;
    let data = textures(64, 32, 4);
    let held_out = batch(&textures(16, 32, 5), 32, &dev).unwrap();
    let before = eval_loss(&Mae::new(&small_cfg(), 11, &dev).unwrap(), &held_out);
    let after = eval_loss(&train(11, 300, 3e-3, &data).mae, &held_out);
    println!("held-out masked loss {before:.3} → {after:.3}");
    // ≥ 30 % down, and well below the 1.0 of predicting every masked patch as flat.
    assert!(
        after <= 0.7 * before && after < 0.8,
        "loss fell only from {before} to {after}"
    );
}

#[test]
fn resume_gives_the_same_weights_as_not_stopping() {
    let dev = Device::Cpu;
    let data = stripes(32, 32, 4);
    let (steps, lr) = (12, 2e-3);
    let full = train(11, steps, lr, &data);
    // Stop halfway, save, load, continue.
    let mut half =
        Trainer::new(&small_cfg(), TrainConfig::new(lr, steps as u64), 11, &dev).unwrap();
    for s in 0..steps / 2 {
        half.step(&batch_at(&data, s)).unwrap();
    }
    let state = half.save_state().unwrap();
    drop(half);
    let mut resumed = Trainer::load_state(
        &small_cfg(),
        TrainConfig::new(lr, steps as u64),
        &state,
        &dev,
    )
    .unwrap();
    assert_eq!(resumed.step, (steps / 2) as u64);
    for s in steps / 2..steps {
        resumed.step(&batch_at(&data, s)).unwrap();
    }
    assert_eq!(
        checkpoint::weights_to_safetensors(&resumed.mae).unwrap(),
        checkpoint::weights_to_safetensors(&full.mae).unwrap()
    );
    assert_eq!(resumed.save_state().unwrap(), full.save_state().unwrap());
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
    // Deterministic: the same call twice gives the same bits.
    let twice: Vec<Vec<f32>> = mae
        .embed(&batch(&data, 32, &dev).unwrap())
        .unwrap()
        .to_vec2()
        .unwrap();
    assert_eq!(twice, all);
}

#[test]
fn checkpoint_round_trip_keeps_embeddings_and_names() {
    let dev = Device::Cpu;
    let data = stripes(8, 32, 6);
    let x = batch(&data, 32, &dev).unwrap();
    let mut t = Trainer::new(&small_cfg(), TrainConfig::new(1e-3, 3), 21, &dev).unwrap();
    for _ in 0..3 {
        t.step(&x).unwrap();
    }
    let mae = t.mae;
    let all: Vec<Vec<f32>> = mae.embed(&x).unwrap().to_vec2().unwrap();
    let bytes = checkpoint::weights_to_safetensors(&mae).unwrap();
    assert_eq!(bytes, checkpoint::weights_to_safetensors(&mae).unwrap());
    let back = checkpoint::load(&small_cfg(), &bytes, &dev).unwrap();
    let again: Vec<Vec<f32>> = back.embed(&x).unwrap().to_vec2().unwrap();
    assert_eq!(again, all);
    assert_eq!(checkpoint::weights_to_safetensors(&back).unwrap(), bytes);

    // Hugging Face ViT-MAE names, the fixed tensors included.
    let names = checkpoint::from_safetensors(&bytes, &dev).unwrap();
    for name in [
        "vit.embeddings.cls_token",
        "vit.embeddings.position_embeddings",
        "vit.embeddings.patch_embeddings.projection.weight",
        "vit.encoder.layer.1.attention.attention.query.weight",
        "vit.encoder.layer.1.attention.attention.value.bias",
        "vit.encoder.layer.1.attention.output.dense.weight",
        "vit.encoder.layer.1.layernorm_before.weight",
        "vit.encoder.layer.1.layernorm_after.bias",
        "vit.encoder.layer.1.intermediate.dense.weight",
        "vit.encoder.layer.1.output.dense.bias",
        "vit.layernorm.weight",
        "decoder.decoder_embed.weight",
        "decoder.mask_token",
        "decoder.decoder_pos_embed",
        "decoder.decoder_layers.0.attention.attention.key.weight",
        "decoder.decoder_norm.bias",
        "decoder.decoder_pred.weight",
        checkpoint::PROJECTION,
    ] {
        assert!(names.contains_key(name), "checkpoint lacks {name}");
    }
    assert_eq!(
        names["vit.embeddings.patch_embeddings.projection.weight"].dims(),
        &[48, 1, 8, 8]
    );
    assert_eq!(
        names["vit.embeddings.position_embeddings"].dims(),
        &[1, 17, 48]
    );
    // A checkpoint missing a tensor, or of another architecture, is refused.
    let mut other = small_cfg();
    other.encoder.depth = 3;
    assert!(checkpoint::load(&other, &bytes, &dev).is_err());
    assert!(checkpoint::load(&small_cfg(), b"not safetensors", &dev).is_err());

    let cfg = checkpoint::config_json(&small_cfg());
    assert_eq!(cfg["hidden_size"], 48);
    assert_eq!(cfg["num_hidden_layers"], 2);
    assert_eq!(cfg["intermediate_size"], 96);
    assert_eq!(cfg["decoder_hidden_size"], 32);
    assert_eq!(cfg["norm_pix_loss"], true);
}

#[test]
fn token_features_are_in_patch_order_and_mc_dropout_is_seeded() {
    let dev = Device::Cpu;
    let mae = Mae::new(&small_cfg(), 4, &dev).unwrap();
    let data = stripes(3, 32, 8);
    let x = batch(&data, 32, &dev).unwrap();
    let f = mae.encoder.features(&x, None).unwrap();
    assert_eq!(f.dims(), &[3, 16, 48]);
    // Changing only the bottom-right patch changes token 15 the most (attention mixes a
    // little into the others).
    let mut edited = data[0].clone();
    for y in 24..32 {
        for x in 24..32 {
            edited[y * 32 + x] += 3.0;
        }
    }
    let g = mae
        .encoder
        .features(&batch(&[edited], 32, &dev).unwrap(), None)
        .unwrap();
    let change: Vec<f32> = (f.narrow(0, 0, 1).unwrap() - g)
        .unwrap()
        .sqr()
        .unwrap()
        .sum(2)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec1()
        .unwrap();
    let most = (0..16)
        .max_by(|&a, &b| change[a].total_cmp(&change[b]))
        .unwrap();
    assert_eq!(most, 15, "{change:?}");
    // MC dropout: passes differ from each other, and repeat with the same seed.
    let pass = |seed: u64| -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        mae.encoder
            .features(&x, Some(&mut rng))
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    };
    assert_eq!(pass(1), pass(1));
    assert_ne!(pass(1), pass(2));
}

#[test]
fn training_state_round_trips_exactly() {
    let dev = Device::Cpu;
    let x = batch(&stripes(4, 32, 9), 32, &dev).unwrap();
    let mut t = Trainer::new(&small_cfg(), TrainConfig::new(1e-3, 10), 5, &dev).unwrap();
    t.step(&x).unwrap();
    let state = t.save_state().unwrap();
    let back = Trainer::load_state(&small_cfg(), TrainConfig::new(1e-3, 10), &state, &dev).unwrap();
    assert_eq!(back.save_state().unwrap(), state);
    assert!(Trainer::load_state(
        &small_cfg(),
        TrainConfig::new(1e-3, 10),
        &state[..100],
        &dev
    )
    .is_err());
}

/// `cargo test --release --test nn throughput -- --ignored --nocapture`
#[test]
#[ignore]
fn throughput() {
    let size: usize = std::env::var("BIODC_BENCH_SIZE").map_or(224, |s| s.parse().unwrap());
    let batch: usize = std::env::var("BIODC_BENCH_BATCH").map_or(8, |s| s.parse().unwrap());
    let steps: usize = std::env::var("BIODC_BENCH_STEPS").map_or(5, |s| s.parse().unwrap());
    let presets = std::env::var("BIODC_BENCH_PRESETS").unwrap_or_else(|_| "tiny".into());
    for name in presets.split(',') {
        let mut cfg = MaeConfig::preset(name).unwrap();
        cfg.encoder = cfg.encoder.with_image_size(size).unwrap();
        let t = biodc::nn::train::measure_throughput(&cfg, batch, steps, &Device::Cpu).unwrap();
        println!(
            "{name} ({} encoder + {} decoder parameters) {size}² batch {batch}: \
             train {:.2} img/s, embed {:.2} img/s",
            cfg.encoder_param_count(),
            cfg.param_count() - cfg.encoder_param_count(),
            t.train_images_per_s,
            t.embed_images_per_s
        );
    }
}

/// Writes a small trained checkpoint, its `config.json`, an input batch, biodc's token
/// features, embeddings and masked loss into `$BIODC_HF_DIR`, for a check against
/// transformers' ViT-MAE in Python:
///
/// ```text
/// BIODC_HF_DIR=/tmp/hf cargo test --release --test nn export_for -- --ignored
/// python - /tmp/hf <<'PY'
/// import sys, torch
/// from safetensors.torch import load_file
/// from transformers import ViTMAEModel, ViTMAEForPreTraining
/// d = sys.argv[1]; io = load_file(f"{d}/io.safetensors"); x = io["x"]
/// m = ViTMAEModel.from_pretrained(d, mask_ratio=0.0).eval()
/// n = io["features"].shape[1]
/// noise = torch.arange(n, dtype=torch.float32).expand(x.shape[0], n)  # ascending: no shuffle
/// with torch.no_grad():
///     h = m(pixel_values=x, noise=noise).last_hidden_state[:, 1:]
///     print("features", (h - io["features"]).abs().max().item())
///     e = h.mean(1) @ load_file(f"{d}/model.safetensors")["biodc.embed_projection"]
///     print("embed", (e / e.norm(dim=1, keepdim=True) - io["embed"]).abs().max().item())
///     p = ViTMAEForPreTraining.from_pretrained(d).eval()
///     print("loss", p(pixel_values=x, noise=io["noise"]).loss.item(), io["loss"].item())
/// PY
/// ```
///
/// With transformers 5.24 / torch 2.15: every tensor loads (only `biodc.embed_projection` is
/// reported unused), features agree to 1e-6, embeddings to 6e-8, losses to 1e-7.
#[test]
#[ignore]
fn export_for_hugging_face() {
    let Ok(dir) = std::env::var("BIODC_HF_DIR") else {
        return;
    };
    let dir = std::path::Path::new(&dir);
    let dev = Device::Cpu;
    let data = stripes(8, 32, 12);
    let x = batch(&data, 32, &dev).unwrap();
    let mut t = Trainer::new(&small_cfg(), TrainConfig::new(3e-3, 20), 3, &dev).unwrap();
    for _ in 0..20 {
        t.step(&x).unwrap();
    }
    let f = t.mae.encoder.features(&x, None).unwrap();
    let e = t.mae.embed(&x).unwrap();
    // The masking `loss` draws from seed 5, as transformers' `noise`: noise[perm[r]] = r.
    let (b, n) = (8, 16);
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let mut noise = vec![0f32; b * n];
    for s in 0..b {
        let mut perm: Vec<usize> = (0..n).collect();
        rand::seq::SliceRandom::shuffle(perm.as_mut_slice(), &mut rng);
        for (r, &tok) in perm.iter().enumerate() {
            noise[s * n + tok] = r as f32;
        }
    }
    let noise = Tensor::from_vec(noise, (b, n), &dev).unwrap();
    let loss = t
        .mae
        .loss(&x, &mut ChaCha8Rng::seed_from_u64(5), false)
        .unwrap()
        .reshape(1)
        .unwrap();
    std::fs::write(
        dir.join("model.safetensors"),
        checkpoint::weights_to_safetensors(&t.mae).unwrap(),
    )
    .unwrap();
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_vec_pretty(&checkpoint::config_json(&small_cfg())).unwrap(),
    )
    .unwrap();
    let io: std::collections::BTreeMap<String, Tensor> = [
        ("x".to_string(), x),
        ("features".to_string(), f),
        ("embed".to_string(), e),
        ("noise".to_string(), noise),
        ("loss".to_string(), loss),
    ]
    .into_iter()
    .collect();
    std::fs::write(
        dir.join("io.safetensors"),
        checkpoint::to_safetensors(&io).unwrap(),
    )
    .unwrap();
}

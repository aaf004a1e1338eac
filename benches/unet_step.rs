//! Speed of one U-Net training step (batch 8 of 128² crops, the default network) on CPU: the
//! hand-written pass biodc trains with, candle's autograd over the same network, and — with
//! `--torch PYTHON` — the PyTorch U-Net of `benches/pytorch_unet.py` on the same machine.
//!
//! ```sh
//! cargo bench --bench unet_step -- [--steps 20] [--torch /tmp/torchvenv/bin/python]
//! ```

use biodc::nn::train::{AdamW, TrainConfig};
use biodc::nn::unet::{UNet, UNetConfig};
use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::time::Instant;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    // As `biodc train` runs (src/main.rs).
    biodc::allocator::configure();
    biodc::nn::device::on_a_pool_thread(steps);
}

fn steps() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let steps: usize = value("--steps").map_or(20, |s| s.parse().expect("--steps N"));
    let (b, s) = (8usize, 128usize);
    let dev = Device::Cpu;
    let net = UNet::new(&UNetConfig::for_window(224), 0, &dev).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let x: Vec<f32> = (0..b * s * s)
        .map(|_| rng.random_range(-2.0..2.0))
        .collect();
    let t: Vec<f32> = x.iter().map(|&v| (v > 1.0) as u8 as f32).collect();
    let cfg = TrainConfig {
        betas: (0.9, 0.999),
        weight_decay: 1e-4,
        ..TrainConfig::new(1e-3, 1000)
    };

    let mut opt = AdamW::new(&net.params, cfg.clone()).unwrap();
    let time = |f: &mut dyn FnMut()| {
        f(); // warm-up: buffers, thread pools
        let started = Instant::now();
        for _ in 0..steps {
            f();
        }
        started.elapsed().as_secs_f64() / steps as f64
    };
    let hand = time(&mut || {
        let (_, g) =
            biodc::nn::unet_step::loss_and_gradients(&net, &x, &t, (b, s, s), &mut rng).unwrap();
        opt.update(&net.params, &g).unwrap();
    });
    let xt = Tensor::from_vec(x.clone(), (b, s, s, 1), &dev).unwrap();
    let tt = Tensor::from_vec(t.clone(), (b, 1, s, s), &dev).unwrap();
    let mut opt = AdamW::new(&net.params, cfg).unwrap();
    let candle = time(&mut || {
        let z = net.forward(&xt, Some(&mut rng)).unwrap();
        let loss = biodc::nn::loss::bce_dice(&z, &tt).unwrap();
        opt.update(&net.params, &loss.backward().unwrap()).unwrap();
    });
    let threads = rayon::current_num_threads();
    println!("U-Net 16-32-64-128, batch {b} × {s}², {threads} threads, mean of {steps} steps:");
    println!("| implementation | ms per step | crops/s |");
    println!("|---|---|---|");
    for (name, sec) in [
        ("biodc, hand-written pass", hand),
        ("biodc, candle autograd", candle),
    ] {
        println!("| {name} | {:.0} | {:.1} |", sec * 1e3, b as f64 / sec);
    }
    if let Some(py) = value("--torch") {
        let out = std::process::Command::new(py)
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/benches/pytorch_unet.py"
            ))
            .args([
                "--bench-steps",
                &steps.to_string(),
                "--threads",
                &threads.to_string(),
            ])
            .output()
            .expect("running PyTorch");
        let line = String::from_utf8_lossy(&out.stdout);
        match serde_json::from_str::<serde_json::Value>(line.trim()) {
            Ok(j) => {
                let sec = j["seconds_per_step"].as_f64().unwrap();
                println!(
                    "| PyTorch {} (same network, BatchNorm) | {:.0} | {:.1} |",
                    j["torch"].as_str().unwrap_or(""),
                    sec * 1e3,
                    b as f64 / sec
                );
            }
            Err(_) => eprintln!(
                "pytorch_unet.py failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ),
        }
    }
}

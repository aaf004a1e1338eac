//! How well MAE embeddings separate the synthetic conditions (issue 3, acceptance 3), against
//! the length of pretraining: leave-one-out 5-NN condition accuracy on the pretrain test's
//! cohort (12 stacks of 2×256×256, 96 patches of 128²), beside raw pixels (8×8) and hand-made
//! filter-response statistics on the same patches.
//!
//!     cargo bench --bench embedding_knn [-- EPOCHS...]     (default 0 2 8 30; ~1 min on 2 cores)
//!
//! Or the same measure for every embedding of an existing project's HEAD:
//!
//!     cargo bench --bench embedding_knn -- --project DIR

use biodc::repo::{Config, Repo};
use biodc::stages::{self, embed, import, pretrain};
use biodc::synth::{write_cohort, SynthParams};

/// Prints the condition k-NN table for every embedding at `dir`'s HEAD.
fn existing_project(dir: &str) {
    let repo = Repo::discover(std::path::Path::new(dir)).unwrap();
    let (_, v) = repo.version(None).unwrap();
    println!("| embedding | patches | 5-NN | raw pixels 8×8 | filter statistics |");
    println!("|---|---|---|---|---|");
    for model in v.embeddings.keys() {
        let k = embed::condition_knn(&repo, &v, model, 5).unwrap();
        println!(
            "| {model} | {} | {:.3} | {:.3} | {:.3} |",
            k.patches, k.embedding, k.raw_pixels, k.texture
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(i) = args.iter().position(|a| a == "--project") {
        return existing_project(args.get(i + 1).expect("--project DIR"));
    }
    let epochs: Vec<usize> = args.iter().filter_map(|a| a.parse().ok()).collect();
    let epochs = if epochs.is_empty() {
        vec![0, 2, 8, 30]
    } else {
        epochs
    };
    let tmp = tempfile::tempdir().unwrap();
    let cohort = tmp.path().join("cohort");
    let params = SynthParams {
        stacks: 12,
        shape: [2, 256, 256],
        seed: 11,
        defects: false,
    };
    write_cohort(&cohort, &params).unwrap();
    println!(
        "machine: {} threads; cohort: 12 stacks of 2×256×256, seed 11, patches of 128²",
        rayon::current_num_threads()
    );
    println!("| pretraining | steps | MAE 5-NN | raw pixels 8×8 | filter statistics |");
    println!("|---|---|---|---|---|");
    for e in epochs {
        let project = tmp.path().join(format!("p{e}"));
        std::fs::create_dir_all(&project).unwrap();
        let repo = Repo::init(
            &project,
            Config {
                patch_size: 128,
                ..Config::default()
            },
        )
        .unwrap();
        let ip = import::ImportParams {
            paths: vec![cohort.join("images")],
            condition_from_dir: true,
            ..Default::default()
        };
        stages::run(&repo, |r, h, v| import::import(r, h, v, &ip)).unwrap();
        let pp = pretrain::PretrainParams {
            preset: "tiny".into(),
            epochs: e.max(1),
            batch: 8,
            lr: 1.5e-3,
            mask_ratio: 0.75,
            seed: 0,
            name: "mae".into(),
            checkpoint_every: 1000,
            // 0 epochs: the encoder at its random initialisation.
            max_steps: (e == 0).then_some(0),
            scratch: true,
        };
        let (_, r) = stages::run(&repo, |r, h, v| pretrain::pretrain(r, h, v, &pp, false)).unwrap();
        let ep = embed::EmbedParams {
            model: "mae".into(),
            batch: 32,
            fresh: true,
        };
        stages::run(&repo, |r, h, v| embed::embed(r, h, v, &ep)).unwrap();
        let (_, v) = repo.version(None).unwrap();
        let k = embed::condition_knn(&repo, &v, "mae", 5).unwrap();
        let what = match e {
            0 => "none (random init)".to_string(),
            e => format!("{e} epochs"),
        };
        println!(
            "| {what} | {} | {:.3} | {:.3} | {:.3} |",
            r.steps, k.embedding, k.raw_pixels, k.texture
        );
    }
}

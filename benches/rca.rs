//! RCA benchmark (issue 6, acceptance 3): reverse classification accuracy of one 7×1024×1024
//! stack against a 25-patch reference set — features, forest training and the 25 predictions —
//! then the forest alone on a fixed feature matrix, which it also writes for
//! `benches/sklearn_forest.py` to time scikit-learn's RandomForestClassifier on the same data.
//!
//!     cargo bench --bench rca [-- Z SIZE]        (default 7 1024)
//!
//! The "prediction" scored is the stack's ground truth eroded by a 3×3 square; the references
//! are 224² crops of four other synthetic stacks with their truth.

use biodc::io::Plane;
use biodc::pixel::{dice, features, forest, PixelClassifierParams};
use biodc::stages::monitor::rca;
use biodc::synth::{generate_stack, SynthParams};
use std::io::Write;
use std::time::Instant;

fn f32_planes(s: &biodc::io::Stack) -> Vec<Vec<f32>> {
    s.planes.iter().map(Plane::to_f32).collect()
}

fn u8_planes(s: &biodc::io::Stack) -> Vec<Vec<u8>> {
    s.planes
        .iter()
        .map(|p| p.to_f32().iter().map(|&v| (v > 0.0) as u8).collect())
        .collect()
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let z = *args.first().unwrap_or(&7);
    let size = *args.get(1).unwrap_or(&1024);
    let p = SynthParams {
        stacks: 5,
        shape: [z, size, size],
        seed: 11,
        defects: false,
    };
    let t = Instant::now();
    let target = generate_stack(&p, 0);
    let slices = f32_planes(&target.image);
    let pred: Vec<Vec<u8>> = u8_planes(&target.mask)
        .iter()
        .map(|m| biodc::pixel::morph(m, size, size, 1, false))
        .collect();
    // 25 references: crops from four other stacks.
    let tile = 224.min(size);
    let mut refs = Vec::new();
    for i in 1..5 {
        let s = generate_stack(
            &SynthParams {
                shape: [2, 448.max(tile), 448.max(tile)],
                ..p.clone()
            },
            i,
        );
        let (img, msk) = (f32_planes(&s.image), u8_planes(&s.mask));
        let w = 448.max(tile);
        for k in 0..7 {
            if refs.len() == 25 {
                break;
            }
            let (zz, y0, x0) = (k % 2, (k / 2 % 2) * (w - tile), (k / 4) * (w - tile));
            let crop = |v: &dyn Fn(usize) -> f32| -> Vec<f32> {
                (0..tile * tile)
                    .map(|q| v((y0 + q / tile) * w + x0 + q % tile))
                    .collect()
            };
            let im = crop(&|q| img[zz][q]);
            let ms: Vec<u8> = crop(&|q| msk[zz][q] as f32)
                .iter()
                .map(|&v| v as u8)
                .collect();
            refs.push((im, ms));
        }
    }
    println!(
        "synthesised a {z}×{size}×{size} stack and {} references in {:.1} s",
        refs.len(),
        t.elapsed().as_secs_f64()
    );
    let truth_dice = dice(&pred.concat(), &u8_planes(&target.mask).concat());

    let params = PixelClassifierParams::default();
    let t = Instant::now();
    let r = rca(&slices, &pred, size, size, &refs, tile, &params).unwrap();
    let total = t.elapsed().as_secs_f64();
    println!(
        "RCA of {z}×{size}×{size} against {} references ({} trees, depth {}, {} px/class), {} threads: {total:.2} s; RCA {:.3} (mean {:.3}); true Dice {truth_dice:.3}",
        refs.len(),
        params.forest.trees,
        params.forest.max_depth,
        params.per_class,
        rayon::current_num_threads(),
        r.best,
        r.mean
    );

    // The forest alone on one feature matrix: training pixels from the stack, test pixels from
    // the references.
    let t = Instant::now();
    let k = features::COUNT;
    let (mut xtr, mut ytr) = (Vec::new(), Vec::new());
    let mut norm = slices.clone();
    features::normalise_together(&mut norm);
    for (img, lab) in norm.iter().zip(&pred) {
        let planes = features::feature_planes(img, size, size);
        for px in (0..size * size).step_by(97) {
            xtr.extend(planes.iter().map(|p| p[px]));
            ytr.push(lab[px]);
        }
    }
    let (mut xte, mut yte) = (Vec::new(), Vec::new());
    let mut rimgs: Vec<Vec<f32>> = refs.iter().map(|r| r.0.clone()).collect();
    features::normalise_together(&mut rimgs);
    for (img, (_, lab)) in rimgs.iter().zip(&refs).take(10) {
        let planes = features::feature_planes(img, tile, tile);
        for px in 0..tile * tile {
            xte.extend(planes.iter().map(|p| p[px]));
            yte.push(lab[px]);
        }
    }
    let feat_s = t.elapsed().as_secs_f64();
    let (ntr, nte) = (ytr.len(), yte.len());
    let fp = forest::ForestParams::default();
    let t = Instant::now();
    let f = forest::Forest::fit(&xtr, ntr, k, &ytr, &fp);
    let fit_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let yp = f.predict(&xte);
    let pred_s = t.elapsed().as_secs_f64();
    let acc = yp.iter().zip(&yte).filter(|(a, b)| a == b).count() as f64 / nte as f64;
    println!(
        "forest alone: features {feat_s:.2} s; fit {ntr}×{k} ({} trees, depth {}) {fit_s:.2} s; predict {nte} pixels {pred_s:.2} s; accuracy {acc:.4}",
        fp.trees, fp.max_depth
    );
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/rca-bench");
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, bytes: &[u8]| {
        std::fs::File::create(dir.join(name))
            .unwrap()
            .write_all(bytes)
            .unwrap()
    };
    write(
        "xtr.f32",
        &xtr.iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<u8>>(),
    );
    write(
        "xte.f32",
        &xte.iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<u8>>(),
    );
    write("ytr.u8", &ytr);
    write("yte.u8", &yte);
    write(
        "meta.json",
        format!(
            r#"{{"features": {k}, "trees": {}, "max_depth": {}, "min_leaf": {}, "biodc_fit_s": {fit_s}, "biodc_predict_s": {pred_s}, "biodc_accuracy": {acc}}}"#,
            fp.trees, fp.max_depth, fp.min_leaf
        )
        .as_bytes(),
    );
    println!(
        "feature matrices written to {} (run benches/sklearn_forest.py)",
        dir.display()
    );
}

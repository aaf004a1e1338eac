//! Stage 3: train a segmenter on the annotated core set, segment whole stacks, hunt for the
//! patches it struggles with, and fine-tune on a critical set without forgetting.

mod common;

use common::*;
use std::collections::BTreeSet;
use std::path::Path;

/// (shape, 0/1 voxels) of a TIFF mask stack.
fn binary(path: &Path) -> (Vec<usize>, Vec<u8>) {
    let (info, v) = biodc::io::tiff::read_binary_mask(path).unwrap();
    (info.shape.to_vec(), v)
}

use biodc::pixel::dice;

/// A project with a pretrained MAE, a 16-patch core set annotated from ground truth and M0
/// trained on it: (tempdir, project, cohort).
fn trained_m0() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let (tmp, project, cohort) = project_with(Cohort {
        stacks: 12,
        shape: "2,224,224",
        seed: 3,
        patch: 112,
        defects: false,
    });
    import_cohort(&project, &cohort);
    ok(&project, &["pretrain", "--epochs", "3", "--seed", "1"]);
    ok(&project, &["embed"]);
    ok(&project, &["coreset", "-k", "16"]);
    let masks = tmp.path().join("masks-core");
    expert(&project, &cohort, "coreset", None, &masks);
    ok(
        &project,
        &["annotate", masks.to_str().unwrap(), "--round", "core"],
    );
    ok(
        &project,
        &[
            "train", "--name", "M0", "--sets", "coreset", "--epochs", "30", "--seed", "1",
        ],
    );
    (tmp, project, cohort)
}

fn set_patches(project: &Path, set: &str) -> Vec<String> {
    let repo = biodc::repo::Repo::discover(project).unwrap();
    let (_, v) = repo.version(None).unwrap();
    v.sets[set].patches.clone()
}

#[test]
fn m0_segments_held_out_stacks_and_hunt_finds_its_mistakes() {
    let (tmp, project, cohort) = trained_m0();
    let core: BTreeSet<String> = set_patches(&project, "coreset")
        .iter()
        .map(|p| biodc::version::stack_of_patch_id(p).unwrap().to_string())
        .collect();

    // Segment every stack: masks have the input's shape; Dice on the stacks the core set
    // never saw.
    let out = tmp.path().join("seg");
    ok(
        &project,
        &[
            "segment",
            "--model",
            "M0",
            "--all",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    let (mut inter, mut total, mut held_out) = (0usize, 0usize, 0);
    for entry in std::fs::read_dir(cohort.join("masks")).unwrap() {
        let truth_path = entry.unwrap().path();
        let name = biodc::io::files::stack_name(&truth_path);
        let (shape, pred) = binary(&out.join(format!("{name}.tif")));
        let (truth_shape, truth) = binary(&truth_path);
        assert_eq!(
            shape, truth_shape,
            "{name}: mask shape differs from the input's"
        );
        if !core.contains(&name) {
            held_out += 1;
            inter += pred
                .iter()
                .zip(&truth)
                .filter(|(&a, &b)| a & b == 1)
                .count();
            total += pred
                .iter()
                .chain(&truth)
                .map(|&x| x as usize)
                .sum::<usize>();
        }
    }
    let d = 2.0 * inter as f64 / total as f64;
    println!("M0 Dice on {held_out} held-out stacks: {d:.3}");
    assert!(held_out >= 2, "the core set covered almost every stack");
    assert!(d >= 0.7, "M0 Dice on held-out stacks {d:.3} < 0.7");

    rca_tracks_true_dice(&project, &cohort, &out);

    // Hunt over every unannotated patch; the uncertainty score must rank the patches by
    // their actual error.
    let hunt = json(
        &project,
        &[
            "hunt", "--model", "M0", "--top", "1000", "--passes", "10", "--json",
        ],
    );
    let set = hunt["set"].as_str().unwrap().to_string();
    let ids: Vec<String> = hunt["top"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["patch"].as_str().unwrap().to_string())
        .collect();
    let truth_dir = tmp.path().join("truth");
    expert(&project, &cohort, &set, None, &truth_dir);
    let pred_dir = tmp.path().join("pred");
    ok(
        &project,
        &[
            "export",
            "--set",
            &set,
            "--with-prediction",
            "M0",
            "--to",
            pred_dir.to_str().unwrap(),
        ],
    );
    let mut score = Vec::new();
    let mut error = Vec::new();
    for (t, id) in hunt["top"].as_array().unwrap().iter().zip(&ids) {
        let (_, truth) = binary(&truth_dir.join(format!("{id}.tif")));
        let (_, pred) = binary(&pred_dir.join("predictions").join(format!("{id}.tif")));
        score.push(t["disagreement"].as_f64().unwrap());
        error.push(1.0 - dice(&pred, &truth));
        assert!(pred_dir
            .join("triptychs")
            .join(format!("{id}.png"))
            .exists());
    }
    let rho = biodc::stats::spearman(&score, &error);
    println!(
        "Spearman(uncertainty, 1 − Dice) over {} patches: {rho:.3}",
        ids.len()
    );
    assert!(rho >= 0.4, "Spearman {rho:.3} < 0.4");
}

/// Reverse classification accuracy against true Dice: every stack's M0 prediction (scored by
/// `monitor`) plus, per stack, two copies of its ground truth degraded by erosion, dilation,
/// dropped branches or noise (scored through the library with the same reference set).
fn rca_tracks_true_dice(project: &Path, cohort: &Path, seg: &Path) {
    use biodc::stages::monitor;
    let mon = json(project, &["monitor", "--model", "M0", "--all", "--json"]);
    let mut rca = Vec::new();
    let mut truth_dice = Vec::new();
    for s in mon["scores"].as_array().unwrap() {
        let name = s["stack"].as_str().unwrap();
        let (_, pred) = binary(&seg.join(format!("{name}.tif")));
        let (_, truth) = binary(&cohort.join("masks").join(format!("{name}.tif")));
        rca.push(s["rca"].as_f64().unwrap());
        truth_dice.push(dice(&pred, &truth));
    }
    let real = rca.len();
    let repo = biodc::repo::Repo::discover(project).unwrap();
    let (_, v) = repo.version(None).unwrap();
    let (_, refs, size) = monitor::references(&repo, &v, "coreset").unwrap();
    let params = biodc::pixel::PixelClassifierParams::default();
    for (i, (name, stack)) in v.stacks.iter().enumerate() {
        let [z, h, w] = stack.shape;
        let slices = biodc::stages::segment::stack_slices(&repo.store, &v, stack).unwrap();
        let (_, truth) = binary(&cohort.join("masks").join(format!("{name}.tif")));
        let planes: Vec<Vec<u8>> = truth.chunks(h * w).map(|c| c.to_vec()).collect();
        assert_eq!(planes.len(), z);
        for k in 0..2 {
            let kind = (2 * i + k) % 4;
            let severity = 1 + (i + 3 * k) % 3; // 1..=3
            let bad: Vec<Vec<u8>> = planes
                .iter()
                .enumerate()
                .map(|(j, p)| degrade(p, h, w, kind, severity, (i * 7 + j * 3 + k) as u64))
                .collect();
            let r = monitor::rca(&slices, &bad, h, w, &refs, size, &params).unwrap();
            rca.push(r.best);
            truth_dice.push(dice(&bad.concat(), &truth));
        }
    }
    let r = biodc::stats::pearson(&rca, &truth_dice);
    let mae = biodc::stats::mean_abs_error(&rca, &truth_dice);
    for (a, b) in rca.iter().zip(&truth_dice) {
        println!("  RCA {a:.3}  true Dice {b:.3}");
    }
    println!(
        "RCA vs true Dice over {} predictions ({real} by M0, {} degraded): Pearson r {r:.3}, mean abs error {mae:.3}",
        rca.len(),
        rca.len() - real
    );
    assert!(rca.len() >= 12 + real);
    assert!(r >= 0.8, "Pearson r(RCA, true Dice) = {r:.3} < 0.8");
}

/// A degraded copy of an h×w 0/1 mask: 0 erosion, 1 dilation (radius = severity), 2 dropped
/// branches (severity·3 random 48-pixel squares cleared), 3 noise (severity·8 % of pixels flipped).
fn degrade(m: &[u8], h: usize, w: usize, kind: usize, severity: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let morph = |m: &[u8], r: usize, dilate: bool| biodc::pixel::morph(m, h, w, r, dilate);
    match kind {
        0 => morph(m, severity, false),
        1 => morph(m, severity, true),
        2 => {
            let mut out = m.to_vec();
            for _ in 0..severity * 3 {
                let (y0, x0) = (next() as usize % h, next() as usize % w);
                for y in y0..(y0 + 48).min(h) {
                    for x in x0..(x0 + 48).min(w) {
                        out[y * w + x] = 0;
                    }
                }
            }
            out
        }
        _ => m
            .iter()
            .map(|&v| {
                if (next() % 100) < (severity * 8) as u64 {
                    1 - v
                } else {
                    v
                }
            })
            .collect(),
    }
}

#[test]
fn fine_tuning_on_a_critical_set_keeps_the_core_set() {
    let (tmp, project, cohort) = trained_m0();
    let hunt = json(
        &project,
        &["hunt", "--model", "M0", "--top", "30", "--json"],
    );
    let set = hunt["set"].as_str().unwrap().to_string();
    // The expert corrects the 4 most uncertain candidates.
    let fixed = tmp.path().join("critical");
    expert(&project, &cohort, &set, Some(4), &fixed);
    ok(
        &project,
        &["annotate", fixed.to_str().unwrap(), "--round", "critical-1"],
    );
    let r = json(
        &project,
        &[
            "train", "--name", "M1", "--from", "M0", "--epochs", "15", "--seed", "1", "--json",
        ],
    );
    assert_eq!((r["old"].as_u64(), r["new"].as_u64()), (Some(16), Some(4)));
    let d = &r["dice"];
    let f = |k: &str| d[k].as_f64().unwrap_or_else(|| panic!("no {k} in {d}"));
    println!(
        "core set: M0 {:.3} → M1 {:.3}; critical set: M0 {:.3} → M1 {:.3}",
        f("parent_old"),
        f("old"),
        f("parent_new"),
        f("new")
    );
    assert!(f("old") >= f("parent_old") - 0.05, "M1 forgot the core set");
    assert!(
        f("new") > f("parent_new"),
        "M1 did not improve on the critical set"
    );
    // The model records what it was trained from and on.
    let repo = biodc::repo::Repo::discover(&project).unwrap();
    let (_, v) = repo.version(None).unwrap();
    let m1 = &v.models["M1"];
    assert!(m1.parent.as_deref().unwrap().starts_with("M0@"));
    assert_eq!(m1.training["patches"].as_array().unwrap().len(), 20);
    assert!(m1.metrics.contains_key("dice_new"));

    // Monitor with M0, then with M1: the diff shows both models' metrics and every stack's RCA.
    let after_m1 = head(&project);
    ok(&project, &["monitor", "--model", "M0", "--all"]);
    let with_m0 = head(&project);
    ok(&project, &["monitor", "--model", "M1", "--all"]);
    let d = json(&project, &["diff", &with_m0, "HEAD", "--json"]);
    let models: Vec<&str> = d["model_metrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert!(
        models.contains(&"M0") && models.contains(&"M1"),
        "diff models: {models:?}"
    );
    for m in d["model_metrics"].as_array().unwrap() {
        let side = if m["name"] == "M0" { &m["a"] } else { &m["b"] };
        assert!(side["dice_train"].as_f64().is_some(), "{m}");
    }
    let rca = d["rca"].as_array().unwrap();
    assert_eq!(rca.len(), v.stacks.len(), "one RCA row per stack: {rca:?}");
    for r in rca {
        assert_eq!(
            (r["model_a"].as_str(), r["model_b"].as_str()),
            (Some("M0"), Some("M1"))
        );
        let (a, b, c) = (
            r["a"].as_f64().unwrap(),
            r["b"].as_f64().unwrap(),
            r["change"].as_f64().unwrap(),
        );
        assert!((b - a - c).abs() < 1e-9);
    }
    let text = ok(&project, &["diff", &with_m0, "HEAD"]);
    assert!(
        text.contains("RCA per stack") && text.contains("model M1:"),
        "{text}"
    );
    let first_stack = rca[0]["stack"].as_str().unwrap();
    assert!(text.contains(first_stack));
    // The history shows the monitored versions' RCA.
    let log = json(&project, &["log", "--metrics", "-n", "3", "--json"]);
    assert_eq!(log[0]["models"][0], "M1");
    assert_eq!(log[1]["models"][0], "M0");
    assert_eq!(log[2]["id"].as_str().unwrap(), after_m1);
    assert_eq!(log[2]["stacks"], 0);
}

//! Stage 3: train a segmenter on the annotated core set, segment whole stacks, hunt for the
//! patches it struggles with, and fine-tune on a critical set without forgetting.

mod common;

use biodc::io::{tiff::read_stack, Plane};
use common::*;
use std::collections::BTreeSet;
use std::path::Path;

/// 0/1 voxels of a TIFF mask stack.
fn binary(path: &Path) -> (Vec<usize>, Vec<u8>) {
    let s = read_stack(path).unwrap();
    let mut v = Vec::new();
    for p in &s.planes {
        match p {
            Plane::U8(px) => v.extend(px.iter().map(|&x| (x > 0) as u8)),
            other => v.extend(other.to_f32().iter().map(|&x| (x > 0.0) as u8)),
        }
    }
    (s.info.shape.to_vec(), v)
}

fn dice(a: &[u8], b: &[u8]) -> f64 {
    let inter = a.iter().zip(b).filter(|(&x, &y)| x & y == 1).count();
    let total: usize = a.iter().chain(b).map(|&x| x as usize).sum();
    if total == 0 {
        1.0
    } else {
        2.0 * inter as f64 / total as f64
    }
}

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
    ok(
        &project,
        &[
            "expert",
            "--cohort",
            cohort.to_str().unwrap(),
            "--set",
            "coreset",
            "--to",
            masks.to_str().unwrap(),
        ],
    );
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
        let name = biodc::stages::import::stack_name(&truth_path);
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
    ok(
        &project,
        &[
            "expert",
            "--cohort",
            cohort.to_str().unwrap(),
            "--set",
            &set,
            "--to",
            truth_dir.to_str().unwrap(),
        ],
    );
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
    let rho = spearman(&score, &error);
    println!(
        "Spearman(uncertainty, 1 − Dice) over {} patches: {rho:.3}",
        ids.len()
    );
    assert!(rho >= 0.4, "Spearman {rho:.3} < 0.4");
}

fn ranks(v: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    let mut r = vec![0.0; v.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && v[idx[j + 1]] == v[idx[i]] {
            j += 1;
        }
        for k in i..=j {
            r[idx[k]] = (i + j) as f64 / 2.0;
        }
        i = j + 1;
    }
    r
}

fn spearman(a: &[f64], b: &[f64]) -> f64 {
    let (ra, rb) = (ranks(a), ranks(b));
    let n = a.len() as f64;
    let (ma, mb) = (ra.iter().sum::<f64>() / n, rb.iter().sum::<f64>() / n);
    let cov: f64 = ra.iter().zip(&rb).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = ra.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = rb.iter().map(|y| (y - mb).powi(2)).sum();
    cov / (va * vb).sqrt()
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
    ok(
        &project,
        &[
            "expert",
            "--cohort",
            cohort.to_str().unwrap(),
            "--set",
            &set,
            "--first",
            "4",
            "--to",
            fixed.to_str().unwrap(),
        ],
    );
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
}

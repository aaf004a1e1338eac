//! Training converges by default on real images: two 448² crops of CHASE_DB1 retinal
//! photographs (green channel) with the first observer's vessel masks (`fixtures/real`,
//! CC BY 4.0, Fraz et al. 2012). Four annotated patches of 224² from one image; the model is
//! scored on a crop of another image it never saw.

mod common;

use common::*;
use std::path::{Path, PathBuf};

fn fixture(part: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/real")
        .join(part)
}

/// A project with the training crop imported and its four patches annotated.
fn annotated() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let project = tmp.path().join("p");
    std::fs::create_dir_all(&project).unwrap();
    ok(&project, &["init"]);
    ok(
        &project,
        &["import", fixture("train/images").to_str().unwrap()],
    );
    let masks = tmp.path().join("masks");
    ok(
        &project,
        &[
            "expert",
            "--truth",
            fixture("train/masks").to_str().unwrap(),
            "--set",
            "all",
            "--to",
            masks.to_str().unwrap(),
        ],
    );
    ok(
        &project,
        &["annotate", masks.to_str().unwrap(), "--round", "core"],
    );
    (tmp, project)
}

#[test]
fn default_training_converges_on_a_real_crop_and_segments_another_image() {
    let (tmp, project) = annotated();
    let r = json(&project, &["train", "--name", "M0", "--json"]);
    let verdict = r["convergence"]["verdict"].as_str().unwrap();
    println!("{verdict}");
    assert_eq!(r["examples"], 4);
    assert_eq!(r["convergence"]["converged"], true, "{verdict}");
    let train_dice = r["dice"]["train"].as_f64().unwrap();
    assert!(train_dice >= 0.75, "Dice {train_dice} on its own patches");

    // A crop of another eye, never seen: imported, segmented whole, scored against the truth.
    ok(
        &project,
        &["import", fixture("test/images").to_str().unwrap()],
    );
    let out = tmp.path().join("seg");
    ok(
        &project,
        &[
            "segment",
            "--model",
            "M0",
            "Image_11L_crop",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    let (_, pred) = biodc::io::tiff::read_binary_mask(&out.join("Image_11L_crop.tif")).unwrap();
    let (_, truth) =
        biodc::io::tiff::read_binary_mask(&fixture("test/masks/Image_11L_crop.tif")).unwrap();
    let d = biodc::pixel::dice(&pred, &truth);
    println!("Dice on an unseen image: {d:.3}");
    assert!(d >= 0.6, "Dice {d:.3} on the unseen crop");
}

#[test]
fn a_run_too_short_to_converge_says_so() {
    let (_tmp, project) = annotated();
    let r = json(
        &project,
        &["train", "--name", "short", "--steps", "12", "--json"],
    );
    assert_eq!(r["convergence"]["converged"], false);
    let verdict = r["convergence"]["verdict"].as_str().unwrap();
    assert!(verdict.starts_with("not converged"), "{verdict}");
    // The verdict is recorded with the model.
    let repo = biodc::repo::Repo::discover(&project).unwrap();
    let (_, v) = repo.version(None).unwrap();
    assert_eq!(v.models["short"].training["converged"], false);
}

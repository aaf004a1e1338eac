//! Annotation rounds: bad masks are all reported and nothing is imported; a core-set round
//! from the simulated expert shows up in `diff` and `status`.

mod common;

use biodc::io::{tiff::write_stack, Dtype, Plane, Stack, StackInfo};
use biodc::repo::Repo;
use common::*;
use std::path::Path;

fn mask(path: &Path, size: usize, value: impl Fn(usize) -> u8) {
    let stack = Stack {
        info: StackInfo {
            shape: [1, size, size],
            dtype: Dtype::U8,
            voxel_size: None,
        },
        planes: vec![Plane::U8((0..size * size).map(value).collect())],
    };
    write_stack(path, &stack).unwrap();
}

#[test]
fn every_bad_mask_is_reported_and_nothing_is_imported() {
    let (tmp, project, cohort) = project_with_cohort(3, "1,224,224");
    ok(
        &project,
        &["import", cohort.join("images").to_str().unwrap()],
    );
    let repo = Repo::discover(&project).unwrap();
    let ids: Vec<String> = repo
        .version(None)
        .unwrap()
        .1
        .all_patches()
        .map(|(_, p)| p.id.clone())
        .collect();
    let dir = tmp.path().join("masks");
    std::fs::create_dir_all(&dir).unwrap();
    mask(&dir.join(format!("{}.tif", ids[0])), 100, |_| 0); // wrong shape
    mask(&dir.join(format!("{}.tif", ids[1])), 224, |i| {
        (i % 3) as u8 * 100
    }); // 0/100/200
    mask(&dir.join("nosuch-z0-y0000-x0000.tif"), 224, |_| 0); // unknown id
    std::fs::write(dir.join(format!("{}.png", ids[2])), b"not a png").unwrap(); // unreadable
    mask(&dir.join(format!("{}.tif", ids[2])), 224, |_| 255); // the same id twice
    let head0 = head(&project);
    let objects0 = object_files(&project);
    let out = biodc(&project)
        .args(["annotate", dir.to_str().unwrap(), "--round", "core"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "is 100×100, the patch is 224×224",
        "not binary",
        "unknown patch id",
        "second mask",
        "not a readable PNG",
        "5 problem(s)",
        "nothing was imported",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
    assert_eq!(head(&project), head0);
    assert_eq!(object_files(&project), objects0);
}

#[test]
fn core_set_round_trip_shows_exactly_the_new_masks() {
    let (tmp, project, cohort) = project_with(Cohort {
        stacks: 8,
        shape: "2,128,128",
        seed: 3,
        patch: 64,
        defects: true,
    });
    import_cohort(&project, &cohort);
    ok(&project, &["pretrain", "--max-steps", "4", "--batch", "8"]);
    ok(&project, &["embed"]);
    ok(&project, &["coreset", "-k", "6"]);
    let todo = tmp.path().join("to_annotate");
    ok(
        &project,
        &["export", "--set", "coreset", "--to", todo.to_str().unwrap()],
    );
    assert!(todo.join("coreset-gallery.png").exists());
    let status = json(&project, &["status", "--json"]);
    assert_eq!(status["counts"]["unannotated_in_sets"]["coreset"], 6);

    let repo = Repo::discover(&project).unwrap();
    let (_, v) = repo.version(None).unwrap();
    let picks = v.sets["coreset"].patches.clone();
    let masks = tmp.path().join("masks");
    biodc::synth::expert::write_masks(&cohort, &v, &picks, &masks).unwrap();
    ok(
        &project,
        &[
            "annotate",
            masks.to_str().unwrap(),
            "--round",
            "core",
            "--annotator",
            "sim",
        ],
    );

    let d = json(&project, &["diff", "HEAD~1", "HEAD", "--json"]);
    let mut added: Vec<String> = d["annotations"]["added"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    added.sort();
    let mut expected = picks.clone();
    expected.sort();
    assert_eq!(added, expected);
    for kind in ["stacks", "patches", "sets", "models", "embeddings"] {
        assert_eq!(
            d[kind]["added"].as_array().unwrap().len()
                + d[kind]["changed"].as_array().unwrap().len(),
            0,
            "{kind}"
        );
    }
    let status = json(&project, &["status", "--json"]);
    assert_eq!(status["counts"]["rounds"]["core"], 6);
    assert_eq!(status["counts"]["unannotated_in_sets"]["coreset"], 0);

    // A later round replaces one mask; history keeps both, diff calls it changed.
    let again = tmp.path().join("again");
    std::fs::create_dir_all(&again).unwrap();
    mask(&again.join(format!("{}.tif", picks[0])), 64, |i| {
        if i < 64 {
            255
        } else {
            0
        }
    });
    ok(
        &project,
        &["annotate", again.to_str().unwrap(), "--round", "manual-fix"],
    );
    let d = json(&project, &["diff", "HEAD~1", "HEAD", "--json"]);
    assert_eq!(d["annotations"]["changed"], serde_json::json!([picks[0]]));
    let (_, v) = Repo::discover(&project).unwrap().version(None).unwrap();
    assert_eq!(
        v.annotations.iter().filter(|a| a.patch == picks[0]).count(),
        2
    );
}

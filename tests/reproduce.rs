//! `reproduce`: every committing verb re-runs bit-identically from its stage record, and a
//! tampered output object is reported, not crashed on.

mod common;

use common::*;
use std::path::Path;

fn reproduce(project: &Path, rev: &str) -> (bool, serde_json::Value) {
    let out = biodc(project)
        .args(["reproduce", rev, "--json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "reproduce {rev}: {e}; stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.success(), v)
}

#[test]
fn every_stage_reproduces_bit_identically_and_tampering_is_reported() {
    let (tmp, project, cohort) = project_with(Cohort {
        stacks: 8,
        shape: "2,224,224",
        seed: 5,
        patch: 112,
        defects: false,
    });
    let mut commits = Vec::new();
    let mut step = |args: &[&str]| {
        ok(&project, args);
        commits.push((args[0].to_string(), head(&project)));
    };
    step(&[
        "import",
        cohort.join("images").to_str().unwrap(),
        "--condition-from-dir",
    ]);
    step(&[
        "pretrain",
        "--epochs",
        "1",
        "--max-steps",
        "6",
        "--seed",
        "2",
    ]);
    step(&["embed"]);
    step(&["qc"]);
    step(&["coreset", "-k", "6"]);
    let masks = tmp.path().join("masks");
    expert(&project, &cohort, "coreset", None, &masks);
    step(&["annotate", masks.to_str().unwrap(), "--round", "core"]);
    step(&[
        "train",
        "--name",
        "M0",
        "--max-steps",
        "6",
        "--batch",
        "4",
        "--seed",
        "2",
    ]);
    step(&["hunt", "--model", "M0", "--top", "5", "--passes", "3"]);
    step(&[
        "monitor",
        "--model",
        "M0",
        "c0_s000",
        "c1_s001",
        "--trees",
        "8",
        "--per-class",
        "2000",
    ]);
    let before = head(&project);
    for (verb, commit) in &commits {
        let (success, r) = reproduce(&project, commit);
        println!("{verb}: {}", r["differences"]);
        assert_eq!(r["verb"], verb.as_str());
        assert!(
            success && r["identical"] == true,
            "{verb} did not reproduce: {r}"
        );
        assert!(r["compared"].as_u64().unwrap() >= 1);
    }
    assert_eq!(head(&project), before, "reproduce moved HEAD");
    ok(&project, &["fsck"]);

    // Damage the checkpoint M0's train commit wrote: reported as a mismatch, exit status 1.
    let repo = biodc::repo::Repo::discover(&project).unwrap();
    let (_, v) = repo.version(None).unwrap();
    let path = repo.store.path_of(&v.models["M0"].checkpoint);
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::set_permissions(
        &path,
        std::fs::Permissions::from(std::os::unix::fs::PermissionsExt::from_mode(0o644)),
    )
    .unwrap();
    std::fs::write(&path, &bytes).unwrap();
    let train_commit = &commits.iter().find(|(v, _)| v == "train").unwrap().1;
    let (success, r) = reproduce(&project, train_commit);
    assert!(!success, "a tampered checkpoint reproduced: {r}");
    let diffs = r["differences"].as_array().unwrap();
    assert!(
        diffs
            .iter()
            .any(|d| d["output"].as_str().unwrap().starts_with("models/M0")
                && d["detail"].as_str().unwrap().contains("damaged")),
        "{r}"
    );
    let text = biodc(&project)
        .args(["reproduce", train_commit])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("differ") && text.contains("models/M0"),
        "{text}"
    );
    assert_eq!(head(&project), before);
}

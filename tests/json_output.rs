//! `--json` on the verbs that gained it (init, synth, export, expert, checkout, branch, tag):
//! one JSON document on stdout, with the fields docs/STAGES.md lists.

use std::path::Path;
use std::process::Command;

fn json(dir: &Path, args: &[&str]) -> serde_json::Value {
    let out = Command::new(assert_cmd::cargo::cargo_bin("biodc"))
        .current_dir(dir)
        .args(args)
        .arg("--json")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "biodc {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "biodc {args:?} --json printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

#[test]
fn verbs_print_one_json_document() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let synth = json(
        root,
        &[
            "synth",
            "--out",
            "cohort",
            "--stacks",
            "2",
            "--shape",
            "1,128,128",
            "--seed",
            "3",
            "--no-defects",
        ],
    );
    assert_eq!(synth["stacks"], 2);
    assert_eq!(synth["shape"], serde_json::json!([1, 128, 128]));

    let project = root.join("p");
    std::fs::create_dir(&project).unwrap();
    let init = json(&project, &["init", "--patch", "64"]);
    assert_eq!(init["patch"], 64);
    let first = init["version"].as_str().unwrap().to_string();
    assert_eq!(first.len(), 40);

    let import = Command::new(assert_cmd::cargo::cargo_bin("biodc"))
        .current_dir(&project)
        .args(["import", "../cohort/images"])
        .output()
        .unwrap();
    assert!(import.status.success());

    let export = json(&project, &["export", "--set", "all", "--to", "out"]);
    assert_eq!(export["set"], "all");
    assert!(export["patches"].as_u64().unwrap() >= 8);

    let tag = json(&project, &["tag", "start", &first]);
    assert_eq!(tag["action"], "created");
    assert_eq!(tag["kind"], "tag");
    assert_eq!(tag["version"], first.as_str());
    let tags = json(&project, &["tag"]);
    assert_eq!(tags[0]["name"], "start");

    let branch = json(&project, &["branch", "side"]);
    assert_eq!(branch["action"], "created");
    let branches = json(&project, &["branch"]);
    let names: Vec<&str> = branches
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"side"), "{branches}");
    assert!(
        branches
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["current"] == true && b["name"] != "side"),
        "HEAD's branch is marked current: {branches}"
    );

    let co = json(&project, &["checkout", "side"]);
    assert_eq!(co["branch"], "side");
    let detached = json(&project, &["checkout", "start"]);
    assert_eq!(detached["branch"], serde_json::Value::Null);
    assert_eq!(detached["head"], first.as_str());
    json(&project, &["checkout", "side"]);
    let deleted = json(&project, &["tag", "-d", "start"]);
    assert_eq!(deleted["action"], "deleted");
}

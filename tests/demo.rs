//! The README's first command: `biodc demo` runs the stages built so far and records them.

mod common;

#[test]
fn demo_runs_every_built_stage_and_commits_each() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    let out = common::ok(tmp.path(), &["demo", "--dir", dir.to_str().unwrap()]);
    for stage in [
        "synth", "init", "import", "pretrain", "embed", "qc", "coreset", "annotate",
    ] {
        assert!(
            out.lines().any(|l| l.contains(&format!("] {stage}"))),
            "no {stage} line in:\n{out}"
        );
    }
    let project = dir.join("project");
    let log = common::json(&project, &["log", "--json"]);
    let verbs: Vec<String> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            c["message"]
                .as_str()
                .unwrap()
                .split(':')
                .next()
                .unwrap()
                .split(' ')
                .next()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        verbs,
        ["annotate", "coreset", "qc", "embed", "pretrain", "import", "init"]
    );
    let status = common::json(&project, &["status", "--json"]);
    assert_eq!(status["counts"]["sets"], serde_json::json!(["coreset"]));
    assert_eq!(status["counts"]["rounds"]["core"], 25);
    common::ok(&project, &["fsck"]);
}

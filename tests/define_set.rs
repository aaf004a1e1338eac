//! `biodc set`: a set named by hand is committed like the sets stages make, refuses ids the
//! version lacks, and is re-run by `reproduce` through the stage registry.

use std::path::Path;
use std::process::{Command, Output};

fn biodc(dir: &Path, args: &[&str]) -> Output {
    Command::new(assert_cmd::cargo::cargo_bin("biodc"))
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap()
}

fn ok(dir: &Path, args: &[&str]) -> serde_json::Value {
    let out = biodc(dir, &[args, &["--json"]].concat());
    assert!(
        out.status.success(),
        "biodc {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn err(dir: &Path, args: &[&str]) -> String {
    let out = biodc(dir, args);
    assert!(!out.status.success(), "biodc {args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_set_named_by_hand_is_committed_checked_and_reproduced() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    ok(
        root,
        &[
            "synth",
            "--out",
            "c",
            "--stacks",
            "2",
            "--shape",
            "1,128,128",
            "--no-defects",
        ],
    );
    let p = root.join("p");
    std::fs::create_dir(&p).unwrap();
    ok(&p, &["init", "--patch", "64"]);
    assert!(biodc(&p, &["import", "../c/images"]).status.success());
    ok(&p, &["export", "--set", "all", "--to", "all"]);
    let mut ids: Vec<String> = std::fs::read_dir(p.join("all"))
        .unwrap()
        .filter_map(|e| {
            let n = e.unwrap().file_name().to_string_lossy().into_owned();
            n.strip_suffix(".tif").map(String::from)
        })
        .collect();
    ids.sort();
    assert!(ids.len() >= 4);
    std::fs::write(
        root.join("picked.txt"),
        format!("# two\n{}\n{}\n", ids[2], ids[3]),
    )
    .unwrap();

    let r = ok(
        &p,
        &[
            "set",
            "validation",
            &ids[0],
            &ids[1],
            "--from",
            "../picked.txt",
        ],
    );
    assert_eq!(r["patches"], 4);
    let out = ok(&p, &["export", "--set", "validation", "--to", "v"]);
    assert_eq!(out["patches"], 4);
    let shown = ok(&p, &["show"]);
    assert_eq!(shown["stage"]["verb"], "set");

    assert!(err(&p, &["set", "other", "nope-z0-y0000-x0000"]).contains("not in this version"));
    assert!(err(&p, &["set", "other", &ids[0], &ids[0]]).contains("named twice"));
    assert!(err(&p, &["set", "validation", &ids[0]]).contains("--replace"));
    assert!(err(&p, &["set", "../x", &ids[0]]).contains("x"));
    assert_eq!(
        ok(&p, &["set", "validation", &ids[0], "--replace"])["replaced"],
        4
    );

    let rep = ok(&p, &["reproduce", "HEAD"]);
    assert_eq!(rep["verb"], "set");
    assert_eq!(rep["identical"], true, "{rep}");
}

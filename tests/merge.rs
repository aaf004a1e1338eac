//! Two annotators on one base: their rounds merge into one two-parent version through a
//! remote; the same patch annotated differently is a conflict, listed, with nothing committed;
//! `log`, `diff` and `reproduce` read the merge.

mod common;

use common::*;
use std::path::Path;

fn fails(dir: &Path, args: &[&str]) -> (i32, String) {
    let out = biodc(dir).args(args).output().unwrap();
    assert!(!out.status.success(), "biodc {args:?} should fail");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn two_annotators_rounds_merge_and_a_disputed_patch_is_a_conflict() {
    let (tmp, project, cohort, ids) = small_project(3);
    ok(&project, &["set", "round-a", &ids[0], &ids[1]]);
    ok(&project, &["set", "round-b", &ids[2], &ids[3]]);
    let remote = tmp.path().join("remote");
    ok(
        &project,
        &["remote", "add", "origin", remote.to_str().unwrap()],
    );
    ok(&project, &["push"]);
    let base = head(&project);
    for who in ["a", "b", "c"] {
        ok(tmp.path(), &["clone", remote.to_str().unwrap(), who]);
    }
    let (a, b, c) = (
        tmp.path().join("a"),
        tmp.path().join("b"),
        tmp.path().join("c"),
    );

    // Annotator a labels round-a and pushes first.
    let masks_a = tmp.path().join("masks-a");
    expert(&a, &cohort, "round-a", None, &masks_a);
    ok(
        &a,
        &[
            "annotate",
            masks_a.to_str().unwrap(),
            "--round",
            "a",
            "--annotator",
            "ann-a",
        ],
    );
    ok(&a, &["push"]);
    // Annotator b labels round-b; the push is refused, the pull says to merge.
    let masks_b = tmp.path().join("masks-b");
    expert(&b, &cohort, "round-b", None, &masks_b);
    ok(
        &b,
        &[
            "annotate",
            masks_b.to_str().unwrap(),
            "--round",
            "b",
            "--annotator",
            "ann-b",
        ],
    );
    let (_, e) = fails(&b, &["push"]);
    assert!(e.contains("pull"), "{e}");
    let (_, e) = fails(&b, &["pull"]);
    assert!(e.contains("biodc merge origin/main"), "{e}");
    let ours = head(&b);
    let m = json(&b, &["merge", "origin/main", "--json"]);
    assert_eq!(m["outcome"], "merged", "{m}");
    assert_eq!(m["report"]["annotations_taken"], 2);
    let status = json(&b, &["status", "--json"]);
    assert_eq!(status["counts"]["annotations"], 4, "{status}");
    let log = json(&b, &["log", "--json"]);
    let parents: Vec<String> = log[0]["parents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect();
    assert_eq!(parents, vec![ours.clone(), head(&a)]);
    assert!(ok(&b, &["log", "-n", "1"]).contains(&format!("Merge:  {}", &ours[..12])));
    let d = json(&b, &["diff", &ours, "HEAD", "--json"]);
    assert!(d["annotations"].to_string().contains(&ids[0]), "{d}");
    let r = json(&b, &["reproduce", "HEAD", "--json"]);
    assert_eq!(r["identical"], true, "{r}");
    ok(&b, &["push"]);
    ok(&a, &["pull"]);
    assert_eq!(head(&a), head(&b));

    // Annotator c gives ids[0] a different mask (ids[1]'s) in a round of their own.
    let masks_c = tmp.path().join("masks-c");
    std::fs::create_dir(&masks_c).unwrap();
    std::fs::copy(
        masks_a.join(format!("{}.tif", ids[1])),
        masks_c.join(format!("{}.tif", ids[0])),
    )
    .unwrap();
    ok(
        &c,
        &[
            "annotate",
            masks_c.to_str().unwrap(),
            "--round",
            "c",
            "--annotator",
            "ann-c",
        ],
    );
    let before = head(&c);
    ok(&c, &["fetch"]);
    let (code, e) = fails(&c, &["merge", "origin/main"]);
    assert_eq!(code, 1);
    assert!(
        e.contains(&ids[0]) && e.contains("ann-a") && e.contains("ann-c"),
        "{e}"
    );
    assert!(!e.contains(&ids[2]), "only the disputed patch: {e}");
    assert_eq!(head(&c), before, "nothing committed");
    assert_ne!(before, base);
}

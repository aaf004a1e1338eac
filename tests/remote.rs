//! Remotes on a folder: push, clone (whole, partial, read-through), fetch, pull; a push killed
//! anywhere resumes; racing pushes; corrupt remote objects are refused.
//! (The same on a real S3 server: tests/remote_s3.rs.)

mod common;

use common::*;
use std::path::{Path, PathBuf};

/// A project of two small stacks with a two-patch core set annotated: (tmp, project, the
/// patch ids).
fn annotated_project() -> (tempfile::TempDir, PathBuf, Vec<String>) {
    small_annotated_project(3, [0, 5])
}

fn fails(dir: &Path, args: &[&str]) -> String {
    let out = biodc(dir).args(args).output().unwrap();
    assert!(!out.status.success(), "biodc {args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `fsck` exits 0 and reports no damage.
fn fsck_clean(dir: &Path) {
    let f = json(dir, &["fsck", "--json"]);
    for k in ["corrupt", "missing", "history", "dangling"] {
        assert_eq!(f[k], serde_json::json!([]), "{k}: {f}");
    }
}

/// A pack file in `dir`.
fn first_pack(dir: &Path) -> PathBuf {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "pack"))
        .unwrap()
}

fn log(dir: &Path) -> serde_json::Value {
    json(dir, &["log", "--json"])
}

#[test]
fn a_push_clones_elsewhere_identically_and_a_second_push_sends_nothing() {
    let (tmp, project, ids) = annotated_project();
    let remote = tmp.path().join("remote");
    ok(
        &project,
        &["remote", "add", "origin", remote.to_str().unwrap()],
    );
    let listed = json(&project, &["remote", "--json"]);
    assert_eq!(listed["remotes"]["origin"]["url"], remote.to_str().unwrap());
    let first = json(&project, &["push", "--json"]);
    let local = object_names(&project.join(".biodc/objects"));
    assert_eq!(first["objects_sent"], local.len());
    assert_eq!(first["packs_sent"], 1, "a small push is one pack");
    assert_eq!(
        remote_object_names(remote.to_str().unwrap(), tmp.path()),
        local
    );
    assert!(!remote.join("objects").exists(), "objects travel in packs");
    // So do git trees and blobs; the versions (commits) are a key each.
    let commits = walkdir::WalkDir::new(remote.join("git"))
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .count();
    assert_eq!(commits, first["versions_sent"].as_u64().unwrap() as usize);
    assert!(remote.join("git-packs").is_dir());

    ok(tmp.path(), &["clone", remote.to_str().unwrap(), "copy"]);
    let copy = tmp.path().join("copy");
    assert_eq!(object_names(&copy.join(".biodc/objects")), local);
    assert_eq!(log(&copy), log(&project));
    fsck_clean(&copy);
    // The clone keeps what it received in packs, not a file per object; `gc` keeps them, and a
    // push from the clone reads them.
    assert!(loose_object_names(&copy.join(".biodc/objects")).is_empty());
    ok(&copy, &["gc"]);
    assert_eq!(object_names(&copy.join(".biodc/objects")), local);
    fsck_clean(&copy);
    let onward = tmp.path().join("onward");
    ok(
        &copy,
        &["remote", "add", "onward", onward.to_str().unwrap()],
    );
    ok(&copy, &["push", "onward"]);
    ok(tmp.path(), &["clone", onward.to_str().unwrap(), "copy2"]);
    assert_eq!(
        object_names(&tmp.path().join("copy2/.biodc/objects")),
        local
    );
    fsck_clean(&tmp.path().join("copy2"));

    let again = json(&project, &["push", "--json"]);
    assert_eq!(again["up_to_date"], true);
    // A new version that names no new object sends one version and no object.
    ok(&project, &["set", "validation", &ids[1]]);
    let third = json(&project, &["push", "--json"]);
    assert_eq!(third["versions_sent"], 1);
    assert_eq!(third["objects_sent"], 0);

    let pulled = json(&copy, &["pull", "--json"]);
    assert_eq!(pulled["outcome"], "fast-forward");
    assert_eq!(head(&copy), head(&project));
}

#[test]
fn a_push_killed_anywhere_leaves_the_branch_old_or_new_and_resumes() {
    let (tmp, project, _) = annotated_project();
    let total = object_names(&project.join(".biodc/objects")).len();
    // Packs of 1 kB: several packs of data and of history, so a push can die between them.
    let mut whole_history = None;
    for (i, point) in [
        "push:pack:2",
        "push:before-index:2",
        "push:after-objects",
        "push:history-before-index:2",
        "push:after-trees",
        "push:before-ref",
    ]
    .iter()
    .enumerate()
    {
        let remote = tmp.path().join(format!("remote{i}"));
        let name = format!("r{i}");
        ok(
            &project,
            &["remote", "add", &name, remote.to_str().unwrap()],
        );
        // One upload at a time where the point is the second pack of history: with two, its
        // pack can arrive before the first one's index, and then no history pack is complete.
        let jobs = if point.starts_with("push:history") {
            "1"
        } else {
            "2"
        };
        let out = biodc(&project)
            .args(["push", &name, "-j", jobs, "--pack-size", "1k"])
            .env("BIODC_FAILPOINT", point)
            .output()
            .unwrap();
        assert!(
            !out.status.success(),
            "{point}: the push should have been killed"
        );
        // Killed before the branch moved: the remote has no branch, so nothing names
        // anything missing.
        assert!(
            !remote.join("refs").exists() || object_names(&remote.join("refs")).is_empty(),
            "{point}"
        );
        // Only packs whose index arrived count; a pack without one is sent again.
        let there = remote_object_names(remote.to_str().unwrap(), tmp.path()).len();
        if point.starts_with("push:pack") || point.starts_with("push:before-index") {
            assert!(there < total, "{point}: {there} of {total} arrived");
        }
        let rerun = json(&project, &["push", &name, "--json"]);
        assert_eq!(
            rerun["objects_sent"].as_u64().unwrap() as usize,
            total - there,
            "{point}: the rerun sends only what is missing"
        );
        // Killed among the history's packs: the packs whose index arrived are not sent again.
        let git_sent = rerun["git_objects_sent"].as_u64().unwrap();
        match *point {
            "push:after-objects" => whole_history = Some(git_sent),
            "push:history-before-index:2" => {
                assert!(
                    git_sent < whole_history.unwrap(),
                    "{point}: {git_sent} sent again"
                )
            }
            _ => {}
        }
        let copy = tmp.path().join(format!("copy{i}"));
        ok(
            tmp.path(),
            &["clone", remote.to_str().unwrap(), copy.to_str().unwrap()],
        );
        fsck_clean(&copy);
        assert_eq!(head(&copy), head(&project), "{point}");
    }
}

#[test]
fn two_racing_pushes_one_wins_and_the_other_is_told_to_pull() {
    let (tmp, project, ids) = annotated_project();
    let remote = tmp.path().join("remote");
    ok(
        &project,
        &["remote", "add", "origin", remote.to_str().unwrap()],
    );
    ok(&project, &["push"]);
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    ok(tmp.path(), &["clone", remote.to_str().unwrap(), "a"]);
    ok(tmp.path(), &["clone", remote.to_str().unwrap(), "b"]);
    ok(&a, &["set", "from-a", &ids[2]]);
    ok(&b, &["set", "from-b", &ids[3]]);
    let spawn = |dir: &Path| {
        std::process::Command::new(assert_cmd::cargo::cargo_bin("biodc"))
            .arg("-C")
            .arg(dir)
            .args(["push"])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (pa, pb) = (spawn(&a), spawn(&b));
    let (ra, rb) = (
        pa.wait_with_output().unwrap(),
        pb.wait_with_output().unwrap(),
    );
    assert!(
        ra.status.success() != rb.status.success(),
        "exactly one push wins: {} / {}",
        String::from_utf8_lossy(&ra.stderr),
        String::from_utf8_lossy(&rb.stderr)
    );
    let (winner, loser) = if ra.status.success() {
        (&a, &rb)
    } else {
        (&b, &ra)
    };
    assert!(String::from_utf8_lossy(&loser.stderr).contains("pull"));
    let check = tmp.path().join("check");
    ok(tmp.path(), &["clone", remote.to_str().unwrap(), "check"]);
    assert_eq!(head(&check), head(winner));
    fsck_clean(&check);
}

#[test]
fn a_partial_clone_fetches_exactly_what_it_reads() {
    let (tmp, project, _) = annotated_project();
    let remote = tmp.path().join("remote");
    ok(
        &project,
        &["remote", "add", "origin", remote.to_str().unwrap()],
    );
    ok(&project, &["push"]);
    // coreset: 2 patches, each a tile and a mask.
    ok(
        tmp.path(),
        &[
            "clone",
            "--sets",
            "coreset",
            remote.to_str().unwrap(),
            "some",
        ],
    );
    let some = tmp.path().join("some");
    let fetched = object_names(&some.join(".biodc/objects"));
    assert_eq!(fetched.len(), 4, "{fetched:?}");
    ok(&some, &["export", "--set", "coreset", "--to", "out"]);
    assert_eq!(
        object_names(&some.join(".biodc/objects")),
        fetched,
        "export read only what was there"
    );

    ok(
        tmp.path(),
        &["clone", "--no-data", remote.to_str().unwrap(), "none"],
    );
    let none = tmp.path().join("none");
    assert!(object_names(&none.join(".biodc/objects")).is_empty());
    assert_eq!(log(&none), log(&project));
    ok(&none, &["export", "--set", "coreset", "--to", "out"]);
    let tiles = object_names(&none.join(".biodc/objects"));
    assert!(!tiles.is_empty() && tiles.is_subset(&fetched), "{tiles:?}");
    // The masks come when asked for.
    ok(&none, &["fetch", "--set", "coreset"]);
    assert_eq!(object_names(&none.join(".biodc/objects")), fetched);
}

#[test]
fn a_corrupt_or_incomplete_remote_fails_the_clone_and_leaves_nothing() {
    let (tmp, project, _) = annotated_project();
    let remote = tmp.path().join("remote");
    ok(
        &project,
        &["remote", "add", "origin", remote.to_str().unwrap()],
    );
    ok(&project, &["push"]);
    // A byte of the pack changed: its first object no longer matches its name.
    let pack = first_pack(&remote.join("packs"));
    let saved = std::fs::read(&pack).unwrap();
    let mut bad = saved.clone();
    bad[40] ^= 0xff;
    std::fs::write(&pack, &bad).unwrap();
    let e = fails(tmp.path(), &["clone", remote.to_str().unwrap(), "bad"]);
    assert!(e.contains("rejected") || e.contains("corrupt"), "{e}");
    assert!(!tmp.path().join("bad").exists());
    std::fs::write(&pack, saved).unwrap();
    // A byte of the history pack changed: a tree or blob no longer matches its id.
    let history = first_pack(&remote.join("git-packs"));
    let saved = std::fs::read(&history).unwrap();
    let mut bad = saved.clone();
    bad[20] ^= 0xff;
    std::fs::write(&history, &bad).unwrap();
    let e = fails(tmp.path(), &["clone", remote.to_str().unwrap(), "bad"]);
    assert!(e.contains("remote git object"), "{e}");
    assert!(!tmp.path().join("bad").exists());
    std::fs::write(&history, saved).unwrap();
    // A version (git commit) gone: the clone fails before anything is checked out.
    let git: Vec<PathBuf> = walkdir::WalkDir::new(remote.join("git"))
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .map(|e| e.into_path())
        .collect();
    std::fs::remove_file(&git[0]).unwrap();
    let e = fails(tmp.path(), &["clone", remote.to_str().unwrap(), "bad"]);
    assert!(e.contains("does not hold it"), "{e}");
    assert!(!tmp.path().join("bad").exists());
    let e = fails(
        tmp.path(),
        &["clone", tmp.path().join("nowhere").to_str().unwrap(), "x"],
    );
    assert!(e.contains("no folder"), "{e}");
}

#[test]
fn a_remote_of_one_key_per_object_still_clones_and_a_newer_format_is_refused() {
    let (tmp, project, _) = annotated_project();
    let remote = tmp.path().join("remote");
    ok(
        &project,
        &["remote", "add", "origin", remote.to_str().unwrap()],
    );
    ok(&project, &["push"]);
    // Rewrite the remote as format 1 had it: objects/<2 hex>/<62 hex> and git/<2 hex>/<38 hex>,
    // no packs.
    use biodc::remote::pack::{Inventory, Shelf};
    let backend = biodc::remote::open(remote.to_str().unwrap(), tmp.path(), false).unwrap();
    for (shelf, packs, keys, hex_len) in [
        (Shelf::Data, "packs", "objects", 64),
        (Shelf::History, "git-packs", "git", 40),
    ] {
        let inventory = Inventory::read(&backend, shelf, None, 2).unwrap();
        assert!(!inventory.is_empty(), "{packs}");
        for id in inventory.ids() {
            let (name, entry) = inventory.find(id).unwrap();
            let pack = std::fs::read(remote.join(format!("{packs}/{name}.pack"))).unwrap();
            let hex = &id.to_hex()[..hex_len];
            let path = remote.join(keys).join(&hex[..2]).join(&hex[2..]);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(
                path,
                &pack[entry.range().start as usize..entry.range().end as usize],
            )
            .unwrap();
        }
        std::fs::remove_dir_all(remote.join(packs)).unwrap();
    }
    std::fs::write(remote.join("biodc-remote.json"), r#"{"format": 1}"#).unwrap();
    ok(tmp.path(), &["clone", remote.to_str().unwrap(), "old"]);
    let old = tmp.path().join("old");
    assert_eq!(
        object_names(&old.join(".biodc/objects")),
        object_names(&project.join(".biodc/objects"))
    );
    fsck_clean(&old);
    ok(
        tmp.path(),
        &["clone", "--no-data", remote.to_str().unwrap(), "light"],
    );
    ok(
        &tmp.path().join("light"),
        &["export", "--set", "coreset", "--to", "out"],
    );

    std::fs::write(remote.join("biodc-remote.json"), r#"{"format": 9}"#).unwrap();
    let e = fails(tmp.path(), &["clone", remote.to_str().unwrap(), "new"]);
    assert!(e.contains("format 9") && e.contains("upgrade"), "{e}");
}

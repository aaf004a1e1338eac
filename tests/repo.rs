//! Foundation acceptance tests: import, status, diff, export round trip, fsck, crash safety,
//! bad input, locking.

mod common;

use common::*;
use std::collections::BTreeSet;
use std::path::Path;

fn tile_hashes(project: &Path) -> BTreeSet<String> {
    let files = walkdir::WalkDir::new(project.join(".biodc/objects"))
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .count();
    assert!(files > 0);
    let mut out = BTreeSet::new();
    let tree = std::process::Command::new("git")
        .args([
            "--git-dir",
            ".biodc/git",
            "ls-tree",
            "-r",
            "--name-only",
            "HEAD",
            "patches/",
        ])
        .current_dir(project)
        .output()
        .unwrap();
    for path in String::from_utf8(tree.stdout).unwrap().lines() {
        let blob = std::process::Command::new("git")
            .args(["--git-dir", ".biodc/git", "show", &format!("HEAD:{path}")])
            .current_dir(project)
            .output()
            .unwrap();
        for line in String::from_utf8(blob.stdout).unwrap().lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            out.insert(v["tile"].as_str().unwrap().to_string());
        }
    }
    out
}

#[test]
fn import_status_reimport_and_diff_of_a_changed_file() {
    let (_tmp, project, cohort) = project_with_cohort(6, "3,256,300");
    let images = cohort.join("images");
    let out = ok(
        &project,
        &["import", images.to_str().unwrap(), "--condition-from-dir"],
    );
    assert!(out.contains("6 new"), "{out}");

    // git itself sees the version.
    let log = std::process::Command::new("git")
        .args(["--git-dir", ".biodc/git", "log", "--oneline"])
        .current_dir(&project)
        .output()
        .unwrap();
    let log = String::from_utf8(log.stdout).unwrap();
    assert!(log.lines().next().unwrap().contains("import:"), "{log}");
    assert_eq!(log.lines().count(), 2);

    // 256 rows → tiles at y 0, 32; 300 columns → x 0, 76: 4 tiles per plane, 3 planes, 6 stacks.
    let status = json(&project, &["status", "--json"]);
    assert_eq!(status["counts"]["stacks"], 6);
    assert_eq!(status["counts"]["patches"], 6 * 3 * 4);

    // Importing the same files again writes nothing and says so.
    let before = object_files(&project);
    let head_before = head(&project);
    let out = ok(
        &project,
        &["import", images.to_str().unwrap(), "--condition-from-dir"],
    );
    assert!(
        out.contains("nothing new") && out.contains("no object written"),
        "{out}"
    );
    assert_eq!(object_files(&project), before);
    assert_eq!(head(&project), head_before);

    // Change one pixel of one file: a new version whose diff names exactly that stack.
    let file = first_file(&images);
    let mut stack = biodc::io::tiff::read_stack(&file).unwrap();
    if let biodc::io::Plane::U16(p) = &mut stack.planes[1] {
        p[5] = p[5].wrapping_add(1);
    } else {
        panic!("synthetic stacks are u16");
    }
    biodc::io::tiff::write_stack(&file, &stack).unwrap();
    let name = biodc::io::files::stack_name(&file);
    ok(
        &project,
        &["import", images.to_str().unwrap(), "--condition-from-dir"],
    );
    let d = json(&project, &["diff", "HEAD~1", "HEAD", "--json"]);
    assert_eq!(d["stacks"]["changed"], serde_json::json!([name]));
    assert_eq!(d["stacks"]["added"], serde_json::json!([]));
    assert_eq!(
        d["patches"]["changed"],
        serde_json::json!([format!("{name}-z1-y0000-x0000")])
    );
    assert_eq!(d["patches"]["added"].as_array().unwrap().len(), 0);
}

#[test]
fn export_then_reimport_is_pixel_identical() {
    let (tmp, project, cohort) = project_with_cohort(4, "2,224,240");
    ok(
        &project,
        &["import", cohort.join("images").to_str().unwrap()],
    );
    let exported = tmp.path().join("exported");
    ok(
        &project,
        &["export", "--set", "all", "--to", exported.to_str().unwrap()],
    );
    let first = std::fs::read_dir(&exported)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "tif"))
        .unwrap();
    let stack = biodc::io::tiff::read_stack(&first).unwrap();
    assert_eq!(stack.info.dtype, biodc::io::Dtype::U16);
    assert_eq!(stack.info.shape, [1, 224, 224]);

    let again = tmp.path().join("again");
    std::fs::create_dir_all(&again).unwrap();
    ok(&again, &["init"]);
    ok(&again, &["import", exported.to_str().unwrap()]);
    assert_eq!(tile_hashes(&project), tile_hashes(&again));
    // Re-importing into the same project stores no new object: every tile is already there.
    let before = object_files(&project);
    ok(&project, &["import", exported.to_str().unwrap()]);
    assert_eq!(object_files(&project), before);
}

#[test]
fn fsck_names_a_flipped_byte_and_a_missing_object() {
    let (_tmp, project, cohort) = project_with_cohort(3, "1,224,224");
    ok(
        &project,
        &["import", cohort.join("images").to_str().unwrap()],
    );
    ok(&project, &["fsck"]);
    let objects = object_files(&project);
    let mut rng = 12345u64;
    for path in objects.iter().take(6) {
        let original = std::fs::read(path).unwrap();
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let at = (rng >> 33) as usize % original.len();
        let mut bytes = original.clone();
        bytes[at] ^= 0x01;
        std::fs::write(path, &bytes).unwrap();
        let out = biodc(&project).arg("fsck").output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(1),
            "flip at {at} of {} not detected",
            path.display()
        );
        let name = format!(
            "{}{}",
            path.parent()
                .unwrap()
                .file_name()
                .unwrap()
                .to_string_lossy(),
            path.file_name().unwrap().to_string_lossy()
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(&name) && text.contains("corrupt"), "{text}");
        std::fs::write(path, &original).unwrap();
    }
    ok(&project, &["fsck"]);
    std::fs::remove_file(&objects[0]).unwrap();
    let out = biodc(&project).arg("fsck").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("missing"), "{text}");
}

#[test]
fn killed_import_leaves_old_head_and_clean_fsck() {
    let (_tmp, project, cohort) = project_with_cohort(4, "3,224,224");
    let images = cohort.join("images");
    let head0 = head(&project);
    for point in [
        "store:after-put:1",
        "store:after-put:4",
        "import:after-plane:2",
        "import:after-plane:11",
        "repo:before-commit",
        "history:after-tree",
        "history:before-ref",
    ] {
        let out = biodc(&project)
            .args(["import", images.to_str().unwrap()])
            .env("BIODC_FAILPOINT", point)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{point}: the failpoint did not fire");
        assert_eq!(head(&project), head0, "{point}: HEAD moved");
        let fsck = json(&project, &["fsck", "--json"]);
        assert_eq!(fsck["corrupt"], serde_json::json!([]), "{point}");
        assert_eq!(fsck["missing"], serde_json::json!([]), "{point}");
        assert_eq!(fsck["history"], serde_json::json!([]), "{point}");
    }
    // The next writer recovers the stale lock and imports normally; gc reclaims the leftovers.
    ok(&project, &["import", images.to_str().unwrap()]);
    assert_ne!(head(&project), head0);
    ok(&project, &["gc"]);
    let fsck = json(&project, &["fsck", "--json"]);
    assert_eq!(fsck["unreachable"], 0);
}

#[test]
fn kill_at_random_times_never_damages_the_repository() {
    let (_tmp, project, cohort) = project_with_cohort(6, "3,448,448");
    let images = cohort.join("images");
    let head0 = head(&project);
    for delay_ms in [5u64, 20, 40, 80, 150] {
        let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("biodc"))
            .arg("-C")
            .arg(&project)
            .args(["import", images.to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        child.kill().ok();
        child.wait().unwrap();
        let fsck = json(&project, &["fsck", "--json"]);
        assert_eq!(
            fsck["corrupt"],
            serde_json::json!([]),
            "killed after {delay_ms} ms"
        );
        assert_eq!(
            fsck["missing"],
            serde_json::json!([]),
            "killed after {delay_ms} ms"
        );
        let h = head(&project);
        if h != head0 {
            // The import finished before the kill: it must be a complete version.
            assert_eq!(json(&project, &["status", "--json"])["counts"]["stacks"], 6);
            return;
        }
    }
}

fn assert_fails_cleanly(project: &Path, path: &Path, reason: &str) {
    let head0 = head(project);
    let objects0 = object_files(project);
    let out = biodc(project)
        .args(["import", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let name = path.file_name().unwrap().to_string_lossy();
    assert!(err.contains(&*name), "error does not name {name}: {err}");
    assert!(
        err.to_lowercase().contains(reason),
        "error does not say {reason:?}: {err}"
    );
    assert_eq!(head(project), head0);
    assert_eq!(object_files(project), objects0, "objects left behind");
    ok(project, &["fsck"]);
}

#[test]
fn bad_input_gives_one_clear_error_and_changes_nothing() {
    let (tmp, project, cohort) = project_with_cohort(2, "1,224,224");
    ok(
        &project,
        &["import", cohort.join("images").to_str().unwrap()],
    );
    assert_fails_cleanly(&project, &fixture("tiff/truncated.tif"), "truncated");
    assert_fails_cleanly(&project, &fixture("tiff/int16.tif"), "sample format");
    assert_fails_cleanly(&project, &tmp.path().join("does-not-exist"), "no such file");
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    assert_fails_cleanly(&project, &empty, "no .tif");

    // A verb that fails after writing objects removes them again.
    let more = tmp.path().join("more");
    ok(
        tmp.path(),
        &[
            "synth",
            "--out",
            more.to_str().unwrap(),
            "--stacks",
            "2",
            "--shape",
            "2,300,300",
            "--seed",
            "99",
            "--no-defects",
        ],
    );
    let head0 = head(&project);
    let objects0 = object_files(&project);
    let out = biodc(&project)
        .args(["import", more.join("images").to_str().unwrap()])
        .env("BIODC_FAIL_WITH_ERROR", "import:after-plane")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("import failed") && err.contains("removed the"),
        "{err}"
    );
    assert_eq!(head(&project), head0);
    assert_eq!(object_files(&project), objects0);
    ok(&project, &["fsck"]);
}

#[test]
fn second_writer_is_refused_with_the_holders_pid() {
    let (_tmp, project, cohort) = project_with_cohort(1, "1,224,224");
    let pid = std::process::id();
    std::fs::write(project.join(".biodc/lock"), format!("{pid}\n")).unwrap();
    let out = biodc(&project)
        .args(["import", cohort.join("images").to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("repository is locked by pid {pid}")),
        "{err}"
    );
    std::fs::remove_file(project.join(".biodc/lock")).unwrap();
    ok(
        &project,
        &["import", cohort.join("images").to_str().unwrap()],
    );
}

#[test]
fn branches_tags_checkout_and_log() {
    let (_tmp, project, cohort) = project_with_cohort(2, "1,224,224");
    let v0 = head(&project);
    ok(
        &project,
        &["import", cohort.join("images").to_str().unwrap()],
    );
    let v1 = head(&project);
    ok(&project, &["tag", "imported"]);
    ok(&project, &["branch", "experiment", &v0]);
    ok(&project, &["checkout", "experiment"]);
    assert_eq!(head(&project), v0);
    assert_eq!(
        json(&project, &["status", "--json"])["branch"],
        "experiment"
    );
    ok(&project, &["checkout", "imported"]);
    assert_eq!(head(&project), v1);
    assert!(json(&project, &["status", "--json"])["branch"].is_null());
    ok(&project, &["checkout", "main"]);
    let log = json(&project, &["log", "--json"]);
    assert_eq!(log.as_array().unwrap().len(), 2);
    assert!(ok(&project, &["log", "--oneline"]).lines().count() == 2);
    let shown = json(&project, &["show", "--json"]);
    assert_eq!(shown["stage"]["verb"], "import");
    for verb in [
        "init", "import", "status", "log", "show", "diff", "checkout", "branch", "tag", "export",
        "fsck", "gc", "synth",
    ] {
        let help = ok(&project, &[verb, "--help"]);
        assert!(help.contains("Example"), "{verb} --help has no example");
    }
}

//! What a crash, a concurrent writer, a crafted repository and bad input can and cannot do
//! (docs/FORMAT.md, "Guarantees"): one test per item of issue 13.

mod common;

use biodc::io::{tiff::write_stack, Dtype, Plane, Stack, StackInfo};
use biodc::repo::Repo;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

fn bin() -> Command {
    let mut cmd = Command::new(assert_cmd::cargo::cargo_bin("biodc"));
    cmd.env_remove("BIODC_FAILPOINT")
        .env_remove("BIODC_FAIL_WITH_ERROR");
    cmd
}

fn spawn(project: &Path, args: &[&str]) -> Child {
    bin()
        .arg("-C")
        .arg(project)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn run(project: &Path, args: &[&str]) -> Output {
    biodc(project).args(args).output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A synthetic cohort of `stacks` stacks of `shape`, written into `dir` (no defects).
fn cohort(dir: &Path, stacks: usize, shape: [usize; 3], seed: u64) -> Vec<PathBuf> {
    let params = biodc::synth::SynthParams {
        stacks,
        shape,
        seed,
        defects: false,
    };
    let manifest = biodc::synth::write_cohort(dir, &params).unwrap();
    manifest.stacks.iter().map(|s| dir.join(&s.image)).collect()
}

/// A fresh project initialised with `patch`-pixel patches.
fn project(root: &Path, name: &str, patch: usize) -> PathBuf {
    let p = root.join(name);
    std::fs::create_dir_all(&p).unwrap();
    ok(&p, &["init", "--patch", &patch.to_string()]);
    p
}

fn write_u8(path: &Path, shape: [usize; 3], value: impl Fn(usize) -> u8) {
    let n = shape[1] * shape[2];
    let stack = Stack {
        info: StackInfo {
            shape,
            dtype: Dtype::U8,
            voxel_size: None,
        },
        planes: (0..shape[0])
            .map(|z| Plane::U8((0..n).map(|i| value(z * n + i)).collect()))
            .collect(),
    };
    write_stack(path, &stack).unwrap();
}

/// fsck finds nothing wrong (corrupt, missing, unreadable versions, dangling names).
fn assert_intact(project: &Path, context: &str) -> serde_json::Value {
    let out = run(project, &["fsck", "--json"]);
    let r: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{context}: fsck printed no JSON: {}", stderr(&out)));
    for key in ["corrupt", "missing", "history", "dangling"] {
        assert_eq!(r[key], serde_json::json!([]), "{context}: {key}: {r}");
    }
    assert_eq!(out.status.code(), Some(0), "{context}: {r}");
    r
}

fn patch_ids(project: &Path) -> Vec<String> {
    let (_, v) = Repo::discover(project).unwrap().version(None).unwrap();
    v.all_patches().map(|(_, p)| p.id.clone()).collect()
}

fn git(project: &Path, args: &[&str], stdin: Option<&[u8]>) -> String {
    use std::io::Write;
    let mut child = Command::new("git")
        .arg("--git-dir")
        .arg(project.join(".biodc/git"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.unwrap_or_default())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "git {args:?}: {}", stderr(&out));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Commits, with plain git plumbing, HEAD's tree with `files` (path → bytes) added or
/// replaced, on top of `parent`, and moves `main` to it. Returns the commit.
fn craft(project: &Path, parent: &str, files: &[(&str, Vec<u8>)]) -> String {
    let index = project.join("crafted.index");
    let env_git = |args: &[&str], stdin: Option<&[u8]>| -> String {
        use std::io::Write;
        let mut child = Command::new("git")
            .arg("--git-dir")
            .arg(project.join(".biodc/git"))
            .args(args)
            .env("GIT_INDEX_FILE", &index)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.unwrap_or_default())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "git {args:?}: {}", stderr(&out));
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    env_git(&["read-tree", parent], None);
    for (path, bytes) in files {
        let blob = env_git(&["hash-object", "-w", "--stdin"], Some(bytes));
        env_git(
            &[
                "update-index",
                "--add",
                "--cacheinfo",
                &format!("100644,{blob},{path}"),
            ],
            None,
        );
    }
    let tree = env_git(&["write-tree"], None);
    let commit = env_git(&["commit-tree", &tree, "-p", parent, "-m", "crafted"], None);
    env_git(&["update-ref", "refs/heads/main", &commit], None);
    std::fs::remove_file(&index).ok();
    commit
}

/// Every file under `dir`, relative, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(Result::ok)
        .map(|e| {
            e.path()
                .strip_prefix(dir)
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    v.sort();
    v
}

/// Commits HEAD's version as `edit` changes it, through the library (as a stage would).
fn commit_edit(
    repo: &Repo,
    edit: impl FnOnce(&mut biodc::version::DatasetVersion),
) -> anyhow::Result<()> {
    biodc::stages::run(repo, |repo, _, mut v| {
        edit(&mut v);
        let stage = repo.stage_record("hand", serde_json::json!({}), None, "edited by hand");
        Ok((Some((v, stage)), ()))
    })
    .map(drop)
}

// 1. The lock ------------------------------------------------------------------------------

/// 60 pairs of writers started together: two imports on a fresh repository, the same with a
/// lock file left by a dead writer (of this and of an older biodc), and an import beside an
/// annotate. Each writer either commits or is refused with "locked" (exit 2); the repository is
/// never damaged, and every committed stack is there.
#[test]
fn concurrent_writers_never_damage_the_repository() {
    let tmp = tempfile::tempdir().unwrap();
    let files = cohort(&tmp.path().join("cohort"), 3, [2, 96, 96], 5);
    let dirs: Vec<PathBuf> = files
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let d = tmp.path().join(format!("in{i}"));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::copy(f, d.join(f.file_name().unwrap())).unwrap();
            d
        })
        .collect();
    let name = |i: usize| biodc::io::files::stack_name(&files[i]);
    let stale = [
        "999999999\n",
        "999999999 flock\n",
        "",
        "garbage",
        &format!("{} flock\n", std::process::id()),
    ];
    let (mut refused, mut both) = (0, 0);
    for round in 0..60 {
        let p = project(tmp.path(), &format!("p{round}"), 32);
        let kind = round % 3;
        let masks = tmp.path().join(format!("masks{round}"));
        let mut expected_stacks = vec![];
        let (a, b): (Vec<&str>, Vec<&str>) = match kind {
            0 | 1 => {
                if kind == 1 {
                    std::fs::write(p.join(".biodc/lock"), stale[round / 3 % stale.len()]).unwrap();
                }
                (
                    vec!["import", dirs[0].to_str().unwrap()],
                    vec!["import", dirs[1].to_str().unwrap()],
                )
            }
            _ => {
                ok(&p, &["import", dirs[2].to_str().unwrap()]);
                expected_stacks.push(name(2));
                std::fs::create_dir_all(&masks).unwrap();
                for id in patch_ids(&p).iter().take(3) {
                    write_u8(&masks.join(format!("{id}.tif")), [1, 32, 32], |i| {
                        if i % 7 == 0 {
                            255
                        } else {
                            0
                        }
                    });
                }
                (
                    vec!["import", dirs[0].to_str().unwrap()],
                    vec!["annotate", masks.to_str().unwrap(), "--round", "core"],
                )
            }
        };
        let (ca, cb) = (spawn(&p, &a), spawn(&p, &b));
        let (oa, ob) = (
            ca.wait_with_output().unwrap(),
            cb.wait_with_output().unwrap(),
        );
        let context = format!("round {round} (kind {kind})");
        for (args, o) in [(&a, &oa), (&b, &ob)] {
            match o.status.code() {
                Some(0) => {
                    if args[0] == "import" {
                        let i = if args[1] == dirs[0].to_str().unwrap() {
                            0
                        } else {
                            1
                        };
                        expected_stacks.push(name(i));
                    }
                }
                Some(2) => {
                    assert!(stderr(o).contains("locked by"), "{context}: {}", stderr(o));
                    refused += 1;
                }
                other => panic!("{context}: {args:?} exited {other:?}: {}", stderr(o)),
            }
            assert!(
                !stderr(o).contains("removing stale lock"),
                "{context}: {}",
                stderr(o)
            );
        }
        if oa.status.success() && ob.status.success() {
            both += 1;
        }
        assert_intact(&p, &context);
        let (_, v) = Repo::discover(&p).unwrap().version(None).unwrap();
        let mut have: Vec<String> = v.stacks.keys().cloned().collect();
        expected_stacks.sort();
        have.sort();
        assert_eq!(have, expected_stacks, "{context}");
        if kind == 2 && ob.status.success() {
            assert_eq!(v.annotations.len(), 3, "{context}");
        }
        assert!(
            p.join(".biodc/cache.sled").is_dir(),
            "{context}: cache gone"
        );
    }
    println!("60 writer pairs: {refused} writers refused, {both} pairs ran one after the other");
    assert!(
        refused > 0,
        "no two writers ever overlapped: the test raced nothing"
    );
}

/// A writer killed while holding the lock and never reaped (a zombie) does not keep it.
#[test]
fn a_killed_or_zombie_writer_does_not_keep_the_lock() {
    let tmp = tempfile::tempdir().unwrap();
    let files = cohort(&tmp.path().join("cohort"), 2, [2, 64, 64], 6);
    let p = project(tmp.path(), "p", 32);
    let mut child = bin()
        .arg("-C")
        .arg(&p)
        .args(["import", files[0].to_str().unwrap()])
        .env("BIODC_FAILPOINT", "import:after-plane")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Not waited for: once it is dead it stays a zombie, its pid alive to kill(pid, 0). (Its
    // main thread shows as a zombie while its other threads still exit: wait for them too.)
    let stat = format!("/proc/{}/stat", child.id());
    let tasks = format!("/proc/{}/task", child.id());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let s = std::fs::read_to_string(&stat).unwrap_or_default();
        let threads = std::fs::read_dir(&tasks).map_or(0, |d| d.count());
        if s.split_whitespace().nth(2) == Some("Z") && threads == 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the writer never died"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let lock = std::fs::read_to_string(p.join(".biodc/lock")).unwrap();
    assert!(lock.starts_with(&child.id().to_string()), "{lock:?}");
    ok(&p, &["import", files[1].to_str().unwrap()]);
    child.wait().unwrap();
    assert_intact(&p, "after the zombie");
}

// 2. Names ---------------------------------------------------------------------------------

#[test]
fn names_that_are_paths_or_reserved_words_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let files = cohort(&tmp.path().join("cohort"), 1, [1, 64, 64], 7);
    let p = project(tmp.path(), "p", 32);
    ok(&p, &["import", files[0].to_str().unwrap()]);
    let head0 = head(&p);
    let before = listing(tmp.path());
    for args in [
        &[
            "pretrain",
            "--max-steps",
            "1",
            "--name",
            "../../../../../victim",
        ][..],
        &["pretrain", "--max-steps", "1", "--name", "a/b"],
        &["train", "--name", "c/d", "--max-steps", "1"],
        &["train", "--name", "none", "--max-steps", "1"],
        &["coreset", "--name", "a/b"],
        &["coreset", "--name", ""],
        &["coreset", "--name", "all"],
        &["coreset", "--name", ".."],
        &["hunt", "--name", "x/y"],
        &["annotate", ".", "--round", "a/b"],
        &["branch", "HEAD"],
        &["branch", "@"],
        &["branch", "refs/heads/main"],
        &["tag", "HEAD"],
        &["tag", "../x"],
    ] {
        let out = run(&p, args);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(
            stderr(&out).contains("invalid") && stderr(&out).contains("name"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    assert_eq!(head(&p), head0);
    assert_eq!(listing(tmp.path()), before, "something was written");
    // The library's writer refuses such names too: no version names an invisible model.
    let repo = Repo::discover(&p).unwrap();
    let set = biodc::version::PatchSet {
        name: "a/b".into(),
        method: "hand".into(),
        params: serde_json::json!({}),
        patches: vec![],
        scores: vec![],
        extra: Default::default(),
        objects: Default::default(),
    };
    let e = commit_edit(&repo, |v| {
        v.sets.insert("a/b".into(), set);
    })
    .unwrap_err();
    assert!(format!("{e:#}").contains("invalid set name"), "{e:#}");
    assert_eq!(head(&p), head0);
}

// 3. A crafted repository ------------------------------------------------------------------

/// A version made with git plumbing whose patch id climbs out with `/../` and whose sets are
/// called `.` and `..` is refused when read: fsck names the manifests, and export and report
/// write nothing anywhere.
#[test]
fn a_crafted_repository_cannot_steer_writes_outside_the_output_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let files = cohort(&tmp.path().join("cohort"), 1, [1, 64, 64], 8);
    let p = project(tmp.path(), "p", 32);
    ok(&p, &["import", files[0].to_str().unwrap()]);
    let good = head(&p);
    let stack = biodc::io::files::stack_name(&files[0]);
    let ids = patch_ids(&p);
    let patches_path = format!("patches/{stack}.jsonl");
    let patches = git(&p, &["show", &format!("HEAD:{patches_path}")], None);
    let escape = format!("{}/../../../../escaped", ids[0]);
    let crafted_patches = patches.replacen(&ids[0], &escape, 1) + "\n";
    let tile = patches
        .lines()
        .next()
        .and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .unwrap()["tile"]
        .as_str()
        .unwrap()
        .to_string();
    let set = |name: &str, member: &str| -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "name": name, "method": "hand", "patches": [member],
            "objects": {"prediction": {member: tile}, "uncertainty": {member: tile}},
        }))
        .unwrap()
    };
    // One version with sets `.` and `..`, a later one with the climbing patch id too.
    let with_sets = craft(
        &p,
        &good,
        &[
            ("sets/..json", set(".", &ids[1])),
            ("sets/...json", set("..", &ids[1])),
        ],
    );
    let crafted = craft(
        &p,
        &with_sets,
        &[
            (patches_path.as_str(), crafted_patches.into_bytes()),
            ("sets/...json", set("..", &escape)),
        ],
    );
    let before = listing(tmp.path());
    let out = run(&p, &["fsck"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let text = stdout(&out);
    assert!(text.contains("DAMAGED"), "{text}");
    assert!(
        text.contains(&with_sets) && text.contains("invalid set name \".\""),
        "{text}"
    );
    assert!(
        text.contains(&crafted) && text.contains(&format!("{patches_path}:1: patch id")),
        "{text}"
    );
    let out_dir = tmp.path().join("out");
    for args in [
        vec!["export", "--set", ".", "--to", out_dir.to_str().unwrap()],
        vec!["export", "--set", "..", "--to", out_dir.to_str().unwrap()],
        vec!["export", "--set", "all", "--to", out_dir.to_str().unwrap()],
        vec!["report", "--out", out_dir.to_str().unwrap()],
        vec!["report", &with_sets, "--out", out_dir.to_str().unwrap()],
        vec!["show"],
    ] {
        let o = run(&p, &args);
        assert_eq!(
            o.status.code(),
            Some(1),
            "{args:?} ran on a crafted version"
        );
        assert!(
            stderr(&o).contains("sets/") || stderr(&o).contains("patches/"),
            "{args:?}: {}",
            stderr(&o)
        );
    }
    assert_eq!(listing(tmp.path()), before, "something was written");
    // The good version still exports, inside its folder only.
    ok(
        &p,
        &[
            "export",
            "--rev",
            &good,
            "--set",
            "all",
            "--to",
            out_dir.to_str().unwrap(),
        ],
    );
    assert!(listing(tmp.path()).iter().all(|f| !f.contains("escaped")));
}

// 4. A stack replaced under annotations ----------------------------------------------------

#[test]
fn a_stack_with_annotations_is_replaced_only_with_replace_and_what_vanished_is_listed() {
    let tmp = tempfile::tempdir().unwrap();
    let files = cohort(&tmp.path().join("cohort"), 1, [1, 64, 64], 9);
    let p = project(tmp.path(), "p", 32);
    ok(&p, &["import", files[0].to_str().unwrap()]);
    let stack = biodc::io::files::stack_name(&files[0]);
    let ids = patch_ids(&p);
    // Annotate a patch that will hold other pixels and one that will vanish; put both in a set.
    let (kept, gone) = (
        format!("{stack}-z0-y0000-x0000"),
        format!("{stack}-z0-y0000-x0032"),
    );
    assert!(ids.contains(&kept) && ids.contains(&gone));
    let masks = tmp.path().join("masks");
    std::fs::create_dir_all(&masks).unwrap();
    for id in [&kept, &gone] {
        write_u8(&masks.join(format!("{id}.tif")), [1, 32, 32], |i| {
            if i < 100 {
                1
            } else {
                0
            }
        });
    }
    ok(
        &p,
        &["annotate", masks.to_str().unwrap(), "--round", "core"],
    );
    let repo = Repo::discover(&p).unwrap();
    commit_edit(&repo, |v| {
        v.sets.insert(
            "picked".into(),
            biodc::version::PatchSet {
                name: "picked".into(),
                method: "hand".into(),
                params: serde_json::json!({}),
                patches: vec![kept.clone(), gone.clone()],
                scores: vec![1.0, 2.0],
                extra: Default::default(),
                objects: Default::default(),
            },
        );
    })
    .unwrap();
    drop(repo);
    assert_intact(&p, "annotated");

    // Another file with the same stack name: narrower (the x0032 column vanishes), other pixels.
    let other = tmp.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    let replacement = other.join(files[0].file_name().unwrap());
    write_u8(&replacement, [1, 64, 32], |i| (i % 251) as u8);
    let head0 = head(&p);
    let objects0 = object_files(&p);
    let out = run(&p, &["import", replacement.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    for needle in [
        "nothing was written",
        "2 annotations",
        "sets picked",
        "--replace",
        replacement.to_str().unwrap(),
    ] {
        assert!(err.contains(needle), "missing {needle:?}: {err}");
    }
    assert_eq!(head(&p), head0);
    assert_eq!(object_files(&p), objects0);

    let r = json(
        &p,
        &[
            "import",
            replacement.to_str().unwrap(),
            "--replace",
            "--json",
        ],
    );
    let replaced = &r["replaced"][0];
    assert_eq!(replaced["stack"], stack.as_str());
    assert!(replaced["vanished"]
        .as_array()
        .unwrap()
        .contains(&serde_json::json!(gone)));
    assert_eq!(
        replaced["dropped"]["annotations"],
        serde_json::json!([
            format!("{kept} (round core)"),
            format!("{gone} (round core)")
        ])
    );
    assert_eq!(
        replaced["dropped"]["set_members"]["picked"],
        serde_json::json!([gone])
    );
    let (_, v) = Repo::discover(&p).unwrap().version(None).unwrap();
    assert!(v.annotations.is_empty());
    assert_eq!(v.sets["picked"].patches, vec![kept.clone()]);
    assert_eq!(v.sets["picked"].scores, vec![1.0]);
    assert_intact(&p, "replaced");
    // The history keeps what the new version dropped.
    let d = json(&p, &["diff", "HEAD~1", "HEAD", "--json"]);
    assert_eq!(
        d["annotations"]["removed"].as_array().unwrap().len(),
        2,
        "{d}"
    );

    // fsck now notices names that point at nothing (here made through the library).
    let repo = Repo::discover(&p).unwrap();
    commit_edit(&repo, |v| {
        let mut a = biodc::version::AnnotationRecord {
            patch: gone.clone(),
            mask: v.patches[&stack][0].tile,
            round: "stale".into(),
            origin: biodc::version::Origin::Manual,
            annotator: "x".into(),
            time: 0,
        };
        v.annotations.push(a.clone());
        a.patch = kept.clone();
        v.annotations.push(a);
    })
    .unwrap();
    let out = run(&p, &["fsck"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains(&format!(
            "annotations.jsonl names 1 patches this version does not hold: {gone}"
        )),
        "{}",
        stdout(&out)
    );
}

/// The import cache trusts nothing a writer can set back: a file rewritten with the same size
/// and its old mtime is read again.
#[test]
fn new_content_with_the_same_size_and_mtime_is_not_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    let p = project(tmp.path(), "p", 32);
    let file = tmp.path().join("s.tif");
    write_u8(&file, [1, 64, 64], |i| (i % 200) as u8);
    let mtime = std::fs::metadata(&file).unwrap().modified().unwrap();
    // Past the window in which a change could share the file's timestamps.
    std::thread::sleep(std::time::Duration::from_millis(2100));
    ok(&p, &["import", file.to_str().unwrap()]);
    let tiles0 = patch_ids(&p).len();
    write_u8(&file, [1, 64, 64], |i| (i % 199) as u8);
    std::fs::File::options()
        .write(true)
        .open(&file)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    assert_eq!(std::fs::metadata(&file).unwrap().modified().unwrap(), mtime);
    let r = json(&p, &["import", file.to_str().unwrap(), "--json"]);
    assert_eq!(r["changed_stacks"], serde_json::json!(["s"]), "{r}");
    assert_eq!(patch_ids(&p).len(), tiles0);
}

// 5. The README's annotation loop ----------------------------------------------------------

/// `export --with-prediction --to fix/` then `annotate fix/` reads the predictions only; an
/// export never overwrites masks saved under a patch's name without --force.
#[test]
fn exported_folders_annotate_cleanly_and_are_never_overwritten() {
    let tmp = tempfile::tempdir().unwrap();
    let cohort_dir = tmp.path().join("cohort");
    let files = cohort(&cohort_dir, 2, [2, 64, 64], 10);
    let p = project(tmp.path(), "p", 32);
    for f in &files {
        ok(&p, &["import", f.to_str().unwrap()]);
    }
    ok(&p, &["pretrain", "--max-steps", "2", "--batch", "4"]);
    let truth = tmp.path().join("truth");
    expert(&p, &cohort_dir, "all", Some(6), &truth);
    ok(
        &p,
        &["annotate", truth.to_str().unwrap(), "--round", "core"],
    );
    ok(
        &p,
        &["train", "--name", "M0", "--max-steps", "2", "--batch", "4"],
    );
    ok(
        &p,
        &["hunt", "--model", "M0", "--top", "4", "--passes", "2"],
    );
    let fix = tmp.path().join("fix");
    let out = ok(
        &p,
        &[
            "export",
            "--set",
            "candidates-1",
            "--with-prediction",
            "M0",
            "--to",
            fix.to_str().unwrap(),
        ],
    );
    assert!(
        out.contains(&format!("annotate {}", fix.display())),
        "{out}"
    );
    let r = json(
        &p,
        &[
            "annotate",
            fix.to_str().unwrap(),
            "--round",
            "critical-1",
            "--json",
        ],
    );
    // 4 predictions read; 4 images, 4 triptychs and the contact sheet skipped.
    assert_eq!(
        (r["masks"].as_u64(), r["skipped"].as_u64()),
        (Some(4), Some(9)),
        "{r}"
    );

    // A second export into the same folder is refused and changes nothing.
    let saved = fix.join("predictions");
    let before: Vec<(String, Vec<u8>)> = listing(&fix)
        .into_iter()
        .filter(|f| fix.join(f).is_file())
        .map(|f| (f.clone(), std::fs::read(fix.join(&f)).unwrap()))
        .collect();
    let o = run(
        &p,
        &[
            "export",
            "--set",
            "candidates-1",
            "--with-prediction",
            "M0",
            "--to",
            fix.to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("already exist") && stderr(&o).contains("--force"),
        "{}",
        stderr(&o)
    );
    let after: Vec<(String, Vec<u8>)> = listing(&fix)
        .into_iter()
        .filter(|f| fix.join(f).is_file())
        .map(|f| (f.clone(), std::fs::read(fix.join(&f)).unwrap()))
        .collect();
    assert_eq!(before, after);
    assert!(saved.is_dir());

    // The expert saves a mask over one exported image, in place: annotate reads that one only.
    let todo = tmp.path().join("todo");
    ok(
        &p,
        &[
            "export",
            "--set",
            "candidates-1",
            "--to",
            todo.to_str().unwrap(),
        ],
    );
    let (_, v) = Repo::discover(&p).unwrap().version(None).unwrap();
    let first = v.sets["candidates-1"].patches[0].clone();
    let mask_path = todo.join(format!("{first}.tif"));
    write_u8(
        &mask_path,
        [1, 32, 32],
        |i| if i % 3 == 0 { 255 } else { 0 },
    );
    let mask_bytes = std::fs::read(&mask_path).unwrap();
    let r = json(
        &p,
        &[
            "annotate",
            todo.to_str().unwrap(),
            "--round",
            "manual",
            "--json",
        ],
    );
    assert_eq!(
        (r["masks"].as_u64(), r["skipped"].as_u64()),
        (Some(1), Some(4)),
        "{r}"
    );
    let o = run(
        &p,
        &[
            "export",
            "--set",
            "candidates-1",
            "--to",
            todo.to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        std::fs::read(&mask_path).unwrap(),
        mask_bytes,
        "the mask was overwritten"
    );
    ok(
        &p,
        &[
            "export",
            "--set",
            "candidates-1",
            "--to",
            todo.to_str().unwrap(),
            "--force",
        ],
    );
    assert_ne!(std::fs::read(&mask_path).unwrap(), mask_bytes);
    assert_intact(&p, "after the annotation rounds");
}

// 6. NaN -------------------------------------------------------------------------------------

/// A 4-patch repository has no held-out patches: pretrain records no NaN, and a version an
/// older biodc wrote with `null` for a NaN reads back everywhere.
#[test]
fn a_version_with_nan_metrics_reads_back() {
    let tmp = tempfile::tempdir().unwrap();
    let files = cohort(&tmp.path().join("cohort"), 1, [1, 64, 64], 11);
    let p = project(tmp.path(), "p", 32);
    ok(&p, &["import", files[0].to_str().unwrap()]);
    assert_eq!(patch_ids(&p).len(), 4);
    ok(&p, &["pretrain", "--max-steps", "1", "--batch", "2"]);
    let (_, v) = Repo::discover(&p).unwrap().version(None).unwrap();
    assert!(v.models["mae"].metrics.values().all(|m| m.is_finite()));
    assert_intact(&p, "after pretrain");
    // What the older biodc committed: the held-out loss as null.
    let model = git(&p, &["show", "HEAD:models/mae.json"], None);
    let mut m: serde_json::Value = serde_json::from_str(&model).unwrap();
    m["metrics"]["held_out_loss_start"] = serde_json::Value::Null;
    m["metrics"]["held_out_loss_end"] = serde_json::Value::Null;
    m["loss_curve"][0][1] = serde_json::Value::Null;
    let h = head(&p);
    craft(
        &p,
        &h,
        &[("models/mae.json", serde_json::to_vec_pretty(&m).unwrap())],
    );
    assert_intact(&p, "with null metrics");
    for args in [
        &["status"][..],
        &["show"],
        &["log", "--metrics"],
        &["diff", "HEAD~1"],
        &["embed"],
    ] {
        ok(&p, args);
    }
    let (_, v) = Repo::discover(&p).unwrap().version(None).unwrap();
    assert!(v.models["mae"].metrics["held_out_loss_start"].is_nan());
}

// 7. Smaller items ---------------------------------------------------------------------------

/// git-annex/DataLad keep files as symbolic links: they are imported and annotated; a link
/// whose content is not there is an error naming it.
#[test]
fn symlinked_stacks_and_masks_are_read_and_broken_links_named() {
    let tmp = tempfile::tempdir().unwrap();
    let files = cohort(&tmp.path().join("cohort"), 2, [1, 64, 64], 12);
    let annex = tmp.path().join("dataset");
    let objects = annex.join(".git/annex/objects");
    std::fs::create_dir_all(&objects).unwrap();
    for (i, f) in files.iter().enumerate() {
        let stored = objects.join(format!("SHA256E-s{i}.tif"));
        std::fs::copy(f, &stored).unwrap();
        std::os::unix::fs::symlink(
            format!(".git/annex/objects/SHA256E-s{i}.tif"),
            annex.join(f.file_name().unwrap()),
        )
        .unwrap();
    }
    let p = project(tmp.path(), "p", 32);
    let r = json(&p, &["import", annex.to_str().unwrap(), "--json"]);
    assert_eq!(r["new_stacks"].as_array().unwrap().len(), 2, "{r}");
    // Masks as links too.
    let ids = patch_ids(&p);
    let store = tmp.path().join("mask-store");
    let masks = tmp.path().join("masks");
    std::fs::create_dir_all(&store).unwrap();
    std::fs::create_dir_all(&masks).unwrap();
    for id in &ids[..2] {
        let real = store.join(format!("{id}.tif"));
        write_u8(&real, [1, 32, 32], |i| (i % 2) as u8);
        std::os::unix::fs::symlink(&real, masks.join(format!("{id}.tif"))).unwrap();
    }
    let r = json(
        &p,
        &[
            "annotate",
            masks.to_str().unwrap(),
            "--round",
            "core",
            "--json",
        ],
    );
    assert_eq!(r["masks"], 2, "{r}");
    // Content not fetched: the link points at nothing.
    let missing = annex.join("later.tif");
    std::os::unix::fs::symlink(".git/annex/objects/SHA256E-missing.tif", &missing).unwrap();
    let out = run(&p, &["import", annex.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("later.tif") && err.contains("does not exist") && err.contains("annex get"),
        "{err}"
    );
}

#[test]
fn masks_must_be_0_1_or_0_255() {
    let tmp = tempfile::tempdir().unwrap();
    let files = cohort(&tmp.path().join("cohort"), 1, [1, 64, 64], 13);
    let p = project(tmp.path(), "p", 32);
    ok(&p, &["import", files[0].to_str().unwrap()]);
    let ids = patch_ids(&p);
    for (on, accepted) in [
        (2u8, false),
        (128, false),
        (254, false),
        (1, true),
        (255, true),
    ] {
        let dir = tmp.path().join(format!("m{on}"));
        std::fs::create_dir_all(&dir).unwrap();
        write_u8(&dir.join(format!("{}.tif", ids[0])), [1, 32, 32], |i| {
            if i % 5 == 0 {
                on
            } else {
                0
            }
        });
        let out = run(&p, &["annotate", dir.to_str().unwrap(), "--round", "core"]);
        assert_eq!(
            out.status.success(),
            accepted,
            "{{0,{on}}}: {}",
            stderr(&out)
        );
        if !accepted {
            assert!(
                stderr(&out).contains(&format!("not binary: holds 0, {on}")),
                "{}",
                stderr(&out)
            );
        }
    }
}

/// fsck beside gc: objects gc removes while fsck runs are not "corrupt".
#[test]
fn fsck_beside_gc_reports_no_damage() {
    let tmp = tempfile::tempdir().unwrap();
    let files = cohort(&tmp.path().join("cohort"), 3, [4, 128, 128], 14);
    let p = project(tmp.path(), "p", 16);
    ok(&p, &["import", files[0].to_str().unwrap()]);
    let mut vanished = 0;
    for round in 0..6 {
        // A killed import leaves ~500 unreachable objects for gc.
        let killed = bin()
            .arg("-C")
            .arg(&p)
            .args([
                "import",
                files[1].to_str().unwrap(),
                files[2].to_str().unwrap(),
            ])
            .env("BIODC_FAILPOINT", "repo:before-commit")
            .output()
            .unwrap();
        assert!(!killed.status.success());
        let before = json(&p, &["fsck", "--json"]);
        assert!(before["unreachable"].as_u64().unwrap() >= 400, "{before}");
        // fsck lists the store first; gc, started just after, removes what fsck checks.
        let fsck = spawn(&p, &["fsck", "--json"]);
        let gc = run(&p, &["gc"]);
        assert!(gc.status.success());
        let fsck = fsck.wait_with_output().unwrap();
        let r: serde_json::Value = serde_json::from_slice(&fsck.stdout).unwrap();
        assert_eq!(r["corrupt"], serde_json::json!([]), "round {round}: {r}");
        assert_eq!(r["missing"], serde_json::json!([]), "round {round}: {r}");
        assert_eq!(fsck.status.code(), Some(0), "round {round}: {r}");
        vanished += r["vanished"].as_u64().unwrap_or(0);
    }
    println!("objects gc removed while fsck checked them: {vanished}");
}

/// Damage is reported with the versions and patches that use the object, and a truncated
/// object is called truncated.
#[test]
fn damage_names_the_versions_and_patches_that_use_it() {
    let tmp = tempfile::tempdir().unwrap();
    let files = cohort(&tmp.path().join("cohort"), 1, [1, 64, 64], 15);
    let p = project(tmp.path(), "p", 32);
    ok(&p, &["import", files[0].to_str().unwrap()]);
    let first_version = head(&p)[..12].to_string();
    ok(&p, &["tag", "v1"]);
    let (_, v) = Repo::discover(&p).unwrap().version(None).unwrap();
    let patch = v.all_patches().next().unwrap().1.clone();
    let path = Repo::discover(&p).unwrap().store.path_of(&patch.tile);
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 7]).unwrap();
    let out = run(&p, &["fsck"]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(text.contains("truncated"), "{text}");
    assert!(
        text.contains(&format!("named by version {first_version} patches/"))
            && text.contains(&patch.id),
        "{text}"
    );
    let r = json_status(&p, &["fsck", "--json"]);
    let uses = &r["uses"][patch.tile.to_hex()];
    assert!(uses[0].as_str().unwrap().contains(&patch.id), "{r}");
}

fn json_status(project: &Path, args: &[&str]) -> serde_json::Value {
    serde_json::from_slice(&run(project, args).stdout).unwrap()
}

/// A TIFF whose header promises far more pixels than the file holds is refused before anything
/// is read or written.
#[test]
fn a_header_claiming_a_huge_image_is_refused_up_front() {
    let tmp = tempfile::tempdir().unwrap();
    let p = project(tmp.path(), "p", 32);
    let file = tmp.path().join("huge.tif");
    write_u8(&file, [1, 64, 64], |i| i as u8);
    let mut bytes = std::fs::read(&file).unwrap();
    assert_eq!(&bytes[..2], b"II", "little-endian TIFF expected");
    let ifd = u32::from_le_bytes(bytes[4..8].try_into().unwrap()) as usize;
    let entries = u16::from_le_bytes(bytes[ifd..ifd + 2].try_into().unwrap()) as usize;
    for e in 0..entries {
        let at = ifd + 2 + 12 * e;
        let tag = u16::from_le_bytes(bytes[at..at + 2].try_into().unwrap());
        let kind = u16::from_le_bytes(bytes[at + 2..at + 4].try_into().unwrap());
        // Width, height, and rows per strip (so the one strip stays consistent with them).
        if tag == 256 || tag == 257 || tag == 278 {
            match kind {
                3 => bytes[at + 8..at + 10].copy_from_slice(&60000u16.to_le_bytes()),
                4 => bytes[at + 8..at + 12].copy_from_slice(&60000u32.to_le_bytes()),
                k => panic!("dimension tag of type {k}"),
            }
        }
    }
    std::fs::write(&file, &bytes).unwrap();
    let objects0 = object_files(&p);
    let out = run(&p, &["import", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("huge.tif") && err.contains("claims 60000×60000 pixels"),
        "{err}"
    );
    assert_eq!(object_files(&p), objects0);
}

/// Disk full while the version is written to git: said in those words, nothing committed. Needs
/// a small file system for `.biodc/git/objects`: a tmpfs mounted in a user namespace
/// (`unshare`); where that is not allowed, the message itself is checked by the unit test in
/// src/history/mod.rs.
#[test]
fn disk_full_during_the_git_write_says_so_and_commits_nothing() {
    let probe = Command::new("unshare")
        .args(["--user", "--map-root-user", "--mount", "true"])
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        eprintln!("skipped: user namespaces are not available here");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let files = cohort(&tmp.path().join("cohort"), 12, [1, 64, 64], 16);
    let p = project(tmp.path(), "p", 32);
    let head0 = head(&p);
    let objects = p.join(".biodc/git/objects");
    let saved = tmp.path().join("saved-objects");
    let script = format!(
        "set -e; cp -a '{o}' '{s}'; mount -t tmpfs -o size=48k tmpfs '{o}'; cp -a '{s}/.' '{o}/'; \
         exec '{bin}' -C '{p}' import '{c}'",
        o = objects.display(),
        s = saved.display(),
        bin = assert_cmd::cargo::cargo_bin("biodc").display(),
        p = p.display(),
        c = tmp.path().join("cohort/images").display()
    );
    let out = Command::new("unshare")
        .args(["--user", "--map-root-user", "--mount", "sh", "-c", &script])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("no space left") && err.contains("nothing was committed"),
        "{err}"
    );
    assert!(
        !err.contains("Could not write loose object header"),
        "{err}"
    );
    assert_eq!(head(&p), head0);
    assert!(files.len() == 12);
    assert_intact(&p, "after the full disk");
}

/// `biodc log | head`: the reader leaves, biodc ends quietly.
#[test]
fn a_closed_pipe_ends_output_quietly() {
    let tmp = tempfile::tempdir().unwrap();
    let p = project(tmp.path(), "p", 32);
    let mut fds = [0i32; 2];
    // SAFETY: pipe writes two descriptors into the array.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: the read end is ours and is closed once, here.
    unsafe { libc::close(fds[0]) };
    // SAFETY: the write end is ours; the Stdio owns it from here on.
    let write_end = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fds[1]) };
    let out = bin()
        .arg("-C")
        .arg(&p)
        .args(["log"])
        .stdout(Stdio::from(write_end))
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(!err.contains("panicked"), "{err}");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGPIPE),
        "{:?} {err}",
        out.status
    );
}

/// Identical imports report the same number of new objects, even when threads race to store
/// the same tile: a plane of 64 identical (noisy) tiles.
#[test]
fn identical_imports_count_the_same_new_objects() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("tiled.tif");
    let noise = |i: usize| (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 48;
    let stack = Stack {
        info: StackInfo {
            shape: [1, 1024, 1024],
            dtype: Dtype::U16,
            voxel_size: None,
        },
        planes: vec![Plane::U16(
            (0..1024 * 1024)
                .map(|i| noise((i / 1024 % 128) * 128 + i % 128) as u16)
                .collect(),
        )],
    };
    write_stack(&file, &stack).unwrap();
    for i in 0..10 {
        let p = project(tmp.path(), &format!("p{i}"), 128);
        let r = json(&p, &["import", file.to_str().unwrap(), "--json"]);
        assert_eq!(r["new_objects"], 1, "import {i}: {r}");
        assert_eq!(r["patches"], 64);
        assert_eq!(object_files(&p).len(), 1, "import {i}");
    }
}

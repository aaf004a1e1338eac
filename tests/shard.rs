//! Sharded runs (`--shard I/N`, `gather`): three shards of embed, monitor, hunt and segment
//! run by `xargs -P 2` give the same version, objects and files as one process; a missing
//! shard, or shards computed on another version, are refused with the reason; `gc` drops
//! abandoned shard data.

mod common;

use biodc::version::DatasetVersion;
use common::*;
use std::path::{Path, PathBuf};

/// A project with an encoder and a segmenter trained on an annotated core set, and an
/// identical copy of it: (tmp, one, other).
fn twin_projects() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let (tmp, project, cohort) = project_with(Cohort {
        stacks: 6,
        shape: "1,224,224",
        seed: 3,
        patch: 112,
        defects: false,
    });
    import_cohort(&project, &cohort);
    ok(
        &project,
        &[
            "pretrain",
            "--epochs",
            "1",
            "--max-steps",
            "4",
            "--seed",
            "1",
        ],
    );
    // The core set needs embeddings (the twins then embed again, from one parent).
    ok(&project, &["embed"]);
    ok(&project, &["coreset", "-k", "4"]);
    let masks = tmp.path().join("masks");
    expert(&project, &cohort, "coreset", None, &masks);
    ok(
        &project,
        &["annotate", masks.to_str().unwrap(), "--round", "core"],
    );
    ok(
        &project,
        &[
            "train",
            "--name",
            "M0",
            "--max-steps",
            "4",
            "--batch",
            "4",
            "--seed",
            "1",
        ],
    );
    let other = tmp.path().join("other");
    let status = std::process::Command::new("cp")
        .args(["-a", project.to_str().unwrap(), other.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(status.success());
    // The twin embeds from scratch too: no cached rows.
    std::fs::remove_dir_all(other.join(".biodc/cache.sled")).ok();
    (tmp, project, other)
}

/// Runs `biodc ARGS --shard {i}/3` for i in 0..3 through `xargs -P 2`.
fn three_shards(dir: &Path, args: &str) {
    let bin = assert_cmd::cargo::cargo_bin("biodc");
    let script = format!(
        "seq 0 2 | xargs -P 2 -I{{}} {} -C {} {args} --shard {{}}/3",
        bin.display(),
        dir.display()
    );
    let out = std::process::Command::new("sh")
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn version(dir: &Path) -> DatasetVersion {
    let repo = biodc::repo::Repo::discover(dir).unwrap();
    let (_, mut v) = repo.version(None).unwrap();
    v.stage = None;
    v
}

#[test]
fn three_shards_give_what_one_process_gives() {
    let (tmp, one, other) = twin_projects();

    ok(&one, &["embed", "--batch", "5"]);
    three_shards(&other, "embed --batch 5");
    let pending = walkdir::WalkDir::new(other.join(".biodc/shards"))
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .count();
    assert_eq!(pending, 3, "one record per shard");
    let g = json(&other, &["gather", "--json"]);
    assert_eq!(g["shards"], 3);
    assert_eq!(version(&one), version(&other), "embed: same version");
    let embedded = head(&other);
    let record = json(&other, &["show", "--json"]);
    assert_eq!(
        record["stage"]["shards"].as_array().map(Vec::len),
        Some(3),
        "{record}"
    );

    let monitor = "monitor --model M0 --all --trees 8 --per-class 2000";
    ok(&one, &monitor.split(' ').collect::<Vec<_>>());
    three_shards(&other, monitor);
    ok(&other, &["gather"]);
    assert_eq!(version(&one), version(&other), "monitor: same version");

    let hunt = "hunt --model M0 --top 5 --passes 3 --batch 4 --batch-streams";
    ok(&one, &hunt.split(' ').collect::<Vec<_>>());
    three_shards(&other, hunt);
    ok(&other, &["gather"]);
    assert_eq!(version(&one), version(&other), "hunt: same version");
    let hunted = head(&other);

    // The shards' own objects are unreachable once gathered; then the stores are the same.
    ok(&one, &["gc"]);
    ok(&other, &["gc"]);
    assert_eq!(
        object_names(&one.join(".biodc/objects")),
        object_names(&other.join(".biodc/objects"))
    );
    let r = json(&other, &["reproduce", "HEAD", "--json"]);
    assert_eq!(r["identical"], true, "{r}");
    for commit in [&embedded, &hunted] {
        let r = json(&other, &["reproduce", commit, "--json"]);
        assert_eq!(r["identical"], true, "{r}");
    }

    let a = tmp.path().join("masks-one");
    let b = tmp.path().join("masks-sharded");
    ok(
        &one,
        &[
            "segment",
            "--model",
            "M0",
            "--all",
            "--out",
            a.to_str().unwrap(),
        ],
    );
    three_shards(
        &other,
        &format!("segment --model M0 --all --out {}", b.display()),
    );
    let files = |d: &Path| {
        let mut f: Vec<(String, Vec<u8>)> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| {
                let p = e.unwrap().path();
                (
                    p.file_name().unwrap().to_string_lossy().into_owned(),
                    std::fs::read(&p).unwrap(),
                )
            })
            .collect();
        f.sort();
        f
    };
    assert_eq!(files(&a).len(), 6);
    assert!(files(&a) == files(&b), "segment: same files");
}

#[test]
fn three_import_shards_give_what_one_import_gives() {
    let (tmp, one, cohort) = project_with(Cohort {
        stacks: 5,
        shape: "2,224,224",
        seed: 4,
        patch: 112,
        defects: true,
    });
    let other = tmp.path().join("other");
    let status = std::process::Command::new("cp")
        .args(["-a", one.to_str().unwrap(), other.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(status.success());
    // One stack is there already: its shard finds it unchanged.
    let images = cohort.join("images");
    let first = first_file(&images);
    for p in [&one, &other] {
        ok(p, &["import", first.to_str().unwrap(), "--condition", "x"]);
    }
    let args = format!("import {} --condition x", images.display());
    ok(&one, &args.split(' ').collect::<Vec<_>>());
    let before = head(&other);
    three_shards(&other, &args);
    assert_eq!(head(&other), before, "shards commit nothing");
    let g = json(&other, &["gather", "--json"]);
    assert_eq!(g["shards"], 3);
    assert!(
        g["summary"]
            .as_str()
            .unwrap()
            .contains("4 new, 0 changed, 1 unchanged"),
        "{g}"
    );
    assert_eq!(version(&one), version(&other), "import: same version");
    assert_eq!(
        object_names(&one.join(".biodc/objects")),
        object_names(&other.join(".biodc/objects"))
    );
    let r = json(&other, &["reproduce", "HEAD", "--json"]);
    assert_eq!(r["identical"], true, "{r}");
}

/// `gather` fails: its error message.
fn gather_fails(project: &Path) -> String {
    let e = biodc(project).args(["gather"]).output().unwrap();
    assert!(!e.status.success());
    String::from_utf8_lossy(&e.stderr).into_owned()
}

#[test]
fn a_missing_shard_or_another_parent_is_refused_and_gc_drops_abandoned_runs() {
    let (_tmp, project, _) = twin_projects();
    let before = head(&project);
    ok(&project, &["embed", "--shard", "0/3"]);
    ok(&project, &["embed", "--shard", "2/3"]);
    let msg = gather_fails(&project);
    assert!(msg.contains("missing shards 1/3"), "{msg}");
    assert_eq!(head(&project), before, "nothing committed");
    // A stray copy of a record: the same shard twice.
    let first = walkdir::WalkDir::new(project.join(".biodc/shards"))
        .into_iter()
        .filter_map(Result::ok)
        .find(|e| e.file_name() == "0.json")
        .unwrap()
        .into_path();
    let stray = first.with_file_name("copy.json");
    std::fs::copy(&first, &stray).unwrap();
    let msg = gather_fails(&project);
    assert!(msg.contains("shard 0/3 twice"), "{msg}");
    std::fs::remove_file(&stray).unwrap();

    // HEAD moves on: the shards describe the version before.
    ok(&project, &["embed", "--shard", "1/3"]);
    ok(&project, &["set", "extra", "c0_s000-z0-y0000-x0000"]);
    let msg = gather_fails(&project);
    assert!(msg.contains("another version"), "{msg}");

    // The run's parent is no branch's tip any more: gc drops it and its objects.
    let gc = json(&project, &["gc", "--json"]);
    assert_eq!(
        gc["abandoned_shard_runs"].as_array().map(Vec::len),
        Some(1),
        "{gc}"
    );
    assert!(!project
        .join(".biodc/shards")
        .read_dir()
        .unwrap()
        .any(|_| true));
    let f = json(&project, &["fsck", "--json"]);
    assert_eq!(f["missing"], serde_json::json!([]));

    let e = biodc(&project)
        .args(["hunt", "--model", "M0", "--shard", "0/2"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&e.stderr).contains("--batch-streams"));
    let e = biodc(&project)
        .args(["embed", "--shard", "3/3"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&e.stderr).contains("0 to N−1"));
}

/// Whether a Slurm cluster answers here (`sinfo` runs and lists a partition).
fn slurm_cluster() -> Result<(), String> {
    match std::process::Command::new("sinfo").arg("-h").output() {
        Ok(o) if o.status.success() && !o.stdout.is_empty() => Ok(()),
        Ok(o) => Err(format!(
            "sinfo failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Err(format!("no sinfo ({e})")),
    }
}

#[test]
fn a_slurm_job_array_runs_its_shards_and_the_gather_job_commits_them() {
    let (_tmp, project, _) = twin_projects();
    let before = head(&project);
    let submitted = json(
        &project,
        &[
            "slurm",
            "--shards",
            "3",
            "--dry-run",
            "--json",
            "--",
            "embed",
            "--batch",
            "5",
        ],
    );
    let array = PathBuf::from(submitted["array_script"].as_str().unwrap());
    let gather = PathBuf::from(submitted["gather_script"].as_str().unwrap());
    let text = std::fs::read_to_string(&array).unwrap();
    assert!(text.contains("#SBATCH --array=0-2"), "{text}");
    assert!(text.contains("embed --batch 5 --shard auto"), "{text}");
    assert!(submitted["commands"][1]
        .as_str()
        .unwrap()
        .contains("--dependency=afterok:"));
    match slurm_cluster() {
        Ok(()) => {
            let r = json(
                &project,
                &[
                    "slurm", "--shards", "3", "--json", "--", "embed", "--batch", "5",
                ],
            );
            let jobs = format!(
                "{},{}",
                r["array_job"].as_str().unwrap(),
                r["gather_job"].as_str().unwrap()
            );
            // Wait for the gather job to move HEAD, or for Slurm to have no job left.
            let start = std::time::Instant::now();
            while head(&project) == before {
                let queued = std::process::Command::new("squeue")
                    .args(["-h", "-j", &jobs])
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                    .unwrap_or_default();
                if (queued.is_empty() && start.elapsed().as_secs() > 10)
                    || start.elapsed().as_secs() > 300
                {
                    let logs: String = walkdir::WalkDir::new(project.join(".biodc/slurm"))
                        .into_iter()
                        .filter_map(Result::ok)
                        .filter(|e| e.path().extension().is_some_and(|x| x == "out"))
                        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
                        .collect();
                    panic!("the Slurm jobs {jobs} ended without a gathered commit: {logs}");
                }
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
        }
        Err(why) => {
            eprintln!(
                "note: no Slurm cluster here ({why}); running the array script as Slurm runs it, one task per index, then the gather script"
            );
            for i in 0..3 {
                let out = std::process::Command::new("bash")
                    .arg(&array)
                    .env("SLURM_ARRAY_TASK_ID", i.to_string())
                    .env("SLURM_ARRAY_TASK_COUNT", "3")
                    .env("SLURM_ARRAY_TASK_MIN", "0")
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            let out = std::process::Command::new("bash")
                .arg(&gather)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let shown = json(&project, &["show", "--json"]);
    assert_eq!(shown["stage"]["verb"], "embed");
    assert_eq!(shown["stage"]["shards"].as_array().map(Vec::len), Some(3));
    assert!(
        shown["stage"]["job_script"]
            .as_str()
            .is_some_and(|s| s.contains("--shard auto")),
        "{shown}"
    );
}

#[test]
fn biodc_slurm_gathers_the_verbs_whose_stages_shard() {
    let gathered: Vec<&str> = biodc::slurm::SHARDED_VERBS
        .iter()
        .filter(|(_, g)| *g)
        .map(|(v, _)| *v)
        .collect();
    let mut registered: Vec<&str> = biodc::stages::REGISTRY
        .iter()
        .filter(|r| r.gathers())
        .map(|r| r.verb)
        .collect();
    registered.sort_by_key(|v| gathered.iter().position(|g| g == v));
    assert_eq!(gathered, registered);
}

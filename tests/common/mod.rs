//! Helpers shared by the integration tests: run the biodc binary in a temp project.
#![allow(dead_code)]

pub mod s3;

use assert_cmd::Command;
use std::path::{Path, PathBuf};

/// `biodc` with `-C dir`.
pub fn biodc(dir: &Path) -> Command {
    let mut cmd = Command::cargo_bin("biodc").unwrap();
    cmd.arg("-C").arg(dir).env_remove("BIODC_FAILPOINT");
    cmd
}

/// Runs biodc and returns stdout, panicking with stderr on failure.
pub fn ok(dir: &Path, args: &[&str]) -> String {
    let out = biodc(dir).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "biodc {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs biodc with `--json` output parsed.
pub fn json(dir: &Path, args: &[&str]) -> serde_json::Value {
    serde_json::from_str(&ok(dir, args)).unwrap()
}

pub fn head(dir: &Path) -> String {
    json(dir, &["status", "--json"])["head"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Object files in the store (excluding temp files).
pub fn object_files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = walkdir::WalkDir::new(dir.join(".biodc/objects"))
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_type().is_file() && e.path().parent() != Some(&dir.join(".biodc/objects"))
        })
        .filter(|e| !e.file_name().to_string_lossy().starts_with(".tmp"))
        .map(|e| e.into_path())
        .collect();
    out.sort();
    out
}

/// A synthetic cohort to test on.
pub struct Cohort<'a> {
    pub stacks: usize,
    pub shape: &'a str,
    pub seed: u64,
    /// Patch edge the project is initialised with.
    pub patch: usize,
    pub defects: bool,
}

/// A fresh, initialised project with `c` written beside it: (tempdir, project, cohort).
pub fn project_with(c: Cohort) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let project = tmp.path().join("project");
    let cohort = tmp.path().join("cohort");
    std::fs::create_dir_all(&project).unwrap();
    ok(&project, &["init", "--patch", &c.patch.to_string()]);
    let (stacks, seed) = (c.stacks.to_string(), c.seed.to_string());
    let mut args = vec![
        "synth",
        "--out",
        cohort.to_str().unwrap(),
        "--stacks",
        &stacks,
        "--shape",
        c.shape,
        "--seed",
        &seed,
    ];
    if !c.defects {
        args.push("--no-defects");
    }
    ok(tmp.path(), &args);
    (tmp, project, cohort)
}

/// [`project_with`] 224-pixel patches, seed 3, defects planted.
pub fn project_with_cohort(stacks: usize, shape: &str) -> (tempfile::TempDir, PathBuf, PathBuf) {
    project_with(Cohort {
        stacks,
        shape,
        seed: 3,
        patch: 224,
        defects: true,
    })
}

/// Imports the cohort's images, tagging conditions from their folders.
pub fn import_cohort(project: &Path, cohort: &Path) {
    ok(
        project,
        &[
            "import",
            cohort.join("images").to_str().unwrap(),
            "--condition-from-dir",
        ],
    );
}

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

/// The simulated expert: ground-truth masks of `set`'s patches (the first `first` only, when
/// given) written to `to`.
pub fn expert(project: &Path, cohort: &Path, set: &str, first: Option<usize>, to: &Path) {
    let n = first.map(|n| n.to_string());
    let mut args = vec![
        "expert",
        "--cohort",
        cohort.to_str().unwrap(),
        "--set",
        set,
        "--to",
        to.to_str().unwrap(),
    ];
    if let Some(n) = &n {
        args.extend(["--first", n.as_str()]);
    }
    ok(project, &args);
}

/// Every patch id of `project`'s HEAD, sorted (exported once into `scratch`).
pub fn patch_ids(project: &Path, scratch: &Path) -> Vec<String> {
    ok(
        project,
        &["export", "--set", "all", "--to", scratch.to_str().unwrap()],
    );
    let mut ids: Vec<String> = std::fs::read_dir(scratch)
        .unwrap()
        .filter_map(|e| {
            let n = e.unwrap().file_name().to_string_lossy().into_owned();
            n.strip_suffix(".tif").map(String::from)
        })
        .collect();
    ids.sort();
    ids
}

/// Names (fan-out folder + file) of the object files under `dir`: a project's
/// `.biodc/objects` or a remote's `objects/` (not temp or staging files a killed writer left);
/// with the objects in the packs of `dir/packs` (what clone and fetch bring).
pub fn object_names(dir: &Path) -> std::collections::BTreeSet<String> {
    let mut names = loose_object_names(dir);
    for e in std::fs::read_dir(dir.join("packs")).into_iter().flatten() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "idx") {
            let index = std::fs::read(&p).unwrap();
            let entries = biodc::store::pack::decode_index(&index, "test").unwrap();
            names.extend(entries.iter().map(|e| e.id.to_hex()));
        }
    }
    names
}

/// Names of the objects under `dir` in files of their own.
pub fn loose_object_names(dir: &Path) -> std::collections::BTreeSet<String> {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_type().is_file()
                && e.file_name()
                    .to_string_lossy()
                    .chars()
                    .all(|c| c.is_ascii_hexdigit())
        })
        .map(|e| {
            let p = e.path();
            format!(
                "{}{}",
                p.parent().unwrap().file_name().unwrap().to_string_lossy(),
                p.file_name().unwrap().to_string_lossy()
            )
        })
        .collect()
}

/// Names of the store objects a remote (a URL; a folder's relative to `base`) holds in packs
/// whose index has arrived.
pub fn remote_object_names(url: &str, base: &Path) -> std::collections::BTreeSet<String> {
    let backend = biodc::remote::open(url, base, false).unwrap();
    biodc::remote::pack::Inventory::read(&backend, biodc::remote::pack::Shelf::Data, None, 2)
        .unwrap()
        .ids()
        .map(|id| id.to_hex())
        .collect()
}

/// Two imported stacks of 1×128×128 in 64² patches from synthetic seed `seed`:
/// (tmp, project, cohort, the patch ids).
pub fn small_project(seed: u64) -> (tempfile::TempDir, PathBuf, PathBuf, Vec<String>) {
    let (tmp, project, cohort) = project_with(Cohort {
        stacks: 2,
        shape: "1,128,128",
        seed,
        patch: 64,
        defects: false,
    });
    import_cohort(&project, &cohort);
    let ids = patch_ids(&project, &tmp.path().join("all"));
    (tmp, project, cohort, ids)
}

/// [`small_project`] with patches `core` as set `coreset`, annotated by the simulated expert.
pub fn small_annotated_project(
    seed: u64,
    core: [usize; 2],
) -> (tempfile::TempDir, PathBuf, Vec<String>) {
    let (tmp, project, cohort, ids) = small_project(seed);
    ok(&project, &["set", "coreset", &ids[core[0]], &ids[core[1]]]);
    let masks = tmp.path().join("masks");
    expert(&project, &cohort, "coreset", None, &masks);
    ok(
        &project,
        &["annotate", masks.to_str().unwrap(), "--round", "core"],
    );
    (tmp, project, ids)
}

/// The first file under `dir`, in name order.
pub fn first_file(dir: &Path) -> PathBuf {
    walkdir::WalkDir::new(dir)
        .sort_by_file_name()
        .into_iter()
        .filter_map(Result::ok)
        .find(|e| e.file_type().is_file())
        .unwrap()
        .into_path()
}

//! Remotes on a real S3 server: s3s-fs (an S3 implementation over a folder, the s3s project's
//! own) serving on 127.0.0.1 from inside this test process; biodc talks to it over HTTP with
//! the AWS environment variables, as it would to MinIO or Ceph.

mod common;

use common::*;
use std::net::SocketAddr;
use std::sync::OnceLock;

const KEY: &str = "biodc-test-key";
const SECRET: &str = "biodc-test-secret";
const BUCKET: &str = "lab";

/// The server, started once for this test binary: (address, the folder it serves).
fn server() -> &'static (SocketAddr, tempfile::TempDir) {
    static SERVER: OnceLock<(SocketAddr, tempfile::TempDir)> = OnceLock::new();
    SERVER.get_or_init(|| {
        let root = tempfile::tempdir().unwrap();
        let addr = common::s3::start(root.path(), BUCKET, KEY, SECRET);
        // The variables biodc reads, as a lab would export them for MinIO or Ceph.
        std::env::set_var("AWS_ENDPOINT_URL", format!("http://{addr}"));
        std::env::set_var("AWS_ACCESS_KEY_ID", KEY);
        std::env::set_var("AWS_SECRET_ACCESS_KEY", SECRET);
        std::env::set_var("AWS_REGION", "us-east-1");
        std::env::set_var("AWS_ALLOW_HTTP", "true");
        (addr, root)
    })
}

/// A small project with a set annotated.
fn project() -> (tempfile::TempDir, std::path::PathBuf) {
    let (tmp, project, _) = small_annotated_project(5, [1, 6]);
    (tmp, project)
}

#[test]
fn push_and_clone_through_s3_match_and_a_second_push_sends_nothing() {
    server();
    let (tmp, project) = project();
    let url = format!("s3://{BUCKET}/vessels-a");
    ok(&project, &["remote", "add", "origin", &url]);
    let listed = ok(&project, &["remote", "list"]);
    assert!(
        !listed.contains(SECRET) && !listed.contains(KEY),
        "{listed}"
    );
    let remotes_file = std::fs::read_to_string(project.join(".biodc/remotes.toml")).unwrap();
    assert!(!remotes_file.contains(SECRET) && !remotes_file.contains(KEY));

    let first = json(&project, &["push", "--json"]);
    let local = object_names(&project.join(".biodc/objects"));
    assert_eq!(
        first["objects_sent"].as_u64().unwrap() as usize,
        local.len()
    );
    assert_eq!(remote_object_names(&url, tmp.path()), local);
    ok(tmp.path(), &["clone", &url, "copy"]);
    let copy = tmp.path().join("copy");
    assert_eq!(object_names(&copy.join(".biodc/objects")), local);
    assert_eq!(
        json(&copy, &["log", "--json"]),
        json(&project, &["log", "--json"])
    );
    let f = json(&copy, &["fsck", "--json"]);
    assert_eq!(f["corrupt"], serde_json::json!([]));
    assert_eq!(f["missing"], serde_json::json!([]));
    assert_eq!(json(&project, &["push", "--json"])["up_to_date"], true);

    // A history-only clone reads the tiles export needs from the bucket, and only those.
    ok(tmp.path(), &["clone", "--no-data", &url, "light"]);
    let light = tmp.path().join("light");
    assert!(object_names(&light.join(".biodc/objects")).is_empty());
    ok(&light, &["export", "--set", "coreset", "--to", "out"]);
    assert_eq!(object_names(&light.join(".biodc/objects")).len(), 2);
}

#[test]
fn the_branch_entry_is_created_only_once_on_s3() {
    server();
    let dir = tempfile::tempdir().unwrap();
    let b = biodc::remote::open(&format!("s3://{BUCKET}/cas"), dir.path(), true).unwrap();
    use biodc::remote::Created;
    assert_eq!(
        b.create("refs/heads/main/1", b"a".to_vec()).unwrap(),
        Created::Yes
    );
    assert_eq!(
        b.create("refs/heads/main/1", b"b".to_vec()).unwrap(),
        Created::AlreadyThere
    );
    assert_eq!(b.get("refs/heads/main/1").unwrap().unwrap(), b"a");
}

#[test]
fn wrong_credentials_a_missing_bucket_and_no_server_are_one_line_each() {
    let (addr, _) = server();
    let (tmp, project) = project();
    let one_line = |args: &[&str], envs: &[(&str, String)]| -> String {
        let mut cmd = biodc(&project);
        cmd.args(args);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        assert!(!out.status.success(), "{args:?} should fail");
        let e = String::from_utf8_lossy(&out.stderr).trim().to_string();
        eprintln!("{args:?}: {e}");
        assert!(e.lines().count() <= 2, "{e}");
        e
    };
    ok(
        &project,
        &["remote", "add", "origin", &format!("s3://{BUCKET}/x")],
    );
    ok(
        &project,
        &["remote", "add", "nobucket", "s3://no-such-bucket/x"],
    );
    let e = one_line(&["push"], &[("AWS_SECRET_ACCESS_KEY", "wrong".into())]);
    assert!(e.contains("access denied"), "{e}");
    assert!(!e.contains("wrong"), "the secret is not echoed: {e}");
    let e = one_line(&["push", "nobucket"], &[]);
    assert!(
        e.contains("no-such-bucket") && e.contains("bucket does not exist"),
        "{e}"
    );
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let started = std::time::Instant::now();
    let e = one_line(
        &["push"],
        &[("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}"))],
    );
    assert!(
        started.elapsed().as_secs() < 30,
        "took {:?}",
        started.elapsed()
    );
    assert!(e.contains("cannot reach"), "{e}");
    let _ = (addr, tmp);
}

#[test]
fn a_push_to_s3_killed_midway_leaves_no_branch_and_resumes_without_resending() {
    server();
    let (tmp, project) = project();
    let total = object_names(&project.join(".biodc/objects")).len();
    for (i, point) in ["push:pack:2", "push:before-ref"].iter().enumerate() {
        let url = format!("s3://{BUCKET}/killed-{i}");
        let name = format!("k{i}");
        ok(&project, &["remote", "add", &name, &url]);
        let out = biodc(&project)
            .args(["push", &name, "-j", "2", "--pack-size", "4k"])
            .env("BIODC_FAILPOINT", point)
            .output()
            .unwrap();
        assert!(
            !out.status.success(),
            "{point}: the push should have been killed"
        );
        let remote = biodc::remote::open(&url, tmp.path(), false).unwrap();
        assert!(
            remote.list("refs").unwrap().is_empty(),
            "{point}: no branch yet"
        );
        let there = remote_object_names(&url, tmp.path()).len();
        if point.starts_with("push:pack") {
            assert!(there < total, "{point}: {there} of {total} arrived");
        }
        let rerun = json(&project, &["push", &name, "--json"]);
        assert_eq!(
            rerun["objects_sent"].as_u64().unwrap() as usize,
            total - there,
            "{point}"
        );
        assert_eq!(remote.list("refs").unwrap().len(), 1);
    }
}

/// Pushes `project` to a new remote `name` on `endpoint` (None: the shared server), given to
/// this run only since the other tests share the process's variables: the `--json` report and
/// what the push printed on stderr.
fn push_to(
    project: &std::path::Path,
    name: &str,
    endpoint: Option<SocketAddr>,
) -> (serde_json::Value, String) {
    ok(
        project,
        &["remote", "add", name, &format!("s3://{BUCKET}/{name}")],
    );
    let mut cmd = biodc(project);
    cmd.args(["push", name, "--json"]);
    if let Some(addr) = endpoint {
        cmd.env("AWS_ENDPOINT_URL", format!("http://{addr}"));
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{out:?}");
    (
        serde_json::from_slice(&out.stdout).unwrap(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Files under `root` (a server's folder) whose path names `probes`.
fn probe_files(root: &std::path::Path) -> usize {
    walkdir::WalkDir::new(root)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file() && e.path().to_string_lossy().contains("probes"))
        .count()
}

#[test]
fn a_server_that_ignores_conditional_writes_is_found_out_and_the_push_warns() {
    server();
    let (_tmp, project) = project();
    let odd = tempfile::tempdir().unwrap();
    let quirks = common::s3::Quirks {
        ignores_conditions: true,
        ..Default::default()
    };
    let addr = common::s3::start_with(odd.path(), BUCKET, KEY, SECRET, quirks);
    let (report, e) = push_to(&project, "odd", Some(addr));
    assert_eq!(report["branch_move_atomic"], false);
    assert!(e.contains("ignores conditional writes"), "{e}");
    assert_eq!(probe_files(odd.path()), 0, "the probe left nothing behind");

    // The same push to the server that honours them moves the branch atomically, quietly.
    let (report, e) = push_to(&project, "good", None);
    assert_eq!(report["branch_move_atomic"], true);
    assert!(!e.contains("warning"), "{e}");
}

#[test]
fn a_bucket_that_refuses_deletes_still_takes_a_push() {
    server();
    let (tmp, project) = project();
    let root = tempfile::tempdir().unwrap();
    let quirks = common::s3::Quirks {
        refuses_deletes: true,
        ..Default::default()
    };
    let addr = common::s3::start_with(root.path(), BUCKET, KEY, SECRET, quirks);
    let (report, _) = push_to(&project, "keep", Some(addr));
    assert_eq!(report["branch_move_atomic"], true);
    assert_eq!(
        probe_files(root.path()),
        1,
        "the probe's key stays, one byte"
    );
    // A clone is not disturbed by it.
    let out = biodc(tmp.path())
        .args(["clone", &format!("s3://{BUCKET}/keep"), "copy"])
        .env("AWS_ENDPOINT_URL", format!("http://{addr}"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        object_names(&tmp.path().join("copy/.biodc/objects")),
        object_names(&project.join(".biodc/objects"))
    );
}

//! Push and clone of a cohort to a folder and to S3 servers on 127.0.0.1 (s3s-fs in this
//! process; moto, a Python S3 server, with --moto; Garage, a production S3 server in Rust, with
//! --garage), beside DVC's `push` and `pull` of the same images to the same places; and a
//! history-only clone of a repository of ~90,000 patches.
//! (DVC's pull fails on s3s-fs: its HEAD of a key that is a folder there gets a 500.)
//!
//! ```sh
//! python3 -m venv /tmp/dvcenv && /tmp/dvcenv/bin/pip install dvc dvc-s3   # once, optional
//! python3 -m venv /tmp/motoenv && /tmp/motoenv/bin/pip install "moto[server]"   # optional
//! cargo install garage --version 2.5.0 --locked --root /tmp/garage   # optional
//! cargo bench --bench remote -- [--stacks 70] [--dvc /tmp/dvcenv/bin/dvc] \
//!     [--moto /tmp/motoenv/bin/moto_server] [--garage /tmp/garage/bin/garage] [-j 8] \
//!     [--out r.json] [--images DIR --patch 96] [--dvc-first]
//! ```
//!
//! The cohort is `--stacks` synthetic stacks of 7×1024×1024 u16 (70 ≈ 1 GiB of TIFFs), or the
//! TIFFs in `--images DIR` (benches/nellie_cohort.py writes >= 1 GiB of real ones). Rates
//! are cohort megabytes (the TIFFs' size) per second, for both tools, so they compare work done
//! for the user whatever each stores.

use biodc::repo::{Config, Repo};
use biodc::stages::{self, import};
use biodc::synth::{write_cohort, SynthParams};
use biodc::transfer::{self, CloneData, PushParams};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

const KEY: &str = "bench-key";
// Garage wants a secret of at least 16 characters.
const SECRET: &str = "bench-secret-0123456789";
const BUCKET: &str = "bench";

#[path = "../tests/common/s3.rs"]
mod s3;

fn dir_bytes(dir: &Path) -> u64 {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
        .sum()
}

/// Copies the TIFFs directly in `from` to `to`.
fn copy_tiffs(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "tif" || x == "tiff") {
            std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
        }
    }
}

/// The least number of bits per pixel any lossless coding of the synthetic cohort in `images`
/// can average: the entropy of the noise the generator adds, Gaussian of variance (level +
/// read noise²) (src/synth/render.rs), which no coder can predict even knowing the noiseless
/// image. The level is taken as the pixel's value (the noise is small beside it).
fn noise_entropy_bits(images: &Path) -> f64 {
    let (mut bits, mut pixels) = (0.0, 0u64);
    for condition in std::fs::read_dir(images).unwrap() {
        let dir = condition.unwrap().path();
        let c: usize = dir.file_name().unwrap().to_str().unwrap()[1..]
            .parse()
            .unwrap();
        let read2 = f64::from(biodc::synth::STYLES[c].read_noise).powi(2);
        let per_level: Vec<f64> = (0..=u16::MAX)
            .map(|v| {
                0.5 * (std::f64::consts::TAU * std::f64::consts::E * (f64::from(v) + read2)).log2()
            })
            .collect();
        for f in std::fs::read_dir(&dir).unwrap() {
            let stack = biodc::io::tiff::read_stack(&f.unwrap().path()).unwrap();
            for plane in &stack.planes {
                let biodc::io::Plane::U16(p) = plane else {
                    panic!("the synthetic cohort is u16")
                };
                bits += p.iter().map(|&v| per_level[usize::from(v)]).sum::<f64>();
                pixels += p.len() as u64;
            }
        }
    }
    bits / pixels as f64
}

/// Times `f`, after writing out what earlier steps left in the page cache: otherwise a step pays
/// for the previous one's writes (measured: a folder push 1.7 s in one run, 3.3 s in the next).
fn timed<T>(f: impl FnOnce() -> T) -> (T, f64) {
    unsafe { libc::sync() };
    let t = Instant::now();
    let r = f();
    (r, t.elapsed().as_secs_f64())
}

fn project(root: &Path, images: &Path, patch: usize) -> Repo {
    std::fs::create_dir_all(root).unwrap();
    let repo = Repo::init(
        root,
        Config {
            patch_size: patch,
            ..Config::default()
        },
    )
    .unwrap();
    let p = import::ImportParams {
        paths: vec![images.to_path_buf()],
        condition: None,
        condition_from_dir: false,
        voxel_size: None,
        patch: None,
        replace: false,
    };
    stages::run(&repo, |r, h, v| import::import(r, h, v, &p)).unwrap();
    repo
}

/// Runs `cmd`: its standard output, or the command and the first line it printed on stderr.
fn output_of(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let e = String::from_utf8_lossy(&out.stderr);
        Err(format!("{cmd:?}: {}", e.lines().next().unwrap_or_default()))
    }
}

fn dvc(bin: &str, dir: &Path, args: &[&str]) -> Result<(), String> {
    output_of(Command::new(bin).current_dir(dir).args(args)).map(drop)
}

/// Runs the garage CLI against the server of `config`; its standard output.
fn garage(bin: &str, config: &Path, args: &[&str]) -> String {
    output_of(Command::new(bin).arg("-c").arg(config).args(args)).unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits up to 10 s for `server` to listen on `addr`.
fn wait_for(addr: std::net::SocketAddr, server: &str) {
    for _ in 0..100 {
        if std::net::TcpStream::connect(addr).is_ok() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("{server} did not start on {addr}");
}

/// A moto S3 server (PyPI `moto[server]`) on 127.0.0.1 with the bucket made.
fn start_moto(bin: &str) -> (std::process::Child, std::net::SocketAddr) {
    let port = free_port();
    let child = Command::new(bin)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_for(addr, "moto_server");
    // moto checks no signature: a bare PUT makes the bucket.
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    write!(
        c,
        "PUT /{BUCKET} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut reply = String::new();
    let _ = c.read_to_string(&mut reply);
    assert!(reply.starts_with("HTTP/1.1 200"), "moto: {reply}");
    (child, addr)
}

/// A one-node Garage server (crates.io `garage`, its defaults but one replica) serving `dir` on
/// 127.0.0.1, with the bench's key imported and the bucket made.
fn start_garage(bin: &str, dir: &Path) -> (std::process::Child, std::net::SocketAddr) {
    std::fs::create_dir_all(dir).unwrap();
    let (rpc, s3) = (free_port(), free_port());
    let config = dir.join("garage.toml");
    let d = dir.display();
    std::fs::write(
        &config,
        format!(
            "metadata_dir = \"{d}/meta\"\ndata_dir = \"{d}/data\"\ndb_engine = \"lmdb\"\n\
             replication_factor = 1\nrpc_bind_addr = \"127.0.0.1:{rpc}\"\n\
             rpc_public_addr = \"127.0.0.1:{rpc}\"\nrpc_secret = \"{}\"\n\
             [s3_api]\ns3_region = \"us-east-1\"\napi_bind_addr = \"127.0.0.1:{s3}\"\n",
            "0123456789abcdef".repeat(4)
        ),
    )
    .unwrap();
    let child = Command::new(bin)
        .arg("-c")
        .arg(&config)
        .arg("server")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.join("server.log")).unwrap())
        .spawn()
        .unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{s3}").parse().unwrap();
    wait_for(addr, "garage");
    let node = garage(bin, &config, &["node", "id", "-q"]);
    let node = node.trim().split('@').next().unwrap().to_string();
    garage(
        bin,
        &config,
        &["layout", "assign", "-z", "dc1", "-c", "100G", &node],
    );
    garage(bin, &config, &["layout", "apply", "--version", "1"]);
    garage(
        bin,
        &config,
        &["key", "import", "--yes", "-n", "bench", KEY, SECRET],
    );
    garage(bin, &config, &["bucket", "create", BUCKET]);
    garage(
        bin,
        &config,
        &[
            "bucket", "allow", "--read", "--write", "--owner", BUCKET, "--key", KEY,
        ],
    );
    (child, addr)
}

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    // As `biodc push` and `clone` run (src/main.rs): with the system allocator every 32 MiB
    // pack buffer is a fresh mapping, faulted in again.
    biodc::allocator::configure();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .map(|i| args[i + 1].clone())
    };
    let stacks: usize = arg("--stacks").map_or(70, |s| s.parse().unwrap());
    let jobs: usize = arg("-j").map_or(8, |s| s.parse().unwrap());
    let dvc_bin = arg("--dvc");
    let tmp = tempfile::tempdir_in(arg("--tmp").unwrap_or_else(|| "/tmp".into())).unwrap();
    let t = tmp.path();
    let addr = s3::start(&t.join("s3"), BUCKET, KEY, SECRET);
    std::env::set_var("AWS_ENDPOINT_URL", format!("http://{addr}"));
    std::env::set_var("AWS_ACCESS_KEY_ID", KEY);
    std::env::set_var("AWS_SECRET_ACCESS_KEY", SECRET);
    std::env::set_var("AWS_REGION", "us-east-1");
    std::env::set_var("AWS_ALLOW_HTTP", "true");

    let cohort = t.join("cohort");
    let images = cohort.join("images");
    let patch: usize = arg("--patch").map_or(224, |s| s.parse().unwrap());
    let mut noise_bits = None;
    match arg("--images") {
        // Copied: DVC's steps move the folder into its workspace.
        Some(dir) => copy_tiffs(Path::new(&dir), &images),
        None => {
            eprintln!("writing {stacks} stacks of 7×1024×1024 …");
            write_cohort(
                &cohort,
                &SynthParams {
                    stacks,
                    shape: [7, 1024, 1024],
                    seed: 0,
                    defects: false,
                },
            )
            .unwrap();
            let bits = noise_entropy_bits(&images);
            eprintln!(
                "noise entropy: {bits:.2} bits per pixel: no lossless store holds these 16-bit \
                 stacks in fewer than {:.0} % of their bytes",
                100.0 * bits / 16.0
            );
            noise_bits = Some(bits);
        }
    }
    let mb = dir_bytes(&images) as f64 / 1e6;
    let files = std::fs::read_dir(&images).unwrap().count();
    eprintln!("cohort: {files} files, {mb:.0} MB; importing …");
    let repo = project(&t.join("project"), &images, patch);
    let store_mb = dir_bytes(&t.join("project/.biodc/objects")) as f64 / 1e6;
    eprintln!("biodc's store: {store_mb:.0} MB");
    let mut rows = Vec::new();
    let mut row = |tool: &str, target: &str, op: &str, seconds: f64| {
        let r = json!({"tool": tool, "remote": target, "op": op, "seconds": seconds,
            "cohort_mb_per_s": mb / seconds});
        println!("{r}");
        rows.push(r);
    };
    let mut servers = vec![("s3s-fs", addr)];
    let mut children = Vec::new();
    if let Some(bin) = arg("--moto") {
        let (child, maddr) = start_moto(&bin);
        servers.push(("moto", maddr));
        children.push(child);
    }
    if let Some(bin) = arg("--garage") {
        let (child, gaddr) = start_garage(&bin, &t.join("garage"));
        servers.push(("garage", gaddr));
        children.push(child);
    }
    let endpoint =
        |a: std::net::SocketAddr| std::env::set_var("AWS_ENDPOINT_URL", format!("http://{a}"));
    let mut targets = vec![(
        "folder".to_string(),
        t.join("remote-folder").to_string_lossy().into_owned(),
        None,
    )];
    for (name, a) in &servers {
        targets.push((
            format!("s3 ({name})"),
            format!("s3://{BUCKET}/biodc"),
            Some(*a),
        ));
    }
    // Who goes first onto each fresh server matters on this VM (the first to fill a server's
    // memory pays for the kernel handing it out): `--dvc-first` swaps the order.
    let order = if args.iter().any(|a| a == "--dvc-first") {
        ["dvc", "biodc"]
    } else {
        ["biodc", "dvc"]
    };
    for tool in order {
        if tool == "biodc" {
            for (i, (kind, url, server)) in targets.iter().enumerate() {
                if let Some(a) = server {
                    endpoint(*a);
                }
                let name = format!("r{i}");
                let mut r = biodc::remote::Remotes::load(repo.dot()).unwrap();
                r.remotes.insert(
                    name.clone(),
                    biodc::remote::RemoteEntry { url: url.clone() },
                );
                r.save(repo.dot()).unwrap();
                let (pushed, s) = timed(|| {
                    transfer::push(
                        &repo,
                        &PushParams {
                            remote: name.clone(),
                            branch: None,
                            jobs,
                            pack_bytes: biodc::remote::pack::DEFAULT_PACK_BYTES,
                        },
                    )
                    .unwrap()
                });
                row("biodc", kind, "push", s);
                eprintln!(
                    "{kind}: refuses a second create (If-None-Match): {:?}",
                    pushed.branch_move_atomic
                );
                let dest = t.join(format!("clone-{i}"));
                let (_, s) = timed(|| transfer::clone(url, &dest, &CloneData::All, jobs).unwrap());
                row("biodc", kind, "clone", s);
                std::fs::remove_dir_all(&dest).unwrap();
            }
        } else if let Some(bin) = &dvc_bin {
            let ws = t.join("dvc-ws");
            std::fs::create_dir_all(&ws).unwrap();
            std::fs::rename(&images, ws.join("images")).unwrap();
            dvc(bin, &ws, &["init", "--no-scm", "-q"]).unwrap();
            let (_, add_s) = timed(|| dvc(bin, &ws, &["add", "-q", "images"]).unwrap());
            eprintln!("dvc add: {add_s:.1} s (not compared: biodc's import does more)");
            for (i, (kind, _, server)) in targets.iter().enumerate() {
                let name = format!("r{i}");
                let url = if server.is_some() {
                    format!("s3://{BUCKET}/dvc")
                } else {
                    t.join("dvc-folder").to_string_lossy().into_owned()
                };
                dvc(bin, &ws, &["remote", "add", "-f", &name, &url]).unwrap();
                if let Some(a) = server {
                    endpoint(*a);
                    dvc(
                        bin,
                        &ws,
                        &[
                            "remote",
                            "modify",
                            &name,
                            "endpointurl",
                            &format!("http://{a}"),
                        ],
                    )
                    .unwrap();
                }
                let j = jobs.to_string();
                let (pushed, s) = timed(|| dvc(bin, &ws, &["push", "-q", "-r", &name, "-j", &j]));
                match pushed {
                    Ok(()) => row("dvc", kind, "push", s),
                    Err(e) => eprintln!("{kind}: {e}"),
                }
                // A fresh workspace with the same .dvc files and config, no cache, no images.
                let fresh = t.join(format!("dvc-pull-{i}"));
                std::fs::create_dir_all(fresh.join(".dvc")).unwrap();
                std::fs::copy(ws.join("images.dvc"), fresh.join("images.dvc")).unwrap();
                std::fs::copy(ws.join(".dvc/config"), fresh.join(".dvc/config")).unwrap();
                let (pulled, s) =
                    timed(|| dvc(bin, &fresh, &["pull", "-q", "-r", &name, "-j", &j]));
                match pulled {
                    Ok(()) => {
                        assert_eq!(dir_bytes(&fresh.join("images")) as f64 / 1e6, mb);
                        row("dvc", kind, "pull", s);
                    }
                    Err(e) => eprintln!("{kind}: {e}"),
                }
                std::fs::remove_dir_all(&fresh).unwrap();
            }
        }
    }
    endpoint(addr);

    // History only, of a repository with ~90,000 patches (32 stacks of 7×640×640 in 32² tiles).
    eprintln!("90,000-patch repository …");
    let many = t.join("many");
    write_cohort(
        &many,
        &SynthParams {
            stacks: 32,
            shape: [7, 640, 640],
            seed: 1,
            defects: false,
        },
    )
    .unwrap();
    let big = project(&t.join("many-project"), &many.join("images"), 32);
    let (_, v) = big.version(None).unwrap();
    let patches = v.all_patches().count();
    let mut r = biodc::remote::Remotes::load(big.dot()).unwrap();
    r.remotes.insert(
        "origin".into(),
        biodc::remote::RemoteEntry {
            url: format!("s3://{BUCKET}/many"),
        },
    );
    r.save(big.dot()).unwrap();
    transfer::push(
        &big,
        &PushParams {
            remote: "origin".into(),
            branch: None,
            jobs,
            pack_bytes: biodc::remote::pack::DEFAULT_PACK_BYTES,
        },
    )
    .unwrap();
    let dest = t.join("many-clone");
    let (c, s) = timed(|| {
        transfer::clone(
            &format!("s3://{BUCKET}/many"),
            &dest,
            &CloneData::None,
            jobs,
        )
        .unwrap()
    });
    let r = json!({"tool": "biodc", "remote": "s3", "op": "clone --no-data", "patches": patches,
        "seconds": s, "git_bytes": c.fetch.bytes_received});
    println!("{r}");
    rows.push(r);
    let summary = json!({"order": order, "cohort_mb": mb, "store_mb": store_mb, "images": arg("--images"),
        "noise_entropy_bits_per_pixel": noise_bits,
        "stacks": files, "patch": patch, "jobs": jobs,
        "rows": rows});
    for mut c in children {
        let _ = c.kill();
        let _ = c.wait();
    }
    if let Some(out) = arg("--out") {
        std::fs::write(
            PathBuf::from(out),
            serde_json::to_string_pretty(&summary).unwrap(),
        )
        .unwrap();
    }
}

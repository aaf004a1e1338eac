//! Real consumers of what biodc exports: napari-ome-zarr's reader plugin (headless) and the
//! `ome-zarr` package's reader open `export --ome-zarr` (NGFF 0.5 and 0.4) with its label
//! images, and
//! bioimageio.core's model test passes on `export --bioimageio` (onnxruntime reproducing
//! biodc's test output). They run in the Python that `BIODC_CONSUMER_PYTHON` names, which
//! `.ci/run` installs from PyPI; without it the test says so and checks nothing else.

mod common;

use common::*;
use std::path::{Path, PathBuf};

fn consumer_python() -> Option<PathBuf> {
    let p = std::env::var_os("BIODC_CONSUMER_PYTHON")?;
    Some(PathBuf::from(p))
}

fn run_python(python: &Path, script: &str, arg: &Path) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/consumers")
        .join(script);
    let out = std::process::Command::new(python)
        .arg(&script)
        .arg(arg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{} {}:\n{}\n{}",
        script.display(),
        arg.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{}", String::from_utf8_lossy(&out.stdout).trim_end());
}

#[test]
fn napari_s_reader_and_bioimageio_core_accept_biodc_s_exports() {
    let Some(python) = consumer_python() else {
        eprintln!(
            "skipped: BIODC_CONSUMER_PYTHON is not set (.ci/run sets it to a Python with \
             ome-zarr, napari-ome-zarr, bioimageio.core and onnxruntime from PyPI)"
        );
        return;
    };
    let (tmp, project, _) = small_annotated_project(4, [0, 5]);
    ok(
        &project,
        &[
            "train",
            "--name",
            "M0",
            "--max-steps",
            "30",
            "--batch",
            "2",
            "--seed",
            "1",
        ],
    );
    for ngff in ["0.5", "0.4"] {
        let out = tmp.path().join(format!("zarr-{ngff}"));
        let listing = ok(
            &project,
            &[
                "export",
                "--ome-zarr",
                "--ngff",
                ngff,
                "--with-prediction",
                "M0",
                "--to",
                out.to_str().unwrap(),
                "--json",
            ],
        );
        let file = tmp.path().join(format!("zarr-{ngff}.json"));
        std::fs::write(&file, listing).unwrap();
        run_python(&python, "read_ome_zarr.py", &file);
    }
    let package = tmp.path().join("M0.bioimageio");
    ok(
        &project,
        &[
            "export",
            "--model",
            "M0",
            "--bioimageio",
            "--to",
            package.to_str().unwrap(),
        ],
    );
    run_python(&python, "test_bioimageio.py", &package.join("rdf.yaml"));
}

//! OME-Zarr in and out: a TIFF cohort exported as OME-Zarr (0.5 and 0.4) imports again as the
//! same tiles; images written by the Python `ome-zarr` package (fixtures) import with their
//! pixels and voxel size; annotations and predictions come out as label images; a
//! two-channel image is refused with the reason.

mod common;

use biodc::io::ome_zarr::OmeZarrReader;
use biodc::io::Plane;
use biodc::version::DatasetVersion;
use common::*;
use std::path::Path;

fn version(dir: &Path) -> DatasetVersion {
    let repo = biodc::repo::Repo::discover(dir).unwrap();
    repo.version(None).unwrap().1
}

#[test]
fn a_tiff_cohort_round_trips_through_ome_zarr_as_the_same_tiles() {
    let (tmp, project, cohort) = project_with(Cohort {
        stacks: 3,
        shape: "2,200,150",
        seed: 5,
        patch: 64,
        defects: true,
    });
    ok(
        &project,
        &[
            "import",
            cohort.join("images").to_str().unwrap(),
            "--voxel-size",
            "2,0.1,0.1",
        ],
    );
    let original = version(&project);
    for ngff in ["0.5", "0.4"] {
        let out = tmp.path().join(format!("zarr-{ngff}"));
        let done = json(
            &project,
            &[
                "export",
                "--ome-zarr",
                "--ngff",
                ngff,
                "--to",
                out.to_str().unwrap(),
                "--json",
            ],
        );
        assert_eq!(done.as_array().unwrap().len(), 3, "{done}");
        let again = tmp.path().join(format!("again-{ngff}"));
        std::fs::create_dir_all(&again).unwrap();
        ok(&again, &["init", "--patch", "64"]);
        // Found in a folder as TIFFs are.
        ok(&again, &["import", out.to_str().unwrap()]);
        let v = version(&again);
        assert_eq!(v.patches, original.patches, "NGFF {ngff}: same tiles");
        for (name, s) in &original.stacks {
            let t = &v.stacks[name];
            assert_eq!(
                (t.shape, t.dtype, t.voxel_size),
                (s.shape, s.dtype, s.voxel_size),
                "NGFF {ngff}: stack {name}"
            );
        }
        // Exporting again refuses to overwrite, and replaces with --force.
        let e = biodc(&project)
            .args(["export", "--ome-zarr", "--ngff", ngff, "--to"])
            .arg(&out)
            .output()
            .unwrap();
        assert!(!e.status.success());
        assert!(String::from_utf8_lossy(&e.stderr).contains("--force"));
        ok(
            &project,
            &[
                "export",
                "--ome-zarr",
                "--ngff",
                ngff,
                "--force",
                "--to",
                out.to_str().unwrap(),
            ],
        );
    }
}

/// The pixels of `stack`'s patches, exported as TIFFs, match value = 1000 z + 10 y + x.
fn assert_fixture_pixels(project: &Path, scratch: &Path) {
    ok(
        project,
        &["export", "--set", "all", "--to", scratch.to_str().unwrap()],
    );
    let v = version(project);
    let mut checked = 0;
    for (stack, p) in v.all_patches() {
        let file = scratch.join(format!("{}.tif", p.id));
        let s = biodc::io::tiff::read_stack(&file).unwrap();
        let Plane::U16(px) = &s.planes[0] else {
            panic!("{}: not 16-bit", file.display())
        };
        let t = stack.tile;
        for r in 0..t {
            for c in 0..t {
                let want = 1000 * p.z + 10 * (p.y + r) + p.x + c;
                assert_eq!(px[r * t + c] as usize, want, "{} ({r}, {c})", p.id);
            }
        }
        checked += 1;
    }
    assert_eq!(checked, 3 * 2 * 2);
}

#[test]
fn ome_zarr_written_by_python_imports_with_its_pixels_and_voxel_size() {
    for (name, voxel) in [
        ("py04", [2.0, 0.25, 0.25]),
        ("py05", [1.5, 0.1, 0.1]),
        ("py05_gzip_sharded", [1.5, 0.1, 0.1]),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let project = tmp.path().join("p");
        std::fs::create_dir_all(&project).unwrap();
        ok(&project, &["init", "--patch", "32"]);
        let image = fixture(&format!("ome-zarr/{name}.ome.zarr"));
        ok(&project, &["import", image.to_str().unwrap()]);
        let v = version(&project);
        let s = &v.stacks[name];
        assert_eq!(s.shape, [3, 64, 48], "{name}");
        assert_eq!(s.voxel_size, Some(voxel), "{name}: units honoured");
        assert_fixture_pixels(&project, &tmp.path().join("patches"));
    }
}

#[test]
fn a_two_channel_ome_zarr_is_refused_saying_why() {
    let tmp = tempfile::tempdir().unwrap();
    ok(tmp.path(), &["init"]);
    let out = biodc(tmp.path())
        .arg("import")
        .arg(fixture("ome-zarr-bad/two-channels.ome.zarr"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("two-channels.ome.zarr")
            && e.contains("2 channels")
            && e.contains("nothing was written"),
        "{e}"
    );
}

#[test]
fn annotations_and_predictions_are_label_images() {
    let (tmp, project, ids) = small_annotated_project(2, [0, 3]);
    ok(
        &project,
        &[
            "train",
            "--name",
            "M0",
            "--max-steps",
            "2",
            "--batch",
            "2",
            "--seed",
            "1",
        ],
    );
    let out = tmp.path().join("zarr");
    let done = json(
        &project,
        &[
            "export",
            "--ome-zarr",
            "--with-prediction",
            "M0",
            "--to",
            out.to_str().unwrap(),
            "--json",
        ],
    );
    let v = version(&project);
    let repo = biodc::repo::Repo::discover(&project).unwrap();
    let masks = v.current_masks();
    for d in done.as_array().unwrap() {
        let stack = d["stack"].as_str().unwrap();
        let path = Path::new(d["path"].as_str().unwrap());
        // The image and the prediction have the stack's shape.
        let image = OmeZarrReader::open_with_voxel_size(path, None).unwrap();
        let shape = v.stacks[stack].shape;
        assert_eq!(image.info().shape, shape);
        let predicted = OmeZarrReader::open_with_voxel_size(&path.join("labels/M0"), None).unwrap();
        assert_eq!(predicted.info().shape, shape);
        let annotated: Vec<&String> = ids
            .iter()
            .filter(|id| id.starts_with(&format!("{stack}-")) && masks.contains_key(id.as_str()))
            .collect();
        let labels: Vec<&str> = d["labels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l.as_str().unwrap())
            .collect();
        if annotated.is_empty() {
            assert_eq!(labels, ["M0"], "{d}");
            continue;
        }
        assert_eq!(labels, ["annotations", "M0"], "{d}");
        // Each annotated patch's mask is where the patch is.
        let mut label =
            OmeZarrReader::open_with_voxel_size(&path.join("labels/annotations"), None).unwrap();
        let Plane::U8(plane) = label.read_plane(0).unwrap() else {
            panic!("labels are 8-bit")
        };
        for id in annotated {
            let (_, p) = v.patch(id).unwrap();
            let mask = repo.store.get(&masks[id.as_str()].mask).unwrap();
            let t = v.stacks[stack].tile;
            for r in 0..t {
                let row = (p.y + r) * shape[2] + p.x;
                assert_eq!(&plane[row..row + t], &mask[r * t..(r + 1) * t], "{id}");
            }
        }
    }
}

//! Masks as annotation tools save them: instance label images (napari, Fiji, Cellpose's
//! `_cp_masks`/`_masks` names), a CVAT "Segmentation mask" export, and masks of whole stacks cut
//! into their patches; wrong ones are all reported and nothing is imported.

mod common;

use biodc::io::{png, tiff::write_stack, Plane, Stack, StackInfo};
use biodc::repo::Repo;
use biodc::version::DatasetVersion;
use common::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Two synthetic stacks of `shape` in 64² patches, imported: (tmp, project, version).
fn project(shape: &str) -> (tempfile::TempDir, PathBuf, DatasetVersion) {
    let (tmp, project, cohort) = project_with(Cohort {
        stacks: 2,
        shape,
        seed: 11,
        patch: 64,
        defects: false,
    });
    import_cohort(&project, &cohort);
    let v = Repo::discover(&project).unwrap().version(None).unwrap().1;
    (tmp, project, v)
}

/// `biodc annotate DIR --round core EXTRA… --json`, succeeding.
fn annotate_core(project: &Path, dir: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["annotate", dir.to_str().unwrap(), "--round", "core"];
    args.extend_from_slice(extra);
    args.push("--json");
    json(project, &args)
}

/// Writes a one-page or multi-page TIFF of `planes` (Y×X each).
fn tiff(path: &Path, h: usize, w: usize, planes: Vec<Plane>) {
    let stack = Stack {
        info: StackInfo {
            shape: [planes.len(), h, w],
            dtype: planes[0].dtype(),
            voxel_size: None,
        },
        planes,
    };
    write_stack(path, &stack).unwrap();
}

/// The current mask of each annotated patch at HEAD, as stored (0/1 bytes).
fn stored_masks(project: &Path) -> BTreeMap<String, Vec<u8>> {
    let repo = Repo::discover(project).unwrap();
    let (_, v) = repo.version(None).unwrap();
    v.current_masks()
        .into_iter()
        .map(|(id, a)| (id.to_string(), repo.store.get(&a.mask).unwrap()))
        .collect()
}

/// Runs `annotate` expecting failure: its stderr, after checking nothing was imported.
fn fails(project: &Path, args: &[&str]) -> String {
    let (head0, objects0) = (head(project), object_files(project));
    let out = biodc(project).arg("annotate").args(args).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{args:?} should fail");
    assert_eq!(head(project), head0, "{args:?} committed");
    assert_eq!(object_files(project), objects0, "{args:?} left objects");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn contains_all(text: &str, needles: &[&str]) {
    for n in needles {
        assert!(text.contains(n), "missing {n:?} in:\n{text}");
    }
}

/// An instance label image of a 64² patch: cell `k` (1..=5) is the square at (10k, 10k) of side
/// 6, and label 300 a bar along the last row (Cellpose numbers cells past 255).
fn cells(i: usize) -> u16 {
    let (y, x) = (i / 64, i % 64);
    if y == 63 {
        return 300;
    }
    (1..=5)
        .find(|k| (10 * k..10 * k + 6).contains(&y) && (10 * k..10 * k + 6).contains(&x))
        .map_or(0, |k| k as u16)
}

#[test]
fn cellpose_labels_annotate_the_patch_they_name_as_binary_masks() {
    let (tmp, project, v) = project("1,128,128");
    let ids: Vec<String> = v.all_patches().map(|(_, p)| p.id.clone()).collect();
    let dir = tmp.path().join("cellpose");
    std::fs::create_dir_all(&dir).unwrap();
    let labels: Vec<u16> = (0..64 * 64).map(cells).collect();
    tiff(
        &dir.join(format!("{}_cp_masks.tif", ids[1])),
        64,
        64,
        vec![Plane::U16(labels.clone())],
    );
    // An 8-bit PNG named the other Cellpose way, labels 0..3 in vertical bands.
    let bands: Vec<u8> = (0..64 * 64).map(|i| ((i % 64) / 16) as u8).collect();
    png::write_gray8(&dir.join(format!("{}_masks.png", ids[6])), 64, 64, &bands).unwrap();

    let r = annotate_core(&project, &dir, &[]);
    assert_eq!(r["masks"], 2);
    assert_eq!(r["files"]["Cellpose labels"], 2);
    let masks = stored_masks(&project);
    assert_eq!(masks.keys().collect::<Vec<_>>(), vec![&ids[1], &ids[6]]);
    let expected: Vec<u8> = labels.iter().map(|&l| (l != 0) as u8).collect();
    assert_eq!(masks[&ids[1]], expected);
    assert_eq!(
        expected.iter().map(|&m| m as usize).sum::<usize>(),
        5 * 36 + 64
    );
    let expected: Vec<u8> = (0..64 * 64).map(|i| (i % 64 >= 16) as u8).collect();
    assert_eq!(masks[&ids[6]], expected);
    let record = Repo::discover(&project)
        .unwrap()
        .version(None)
        .unwrap()
        .1
        .stage
        .unwrap();
    assert_eq!(
        record.inputs[&format!("{}_cp_masks.tif", ids[1])],
        "Cellpose labels"
    );
}

#[test]
fn label_images_need_labels_and_then_any_non_zero_label_is_foreground() {
    let (tmp, project, v) = project("1,128,128");
    let id = v.all_patches().nth(2).unwrap().1.id.clone();
    let dir = tmp.path().join("napari");
    std::fs::create_dir_all(&dir).unwrap();
    let labels: Vec<u16> = (0..64 * 64).map(cells).collect();
    let file = dir.join(format!("{id}.tif"));
    tiff(&file, 64, 64, vec![Plane::U16(labels.clone())]);

    let err = fails(&project, &[dir.to_str().unwrap(), "--round", "core"]);
    contains_all(
        &err,
        &[
            &format!("{}: is not binary: holds 0, 1, 2, 3, …", file.display()),
            "--labels",
            "1 problem(s); nothing was imported",
        ],
    );

    let r = annotate_core(&project, &dir, &["--labels"]);
    assert_eq!(r["files"]["labels"], 1);
    let expected: Vec<u8> = labels.iter().map(|&l| (l != 0) as u8).collect();
    assert_eq!(stored_masks(&project)[&id], expected);
    let params = Repo::discover(&project)
        .unwrap()
        .version(None)
        .unwrap()
        .1
        .stage
        .unwrap()
        .params;
    assert_eq!(params["labels"], true);
    // The round reproduces from its record.
    let rep = json(&project, &["reproduce", "HEAD", "--json"]);
    assert_eq!(rep["identical"], true, "{rep}");
}

const LABELMAP: &str = "# label:color_rgb:parts:actions\nbackground:0,0,0::\nvessel:250,50,83::\n\
                        cell:36,179,83::\n";

#[test]
fn cvat_export_annotates_the_patches_with_the_class_colour() {
    let (tmp, project, v) = project("1,128,128");
    let ids: Vec<String> = v.all_patches().map(|(_, p)| p.id.clone()).collect();
    let cvat = tmp.path().join("cvat");
    std::fs::create_dir_all(cvat.join("SegmentationClass")).unwrap();
    std::fs::write(cvat.join("labelmap.txt"), LABELMAP).unwrap();
    // Patch 0: left third vessel, a middle band cell, the rest background. Stack 1 (one plane)
    // as a whole: vessel on the diagonals (y + x) % 5 == 0.
    let colour = |i: usize| match i % 64 {
        x if x < 20 => [250, 50, 83],
        x if x < 40 => [36, 179, 83],
        _ => [0, 0, 0],
    };
    let a: Vec<u8> = (0..64 * 64).flat_map(colour).collect();
    let diagonal = |y: usize, x: usize| (y + x).is_multiple_of(5);
    let b: Vec<u8> = (0..128 * 128)
        .flat_map(|i| {
            if diagonal(i / 128, i % 128) {
                [250, 50, 83]
            } else {
                [0, 0, 0]
            }
        })
        .collect();
    let seg = cvat.join("SegmentationClass");
    let stack1 = v.stacks.keys().nth(1).unwrap();
    png::write_rgb8(&seg.join(format!("{}.png", ids[0])), 64, 64, &a).unwrap();
    png::write_rgb8(&seg.join(format!("{stack1}.png")), 128, 128, &b).unwrap();

    let dir = cvat.to_str().unwrap();
    let err = fails(&project, &[dir, "--round", "core", "--class", "nucleus"]);
    contains_all(
        &err,
        &[
            "labelmap.txt: no class \"nucleus\"",
            "(classes: background, vessel, cell)",
        ],
    );
    let err = fails(&project, &[dir, "--round", "core"]);
    contains_all(&err, &["--class NAME", "classes: background, vessel, cell"]);
    let elsewhere = tmp.path().join("plain");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let err = fails(
        &project,
        &[
            elsewhere.to_str().unwrap(),
            "--round",
            "core",
            "--class",
            "vessel",
        ],
    );
    contains_all(
        &err,
        &[&format!(
            "{}: no such file",
            elsewhere.join("labelmap.txt").display()
        )],
    );

    let r = annotate_core(&project, &cvat, &["--class", "vessel"]);
    assert_eq!(r["masks"], 5);
    assert_eq!(r["files"]["CVAT class vessel"], 1);
    assert_eq!(r["files"]["CVAT class vessel, whole stack"], 1);
    let masks = stored_masks(&project);
    let mut expected_ids = vec![ids[0].clone()];
    expected_ids.extend(v.patches[stack1].iter().map(|p| p.id.clone()));
    assert_eq!(masks.keys().cloned().collect::<Vec<_>>(), expected_ids);
    let vessel: Vec<u8> = (0..64 * 64).map(|i| (i % 64 < 20) as u8).collect();
    assert_eq!(masks[&ids[0]], vessel);
    for p in &v.patches[stack1] {
        let crop: Vec<u8> = (0..64 * 64)
            .map(|i| diagonal(p.y + i / 64, p.x + i % 64) as u8)
            .collect();
        assert_eq!(masks[&p.id], crop, "{}", p.id);
    }
    // The patch at y 64, x 0 starts at (64 + 0) % 5 = 4: its first vessel pixel is x = 1.
    assert_eq!(
        masks[&format!("{stack1}-z0-y0064-x0000")][..6],
        [0, 1, 0, 0, 0, 0]
    );
}

/// Foreground of a whole-stack test mask at (z, y, x): diagonal stripes that shift with z, so
/// every crop is different.
fn stripes(z: usize, y: usize, x: usize) -> bool {
    (y + 2 * x + 7 * z) % 9 < 3
}

/// A whole stack's mask, Z×128×128: 0/255 stripes.
fn stack_planes(depth: usize) -> Vec<Plane> {
    (0..depth)
        .map(|z| {
            Plane::U8(
                (0..128 * 128)
                    .map(|i| if stripes(z, i / 128, i % 128) { 255 } else { 0 })
                    .collect(),
            )
        })
        .collect()
}

#[test]
fn whole_stack_masks_are_cut_into_every_patch_of_the_stack() {
    let (tmp, project, v) = project("2,128,128");
    let stacks: Vec<&String> = v.stacks.keys().collect();
    let dir = tmp.path().join("whole");
    std::fs::create_dir_all(&dir).unwrap();
    tiff(
        &dir.join(format!("{}.tif", stacks[0])),
        128,
        128,
        stack_planes(2),
    );
    // The other stack as Cellpose labels of the whole stack: label = stripe number.
    let labels: Vec<Plane> = (0..2)
        .map(|z| {
            Plane::U16(
                (0..128 * 128)
                    .map(|i| {
                        let (y, x) = (i / 128, i % 128);
                        if stripes(z, y, x) {
                            1 + ((y + 2 * x + 7 * z) / 9) as u16
                        } else {
                            0
                        }
                    })
                    .collect(),
            )
        })
        .collect();
    tiff(
        &dir.join(format!("{}_cp_masks.tif", stacks[1])),
        128,
        128,
        labels,
    );

    let r = annotate_core(&project, &dir, &[]);
    assert_eq!(r["masks"], 16);
    assert_eq!(r["files"]["binary, whole stack"], 1);
    assert_eq!(r["files"]["Cellpose labels, whole stack"], 1);
    let masks = stored_masks(&project);
    assert_eq!(masks.len(), 16);
    for (stack, p) in v.all_patches() {
        let expected: Vec<u8> = (0..64 * 64)
            .map(|i| stripes(p.z, p.y + i / 64, p.x + i % 64) as u8)
            .collect();
        assert_eq!(masks[&p.id], expected, "{} of {}", p.id, stack.name);
    }
    // One patch by hand: z 1, y 64, x 64 starts at stack pixel (1, 64, 64), where
    // y + 2x + 7z = 199, 201, 203, 205, 207 (mod 9: 1, 3, 5, 7, 0); the patch at the origin
    // starts 0, 2, 4, 6, 8.
    let id = format!("{}-z1-y0064-x0064", stacks[0]);
    assert_eq!(masks[&id][..5], [1, 0, 0, 0, 1]);
    assert_eq!(
        masks[&format!("{}-z0-y0000-x0000", stacks[0])][..5],
        [1, 1, 0, 0, 0]
    );
}

#[test]
fn wrong_whole_stack_and_label_masks_are_all_reported_and_nothing_is_imported() {
    let (tmp, project, v) = project("2,128,128");
    let stacks: Vec<&String> = v.stacks.keys().collect();
    let dir = tmp.path().join("wrong");
    std::fs::create_dir_all(&dir).unwrap();
    // A whole-stack mask of the wrong shape.
    let short = dir.join(format!("{}.tif", stacks[0]));
    tiff(&short, 128, 128, stack_planes(1));
    // A label image without --labels.
    let patch = format!("{}-z0-y0000-x0064", stacks[1]);
    let labels = dir.join(format!("{patch}.tif"));
    let cells: Vec<u16> = (0..64 * 64).map(cells).collect();
    tiff(&labels, 64, 64, vec![Plane::U16(cells)]);
    // A name that is no stack of this version.
    let unknown = dir.join("no_such_stack.tif");
    tiff(&unknown, 128, 128, stack_planes(2));
    // A whole-stack mask of the other stack besides the per-patch mask above.
    let twice = dir.join(format!("{}_masks.tif", stacks[1]));
    tiff(&twice, 128, 128, stack_planes(2));

    let err = fails(&project, &[dir.to_str().unwrap(), "--round", "core"]);
    contains_all(
        &err,
        &[
            &format!(
                "{}: is 1×128×128 (Z×Y×X), stack {} is 2×128×128",
                short.display(),
                stacks[0]
            ),
            &format!("{}: is not binary", labels.display()),
            &format!(
                "{}: \"no_such_stack\" is no patch id or stack name of this version (stacks: {}, {})",
                unknown.display(),
                stacks[0],
                stacks[1]
            ),
            &format!(
                "{}: patch {patch} has a second mask (also {})",
                twice.display(),
                labels.display()
            ),
            "4 problem(s); nothing was imported",
        ],
    );
    assert!(stored_masks(&project).is_empty());
}

//! The synthetic cohort: deterministic, four distinct conditions, plausible ground truth, every
//! planted defect present, and the written files equal to what is generated in memory.

use biodc::io::{Dtype, Plane};
use biodc::synth::{
    generate, generate_stack, write_cohort, DefectKind, SynthManifest, SynthParams, SynthStack,
};
use std::collections::BTreeMap;

fn u16s(p: &Plane) -> &[u16] {
    match p {
        Plane::U16(v) => v,
        _ => panic!("images are u16"),
    }
}

fn u8s(p: &Plane) -> &[u8] {
    match p {
        Plane::U8(v) => v,
        _ => panic!("masks are u8"),
    }
}

fn params(seed: u64) -> SynthParams {
    SynthParams {
        stacks: 12,
        shape: [3, 192, 192],
        seed,
        defects: true,
    }
}

fn mean(v: impl Iterator<Item = f64>) -> f64 {
    let (s, n) = v.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    s / n as f64
}

/// Fraction of voxels inside vessels.
fn mask_fraction(s: &SynthStack) -> f64 {
    mean(
        s.mask
            .planes
            .iter()
            .flat_map(|m| u8s(m).iter().map(|&v| v as f64)),
    )
}

/// (background mean, background standard deviation, vessel mean) over the whole stack.
fn levels(s: &SynthStack) -> (f64, f64, f64) {
    let (mut bg, mut fg) = (Vec::new(), Vec::new());
    for (i, m) in s.image.planes.iter().zip(&s.mask.planes) {
        for (&v, &m) in u16s(i).iter().zip(u8s(m)) {
            if m == 1 { &mut fg } else { &mut bg }.push(v as f64);
        }
    }
    let b = mean(bg.iter().copied());
    let sd = mean(bg.iter().map(|v| (v - b).powi(2))).sqrt();
    (b, sd, mean(fg.into_iter()))
}

/// Variance of the 4-neighbour Laplacian: a sharpness measure.
fn laplacian_variance(v: &[u16], w: usize) -> f64 {
    let h = v.len() / w;
    let at = |y: usize, x: usize| v[y * w + x] as f64;
    let lap: Vec<f64> = (1..h - 1)
        .flat_map(|y| {
            (1..w - 1).map(move |x| {
                at(y, x - 1) + at(y, x + 1) + at(y - 1, x) + at(y + 1, x) - 4.0 * at(y, x)
            })
        })
        .collect();
    let m = mean(lap.iter().copied());
    mean(lap.iter().map(|x| (x - m).powi(2)))
}

#[test]
fn same_seed_same_pixels_other_seed_differs_any_thread_count() {
    let a = generate_stack(&params(1), 3);
    let one_thread = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap()
        .install(|| generate_stack(&params(1), 3));
    let c = generate_stack(&params(2), 3);
    assert_eq!(a.image, one_thread.image);
    assert_eq!(a.mask, one_thread.mask);
    assert_ne!(a.image, c.image);
    assert_ne!(a.mask, c.mask);
}

#[test]
fn shapes_dtypes_and_names() {
    let p = SynthParams::default();
    let (stacks, manifest) = generate(&p);
    assert_eq!(stacks.len(), 12);
    assert_eq!(manifest.stacks.len(), 12);
    for (i, (s, e)) in stacks.iter().zip(&manifest.stacks).enumerate() {
        assert_eq!((&s.name, &s.condition), (&e.name, &e.condition));
        assert_eq!(s.name, format!("{}_s{i:03}", s.condition));
        assert_eq!(e.image, format!("images/{}/{}.tif", s.condition, s.name));
        assert_eq!(e.mask, format!("masks/{}.tif", s.name));
        let is_duplicate = manifest
            .defects
            .iter()
            .any(|d| d.stack == s.name && d.kind == DefectKind::DuplicateStack);
        if !is_duplicate {
            assert_eq!(s.condition, format!("c{}", i % 4), "round-robin");
        }
        for (stack, dtype) in [(&s.image, Dtype::U16), (&s.mask, Dtype::U8)] {
            assert_eq!(stack.info.shape, [3, 256, 256]);
            assert_eq!(stack.info.dtype, dtype);
            assert_eq!(stack.planes.len(), 3);
            assert!(stack
                .planes
                .iter()
                .all(|p| p.dtype() == dtype && p.len() == 256 * 256));
        }
        assert!(s.mask.planes.iter().all(|m| u8s(m).iter().all(|&v| v <= 1)));
    }
}

#[test]
fn conditions_differ_and_masks_are_plausible() {
    let p = SynthParams {
        stacks: 16,
        defects: false,
        ..params(4)
    };
    let (stacks, manifest) = generate(&p);
    assert!(manifest.defects.is_empty());
    // Per condition: (mask fraction, background, background sd, vessel level, SNR) per stack.
    let mut by_cond: BTreeMap<String, Vec<[f64; 5]>> = BTreeMap::new();
    for s in &stacks {
        let fg = mask_fraction(s);
        assert!((0.05..0.30).contains(&fg), "{}: mask fraction {fg}", s.name);
        // Adjacent slices see the same vessels.
        let m: Vec<&[u8]> = s.mask.planes.iter().map(u8s).collect();
        let shared = m[0].iter().zip(m[1]).filter(|(a, b)| **a == 1 && **b == 1);
        assert!(shared.count() as f64 > 0.3 * m[0].iter().filter(|&&v| v == 1).count() as f64);
        let (bg, sd, vessel) = levels(s);
        assert!(vessel > bg + sd, "{}: vessels stand out", s.name);
        by_cond.entry(s.condition.clone()).or_default().push([
            fg,
            bg,
            sd,
            vessel,
            (vessel - bg) / sd,
        ]);
    }
    assert_eq!(by_cond.len(), 4);
    let avg = |c: &str, k: usize| mean(by_cond[c].iter().map(|v| v[k]));
    let (fg, bg, snr) = (|c| avg(c, 0), |c| avg(c, 1), |c| avg(c, 4));
    // Density: sparse c0, crowded c2, the capillary bed c1 and c3 between.
    assert!(fg("c0") < fg("c1") && fg("c0") < fg("c3"), "{by_cond:?}");
    assert!(fg("c1") < fg("c2") && fg("c3") < fg("c2"), "{by_cond:?}");
    // Background: c0 < c3 < c1 < c2.
    assert!(
        bg("c0") < bg("c3") && bg("c3") < bg("c1") && bg("c1") < bg("c2"),
        "{by_cond:?}"
    );
    // c0 is the clean one.
    for c in ["c1", "c2", "c3"] {
        assert!(snr("c0") > 2.0 * snr(c), "{by_cond:?}");
    }
    // Not trivially apart: the background intensities of c1 and c3 overlap well within noise.
    let sd = |c| avg(c, 2);
    assert!(
        (bg("c1") - bg("c3")).abs() < sd("c1") + sd("c3"),
        "{by_cond:?}"
    );
}

#[test]
fn every_planted_defect_is_there() {
    let p = params(7);
    let (stacks, manifest) = generate(&p);
    let kinds: Vec<DefectKind> = manifest.defects.iter().map(|d| d.kind).collect();
    assert_eq!(kinds.len(), 5, "{kinds:?}");
    let find = |name: &str| stacks.iter().find(|s| s.name == name).unwrap();
    let clean = generate(&SynthParams {
        defects: false,
        ..p.clone()
    })
    .0;
    for d in &manifest.defects {
        let s = find(&d.stack);
        let index = manifest
            .stacks
            .iter()
            .position(|e| e.name == d.stack)
            .unwrap();
        match d.kind {
            DefectKind::BlankStack => {
                assert!(s
                    .image
                    .planes
                    .iter()
                    .all(|p| u16s(p).iter().all(|&v| v == 0)));
                assert!(s.mask.planes.iter().all(|p| u8s(p).iter().all(|&v| v == 0)));
            }
            DefectKind::SaturatedSlice => {
                let z = d.z.unwrap();
                for (k, plane) in s.image.planes.iter().enumerate() {
                    let v = u16s(plane);
                    let sat = v.iter().filter(|&&v| v == 65535).count() as f64 / v.len() as f64;
                    if k == z {
                        assert!(sat > 0.9, "saturated fraction {sat}");
                    } else {
                        assert!(sat < 0.001, "slice {k} is normal");
                        assert_eq!(plane, &clean[index].image.planes[k]);
                    }
                }
                assert_eq!(s.mask, clean[index].mask);
            }
            DefectKind::DuplicateStack => {
                let original = find(d.duplicate_of.as_deref().unwrap());
                assert_eq!(s.image, original.image);
                assert_eq!(s.mask, original.mask);
                assert_ne!(s.name, original.name);
                assert_eq!(s.condition, original.condition);
            }
            DefectKind::BlurredStack => {
                let sharp: Vec<f64> = stacks
                    .iter()
                    .filter(|o| o.condition == s.condition && o.name != s.name)
                    .map(|o| laplacian_variance(u16s(&o.image.planes[0]), 192))
                    .collect();
                let blurred = laplacian_variance(u16s(&s.image.planes[0]), 192);
                assert!(!sharp.is_empty());
                assert!(
                    sharp.iter().all(|&v| blurred * 10.0 < v),
                    "{blurred} vs {sharp:?}"
                );
                assert_eq!(s.mask, clean[index].mask, "the truth stays sharp");
                let (bg, _, vessel) = levels(s);
                assert!(vessel > bg, "still a vessel image");
            }
            DefectKind::OddTextureSlice => {
                let z = d.z.unwrap();
                assert!(u8s(&s.mask.planes[z]).iter().all(|&v| v == 0));
                assert!(u8s(&clean[index].mask.planes[z]).contains(&1));
                assert_ne!(s.image.planes[z], clean[index].image.planes[z]);
                let v = u16s(&s.image.planes[z]);
                assert!(mean(v.iter().map(|&x| x as f64)) > 100.0, "not blank");
                for k in (0..3).filter(|&k| k != z) {
                    assert_eq!(s.image.planes[k], clean[index].image.planes[k]);
                }
            }
        }
    }
}

#[test]
fn written_cohort_matches_its_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let p = SynthParams {
        stacks: 7,
        shape: [2, 64, 80],
        seed: 9,
        defects: true,
    };
    let manifest = write_cohort(dir.path(), &p).unwrap();
    let written: SynthManifest =
        serde_json::from_slice(&std::fs::read(dir.path().join("manifest.json")).unwrap()).unwrap();
    assert_eq!(written, manifest);
    assert_eq!(manifest.stacks.len(), 7);
    assert_eq!(manifest.defects.len(), 5);
    let files: Vec<String> = walkdir::WalkDir::new(dir.path())
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .map(|e| {
            let rel = e.path().strip_prefix(dir.path()).unwrap();
            rel.to_string_lossy().into_owned()
        })
        .collect();
    assert_eq!(files.len(), 2 * 7 + 1, "{files:?}");
    for (i, entry) in manifest.stacks.iter().enumerate() {
        let image = biodc::io::tiff::read_stack(&dir.path().join(&entry.image)).unwrap();
        let mask = biodc::io::tiff::read_stack(&dir.path().join(&entry.mask)).unwrap();
        let s = generate_stack(&p, i);
        assert_eq!(image.planes, s.image.planes);
        assert_eq!(mask.planes, s.mask.planes);
        assert_eq!(image.info.shape, [2, 64, 80]);
        assert_eq!(image.info.voxel_size, Some([2.0, 0.5, 0.5]));
    }
    // The same seed writes the same bytes; another seed other bytes.
    let again = tempfile::tempdir().unwrap();
    write_cohort(again.path(), &p).unwrap();
    let other = tempfile::tempdir().unwrap();
    write_cohort(other.path(), &SynthParams { seed: 10, ..p }).unwrap();
    for f in &files {
        let bytes = std::fs::read(dir.path().join(f)).unwrap();
        assert_eq!(bytes, std::fs::read(again.path().join(f)).unwrap(), "{f}");
        if f.contains("_s000") {
            assert_ne!(bytes, std::fs::read(other.path().join(f)).unwrap(), "{f}");
        }
    }
}

#[test]
fn write_cohort_rejects_empty_requests() {
    let dir = tempfile::tempdir().unwrap();
    for p in [
        SynthParams {
            stacks: 0,
            ..SynthParams::default()
        },
        SynthParams {
            shape: [1, 8, 64],
            ..SynthParams::default()
        },
    ] {
        assert!(write_cohort(dir.path(), &p).is_err());
    }
}

//! The synthetic cohort: deterministic, four distinct conditions, every planted defect present.

use biodc::io::Plane;
use biodc::synth::{generate, generate_stack, write_cohort, DefectKind, SynthParams};

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

fn mean(v: &[u16]) -> f64 {
    v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64
}

/// Variance of the 4-neighbour Laplacian: a sharpness measure.
fn laplacian_variance(v: &[u16], w: usize) -> f64 {
    let h = v.len() / w;
    let mut vals = Vec::new();
    for y in 1..h - 1 {
        for x in 1..w - 1 {
            let c = v[y * w + x] as f64;
            vals.push(
                v[y * w + x - 1] as f64
                    + v[y * w + x + 1] as f64
                    + v[(y - 1) * w + x] as f64
                    + v[(y + 1) * w + x] as f64
                    - 4.0 * c,
            );
        }
    }
    let m = vals.iter().sum::<f64>() / vals.len() as f64;
    vals.iter().map(|x| (x - m).powi(2)).sum::<f64>() / vals.len() as f64
}

#[test]
fn same_seed_same_pixels_other_seed_differs() {
    let a = generate_stack(&params(1), 3);
    let b = generate_stack(&params(1), 3);
    let c = generate_stack(&params(2), 3);
    assert_eq!(a.image, b.image);
    assert_eq!(a.mask, b.mask);
    assert_ne!(a.image, c.image);
}

#[test]
fn conditions_differ_and_masks_are_plausible() {
    let p = SynthParams {
        stacks: 16,
        defects: false,
        ..params(4)
    };
    let (stacks, manifest) = generate(&p);
    assert_eq!(manifest.defects.len(), 0);
    let mut by_cond: std::collections::BTreeMap<String, Vec<(f64, f64)>> = Default::default();
    for s in &stacks {
        assert_eq!(s.image.info.shape, [3, 192, 192]);
        let fg: f64 = s
            .mask
            .planes
            .iter()
            .map(|m| u8s(m).iter().map(|&v| v as f64).sum::<f64>())
            .sum::<f64>()
            / (3.0 * 192.0 * 192.0);
        assert!((0.01..0.4).contains(&fg), "{}: mask fraction {fg}", s.name);
        assert!(s.mask.planes.iter().all(|m| u8s(m).iter().all(|&v| v <= 1)));
        let background: Vec<u16> = s
            .image
            .planes
            .iter()
            .zip(&s.mask.planes)
            .flat_map(|(i, m)| {
                u16s(i)
                    .iter()
                    .zip(u8s(m))
                    .filter(|(_, &m)| m == 0)
                    .map(|(&v, _)| v)
            })
            .collect();
        by_cond
            .entry(s.condition.clone())
            .or_default()
            .push((fg, mean(&background)));
    }
    assert_eq!(by_cond.len(), 4);
    // Background levels separate the conditions: c0 < c3 < c1 < c2 (on average).
    let bg = |c: &str| by_cond[c].iter().map(|x| x.1).sum::<f64>() / by_cond[c].len() as f64;
    assert!(
        bg("c0") < bg("c3") && bg("c3") < bg("c1") && bg("c1") < bg("c2"),
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
    for d in &manifest.defects {
        let s = find(&d.stack);
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
                let plane = u16s(&s.image.planes[d.z.unwrap()]);
                let sat = plane.iter().filter(|&&v| v == 65535).count() as f64 / plane.len() as f64;
                assert!(sat > 0.9, "saturated fraction {sat}");
            }
            DefectKind::DuplicateStack => {
                let original = find(d.duplicate_of.as_deref().unwrap());
                assert_eq!(s.image.planes, original.image.planes);
                assert_eq!(s.mask.planes, original.mask.planes);
                assert_ne!(s.name, original.name);
            }
            DefectKind::BlurredStack => {
                let sharp: Vec<f64> = stacks
                    .iter()
                    .filter(|o| o.condition == s.condition && o.name != s.name)
                    .map(|o| laplacian_variance(u16s(&o.image.planes[0]), 192))
                    .collect();
                let blurred = laplacian_variance(u16s(&s.image.planes[0]), 192);
                assert!(
                    sharp.iter().all(|&v| blurred * 10.0 < v),
                    "{blurred} vs {sharp:?}"
                );
            }
            DefectKind::OddTextureSlice => {
                let z = d.z.unwrap();
                assert!(u8s(&s.mask.planes[z]).iter().all(|&v| v == 0));
                assert_ne!(
                    s.image.planes[z],
                    generate_stack(
                        &SynthParams {
                            defects: false,
                            ..p.clone()
                        },
                        2
                    )
                    .image
                    .planes[z]
                );
            }
        }
    }
}

#[test]
fn written_cohort_matches_its_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let p = SynthParams {
        stacks: 6,
        shape: [2, 64, 80],
        seed: 9,
        defects: true,
    };
    let manifest = write_cohort(dir.path(), &p).unwrap();
    let written: biodc::synth::SynthManifest =
        serde_json::from_slice(&std::fs::read(dir.path().join("manifest.json")).unwrap()).unwrap();
    assert_eq!(written, manifest);
    for (i, entry) in manifest.stacks.iter().enumerate() {
        let image = biodc::io::tiff::read_stack(&dir.path().join(&entry.image)).unwrap();
        let mask = biodc::io::tiff::read_stack(&dir.path().join(&entry.mask)).unwrap();
        let s = generate_stack(&p, i);
        assert_eq!(image.planes, s.image.planes);
        assert_eq!(mask.planes, s.mask.planes);
        assert_eq!(image.info.voxel_size, Some([2.0, 0.5, 0.5]));
    }
    // The same seed writes the same bytes.
    let again = tempfile::tempdir().unwrap();
    write_cohort(again.path(), &p).unwrap();
    let e = &manifest.stacks[0].image;
    assert_eq!(
        std::fs::read(dir.path().join(e)).unwrap(),
        std::fs::read(again.path().join(e)).unwrap()
    );
}

//! QC on a synthetic cohort: every planted defect is flagged, almost no clean patch is.

mod common;

use biodc::repo::Repo;
use biodc::synth::{DefectKind, SynthManifest};
use common::*;

#[test]
fn qc_flags_every_planted_defect_and_few_clean_patches() {
    let (_tmp, project, cohort) = project_with_cohort(12, "3,448,448");
    ok(
        &project,
        &[
            "import",
            cohort.join("images").to_str().unwrap(),
            "--condition-from-dir",
        ],
    );
    let head0 = head(&project);
    let objects0 = object_files(&project);
    ok(&project, &["qc"]);
    assert_eq!(
        object_files(&project),
        objects0,
        "qc only flags: no new object"
    );
    assert_ne!(head(&project), head0);

    let manifest: SynthManifest =
        serde_json::from_slice(&std::fs::read(cohort.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest.defects.len(), 5);
    let repo = Repo::discover(&project).unwrap();
    let (_, v) = repo.version(None).unwrap();
    let lines = v.qc_lines().unwrap();
    let flags_of = |id: &str| {
        lines
            .iter()
            .find(|l| l.patch == id)
            .map(|l| l.flags.clone())
            .unwrap_or_default()
    };
    let in_defect = |id: &str| {
        manifest.defects.iter().any(|d| {
            let (stack, rest) = id.split_once("-z").unwrap();
            let z: usize = rest.split('-').next().unwrap().parse().unwrap();
            d.stack == stack && d.z.is_none_or(|dz| dz == z)
        })
    };
    for d in &manifest.defects {
        let expected = match d.kind {
            DefectKind::BlankStack => "blank",
            DefectKind::SaturatedSlice => "saturated",
            DefectKind::DuplicateStack => "duplicate",
            DefectKind::BlurredStack => "blurred",
            DefectKind::OddTextureSlice => "odd_texture",
        };
        let patches: Vec<String> = v
            .all_patches()
            .map(|(_, p)| p.id.clone())
            .filter(|id| {
                id.starts_with(&format!("{}-", d.stack))
                    && d.z.is_none_or(|z| id.contains(&format!("-z{z}-")))
            })
            .collect();
        assert!(!patches.is_empty());
        let hit = patches
            .iter()
            .filter(|id| flags_of(id).iter().any(|f| f == expected))
            .count();
        println!(
            "{:?} in {}: {hit}/{} patches flagged {expected}",
            d.kind,
            d.stack,
            patches.len()
        );
        assert!(
            hit * 2 > patches.len(),
            "{:?} in {}: only {hit} of {} patches flagged {expected}",
            d.kind,
            d.stack,
            patches.len()
        );
    }
    let clean: Vec<String> = v
        .all_patches()
        .map(|(_, p)| p.id.clone())
        .filter(|id| !in_defect(id))
        .collect();
    let false_pos = clean.iter().filter(|id| !flags_of(id).is_empty()).count();
    println!("clean patches flagged: {false_pos} of {}", clean.len());
    assert!(
        (false_pos as f64) < 0.02 * clean.len() as f64,
        "{false_pos} of {} clean patches flagged",
        clean.len()
    );

    // --exclude keeps flagged patches out of the core set.
    ok(&project, &["pretrain", "--max-steps", "3"]);
    ok(&project, &["embed"]);
    ok(
        &project,
        &[
            "coreset",
            "-k",
            "10",
            "--exclude",
            "blank",
            "duplicate",
            "saturated",
            "blurred",
            "odd_texture",
        ],
    );
    let (_, v) = Repo::discover(&project).unwrap().version(None).unwrap();
    let flagged = v
        .flagged_patches(
            &["blank", "duplicate", "saturated", "blurred", "odd_texture"].map(String::from),
        )
        .unwrap();
    assert!(v.sets["coreset"]
        .patches
        .iter()
        .all(|p| !flagged.contains(p)));
}

/// A stack imaged twice (the same field, new noise of σ ≈ 52 grey levels, about the camera's
/// own) is a near duplicate of the first, patch for patch; nothing else in the cohort is.
#[test]
fn a_reimaged_stack_is_a_near_duplicate_and_nothing_else_is() {
    use rand::{Rng, SeedableRng};
    let (_tmp, project, cohort) = project_with(Cohort {
        stacks: 8,
        shape: "2,256,256",
        seed: 5,
        patch: 128,
        defects: false,
    });
    let original = cohort.join("images/c0/c0_s000.tif");
    let mut stack = biodc::io::tiff::read_stack(&original).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    for plane in &mut stack.planes {
        let biodc::io::Plane::U16(px) = plane else {
            panic!("synthetic stacks are 16-bit")
        };
        for p in px.iter_mut() {
            *p = (*p as f32 + rng.random_range(-90.0..90.0)).max(0.0) as u16;
        }
    }
    biodc::io::tiff::write_stack(&cohort.join("images/c0/c0_s000_again.tif"), &stack).unwrap();
    import_cohort(&project, &cohort);
    ok(&project, &["pretrain", "--epochs", "2"]);
    ok(&project, &["embed"]);
    ok(&project, &["qc"]);
    let (_, v) = Repo::discover(&project).unwrap().version(None).unwrap();
    let near: Vec<_> = v
        .qc_lines()
        .unwrap()
        .into_iter()
        .filter(|l| l.flags.iter().any(|f| f == "near_duplicate"))
        .collect();
    for l in &near {
        println!(
            "{} ~ {} (pixel correlation {:.3})",
            l.patch,
            l.duplicate_of.as_deref().unwrap_or("?"),
            l.z["pixel_correlation"]
        );
    }
    let copies: Vec<String> = v.patches["c0_s000_again"]
        .iter()
        .map(|p| p.id.clone())
        .collect();
    assert_eq!(near.len(), copies.len(), "only the re-imaged patches");
    for l in &near {
        assert!(copies.contains(&l.patch), "{} is not a copy", l.patch);
        let same_place = l.patch.replace("c0_s000_again", "c0_s000");
        assert_eq!(l.duplicate_of.as_deref(), Some(same_place.as_str()));
    }
}

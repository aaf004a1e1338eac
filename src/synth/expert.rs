//! The simulated expert: writes ground-truth masks for requested patches, as a biologist would
//! return them (one TIFF per patch, named by patch id, values {0, 255}), cut from whole-stack
//! truth masks: a synthetic cohort's, or any folder of masks named like the stacks (e.g. the
//! manual annotations of a public dataset).

use super::SynthManifest;
use crate::io::tiff::{read_binary_mask, read_stack, write_stack};
use crate::io::{Plane, Stack, StackInfo};
use crate::pixel::dice;
use crate::store::Store;
use crate::version::{stack_of_patch_id, DatasetVersion, PatchSet};
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Writes `out/<patch id>.tif` for each of `patches`, cropped from the cohort's ground truth.
pub fn write_masks(
    cohort: &Path,
    version: &DatasetVersion,
    patches: &[String],
    out: &Path,
) -> Result<usize> {
    let manifest: SynthManifest = serde_json::from_slice(
        &std::fs::read(cohort.join("manifest.json"))
            .with_context(|| format!("{}: not a synthetic cohort", cohort.display()))?,
    )?;
    let mask_file: BTreeMap<String, PathBuf> = manifest
        .stacks
        .iter()
        .map(|s| (s.name.clone(), cohort.join(&s.mask)))
        .collect();
    write_masks_from(&mask_file, version, patches, out)
}

/// The same from a folder of whole-stack truth masks named like the stacks
/// (`truth/<stack>.tif`; any non-zero pixel is foreground).
pub fn write_masks_from_folder(
    truth: &Path,
    version: &DatasetVersion,
    patches: &[String],
    out: &Path,
) -> Result<usize> {
    let files = crate::io::files::tiff_files(&[truth.to_path_buf()])?;
    let mask_file: BTreeMap<String, PathBuf> = files
        .into_iter()
        .map(|f| (crate::io::files::stack_name(&f), f))
        .collect();
    write_masks_from(&mask_file, version, patches, out)
}

fn write_masks_from(
    mask_file: &BTreeMap<String, PathBuf>,
    version: &DatasetVersion,
    patches: &[String],
    out: &Path,
) -> Result<usize> {
    std::fs::create_dir_all(out)?;
    let mut loaded: BTreeMap<String, Stack> = BTreeMap::new();
    for id in patches {
        let (stack, patch) = version
            .patch(id)
            .with_context(|| format!("patch {id} is not in this version"))?;
        let name = stack_of_patch_id(id).unwrap_or_default();
        let file = mask_file
            .get(name)
            .with_context(|| format!("no truth mask for stack {name}"))?;
        if !loaded.contains_key(name) {
            let truth = read_stack(file)?;
            if truth.info.shape != stack.shape {
                anyhow::bail!(
                    "{}: truth mask is {:?}, stack {name} is {:?}",
                    file.display(),
                    truth.info.shape,
                    stack.shape
                );
            }
            loaded.insert(name.to_string(), truth);
        }
        let truth = &loaded[name];
        let crop =
            truth.planes[patch.z].crop(stack.shape[2], patch.y, patch.x, stack.tile, stack.tile);
        let v: Vec<u8> = crop.to_f32().iter().map(|&m| (m > 0.0) as u8).collect();
        let mask = Stack {
            info: StackInfo {
                shape: [1, stack.tile, stack.tile],
                dtype: crate::io::Dtype::U8,
                voxel_size: None,
            },
            planes: vec![Plane::U8(
                v.iter().map(|&m| if m > 0 { 255 } else { 0 }).collect(),
            )],
        };
        crate::output::OutDir::create(out)?
            .write(&format!("{id}.tif"), true, |p| write_stack(p, &mask))?;
    }
    Ok(patches.len())
}

/// Which of hunt's candidates the simulated expert corrects first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Triage {
    /// Most wrong pixels in the model's mean prediction: what a person sees first on an
    /// overlay, and the most pixels corrected per patch.
    MostWrong,
    /// Lowest Dice of the mean prediction. Patches with little foreground dominate (ten vessel
    /// pixels, none found: Dice 0), so on real images it picks the rim of the field of view.
    LowestDice,
}

/// One hunted candidate as the expert sees it: the mean prediction against the truth.
#[derive(Debug, Clone)]
pub struct Triaged {
    pub patch: String,
    pub dice: f64,
    pub wrong: usize,
}

/// The candidates of hunt's `set`, worst first by `rule`, against the truth masks in `truth`
/// (`<patch id>.tif` each, as `write_masks` writes them). Ties keep hunt's order.
pub fn triage(store: &Store, set: &PatchSet, truth: &Path, rule: Triage) -> Result<Vec<Triaged>> {
    let predictions = set
        .objects
        .get("prediction")
        .with_context(|| format!("set {} holds no predictions: not made by hunt", set.name))?;
    let mut out = Vec::with_capacity(set.patches.len());
    for id in &set.patches {
        let object = predictions
            .get(id)
            .with_context(|| format!("set {}: no prediction of {id}", set.name))?;
        let pred = store.get(object)?;
        let truth = read_binary_mask(&truth.join(format!("{id}.tif")))?.1;
        anyhow::ensure!(
            pred.len() == truth.len(),
            "{id}: prediction has {} pixels, truth {}",
            pred.len(),
            truth.len()
        );
        out.push(Triaged {
            patch: id.clone(),
            dice: dice(&pred, &truth),
            wrong: pred
                .iter()
                .zip(&truth)
                .filter(|(p, t)| (**p != 0) != (**t != 0))
                .count(),
        });
    }
    match rule {
        Triage::MostWrong => out.sort_by(|a, b| b.wrong.cmp(&a.wrong)),
        Triage::LowestDice => out.sort_by(|a, b| a.dice.total_cmp(&b.dice)),
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Filter, Kind};

    fn mask_file(dir: &Path, id: &str, m: &[u8]) {
        let stack = Stack {
            info: StackInfo {
                shape: [1, 4, 4],
                dtype: crate::io::Dtype::U8,
                voxel_size: None,
            },
            planes: vec![Plane::U8(m.iter().map(|&v| v * 255).collect())],
        };
        write_stack(&dir.join(format!("{id}.tif")), &stack).unwrap();
    }

    #[test]
    fn triage_ranks_by_wrong_pixels_or_by_dice() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(&tmp.path().join("objects")).unwrap();
        let truth = tmp.path().join("truth");
        std::fs::create_dir_all(&truth).unwrap();
        // "rim": 1 foreground pixel, missed (1 wrong, Dice 0); "dense": 8 foreground pixels,
        // 4 found (4 wrong, Dice 0.67); "good": exact (0 wrong, Dice 1).
        let mut rim_t = [0u8; 16];
        rim_t[0] = 1;
        let dense_t = [1u8, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0];
        let dense_p = [1u8, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let cases: [(&str, [u8; 16], [u8; 16]); 3] = [
            ("rim", rim_t, [0; 16]),
            ("dense", dense_t, dense_p),
            ("good", dense_t, dense_t),
        ];
        let mut set = PatchSet {
            name: "candidates-1".into(),
            method: "mc-dropout-disagreement".into(),
            params: serde_json::Value::Null,
            patches: Vec::new(),
            scores: Vec::new(),
            extra: BTreeMap::new(),
            objects: BTreeMap::new(),
        };
        let mut predictions = BTreeMap::new();
        for (id, t, p) in &cases {
            mask_file(&truth, id, t);
            let (obj, _) = store.put(Kind::Mask, Filter::None, p).unwrap();
            predictions.insert(id.to_string(), obj);
            set.patches.push(id.to_string());
        }
        set.objects.insert("prediction".into(), predictions);

        let by_wrong = triage(&store, &set, &truth, Triage::MostWrong).unwrap();
        let order: Vec<(&str, usize)> = by_wrong
            .iter()
            .map(|t| (t.patch.as_str(), t.wrong))
            .collect();
        assert_eq!(order, [("dense", 4), ("rim", 1), ("good", 0)]);
        let by_dice = triage(&store, &set, &truth, Triage::LowestDice).unwrap();
        let order: Vec<&str> = by_dice.iter().map(|t| t.patch.as_str()).collect();
        assert_eq!(order, ["rim", "dense", "good"]);
        assert!((by_dice[1].dice - 2.0 * 4.0 / 12.0).abs() < 1e-12);

        set.objects.clear();
        let err = triage(&store, &set, &truth, Triage::MostWrong).unwrap_err();
        assert!(err.to_string().contains("no predictions"), "{err}");
    }
}

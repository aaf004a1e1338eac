//! What every version must satisfy beyond parsing, checked when a version is read and before
//! one is written: names are stored names (see `crate::name`) and agree with their file, every
//! patch list belongs to a stack, and each patch id is what its stack and position make it.
//!
//! Names and patch ids become file names when versions are exported, reported or segmented, so
//! a repository crafted with plain git (a patch id holding `/../`, a set called `..`) is refused
//! with an error naming the manifest, instead of steering a verb's output outside its folder.

use super::{patch_id, DatasetVersion};
use crate::name::{check_stored, NameKind};
use anyhow::{bail, Result};

/// Checks `v`; the error names the first offending manifest and what is wrong with it.
pub fn check(v: &DatasetVersion) -> Result<()> {
    for (key, s) in &v.stacks {
        let path = format!("stacks/{key}.json");
        check_stored(NameKind::Stack, key).map_err(|e| anyhow::anyhow!("{path}: {e}"))?;
        if s.name != *key {
            bail!("{path}: names stack {:?}, not {key:?}", s.name);
        }
        if s.tile == 0 {
            bail!("{path}: tile size 0");
        }
    }
    for (key, patches) in &v.patches {
        let path = format!("patches/{key}.jsonl");
        let Some(stack) = v.stacks.get(key) else {
            bail!("{path}: there is no stacks/{key}.json for these patches");
        };
        let [depth, h, w] = stack.shape;
        for (i, p) in patches.iter().enumerate() {
            let expected = patch_id(key, p.z, p.y, p.x);
            if p.id != expected {
                bail!(
                    "{path}:{}: patch id {:?} is not {expected:?}, the id its stack and position give",
                    i + 1,
                    p.id
                );
            }
            if p.z >= depth || p.y + stack.tile > h || p.x + stack.tile > w {
                bail!(
                    "{path}:{}: patch {} lies outside the stack's {depth}×{h}×{w} voxels",
                    i + 1,
                    p.id
                );
            }
        }
    }
    for (key, s) in &v.sets {
        let path = format!("sets/{key}.json");
        check_stored(NameKind::Set, key).map_err(|e| anyhow::anyhow!("{path}: {e}"))?;
        if s.name != *key {
            bail!("{path}: names set {:?}, not {key:?}", s.name);
        }
    }
    for (key, m) in &v.models {
        let path = format!("models/{key}.json");
        check_stored(NameKind::Model, key).map_err(|e| anyhow::anyhow!("{path}: {e}"))?;
        if m.name != *key {
            bail!("{path}: names model {:?}, not {key:?}", m.name);
        }
    }
    for (key, e) in &v.embeddings {
        let path = format!("embeddings/{key}.json");
        check_stored(NameKind::Model, key).map_err(|e| anyhow::anyhow!("{path}: {e}"))?;
        if e.model != *key {
            bail!("{path}: names model {:?}, not {key:?}", e.model);
        }
    }
    Ok(())
}

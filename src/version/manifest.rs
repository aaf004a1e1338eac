//! The typed manifests of a dataset version (see docs/FORMAT.md).

use crate::io::Dtype;
use crate::store::ObjectId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Version of the on-disk format written by this biodc.
pub const FORMAT_VERSION: u32 = 1;

/// `biodc.json`: repository-wide conventions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RepoMeta {
    pub format: u32,
    /// Default patch (tile) edge in pixels for imports.
    pub patch_size: usize,
    pub pixel_conventions: String,
}

impl RepoMeta {
    pub fn new(patch_size: usize) -> RepoMeta {
        RepoMeta {
            format: FORMAT_VERSION,
            patch_size,
            pixel_conventions:
                "tiles are row-major little-endian pixels of the stack's dtype; axes (z, y, x); \
                 edge tiles overlap inward so no tile is padded"
                    .into(),
        }
    }
}

/// Where a stack's pixels came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceFile {
    /// The path as given to `import`.
    pub file: String,
    /// blake3 of the whole source file.
    pub blake3: String,
    pub bytes: u64,
}

/// `stacks/<name>.json`: one imported z-stack.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StackManifest {
    pub name: String,
    pub source: SourceFile,
    /// (Z, Y, X).
    pub shape: [usize; 3],
    pub dtype: Dtype,
    /// (Z, Y, X) in micrometres, when known.
    #[serde(default, deserialize_with = "super::float::triple")]
    pub voxel_size: Option<[f64; 3]>,
    #[serde(default)]
    pub conditions: Vec<String>,
    /// Tile edge in pixels; the tile grid follows from `shape` and `tile` (see [`tile_starts`]).
    pub tile: usize,
}

/// One line of `patches/<stack>.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PatchRecord {
    pub id: String,
    pub z: usize,
    pub y: usize,
    pub x: usize,
    /// The tile object: `tile`×`tile` pixels (the stack's tile size and dtype).
    pub tile: ObjectId,
}

/// Where annotations came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    Core,
    Critical,
    Manual,
}

/// One line of `annotations.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnnotationRecord {
    pub patch: String,
    pub mask: ObjectId,
    pub round: String,
    pub origin: Origin,
    pub annotator: String,
    /// Seconds since the Unix epoch.
    pub time: i64,
}

/// `sets/<name>.json`: a named set of patches and how it was chosen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PatchSet {
    pub name: String,
    pub method: String,
    #[serde(default)]
    pub params: serde_json::Value,
    pub patches: Vec<String>,
    /// Per-pick scores (e.g. marginal gains, uncertainty), parallel to `patches`.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "super::float::vec_f64"
    )]
    pub scores: Vec<f64>,
    /// Method-specific results (objective value, coverage per condition, …).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, serde_json::Value>,
    /// Per-patch objects by role (e.g. `uncertainty` → patch id → f32 map), kept by gc.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub objects: BTreeMap<String, BTreeMap<String, ObjectId>>,
}

/// `models/<name>.json`: a trained network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelManifest {
    pub name: String,
    /// `mae` (pretrained encoder + decoder) or `segmenter`.
    pub kind: String,
    /// The architecture, as a Hugging Face-like config.
    pub architecture: serde_json::Value,
    /// safetensors object of the weights.
    pub checkpoint: ObjectId,
    /// The model this one was initialised from (`name@checkpoint`), if any.
    #[serde(default)]
    pub parent: Option<String>,
    /// What it was trained on and with which parameters.
    pub training: serde_json::Value,
    /// (step, training loss).
    #[serde(default, deserialize_with = "super::float::curve")]
    pub loss_curve: Vec<(u64, f32)>,
    /// Named scalar results (held-out loss, Dice, …).
    #[serde(default, deserialize_with = "super::float::map_f64")]
    pub metrics: BTreeMap<String, f64>,
    /// How its probabilities become masks. Absent in records of models from before it
    /// existed, which were applied as [`Inference::default`] — so they still are.
    #[serde(default, skip_serializing_if = "Inference::is_default")]
    pub inference: Inference,
}

/// How a segmentation model is applied: its probability map, averaged over the image's
/// flips when `flips` is set, is foreground where it exceeds `threshold`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Inference {
    /// Average the probabilities of the image, its left-right, up-down and both flips
    /// (a network's errors differ between them; a forest's filter bank does not see a flip).
    pub flips: bool,
    pub threshold: f32,
}

impl Default for Inference {
    /// One pass, threshold 0.5: how every model was applied before the field existed.
    fn default() -> Self {
        Inference {
            flips: false,
            threshold: 0.5,
        }
    }
}

impl Inference {
    pub fn is_default(&self) -> bool {
        *self == Inference::default()
    }
}

/// `embeddings/<model>.json`: one vector per patch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmbeddingManifest {
    pub model: String,
    /// The checkpoint that computed them.
    pub checkpoint: ObjectId,
    /// rows × dim little-endian f32 matrix object.
    pub matrix: ObjectId,
    pub rows: usize,
    pub dim: usize,
    /// Patch id of each row.
    pub patches: Vec<String>,
}

/// One line of `metrics/rca.jsonl`: a stack's reverse-classification-accuracy score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RcaRecord {
    pub stack: String,
    /// The segmenter whose prediction was scored, and its checkpoint.
    pub model: String,
    pub checkpoint: String,
    /// The annotated set the pixel classifier was tested on.
    pub reference: String,
    /// Best Dice over the reference patches: the RCA score.
    #[serde(deserialize_with = "super::float::f64")]
    pub rca: f64,
    #[serde(deserialize_with = "super::float::f64")]
    pub mean_dice: f64,
    pub best_patch: String,
    /// Share of the stack's voxels the model called foreground.
    #[serde(deserialize_with = "super::float::f64")]
    pub foreground: f64,
    /// `rca < threshold`.
    pub alarm: bool,
    #[serde(deserialize_with = "super::float::f64")]
    pub threshold: f64,
    /// Which `monitor` run of this history wrote the line (1, 2, …): the latest per stack is
    /// the one with the highest run. A counter rather than a clock, so a re-run is identical.
    pub run: u64,
}

/// `stage.json`: the transition that made this version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageRecord {
    pub verb: String,
    pub argv: Vec<String>,
    pub params: serde_json::Value,
    pub parent: Option<String>,
    /// Inputs the stage read beyond the parent version (e.g. source files with their blake3).
    #[serde(default)]
    pub inputs: BTreeMap<String, String>,
    /// Objects or manifests the stage produced, by role.
    #[serde(default)]
    pub outputs: BTreeMap<String, String>,
    pub seed: Option<u64>,
    pub threads: usize,
    pub biodc_version: String,
    /// Wall time of each step in milliseconds.
    #[serde(default)]
    pub timings_ms: BTreeMap<String, u64>,
    /// One line for humans, also the commit message's first line.
    pub summary: String,
    /// A merge's second parent (the version merged into `parent`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merged: Option<String>,
    /// The shards a gathered run was computed in (empty: one process).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shards: Vec<ShardInfo>,
    /// The batch script that submitted the shards (`biodc slurm`), as it was run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_script: Option<String>,
    /// The device the stage's networks ran on, when it was not the CPU (`cuda:0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
}

/// One shard of a gathered run: where and when it ran.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardInfo {
    pub index: usize,
    pub host: String,
    /// Seconds since the Unix epoch.
    pub started: u64,
    pub seconds: f64,
}

/// Tile origins along one axis of length `len` for tile edge `tile`: a regular grid, plus one
/// last tile flush with the far edge when the grid does not reach it (overlapping inward, never
/// padded). Empty when `len < tile`.
pub fn tile_starts(len: usize, tile: usize) -> Vec<usize> {
    if len < tile || tile == 0 {
        return Vec::new();
    }
    let mut starts: Vec<usize> = (0..=len - tile).step_by(tile).collect();
    if starts.last().map(|s| s + tile) != Some(len) {
        starts.push(len - tile);
    }
    starts
}

/// The stable, human-readable id of a patch, e.g. `c0_s003-z2-y0224-x0448`.
pub fn patch_id(stack: &str, z: usize, y: usize, x: usize) -> String {
    format!("{stack}-z{z}-y{y:04}-x{x:04}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_cover_without_padding() {
        assert_eq!(tile_starts(1024, 224), vec![0, 224, 448, 672, 800]);
        assert_eq!(tile_starts(448, 224), vec![0, 224]);
        assert_eq!(tile_starts(224, 224), vec![0]);
        assert_eq!(tile_starts(256, 224), vec![0, 32]);
        assert!(tile_starts(100, 224).is_empty());
    }
}

/// Where `qc` writes its flags, one [`QcLine`] per flagged patch.
pub const QC_FILE: &str = "qc.jsonl";
/// Where `monitor` appends its scores, one [`RcaRecord`] per (stack, model, run).
pub const RCA_FILE: &str = "metrics/rca.jsonl";

/// One line of `qc.jsonl`: a flagged patch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QcLine {
    pub patch: String,
    pub flags: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duplicate_of: Option<String>,
    /// Scores behind the statistical flags: robust z-scores, and for a near duplicate the
    /// thumbnail correlation (`pixel_correlation`) that confirmed it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub z: BTreeMap<String, f64>,
}

//! `import`: TIFF and OME-Zarr z-stacks → tiles in the store + `stacks/` and `patches/` manifests.
//!
//! Streams: one plane of one file is in memory at a time (peak memory does not grow with the
//! cohort). Tiles of a plane are hashed and compressed in parallel; identical tiles are stored
//! once, and a file whose bytes did not change since the last import is not read again.

mod plan;
mod shard;
mod source;

use super::shard::ShardSpec;
use super::Next;
use crate::history::CommitId;
use crate::io::files::{stack_files, stack_name};
use crate::io::stack::StackReader;
use crate::io::{Dtype, Plane, StackInfo};
use crate::repo::Repo;
use crate::store::{Filter, Kind, ObjectId, Store};
use crate::version::references::{drop_references, Dropped};
use crate::version::StackManifest;
use crate::version::{patch_id, tile_starts, DatasetVersion, PatchRecord};
use anyhow::{bail, Context, Result};
use plan::plan;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What to import and how.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct ImportParams {
    /// Files and folders (walked for .tif/.tiff).
    pub paths: Vec<PathBuf>,
    /// Condition tag for every imported stack.
    pub condition: Option<String>,
    /// Tag each stack with the name of the folder it is in.
    pub condition_from_dir: bool,
    /// Voxel size (Z, Y, X) in µm, overriding the files' metadata.
    pub voxel_size: Option<[f64; 3]>,
    /// Tile edge (default: the repository's patch size).
    pub patch: Option<usize>,
    /// Replace stacks whose pixels changed even though annotations, sets, embeddings, QC flags
    /// or RCA scores name their patches (those made on pixels that changed or vanished are
    /// dropped from the new version and listed).
    #[serde(default)]
    pub replace: bool,
}

/// What `import` did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ImportReport {
    pub new_stacks: Vec<String>,
    pub changed_stacks: Vec<String>,
    pub unchanged_stacks: usize,
    pub patches: usize,
    pub new_objects: usize,
    pub raw_bytes: u64,
    pub stored_bytes: u64,
    pub seconds: f64,
    /// Stacks whose pixels changed, with what was dropped because of it.
    pub replaced: Vec<ReplacedStack>,
}

/// A stack imported again with other pixels.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReplacedStack {
    pub stack: String,
    /// The source it was imported from before.
    pub previous_file: String,
    pub file: String,
    /// Patch ids of the old stack that the new one does not have.
    pub vanished: Vec<String>,
    /// Patches that hold other pixels now.
    pub changed: usize,
    /// References removed from the new version because of them.
    pub dropped: Dropped,
}

/// One input file, validated before any pixel is read.
struct Input {
    path: PathBuf,
    name: String,
    conditions: Vec<String>,
    info: StackInfo,
}

/// The `import` verb.
pub struct Import;

impl super::Stage for Import {
    const VERB: &'static str = "import";
    type Params = ImportParams;
    type Report = ImportReport;

    fn run(
        repo: &Repo,
        head: CommitId,
        version: DatasetVersion,
        params: &ImportParams,
    ) -> Result<(Next, ImportReport)> {
        import(repo, head, version, params)
    }
}

/// Imports `params.paths` into the next version.
pub fn import(
    repo: &Repo,
    _head: CommitId,
    mut version: DatasetVersion,
    params: &ImportParams,
) -> Result<(Next, ImportReport)> {
    let started = Instant::now();
    let tile = tile_of(&version, params)?;
    let (inputs, _) = collect_inputs(params, tile, None)?;
    let cache = repo.cache()?;
    let plans = plan(&cache, &version, &inputs, tile, params)?;
    let pb = progress_bar(&inputs);
    let mut report = ImportReport::default();
    let mut record_inputs = BTreeMap::new();
    let mut new_objects = BTreeMap::new();
    for (input, plan) in inputs.iter().zip(plans) {
        record_inputs.insert(input.name.clone(), plan.blake3);
        match plan.manifest {
            None => {
                report.unchanged_stacks += 1;
                pb.inc(raw_len(&input.info));
            }
            Some(manifest) => {
                let imported = tile_stack(repo, input, manifest, &pb)
                    .with_context(|| format!("{}: import failed", input.path.display()))?;
                new_objects.extend(imported.new_objects.iter().copied());
                apply(&mut version, imported, &mut report);
            }
        }
    }
    pb.finish_and_clear();
    cache.flush();
    commit(
        repo,
        version,
        params,
        report,
        record_inputs,
        new_objects,
        started,
    )
}

/// The tile edge of an import.
fn tile_of(version: &DatasetVersion, params: &ImportParams) -> Result<usize> {
    let tile = params.patch.unwrap_or(version.meta.patch_size);
    anyhow::ensure!(tile >= 8, "--patch {tile} is too small (at least 8 pixels)");
    Ok(tile)
}

fn progress_bar(inputs: &[Input]) -> indicatif::ProgressBar {
    let total: u64 = inputs.iter().map(|i| raw_len(&i.info)).sum();
    crate::progress::bar(total, "import", true)
}

/// A stack whose tiles are stored, not yet in a version.
#[derive(Serialize, Deserialize)]
struct Imported {
    manifest: StackManifest,
    patches: Vec<PatchRecord>,
    /// Objects this import wrote that were not in the store, with their stored sizes.
    new_objects: Vec<(ObjectId, u64)>,
    raw_bytes: u64,
}

/// Puts an imported stack into `version`, dropping what named pixels that changed or vanished.
fn apply(version: &mut DatasetVersion, imported: Imported, report: &mut ImportReport) {
    let Imported {
        manifest,
        patches,
        raw_bytes,
        ..
    } = imported;
    let name = manifest.name.clone();
    report.raw_bytes += raw_bytes;
    match version.stacks.get(&name) {
        None => report.new_stacks.push(name.clone()),
        Some(before) => {
            report.changed_stacks.push(name.clone());
            let old: BTreeMap<&str, _> = version.patches[&name]
                .iter()
                .map(|p| (p.id.as_str(), p.tile))
                .collect();
            let new: BTreeMap<&str, _> = patches.iter().map(|p| (p.id.as_str(), p.tile)).collect();
            let vanished: BTreeSet<String> = old
                .keys()
                .filter(|id| !new.contains_key(*id))
                .map(|id| id.to_string())
                .collect();
            let changed: BTreeSet<String> = old
                .iter()
                .filter(|(id, tile)| new.get(*id).is_some_and(|t| t != *tile))
                .map(|(id, _)| id.to_string())
                .collect();
            if !vanished.is_empty() || !changed.is_empty() {
                let previous_file = before.source.file.clone();
                let dropped = drop_references(version, &name, &vanished, &changed);
                report.replaced.push(ReplacedStack {
                    stack: name.clone(),
                    previous_file,
                    file: manifest.source.file.clone(),
                    vanished: vanished.into_iter().collect(),
                    changed: changed.len(),
                    dropped,
                });
            }
        }
    }
    version.patches.insert(name.clone(), patches);
    version.stacks.insert(name, manifest);
}

/// The next version and its record, once every stack is applied.
fn commit(
    repo: &Repo,
    version: DatasetVersion,
    params: &ImportParams,
    mut report: ImportReport,
    record_inputs: BTreeMap<String, String>,
    new_objects: BTreeMap<ObjectId, u64>,
    started: Instant,
) -> Result<(Next, ImportReport)> {
    report.new_objects = new_objects.len();
    report.stored_bytes = new_objects.values().sum();
    report.patches = version.patch_count();
    report.seconds = started.elapsed().as_secs_f64();
    if report.new_stacks.is_empty() && report.changed_stacks.is_empty() {
        return Ok((None, report));
    }
    let summary = format!(
        "import: {} new, {} changed, {} unchanged stacks; {} new objects",
        report.new_stacks.len(),
        report.changed_stacks.len(),
        report.unchanged_stacks,
        report.new_objects
    );
    let mut record = <Import as super::Stage>::record(repo, params, &summary)?;
    record.inputs = record_inputs;
    record.outputs = report
        .new_stacks
        .iter()
        .chain(&report.changed_stacks)
        .map(|s| (format!("stacks/{s}"), "imported".to_string()))
        .collect();
    record
        .timings_ms
        .insert("import".into(), started.elapsed().as_millis() as u64);
    Ok((Some((version, record)), report))
}

/// Finds the files, names the stacks and checks every header before anything is written.
/// With `part`, every file's name is still checked but only that shard's slice of the files
/// is opened and returned; its first index among all files comes back too.
fn collect_inputs(
    params: &ImportParams,
    tile: usize,
    part: Option<ShardSpec>,
) -> Result<(Vec<Input>, usize)> {
    if params.paths.is_empty() {
        bail!("nothing to import: give one or more TIFF files, OME-Zarr images or folders");
    }
    let files = stack_files(&params.paths)?;
    let mine = part.map_or(0..files.len(), |p| p.slice(files.len()));
    let mut by_name: BTreeMap<String, PathBuf> = BTreeMap::new();
    let mut inputs = Vec::new();
    let mut problems = Vec::new();
    for (i, path) in files.into_iter().enumerate() {
        let name = stack_name(&path);
        if let Err(e) = crate::name::check_stored(crate::name::NameKind::Stack, &name) {
            problems.push(format!(
                "{}: its file name gives no usable stack name ({e}); rename the file",
                path.display()
            ));
            continue;
        }
        if let Some(other) = by_name.insert(name.clone(), path.clone()) {
            problems.push(format!(
                "{} and {} would both be stack {name:?}: rename one",
                other.display(),
                path.display()
            ));
            continue;
        }
        if !mine.contains(&i) {
            continue;
        }
        match StackReader::open_with_voxel_size(&path, params.voxel_size) {
            Err(e) => problems.push(format!("{e:#}")),
            Ok(reader) => {
                let info = reader.info().clone();
                let [_, h, w] = info.shape;
                if h < tile || w < tile {
                    problems.push(format!(
                        "{}: planes are {h}×{w}, smaller than the {tile}×{tile} patch; \
                         import with a smaller --patch",
                        path.display()
                    ));
                }
                let conditions = conditions_of(params, &path);
                inputs.push(Input {
                    path,
                    name,
                    conditions,
                    info,
                });
            }
        }
    }
    if !problems.is_empty() {
        bail!(
            "cannot import; nothing was written:\n  {}",
            problems.join("\n  ")
        );
    }
    Ok((inputs, mine.start))
}

fn conditions_of(params: &ImportParams, path: &Path) -> Vec<String> {
    let mut out: Vec<String> = params.condition.iter().cloned().collect();
    if params.condition_from_dir {
        if let Some(dir) = path.parent().and_then(|p| p.file_name()) {
            out.push(dir.to_string_lossy().into_owned());
        }
    }
    out
}

fn raw_len(info: &StackInfo) -> u64 {
    (info.shape.iter().product::<usize>() * info.dtype.size()) as u64
}

/// Reads the stack plane by plane and stores its tiles.
fn tile_stack(
    repo: &Repo,
    input: &Input,
    manifest: StackManifest,
    pb: &indicatif::ProgressBar,
) -> Result<Imported> {
    let [depth, h, w] = input.info.shape;
    let tile = manifest.tile;
    let mut reader = StackReader::open_with_voxel_size(&input.path, input.info.voxel_size)?;
    let ys = tile_starts(h, tile);
    let xs = tile_starts(w, tile);
    let grid: Vec<(usize, usize)> = ys
        .iter()
        .flat_map(|&y| xs.iter().map(move |&x| (y, x)))
        .collect();
    let mut imported = Imported {
        manifest,
        patches: Vec::with_capacity(depth * grid.len()),
        new_objects: Vec::new(),
        raw_bytes: 0,
    };
    for z in 0..depth {
        let plane = reader.read_plane(z)?;
        anyhow::ensure!(
            plane.len() == h * w,
            "plane {z} has {} pixels, expected {h}×{w}",
            plane.len()
        );
        let store = &repo.store;
        let stored: Vec<_> = grid
            .par_iter()
            .map(|&(y, x)| store_tile(store, &plane, w, y, x, tile))
            .collect::<Result<_>>()?;
        for ((y, x), (id, new, stored_len)) in grid.iter().zip(stored) {
            if new {
                imported.new_objects.push((id, stored_len));
            }
            imported.patches.push(PatchRecord {
                id: patch_id(&input.name, z, *y, *x),
                z,
                y: *y,
                x: *x,
                tile: id,
            });
        }
        let plane_bytes = (h * w * input.info.dtype.size()) as u64;
        imported.raw_bytes += plane_bytes;
        pb.inc(plane_bytes);
        crate::failpoint::hit("import:after-plane");
        crate::failpoint::error("import:after-plane")?;
    }
    Ok(imported)
}

fn store_tile(
    store: &Store,
    plane: &Plane,
    width: usize,
    y: usize,
    x: usize,
    tile: usize,
) -> Result<(crate::store::ObjectId, bool, u64)> {
    let raw = plane.crop(width, y, x, tile, tile).to_le_bytes();
    let filter = match plane.dtype() {
        Dtype::U8 => Filter::None,
        d => Filter::Shuffle(d.size() as u8),
    };
    let (id, new) = store.put(Kind::Tile, filter, &raw)?;
    let len = if new {
        std::fs::metadata(store.path_of(&id))?.len()
    } else {
        0
    };
    Ok((id, new, len))
}

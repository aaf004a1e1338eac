//! `import --shard I/N`: each shard tiles a contiguous slice of the files (in the order an
//! unsharded import reads them); `gather` applies the stacks in that order, so the version is
//! the one a single process makes.

use super::plan::{plan, replace_problem};
use super::{
    apply, collect_inputs, commit, progress_bar, raw_len, tile_of, tile_stack, Import,
    ImportParams, ImportReport, Imported,
};
use crate::history::CommitId;
use crate::repo::Repo;
use crate::stages::shard::{result, ShardSpec, Sharded};
use crate::stages::{Next, Stage};
use crate::store::ObjectId;
use crate::version::DatasetVersion;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

/// A shard's part of an import: its files, from the `first`-th of all the import's files.
#[derive(Serialize, Deserialize)]
struct ImportShard {
    first: usize,
    files: Vec<ShardFile>,
}

#[derive(Serialize, Deserialize)]
struct ShardFile {
    name: String,
    blake3: String,
    /// `None` when the stack is already in the version as it is.
    imported: Option<Imported>,
}

impl Sharded for Import {
    fn run_shard(
        repo: &Repo,
        version: &DatasetVersion,
        params: &ImportParams,
        spec: ShardSpec,
    ) -> Result<(Vec<ObjectId>, serde_json::Value)> {
        let tile = tile_of(version, params)?;
        // Every shard checks every file's name; each opens only its own files.
        let (mine, first) = collect_inputs(params, tile, Some(spec))?;
        let cache = repo.cache()?;
        let plans = plan(&cache, version, &mine, tile, params)?;
        let pb = progress_bar(&mine);
        let (mut files, mut objects) = (Vec::new(), BTreeSet::new());
        for (input, plan) in mine.iter().zip(plans) {
            let imported = match plan.manifest {
                None => {
                    pb.inc(raw_len(&input.info));
                    None
                }
                Some(manifest) => {
                    let i = tile_stack(repo, input, manifest, &pb)
                        .with_context(|| format!("{}: import failed", input.path.display()))?;
                    objects.extend(i.patches.iter().map(|p| p.tile));
                    Some(i)
                }
            };
            files.push(ShardFile {
                name: input.name.clone(),
                blake3: plan.blake3,
                imported,
            });
        }
        pb.finish_and_clear();
        cache.flush();
        let part = ImportShard { first, files };
        Ok((objects.into_iter().collect(), serde_json::to_value(part)?))
    }

    fn gather(
        repo: &Repo,
        _head: CommitId,
        mut version: DatasetVersion,
        params: &ImportParams,
        results: &[serde_json::Value],
    ) -> Result<(Next, ImportReport)> {
        let started = Instant::now();
        let mut report = ImportReport::default();
        let (mut record_inputs, mut new_objects) = (BTreeMap::new(), BTreeMap::new());
        let (mut stacks, mut problems) = (Vec::new(), Vec::new());
        for r in results {
            let part: ImportShard = result(<Import as Stage>::VERB, r)?;
            anyhow::ensure!(
                part.first == record_inputs.len(),
                "import shards do not tile the files: one starts at file {}, expected {}",
                part.first,
                record_inputs.len()
            );
            for f in part.files {
                if record_inputs.insert(f.name.clone(), f.blake3).is_some() {
                    bail!("two import shards both hold stack {:?}", f.name);
                }
                match f.imported {
                    None => report.unchanged_stacks += 1,
                    Some(i) => {
                        problems.extend(replace_problem(&version, &i.manifest, params));
                        new_objects.extend(i.new_objects.iter().copied());
                        stacks.push(i);
                    }
                }
            }
        }
        if !problems.is_empty() {
            bail!(
                "cannot import; nothing was written:\n  {}",
                problems.join("\n  ")
            );
        }
        for i in stacks {
            apply(&mut version, i, &mut report);
        }
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
}

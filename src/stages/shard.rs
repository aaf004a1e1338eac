//! Sharded runs: a stage's work cut into N slices that run anywhere (Slurm array tasks,
//! Kubernetes indexed jobs, `xargs -P`), then gathered into one commit.
//!
//! A shard takes no lock and never moves HEAD: it reads HEAD, computes its slice, writes its
//! objects (atomic and content-addressed, so shards never clash) and then its shard record,
//! `.biodc/shards/<run>/<index>.json`, where `<run>` names the verb, its parameters and the
//! parent commit. `gather` checks that all N records of a run are there and agree, lets the
//! stage assemble the next version from them exactly as an unsharded run would (same order,
//! same bytes), and commits it once, with the shards listed in the stage record.

use super::{Next, Stage};
use crate::history::CommitId;
use crate::repo::Repo;
use crate::store::ObjectId;
use crate::version::{DatasetVersion, ShardInfo};
use anyhow::{bail, Context, Result};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::collections::BTreeMap;
use std::ops::Range;
use std::path::PathBuf;

/// Shard `index` (0-based) of `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardSpec {
    pub index: usize,
    pub count: usize,
}

impl ShardSpec {
    /// `I/N` (I from 0 to N−1), `auto` (Slurm's `SLURM_ARRAY_TASK_ID` − `SLURM_ARRAY_TASK_MIN`
    /// of `SLURM_ARRAY_TASK_COUNT`) or `auto/N` (the index from Slurm or Kubernetes'
    /// `JOB_COMPLETION_INDEX`, the count given).
    pub fn parse(s: &str) -> Result<ShardSpec> {
        let env = |k: &str| -> Result<Option<usize>> {
            match std::env::var(k) {
                Ok(v) => Ok(Some(v.trim().parse().with_context(|| {
                    format!("--shard auto: {k}={v:?} is not a number")
                })?)),
                Err(_) => Ok(None),
            }
        };
        let (index, count) = match s.split_once('/') {
            None if s == "auto" => {
                let (Some(id), Some(count)) =
                    (env("SLURM_ARRAY_TASK_ID")?, env("SLURM_ARRAY_TASK_COUNT")?)
                else {
                    bail!("--shard auto: SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_COUNT are not both set (not in a Slurm job array?); elsewhere give the count: --shard auto/N, or --shard I/N");
                };
                (id - env("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0), count)
            }
            Some(("auto", n)) => {
                let count = n
                    .parse()
                    .with_context(|| format!("--shard {s}: N is a number"))?;
                let index = match env("SLURM_ARRAY_TASK_ID")? {
                    Some(id) => id - env("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0),
                    None => env("JOB_COMPLETION_INDEX")?.context(
                        "--shard auto/N: neither SLURM_ARRAY_TASK_ID nor JOB_COMPLETION_INDEX is set",
                    )?,
                };
                (index, count)
            }
            Some((i, n)) => (
                i.parse()
                    .with_context(|| format!("--shard {s}: expected I/N, e.g. 0/4"))?,
                n.parse()
                    .with_context(|| format!("--shard {s}: expected I/N, e.g. 0/4"))?,
            ),
            None => bail!("--shard {s}: expected I/N (I from 0 to N−1), auto or auto/N"),
        };
        if count == 0 || index >= count {
            bail!("--shard {index}/{count}: the index runs from 0 to N−1 and N is at least 1");
        }
        Ok(ShardSpec { index, count })
    }

    /// This shard's part of `len` items: contiguous, sizes differing by at most one.
    pub fn slice(&self, len: usize) -> Range<usize> {
        len * self.index / self.count..len * (self.index + 1) / self.count
    }
}

/// What one shard wrote: `.biodc/shards/<run>/<index>.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShardRecord {
    pub verb: String,
    pub params: serde_json::Value,
    pub parent: String,
    pub index: usize,
    pub count: usize,
    pub host: String,
    /// Seconds since the Unix epoch when the shard started.
    pub started: u64,
    pub seconds: f64,
    /// Objects the result names (kept by `gc` while the run is pending).
    pub objects: Vec<ObjectId>,
    /// The stage's part of the result.
    pub result: serde_json::Value,
    /// The batch script that ran this shard (`biodc slurm`), if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_script: Option<String>,
}

/// A stage whose work can be split into shards.
pub trait Sharded: Stage {
    /// Computes `spec`'s part of a run on `version`: the objects it wrote and its result.
    fn run_shard(
        repo: &Repo,
        version: &DatasetVersion,
        params: &Self::Params,
        spec: ShardSpec,
    ) -> Result<(Vec<ObjectId>, serde_json::Value)>;

    /// The next version and its record from every shard's result (in shard order), the same as
    /// an unsharded run on `version` gives.
    fn gather(
        repo: &Repo,
        head: CommitId,
        version: DatasetVersion,
        params: &Self::Params,
        results: &[serde_json::Value],
    ) -> Result<(Next, Self::Report)>;
}

/// The name of a run: verb, parameters and parent.
pub fn run_key(verb: &str, params: &serde_json::Value, parent: CommitId) -> String {
    let text = format!("{verb}\0{params}\0{parent}");
    format!("{verb}-{}", &blake3::hash(text.as_bytes()).to_hex()[..16])
}

fn shards_dir(repo: &Repo) -> PathBuf {
    repo.dot().join("shards")
}

/// What `biodc <verb> --shard I/N` prints and returns.
#[derive(Debug, Clone, Serialize)]
pub struct ShardReport {
    pub run: String,
    pub verb: String,
    pub index: usize,
    pub count: usize,
    pub parent: String,
    pub seconds: f64,
    pub file: String,
}

/// Runs shard `spec` of `S` with `params` on HEAD, without the lock; writes its record.
pub fn run_shard<S: Sharded>(
    repo: &Repo,
    params: &S::Params,
    spec: ShardSpec,
) -> Result<ShardReport> {
    let started = std::time::Instant::now();
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (head, version) = repo.version(None)?;
    let value = serde_json::to_value(params)?;
    let (objects, result) = S::run_shard(repo, &version, params, spec)?;
    repo.store.sync()?;
    // Named by the shard record from now on, not by this process.
    repo.store.keep_created();
    let run = run_key(S::VERB, &value, head);
    let record = ShardRecord {
        verb: S::VERB.into(),
        params: value,
        parent: head.to_string(),
        index: spec.index,
        count: spec.count,
        host: hostname(),
        started: since_epoch,
        seconds: started.elapsed().as_secs_f64(),
        objects,
        result,
        job_script: crate::slurm::job_script(),
    };
    let dir = shards_dir(repo).join(&run);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let file = dir.join(format!("{}.json", spec.index));
    let mut tmp = tempfile::NamedTempFile::new_in(&dir)?;
    std::io::Write::write_all(&mut tmp, &serde_json::to_vec_pretty(&record)?)?;
    tmp.as_file().sync_all()?;
    tmp.persist(&file)
        .with_context(|| format!("writing {}", file.display()))?;
    Ok(ShardReport {
        run,
        verb: S::VERB.into(),
        index: spec.index,
        count: spec.count,
        parent: head.to_string(),
        seconds: record.seconds,
        file: file.display().to_string(),
    })
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "unknown".into())
}

/// Every pending run: its name and the records found (unparsable files are errors).
pub fn pending_runs(repo: &Repo) -> Result<BTreeMap<String, Vec<ShardRecord>>> {
    let mut out = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(shards_dir(repo)) else {
        return Ok(out);
    };
    for e in entries {
        let dir = e?.path();
        if !dir.is_dir() {
            continue;
        }
        let run = dir.file_name().unwrap().to_string_lossy().into_owned();
        let mut records = Vec::new();
        for f in std::fs::read_dir(&dir)? {
            let path = f?.path();
            if path.extension().is_none_or(|x| x != "json") {
                continue;
            }
            let r: ShardRecord = serde_json::from_slice(&std::fs::read(&path)?)
                .with_context(|| format!("{}: not a shard record", path.display()))?;
            records.push(r);
        }
        records.sort_by_key(|r| r.index);
        out.insert(run, records);
    }
    Ok(out)
}

/// Objects of pending runs whose parent is still a branch's tip or HEAD (kept by `gc`), and
/// the names of the other runs (abandoned: `gc` removes them).
pub fn live_objects(repo: &Repo) -> Result<(Vec<ObjectId>, Vec<String>)> {
    let mut tips: Vec<String> = repo
        .history
        .refs()?
        .into_iter()
        .filter(|(name, _)| name.starts_with("refs/heads/"))
        .map(|(_, id)| id.to_string())
        .collect();
    tips.push(repo.head()?.to_string());
    let (mut keep, mut abandoned) = (Vec::new(), Vec::new());
    for (run, records) in pending_runs(repo)? {
        if records.iter().all(|r| tips.contains(&r.parent)) && !records.is_empty() {
            keep.extend(records.into_iter().flat_map(|r| r.objects));
        } else {
            abandoned.push(run);
        }
    }
    Ok((keep, abandoned))
}

/// Removes the shard data of `runs`.
pub fn remove_runs(repo: &Repo, runs: &[String]) -> Result<()> {
    for run in runs {
        let dir = shards_dir(repo).join(run);
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    Ok(())
}

#[derive(Debug, Clone, Serialize)]
pub struct GatherReport {
    pub run: String,
    pub verb: String,
    pub shards: usize,
    pub commit: String,
    pub summary: String,
}

/// The records of `run` (or of the one pending run whose parent is `head`), checked complete
/// and consistent.
fn complete_run(
    repo: &Repo,
    head: CommitId,
    run: Option<&str>,
) -> Result<(String, Vec<ShardRecord>)> {
    let mut runs = pending_runs(repo)?;
    let name = match run {
        Some(r) => r.to_string(),
        None => {
            let here: Vec<&String> = runs
                .iter()
                .filter(|(_, rs)| rs.iter().any(|r| r.parent == head.to_string()))
                .map(|(n, _)| n)
                .collect();
            match here.as_slice() {
                [one] => one.to_string(),
                [] if runs.is_empty() => bail!("no sharded run is pending (run `biodc VERB --shard I/N` first)"),
                [] => bail!(
                    "no pending sharded run was computed on HEAD ({}): {} (their shards were computed on another version; run them again on this one, or `biodc gc` to drop them)",
                    &head.to_string()[..12],
                    runs.iter()
                        .map(|(n, rs)| format!("{n} on {}", rs.first().map_or("?", |r| &r.parent[..12])))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                many => bail!(
                    "several sharded runs are pending on HEAD: {}; name one with --run",
                    many.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                ),
            }
        }
    };
    let records = runs
        .remove(&name)
        .with_context(|| format!("no pending sharded run named {name:?}"))?;
    let first = records.first().context("the run has no shard record")?;
    let (verb, count) = (first.verb.clone(), first.count);
    for r in &records {
        let key = CommitId::from_hex(r.parent.as_bytes())
            .map(|p| run_key(&r.verb, &r.params, p))
            .ok();
        if key.as_deref() != Some(name.as_str()) || r.count != count || r.verb != verb {
            bail!(
                "shard {} in .biodc/shards/{name} belongs to another run (verb {}, {} shards, parameters or parent differ): remove it and run that shard again",
                r.index,
                r.verb,
                r.count
            );
        }
    }
    if first.parent != head.to_string() {
        bail!(
            "run {name} was computed on {}, but HEAD is {}: its shards describe another version; run them again on this one (or check out {} to gather)",
            &first.parent[..12],
            &head.to_string()[..12],
            &first.parent[..12]
        );
    }
    let have: Vec<usize> = records.iter().map(|r| r.index).collect();
    if let Some(twice) = have.windows(2).find(|w| w[0] == w[1]) {
        bail!(
            "run {name} ({verb}) holds shard {}/{count} twice (two records in .biodc/shards/{name} say so): remove the stray file, then gather",
            twice[0]
        );
    }
    let missing: Vec<String> = (0..count)
        .filter(|i| !have.contains(i))
        .map(|i| format!("{i}/{count}"))
        .collect();
    if !missing.is_empty() {
        bail!(
            "run {name} ({verb}) is missing shards {}: run them (`biodc {verb} … --shard I/{count}`), then gather",
            missing.join(", ")
        );
    }
    Ok((name, records))
}

/// Commits the complete pending run `run` (default: the one computed on HEAD).
pub fn gather(repo: &Repo, run: Option<&str>) -> Result<GatherReport> {
    let mut name = String::new();
    let mut verb = String::new();
    let mut shards = 0;
    let mut summary = String::new();
    let (commit, ()) = super::run(repo, |repo, head, version| {
        let (n, records) = complete_run(repo, head, run)?;
        let this_verb = &records[0].verb;
        let stage = super::registered(this_verb)
            .with_context(|| format!("{this_verb} runs cannot be gathered by this biodc"))?;
        let results: Vec<serde_json::Value> = records.iter().map(|r| r.result.clone()).collect();
        let next = stage.gather(repo, head, version, &records[0].params, &results)?;
        let s = next
            .as_ref()
            .map(|(_, r)| r.summary.clone())
            .unwrap_or_default();
        let next = next.map(|(v, mut record)| {
            record.shards = records
                .iter()
                .map(|r| ShardInfo {
                    index: r.index,
                    host: r.host.clone(),
                    started: r.started,
                    seconds: r.seconds,
                })
                .collect();
            record.job_script = records.iter().find_map(|r| r.job_script.clone());
            (v, record)
        });
        name = n;
        verb = records[0].verb.clone();
        shards = records.len();
        summary = s;
        Ok((next, ()))
    })?;
    remove_runs(repo, std::slice::from_ref(&name))?;
    Ok(GatherReport {
        run: name,
        verb,
        shards,
        commit: commit.map(|c| c.to_string()).unwrap_or_default(),
        summary,
    })
}

/// Parses a shard's result.
pub fn result<T: DeserializeOwned>(verb: &str, v: &serde_json::Value) -> Result<T> {
    serde_json::from_value(v.clone())
        .with_context(|| format!("a {verb} shard's result does not parse with this biodc"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_cover_everything_once_in_order() {
        for len in [0, 1, 5, 7, 100] {
            for count in 1..6 {
                let mut next = 0;
                for index in 0..count {
                    let r = ShardSpec { index, count }.slice(len);
                    assert_eq!(r.start, next);
                    next = r.end;
                }
                assert_eq!(next, len);
            }
        }
    }

    #[test]
    fn specs_parse_and_bad_ones_are_refused() {
        assert_eq!(
            ShardSpec::parse("2/3").unwrap(),
            ShardSpec { index: 2, count: 3 }
        );
        for bad in ["3/3", "0/0", "a/3", "1", "1/2/3"] {
            assert!(ShardSpec::parse(bad).is_err(), "{bad}");
        }
    }
}

//! A biodc project on disk: the `.biodc/` folder with its object store, git history, caches,
//! config and lock.

use crate::history::{CommitId, History};
use crate::lock::RepoLock;
use crate::store::Store;
use crate::version::{DatasetVersion, StageRecord};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Name of the folder that holds a project's repository.
pub const DOT: &str = ".biodc";

/// `.biodc/config.toml`: user settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// Default patch edge for `import`.
    pub patch_size: usize,
    /// Default model preset for `pretrain`.
    pub model_preset: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            patch_size: 224,
            model_preset: "tiny".into(),
        }
    }
}

/// An open biodc repository.
pub struct Repo {
    dot: PathBuf,
    pub store: Store,
    pub history: History,
    pub config: Config,
}

impl Repo {
    /// Creates a repository in `dir` and commits the empty first version.
    pub fn init(dir: &Path, config: Config) -> Result<Repo> {
        let repo = Repo::create(dir, config)?;
        let version = DatasetVersion::empty(repo.config.patch_size);
        let stage = repo.stage_record("init", serde_json::json!({}), None, "init: empty dataset");
        let lock = repo.lock()?;
        repo.commit(&lock, None, &version, &stage)?;
        drop(lock);
        Ok(repo)
    }

    /// Creates the folders of a repository in `dir`, with no version yet (a clone fills them).
    pub fn create(dir: &Path, config: Config) -> Result<Repo> {
        let dot = dir.join(DOT);
        if dot.exists() {
            bail!("{} already holds a biodc repository", dir.display());
        }
        std::fs::create_dir_all(&dot).with_context(|| format!("creating {}", dot.display()))?;
        std::fs::write(dot.join("config.toml"), toml::to_string_pretty(&config)?)?;
        let history = History::init(&dot.join("git"))?;
        let store = Store::open(&dot.join("objects"))?;
        Ok(Repo {
            dot,
            store,
            history,
            config,
        })
    }

    /// Opens the repository of `start` or of the nearest parent folder that has one.
    pub fn discover(start: &Path) -> Result<Repo> {
        let start = start
            .canonicalize()
            .with_context(|| format!("{} does not exist", start.display()))?;
        for dir in start.ancestors() {
            if dir.join(DOT).join("git").is_dir() {
                return Repo::open(&dir.join(DOT));
            }
        }
        bail!(
            "not a biodc repository (nor any parent): {} — run `biodc init` first",
            start.display()
        )
    }

    fn open(dot: &Path) -> Result<Repo> {
        let config_path = dot.join("config.toml");
        let config = match std::fs::read_to_string(&config_path) {
            Ok(text) => toml::from_str(&text)
                .with_context(|| format!("{}: malformed config", config_path.display()))?,
            Err(_) => Config::default(),
        };
        let store = Store::open(&dot.join("objects"))?;
        crate::remote::attach_partial_source(dot, &store)?;
        Ok(Repo {
            dot: dot.to_path_buf(),
            store,
            history: History::open(&dot.join("git"))?,
            config,
        })
    }

    /// The `.biodc` folder.
    pub fn dot(&self) -> &Path {
        &self.dot
    }

    /// The rebuildable caches (`.biodc/cache.sled`).
    pub fn cache(&self) -> Result<crate::cache::Cache> {
        crate::cache::Cache::open(&self.dot.join("cache.sled"))
    }

    /// `.biodc/pending/<stage>-<name>.json`: the checkpoint of work a killed run can resume.
    /// Its `state` field names an object that `gc` keeps.
    pub fn pending_path(&self, stage: &str, name: &str) -> PathBuf {
        self.dot
            .join("pending")
            .join(format!("{stage}-{name}.json"))
    }

    /// Stores `state` (the checkpoint of resumable work) so that it outlives a failed run — it
    /// is named by the pending file, not by a commit — and atomically writes `meta(state)` as
    /// the pending file `path` (from [`Repo::pending_path`]).
    pub fn save_pending<T: Serialize>(
        &self,
        path: &Path,
        state: &[u8],
        meta: impl FnOnce(crate::store::ObjectId) -> T,
    ) -> Result<()> {
        use crate::store::{Filter, Kind};
        let (id, _) = self
            .store
            .put(Kind::Checkpoint, Filter::Shuffle(4), state)?;
        self.store.sync()?;
        self.store.keep_created();
        std::fs::create_dir_all(path.parent().expect("a pending file has a folder"))?;
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&meta(id))?)?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    }

    /// Objects named by pending checkpoints (the `state` of each; kept by `gc`).
    pub fn pending_objects(&self) -> Result<Vec<crate::store::ObjectId>> {
        #[derive(Deserialize)]
        struct Pending {
            state: crate::store::ObjectId,
        }
        let Ok(entries) = std::fs::read_dir(self.dot.join("pending")) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for e in entries {
            let path = e?.path();
            if let Ok(p) = serde_json::from_slice::<Pending>(&std::fs::read(&path)?) {
                out.push(p.state);
            }
        }
        Ok(out)
    }

    /// The project folder (parent of `.biodc`).
    pub fn root(&self) -> &Path {
        self.dot.parent().expect(".biodc has a parent")
    }

    /// Takes the write lock (and clears git lock files a killed writer may have left). Objects
    /// this process wrote before are no longer its to roll back: only those written under the
    /// lock are (see [`Store::roll_back`]).
    pub fn lock(&self) -> Result<RepoLock> {
        let lock = RepoLock::acquire(&self.dot.join("lock"))?;
        self.history.clear_stale_locks()?;
        self.store.keep_created();
        Ok(lock)
    }

    /// HEAD's commit; every repository has one from `init` on.
    pub fn head(&self) -> Result<CommitId> {
        self.history
            .head()?
            .context("HEAD has no commit: the repository was not initialised by biodc")
    }

    /// The dataset version at `rev` (default HEAD).
    pub fn version(&self, rev: Option<&str>) -> Result<(CommitId, DatasetVersion)> {
        let id = match rev {
            Some(r) => self.history.resolve(r)?,
            None => self.head()?,
        };
        Ok((id, DatasetVersion::load(&self.history, id)?))
    }

    /// A stage record for `verb` with this process's argv, threads and version filled in.
    pub fn stage_record(
        &self,
        verb: &str,
        params: serde_json::Value,
        seed: Option<u64>,
        summary: &str,
    ) -> StageRecord {
        StageRecord {
            verb: verb.into(),
            argv: std::env::args().collect(),
            params,
            parent: None,
            inputs: Default::default(),
            outputs: Default::default(),
            seed,
            threads: rayon::current_num_threads(),
            biodc_version: env!("CARGO_PKG_VERSION").into(),
            timings_ms: Default::default(),
            summary: summary.into(),
            merged: None,
            shards: Vec::new(),
            job_script: None,
            device: crate::nn::device::recorded(verb),
        }
    }

    /// Commits `version` on top of `parent` with `stage` as its record: makes the new objects
    /// durable, writes the tree and commit, moves HEAD last. Only a holder of the write lock
    /// commits.
    pub fn commit(
        &self,
        _held: &RepoLock,
        parent: Option<CommitId>,
        version: &DatasetVersion,
        stage: &StageRecord,
    ) -> Result<CommitId> {
        let mut stage = stage.clone();
        stage.parent = parent.map(|p| p.to_string());
        let files = version.to_files(&stage)?;
        // A committed version must read back; one that would not is refused here, before
        // anything names it.
        DatasetVersion::from_files(files.clone())
            .context("the new version would not read back; nothing was committed")?;
        self.store.sync()?;
        crate::failpoint::hit("repo:before-commit");
        let message = format!(
            "{}\n\n{}",
            stage.summary,
            serde_json::to_string_pretty(&stage.params)?
        );
        let merged = match &stage.merged {
            Some(hex) => Some(
                CommitId::from_hex(hex.as_bytes())
                    .with_context(|| format!("merged version {hex:?} is not a commit id"))?,
            ),
            None => None,
        };
        let id = self.history.commit(&files, &message, parent, merged)?;
        self.store.keep_created();
        Ok(id)
    }
}

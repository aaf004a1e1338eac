//! `clone`: a new repository from a remote, with all, none or some of its data.

use super::fetch::{fetch, CloneData, FetchReport};
use super::remote_branches;
use crate::history::HeadTarget;
use crate::remote::{self, RemoteEntry, Remotes};
use crate::repo::{Config, Repo};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::path::Path;

#[derive(Debug, Clone, Serialize)]
pub struct CloneReport {
    pub url: String,
    pub dir: String,
    pub branch: String,
    pub commit: String,
    pub partial: bool,
    pub fetch: FetchReport,
}

/// Makes a new repository in `dir` from the remote at `url` (named `origin`), checked out at
/// its `main` branch (or its first). On failure the new folder is removed.
pub fn clone(url: &str, dir: &Path, data: &CloneData, jobs: usize) -> Result<CloneReport> {
    if dir.join(crate::repo::DOT).exists() {
        bail!("{} already holds a biodc repository", dir.display());
    }
    let cwd = std::env::current_dir()?;
    let backend = remote::open(url, &cwd, false)?;
    match backend.get(remote::MARKER)? {
        Some(marker) => remote::check_format(&marker, url)?,
        None => bail!("{url} is not a biodc remote (no {} there)", remote::MARKER),
    }
    let config: Config = match backend.get(remote::CONFIG)? {
        Some(b) => toml::from_str(&String::from_utf8_lossy(&b))
            .context("the remote's config.toml is malformed")?,
        None => Config::default(),
    };
    let branches = remote_branches(&backend)?;
    let Some((branch, tip)) = branches
        .get_key_value("main")
        .or_else(|| branches.iter().next())
        .map(|(b, id)| (b.clone(), *id))
    else {
        bail!("{url} holds no branch yet");
    };
    drop(backend);
    let made_dir = !dir.exists();
    let result = (|| -> Result<CloneReport> {
        let repo = Repo::create(dir, config)?;
        // A relative folder URL means relative to where clone ran: stored absolute.
        let stored_url = match remote::Location::parse(url, &cwd)? {
            remote::Location::Folder(p) => p.to_string_lossy().into_owned(),
            remote::Location::S3 { .. } => url.to_string(),
        };
        let remotes = Remotes {
            remotes: [("origin".to_string(), RemoteEntry { url: stored_url })].into(),
            partial: (*data != CloneData::All).then(|| "origin".to_string()),
        };
        remotes.save(repo.dot())?;
        // History first (data of sets needs a checked-out version), then the data asked for.
        let mut report = fetch(&repo, "origin", &CloneData::None, jobs)?;
        repo.history
            .move_ref(&format!("refs/heads/{branch}"), tip, None)?;
        repo.history.set_head(HeadTarget::Branch(branch.clone()))?;
        if *data != CloneData::None {
            let more = fetch(&repo, "origin", data, jobs)?;
            report.objects_received = more.objects_received;
            report.bytes_received += more.bytes_received;
        }
        Ok(CloneReport {
            url: url.into(),
            dir: dir.display().to_string(),
            branch: branch.clone(),
            commit: tip.to_string(),
            partial: *data != CloneData::All,
            fetch: report,
        })
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(dir.join(crate::repo::DOT));
        if made_dir {
            let _ = std::fs::remove_dir(dir);
        }
    }
    result
}

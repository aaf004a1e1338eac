//! `biodc slurm`: a sharded run as a Slurm job array plus a gather job that starts when every
//! array task succeeded. biodc schedules nothing itself; it writes two batch scripts and hands
//! them to `sbatch`.

use crate::repo::Repo;
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Verbs that run in shards, and whether their shards are gathered into a commit.
pub const SHARDED_VERBS: &[(&str, bool)] = &[
    ("import", true),
    ("embed", true),
    ("hunt", true),
    ("monitor", true),
    ("segment", false),
];

/// Environment variable through which an array task tells its shard record which script ran it.
pub const JOB_SCRIPT_ENV: &str = "BIODC_JOB_SCRIPT";

#[derive(Debug, Clone)]
pub struct SlurmParams {
    /// The verb and its arguments, as typed after `biodc`.
    pub command: Vec<String>,
    pub shards: usize,
    /// Extra `sbatch` options for both jobs (e.g. `--partition=gpu`).
    pub sbatch: Vec<String>,
    /// Write the scripts and print the commands, submit nothing.
    pub dry_run: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct SlurmReport {
    pub array_script: String,
    pub gather_script: Option<String>,
    pub array_job: Option<String>,
    pub gather_job: Option<String>,
    /// The sbatch command lines (run, or to run with --dry-run).
    pub commands: Vec<String>,
}

fn quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=,+@%".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

fn script(job: &str, array: Option<usize>, log_dir: &Path, root: &Path, line: &str) -> String {
    let mut s = String::from("#!/bin/bash\n");
    s.push_str(&format!("#SBATCH --job-name={job}\n"));
    if let Some(n) = array {
        s.push_str(&format!("#SBATCH --array=0-{}\n", n - 1));
        s.push_str(&format!(
            "#SBATCH --output={}/%x-%A_%a.out\n",
            log_dir.display()
        ));
    } else {
        s.push_str(&format!(
            "#SBATCH --output={}/%x-%j.out\n",
            log_dir.display()
        ));
    }
    s.push_str("set -euo pipefail\n");
    s.push_str(&format!("cd {}\n", quote(&root.display().to_string())));
    s.push_str(&format!("exec {line}\n"));
    s
}

/// Writes the array (and gather) scripts under `.biodc/slurm/` and submits them.
pub fn submit(repo: &Repo, p: &SlurmParams) -> Result<SlurmReport> {
    let Some(verb) = p.command.first() else {
        bail!("name the verb to shard: biodc slurm --shards N -- embed --model mae");
    };
    let Some(&(_, gathered)) = SHARDED_VERBS.iter().find(|(v, _)| v == verb) else {
        bail!(
            "{verb} does not run in shards; these do: {}",
            SHARDED_VERBS
                .iter()
                .map(|(v, _)| *v)
                .collect::<Vec<_>>()
                .join(", ")
        );
    };
    if p.command
        .iter()
        .any(|a| a == "--shard" || a.starts_with("--shard="))
    {
        bail!("leave --shard out: each array task passes --shard auto");
    }
    if p.shards == 0 {
        bail!("--shards must be at least 1");
    }
    let exe = std::env::current_exe().context("finding the biodc executable")?;
    let root = repo.root().canonicalize()?;
    let dir = repo.dot().canonicalize()?.join("slurm");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let name = format!("{stamp}-{verb}");
    let array_path = dir.join(format!("{name}.sh"));
    let args: Vec<String> = p.command.iter().map(|a| quote(a)).collect();
    let line = format!(
        "env {JOB_SCRIPT_ENV}={} {} {} --shard auto",
        quote(&array_path.display().to_string()),
        quote(&exe.display().to_string()),
        args.join(" ")
    );
    std::fs::write(
        &array_path,
        script(&format!("biodc-{verb}"), Some(p.shards), &dir, &root, &line),
    )?;
    let gather_path: Option<PathBuf> = gathered.then(|| dir.join(format!("{name}-gather.sh")));
    if let Some(g) = &gather_path {
        let line = format!("{} gather", quote(&exe.display().to_string()));
        std::fs::write(g, script("biodc-gather", None, &dir, &root, &line))?;
    }
    let sbatch = |extra: &[String], path: &Path| -> Vec<String> {
        let mut c = vec!["sbatch".to_string(), "--parsable".into()];
        c.extend(p.sbatch.iter().cloned());
        c.extend(extra.iter().cloned());
        c.push(path.display().to_string());
        c
    };
    let mut report = SlurmReport {
        array_script: array_path.display().to_string(),
        gather_script: gather_path.as_ref().map(|g| g.display().to_string()),
        array_job: None,
        gather_job: None,
        commands: Vec::new(),
    };
    let array_cmd = sbatch(&[], &array_path);
    if p.dry_run {
        report.commands.push(array_cmd.join(" "));
        if let Some(g) = &gather_path {
            report
                .commands
                .push(sbatch(&["--dependency=afterok:ARRAY_JOB_ID".into()], g).join(" "));
        }
        return Ok(report);
    }
    let id = run_sbatch(&array_cmd)?;
    report.commands.push(array_cmd.join(" "));
    if let Some(g) = &gather_path {
        let cmd = sbatch(&[format!("--dependency=afterok:{id}")], g);
        report.gather_job = Some(run_sbatch(&cmd)?);
        report.commands.push(cmd.join(" "));
    }
    report.array_job = Some(id);
    Ok(report)
}

/// Runs an sbatch command line; returns the job id it prints.
fn run_sbatch(cmd: &[String]) -> Result<String> {
    let out = Command::new(&cmd[0])
        .args(&cmd[1..])
        .output()
        .with_context(|| {
            "running sbatch (is Slurm installed here? --dry-run writes the scripts only)"
        })?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            cmd.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let id = text
        .trim()
        .split(';')
        .next()
        .unwrap_or_default()
        .to_string();
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit()) {
        bail!("sbatch printed no job id: {text:?}");
    }
    Ok(id)
}

/// The text of the script that started this process as an array task, if one did.
pub fn job_script() -> Option<String> {
    std::fs::read_to_string(std::env::var(JOB_SCRIPT_ENV).ok()?).ok()
}

//! Verbs about versions: init, status, log, show, diff, reproduce, report.

use super::{print_json, short};
use crate::inspect;
use crate::repo::{Config, Repo};
use crate::version::{diff as version_diff, Changes, VersionDiff};
use anyhow::Result;
use clap::Args;
use std::path::Path;

/// Create a repository (.biodc/) in the current folder.
#[derive(Debug, Args)]
#[command(after_help = "Example:\n  mkdir cohort && cd cohort && biodc init --patch 224")]
pub struct InitArgs {
    /// Default patch edge in pixels for imports.
    #[arg(long, default_value_t = 224)]
    pub patch: usize,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn init(dir: &Path, a: InitArgs) -> Result<i32> {
    std::fs::create_dir_all(dir)?;
    let config = Config {
        patch_size: a.patch,
        ..Config::default()
    };
    let repo = Repo::init(dir, config)?;
    if a.json {
        return print_json(&serde_json::json!({
            "repository": repo.dot(),
            "patch": a.patch,
            "version": repo.head()?.to_string(),
        }));
    }
    println!(
        "initialised biodc repository in {} (patch {}; version {})",
        repo.dot().display(),
        a.patch,
        short(&repo.head()?)
    );
    Ok(0)
}

/// Show HEAD: branch, counts of stacks, patches, annotations and sets.
#[derive(Debug, Args)]
#[command(after_help = "Example:\n  biodc status --json | jq .counts.patches")]
pub struct StatusArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn status(dir: &Path, a: StatusArgs) -> Result<i32> {
    let repo = Repo::discover(dir)?;
    let s = inspect::status(&repo)?;
    if a.json {
        return print_json(&s);
    }
    match &s.branch {
        Some(b) => println!("On branch {b} at {} — {}", short(&s.head), s.summary),
        None => println!("HEAD detached at {} — {}", short(&s.head), s.summary),
    }
    let c = &s.counts;
    println!(
        "{} stacks, {} patches, {} annotations",
        c.stacks, c.patches, c.annotations
    );
    for (round, n) in &c.rounds {
        println!("  round {round}: {n} masks");
    }
    if !c.sets.is_empty() {
        println!("sets: {}", c.sets.join(", "));
    }
    for (set, missing) in c.unannotated_in_sets.iter().filter(|(_, m)| **m > 0) {
        println!("  set {set}: {missing} patches still lack a mask");
    }
    if !c.models.is_empty() {
        println!("models: {}", c.models.join(", "));
    }
    if !c.embeddings.is_empty() {
        println!("embeddings: {}", c.embeddings.join(", "));
    }
    if !c.other_manifests.is_empty() {
        println!("other manifests: {}", c.other_manifests.join(", "));
    }
    if !s.alarms.is_empty() {
        println!("RCA alarms ({} stacks, worst first):", s.alarms.len());
        for r in &s.alarms {
            println!(
                "  {:<28} RCA {:.3} < {} with {}",
                r.stack, r.rca, r.threshold, r.model
            );
        }
    }
    Ok(0)
}

/// List versions from HEAD (or REV) back to the first.
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  biodc log --oneline\n  biodc log main~3 -n 5 --json")]
pub struct LogArgs {
    /// Start from this revision instead of HEAD.
    pub rev: Option<String>,
    /// One line per version.
    #[arg(long)]
    pub oneline: bool,
    /// At most N versions.
    #[arg(short = 'n', long)]
    pub max: Option<usize>,
    /// One line per version with the model scored and the mean/min RCA.
    #[arg(long)]
    pub metrics: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn log(dir: &Path, a: LogArgs) -> Result<i32> {
    let repo = Repo::discover(dir)?;
    let infos = inspect::log(&repo, a.rev.as_deref(), a.max)?;
    if a.metrics {
        let rows = infos
            .iter()
            .map(|i| inspect::version_metrics(&repo, i))
            .collect::<Result<Vec<_>>>()?;
        if a.json {
            return print_json(&rows);
        }
        println!(
            "{:<12}  {:<10} {:>6} {:>8} {:>8} {:>6}  subject",
            "version", "model", "stacks", "mean RCA", "min RCA", "alarms"
        );
        for r in rows {
            let f = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v:.3}"));
            println!(
                "{:<12}  {:<10} {:>6} {:>8} {:>8} {:>6}  {}",
                short(&r.id),
                if r.models.is_empty() {
                    "-".to_string()
                } else {
                    r.models.join(",")
                },
                r.stacks,
                f(r.mean_rca),
                f(r.min_rca),
                r.alarms,
                r.subject
            );
        }
        return Ok(0);
    }
    if a.json {
        return print_json(&infos);
    }
    for info in infos {
        let subject = info.message.lines().next().unwrap_or_default();
        if a.oneline {
            println!("{} {subject}", short(&info.id));
        } else {
            let merge = if info.parents.len() > 1 {
                let ps: Vec<String> = info.parents.iter().map(short).collect();
                format!("Merge:  {}\n", ps.join(" "))
            } else {
                String::new()
            };
            println!(
                "version {}\n{merge}Author: {}\nDate:   {}\n\n    {subject}\n",
                info.id,
                info.author,
                format_time(info.time)
            );
        }
    }
    Ok(0)
}

fn format_time(secs: i64) -> String {
    gix::date::Time::new(secs, 0).format_or_unix(gix::date::time::format::ISO8601)
}

/// Show one version: its stage record and what it holds.
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  biodc show\n  biodc show HEAD~1 --json")]
pub struct ShowArgs {
    /// Revision (default HEAD).
    pub rev: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn show(dir: &Path, a: ShowArgs) -> Result<i32> {
    let repo = Repo::discover(dir)?;
    let (shown, v) = inspect::show(&repo, a.rev.as_deref())?;
    if a.json {
        return print_json(&shown);
    }
    println!("version {}", shown.commit.id);
    if let Some(s) = &shown.stage {
        println!(
            "stage:   {} ({} threads, biodc {})",
            s.verb, s.threads, s.biodc_version
        );
        println!("command: {}", s.argv.join(" "));
        println!("params:  {}", serde_json::to_string(&s.params)?);
        for (k, ms) in &s.timings_ms {
            println!("time:    {k} {:.1} s", *ms as f64 / 1000.0);
        }
        println!("\n    {}\n", s.summary);
    }
    if let Some(s) = &shown.stage {
        for name in s.outputs.keys().filter_map(|k| k.strip_prefix("models/")) {
            if let Some(m) = v.models.get(name) {
                print_loss_curve(name, &m.loss_curve);
                for (k, val) in &m.metrics {
                    println!("  {k}: {val:.4}");
                }
                println!();
            }
        }
    }
    println!(
        "{} stacks, {} patches, {} annotations; sets: {}",
        shown.stacks,
        shown.patches,
        shown.annotations,
        if shown.sets.is_empty() {
            "none".into()
        } else {
            shown.sets.join(", ")
        }
    );
    Ok(0)
}

/// A text chart of a loss curve: up to 12 rows of step, loss and a bar.
fn print_loss_curve(name: &str, curve: &[(u64, f32)]) {
    if curve.is_empty() {
        return;
    }
    println!("loss curve of {name} (step, mean training loss):");
    let max = curve
        .iter()
        .map(|c| c.1)
        .fold(f32::MIN, f32::max)
        .max(1e-12);
    let rows = curve.len().min(12);
    for r in 0..rows {
        let (step, loss) = curve[r * (curve.len() - 1) / (rows - 1).max(1)];
        let bar = "#".repeat(((loss / max) * 40.0).round().max(0.0) as usize);
        println!("  {step:>7} {loss:>9.4} {bar}");
    }
}

/// What changed from version A to version B (default HEAD).
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  biodc diff HEAD~1 HEAD\n  biodc diff v1 --json")]
pub struct DiffArgs {
    pub a: String,
    /// Default HEAD.
    pub b: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn diff(dir: &Path, a: DiffArgs) -> Result<i32> {
    let repo = Repo::discover(dir)?;
    let from = repo.history.resolve(&a.a)?;
    let to = match &a.b {
        Some(b) => repo.history.resolve(b)?,
        None => repo.head()?,
    };
    let d: VersionDiff = version_diff(&repo.history, from, to)?;
    if a.json {
        return print_json(&d);
    }
    println!("diff {}..{}", short(&d.from), short(&d.to));
    if d.is_empty() {
        println!("no differences");
    }
    for (what, c) in [
        ("stacks", &d.stacks),
        ("patches", &d.patches),
        ("annotations", &d.annotations),
        ("sets", &d.sets),
        ("models", &d.models),
        ("embeddings", &d.embeddings),
        ("other", &d.other),
    ] {
        print_changes(what, c);
    }
    for m in &d.model_metrics {
        println!("model {}:", m.name);
        let empty = Default::default();
        let (ma, mb) = (
            m.a.as_ref().unwrap_or(&empty),
            m.b.as_ref().unwrap_or(&empty),
        );
        let keys: std::collections::BTreeSet<&String> = ma.keys().chain(mb.keys()).collect();
        println!("  {:<24} {:>9} {:>9} {:>9}", "metric", "A", "B", "change");
        for k in keys {
            let (x, y) = (ma.get(k), mb.get(k));
            let f = |v: Option<&f64>| v.map_or("-".to_string(), |v| format!("{v:.4}"));
            let change = x
                .zip(y)
                .map_or("".to_string(), |(x, y)| format!("{:+.4}", y - x));
            println!("  {:<24} {:>9} {:>9} {:>9}", k, f(x), f(y), change);
        }
    }
    if !d.rca.is_empty() {
        println!("RCA per stack (largest drop first):");
        println!("  {:<28} {:>14} {:>14} {:>8}", "stack", "A", "B", "change");
        for r in &d.rca {
            let f = |v: Option<f64>, m: &Option<String>| match (v, m) {
                (Some(v), Some(m)) => format!("{v:.3} ({m})"),
                _ => "-".to_string(),
            };
            println!(
                "  {:<28} {:>14} {:>14} {:>8}",
                r.stack,
                f(r.a, &r.model_a),
                f(r.b, &r.model_b),
                r.change.map_or("".to_string(), |c| format!("{c:+.3}"))
            );
        }
    }
    Ok(0)
}

fn print_changes(what: &str, c: &Changes) {
    if c.is_empty() {
        return;
    }
    println!(
        "{what}: +{} -{} ~{}",
        c.added.len(),
        c.removed.len(),
        c.changed.len()
    );
    const SHOWN: usize = 20;
    for (mark, names) in [("+", &c.added), ("-", &c.removed), ("~", &c.changed)] {
        for n in names.iter().take(SHOWN) {
            println!("  {mark} {n}");
        }
        if names.len() > SHOWN {
            println!("  {mark} … and {} more", names.len() - SHOWN);
        }
    }
}

/// Re-run the stage that made a version and check it comes out the same.
///
/// Reads REV's stage.json, runs that verb again with the same parameters, seed and thread
/// count on REV's parent, and compares every output object by hash. Prints "bit-identical", or
/// per output what differs and by how much (largest weight difference, Dice between masks, RCA
/// change, …). Nothing is committed; HEAD does not move; the re-run's objects are removed.
/// Exit status 1 when something differs.
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  biodc reproduce HEAD\n  biodc reproduce 3f2a9c1b --json")]
pub struct ReproduceArgs {
    /// Revision to reproduce (default HEAD).
    pub rev: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn reproduce(dir: &Path, a: ReproduceArgs) -> Result<i32> {
    let repo = Repo::discover(dir)?;
    let r = crate::stages::reproduce::reproduce(&repo, a.rev.as_deref().unwrap_or("HEAD"))?;
    let status = if r.identical { 0 } else { 1 };
    if a.json {
        print_json(&r)?;
        return Ok(status);
    }
    if r.identical {
        println!(
            "{} ({} on {}, {} threads): bit-identical — {} outputs compared in {:.1} s",
            short(&r.commit),
            r.verb,
            short(&r.parent),
            r.threads,
            r.compared,
            r.seconds
        );
    } else {
        println!(
            "{} ({} on {}, {} threads): {} of {} outputs differ",
            short(&r.commit),
            r.verb,
            short(&r.parent),
            r.threads,
            r.differences.len(),
            r.compared
        );
        for d in &r.differences {
            println!("  {}: {}", d.output, d.detail);
        }
    }
    if let Some(note) = &r.note {
        println!("note: {note}");
    }
    Ok(status)
}

/// Write a static HTML report of a version.
///
/// History with stage records, core-set gallery, hunt candidates as triptychs, loss curves, Dice and RCA per model, RCA histogram with
/// alarms, QC summary. Charts are inline SVG, pictures PNG files beside the page; nothing is
/// loaded from the network.
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  biodc report --out report/ && xdg-open report/index.html\n  biodc report v1 --out report-v1/"
)]
pub struct ReportArgs {
    /// Revision (default HEAD).
    pub rev: Option<String>,
    /// Output folder (created).
    #[arg(long)]
    pub out: std::path::PathBuf,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn report(dir: &Path, a: ReportArgs) -> Result<i32> {
    let repo = Repo::discover(dir)?;
    let r = crate::report::html::report(&repo, a.rev.as_deref(), &a.out)?;
    if a.json {
        return print_json(&r);
    }
    println!(
        "report of {} ({} versions, {} pictures) → {}",
        short(&r.commit),
        r.versions,
        r.pictures.len(),
        r.html.display()
    );
    Ok(0)
}

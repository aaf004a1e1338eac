//! `biodc report`: one static HTML page (charts inline as SVG) and PNG pictures of a version —
//! its history with stage records, the core-set gallery, the hunt's candidates as triptychs,
//! loss curves, Dice and RCA per model, the RCA histogram with alarms, the QC summary. Nothing
//! is fetched from elsewhere, so the folder can be mailed or opened offline.

use super::gallery::{contact_sheet, triptych};
use super::svg::{esc, histogram, line_chart};
use crate::io::Plane;
use crate::output::OutDir;
use crate::repo::Repo;
use crate::version::{DatasetVersion, StageRecord};
use anyhow::Result;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::{Path, PathBuf};

/// Candidates shown per hunt set.
const CANDIDATES_SHOWN: usize = 12;

#[derive(Debug, Clone, Serialize)]
pub struct ReportSummary {
    pub commit: String,
    pub html: PathBuf,
    /// PNG files written, relative to the output folder.
    pub pictures: Vec<String>,
    pub versions: usize,
}

const STYLE: &str = "body{font-family:sans-serif;max-width:1180px;margin:2em auto;padding:0 1em;color:#222}\
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:left}\
th{background:#f3f3f3}td.n{text-align:right;font-variant-numeric:tabular-nums}.alarm{color:#c00;font-weight:bold}\
img{max-width:100%;image-rendering:pixelated;border:1px solid #ddd}figure{display:inline-block;margin:4px}\
figcaption{font-size:11px;max-width:460px;word-break:break-all}code{font-size:12px}\
details pre{font-size:11px;background:#f8f8f8;padding:6px;max-width:1000px;overflow:auto}\
svg{border:1px solid #eee;margin:4px}h2{border-bottom:1px solid #ddd;padding-bottom:3px}";

fn stage_of(repo: &Repo, id: crate::history::CommitId) -> Result<Option<StageRecord>> {
    let tree = repo.history.tree_of(id)?;
    tree.get("stage.json")
        .map(|b| -> Result<StageRecord> { Ok(serde_json::from_slice(&repo.history.blob(*b)?)?) })
        .transpose()
}

fn f3(v: f64) -> String {
    format!("{v:.3}")
}

/// The history from the first version to `tip`, drawn as a chain of labelled dots, with each
/// version's stage record in a table below.
fn history_section(repo: &Repo, tip: crate::history::CommitId, html: &mut String) -> Result<usize> {
    let mut chain = repo.history.first_parent_chain(tip)?;
    chain.reverse();
    let refs = repo.history.refs()?;
    let row = 26.0;
    let height = row * chain.len() as f64 + 10.0;
    let _ = write!(
        html,
        r#"<h2>History</h2><svg xmlns="http://www.w3.org/2000/svg" width="1100" height="{height}" font-family="sans-serif" font-size="12">"#
    );
    let mut rows = String::new();
    for (i, id) in chain.iter().enumerate() {
        let info = repo.history.info(*id)?;
        let stage = stage_of(repo, *id)?;
        let verb = stage
            .as_ref()
            .map_or("init".to_string(), |s| s.verb.clone());
        let y = 15.0 + row * i as f64;
        let names: Vec<String> = refs
            .iter()
            .filter(|(_, c)| c == id)
            .map(|(n, _)| n.rsplit('/').next().unwrap_or(n).to_string())
            .collect();
        if i + 1 < chain.len() {
            let _ = write!(
                html,
                r##"<line x1="20" y1="{y}" x2="20" y2="{}" stroke="#888" stroke-width="2"/>"##,
                y + row
            );
        }
        let colour = match verb.as_str() {
            "train" | "pretrain" => "#d62728",
            "annotate" => "#2ca02c",
            "monitor" => "#9467bd",
            "hunt" | "coreset" => "#ff7f0e",
            _ => "#1f77b4",
        };
        let subject = info.message.lines().next().unwrap_or_default();
        let _ = write!(
            html,
            r#"<circle cx="20" cy="{y}" r="6" fill="{colour}"/><text x="34" y="{:.0}"><tspan font-family="monospace">{}</tspan> <tspan font-weight="bold">{}</tspan> {}</text>"#,
            y + 4.0,
            &info.id[..10],
            esc(&if names.is_empty() {
                verb.clone()
            } else {
                format!("{verb} [{}]", names.join(", "))
            }),
            esc(&subject.chars().take(120).collect::<String>())
        );
        if let Some(s) = stage {
            let time: u64 = s.timings_ms.values().sum();
            let _ = write!(
                rows,
                "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td class=n>{}</td><td class=n>{}</td><td class=n>{:.1}</td><td><details><summary>parameters</summary><pre>{}</pre></details></td></tr>",
                &info.id[..12],
                esc(&s.verb),
                esc(&s.summary),
                s.seed.map_or("-".into(), |v| v.to_string()),
                s.threads,
                time as f64 / 1000.0,
                esc(&serde_json::to_string_pretty(&s.params)?)
            );
        }
    }
    html.push_str("</svg>");
    let _ = write!(
        html,
        "<h3>Stage records</h3><p>Every version can be re-run with <code>biodc reproduce VERSION</code>.</p><table><tr><th>version</th><th>verb</th><th>outcome</th><th>seed</th><th>threads</th><th>seconds</th><th></th></tr>{rows}</table>"
    );
    Ok(chain.len())
}

fn gallery_section(
    repo: &Repo,
    v: &DatasetVersion,
    out: &OutDir,
    html: &mut String,
    pictures: &mut Vec<String>,
) -> Result<()> {
    html.push_str("<h2>Core set</h2>");
    let Some(set) = v.sets.get("coreset") else {
        html.push_str("<p>No core set yet (<code>biodc coreset -k 25</code>).</p>");
        return Ok(());
    };
    let mut planes: Vec<Plane> = Vec::new();
    let mut size = 0;
    for id in &set.patches {
        let (info, plane) = v.patch_plane(&repo.store, id)?;
        size = info.shape[1];
        planes.push(plane);
    }
    out.write("coreset.png", true, |p| contact_sheet(p, &planes, size))?;
    pictures.push("coreset.png".into());
    let annotated = v.current_masks();
    let done = set
        .patches
        .iter()
        .filter(|p| annotated.contains_key(p.as_str()))
        .count();
    let _ = write!(
        html,
        r#"<p>{} patches picked by {} ({} annotated), in pick order.</p><img src="coreset.png" alt="core set">"#,
        set.patches.len(),
        esc(&set.method),
        done
    );
    Ok(())
}

fn candidates_section(
    repo: &Repo,
    v: &DatasetVersion,
    out: &OutDir,
    html: &mut String,
    pictures: &mut Vec<String>,
) -> Result<()> {
    html.push_str("<h2>Critical candidates</h2>");
    let hunts: Vec<(&String, &crate::version::PatchSet)> = v
        .sets
        .iter()
        .filter(|(_, s)| s.objects.contains_key("prediction"))
        .collect();
    if hunts.is_empty() {
        html.push_str("<p>No hunt yet (<code>biodc hunt --model M0</code>).</p>");
        return Ok(());
    }
    let annotated = v.current_masks();
    for (name, set) in hunts {
        let model = set
            .extra
            .get("model")
            .and_then(|m| m.as_str())
            .unwrap_or("?");
        let _ = write!(
            html,
            "<h3>{}</h3><p>Top {} of {} patches by MC-dropout uncertainty of {}; panels: image, prediction (red), uncertainty (heat). Showing {}.</p>",
            esc(name),
            set.patches.len(),
            set.extra.get("scored").and_then(|s| s.as_u64()).unwrap_or(0),
            esc(model),
            CANDIDATES_SHOWN.min(set.patches.len())
        );
        for (rank, id) in set.patches.iter().take(CANDIDATES_SHOWN).enumerate() {
            let (Some(p), Some(u)) = (
                set.objects["prediction"].get(id),
                set.objects.get("uncertainty").and_then(|m| m.get(id)),
            ) else {
                continue;
            };
            let (info, plane) = v.patch_plane(&repo.store, id)?;
            let size = info.shape[1];
            let mask = repo.store.get(p)?;
            let unc = repo.store.get_f32_matrix(u, size, size)?;
            let file = format!("{name}/{id}.png");
            out.write(&file, true, |p| triptych(p, &plane, &mask, &unc, size))?;
            pictures.push(file.clone());
            let fixed = annotated.get(id.as_str()).map_or(String::new(), |a| {
                format!(", corrected in round {}", a.round)
            });
            let _ = write!(
                html,
                r#"<figure><img src="{}" alt="{}" width="{}"><figcaption>#{} {} — score {:.3}{}</figcaption></figure>"#,
                esc(&file),
                esc(id),
                (3 * size + 8).min(460),
                rank + 1,
                esc(id),
                set.scores.get(rank).copied().unwrap_or(f64::NAN),
                esc(&fixed)
            );
        }
    }
    Ok(())
}

fn models_section(v: &DatasetVersion, rca: &[crate::version::RcaRecord], html: &mut String) {
    html.push_str("<h2>Models</h2>");
    if v.models.is_empty() {
        html.push_str("<p>No model yet (<code>biodc pretrain</code>).</p>");
        return;
    }
    let curves: Vec<(String, Vec<(f64, f64)>)> = v
        .models
        .iter()
        .map(|(n, m)| {
            (
                n.clone(),
                m.loss_curve
                    .iter()
                    .map(|&(s, l)| (s as f64, l as f64))
                    .collect(),
            )
        })
        .collect();
    for kind in ["mae", "segmenter"] {
        let these: Vec<(String, Vec<(f64, f64)>)> = curves
            .iter()
            .filter(|(n, _)| v.models[n].kind == kind)
            .cloned()
            .collect();
        if !these.is_empty() {
            let _ = write!(
                html,
                "<h3>Training loss ({})</h3>{}",
                if kind == "mae" {
                    "MAE, masked-patch MSE"
                } else {
                    "segmenters, BCE + Dice"
                },
                line_chart(&these, "step", "loss")
            );
        }
    }
    let mut keys: Vec<&String> = v.models.values().flat_map(|m| m.metrics.keys()).collect();
    keys.sort();
    keys.dedup();
    let mut by_model: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for r in rca {
        by_model.entry(r.model.as_str()).or_default().push(r.rca);
    }
    // One column per model, one row per metric: models are few, metrics many.
    let names: Vec<&String> = v.models.keys().collect();
    html.push_str("<h3>Metrics per model</h3><table><tr><th></th>");
    for n in &names {
        let _ = write!(html, "<th>{}</th>", esc(n));
    }
    html.push_str("</tr>");
    let row = |html: &mut String, label: &str, cell: &dyn Fn(&str) -> String| {
        let _ = write!(html, "<tr><th>{}</th>", esc(label));
        for n in &names {
            let _ = write!(html, "<td class=n>{}</td>", cell(n));
        }
        html.push_str("</tr>");
    };
    row(html, "kind", &|n| esc(&v.models[n].kind));
    row(html, "converged", &|n| match v.models[n]
        .training
        .get("converged")
        .and_then(|c| c.as_bool())
    {
        Some(true) => "yes".into(),
        Some(false) => "no".into(),
        None => String::new(),
    });
    row(html, "from", &|n| {
        esc(v.models[n]
            .parent
            .as_deref()
            .map_or("-", |p| p.split('@').next().unwrap_or(p)))
    });
    for k in &keys {
        row(html, k, &|n| {
            v.models[n]
                .metrics
                .get(*k)
                .map_or(String::new(), |x| f3(*x))
        });
    }
    let rca_stat =
        |n: &str, f: &dyn Fn(&[f64]) -> String| by_model.get(n).map_or(String::new(), |s| f(s));
    row(html, "stacks monitored", &|n| {
        rca_stat(n, &|s| s.len().to_string())
    });
    row(html, "mean RCA", &|n| {
        rca_stat(n, &|s| f3(s.iter().sum::<f64>() / s.len() as f64))
    });
    row(html, "min RCA", &|n| {
        rca_stat(n, &|s| f3(s.iter().copied().fold(f64::MAX, f64::min)))
    });
    html.push_str("</table>");
}

fn rca_section(rca: &[crate::version::RcaRecord], html: &mut String) {
    html.push_str("<h2>Monitoring (reverse classification accuracy)</h2>");
    if rca.is_empty() {
        html.push_str(
            "<p>No stack monitored yet (<code>biodc monitor --model M1 new/*.tif</code>).</p>",
        );
        return;
    }
    let threshold = rca.iter().map(|r| r.threshold).fold(0.0, f64::max);
    let scores: Vec<f64> = rca.iter().map(|r| r.rca).collect();
    let alarms: Vec<&crate::version::RcaRecord> = rca.iter().filter(|r| r.alarm).collect();
    let _ = write!(
        html,
        "<p>Latest RCA of {} stacks; {} under the alarm threshold.</p>{}",
        rca.len(),
        alarms.len(),
        histogram(
            &scores,
            20,
            Some(threshold),
            "RCA (best Dice over the reference set)"
        )
    );
    html.push_str("<table><tr><th>stack</th><th>model</th><th>RCA</th><th>mean Dice</th><th>best reference</th><th>foreground</th><th></th></tr>");
    for r in rca {
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td><td class=n>{}</td><td class=n>{}</td><td>{}</td><td class=n>{:.1} %</td><td>{}</td></tr>",
            esc(&r.stack),
            esc(&r.model),
            f3(r.rca),
            f3(r.mean_dice),
            esc(&r.best_patch),
            100.0 * r.foreground,
            if r.alarm { "<span class=alarm>ALARM</span>" } else { "" }
        );
    }
    html.push_str("</table>");
}

fn qc_section(v: &DatasetVersion, html: &mut String) -> Result<()> {
    html.push_str("<h2>Quality control</h2>");
    if !v.other.contains_key(crate::version::QC_FILE) {
        html.push_str("<p>No QC yet (<code>biodc qc</code>).</p>");
        return Ok(());
    }
    let lines = v.qc_lines()?;
    let mut by_flag: BTreeMap<&str, usize> = BTreeMap::new();
    for l in &lines {
        for f in &l.flags {
            *by_flag.entry(f.as_str()).or_default() += 1;
        }
    }
    let total: usize = v.patches.values().map(Vec::len).sum();
    let _ = write!(html, "<p>{} of {total} patches flagged (flags only; nothing is deleted).</p><table><tr><th>flag</th><th>patches</th></tr>", lines.len());
    for (f, n) in by_flag {
        let _ = write!(html, "<tr><td>{}</td><td class=n>{n}</td></tr>", esc(f));
    }
    html.push_str("</table>");
    let mut per_condition: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let flagged: std::collections::BTreeSet<&str> =
        lines.iter().map(|l| l.patch.as_str()).collect();
    for (name, s) in &v.stacks {
        let c = s
            .conditions
            .first()
            .cloned()
            .unwrap_or_else(|| "none".into());
        let patches = v.patches.get(name).map_or(&[][..], Vec::as_slice);
        let e = per_condition.entry(c).or_default();
        e.0 += patches.len();
        e.1 += patches
            .iter()
            .filter(|p| flagged.contains(p.id.as_str()))
            .count();
    }
    html.push_str("<table><tr><th>condition</th><th>patches</th><th>flagged</th></tr>");
    for (c, (n, f)) in per_condition {
        let _ = write!(
            html,
            "<tr><td>{}</td><td class=n>{n}</td><td class=n>{f}</td></tr>",
            esc(&c)
        );
    }
    html.push_str("</table>");
    Ok(())
}

/// Writes `out/index.html` and its pictures for version `rev` (default HEAD).
pub fn report(repo: &Repo, rev: Option<&str>, out: &Path) -> Result<ReportSummary> {
    let (id, v) = repo.version(rev)?;
    let out = &OutDir::create(out)?;
    let rca = crate::version::latest_by_stack(&v.rca_lines()?);
    let mut pictures = Vec::new();
    let mut html = String::new();
    let counts = crate::version::counts(&repo.history, id)?;
    let _ = write!(
        html,
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>biodc report {}</title><style>{STYLE}</style></head><body><h1>biodc report — version <code>{}</code></h1><p>{} stacks, {} patches, {} annotations; sets: {}; models: {}.</p>",
        &id.to_string()[..12],
        &id.to_string()[..12],
        counts.stacks,
        counts.patches,
        counts.annotations,
        esc(&counts.sets.join(", ")),
        esc(&counts.models.join(", "))
    );
    let versions = history_section(repo, id, &mut html)?;
    gallery_section(repo, &v, out, &mut html, &mut pictures)?;
    candidates_section(repo, &v, out, &mut html, &mut pictures)?;
    models_section(&v, &v.rca_lines()?, &mut html);
    rca_section(&rca, &mut html);
    qc_section(&v, &mut html)?;
    let _ = write!(
        html,
        "<p style='color:#888;font-size:11px'>biodc {}</p></body></html>",
        env!("CARGO_PKG_VERSION")
    );
    let path = out.write_bytes("index.html", true, html.as_bytes())?;
    Ok(ReportSummary {
        commit: id.to_string(),
        html: path,
        pictures,
        versions,
    })
}

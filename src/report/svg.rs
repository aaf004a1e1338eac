//! Small inline SVG charts for the HTML report: line charts and histograms with axes, no
//! external assets.

use std::fmt::Write;

/// Escapes text for HTML and SVG.
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const PALETTE: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf",
];
const W: f64 = 560.0;
const H: f64 = 260.0;
const LEFT: f64 = 56.0;
const BOTTOM: f64 = 36.0;
const TOP: f64 = 24.0;
const RIGHT: f64 = 16.0;

/// A tidy tick step for a range.
fn step(range: f64) -> f64 {
    if range <= 0.0 || !range.is_finite() {
        return 1.0;
    }
    let raw = range / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag)
}

struct Frame {
    x0: f64,
    x1: f64,
    y0: f64,
    y1: f64,
}

impl Frame {
    fn px(&self, x: f64) -> f64 {
        LEFT + (x - self.x0) / (self.x1 - self.x0).max(1e-12) * (W - LEFT - RIGHT)
    }
    fn py(&self, y: f64) -> f64 {
        H - BOTTOM - (y - self.y0) / (self.y1 - self.y0).max(1e-12) * (H - BOTTOM - TOP)
    }

    /// Axes, grid and tick labels.
    fn axes(&self, out: &mut String, xlabel: &str, ylabel: &str) {
        let (sx, sy) = (step(self.x1 - self.x0), step(self.y1 - self.y0));
        let mut t = (self.y0 / sy).ceil() * sy;
        while t <= self.y1 + 1e-9 {
            let y = self.py(t);
            let _ = write!(
                out,
                r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end">{}</text>"##,
                W - RIGHT,
                LEFT - 4.0,
                y + 4.0,
                trim(t)
            );
            t += sy;
        }
        let mut t = (self.x0 / sx).ceil() * sx;
        while t <= self.x1 + 1e-9 {
            let x = self.px(t);
            let _ = write!(
                out,
                r#"<text x="{x:.1}" y="{:.1}" font-size="11" text-anchor="middle">{}</text>"#,
                H - BOTTOM + 14.0,
                trim(t)
            );
            t += sx;
        }
        let _ = write!(
            out,
            r##"<line x1="{LEFT}" y1="{b:.1}" x2="{r:.1}" y2="{b:.1}" stroke="#333"/><line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{b:.1}" stroke="#333"/><text x="{cx:.1}" y="{:.1}" font-size="12" text-anchor="middle">{}</text><text x="14" y="{cy:.1}" font-size="12" text-anchor="middle" transform="rotate(-90 14 {cy:.1})">{}</text>"##,
            H - 4.0,
            esc(xlabel),
            esc(ylabel),
            b = H - BOTTOM,
            r = W - RIGHT,
            cx = (LEFT + W - RIGHT) / 2.0,
            cy = (TOP + H - BOTTOM) / 2.0,
        );
    }
}

fn trim(v: f64) -> String {
    let s = format!("{v:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".into()
    } else {
        s.to_string()
    }
}

fn open() -> String {
    format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif">"#
    )
}

/// A line chart of named series of (x, y) points.
pub fn line_chart(series: &[(String, Vec<(f64, f64)>)], xlabel: &str, ylabel: &str) -> String {
    let pts = series
        .iter()
        .flat_map(|(_, p)| p.iter())
        .filter(|(x, y)| x.is_finite() && y.is_finite());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in pts {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    if x0 > x1 {
        return String::from("<p>(no data)</p>");
    }
    let f = Frame {
        x0,
        x1: if x1 > x0 { x1 } else { x0 + 1.0 },
        y0: y0.min(0.0),
        y1: if y1 > y0.min(0.0) {
            y1 * 1.05
        } else {
            y0 + 1.0
        },
    };
    let mut out = open();
    f.axes(&mut out, xlabel, ylabel);
    for (k, (name, p)) in series.iter().enumerate() {
        let colour = PALETTE[k % PALETTE.len()];
        let path: Vec<String> = p
            .iter()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .map(|&(x, y)| format!("{:.1},{:.1}", f.px(x), f.py(y)))
            .collect();
        let _ = write!(
            out,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{}"/><text x="{:.1}" y="{:.1}" font-size="12" fill="{colour}" text-anchor="end">{}</text>"#,
            path.join(" "),
            W - RIGHT - 4.0,
            TOP + 14.0 * (k as f64 + 1.0),
            esc(name)
        );
    }
    out.push_str("</svg>");
    out
}

/// A histogram of values in [0, 1] (`bins` bins) with a dashed vertical line at `mark`;
/// bars left of the mark are red.
pub fn histogram(values: &[f64], bins: usize, mark: Option<f64>, xlabel: &str) -> String {
    let bins = bins.max(1);
    let mut counts = vec![0usize; bins];
    for v in values.iter().filter(|v| v.is_finite()) {
        counts[((v.clamp(0.0, 1.0) * bins as f64) as usize).min(bins - 1)] += 1;
    }
    let top = *counts.iter().max().unwrap_or(&1) as f64;
    let f = Frame {
        x0: 0.0,
        x1: 1.0,
        y0: 0.0,
        y1: top.max(1.0),
    };
    let mut out = open();
    f.axes(&mut out, xlabel, "stacks");
    for (b, &c) in counts.iter().enumerate() {
        let (a, z) = (b as f64 / bins as f64, (b + 1) as f64 / bins as f64);
        let red = mark.is_some_and(|m| z <= m + 1e-12);
        let _ = write!(
            out,
            r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{}"/>"#,
            f.px(a) + 1.0,
            f.py(c as f64),
            (f.px(z) - f.px(a) - 2.0).max(0.5),
            f.py(0.0) - f.py(c as f64),
            if red { "#d62728" } else { "#1f77b4" }
        );
    }
    if let Some(m) = mark {
        let x = f.px(m);
        let _ = write!(
            out,
            r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#000" stroke-dasharray="4 3"/><text x="{:.1}" y="{:.1}" font-size="11">alarm {}</text>"##,
            H - BOTTOM,
            x + 3.0,
            TOP + 10.0,
            trim(m)
        );
    }
    out.push_str("</svg>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_are_well_formed_svg() {
        let l = line_chart(
            &[("a<b".into(), vec![(0.0, 1.0), (10.0, 0.5)])],
            "step",
            "loss",
        );
        assert!(l.starts_with("<svg") && l.ends_with("</svg>") && l.contains("a&lt;b"));
        assert!(line_chart(&[], "x", "y").contains("no data"));
        let h = histogram(&[0.1, 0.5, 0.55, 0.9], 10, Some(0.6), "RCA");
        assert_eq!(h.matches("<rect").count(), 10);
        assert_eq!(h.matches("#d62728").count(), 6);
        assert_eq!(step(1.0), 0.2);
        assert_eq!(trim(0.5), "0.5");
    }
}

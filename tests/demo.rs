//! The README's first command: `biodc demo` runs the whole loop at tiny scale, records every
//! stage, M1 is at least as good as M0 on the held-back stacks, and the report is complete
//! (every picture it references exists and decodes as PNG; it renders in headless Chromium
//! where one is installed).

mod common;

use std::path::Path;

/// The `src` attributes of an HTML page.
fn sources(html: &str) -> Vec<String> {
    html.split("src=\"")
        .skip(1)
        .map(|rest| rest.split('"').next().unwrap().to_string())
        .collect()
}

/// (width, height, RGBA pixels) of a PNG file.
fn decode_png(path: &Path) -> (u32, u32, Vec<u8>) {
    let decoder = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    ));
    let mut reader = decoder
        .read_info()
        .unwrap_or_else(|e| panic!("{} is not a PNG: {e}", path.display()));
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    buf.truncate(info.buffer_size());
    let channels = info.color_type.samples();
    let rgba = buf
        .chunks(channels)
        .flat_map(|c| match channels {
            1 | 2 => [c[0], c[0], c[0], 255],
            3 => [c[0], c[1], c[2], 255],
            _ => [c[0], c[1], c[2], c[3]],
        })
        .collect();
    (info.width, info.height, rgba)
}

#[test]
fn demo_runs_the_whole_loop_and_writes_a_complete_report() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    let out = common::ok(tmp.path(), &["demo", "--dir", dir.to_str().unwrap()]);
    println!("{out}");
    for stage in [
        "synth", "init", "import", "pretrain", "embed", "qc", "coreset", "annotate", "train",
        "hunt", "monitor", "report",
    ] {
        assert!(
            out.lines().any(|l| l.contains(&format!("] {stage}"))),
            "no {stage} line in:\n{out}"
        );
    }
    let project = dir.join("project");
    let log = common::json(&project, &["log", "--json"]);
    let verbs: Vec<String> = log
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .map(|c| {
            let m = c["message"].as_str().unwrap();
            m.split([':', ' ']).next().unwrap().to_string()
        })
        .collect();
    assert_eq!(
        verbs,
        [
            "init", "import", "pretrain", "embed", "qc", "coreset", "annotate", "train", "hunt",
            "annotate", "train", "import", "monitor", "monitor"
        ]
    );
    let status = common::json(&project, &["status", "--json"]);
    assert_eq!(status["counts"]["rounds"]["core"], 25);
    assert_eq!(status["counts"]["rounds"]["critical-1"], 3);

    let outcome: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("demo.json")).unwrap()).unwrap();
    let (m0, m1) = (
        outcome["dice_m0"].as_f64().unwrap(),
        outcome["dice_m1"].as_f64().unwrap(),
    );
    assert!(
        m1 >= m0,
        "M1 Dice {m1:.3} < M0 Dice {m0:.3} on held-back stacks"
    );
    assert_eq!(outcome["rca_pairs"], 12);

    // The report references only pictures that exist and decode as PNG.
    let report = dir.join("report");
    let html = std::fs::read_to_string(report.join("index.html")).unwrap();
    let srcs = sources(&html);
    assert!(srcs.len() >= 4, "too few pictures: {srcs:?}");
    for s in &srcs {
        assert!(
            !s.contains("://") && !s.starts_with('/'),
            "external reference {s}"
        );
        let (w, h, _) = decode_png(&report.join(s));
        assert!(w > 0 && h > 0);
    }
    assert!(!html.contains("href=\"http") && !html.contains("<script src"));
    for section in [
        "History",
        "Core set",
        "Critical candidates",
        "Models",
        "Monitoring",
        "Quality control",
    ] {
        assert!(
            html.contains(&format!("<h2>{section}")),
            "no {section} section"
        );
    }
    common::ok(&project, &["fsck"]);

    // Rendered in headless Chromium (Debian's), where installed: the screenshot is not blank.
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/screenshot-report.sh");
    let shot = tmp.path().join("report.png");
    let run = std::process::Command::new(&script)
        .arg(&report)
        .arg(&shot)
        .output()
        .unwrap();
    if run.status.code() == Some(2) {
        eprintln!(
            "skipping the Chromium screenshot: {}",
            String::from_utf8_lossy(&run.stderr)
        );
        return;
    }
    assert!(
        run.status.success(),
        "screenshot failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let (w, h, px) = decode_png(&shot);
    let pixels = (w * h) as usize;
    let inked = px
        .chunks(4)
        .filter(|p| p[0] < 200 || p[1] < 200 || p[2] < 200)
        .count();
    let mut colours: Vec<[u8; 3]> = px
        .chunks(4)
        .step_by(97)
        .map(|p| [p[0], p[1], p[2]])
        .collect();
    colours.sort();
    colours.dedup();
    println!(
        "screenshot {w}×{h}: {:.1} % inked, {} colours sampled",
        100.0 * inked as f64 / pixels as f64,
        colours.len()
    );
    assert!(inked * 50 > pixels, "the rendered report is (nearly) blank");
    assert!(
        colours.len() > 50,
        "the rendered report has almost no pictures"
    );
}

//! RCA on real microscopy with manual masks (docs/BENCHMARKS.md, "Real microscopy"): StarDist's
//! 512² nuclei image `img2d.tif` and its instance labels `mask2d.tif` (DSB 2018, BSD-3). The
//! top half plays the monitored stack, 112² crops of the bottom half with their manual masks
//! the reference set.
//! The top half's manual mask is scored as it is and degraded 12 ways (erosion, dilation,
//! whole nuclei dropped, flipped pixels); prints RCA beside the true Dice and their Pearson r.
//!
//!     python3 -m venv /tmp/sd && /tmp/sd/bin/pip download --no-deps stardist==0.9.2 -d /tmp/sd
//!     cd /tmp/sd && unzip -o stardist-0.9.2-*.whl 'stardist/data/*'
//!     cargo bench --bench rca_real -- /tmp/sd/stardist/data/images/img2d.tif /tmp/sd/stardist/data/images/mask2d.tif

use biodc::io::tiff::read_stack;
use biodc::pixel::{dice, morph, PixelClassifierParams};
use biodc::stages::monitor::rca;

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let (Some(img_path), Some(mask_path)) = (args.first(), args.get(1)) else {
        eprintln!(
            "usage: cargo bench --bench rca_real -- IMG2D.tif MASK2D.tif (see the file's header)"
        );
        return;
    };
    let img = read_stack(img_path.as_ref()).unwrap();
    let lab = read_stack(mask_path.as_ref()).unwrap();
    let [_, h, w] = img.info.shape;
    let pixels = img.planes[0].to_f32();
    let labels: Vec<u32> = lab.planes[0].to_f32().iter().map(|&v| v as u32).collect();
    let half = h / 2;
    let top: Vec<f32> = pixels[..half * w].to_vec();
    let top_labels = &labels[..half * w];
    let truth: Vec<u8> = top_labels.iter().map(|&l| (l > 0) as u8).collect();
    let t = 112;
    let mut refs = Vec::new();
    for y0 in [half, h - t] {
        for x0 in (0..=w - t).step_by((w - t) / 3) {
            let crop = |v: &dyn Fn(usize) -> f32| -> Vec<f32> {
                (0..t * t)
                    .map(|q| v((y0 + q / t) * w + x0 + q % t))
                    .collect()
            };
            let m: Vec<u8> = crop(&|q| (labels[q] > 0) as u8 as f32)
                .iter()
                .map(|&v| v as u8)
                .collect();
            if m.iter().any(|&v| v != 0) {
                refs.push((crop(&|q| pixels[q]), m));
            }
        }
    }
    let mut cases: Vec<(String, Vec<u8>)> = vec![("manual mask".into(), truth.clone())];
    for r in [1, 2, 3] {
        cases.push((format!("eroded r={r}"), morph(&truth, half, w, r, false)));
        cases.push((format!("dilated r={r}"), morph(&truth, half, w, r, true)));
    }
    for (k, keep) in [(3u32, "2/3"), (2, "1/2"), (4, "1/4")] {
        let kept: Vec<u8> = top_labels
            .iter()
            .map(|&l| {
                (l > 0
                    && if keep == "1/4" {
                        l % 4 == 0
                    } else {
                        l % k != 0
                    }) as u8
            })
            .collect();
        cases.push((format!("only {keep} of the nuclei"), kept));
    }
    for pct in [5u64, 15, 30] {
        let mut s = 0x9E37_79B9u64;
        let noisy = truth
            .iter()
            .map(|&v| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                if s % 100 < pct {
                    1 - v
                } else {
                    v
                }
            })
            .collect();
        cases.push((format!("{pct} % pixels flipped"), noisy));
    }
    let params = PixelClassifierParams::default();
    let (mut xs, mut ys) = (Vec::new(), Vec::new());
    println!("RCA on StarDist img2d ({h}×{w}): top half scored against {} manual 112² references from the bottom half", refs.len());
    println!("| prediction of the top half | true Dice | RCA |\n|---|---|---|");
    for (name, m) in &cases {
        let r = rca(
            std::slice::from_ref(&top),
            std::slice::from_ref(m),
            half,
            w,
            &refs,
            t,
            &params,
        )
        .unwrap();
        let d = dice(m, &truth);
        println!("| {name} | {d:.3} | {:.3} |", r.best);
        xs.push(r.best);
        ys.push(d);
    }
    let r = biodc::stats::pearson(&xs, &ys);
    let mae = biodc::stats::mean_abs_error(&xs, &ys);
    println!(
        "Pearson r(RCA, true Dice) = {r:.3} over {} predictions; mean abs error {mae:.3}",
        xs.len()
    );
}

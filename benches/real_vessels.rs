//! The loop on real retinal vessels (CHASE_DB1, STARE): the README workflow with default flags,
//! a simulated expert reading the manual masks, scored on the test images against the first
//! observer inside the field of view, beside the baselines a lab would compare with.
//!
//! ```sh
//! python3 ../shared/data/real-vessels/prepare.py --out /tmp/rv [--repo GITDIR]   # once
//! cargo bench --bench real_vessels -- --data /tmp/rv --datasets chase,stare --seeds 0,1,2 \
//!     [--torch /tmp/torchvenv/bin/python] [--kind unet|transunet|forest] [--select kcover|random|kcenter]
//!     [-k 7] [--critical hunted|random] [--hunt-score disagreement|entropy]
//!     [--triage most-wrong|lowest-dice] [--torch-steps N] [--out results.jsonl]
//! cargo bench --bench real_vessels -- --study critical --datasets chase --seeds 0,1,2
//! cargo bench --bench real_vessels -- --study selection --datasets chase --seeds 0,1,2
//! ```
//!
//! Per dataset and seed: init → import the training images → pretrain (MAE tiny, 5 epochs) →
//! embed → qc → coreset -k 7 → the expert annotates it → train M0 → hunt M0 (top 30) → the
//! expert corrects the 3 candidates with the most wrong pixels → train M1 from M0 → monitor both on the test images
//! (RCA, and the predictions scored against the truth). The loop's wall time is all of that.
//! Then, on the same annotated patches: a pixel forest (`train --kind forest`), Frangi
//! vesselness with a threshold tuned on the training images, the second observer, and (with
//! --torch) `benches/pytorch_unet.py` for the same training wall time as M0 + M1 (or, with
//! --torch-steps, a step budget: on a loaded machine wall time measures the load). Last, for
//! hunted vs random extras in the same run: M1' = M0 fine-tuned with M1's schedule on the core
//! set plus 3 random unannotated patches that qc did not flag.

use biodc::io::tiff::{read_binary_mask, read_stack};
use biodc::nn::data::normalize_patch;
use biodc::pixel::frangi;
use biodc::repo::{Config, Repo};
use biodc::segmentation::SegmentationModel;
use biodc::stages::{
    self, annotate, coreset, define_set, embed, hunt, import, monitor, pretrain, qc, segment, train,
};
use biodc::synth::expert::{triage, write_masks_from_folder, Triage};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Args {
    data: PathBuf,
    datasets: Vec<String>,
    seeds: Vec<u64>,
    torch: Option<String>,
    /// PyTorch trains this many steps instead of for biodc's training wall time.
    torch_steps: Option<u64>,
    kind: train::ModelKind,
    select: coreset::Method,
    k: usize,
    critical: String,
    out: Option<PathBuf>,
    keep: bool,
    /// `selection`: which patches to annotate, judged by a forest fitted on them.
    study: Option<String>,
    /// `critical` study: only these rules (all when empty).
    rules: Vec<String>,
    /// hunt's score and which 3 of its top 30 the expert corrects.
    hunt_score: hunt::Score,
    triage: Triage,
}

fn parse_args() -> Args {
    let mut a = Args {
        data: PathBuf::from("/tmp/rv"),
        datasets: vec!["chase".into()],
        seeds: vec![0, 1, 2],
        torch: None,
        torch_steps: None,
        kind: train::ModelKind::Unet,
        select: coreset::Method::Kcover,
        k: 7,
        critical: "hunted".into(),
        out: None,
        keep: false,
        study: None,
        rules: Vec::new(),
        hunt_score: hunt::HuntParams::default().score,
        triage: Triage::MostWrong,
    };
    let argv: Vec<String> = std::env::args()
        .skip(1)
        .filter(|s| s != "--bench")
        .collect();
    let mut i = 0;
    while i < argv.len() {
        let v = argv.get(i + 1).cloned().unwrap_or_default();
        match argv[i].as_str() {
            "--data" => a.data = v.into(),
            "--datasets" => a.datasets = v.split(',').map(String::from).collect(),
            "--seeds" => a.seeds = v.split(',').map(|s| s.parse().expect("seed")).collect(),
            "--torch" => a.torch = Some(v),
            "--torch-steps" => a.torch_steps = Some(v.parse().expect("--torch-steps")),
            "--kind" => a.kind = clap::ValueEnum::from_str(&v, true).expect("--kind"),
            "--select" => a.select = clap::ValueEnum::from_str(&v, true).expect("--select"),
            "-k" => a.k = v.parse().expect("-k"),
            "--critical" => a.critical = v,
            "--out" => a.out = Some(v.into()),
            "--study" => a.study = Some(v),
            "--rules" => a.rules = v.split(',').map(String::from).collect(),
            "--hunt-score" => {
                a.hunt_score = clap::ValueEnum::from_str(&v, true).expect("--hunt-score")
            }
            "--triage" => {
                a.triage = match v.as_str() {
                    "most-wrong" => Triage::MostWrong,
                    "lowest-dice" => Triage::LowestDice,
                    _ => panic!("--triage most-wrong|lowest-dice"),
                }
            }
            "--keep" => {
                a.keep = true;
                i += 1;
                continue;
            }
            other => panic!("unknown argument {other}"),
        }
        i += 2;
    }
    a
}

/// One image of a prepared split, as TIFFs under `split/{images,masks,masks_2nd,fov}`.
struct Item {
    image: PathBuf,
    mask: PathBuf,
    mask2: PathBuf,
    fov: PathBuf,
}

fn items(split: &Path) -> Vec<Item> {
    let mut ids: Vec<String> = std::fs::read_dir(split.join("images"))
        .unwrap_or_else(|e| panic!("{}: {e}", split.join("images").display()))
        .map(|e| {
            e.unwrap()
                .path()
                .file_stem()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    ids.sort();
    ids.into_iter()
        .map(|id| Item {
            image: split.join("images").join(format!("{id}.tif")),
            mask: split.join("masks").join(format!("{id}.tif")),
            mask2: split.join("masks_2nd").join(format!("{id}.tif")),
            fov: split.join("fov").join(format!("{id}.tif")),
        })
        .collect()
}

/// Dice of `pred` against `truth` inside `fov`.
fn dice_in(pred: &[u8], truth: &[u8], fov: &[u8]) -> f64 {
    let (mut inter, mut total) = (0u64, 0u64);
    for ((&p, &t), &f) in pred.iter().zip(truth).zip(fov) {
        if f != 0 {
            let (p, t) = ((p != 0) as u64, (t != 0) as u64);
            inter += p & t;
            total += p + t;
        }
    }
    if total == 0 {
        1.0
    } else {
        2.0 * inter as f64 / total as f64
    }
}

fn mean_sd(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    let sd = if v.len() > 1 {
        (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
    } else {
        0.0
    };
    (m, sd)
}

struct Truth {
    mask: Vec<u8>,
    mask2: Vec<u8>,
    fov: Vec<u8>,
    image: Vec<f32>,
    h: usize,
    w: usize,
}

fn load_truth(it: &Item) -> Truth {
    let img = read_stack(&it.image).unwrap();
    let [_, h, w] = img.info.shape;
    Truth {
        mask: read_binary_mask(&it.mask).unwrap().1,
        mask2: read_binary_mask(&it.mask2).unwrap().1,
        fov: read_binary_mask(&it.fov).unwrap().1,
        image: img.planes[0].to_f32(),
        h,
        w,
    }
}

/// Mean test Dice of a model segmenting each test image whole (windows, blended).
fn model_dice(model: &SegmentationModel, test: &[Truth]) -> Vec<f64> {
    test.iter()
        .map(|t| {
            let p = segment::segment_slice(model, &t.image, t.h, t.w, 8).unwrap();
            dice_in(&model.mask(&p), &t.mask, &t.fov)
        })
        .collect()
}

/// Frangi vesselness (σ 1–4) with the threshold that maximises pooled Dice on `train`.
fn frangi_dice(train: &[Truth], test: &[Truth]) -> Vec<f64> {
    let sigmas = [1.0, 2.0, 3.0, 4.0];
    let vess = |t: &Truth| -> Vec<f32> {
        // Vessels are dark on the green channel: invert so they are bright ridges.
        let inv: Vec<f32> = normalize_patch(&t.image).iter().map(|v| -v).collect();
        frangi::vesselness(&inv, t.h, t.w, &sigmas)
    };
    let train_v: Vec<Vec<f32>> = train.iter().map(vess).collect();
    let mut all: Vec<f32> = train_v
        .iter()
        .zip(train)
        .flat_map(|(v, t)| {
            v.iter()
                .zip(&t.fov)
                .filter(|(_, &f)| f != 0)
                .map(|(&x, _)| x)
        })
        .collect();
    all.sort_by(|a, b| a.total_cmp(b));
    let mut best = (0.0, 0.0f32);
    for q in 50..100 {
        let thr = all[all.len() * q / 100];
        let (mut inter, mut total) = (0u64, 0u64);
        for (v, t) in train_v.iter().zip(train) {
            for i in 0..v.len() {
                if t.fov[i] != 0 {
                    let p = (v[i] > thr) as u64;
                    let g = (t.mask[i] != 0) as u64;
                    inter += p & g;
                    total += p + g;
                }
            }
        }
        let d = 2.0 * inter as f64 / total.max(1) as f64;
        if d > best.0 {
            best = (d, thr);
        }
    }
    test.iter()
        .map(|t| {
            let m: Vec<u8> = vess(t).iter().map(|&v| (v > best.1) as u8).collect();
            dice_in(&m, &t.mask, &t.fov)
        })
        .collect()
}

fn run<T>(
    repo: &Repo,
    f: impl FnOnce(
        &Repo,
        biodc::history::CommitId,
        biodc::version::DatasetVersion,
    ) -> anyhow::Result<(stages::Next, T)>,
) -> T {
    stages::run(repo, f).unwrap().1
}

/// `train`'s default parameters for a model of `kind` named `name`.
fn train_params(
    kind: train::ModelKind,
    seed: u64,
    name: &str,
    from: &str,
    sets: Vec<String>,
) -> train::TrainParams {
    train::TrainParams {
        name: name.into(),
        kind,
        from: from.into(),
        sets,
        seed,
        ..train::TrainParams::default()
    }
}

/// The README workflow up to M0 in a fresh repository under `dir`: init, import the training
/// images, pretrain, embed, qc, coreset, the expert annotates the core set, train M0. Returns
/// the repository, M0's report and its training seconds; stage times go into `timings`.
#[allow(clippy::too_many_arguments)]
fn loop_to_m0(
    kind: train::ModelKind,
    select: coreset::Method,
    k: usize,
    seed: u64,
    train_items: &[Item],
    dir: &Path,
    timings: &mut BTreeMap<&'static str, f64>,
    lap: &mut Instant,
) -> (Repo, train::TrainReport, f64) {
    let mut tick = |name: &'static str, lap: &mut Instant| {
        timings.insert(name, lap.elapsed().as_secs_f64());
        *lap = Instant::now();
    };
    let project = dir.join("project");
    std::fs::create_dir_all(&project).unwrap();
    let truth_dir = train_items[0].mask.parent().unwrap().to_path_buf();
    let repo = Repo::init(&project, Config::default()).unwrap();
    let ip = import::ImportParams {
        paths: train_items.iter().map(|i| i.image.clone()).collect(),
        ..Default::default()
    };
    run(&repo, |r, h, v| import::import(r, h, v, &ip));
    tick("import", lap);
    // `biodc pretrain`'s defaults, as the README workflow runs it.
    let pp = pretrain::PretrainParams {
        seed,
        ..pretrain::PretrainParams::default()
    };
    run(&repo, |r, h, v| pretrain::pretrain(r, h, v, &pp, false));
    tick("pretrain", lap);
    let ep = embed::EmbedParams {
        model: "mae".into(),
        batch: 32,
        fresh: false,
    };
    run(&repo, |r, h, v| embed::embed(r, h, v, &ep));
    let qp = qc::QcParams {
        model: "mae".into(),
        coreset: "coreset".into(),
    };
    run(&repo, |r, h, v| qc::qc(r, h, v, &qp));
    let cp = coreset::CoresetParams {
        k,
        model: "mae".into(),
        neighbours: 50,
        name: "coreset".into(),
        method: select,
        seed,
        exclude: ["blank", "duplicate", "saturated", "blurred", "odd_texture"]
            .map(String::from)
            .to_vec(),
        per_condition: 0,
    };
    run(&repo, |r, h, v| coreset::coreset(r, h, v, &cp));
    tick("embed+qc+coreset", lap);
    let (_, v) = repo.version(None).unwrap();
    let core_masks = dir.join("masks-core");
    write_masks_from_folder(&truth_dir, &v, &v.sets["coreset"].patches, &core_masks).unwrap();
    let ap = annotate::AnnotateParams {
        dir: core_masks,
        round: "core".into(),
        annotator: "simulated-expert".into(),
        origin: None,
        labels: false,
        class: None,
    };
    run(&repo, |r, h, v| annotate::annotate(r, h, v, &ap));
    let t0 = Instant::now();
    let from = if kind == train::ModelKind::Transunet {
        "mae"
    } else {
        "none"
    };
    let m0 = run(&repo, |r, h, v| {
        train::train(
            r,
            h,
            v,
            &train_params(kind, seed, "M0", from, vec!["coreset".into()]),
        )
    });
    let seconds = t0.elapsed().as_secs_f64();
    tick("train M0", lap);
    (repo, m0, seconds)
}

/// Commits set `name` of `ids` and annotates them from the manual masks in `truth_dir`.
fn annotate_set(repo: &Repo, name: &str, ids: &[String], truth_dir: &Path, dir: &Path) {
    let sp = define_set::SetParams {
        name: name.into(),
        patches: ids.to_vec(),
        replace: false,
    };
    run(repo, |r, h, v| define_set::define_set(r, h, v, &sp));
    let (_, v) = repo.version(None).unwrap();
    let masks = dir.join(format!("masks-{name}"));
    write_masks_from_folder(truth_dir, &v, ids, &masks).unwrap();
    let ap = annotate::AnnotateParams {
        dir: masks,
        round: name.into(),
        annotator: "simulated-expert".into(),
        origin: None,
        labels: false,
        class: None,
    };
    run(repo, |r, h, v| annotate::annotate(r, h, v, &ap));
}

/// 3 random unannotated training patches that qc did not flag with `exclude`.
fn random_extras(
    repo: &Repo,
    exclude: &[String],
    test_stacks: &[String],
    seed: u64,
) -> Vec<String> {
    let (_, v) = repo.version(None).unwrap();
    let annotated: std::collections::BTreeSet<String> =
        v.annotations.iter().map(|x| x.patch.clone()).collect();
    let flagged = v.flagged_patches(exclude).unwrap();
    let mut pool: Vec<String> = v
        .all_patches()
        .filter(|(stack, _)| !test_stacks.contains(&stack.name))
        .map(|(_, p)| p.id.clone())
        .filter(|id| !annotated.contains(id) && !flagged.contains(id))
        .collect();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    pool.shuffle(&mut rng);
    pool.truncate(3);
    pool
}

/// The qc flags hunt skips in the README workflow.
fn hunt_exclude() -> Vec<String> {
    ["blank", "duplicate", "saturated", "odd_texture"]
        .map(String::from)
        .to_vec()
}

/// Critical-set study: one M0 per seed, then M0 fine-tuned with M1's schedule on the core set
/// plus 3 patches picked by each rule — hunt's score (disagreement or entropy) × which 3 of its
/// top 30 the expert corrects (lowest Dice, or most wrong pixels) — and 3 random unflagged
/// patches. Prints the candidates and one JSON line per (seed, rule).
fn critical_study(a: &Args, ds: &str, test_truth: &[Truth], out: &mut Vec<serde_json::Value>) {
    let root = a.data.join(ds);
    let train_items = items(&root.join("train"));
    let truth_dir = root.join("train").join("masks");
    for &seed in &a.seeds {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let (mut timings, mut lap) = (BTreeMap::new(), Instant::now());
        let (repo, _, _) = loop_to_m0(
            a.kind,
            a.select,
            a.k,
            seed,
            &train_items,
            dir,
            &mut timings,
            &mut lap,
        );
        let (_, v) = repo.version(None).unwrap();
        let m0 = SegmentationModel::load(&repo.store, &v.models["M0"]).unwrap();
        let m0_dice = mean_sd(&model_dice(&m0, test_truth)).0;
        let mut rules: Vec<(String, Vec<String>)> = Vec::new();
        for score in [hunt::Score::Disagreement, hunt::Score::Entropy] {
            let label = format!("{score:?}").to_lowercase();
            let name = format!("candidates-{label}");
            let hp = hunt::HuntParams {
                model: "M0".into(),
                top: 30,
                seed,
                score,
                name: Some(name.clone()),
                exclude: hunt_exclude(),
                ..hunt::HuntParams::default()
            };
            run(&repo, |r, h, v| hunt::hunt(r, h, v, &hp));
            let (_, v) = repo.version(None).unwrap();
            let shown = dir.join(&name);
            write_masks_from_folder(&truth_dir, &v, &v.sets[&name].patches, &shown).unwrap();
            for x in triage(&repo.store, &v.sets[&name], &shown, Triage::MostWrong).unwrap() {
                println!(
                    "{}",
                    json!({"study": "critical-candidates", "dataset": ds, "seed": seed,
                        "score": label, "patch": x.patch, "dice": x.dice, "wrong": x.wrong})
                );
            }
            for (rule, t) in [
                ("lowest-dice", Triage::LowestDice),
                ("most-wrong", Triage::MostWrong),
            ] {
                let worst = triage(&repo.store, &v.sets[&name], &shown, t).unwrap();
                rules.push((
                    format!("{label}+{rule}"),
                    worst.iter().take(3).map(|x| x.patch.clone()).collect(),
                ));
            }
        }
        rules.push((
            "random".into(),
            random_extras(&repo, &hunt_exclude(), &[], seed),
        ));
        for (i, (rule, ids)) in rules.iter().enumerate() {
            if !a.rules.is_empty() && !a.rules.contains(rule) {
                continue;
            }
            let set = format!("extra-{i}");
            // A patch two rules both pick is annotated once: the same manual mask.
            let (_, v) = repo.version(None).unwrap();
            let current = v.current_masks();
            let fresh: Vec<String> = ids
                .iter()
                .filter(|id| !current.contains_key(id.as_str()))
                .cloned()
                .collect();
            if fresh.is_empty() {
                let sp = define_set::SetParams {
                    name: set.clone(),
                    patches: ids.clone(),
                    replace: false,
                };
                run(&repo, |r, h, v| define_set::define_set(r, h, v, &sp));
            } else {
                annotate_set(&repo, &set, &fresh, &truth_dir, dir);
                if fresh.len() < ids.len() {
                    let sp = define_set::SetParams {
                        name: set.clone(),
                        patches: ids.clone(),
                        replace: true,
                    };
                    run(&repo, |r, h, v| define_set::define_set(r, h, v, &sp));
                }
            }
            let name = format!("M1-{i}");
            let tp = train_params(a.kind, seed, &name, "M0", vec!["coreset".into(), set]);
            run(&repo, |r, h, v| train::train(r, h, v, &tp));
            let (_, v) = repo.version(None).unwrap();
            let m1 = SegmentationModel::load(&repo.store, &v.models[&name]).unwrap();
            let row = json!({"study": "critical", "dataset": ds, "seed": seed, "rule": rule,
                "patches": ids, "m0": m0_dice, "m1": mean_sd(&model_dice(&m1, test_truth)).0});
            println!("{row}");
            out.push(row);
        }
    }
}

/// Selection study: for each seed, MAE-pretrained and randomly initialised encoder embeddings;
/// K-cover, k-center and random picks at K = 5, 10, 25 (excluding blank patches); a pixel
/// forest fitted on each annotated set (seconds, so many sets can be compared) scored on the
/// test images. Prints one JSON line per (seed, embedding, method, K).
fn selection_study(a: &Args, ds: &str, test_truth: &[Truth], out: &mut Vec<serde_json::Value>) {
    let root = a.data.join(ds);
    let train_items = items(&root.join("train"));
    let truth_dir = root.join("train").join("masks");
    for &seed in &a.seeds {
        let tmp = tempfile::tempdir().unwrap();
        let project = tmp.path().join("project");
        std::fs::create_dir_all(&project).unwrap();
        let repo = Repo::init(&project, Config::default()).unwrap();
        let ip = import::ImportParams {
            paths: train_items.iter().map(|i| i.image.clone()).collect(),
            ..Default::default()
        };
        run(&repo, |r, h, v| import::import(r, h, v, &ip));
        for (name, steps) in [("mae", None), ("random-init", Some(0))] {
            let pp = pretrain::PretrainParams {
                seed,
                name: name.into(),
                max_steps: steps,
                ..pretrain::PretrainParams::default()
            };
            run(&repo, |r, h, v| pretrain::pretrain(r, h, v, &pp, false));
            let ep = embed::EmbedParams {
                model: name.into(),
                batch: 32,
                fresh: false,
            };
            run(&repo, |r, h, v| embed::embed(r, h, v, &ep));
        }
        let qp = qc::QcParams {
            model: "mae".into(),
            coreset: "none".into(),
        };
        run(&repo, |r, h, v| qc::qc(r, h, v, &qp));
        for k in [5usize, 10, 25] {
            let mut configs = vec![("random", "mae", coreset::Method::Random)];
            for emb in ["mae", "random-init"] {
                configs.push(("kcover", emb, coreset::Method::Kcover));
                configs.push(("kcenter", emb, coreset::Method::Kcenter));
            }
            for (label, emb, method) in configs {
                let set = format!("{label}-{emb}-{k}");
                let cp = coreset::CoresetParams {
                    k,
                    model: emb.into(),
                    neighbours: 50,
                    name: set.clone(),
                    method,
                    seed,
                    exclude: vec!["blank".into()],
                    per_condition: 0,
                };
                run(&repo, |r, h, v| coreset::coreset(r, h, v, &cp));
                let (_, v) = repo.version(None).unwrap();
                let masks = tmp.path().join(format!("masks-{set}"));
                write_masks_from_folder(&truth_dir, &v, &v.sets[&set].patches, &masks).unwrap();
                let ap = annotate::AnnotateParams {
                    dir: masks,
                    round: set.clone(),
                    annotator: "simulated-expert".into(),
                    origin: None,
                    labels: false,
                    class: None,
                };
                run(&repo, |r, h, v| annotate::annotate(r, h, v, &ap));
                let fp = train::TrainParams {
                    name: format!("F-{set}"),
                    kind: train::ModelKind::Forest,
                    sets: vec![set.clone()],
                    seed,
                    ..train::TrainParams::default()
                };
                run(&repo, |r, h, v| train::train(r, h, v, &fp));
                let (_, v) = repo.version(None).unwrap();
                let model = SegmentationModel::load(&repo.store, &v.models[&fp.name]).unwrap();
                let d = mean_sd(&model_dice(&model, test_truth)).0;
                let row = json!({"study": "selection", "dataset": ds, "seed": seed, "k": k,
                    "method": label, "embedding": emb, "forest_dice": d});
                println!("{row}");
                out.push(row);
            }
        }
    }
}

/// Runs `study` on each dataset against its test images; its rows also go to `--out`.
fn study_rows(
    a: &Args,
    study: fn(&Args, &str, &[Truth], &mut Vec<serde_json::Value>),
) -> Vec<serde_json::Value> {
    let mut rows = Vec::new();
    for ds in &a.datasets {
        let test: Vec<Truth> = items(&a.data.join(ds).join("test"))
            .iter()
            .map(load_truth)
            .collect();
        study(a, ds, &test, &mut rows);
    }
    if let Some(out) = &a.out {
        let text: String = rows.iter().map(|r| format!("{r}\n")).collect();
        std::fs::write(out, text).unwrap();
    }
    rows
}

fn main() {
    let a = parse_args();
    if a.study.as_deref() == Some("critical") {
        let rows = study_rows(&a, critical_study);
        println!("\n| dataset | rule | M0 | M0 + 3 extras |");
        println!("|---|---|---|---|");
        let mut keys: Vec<(String, String)> = rows
            .iter()
            .map(|r| {
                (
                    r["dataset"].as_str().unwrap().to_string(),
                    r["rule"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        keys.sort();
        keys.dedup();
        for (ds, rule) in keys {
            let of = |k: &str| -> Vec<f64> {
                rows.iter()
                    .filter(|r| r["dataset"] == ds.as_str() && r["rule"] == rule.as_str())
                    .map(|r| r[k].as_f64().unwrap())
                    .collect()
            };
            let ((m0, s0), (m1, s1)) = (mean_sd(&of("m0")), mean_sd(&of("m1")));
            println!(
                "| {ds} ({} seeds) | {rule} | {m0:.3} ± {s0:.3} | {m1:.3} ± {s1:.3} |",
                of("m0").len()
            );
        }
        return;
    }
    if a.study.as_deref() == Some("selection") {
        let rows = study_rows(&a, selection_study);
        println!("\n| dataset | K | random | K-cover (MAE) | k-center (MAE) | K-cover (random init) | k-center (random init) |");
        println!("|---|---|---|---|---|---|---|");
        for ds in &a.datasets {
            for k in [5, 10, 25] {
                let cell = |m: &str, e: &str| -> String {
                    let v: Vec<f64> = rows
                        .iter()
                        .filter(|r| {
                            r["dataset"] == ds.as_str()
                                && r["k"] == k
                                && r["method"] == m
                                && r["embedding"] == e
                        })
                        .map(|r| r["forest_dice"].as_f64().unwrap())
                        .collect();
                    let (m, s) = mean_sd(&v);
                    format!("{m:.3} ± {s:.3}")
                };
                println!(
                    "| {ds} | {k} | {} | {} | {} | {} | {} |",
                    cell("random", "mae"),
                    cell("kcover", "mae"),
                    cell("kcenter", "mae"),
                    cell("kcover", "random-init"),
                    cell("kcenter", "random-init")
                );
            }
        }
        return;
    }
    let mut rows: Vec<serde_json::Value> = Vec::new();
    for ds in &a.datasets {
        let root = a.data.join(ds);
        let train_items = items(&root.join("train"));
        let test_items = items(&root.join("test"));
        let train_truth: Vec<Truth> = train_items.iter().map(load_truth).collect();
        let test_truth: Vec<Truth> = test_items.iter().map(load_truth).collect();
        let observer: Vec<f64> = test_truth
            .iter()
            .map(|t| dice_in(&t.mask2, &t.mask, &t.fov))
            .collect();
        let frangi = frangi_dice(&train_truth, &test_truth);
        for &seed in &a.seeds {
            let tmp = tempfile::tempdir().unwrap();
            let dir = if a.keep {
                let d = std::env::temp_dir().join(format!("biodc-real-{ds}-{seed}"));
                let _ = std::fs::remove_dir_all(&d);
                d
            } else {
                tmp.path().to_path_buf()
            };
            let truth_dir = root.join("train").join("masks");
            let started = Instant::now();
            let mut timings: BTreeMap<&str, f64> = BTreeMap::new();
            let mut lap = Instant::now();
            let (repo, m0, mut train_seconds) = loop_to_m0(
                a.kind,
                a.select,
                a.k,
                seed,
                &train_items,
                &dir,
                &mut timings,
                &mut lap,
            );
            let mut tick = |name: &'static str, lap: &mut Instant| {
                timings.insert(name, lap.elapsed().as_secs_f64());
                *lap = Instant::now();
            };
            let tp = |name: &str, from: &str, sets: Vec<String>| {
                train_params(a.kind, seed, name, from, sets)
            };
            // The critical set: the 3 of hunt's top 30 the expert corrects, or 3 random patches.
            let hp = hunt::HuntParams {
                model: "M0".into(),
                top: 30,
                seed,
                score: a.hunt_score,
                exclude: hunt_exclude(),
                ..hunt::HuntParams::default()
            };
            let h = run(&repo, |r, hd, v| hunt::hunt(r, hd, v, &hp));
            tick("hunt", &mut lap);
            let (_, v) = repo.version(None).unwrap();
            let critical_ids: Vec<String> = if a.critical == "random" {
                random_extras(&repo, &hp.exclude, &[], seed)
            } else {
                let shown = dir.join("truth-candidates");
                write_masks_from_folder(&truth_dir, &v, &v.sets[&h.set].patches, &shown).unwrap();
                let worst = triage(&repo.store, &v.sets[&h.set], &shown, a.triage).unwrap();
                worst.iter().take(3).map(|x| x.patch.clone()).collect()
            };
            let fixed = dir.join("masks-critical");
            write_masks_from_folder(&truth_dir, &v, &critical_ids, &fixed).unwrap();
            let ap = annotate::AnnotateParams {
                dir: fixed,
                round: "critical-1".into(),
                annotator: "simulated-expert".into(),
                origin: None,
                labels: false,
                class: None,
            };
            run(&repo, |r, hd, v| annotate::annotate(r, hd, v, &ap));
            let t1 = Instant::now();
            let m1 = run(&repo, |r, hd, v| {
                train::train(
                    r,
                    hd,
                    v,
                    // Every annotated patch: the core set and the critical round.
                    &tp("M1", "M0", Vec::new()),
                )
            });
            train_seconds += t1.elapsed().as_secs_f64();
            tick("train M1", &mut lap);
            // New images arrive: monitor scores both models (RCA) and returns their masks.
            let ip = import::ImportParams {
                paths: test_items.iter().map(|i| i.image.clone()).collect(),
                condition: Some("test".into()),
                ..Default::default()
            };
            run(&repo, |r, hd, v| import::import(r, hd, v, &ip));
            let test_names: Vec<String> = test_items
                .iter()
                .map(|i| biodc::io::files::stack_name(&i.image))
                .collect();
            let mut dice_of: BTreeMap<String, Vec<f64>> = BTreeMap::new();
            let (mut rca, mut truth_dice) = (Vec::new(), Vec::new());
            for model in ["M0", "M1"] {
                let mp = monitor::MonitorParams {
                    model: model.into(),
                    stacks: test_names.clone(),
                    seed,
                    keep_predictions: true,
                    ..monitor::MonitorParams::default()
                };
                let m = run(&repo, |r, hd, v| monitor::monitor(r, hd, v, &mp));
                let mut per = Vec::new();
                for (name, t) in test_names.iter().zip(&test_truth) {
                    let d = dice_in(&m.predictions[name], &t.mask, &t.fov);
                    per.push(d);
                    let s = m.scores.iter().find(|s| &s.stack == name).unwrap();
                    rca.push(s.rca);
                    truth_dice.push(d);
                }
                dice_of.insert(model.into(), per);
            }
            tick("monitor", &mut lap);
            let loop_seconds = started.elapsed().as_secs_f64();

            // Baselines on the same annotated patches.
            let fp = train::TrainParams {
                name: "F".into(),
                kind: train::ModelKind::Forest,
                from: "none".into(),
                sets: Vec::new(),
                seed,
                ..train::TrainParams::default()
            };
            run(&repo, |r, hd, v| train::train(r, hd, v, &fp));
            let (_, v) = repo.version(None).unwrap();
            let forest = SegmentationModel::load(&repo.store, &v.models["F"]).unwrap();
            let forest_dice = model_dice(&forest, &test_truth);
            let mut row = json!({
                "dataset": ds, "seed": seed, "kind": format!("{:?}", a.kind).to_lowercase(),
                "select": format!("{:?}", a.select).to_lowercase(), "k": a.k, "critical": a.critical,
                "critical_patches": critical_ids,
                "m0": mean_sd(&dice_of["M0"]).0, "m1": mean_sd(&dice_of["M1"]).0,
                "m0_converged": m0.convergence.converged, "m1_converged": m1.convergence.converged,
                "forest": mean_sd(&forest_dice).0, "frangi": mean_sd(&frangi).0,
                "observer": mean_sd(&observer).0,
                "rca_spearman": biodc::stats::spearman(&rca, &truth_dice),
                "rca_pearson": biodc::stats::pearson(&rca, &truth_dice),
                "loop_seconds": loop_seconds, "train_seconds": train_seconds,
                "timings": timings,
            });
            if let Some(py) = &a.torch {
                // The same patches, exported as TIFFs, for the same training wall time.
                let pdir = dir.join("torch-patches");
                let ids: Vec<String> = v.annotations.iter().map(|x| x.patch.clone()).collect();
                std::fs::create_dir_all(pdir.join("masks")).unwrap();
                std::fs::create_dir_all(pdir.join("images")).unwrap();
                for id in &ids {
                    let (info, plane) = v.patch_plane(&repo.store, id).unwrap();
                    let stack = biodc::io::Stack {
                        info,
                        planes: vec![plane],
                    };
                    biodc::io::tiff::write_stack(&pdir.join(format!("images/{id}.tif")), &stack)
                        .unwrap();
                }
                write_masks_from_folder(&truth_dir, &v, &ids, &pdir.join("masks")).unwrap();
                let out = std::process::Command::new(py)
                    .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/pytorch_unet.py"))
                    .args(["--patches", pdir.to_str().unwrap()])
                    .args(["--test", root.join("test").to_str().unwrap()])
                    .args(match a.torch_steps {
                        Some(n) => ["--steps".to_string(), n.to_string()],
                        None => ["--seconds".to_string(), format!("{train_seconds:.0}")],
                    })
                    .args(["--seed", &seed.to_string(), "--threads", "2"])
                    .output()
                    .unwrap();
                let line = String::from_utf8_lossy(&out.stdout);
                match serde_json::from_str::<serde_json::Value>(line.trim()) {
                    Ok(j) => {
                        row["torch"] = j["mean"].clone();
                        row["torch_steps"] = j["steps"].clone();
                    }
                    Err(_) => eprintln!(
                        "pytorch_unet.py failed: {}",
                        String::from_utf8_lossy(&out.stderr)
                    ),
                }
            }
            if a.critical == "hunted" {
                // Hunted vs random extras in the same run: M1' = M0 fine-tuned on the core set
                // plus 3 random unannotated patches that hunt could also have proposed (not
                // flagged by qc), with M1's schedule; scored on the test images.
                let pool = random_extras(&repo, &hp.exclude, &test_names, seed);
                annotate_set(&repo, "random-1", &pool, &truth_dir, &dir);
                run(&repo, |r, hd, v| {
                    train::train(
                        r,
                        hd,
                        v,
                        &tp("M1r", "M0", vec!["coreset".into(), "random-1".into()]),
                    )
                });
                let (_, v) = repo.version(None).unwrap();
                let m1r = SegmentationModel::load(&repo.store, &v.models["M1r"]).unwrap();
                row["m1_random"] = json!(mean_sd(&model_dice(&m1r, &test_truth)).0);
                row["random_patches"] = json!(pool);
            }
            println!("{row}");
            if let Some(out) = &a.out {
                use std::io::Write;
                let mut f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(out)
                    .unwrap();
                writeln!(f, "{row}").unwrap();
            }
            rows.push(row);
        }
    }
    // Mean ± sd over seeds, per dataset.
    println!("\n| dataset | M0 | M1 (hunted) | M1' (random extras) | forest (same patches) | PyTorch U-Net (same time) | Frangi | 2nd observer | RCA Spearman | loop min |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for ds in &a.datasets {
        let r: Vec<&serde_json::Value> = rows
            .iter()
            .filter(|r| r["dataset"] == ds.as_str())
            .collect();
        let col = |k: &str| -> String {
            let v: Vec<f64> = r.iter().filter_map(|x| x[k].as_f64()).collect();
            if v.is_empty() {
                return "–".into();
            }
            let (m, s) = mean_sd(&v);
            format!("{m:.3} ± {s:.3}")
        };
        let minutes: Vec<f64> = r
            .iter()
            .map(|x| x["loop_seconds"].as_f64().unwrap() / 60.0)
            .collect();
        let (m, s) = mean_sd(&minutes);
        println!(
            "| {ds} ({} seeds) | {} | {} | {} | {} | {} | {} | {} | {} | {m:.1} ± {s:.1} |",
            r.len(),
            col("m0"),
            col("m1"),
            col("m1_random"),
            col("forest"),
            col("torch"),
            col("frangi"),
            col("observer"),
            col("rca_spearman"),
        );
    }
}

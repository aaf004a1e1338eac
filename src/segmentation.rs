//! A segmentation model of either kind, loaded from a version and run on images: a network
//! ([`Segmenter`]: U-Net or TransUNet) or a pixel forest on the filter bank ([`PixelForest`],
//! what ilastik's pixel classification does). `train`, `hunt`, `segment`, `export` and
//! `monitor` see only this type, so both kinds go through the whole loop alike.
//!
//! Inputs are per-patch standardised square images of the model's window; outputs are
//! foreground probabilities per pixel. Uncertainty comes as `passes` stochastic samples of the
//! probabilities: Monte-Carlo dropout passes of a network, or the mean of disjoint groups of
//! trees of a forest (their disagreement).

use crate::nn::data::batch;
use crate::nn::data::normalize_patch;
use crate::nn::segmenter::Segmenter;
use crate::pixel::forest::Forest;
use crate::store::Store;
use crate::version::{DatasetVersion, ModelManifest};
use anyhow::{bail, Context, Result};
use candle_core::Device;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// A random forest over [`crate::pixel::features`] of each pixel.
///
/// It is fitted on equally many foreground and background pixels (vessels are a tenth of an
/// image: a forest fitted on the raw mix learns to say "background"); its votes are then
/// mapped back to the annotations' real foreground share, so that 0.5 is the threshold that
/// a Bayes classifier would use (without it, the forest over-segments).
#[derive(Debug, Clone)]
pub struct PixelForest {
    pub forest: Forest,
    /// Side of the windows it segments: the patch size it was trained on.
    pub window: usize,
    /// Foreground share of the annotated pixels it was fitted on.
    pub foreground: f64,
}

impl PixelForest {
    /// A vote share fitted on balanced classes → the probability under the real prior.
    fn calibrate(&self, q: f32) -> f32 {
        let r = (self.foreground / (1.0 - self.foreground).max(1e-9)) as f32;
        let num = q * r;
        let den = num + (1.0 - q);
        if den > 0.0 {
            num / den
        } else {
            0.0
        }
    }
}

/// The architecture record of a forest model (`models/<name>.json`, `architecture`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ForestArchitecture {
    pub model_type: String,
    pub window: usize,
    pub foreground: f64,
    pub features: Vec<String>,
    pub trees: usize,
}

impl PixelForest {
    pub fn architecture(&self) -> ForestArchitecture {
        ForestArchitecture {
            model_type: "biodc-pixel-forest".into(),
            window: self.window,
            foreground: self.foreground,
            features: crate::pixel::features::names(),
            trees: self.forest.trees.len(),
        }
    }

    /// Probabilities of one normalised window.
    fn probabilities(&self, img: &[f32]) -> Vec<f32> {
        let s = self.window;
        self.forest
            .predict_proba(&crate::pixel::feature_matrix(img, s, s))
            .into_iter()
            .map(|q| self.calibrate(q))
            .collect()
    }
}

/// A trained model of either kind.
#[derive(Debug, Clone)]
pub enum SegmentationModel {
    Network(Segmenter),
    Forest(PixelForest),
}

impl SegmentationModel {
    /// The model `m` describes, its weights read from `store`.
    pub fn load(store: &Store, m: &ModelManifest) -> Result<SegmentationModel> {
        let bytes = store.get(&m.checkpoint)?;
        match m.kind.as_str() {
            "segmenter" => Ok(SegmentationModel::Network(
                Segmenter::load(&m.architecture, &bytes, &Device::Cpu)
                    .with_context(|| format!("loading model {}", m.name))?,
            )),
            "forest" => {
                let arch: ForestArchitecture = serde_json::from_value(m.architecture.clone())
                    .with_context(|| format!("model {}: malformed forest record", m.name))?;
                let forest = Forest::from_bytes(&bytes)
                    .map_err(|e| anyhow::anyhow!("model {}: {e}", m.name))?;
                if forest.bins.features() != crate::pixel::features::COUNT {
                    bail!(
                        "model {}: the forest uses {} features, this biodc computes {}",
                        m.name,
                        forest.bins.features(),
                        crate::pixel::features::COUNT
                    );
                }
                Ok(SegmentationModel::Forest(PixelForest {
                    forest,
                    window: arch.window,
                    foreground: arch.foreground,
                }))
            }
            other => bail!(
                "model {} is a {other} model, not a segmentation model: train one with `biodc train --name M0`",
                m.name
            ),
        }
    }

    /// The side of the square windows it segments.
    pub fn window(&self) -> usize {
        match self {
            SegmentationModel::Network(n) => n.window(),
            SegmentationModel::Forest(f) => f.window,
        }
    }

    /// The network, if it is one.
    pub fn network(&self) -> Option<&Segmenter> {
        match self {
            SegmentationModel::Network(n) => Some(n),
            SegmentationModel::Forest(_) => None,
        }
    }

    /// Foreground probabilities of normalised window-sized `images`, `batch` at a time through
    /// a network (the batch size is kept so results stay bit-identical to earlier runs).
    pub fn probabilities(&self, images: &[Vec<f32>], batch_size: usize) -> Result<Vec<Vec<f32>>> {
        let s = self.window();
        match self {
            SegmentationModel::Network(net) => {
                let dev = net.device();
                let mut out = Vec::with_capacity(images.len());
                for chunk in images.chunks(batch_size.max(1)) {
                    out.extend(net.predict(&batch(chunk, s, &dev)?)?);
                }
                Ok(out)
            }
            SegmentationModel::Forest(f) => {
                if let Some(i) = images.iter().position(|im| im.len() != s * s) {
                    bail!("image {i} is not {s}×{s}");
                }
                Ok(images.par_iter().map(|im| f.probabilities(im)).collect())
            }
        }
    }

    /// `passes` stochastic samples of the probabilities of `images` (one batch): for each
    /// image, one probability map per pass.
    pub fn samples(
        &self,
        images: &[Vec<f32>],
        passes: usize,
        rng: &mut ChaCha8Rng,
    ) -> Result<Vec<Vec<Vec<f32>>>> {
        let s = self.window();
        let mut out: Vec<Vec<Vec<f32>>> = vec![Vec::with_capacity(passes); images.len()];
        match self {
            SegmentationModel::Network(net) => {
                out = net.mc_probabilities(&batch(images, s, &net.device())?, passes, rng)?;
            }
            SegmentationModel::Forest(f) => {
                let per: Vec<Vec<Vec<f32>>> = images
                    .par_iter()
                    .map(|im| {
                        let mut groups = f
                            .forest
                            .predict_groups(&crate::pixel::feature_matrix(im, s, s), passes);
                        for g in &mut groups {
                            g.iter_mut().for_each(|q| *q = f.calibrate(*q));
                        }
                        groups
                    })
                    .collect();
                out = per;
            }
        }
        Ok(out)
    }
}

/// 0/1 masks (probability > 0.5) of normalised window-sized images.
pub fn predict_masks(
    model: &SegmentationModel,
    images: &[Vec<f32>],
    batch_size: usize,
) -> Result<Vec<Vec<u8>>> {
    Ok(model
        .probabilities(images, batch_size)?
        .into_iter()
        .map(|p| p.iter().map(|&v| (v > 0.5) as u8).collect())
        .collect())
}

/// An annotated patch in memory: normalised image and 0/1 mask as f32.
pub struct Example {
    pub id: String,
    pub image: Vec<f32>,
    pub mask: Vec<f32>,
}

/// Normalised images of `ids` (read in parallel).
pub fn load_images(
    store: &Store,
    version: &DatasetVersion,
    ids: &[String],
) -> Result<Vec<Vec<f32>>> {
    ids.par_iter()
        .map(|id| {
            let (_, plane) = version.patch_plane(store, id)?;
            Ok(normalize_patch(&plane.to_f32()))
        })
        .collect()
}

/// The current masks of `ids` as 0/1 bytes.
pub fn load_masks(store: &Store, version: &DatasetVersion, ids: &[String]) -> Result<Vec<Vec<u8>>> {
    let current = version.current_masks();
    ids.par_iter()
        .map(|id| {
            let a = current
                .get(id.as_str())
                .with_context(|| format!("patch {id} has no mask"))?;
            store.get(&a.mask)
        })
        .collect()
}

/// Per-patch Dice of `model` on annotated patches `ids`.
pub fn evaluate(
    model: &SegmentationModel,
    store: &Store,
    version: &DatasetVersion,
    ids: &[String],
) -> Result<Vec<f64>> {
    let images = load_images(store, version, ids)?;
    let masks = load_masks(store, version, ids)?;
    let pred = predict_masks(model, &images, 16)?;
    Ok(pred
        .iter()
        .zip(&masks)
        .map(|(p, m)| crate::pixel::dice(p, m))
        .collect())
}

/// Mean of `v` (NaN when empty).
pub fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        f64::NAN
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

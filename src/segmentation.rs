//! A segmentation model of either kind, loaded from a version and run on images: a network
//! ([`Segmenter`]: U-Net or TransUNet) or a pixel forest on the filter bank ([`PixelForest`],
//! what ilastik's pixel classification does). `train`, `hunt`, `segment`, `export` and
//! `monitor` see only this type, so both kinds go through the whole loop alike.
//!
//! Inputs are per-patch standardised square images of the model's window; outputs are
//! foreground probabilities per pixel. Uncertainty comes as `passes` stochastic samples of the
//! probabilities: Monte-Carlo dropout passes of a network, or the mean of disjoint groups of
//! trees of a forest (their disagreement). How probabilities become masks (flips averaged,
//! threshold) is part of the model's record ([`Inference`]).

use crate::nn::data::batch;
use crate::nn::data::normalize_patch;
use crate::nn::segmenter::Segmenter;
use crate::pixel::forest::Forest;
use crate::store::Store;
use crate::version::{DatasetVersion, Inference, ModelManifest};
use anyhow::{bail, Context, Result};
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

/// What computes a model's probabilities: a network or a forest.
#[derive(Debug, Clone)]
pub enum Predictor {
    Network(Segmenter),
    Forest(PixelForest),
}

/// A trained model of either kind and how it is applied.
#[derive(Debug, Clone)]
pub struct SegmentationModel {
    pub predictor: Predictor,
    pub inference: Inference,
}

impl SegmentationModel {
    /// The model `m` describes, its weights read from `store`.
    pub fn load(store: &Store, m: &ModelManifest) -> Result<SegmentationModel> {
        let bytes = store.get(&m.checkpoint)?;
        let predictor = match m.kind.as_str() {
            "segmenter" => Predictor::Network(
                Segmenter::load(&m.architecture, &bytes, &crate::nn::device::current())
                    .with_context(|| format!("loading model {}", m.name))?,
            ),
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
                Predictor::Forest(PixelForest {
                    forest,
                    window: arch.window,
                    foreground: arch.foreground,
                })
            }
            other => bail!(
                "model {} is a {other} model, not a segmentation model: train one with `biodc train --name M0`",
                m.name
            ),
        };
        Ok(SegmentationModel {
            predictor,
            inference: m.inference,
        })
    }

    /// The side of the square windows it segments.
    pub fn window(&self) -> usize {
        match &self.predictor {
            Predictor::Network(n) => n.window(),
            Predictor::Forest(f) => f.window,
        }
    }

    /// The network, if it is one.
    pub fn network(&self) -> Option<&Segmenter> {
        match &self.predictor {
            Predictor::Network(n) => Some(n),
            Predictor::Forest(_) => None,
        }
    }

    /// 0/1 mask of a probability map.
    pub fn mask(&self, probabilities: &[f32]) -> Vec<u8> {
        let t = self.inference.threshold;
        probabilities.iter().map(|&p| (p > t) as u8).collect()
    }

    /// Foreground probabilities of normalised window-sized `images`, averaged over their flips
    /// when the model is applied so.
    pub fn probabilities(&self, images: &[Vec<f32>], batch_size: usize) -> Result<Vec<Vec<f32>>> {
        let mut out = self.one_pass(images, batch_size)?;
        if self.inference.flips {
            let s = self.window();
            for flip in [Flip::LeftRight, Flip::UpDown, Flip::Both] {
                let flipped: Vec<Vec<f32>> = images.iter().map(|im| flip.apply(im, s)).collect();
                for (o, p) in out.iter_mut().zip(self.one_pass(&flipped, batch_size)?) {
                    o.iter_mut()
                        .zip(flip.apply(&p, s))
                        .for_each(|(a, b)| *a += b);
                }
            }
            out.iter_mut()
                .for_each(|o| o.iter_mut().for_each(|v| *v *= 0.25));
        }
        Ok(out)
    }

    /// Probabilities of `images` as they are, `batch` at a time through a network (the batch
    /// size is kept so results stay bit-identical to earlier runs).
    fn one_pass(&self, images: &[Vec<f32>], batch_size: usize) -> Result<Vec<Vec<f32>>> {
        let s = self.window();
        match &self.predictor {
            Predictor::Network(net) => {
                let dev = net.device();
                let mut out = Vec::with_capacity(images.len());
                for chunk in images.chunks(batch_size.max(1)) {
                    out.extend(net.predict(&batch(chunk, s, &dev)?)?);
                }
                Ok(out)
            }
            Predictor::Forest(f) => {
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
        match &self.predictor {
            Predictor::Network(net) => {
                out = net.mc_probabilities(&batch(images, s, &net.device())?, passes, rng)?;
            }
            Predictor::Forest(f) => {
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

/// 0/1 masks of normalised window-sized images, as the model is applied.
pub fn predict_masks(
    model: &SegmentationModel,
    images: &[Vec<f32>],
    batch_size: usize,
) -> Result<Vec<Vec<u8>>> {
    Ok(model
        .probabilities(images, batch_size)?
        .iter()
        .map(|p| model.mask(p))
        .collect())
}

/// A flip of a square image.
#[derive(Debug, Clone, Copy)]
enum Flip {
    LeftRight,
    UpDown,
    Both,
}

impl Flip {
    /// The flipped `s`×`s` image (each flip is its own inverse).
    fn apply(self, img: &[f32], s: usize) -> Vec<f32> {
        let mut out = Vec::with_capacity(s * s);
        for r in 0..s {
            let row = match self {
                Flip::LeftRight => r,
                Flip::UpDown | Flip::Both => s - 1 - r,
            };
            let src = &img[row * s..(row + 1) * s];
            match self {
                Flip::UpDown => out.extend_from_slice(src),
                Flip::LeftRight | Flip::Both => out.extend(src.iter().rev()),
            }
        }
        out
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::unet::{UNet, UNetConfig};
    use rand::{Rng, SeedableRng};

    fn network(flips: bool) -> SegmentationModel {
        let cfg = UNetConfig {
            inputs: 1,
            channels: vec![4, 8],
            dropout: 0.0,
            window: 16,
        };
        SegmentationModel {
            predictor: Predictor::Network(Segmenter::UNet(
                UNet::new(&cfg, 3, &candle_core::Device::Cpu).unwrap(),
            )),
            inference: Inference {
                flips,
                threshold: 0.5,
            },
        }
    }

    #[test]
    fn each_flip_is_its_own_inverse_and_moves_pixels() {
        let img: Vec<f32> = (0..9).map(|v| v as f32).collect();
        assert_eq!(Flip::LeftRight.apply(&img, 3)[..3], [2.0, 1.0, 0.0]);
        assert_eq!(Flip::UpDown.apply(&img, 3)[..3], [6.0, 7.0, 8.0]);
        assert_eq!(Flip::Both.apply(&img, 3)[..3], [8.0, 7.0, 6.0]);
        for f in [Flip::LeftRight, Flip::UpDown, Flip::Both] {
            assert_eq!(f.apply(&f.apply(&img, 3), 3), img);
        }
    }

    /// Averaged over the flips, the prediction of a flipped image is the flipped prediction;
    /// a single pass of a random network is not.
    #[test]
    fn averaging_over_flips_makes_a_network_flip_equivariant() {
        let mut r = ChaCha8Rng::seed_from_u64(1);
        let img: Vec<f32> = (0..256).map(|_| r.random_range(-2.0..2.0)).collect();
        let gap = |m: &SegmentationModel| -> f32 {
            let p = m.probabilities(&[img.clone()], 4).unwrap();
            let q = m
                .probabilities(&[Flip::LeftRight.apply(&img, 16)], 4)
                .unwrap();
            Flip::LeftRight
                .apply(&p[0], 16)
                .iter()
                .zip(&q[0])
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max)
        };
        assert!(gap(&network(true)) < 1e-5);
        assert!(gap(&network(false)) > 1e-3);
    }
}

//! Inference with a saved or pretrained model (loaded by [`crate::checkpoint::load_model_with_card`]):
//! rank the classes of photos, one at a time ([`predict`]) or in batches ([`predict_batch`], which
//! `predict` and the CLI's `predict` use); [`inputs`] turns files, folders and globs into image
//! paths, [`report`] writes the results as text, JSON or CSV.

pub mod inputs;
pub mod report;

pub use crate::checkpoint::load_model;
use crate::checkpoint::ModelCard;
use crate::models::Classifier;
use crate::transforms::{Normalization, Pipeline};
use anyhow::Context;
use candle_core::{Device, Tensor};
use image::RgbImage;
use rayon::prelude::*;
use std::path::{Path, PathBuf};

/// One ranked class.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Prediction {
    pub index: usize,
    pub class: String,
    pub probability: f32,
}

/// How a model's input is prepared: d2l's test transform (resize to 256/224 of the size,
/// centre crop) at `image_size`, then `normalization`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Preprocess {
    pub image_size: u32,
    pub normalization: Normalization,
}

impl Preprocess {
    /// What the model file says it was trained with (its [`ModelCard`]), else 224 px and the
    /// backbone's own normalization.
    pub fn from_card(model: &Classifier, card: &ModelCard) -> Self {
        Self { image_size: card.image_size_for(model.arch), normalization: card.normalization_for(model.arch) }
    }

    pub fn pipeline(&self) -> Pipeline {
        Pipeline::d2l_test(self.image_size, self.normalization)
    }
}

/// The `top_k` most likely classes of each image, in order, after `pre`. One forward pass for
/// all of `images` (callers choose the batch size); an empty slice gives an empty answer.
pub fn predict_batch(model: &Classifier, images: &[RgbImage], pre: &Preprocess, top_k: usize) -> anyhow::Result<Vec<Vec<Prediction>>> {
    if images.is_empty() {
        return Ok(Vec::new());
    }
    let pipeline = pre.pipeline();
    // The test pipeline has no random step; the RNG is never drawn from.
    let xs: Vec<Vec<f32>> = images.par_iter().map(|img| pipeline.apply(img, &mut crate::transforms::sample_rng(0, 0, 0))).collect::<anyhow::Result<_>>()?;
    let s = pre.image_size as usize;
    let x = Tensor::from_vec(xs.concat(), (images.len(), 3, s, s), &Device::Cpu)?.to_device(model.device())?;
    let probs = candle_nn::ops::softmax(&model.forward_t(&x, false)?, 1)?.to_vec2::<f32>()?;
    Ok(probs.iter().map(|p| ranked(model, p, top_k)).collect())
}

fn ranked(model: &Classifier, probs: &[f32], top_k: usize) -> Vec<Prediction> {
    let mut order: Vec<usize> = (0..probs.len()).collect();
    order.sort_by(|&i, &j| probs[j].total_cmp(&probs[i]));
    order
        .into_iter()
        .take(top_k)
        .map(|i| Prediction { index: i, class: model.class_names.get(i).cloned().unwrap_or_else(|| i.to_string()), probability: probs[i] })
        .collect()
}

/// The `top_k` most likely classes of `img` at `image_size` with the backbone's own
/// normalization (a model file's card may say otherwise: see [`Preprocess::from_card`]).
pub fn predict(model: &Classifier, img: &RgbImage, image_size: u32, top_k: usize) -> anyhow::Result<Vec<Prediction>> {
    let pre = Preprocess { image_size, normalization: model.arch.normalization() };
    Ok(predict_batch(model, std::slice::from_ref(img), &pre, top_k)?.pop().unwrap_or_default())
}

/// Open an image file for [`predict`], naming the file on failure.
pub fn open_image(path: &Path) -> anyhow::Result<RgbImage> {
    if let (Ok(target), false) = (std::fs::read_link(path), path.exists()) {
        anyhow::bail!("cannot read image {}: a link to nothing (its target {} is gone)", path.display(), target.display());
    }
    crate::data::decode_image(path).with_context(|| format!("cannot read image {}", path.display()))
}

/// The prediction for one image file.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct FileRecord {
    pub path: String,
    /// The most likely class and its probability.
    pub class: String,
    pub probability: f32,
    pub top_k: Vec<Prediction>,
}

/// What [`predict_files`] did: a record per readable image, in input order, and the files it
/// skipped with the reason.
#[derive(Debug, Default)]
pub struct FilesOutcome {
    pub records: Vec<FileRecord>,
    pub skipped: Vec<(PathBuf, String)>,
}

/// Classify image files `batch_size` at a time (decoded in parallel). A file that cannot be
/// decoded is skipped with a warning on stderr naming it, and counted in `skipped`.
pub fn predict_files(model: &Classifier, paths: &[PathBuf], pre: &Preprocess, top_k: usize, batch_size: usize) -> anyhow::Result<FilesOutcome> {
    let mut out = FilesOutcome::default();
    for chunk in paths.chunks(batch_size.max(1)) {
        let decoded: Vec<anyhow::Result<RgbImage>> = chunk.par_iter().map(|p| open_image(p)).collect();
        let mut images = Vec::with_capacity(chunk.len());
        let mut kept = Vec::with_capacity(chunk.len());
        for (p, d) in chunk.iter().zip(decoded) {
            match d {
                Ok(img) => {
                    images.push(img);
                    kept.push(p);
                }
                Err(e) => {
                    let reason = format!("{:#}", e);
                    eprintln!("warning: skipping {}: {reason}", p.display());
                    out.skipped.push((p.clone(), reason));
                }
            }
        }
        for (p, preds) in kept.into_iter().zip(predict_batch(model, &images, pre, top_k.max(1))?) {
            let best = preds[0].clone();
            out.records.push(FileRecord { path: p.display().to_string(), class: best.class, probability: best.probability, top_k: preds });
        }
    }
    Ok(out)
}

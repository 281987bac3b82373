//! Batched inference for the server: photos preprocessed exactly as the model was tested
//! (its card's image size and normalization), then one forward pass for the whole batch.

use crate::models::Classifier;
use crate::tasks::predict::Prediction;
use crate::transforms::{Normalization, Pipeline};
use candle_core::{Device, Tensor};
use image::RgbImage;

/// The test-time input of one photo: d2l's resize + center crop to `size`, normalized, `CHW`.
/// Runs on the request's blocking thread, so a batch's resizing is spread over many cores.
pub fn preprocess(img: &RgbImage, size: u32, normalization: Normalization) -> anyhow::Result<Vec<f32>> {
    // The test pipeline has no random step; the RNG is never drawn from.
    Pipeline::d2l_test(size, normalization).apply(img, &mut crate::transforms::sample_rng(0, 0, 0))
}

/// The `top_k` classes of each preprocessed input (`3 * size * size` values each), from one
/// forward pass over all of them.
pub fn forward_batch(model: &Classifier, inputs: &[Vec<f32>], size: u32, top_k: usize) -> anyhow::Result<Vec<Vec<Prediction>>> {
    let s = size as usize;
    let n = inputs.len();
    if n == 0 {
        return Ok(Vec::new());
    }
    if let Some(bad) = inputs.iter().find(|x| x.len() != 3 * s * s) {
        anyhow::bail!("input of {} values, expected 3 x {s} x {s}", bad.len());
    }
    let x = Tensor::from_vec(inputs.concat(), (n, 3, s, s), &Device::Cpu)?.to_device(model.device())?;
    let probs = candle_nn::ops::softmax(&model.forward_t(&x, false)?, 1)?.to_vec2::<f32>()?;
    Ok(probs.iter().map(|p| rank(model, p, top_k)).collect())
}

/// [`preprocess`] then [`forward_batch`]: the batched counterpart of [`crate::tasks::predict::predict`].
pub fn predict_images(model: &Classifier, images: &[RgbImage], size: u32, normalization: Normalization, top_k: usize) -> anyhow::Result<Vec<Vec<Prediction>>> {
    let inputs = images.iter().map(|img| preprocess(img, size, normalization)).collect::<anyhow::Result<Vec<_>>>()?;
    forward_batch(model, &inputs, size, top_k)
}

fn rank(model: &Classifier, probs: &[f32], top_k: usize) -> Vec<Prediction> {
    let mut order: Vec<usize> = (0..probs.len()).collect();
    order.sort_by(|&i, &j| probs[j].total_cmp(&probs[i]));
    order
        .into_iter()
        .take(top_k.max(1))
        .map(|i| Prediction { index: i, class: model.class_names.get(i).cloned().unwrap_or_else(|| i.to_string()), probability: probs[i] })
        .collect()
}

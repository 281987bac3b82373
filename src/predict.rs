//! Inference with a saved or pretrained model (loaded by [`crate::checkpoint::load_model`]):
//! rank the classes of one photo.

pub use crate::checkpoint::load_model;
use crate::models::Classifier;
use crate::transforms::Pipeline;
use anyhow::Context;
use candle_core::{Device, Tensor};
use image::RgbImage;
use std::path::Path;

/// One ranked class.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Prediction {
    pub index: usize,
    pub class: String,
    pub probability: f32,
}

/// The `top_k` most likely classes of `img`, after the backbone's test-time preprocessing.
pub fn predict(model: &Classifier, img: &RgbImage, image_size: u32, top_k: usize) -> anyhow::Result<Vec<Prediction>> {
    let pipeline = Pipeline::d2l_test(image_size, model.arch.normalization());
    // The test pipeline has no random step; the RNG is never drawn from.
    let x = pipeline.apply(img, &mut crate::transforms::sample_rng(0, 0, 0))?;
    let s = image_size as usize;
    let x = Tensor::from_vec(x, (1, 3, s, s), &Device::Cpu)?.to_device(model.device())?;
    let probs = candle_nn::ops::softmax(&model.forward_t(&x, false)?, 1)?.squeeze(0)?.to_vec1::<f32>()?;
    let mut order: Vec<usize> = (0..probs.len()).collect();
    order.sort_by(|&i, &j| probs[j].total_cmp(&probs[i]));
    Ok(order
        .into_iter()
        .take(top_k)
        .map(|i| Prediction { index: i, class: model.class_names.get(i).cloned().unwrap_or_else(|| i.to_string()), probability: probs[i] })
        .collect())
}

/// Open an image file for [`predict`], naming the file on failure.
pub fn open_image(path: &Path) -> anyhow::Result<RgbImage> {
    crate::data::decode_image(path).with_context(|| format!("cannot read image {}", path.display()))
}

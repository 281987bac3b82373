//! Inference with a saved or pretrained model: load it (a run's `model.safetensors` names its
//! backbone and classes; ImageNet checkpoints get the 1000 ImageNet names) and rank classes.

use crate::models::weights::{read_safetensors_metadata, read_tensors};
use crate::models::{Arch, BnMode, Classifier, Freeze, HeadInit, ModelOptions, WeightsSource};
use crate::transforms::Pipeline;
use anyhow::{bail, Context};
use candle_core::{Device, Tensor};
use image::RgbImage;
use std::path::Path;
use std::sync::Arc;

/// A model for inference (BatchNorm on running statistics). `backbone` overrides the name
/// stored in a run's `model.safetensors`; checkpoints without one need it.
pub fn load_model(weights: &WeightsSource, backbone: Option<&str>, device: &Device, cache: Option<&Path>) -> anyhow::Result<Classifier> {
    let path = weights.resolve(cache)?;
    let meta = if path.extension().is_some_and(|e| e == "safetensors") { read_safetensors_metadata(&path)? } else { Default::default() };
    let arch = match (backbone, meta.get("backbone")) {
        (Some(b), _) => Arch::from_name(b)?,
        (None, Some(b)) => Arch::from_name(b)?,
        (None, None) => bail!("{} does not name its backbone: pass the backbone explicitly", path.display()),
    };
    let class_names: Vec<String> = match meta.get("classes") {
        Some(c) => serde_json::from_str(c).with_context(|| format!("{}: bad 'classes' metadata", path.display()))?,
        None => crate::imagenet::class_names(),
    };
    let tensors = read_tensors(&path)?;
    let opts = ModelOptions { arch, class_names, head_init: HeadInit::ImageNet, freeze: Freeze::Nothing, bn_mode: BnMode::Frozen, seed: 0 };
    Classifier::pretrained(&opts, Arc::new(tensors), &path.display().to_string(), device)
}

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
    Ok(image::open(path).with_context(|| format!("cannot read image {}", path.display()))?.to_rgb8())
}

//! A whole classifier to and from a file: a run's `model.safetensors` (its backbone and class
//! names in the metadata), or pretrained ImageNet weights with a new or the original head.

use super::card::ModelCard;
use super::source::WeightsSource;
use super::weights::{read_tensors, save_safetensors};
use crate::models::{Arch, BnMode, Classifier, HeadInit, ModelOptions, NamedTensors};
use anyhow::{bail, Context};
use candle_core::Device;
use std::path::Path;

/// Save every tensor of `model` as safetensors, with its backbone and class names as metadata
/// (written to a temporary file, then renamed).
pub fn save_model(model: &Classifier, path: &Path) -> anyhow::Result<()> {
    save_safetensors(&model.state(), model.metadata(), path)
}

/// [`save_model`] with a [`ModelCard`] (image size, normalization, date, accuracy) in the
/// metadata too; the model's own backbone and class names win over the card's.
pub fn save_model_with_card(model: &Classifier, card: &ModelCard, path: &Path) -> anyhow::Result<()> {
    let mut meta = card.to_metadata();
    meta.extend(model.metadata());
    save_safetensors(&model.state(), meta, path)
}

/// The tensors of a weights file, named by the file's path for error messages.
pub fn read_named(path: &Path) -> anyhow::Result<NamedTensors> {
    Ok(NamedTensors::new(read_tensors(path)?, path.display().to_string()))
}

/// A classifier built from pretrained weights per `opts` (fresh or ImageNet head); tells on
/// stderr which tensors of the file it did not use.
pub fn load_pretrained(opts: &ModelOptions, path: &Path, device: &Device) -> anyhow::Result<Classifier> {
    let p = read_named(path)?;
    let model = Classifier::pretrained(opts, &p, device)?;
    let used = model.state();
    let head = opts.arch.head_prefix();
    let (head_unused, other): (Vec<&String>, Vec<&String>) = p
        .tensors
        .keys()
        .filter(|k| !used.contains_key(*k) && !k.ends_with("num_batches_tracked"))
        .partition(|k| k.starts_with(&format!("{head}.")));
    if !head_unused.is_empty() && opts.head_init == HeadInit::Xavier {
        eprintln!("pretrained head '{head}' replaced by a fresh {}-class head", model.num_classes());
    }
    if !other.is_empty() {
        eprintln!("warning: {} tensors of {} were not used: {:?}", other.len(), p.origin, other);
    }
    Ok(model)
}

/// A model for inference (BatchNorm on running statistics). `arch` overrides the backbone
/// named in a run's `model.safetensors`; checkpoints without one need it. Checkpoints without
/// class names get ImageNet's 1000.
pub fn load_model(weights: &WeightsSource, arch: Option<Arch>, device: &Device, cache: Option<&Path>) -> anyhow::Result<Classifier> {
    Ok(load_model_with_card(weights, arch, device, cache)?.0)
}

/// [`load_model`], and the file's [`ModelCard`] (how to preprocess its input, what it is).
pub fn load_model_with_card(weights: &WeightsSource, arch: Option<Arch>, device: &Device, cache: Option<&Path>) -> anyhow::Result<(Classifier, ModelCard)> {
    let path = weights.resolve(cache)?;
    let card = ModelCard::read(&path)?;
    let arch = match (arch, card.arch().with_context(|| path.display().to_string())?) {
        (Some(a), _) => a,
        (None, Some(a)) => a,
        (None, None) => bail!("{} does not name its backbone: pass the backbone explicitly", path.display()),
    };
    let class_names = card.classes.clone().unwrap_or_else(crate::util::imagenet::class_names);
    let opts = ModelOptions { head_init: HeadInit::ImageNet, bn_mode: BnMode::Frozen, ..ModelOptions::new(arch, class_names) };
    let model = Classifier::pretrained(&opts, &read_named(&path)?, device)?;
    Ok((model, card))
}

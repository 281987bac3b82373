//! One experiment of the chapter, end to end: data, model, phases, outputs.
//! This is what the CLI's training commands and the notebooks call.

use crate::checkpoint::{card::now_rfc3339, load_pretrained, save_model_with_card, ModelCard, RunFiles, WeightsSource};
use crate::data::image_folder::load_train_test_limited;
use crate::data::ImageFolder;
use crate::models::{Arch, Classifier, HeadInit, ModelOptions};
use crate::train::{train, History, PhaseConfig, TrainConfig};
use crate::transforms::Pipeline;
use anyhow::Context;
use candle_core::Device;
use std::path::PathBuf;
use std::sync::Arc;

/// Where the backbone's starting weights come from.
#[derive(Clone, Debug, PartialEq)]
pub enum ModelInit {
    Pretrained(WeightsSource),
    Scratch,
}

/// Which training augmentation to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Augment {
    /// RandomResizedCrop + flip (d2l).
    D2l,
    /// Resize 256 + random 224 crop + flip (the Keras lesson).
    Keras,
}

#[derive(Clone, Debug)]
pub struct Experiment {
    pub title: String,
    pub data: PathBuf,
    pub arch: Arch,
    pub init: ModelInit,
    pub phases: Vec<PhaseConfig>,
    pub batch_size: usize,
    pub image_size: u32,
    pub augment: Augment,
    pub seed: u64,
    pub device: Device,
    /// Output folder: history.json, curves.png/svg, model.safetensors, checkpoint/.
    pub out: Option<PathBuf>,
    pub resume: bool,
    /// Replace the outputs of a finished or interrupted run in `out` (else refused).
    pub overwrite: bool,
    pub progress: bool,
    /// Use only the first N images of each class (quick runs).
    pub limit_per_class: Option<usize>,
    /// Cache for hub downloads (hf-hub's default when `None`).
    pub cache_dir: Option<PathBuf>,
    /// How the new head starts (Xavier, or with the ImageNet "hotdog" row).
    pub head_init: HeadInit,
}

pub struct ExperimentResult {
    pub model: Classifier,
    pub history: History,
    pub train_data: Arc<ImageFolder>,
    pub test_data: Arc<ImageFolder>,
}

/// Load a `DIR/{train,test}` dataset, optionally keeping the first `limit` files per class
/// (chosen before decoding).
pub fn load_data(dir: &std::path::Path, limit: Option<usize>) -> anyhow::Result<(Arc<ImageFolder>, Arc<ImageFolder>)> {
    let (train, test) = load_train_test_limited(dir, limit)?;
    for ds in [&train, &test] {
        eprintln!("{}", ds.summary());
        for s in &ds.skipped {
            eprintln!("  skipped {}: {}", crate::paths::shown(&s.path), s.reason);
        }
    }
    if train.classes.len() < 2 {
        anyhow::bail!(
            "{} has {} class folder ({:?}): a classifier needs at least 2 (it would score 100% by answering the one class)",
            dir.join("train").display(),
            train.classes.len(),
            train.classes
        );
    }
    Ok((Arc::new(train), Arc::new(test)))
}

/// Build the model an experiment starts from (pretrained weights are read from a local file
/// or the hub cache).
pub fn build_model(opts: &ModelOptions, init: &ModelInit, device: &Device, cache_dir: Option<&std::path::Path>) -> anyhow::Result<Classifier> {
    match init {
        ModelInit::Scratch => Classifier::scratch(opts, device),
        ModelInit::Pretrained(src) => load_pretrained(opts, &src.resolve(cache_dir)?, device),
    }
}

/// Run an experiment: load data, build the model, train all phases, write the outputs.
pub fn fine_tune(exp: &Experiment) -> anyhow::Result<ExperimentResult> {
    // Fetch or find the weights first: a wrong path should not wait for a thousand decodes.
    let init = match &exp.init {
        ModelInit::Pretrained(src) => ModelInit::Pretrained(WeightsSource::File(src.resolve(exp.cache_dir.as_deref())?)),
        ModelInit::Scratch => ModelInit::Scratch,
    };
    // A missing data folder is reported before the output folder is touched.
    crate::data::image_folder::class_folders(&exp.data.join("train")).with_context(|| format!("loading the training split of {}", exp.data.display()))?;
    // Lock the output folder, and refuse to replace a run's results unasked.
    let _lock = match &exp.out {
        Some(out) => Some(crate::checkpoint::out_folder::prepare(out, exp.resume, exp.overwrite)?),
        None => None,
    };
    let (train_data, test_data) = load_data(&exp.data, exp.limit_per_class)?;
    let opts = ModelOptions { head_init: exp.head_init.clone(), seed: exp.seed, ..ModelOptions::new(exp.arch, train_data.classes.clone()) };
    let model = build_model(&opts, &init, &exp.device, exp.cache_dir.as_deref())?;
    let norm = exp.arch.normalization();
    let train_pipeline = match exp.augment {
        Augment::D2l => Pipeline::d2l_train(exp.image_size, norm),
        Augment::Keras => Pipeline::keras_train(exp.image_size, norm),
    };
    let cfg = TrainConfig {
        batch_size: exp.batch_size,
        seed: exp.seed,
        train_pipeline,
        test_pipeline: Pipeline::d2l_test(exp.image_size, norm),
        checkpoint_dir: exp.out.as_ref().map(|o| RunFiles::under(o).dir),
        resume: exp.resume,
        progress: exp.progress,
        device_label: crate::device_label(&exp.device),
    };
    if let Some(out) = &exp.out {
        std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    }
    let out = exp.out.clone();
    let mut first_epoch = true;
    let title = exp.title.clone();
    let mut on_epoch = |_: &crate::train::EpochRecord, h: &History| {
        if let Some(o) = &out {
            // A resumed run's old final model no longer matches the new history; the
            // checkpoint holds the current weights until the run writes its own.
            if std::mem::take(&mut first_epoch) {
                let _ = std::fs::remove_file(o.join("model.safetensors"));
            }
            // Rewritten each epoch so a long run can be watched while it trains.
            let _ = h.save_json(&o.join("history.json"));
            let _ = crate::plot::save_curves(h, &title, &o.join("curves.png"), &o.join("curves.svg"));
        }
    };
    let outcome = train(model, train_data.clone(), test_data.clone(), &exp.phases, &cfg, &mut on_epoch)?;
    if let Some(o) = &exp.out {
        outcome.history.save_json(&o.join("history.json"))?;
        crate::plot::save_curves(&outcome.history, &exp.title, &o.join("curves.png"), &o.join("curves.svg"))?;
        let kept = outcome.history.best_epoch.and_then(|e| outcome.history.records.iter().find(|r| r.epoch == e)).or(outcome.history.last());
        let card = ModelCard {
            image_size: Some(exp.image_size),
            normalization: Some(norm),
            trained_at: Some(now_rfc3339()),
            test_accuracy: kept.map(|r| r.test_acc),
            ..Default::default()
        };
        crate::checkpoint::atomic::fault_point("history");
        save_model_with_card(&outcome.model, &card, &o.join("model.safetensors"))?;
    }
    Ok(ExperimentResult { model: outcome.model, history: outcome.history, train_data, test_data })
}

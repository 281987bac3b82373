//! One experiment of the chapter, end to end: data, model, phases, outputs.
//! This is what the CLI's training commands and the notebooks call.

use crate::checkpoint::{card::now_rfc3339, load_pretrained, save_model_with_card, ModelCard, RunFiles, WeightsSource};
use crate::data::image_folder::load_train_test_limited;
use crate::data::{Duplicates, ImageFolder, SplitSpec};
use crate::tasks::evaluation::{evaluate_split_with, write_report, Evaluation};
use crate::models::{Arch, Classifier, HeadInit, ModelOptions};
use crate::ops::Kernels;
use crate::train::{train_validated, History, PhaseConfig, TrainConfig};
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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Augment {
    /// RandomResizedCrop + flip (d2l).
    D2l,
    /// Resize 256 + random 224 crop + flip (the Keras lesson).
    Keras,
}

impl crate::util::Choice for Augment {
    const CHOICES: &'static [crate::util::Named<Self>] = &[
        crate::util::Named { value: Augment::D2l, name: "d2l", aliases: &[], help: "RandomResizedCrop + flip (d2l)" },
        crate::util::Named { value: Augment::Keras, name: "keras", aliases: &[], help: "Resize 256 + random 224 crop + flip (the Keras lesson)" },
    ];
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
    /// Hold out this fraction of each class of `DIR/train` for validation (seeded with `seed`);
    /// `DIR/val/` is used instead when it exists. Early stopping needs one of the two.
    pub val_split: Option<f64>,
    /// Cut an unsplit folder of classes (`DIR/<class>/*`) into train, validation and test
    /// (`--split 0.8,0.1,0.1`); `None`: `DIR/{train,test}` (and `DIR/val`) as they are.
    pub split: Option<SplitSpec>,
    /// The CPU kernels of the model's convolutions (precision, Winograd); recorded in the
    /// checkpoint and the model card, and a resumed run must keep them.
    pub kernels: Kernels,
}

pub struct ExperimentResult {
    pub model: Classifier,
    pub history: History,
    pub train_data: Arc<ImageFolder>,
    /// The validation photos (carved from train or `DIR/val`), if any.
    pub val_data: Option<Arc<ImageFolder>>,
    pub test_data: Arc<ImageFolder>,
    /// The kept model on the test photos (also in `OUT/metrics.json`).
    pub test: Evaluation,
    /// Identical photos across classes and across the parts (also in `OUT/data.json`).
    pub duplicates: Duplicates,
}

/// A data set's parts as a run uses them: train, validation (if any), test.
#[derive(Clone)]
pub struct DataParts {
    pub train: Arc<ImageFolder>,
    pub val: Option<Arc<ImageFolder>>,
    pub test: Arc<ImageFolder>,
    /// Identical files across classes and parts ([`crate::data::duplicates::find`]).
    pub duplicates: Duplicates,
}

impl DataParts {
    /// The parts by name, `train`, `val`, `test`.
    pub fn named(&self) -> Vec<(&'static str, &ImageFolder)> {
        let mut v: Vec<(&'static str, &ImageFolder)> = vec![("train", &self.train)];
        if let Some(val) = &self.val {
            v.push(("val", val));
        }
        v.push(("test", &self.test));
        v
    }

    /// `OUT/data.json`: each part's size and classes, the split if one was cut, and every duplicate.
    pub fn save_json(&self, split: Option<&SplitSpec>, path: &std::path::Path) -> anyhow::Result<()> {
        let parts: serde_json::Map<String, serde_json::Value> = self
            .named()
            .into_iter()
            .map(|(n, ds)| (n.to_string(), serde_json::json!({ "photos": ds.len(), "per_class": ds.classes.iter().cloned().zip(ds.class_counts()).collect::<std::collections::BTreeMap<_, _>>() })))
            .collect();
        let shown = |p: &crate::data::duplicates::Photo| serde_json::json!({ "part": p.part, "class": p.class, "path": crate::util::paths::shown(&p.path) });
        let pairs = |v: &[(crate::data::duplicates::Photo, crate::data::duplicates::Photo)]| v.iter().map(|(a, b)| serde_json::json!([shown(a), shown(b)])).collect::<Vec<_>>();
        let value = serde_json::json!({
            "split": split,
            "parts": parts,
            "duplicates": { "across_classes": pairs(&self.duplicates.across_classes), "leaks": pairs(&self.duplicates.leaks) },
        });
        crate::checkpoint::atomic::write_json_atomic(path, &value)
    }
}

/// Load a `DIR/{train,test}` dataset, optionally keeping the first `limit` files per class
/// (chosen before decoding).
pub fn load_data(dir: &std::path::Path, limit: Option<usize>) -> anyhow::Result<(Arc<ImageFolder>, Arc<ImageFolder>)> {
    let parts = load_parts(dir, None, None, 0, limit)?;
    Ok((parts.train, parts.test))
}

/// Check where the parts would come from, before anything is read: `val_split` must lie in
/// (0, 1) and cannot be given beside a `DIR/val/` folder or with `split`; `split` needs an
/// unsplit folder (no `DIR/train`). Returns whether the run has validation photos.
pub fn check_data_source(dir: &std::path::Path, split: Option<&SplitSpec>, val_split: Option<f64>) -> anyhow::Result<bool> {
    let val_dir = dir.join("val");
    if let Some(sp) = split {
        if let Some(f) = val_split {
            anyhow::bail!("--val-split {} was given with --split {}: give the validation share in --split (train,validation,test)", crate::util::paths::number(f), sp.describe());
        }
        if dir.join("train").is_dir() {
            anyhow::bail!("--split {} cuts an unsplit folder of classes, but {} is already split (it has train/): drop --split to use its train/ and test/", sp.describe(), dir.display());
        }
        crate::data::image_folder::class_folders(dir)?;
        return Ok(sp.val > 0.0);
    }
    if !dir.join("train").is_dir() && dir.is_dir() && crate::data::image_folder::class_folders(dir).is_ok() {
        anyhow::bail!(
            "{} has no train/ folder but has class folders: it is an unsplit data set, cut it with --split 0.8,0.1,0.1 (train, validation, test)",
            dir.display()
        );
    }
    match (val_split, val_dir.is_dir()) {
        (Some(f), true) => anyhow::bail!("--val-split {} was given but {} exists: use the folder (drop --val-split) or remove it", crate::util::paths::number(f), val_dir.display()),
        (Some(f), false) => crate::data::check_val_fraction(f).map(|_| true),
        (None, has_folder) => Ok(has_folder),
    }
}

/// The parts of a data set: with `split`, the class folders of `DIR` cut by it; else
/// `DIR/{train,test}`, validation from `DIR/val/` when it exists, else carved from train with
/// `val_split` (seeded, stratified), else none. The first `limit` images per class are kept
/// before any cutting. Duplicates across classes and parts are found and printed.
pub fn load_parts(dir: &std::path::Path, split: Option<&SplitSpec>, val_split: Option<f64>, seed: u64, limit: Option<usize>) -> anyhow::Result<DataParts> {
    check_data_source(dir, split, val_split)?;
    let (train, val, test) = match split {
        Some(sp) => {
            let all = ImageFolder::load_limited(dir, &crate::data::image_folder::class_folders(dir)?, limit)?;
            eprintln!("{}", all.summary());
            for sk in &all.skipped {
                eprintln!("  skipped {}: {}", crate::util::paths::shown(&sk.path), sk.reason);
            }
            let (t, v, s) = sp.apply(&all)?;
            eprintln!("--split {}: {} train, {} validation, {} test photos", sp.describe(), t.len(), v.as_ref().map_or(0, |v| v.len()), s.len());
            (t, v, s)
        }
        None => load_split_folders(dir, val_split, seed, limit)?,
    };
    if train.classes.len() < 2 {
        anyhow::bail!(
            "{} has {} class folder ({:?}): a classifier needs at least 2 (it would score 100% by answering the one class)",
            if split.is_some() { dir.to_path_buf() } else { dir.join("train") }.display(),
            train.classes.len(),
            train.classes
        );
    }
    let mut parts = DataParts { train: Arc::new(train), val: val.map(Arc::new), test: Arc::new(test), duplicates: Duplicates::default() };
    parts.duplicates = crate::data::duplicates::find(&parts.named());
    if !parts.duplicates.is_empty() {
        eprintln!("duplicates: {} (kept as they are; listed in the run's data.json)", parts.duplicates.summary());
        for line in parts.duplicates.lines() {
            eprintln!("  {line}");
        }
    }
    Ok(parts)
}

/// `DIR/{train,test}` and validation (`DIR/val/`, or carved from train with `val_split`).
fn load_split_folders(dir: &std::path::Path, val_split: Option<f64>, seed: u64, limit: Option<usize>) -> anyhow::Result<(ImageFolder, Option<ImageFolder>, ImageFolder)> {
    // The first `limit` files per class are picked before anything is decoded.
    let (train, test) = load_train_test_limited(dir, limit)?;
    let val_dir = dir.join("val");
    let val = if val_dir.is_dir() {
        Some(ImageFolder::load_limited(&val_dir, &train.classes, limit).with_context(|| format!("loading the validation split of {}", dir.display()))?)
    } else {
        None
    };
    for ds in [Some(&train), val.as_ref(), Some(&test)].into_iter().flatten() {
        eprintln!("{}", ds.summary());
        for sk in &ds.skipped {
            eprintln!("  skipped {}: {}", crate::util::paths::shown(&sk.path), sk.reason);
        }
    }
    // (A `val_split` beside `DIR/val/` was refused above.)
    Ok(match (val, val_split) {
        (Some(v), _) => {
            // An empty class would make the validation loss meaningless (0 for an empty set).
            if let Some((c, _)) = v.classes.iter().zip(v.class_counts()).find(|(_, n)| *n == 0) {
                anyhow::bail!("{} has no images of class '{c}': every class needs validation photos", v.root.display());
            }
            (train, Some(v), test)
        }
        (None, Some(f)) if train.classes.len() >= 2 => {
            let (t, v) = crate::data::carve_validation(&train, f, seed)?;
            eprintln!("validation: {} photos held out of train ({} of each class, seed {seed}), {} left to train on", v.len(), crate::util::paths::number(f), t.len());
            (t, Some(v), test)
        }
        (None, _) => (train, None, test),
    })
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
    // Flag conflicts fail before the output folder is touched.
    let has_validation = check_data_source(&exp.data, exp.split.as_ref(), exp.val_split)?;
    crate::train::fit::check_validation_for(&exp.phases, has_validation)?;
    // Fetch or find the weights first: a wrong path should not wait for a thousand decodes.
    let init = match &exp.init {
        ModelInit::Pretrained(src) => ModelInit::Pretrained(WeightsSource::File(src.resolve(exp.cache_dir.as_deref())?)),
        ModelInit::Scratch => ModelInit::Scratch,
    };
    // A missing data folder is reported before the output folder is touched.
    if exp.split.is_none() {
        crate::data::image_folder::class_folders(&exp.data.join("train")).with_context(|| format!("loading the training split of {}", exp.data.display()))?;
    }
    // Lock the output folder, and refuse to replace a run's results unasked.
    let _lock = match &exp.out {
        Some(out) => Some(crate::checkpoint::out_folder::prepare(out, exp.resume, exp.overwrite)?),
        None => None,
    };
    let data = load_parts(&exp.data, exp.split.as_ref(), exp.val_split, exp.seed, exp.limit_per_class)?;
    let opts = ModelOptions { head_init: exp.head_init.clone(), seed: exp.seed, kernels: exp.kernels, ..ModelOptions::new(exp.arch, data.train.classes.clone()) };
    let model = build_model(&opts, &init, &exp.device, exp.cache_dir.as_deref())?;
    // --overwrite: the old run is set aside only now that the new one's data and model have
    // loaded, and comes back if the new run fails.
    let replaced = match (exp.overwrite, &exp.out) {
        (true, Some(out)) => Some(crate::checkpoint::out_folder::set_aside(out)?),
        _ => None,
    };
    let result = train_and_write(exp, model, data);
    match (replaced, &result) {
        (Some(r), Ok(_)) => r.discard()?,
        (Some(r), Err(_)) => {
            r.restore()?;
            if let Some(out) = &exp.out {
                eprintln!("the new run failed: {} holds the run it was to replace, as it was", crate::util::paths::shown(out));
            }
        }
        (None, _) => {}
    }
    // A resumed run that finishes completes an interrupted --overwrite: its predecessor goes.
    if let (Ok(_), Some(out), false) = (&result, &exp.out, exp.overwrite) {
        let aside = out.join(crate::checkpoint::out_folder::REPLACED);
        if aside.is_dir() {
            std::fs::remove_dir_all(&aside).with_context(|| format!("removing {}", aside.display()))?;
        }
    }
    result
}

/// Train an experiment's model and write its outputs (the part of [`fine_tune`] after loading).
fn train_and_write(exp: &Experiment, model: Classifier, data: DataParts) -> anyhow::Result<ExperimentResult> {
    let DataParts { train: train_data, val: val_data, test: test_data, duplicates } = data.clone();
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
        recorded: vec![
            ("the backbone's start (scratch, or pretrained weights)".into(), if exp.init == ModelInit::Scratch { "scratch".into() } else { "pretrained".into() }),
            ("--head-init".into(), format!("{:?}", exp.head_init)),
            ("--image-size".into(), exp.image_size.to_string()),
            ("--augment".into(), format!("{:?}", exp.augment).to_lowercase()),
            ("--split".into(), exp.split.as_ref().map_or("none (DIR/train, DIR/test)".into(), |s| s.describe())),
        ],
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
    let outcome = train_validated(model, train_data.clone(), val_data.clone(), test_data.clone(), &exp.phases, &cfg, &mut on_epoch)?;
    // The test split is touched once more, by the model that was kept.
    let test = evaluate_split_with(&outcome.model, &test_data, "test", &Pipeline::d2l_test(exp.image_size, norm), exp.batch_size)?;
    if let Some(o) = &exp.out {
        outcome.history.save_json(&o.join("history.json"))?;
        crate::plot::save_curves(&outcome.history, &exp.title, &o.join("curves.png"), &o.join("curves.svg"))?;
        let card = ModelCard {
            image_size: Some(exp.image_size),
            normalization: Some(norm),
            trained_at: Some(now_rfc3339()),
            test_accuracy: Some(test.metrics.accuracy),
            kernels: Some(outcome.model.kernels),
            split: exp.split,
            ..Default::default()
        };
        crate::checkpoint::atomic::fault_point("history");
        save_model_with_card(&outcome.model, &card, &o.join("model.safetensors"))?;
        write_report(&test, &test_data, &exp.title, o)?;
        data.save_json(exp.split.as_ref(), &o.join("data.json"))?;
    }
    Ok(ExperimentResult { model: outcome.model, history: outcome.history, train_data, val_data, test_data, test, duplicates })
}

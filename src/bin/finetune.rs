//! `finetune`: every experiment of the fine-tuning chapter from the command line.

use anyhow::{bail, Context};
use candle_core::Device;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::sync::Arc;
use transfer_workbook::checkpoint::{default_weights, load_model, load_model_with_card, WeightsSource};
use transfer_workbook::data::{hotdog, ImageFolder};
use transfer_workbook::ops::Precision;
use transfer_workbook::models::{Arch, BnMode, Classifier, Freeze, HeadInit, ModelOptions};
use transfer_workbook::predict::report::Format;
use transfer_workbook::train::limits;
use transfer_workbook::train::{recipes, EarlyStopping, OptimizerKind, PhaseConfig, Reduction, Schedule};
use transfer_workbook::transforms::{Normalization, Pipeline};
use transfer_workbook::{device_label, fine_tune, parse_device, Augment, Experiment, ModelInit};

/// The environment variables the downloads read (README "The first run, online").
const ENVIRONMENT: &str = "\
Environment:
  WORKBOOK_HOTDOG_URL  where hotdog.zip comes from instead of d2l's URL: URL (d2l's SHA-1 is
                       expected) or URL#sha1=HEX (another file)
  HF_ENDPOINT          the Hugging Face hub's address (default https://huggingface.co)
  HF_HOME              the hub cache is $HF_HOME/hub (default ~/.cache/huggingface/hub) unless
                       --cache-dir DIR is given (then DIR/hub)
  HF_HUB_OFFLINE=1     never ask the hub: hub weights come from the cache only
  WORKBOOK_WEIGHTS_DIR first folder searched for local weights files (EfficientNet-Lite0)";

#[derive(Parser)]
#[command(name = "finetune", version, about = "Fine-tuning pretrained CNNs with Candle: the d2l.ai hot-dog chapter and the Keras two-phase recipe", after_help = ENVIRONMENT)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// d2l 13.2: fine-tune a pretrained backbone (SGD, lr 5e-5 on the summed loss, head 10x).
    Finetune(TrainArgs),
    /// d2l 13.2: the same network from random weights (lr 5e-4, one learning rate).
    Scratch(TrainArgs),
    /// Train the head only, backbone frozen (feature extraction).
    Freeze(TrainArgs),
    /// The Keras recipe: head first (Adam 1e-3, backbone frozen), then the top blocks at 1e-5.
    TwoPhase(TwoPhaseArgs),
    /// Classify images (files, folders searched recursively, globs) in batches: text, JSON or CSV.
    Predict(PredictArgs),
    /// Learning-rate finder: an exponential lr sweep over one pass; plot, JSON and a suggested lr
    /// (fastai's valley rule: the middle of the longest falling stretch of the smoothed loss).
    /// The weights file is not changed and nothing is saved but the plot and JSON.
    LrFind(LrFindArgs),
    /// The model's head, its parameter counts and its freezable blocks.
    Info(InfoArgs),
    /// The first 8 images of the first class and the last 8 of the last, as one PNG grid.
    Peek(PeekArgs),
    /// Classify the test photos with the untouched ImageNet head: "hot dog" iff class 934 wins.
    ZeroShot(ZeroShotArgs),
    /// Time training steps and inference on random data (img/s), optionally a real epoch on photos.
    Bench(BenchArgs),
    /// Download and unpack the d2l hot-dog data set (SHA-1 checked; $WORKBOOK_HOTDOG_URL overrides the URL).
    Download(DownloadArgs),
    /// Serve a saved model over HTTP: a SeeFood page at /, POST /predict, GET /model, GET /health.
    #[cfg(feature = "serve")]
    Serve(transfer_workbook::serve::cli::ServeArgs),
    /// A saved model on one split: OUT/metrics.json, OUT/confusion.png, OUT/top-losses.png.
    Evaluate(EvaluateArgs),
}

/// `--optimizer`: the update rule (the recipe's momentum and weight decay unless given).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum OptimizerName {
    Sgd,
    /// AdamW without weight decay unless `--weight-decay` is given.
    Adam,
    Adamw,
}

/// `--head-init`: how the new head starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum HeadStart {
    /// Xavier-uniform weights (d2l).
    Xavier,
    /// The hot-dog row from ImageNet class 934 (d2l exercise 4).
    #[value(alias = "imagenet-934")]
    Hotdog,
}

/// `--normalization`: the input contracts of the Keras applications.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Preprocessing {
    /// ImageNet mean/std (torchvision, ResNet).
    Imagenet,
    /// Scaled to [-1, 1] (TensorFlow, EfficientNet-Lite).
    #[value(alias = "minus-one-one")]
    Tf,
    /// BGR minus the ImageNet mean (Caffe).
    Caffe,
    /// Scaled to [0, 1].
    Unit,
}

impl From<Preprocessing> for Normalization {
    fn from(p: Preprocessing) -> Self {
        match p {
            Preprocessing::Imagenet => Normalization::imagenet(),
            Preprocessing::Tf => Normalization::MinusOneOne,
            Preprocessing::Caffe => Normalization::CaffeBgr,
            Preprocessing::Unit => Normalization::Unit,
        }
    }
}

#[derive(Args)]
struct BenchArgs {
    /// Backbones, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "resnet18,efficientnet-lite0")]
    backbone: Vec<Arch>,
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    #[arg(long, default_value_t = 224)]
    image_size: u32,
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    #[arg(long, default_value_t = 3)]
    steps: usize,
    #[arg(long, default_value = "none")]
    freeze: Freeze,
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Run depthwise convolutions through Candle's grouped conv (the "before" of the benchmark).
    #[arg(long)]
    candle_depthwise: bool,
    /// Also time one real epoch on this data folder: decode DIR/train, then augment + train.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Append the results as JSON lines to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Arithmetic of the CPU convolutions: f32, or bf16 products with f32 sums (AVX512-BF16).
    #[arg(long, default_value = "f32")]
    precision: Precision,
}

#[derive(Args)]
struct ZeroShotArgs {
    #[arg(long)]
    data: Option<PathBuf>,
    #[arg(long, default_value = "test")]
    split: String,
    #[arg(long, default_value = "efficientnet-lite0")]
    backbone: Arch,
    /// Pretrained ImageNet weights (default: the backbone's).
    #[arg(long)]
    weights: Option<String>,
    /// The folder holding hot dogs (default: the one named like 'hotdog').
    #[arg(long)]
    positive_class: Option<String>,
    /// Override the backbone's preprocessing, to compare contracts.
    #[arg(long)]
    normalization: Option<Preprocessing>,
    #[arg(long, default_value_t = 224)]
    image_size: u32,
    #[arg(long, default_value_t = 50)]
    batch_size: usize,
    #[arg(long, default_value = "cpu")]
    device: String,
    #[arg(long)]
    cache_dir: Option<PathBuf>,
}

#[derive(Args, Clone)]
struct CommonArgs {
    /// Data folder with train/<class>/ and test/<class>/ (default: download d2l's hotdog.zip, or $WORKBOOK_HOTDOG_URL).
    #[arg(long)]
    data: Option<PathBuf>,
    #[arg(long, default_value = "resnet18")]
    backbone: Arch,
    /// Pretrained weights: a .safetensors or .pth file, or hf:owner/repo[/file] (default: the backbone's hub weights).
    #[arg(long)]
    weights: Option<String>,
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    #[arg(long, default_value_t = 224)]
    image_size: u32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Output folder (default: runs/<command>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue from OUT/checkpoint if a previous run left one.
    #[arg(long)]
    resume: bool,
    /// Replace the outputs and checkpoint a previous run left in OUT (refused otherwise).
    #[arg(long)]
    overwrite: bool,
    /// Use only the first N images of each class (quick runs).
    #[arg(long)]
    limit_per_class: Option<usize>,
    /// Where downloads are cached: DIR/data (hotdog.zip) and DIR/hub (hub weights); default .cache/data and $HF_HOME/hub.
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// No progress bars.
    #[arg(long)]
    quiet: bool,
    /// Arithmetic of the CPU convolutions: f32, or bf16 products with f32 sums (CPUs with
    /// AVX512-BF16; weights, gradients and optimizer state stay f32).
    #[arg(long, default_value = "f32")]
    precision: Precision,
    /// Hold out this fraction (0 < F < 1) of each class's training photos for validation
    /// (stratified, seeded with --seed); DIR/val/ is used instead when it exists. Early
    /// stopping and the kept epoch look at validation, never at test.
    #[arg(long)]
    val_split: Option<f64>,
}

#[derive(Args, Clone)]
#[command(after_help = ENVIRONMENT)]
struct TrainArgs {
    #[command(flatten)]
    common: CommonArgs,
    #[arg(long, default_value_t = 5)]
    epochs: usize,
    /// Backbone learning rate (default: the recipe's).
    #[arg(long)]
    lr: Option<f64>,
    /// Head learning rate = lr x this (default: the recipe's).
    #[arg(long)]
    head_lr_mult: Option<f64>,
    /// The update rule (default: the recipe's).
    #[arg(long)]
    optimizer: Option<OptimizerName>,
    #[arg(long)]
    momentum: Option<f64>,
    #[arg(long)]
    weight_decay: Option<f64>,
    /// How the batch loss is reduced: sum (d2l) or mean.
    #[arg(long)]
    loss: Option<Reduction>,
    /// none, backbone, or a block name: freeze every block below it (e.g. layer3).
    #[arg(long)]
    freeze: Option<Freeze>,
    /// BatchNorm while training: batch statistics (train) or running statistics (frozen).
    #[arg(long)]
    bn: Option<BnMode>,
    /// Stop after this many epochs without validation-loss improvement, keeping the best weights
    /// (needs --val-split or DIR/val/).
    #[arg(long)]
    patience: Option<usize>,
    /// Training augmentation: d2l (RandomResizedCrop + flip) or keras (resize + random crop + flip).
    #[arg(long, value_enum, default_value_t = Augment::D2l)]
    augment: Augment,
    #[command(flatten)]
    schedule: ScheduleArgs,
    /// The new head's start.
    #[arg(long, value_enum, default_value_t = HeadStart::Xavier)]
    head_init: HeadStart,
    /// With --head-init hotdog: the class folder that gets row 934 (default: the one named like 'hotdog').
    #[arg(long)]
    positive_class: Option<String>,
}

#[derive(Args, Clone)]
#[command(after_help = ENVIRONMENT)]
struct TwoPhaseArgs {
    #[command(flatten)]
    common: CommonArgs,
    #[arg(long, default_value_t = 10)]
    head_epochs: usize,
    #[arg(long, default_value_t = 10)]
    fine_epochs: usize,
    #[arg(long, default_value_t = 1e-3)]
    head_lr: f64,
    #[arg(long, default_value_t = 1e-5)]
    fine_lr: f64,
    /// First block to unfreeze in phase 2 (default: the backbone's top ~30%).
    #[arg(long)]
    unfreeze_from: Option<String>,
    #[arg(long, default_value_t = 3)]
    patience: usize,
    /// Applied to each phase on its own (each warms up and anneals over its own epochs).
    #[command(flatten)]
    schedule: ScheduleArgs,
}

/// The learning-rate schedule, applied per optimizer step within a phase; `lr` in history.json
/// is each epoch's mean backbone lr.
#[derive(Args, Clone)]
struct ScheduleArgs {
    /// constant (d2l, Keras), cosine (decay to 0), or onecycle (PyTorch's OneCycleLR: lr/25 up to lr, then down to lr/25/1e4).
    #[arg(long, value_enum, default_value_t = Schedule::Constant)]
    schedule: Schedule,
    /// Epochs at the start of each phase whose lr rises linearly to lr (onecycle: its rising part; default 30% of the steps).
    #[arg(long, default_value_t = 0)]
    warmup_epochs: usize,
}

impl ScheduleArgs {
    fn apply(&self, phase: &mut PhaseConfig) -> anyhow::Result<()> {
        if self.warmup_epochs > phase.epochs {
            bail!("--warmup-epochs {} is more than the {} epochs of phase '{}'", self.warmup_epochs, phase.epochs, phase.name);
        }
        phase.schedule = self.schedule;
        phase.warmup_epochs = self.warmup_epochs;
        Ok(())
    }
}

/// `lr-find --recipe`: whose optimizer, loss, freezing and head lr the sweep uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum LrRecipe {
    /// d2l fine-tuning: SGD, weight decay 1e-3, summed loss, head at 10x.
    Finetune,
    /// d2l from scratch (random weights).
    Scratch,
    /// d2l with the backbone frozen (head only).
    Freeze,
    /// The Keras recipe's phase 1: Adam, mean loss, backbone and BatchNorm frozen.
    KerasHead,
}

#[derive(Args)]
struct LrFindArgs {
    #[command(flatten)]
    common: CommonArgs,
    #[arg(long, value_enum, default_value_t = LrRecipe::Finetune)]
    recipe: LrRecipe,
    #[arg(long, default_value_t = 1e-7)]
    start_lr: f64,
    #[arg(long, default_value_t = 10.0)]
    end_lr: f64,
    /// At most this many steps (one pass over the training data at most: lower --batch-size for more).
    #[arg(long, default_value_t = 100)]
    steps: usize,
    /// Head lr = swept lr x this (default: the recipe's).
    #[arg(long)]
    head_lr_mult: Option<f64>,
}

#[derive(Args)]
struct EvaluateArgs {
    /// A model.safetensors written by a training command.
    #[arg(long)]
    weights: String,
    /// Data folder with <split>/<class>/ (default: download d2l's hotdog.zip).
    #[arg(long)]
    data: Option<PathBuf>,
    #[arg(long, default_value = "test")]
    split: String,
    /// Needed when the weights file does not name it.
    #[arg(long)]
    backbone: Option<Arch>,
    /// Default: the size stored in the model file (224 when it has none).
    #[arg(long)]
    image_size: Option<u32>,
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Where metrics.json, confusion.png and top-losses.png go.
    #[arg(long, default_value = "runs/evaluate")]
    out: PathBuf,
    #[arg(long)]
    cache_dir: Option<PathBuf>,
}

#[derive(Args)]
struct PredictArgs {
    /// Image files, folders (searched recursively for image files) and glob patterns ('photos/*.jpg').
    /// Unreadable images are skipped with a warning; the exit code is non-zero only if none could be read.
    #[arg(required = true)]
    images: Vec<String>,
    /// A model.safetensors written by a training command, or pretrained ImageNet weights.
    #[arg(long)]
    weights: Option<String>,
    /// Needed when the weights file does not name it.
    #[arg(long)]
    backbone: Option<Arch>,
    #[arg(long, default_value_t = 5)]
    top_k: usize,
    /// Input size (default: the one in the model file, else 224).
    #[arg(long)]
    image_size: Option<u32>,
    /// Images per forward pass.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    #[arg(long, default_value = "cpu")]
    device: String,
    #[arg(long)]
    cache_dir: Option<PathBuf>,
}

#[derive(Args)]
struct InfoArgs {
    #[arg(long, default_value = "resnet18")]
    backbone: Arch,
    /// Pretrained weights to inspect (default: random weights, same shapes).
    #[arg(long)]
    weights: Option<String>,
    #[arg(long)]
    cache_dir: Option<PathBuf>,
}

#[derive(Args)]
struct PeekArgs {
    #[arg(long)]
    data: Option<PathBuf>,
    /// Which split to show.
    #[arg(long, default_value = "train")]
    split: String,
    #[arg(long, default_value = "runs/peek.png")]
    out: PathBuf,
    #[arg(long)]
    cache_dir: Option<PathBuf>,
}

#[derive(Args)]
#[command(after_help = ENVIRONMENT)]
struct DownloadArgs {
    #[arg(long)]
    cache_dir: Option<PathBuf>,
}

/// A learning rate or multiplier: [`limits::positive`], and still above 0 and finite in
/// float32, the arithmetic of the update (`--lr 1e-50` passed the f64 check and trained
/// nothing: it is 0 in f32).
fn rate(flag: &str, value: f64) -> anyhow::Result<()> {
    limits::positive(flag, value)?;
    let (low, high) = (f32::MIN_POSITIVE as f64, f32::MAX as f64);
    if !(low..=high).contains(&value) {
        let becomes = if value < low { "0 (or a denormal)" } else { "infinite" };
        bail!("{flag} {value:e} is {becomes} in float32, the arithmetic of training: give a value between {low:e} and {high:e}");
    }
    Ok(())
}

fn default_cache() -> PathBuf {
    PathBuf::from(".cache")
}

fn data_dir(data: &Option<PathBuf>, cache: &Option<PathBuf>) -> anyhow::Result<PathBuf> {
    match data {
        Some(d) => Ok(d.clone()),
        None => {
            let cache = cache.clone().unwrap_or_else(default_cache).join("data");
            hotdog(&cache).context("getting the d2l hot-dog data (pass --data DIR to use a local copy)")
        }
    }
}

/// The hub cache under `--cache-dir DIR` (DIR/hub, as for training), else hf-hub's own.
fn hub_cache(cache: &Option<PathBuf>) -> Option<PathBuf> {
    cache.as_ref().map(|c| c.join("hub"))
}

fn weights_source(arch: Arch, weights: &Option<String>) -> WeightsSource {
    weights.as_deref().map(WeightsSource::parse).unwrap_or_else(|| default_weights(arch))
}

fn optimizer_from(a: &TrainArgs, base: &OptimizerKind) -> OptimizerKind {
    let (base_name, base_m, base_wd) = match base {
        OptimizerKind::Sgd { momentum, weight_decay } => (OptimizerName::Sgd, *momentum, *weight_decay),
        OptimizerKind::AdamW { weight_decay, .. } if *weight_decay == 0.0 => (OptimizerName::Adam, 0.0, 0.0),
        OptimizerKind::AdamW { weight_decay, .. } => (OptimizerName::Adamw, 0.0, *weight_decay),
    };
    let wd = a.weight_decay.unwrap_or(base_wd);
    match a.optimizer.unwrap_or(base_name) {
        OptimizerName::Sgd => OptimizerKind::sgd(a.momentum.unwrap_or(base_m), wd),
        OptimizerName::Adam => OptimizerKind::adamw(a.weight_decay.unwrap_or(0.0)),
        OptimizerName::Adamw => OptimizerKind::adamw(wd),
    }
}

fn experiment(common: &CommonArgs, command: &str, init: ModelInit, phases: Vec<PhaseConfig>, augment: Augment) -> anyhow::Result<Experiment> {
    let arch = common.backbone;
    let device = parse_device(&common.device)?;
    use_precision(common.precision, &device)?;
    limits::batch_and_size(common.batch_size, common.image_size, true)?;
    if let Some(n) = common.limit_per_class {
        limits::at_least_one("--limit-per-class", n)?;
    }
    Ok(Experiment {
        title: format!("{command}: {arch}, {}px{}", common.image_size, precision_note()),
        data: data_dir(&common.data, &common.cache_dir)?,
        arch,
        init,
        phases,
        batch_size: common.batch_size,
        image_size: common.image_size,
        augment,
        seed: common.seed,
        device,
        out: Some(common.out.clone().unwrap_or_else(|| PathBuf::from("runs").join(command))),
        resume: common.resume,
        overwrite: common.overwrite,
        progress: !common.quiet,
        limit_per_class: common.limit_per_class,
        cache_dir: hub_cache(&common.cache_dir),
        head_init: HeadInit::Xavier,
        val_split: common.val_split,
    })
}

/// `--precision`: bf16 is the CPU kernels' path; set process-wide for the whole command.
fn use_precision(p: Precision, device: &Device) -> anyhow::Result<()> {
    if p == Precision::Bf16 && !device.is_cpu() {
        bail!("--precision bf16 is a path of the CPU kernels (AVX512-BF16); on {} use f32", device_label(device));
    }
    transfer_workbook::ops::set_precision(p).context("--precision")?;
    Ok(())
}

/// ", bf16" when the convolutions run in bfloat16 (titles and the examples/sec line).
fn precision_note() -> &'static str {
    match transfer_workbook::ops::precision() {
        Precision::F32 => "",
        Precision::Bf16 => ", bf16",
    }
}

fn run_experiment(exp: Experiment) -> anyhow::Result<()> {
    let label = format!("{}{}", device_label(&exp.device), precision_note());
    let result = fine_tune(&exp)?;
    if let Some(out) = &exp.out {
        eprintln!("wrote {}/{{history.json, curves.png, curves.svg, model.safetensors, metrics.json, confusion.png, top-losses.png}}", out.display());
    }
    println!("{}", result.test.metrics.table());
    println!("{}", result.history.summary_lines(&label));
    println!("{}", transfer_workbook::evaluation::kept_model_line(&result.history, &result.test.metrics));
    Ok(())
}

/// Every numeric training flag, checked before anything is loaded.
fn validate_train(a: &TrainArgs) -> anyhow::Result<()> {
    limits::at_least_one("--epochs", a.epochs)?;
    if let Some(lr) = a.lr {
        rate("--lr", lr)?;
    }
    if let Some(m) = a.head_lr_mult {
        rate("--head-lr-mult", m)?;
    }
    if let Some(m) = a.momentum {
        limits::momentum("--momentum", m)?;
    }
    if let Some(wd) = a.weight_decay {
        limits::non_negative("--weight-decay", wd)?;
    }
    if let Some(p) = a.patience {
        limits::at_least_one("--patience", p)?;
    }
    Ok(())
}

fn train_command(a: TrainArgs, command: &str) -> anyhow::Result<()> {
    validate_train(&a)?;
    if let (Some(w), "scratch") = (&a.common.weights, command) {
        bail!("scratch trains from random weights: --weights {w} does not apply (finetune or freeze start from weights)");
    }
    if let (Some(c), HeadStart::Xavier) = (&a.positive_class, a.head_init) {
        bail!("--positive-class {c} applies only with --head-init hotdog");
    }
    let arch = a.common.backbone;
    let (base, init) = match command {
        "scratch" => (recipes::d2l_scratch(a.epochs), ModelInit::Scratch),
        "freeze" => (recipes::d2l_freeze(a.epochs), ModelInit::Pretrained(weights_source(arch, &a.common.weights))),
        _ => (recipes::d2l_finetune(a.epochs), ModelInit::Pretrained(weights_source(arch, &a.common.weights))),
    };
    let phase = PhaseConfig {
        optimizer: optimizer_from(&a, &base.optimizer),
        lr: a.lr.unwrap_or(base.lr),
        head_lr_mult: a.head_lr_mult.unwrap_or(base.head_lr_mult),
        reduction: a.loss.unwrap_or(base.reduction),
        freeze: a.freeze.clone().unwrap_or(base.freeze.clone()),
        bn_mode: a.bn.unwrap_or(base.bn_mode),
        early_stopping: a.patience.map(EarlyStopping::new),
        ..base
    };
    let mut phase = phase;
    // Each may be fine alone and their product still 0 in float32.
    rate("the head's learning rate (--lr x --head-lr-mult)", phase.lr * phase.head_lr_mult)?;
    a.schedule.apply(&mut phase)?;
    let mut exp = experiment(&a.common, command, init, vec![phase], a.augment)?;
    exp.head_init = match a.head_init {
        HeadStart::Xavier => HeadInit::Xavier,
        HeadStart::Hotdog => {
            if exp.init == ModelInit::Scratch {
                bail!("--head-init hotdog needs pretrained weights");
            }
            let classes = transfer_workbook::data::image_folder::class_folders(&exp.data.join("train"))?;
            HeadInit::hotdog(&classes, a.positive_class.as_deref())?
        }
    };
    run_experiment(exp)
}

fn two_phase(a: TwoPhaseArgs) -> anyhow::Result<()> {
    limits::at_least_one("--head-epochs + --fine-epochs", a.head_epochs.saturating_add(a.fine_epochs))?;
    rate("--head-lr", a.head_lr)?;
    rate("--fine-lr", a.fine_lr)?;
    limits::at_least_one("--patience", a.patience)?;
    let arch = a.common.backbone;
    let mut phases = recipes::keras_two_phase(arch, a.head_epochs, a.fine_epochs, a.unfreeze_from.clone(), a.patience);
    phases[0].lr = a.head_lr;
    phases[1].lr = a.fine_lr;
    for p in &mut phases {
        a.schedule.apply(p)?;
    }
    // Fail on a bad block name now, not after phase 1.
    phases[1].freeze.predicate(arch)?;
    let init = ModelInit::Pretrained(weights_source(arch, &a.common.weights));
    let mut exp = experiment(&a.common, "two-phase", init, phases, Augment::Keras)?;
    // Phase 2's early stopping needs validation: 20% of train unless DIR/val exists (the
    // Keras lesson also validates on a split of its own).
    if exp.val_split.is_none() && !exp.data.join("val").is_dir() {
        exp.val_split = Some(0.2);
    }
    run_experiment(exp)
}

/// A model for inference: a run's model.safetensors (backbone, classes, image size and
/// normalization in its metadata), or pretrained weights with their ImageNet head.
fn predict(a: PredictArgs) -> anyhow::Result<()> {
    use transfer_workbook::predict::{inputs::expand_inputs, predict_files, report::write_records, Preprocess};
    let device = parse_device(&a.device)?;
    // The card's size (known only once the model is read) is checked below, --image-size here.
    limits::batch_and_size(a.batch_size, a.image_size.unwrap_or(224), false)?;
    limits::at_least_one("--top-k", a.top_k)?;
    let source = match (&a.weights, a.backbone) {
        (Some(w), _) => WeightsSource::parse(w),
        (None, Some(arch)) => default_weights(arch),
        (None, None) => bail!("pass --weights (a trained model.safetensors or pretrained weights) or --backbone"),
    };
    let (model, card) = load_model_with_card(&source, a.backbone, &device, hub_cache(&a.cache_dir).as_deref())?;
    let paths = expand_inputs(&a.images)?;
    let mut pre = Preprocess::from_card(&model, &card);
    pre.image_size = a.image_size.unwrap_or(pre.image_size);
    limits::batch_and_size(a.batch_size, pre.image_size, false)?;
    let said = if card.image_size.is_some() { "from the model file" } else { "defaults" };
    eprintln!("{} images; {} px, normalization {:?} ({said}, --image-size overrides)", paths.len(), pre.image_size, pre.normalization);
    let out = predict_files(&model, &paths, &pre, a.top_k, a.batch_size)?;
    write_records(&mut std::io::stdout().lock(), &out.records, a.format)?;
    eprintln!("predicted {} images, skipped {} unreadable", out.records.len(), out.skipped.len());
    if out.records.is_empty() {
        bail!("none of the {} files could be read as an image", paths.len());
    }
    Ok(())
}

/// The lr sweep on a copy of the recipe's starting model; writes OUT/lr-find.{png,json}.
fn lr_find(a: LrFindArgs) -> anyhow::Result<()> {
    use transfer_workbook::train::{lr_find, LrFindConfig};
    let c = &a.common;
    let arch = c.backbone;
    limits::batch_and_size(c.batch_size, c.image_size, true)?;
    if a.steps < 5 {
        bail!("--steps must be at least 5 (got {})", a.steps);
    }
    rate("--start-lr", a.start_lr)?;
    rate("--end-lr", a.end_lr)?;
    if a.start_lr >= a.end_lr {
        bail!("--start-lr {} must be below --end-lr {}", a.start_lr, a.end_lr);
    }
    if let Some(m) = a.head_lr_mult {
        rate("--head-lr-mult", m)?;
    }
    if let Some(n) = c.limit_per_class {
        limits::at_least_one("--limit-per-class", n)?;
    }
    if c.resume || c.overwrite {
        bail!("lr-find writes only OUT/lr-find.{{png,json}} and trains nothing to keep: --resume and --overwrite do not apply");
    }
    let (phase, name) = match a.recipe {
        LrRecipe::Finetune => (recipes::d2l_finetune(1), "finetune"),
        LrRecipe::Scratch => (recipes::d2l_scratch(1), "scratch"),
        LrRecipe::Freeze => (recipes::d2l_freeze(1), "freeze"),
        LrRecipe::KerasHead => (recipes::keras_two_phase(arch, 1, 1, None, 1).remove(0), "keras-head"),
    };
    let init = if a.recipe == LrRecipe::Scratch { ModelInit::Scratch } else { ModelInit::Pretrained(weights_source(arch, &c.weights)) };
    let device = parse_device(&c.device)?;
    let dir = data_dir(&c.data, &c.cache_dir)?;
    let train_dir = dir.join("train");
    let train = ImageFolder::load_limited(&train_dir, &transfer_workbook::data::image_folder::class_folders(&train_dir)?, c.limit_per_class)?;
    eprintln!("{}", train.summary());
    let opts = ModelOptions { seed: c.seed, ..ModelOptions::new(arch, train.classes.clone()) };
    let model = transfer_workbook::experiment::build_model(&opts, &init, &device, hub_cache(&c.cache_dir).as_deref())?.rebuild(phase.freeze.clone(), phase.bn_mode)?;
    let norm = arch.normalization();
    let pipeline = if a.recipe == LrRecipe::KerasHead { Pipeline::keras_train(c.image_size, norm) } else { Pipeline::d2l_train(c.image_size, norm) };
    let cfg = LrFindConfig {
        start_lr: a.start_lr,
        end_lr: a.end_lr,
        max_steps: a.steps,
        batch_size: c.batch_size,
        seed: c.seed,
        optimizer: phase.optimizer.clone(),
        head_lr_mult: a.head_lr_mult.unwrap_or(phase.head_lr_mult),
        reduction: phase.reduction,
        on_step: if c.quiet { None } else { Some(|i, n| eprint!("\rlr sweep: step {i}/{n}")) },
        ..Default::default()
    };
    let steps = a.steps.min(train.len().div_ceil(c.batch_size));
    if steps < 20 {
        eprintln!("warning: only {steps} steps in one pass at --batch-size {}: pass a smaller --batch-size for a finer curve", c.batch_size);
    }
    let r = lr_find(&model, Arc::new(train), Arc::new(pipeline), &cfg)?;
    eprintln!();
    let out = c.out.clone().unwrap_or_else(|| PathBuf::from("runs").join("lr-find"));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let title = format!("lr finder: {arch}, {name}, {}px, batch {}", c.image_size, c.batch_size);
    transfer_workbook::plot::save_lr_find(&r, &title, &out.join("lr-find.png"))?;
    let json = out.join("lr-find.json");
    std::fs::write(&json, serde_json::to_string_pretty(&r)?).with_context(|| format!("writing {}", json.display()))?;
    eprintln!("wrote {}/{{lr-find.png, lr-find.json}} (nothing else: the model is not changed or saved)", out.display());
    match r.diverged_at {
        Some(lr) => println!("{} steps from {:.0e}; the smoothed loss diverged (> 4x its best) at lr {lr:.2e}", r.points.len(), r.start_lr),
        None => println!("{} steps from {:.0e} to {:.0e}; no divergence", r.points.len(), r.start_lr, r.points.last().map_or(r.end_lr, |p| p.lr)),
    }
    println!("lowest smoothed loss at lr {:.2e}", r.min_loss_lr);
    let steep = r.steepest.map_or("none (the loss never fell)".to_string(), |l| format!("{l:.2e}"));
    println!("other rules: steepest descent {steep}, minimum / 10 {:.2e}", r.min_over_ten);
    println!("suggested lr {:.2e} ({}; for --lr of the {name} recipe at --batch-size {})", r.suggestion, r.rule.describe(), c.batch_size);
    Ok(())
}

/// `finetune evaluate`: a saved model on one split of a data folder.
fn evaluate(a: EvaluateArgs) -> anyhow::Result<()> {
    let device = parse_device(&a.device)?;
    limits::batch_and_size(a.batch_size, a.image_size.unwrap_or(224), false)?;
    let (model, card) = load_model_with_card(&WeightsSource::parse(&a.weights), a.backbone, &device, hub_cache(&a.cache_dir).as_deref())?;
    let image_size = a.image_size.unwrap_or(card.image_size_or_default());
    limits::batch_and_size(a.batch_size, image_size, false).with_context(|| format!("the image size of {}", a.weights))?;
    let dir = data_dir(&a.data, &a.cache_dir)?;
    let ds = Arc::new(ImageFolder::load_classes(dir.join(&a.split), &model.class_names).with_context(|| format!("loading the '{}' split of {}", a.split, dir.display()))?);
    eprintln!("{}", ds.summary());
    let pipeline = Pipeline::d2l_test(image_size, card.normalization_for(model.arch));
    let ev = transfer_workbook::evaluation::evaluate_split_with(&model, &ds, &a.split, &pipeline, a.batch_size)?;
    let title = format!("{}: {} on {}", a.weights, model.arch, a.split);
    transfer_workbook::evaluation::write_report(&ev, &ds, &title, &a.out)?;
    eprintln!("wrote {}/{{metrics.json, confusion.png, top-losses.png}}", a.out.display());
    println!("{}", ev.metrics.table());
    Ok(())
}

fn info(a: InfoArgs) -> anyhow::Result<()> {
    let arch = a.backbone;
    let model = match &a.weights {
        Some(w) => load_model(&WeightsSource::parse(w), Some(arch), &Device::Cpu, hub_cache(&a.cache_dir).as_deref())?,
        None => Classifier::scratch(&ModelOptions::new(arch, transfer_workbook::imagenet::class_names()), &Device::Cpu)?,
    };
    println!("backbone: {arch} (normalization {:?})", arch.normalization());
    println!("{}: {}", arch.head_prefix(), model.head_description());
    let (total, _) = model.parameter_counts();
    println!("parameters: {total}");
    for freeze in [Freeze::Nothing, Freeze::Below(arch.default_unfreeze_from()), Freeze::Backbone] {
        let m = model.rebuild(freeze.clone(), BnMode::Train)?;
        let (_, trainable) = m.parameter_counts();
        println!("trainable with --freeze {:<10} {trainable}", freeze.to_string());
    }
    println!("blocks (input side first): {}", arch.blocks().join(", "));
    Ok(())
}

fn zero_shot(a: ZeroShotArgs) -> anyhow::Result<()> {
    let t0 = std::time::Instant::now();
    let arch = a.backbone;
    let device = parse_device(&a.device)?;
    limits::batch_and_size(a.batch_size, a.image_size, false)?;
    let model = load_model(&weights_source(arch, &a.weights), Some(arch), &device, hub_cache(&a.cache_dir).as_deref())?;
    if model.num_classes() != 1000 {
        bail!("zero-shot needs ImageNet weights with their 1000-class head");
    }
    let dir = data_dir(&a.data, &a.cache_dir)?;
    let ds = Arc::new(ImageFolder::load(dir.join(&a.split))?);
    eprintln!("{}", ds.summary());
    let positive = transfer_workbook::zero_shot::positive_class(&ds.classes, a.positive_class.as_deref())?;
    let norm = a.normalization.map(Normalization::from).unwrap_or(arch.normalization());
    let pipeline = Pipeline::d2l_test(a.image_size, norm);
    let r = transfer_workbook::zero_shot::zero_shot(&model, &ds, &pipeline, positive, a.batch_size)?;
    eprintln!("{} images, positive class '{}', class 934 = '{}', normalization {norm:?}", r.images, ds.classes[positive], model.class_names[934]);
    println!("top-5 test acc {:.3}", r.top5_acc);
    println!("test acc {:.3}", r.top1_acc);
    eprintln!("{:.1} s on {}", t0.elapsed().as_secs_f64(), device_label(&device));
    Ok(())
}

/// One JSON line per result, appended to `--json FILE` when given.
fn append_json(path: &Option<PathBuf>, value: &impl serde::Serialize) -> anyhow::Result<()> {
    if let Some(p) = path {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(p).with_context(|| format!("opening {}", p.display()))?;
        writeln!(f, "{}", serde_json::to_string(value)?)?;
    }
    Ok(())
}

fn bench(a: BenchArgs) -> anyhow::Result<()> {
    let device = parse_device(&a.device)?;
    use_precision(a.precision, &device)?;
    limits::batch_and_size(a.batch_size, a.image_size, true)?;
    if a.steps == 0 && a.data.is_none() {
        bail!("--steps 0 times no training step: give --steps N, or --data DIR to time only an epoch on photos");
    }
    transfer_workbook::ops::depthwise::use_candle_grouped_conv(a.candle_depthwise);
    if a.precision == Precision::Bf16 {
        println!("convolutions in bf16 (bf16 products, f32 sums)");
    }
    println!("{:<20} {:>8} {:>6} {:>6} {:>12} {:>10} {:>12}", "backbone", "device", "batch", "size", "train img/s", "step ms", "infer img/s");
    // `--steps 0`: only the epoch on real photos (with --data).
    for &arch in a.backbone.iter().filter(|_| a.steps > 0) {
        let r = transfer_workbook::bench::bench_model(arch, &device, a.batch_size, a.image_size, a.freeze.clone(), a.warmup, a.steps)?;
        println!(
            "{:<20} {:>8} {:>6} {:>6} {:>12.1} {:>10.0} {:>12.1}",
            r.backbone, r.device, r.batch_size, r.image_size, r.train_img_per_sec, r.train_step_ms, r.eval_img_per_sec
        );
        append_json(&a.json, &r)?;
    }
    if let Some(dir) = &a.data {
        for &arch in &a.backbone {
            let r = transfer_workbook::bench::bench_epoch(arch, &device, dir, a.batch_size, a.image_size)?;
            println!(
                "{:<20} epoch on {}: decode {:.1} s, augment + train {:.1} s for {} photos ({:.1} img/s)",
                r.backbone,
                transfer_workbook::paths::shown(dir),
                r.decode_seconds,
                r.epoch_seconds,
                r.images,
                r.epoch_img_per_sec
            );
            append_json(&a.json, &r)?;
        }
    }
    Ok(())
}

fn peek(a: PeekArgs) -> anyhow::Result<()> {
    let dir = data_dir(&a.data, &a.cache_dir)?;
    let ds = ImageFolder::load(dir.join(&a.split))?;
    eprintln!("{}", ds.summary());
    if let Some(parent) = a.out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    transfer_workbook::plot::save_peek(&ds, &a.out)?;
    println!("wrote {} (top: first 8 of '{}', bottom: last 8 of '{}')", a.out.display(), ds.classes[0], ds.classes[ds.classes.len() - 1]);
    Ok(())
}

fn main() -> std::process::ExitCode {
    transfer_workbook::keep_freed_memory();
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The whole context chain, one cause per line, no backtrace: these are user errors.
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Finetune(a) => train_command(a, "finetune"),
        Command::Scratch(a) => train_command(a, "scratch"),
        Command::Freeze(a) => train_command(a, "freeze"),
        Command::TwoPhase(a) => two_phase(a),
        Command::Predict(a) => predict(a),
        Command::LrFind(a) => lr_find(a),
        Command::Info(a) => info(a),
        Command::Peek(a) => peek(a),
        Command::ZeroShot(a) => zero_shot(a),
        Command::Bench(a) => bench(a),
        #[cfg(feature = "serve")]
        Command::Serve(a) => a.run(),
        Command::Evaluate(a) => evaluate(a),
        Command::Download(a) => {
            let dir = hotdog(&a.cache_dir.unwrap_or_else(default_cache).join("data"))?;
            println!("{}", dir.display());
            Ok(())
        }
    }
}

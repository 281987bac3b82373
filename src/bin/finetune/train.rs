//! The training commands (finetune, scratch, freeze, two-phase) and the learning-rate finder.

use crate::args::{self, choice, COUNT, ComputeArgs, DataArgs, IMAGE_SIZE, MOMENTUM, NON_NEGATIVE, RATE};
use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use std::path::PathBuf;
use std::sync::Arc;
use transfer_workbook::data::SplitSpec;
use transfer_workbook::models::{Arch, BnMode, Freeze, HeadInit, ModelOptions};
use transfer_workbook::train::limits;
use transfer_workbook::train::{recipes, EarlyStopping, OptimizerKind, PhaseConfig, Reduction, Schedule};
use transfer_workbook::transforms::Pipeline;
use transfer_workbook::{device_label, fine_tune, Augment, Experiment, ModelInit};

/// A recipe of the chapter or the lesson: its optimizer, loss, freezing and head lr.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Recipe {
    /// d2l fine-tuning: SGD, weight decay 1e-3, summed loss, head at 10x.
    Finetune,
    /// d2l from scratch (random weights).
    Scratch,
    /// d2l with the backbone frozen (head only).
    Freeze,
    /// The Keras recipe's phase 1: Adam, mean loss, backbone and BatchNorm frozen.
    KerasHead,
}

impl Recipe {
    /// The recipe's one phase over `epochs`.
    fn phase(self, arch: Arch, epochs: usize) -> PhaseConfig {
        match self {
            Recipe::Finetune => recipes::d2l_finetune(epochs),
            Recipe::Scratch => recipes::d2l_scratch(epochs),
            Recipe::Freeze => recipes::d2l_freeze(epochs),
            Recipe::KerasHead => recipes::keras_two_phase(arch, epochs, 1, None, 1).remove(0),
        }
    }

    /// Random weights for scratch, else `--weights` or the backbone's.
    fn init(self, arch: Arch, weights: &Option<String>) -> ModelInit {
        match self {
            Recipe::Scratch => ModelInit::Scratch,
            _ => ModelInit::Pretrained(args::weights_source(arch, weights)),
        }
    }

    /// The command's name (runs/<name>, titles).
    fn name(self) -> &'static str {
        match self {
            Recipe::Finetune => "finetune",
            Recipe::Scratch => "scratch",
            Recipe::Freeze => "freeze",
            Recipe::KerasHead => "keras-head",
        }
    }
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

/// What every training command (and lr-find) reads: the data, the model, the run.
#[derive(Args, Clone)]
pub struct RunArgs {
    #[command(flatten)]
    data: DataArgs,
    #[arg(long, default_value = "resnet18", value_parser = choice::<Arch>())]
    backbone: Arch,
    /// Pretrained weights: a .safetensors or .pth file, or hf:owner/repo[/file] (default: the backbone's hub weights).
    #[arg(long)]
    weights: Option<String>,
    #[arg(long, default_value_t = 128, value_parser = COUNT)]
    batch_size: usize,
    /// Training and test crop size in pixels (default: the backbone's own, 224; efficientnet-lite1 240, efficientnet-lite2 260).
    #[arg(long, value_parser = IMAGE_SIZE)]
    image_size: Option<u32>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    compute: ComputeArgs,
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
    #[arg(long, value_parser = COUNT)]
    limit_per_class: Option<usize>,
    /// No progress bars.
    #[arg(long)]
    quiet: bool,
    /// Hold out this fraction (0 < F < 1) of each class's training photos for validation
    /// (stratified, seeded with --seed); DIR/val/ is used instead when it exists. Early
    /// stopping and the kept epoch look at validation, never at test.
    #[arg(long)]
    val_split: Option<f64>,
    /// Cut an unsplit folder of classes (DIR/<class>/*, like TensorFlow's flower_photos) into
    /// train,validation,test by these fractions, each class shuffled with --seed (e.g.
    /// 0.8,0.1,0.1; two values: train,test). Recorded with the run and in the model file, so
    /// --resume and `evaluate` cut the same way.
    #[arg(long)]
    split: Option<String>,
}

impl RunArgs {
    /// `--image-size`, or the backbone's own.
    fn image_size(&self) -> u32 {
        self.image_size.unwrap_or(self.backbone.default_image_size())
    }

    /// `--split`, with `--seed`.
    fn split(&self) -> anyhow::Result<Option<SplitSpec>> {
        self.split.as_deref().map(|s| SplitSpec::parse(s, self.seed)).transpose()
    }

    /// The experiment of `command` over `phases`: every setting checked, the data found.
    fn experiment(&self, command: &str, init: ModelInit, phases: Vec<PhaseConfig>, augment: Augment) -> anyhow::Result<Experiment> {
        let arch = self.backbone;
        let (device, kernels) = self.compute.resolve()?;
        crate::args::fits(self.batch_size, self.image_size(), true)?;
        Ok(Experiment {
            title: format!("{command}: {arch}, {}px{}", self.image_size(), self.compute.note()),
            data: self.data.dir()?,
            arch,
            init,
            phases,
            batch_size: self.batch_size,
            image_size: self.image_size(),
            augment,
            seed: self.seed,
            device,
            out: Some(self.out.clone().unwrap_or_else(|| PathBuf::from("runs").join(command))),
            resume: self.resume,
            overwrite: self.overwrite,
            progress: !self.quiet,
            limit_per_class: self.limit_per_class,
            cache_dir: self.data.cache.hub(),
            head_init: HeadInit::Xavier,
            val_split: self.val_split,
            split: self.split()?,
            kernels,
        })
    }

    /// Train, then print the test table, the d2l summary and the kept model's line.
    fn run(&self, exp: Experiment) -> anyhow::Result<()> {
        let label = format!("{}{}", device_label(&exp.device), self.compute.note());
        let result = fine_tune(&exp)?;
        if let Some(out) = &exp.out {
            eprintln!("wrote {}/{{history.json, curves.png, curves.svg, model.safetensors, metrics.json, confusion.png, top-losses.png}}", out.display());
        }
        println!("{}", result.test.metrics.table());
        println!("{}", result.history.summary_lines(&label));
        println!("{}", transfer_workbook::tasks::evaluation::kept_model_line(&result.history, &result.test.metrics));
        Ok(())
    }
}

/// The learning-rate schedule, applied per optimizer step within a phase; `lr` in history.json
/// is each epoch's mean backbone lr.
#[derive(Args, Clone)]
struct ScheduleArgs {
    /// constant (d2l, Keras), cosine (decay to 0), or onecycle (PyTorch's OneCycleLR: lr/25 up to lr, then down to lr/25/1e4).
    #[arg(long, default_value = "constant", value_parser = choice::<Schedule>())]
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

/// `finetune`, `scratch` and `freeze`: one phase of a d2l recipe, any of it overridden.
#[derive(Args, Clone)]
#[command(after_help = args::ENVIRONMENT)]
pub struct TrainArgs {
    #[command(flatten)]
    run: RunArgs,
    #[arg(long, default_value_t = 5, value_parser = COUNT)]
    epochs: usize,
    /// Backbone learning rate (default: the recipe's).
    #[arg(long, value_parser = RATE)]
    lr: Option<f64>,
    /// Head learning rate = lr x this (default: the recipe's).
    #[arg(long, value_parser = RATE)]
    head_lr_mult: Option<f64>,
    /// The update rule (default: the recipe's).
    #[arg(long)]
    optimizer: Option<OptimizerName>,
    #[arg(long, value_parser = MOMENTUM)]
    momentum: Option<f64>,
    #[arg(long, value_parser = NON_NEGATIVE)]
    weight_decay: Option<f64>,
    /// How the batch loss is reduced: sum (d2l) or mean.
    #[arg(long, value_parser = choice::<Reduction>())]
    loss: Option<Reduction>,
    /// none, backbone, or a block name: freeze every block below it (e.g. layer3).
    #[arg(long)]
    freeze: Option<Freeze>,
    /// BatchNorm while training: batch statistics (train) or running statistics (frozen).
    #[arg(long, value_parser = choice::<BnMode>())]
    bn: Option<BnMode>,
    /// Stop after this many epochs without validation-loss improvement, keeping the best weights
    /// (needs --val-split or DIR/val/).
    #[arg(long, value_parser = COUNT)]
    patience: Option<usize>,
    /// Training augmentation: d2l (RandomResizedCrop + flip) or keras (resize + random crop + flip).
    #[arg(long, default_value = "d2l", value_parser = choice::<Augment>())]
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

impl TrainArgs {
    /// The recipe's update rule with `--optimizer`, `--momentum` and `--weight-decay` applied.
    fn optimizer(&self, base: &OptimizerKind) -> OptimizerKind {
        let (base_name, base_m, base_wd) = match base {
            OptimizerKind::Sgd { momentum, weight_decay } => (OptimizerName::Sgd, *momentum, *weight_decay),
            OptimizerKind::AdamW { weight_decay, .. } if *weight_decay == 0.0 => (OptimizerName::Adam, 0.0, 0.0),
            OptimizerKind::AdamW { weight_decay, .. } => (OptimizerName::Adamw, 0.0, *weight_decay),
        };
        let wd = self.weight_decay.unwrap_or(base_wd);
        match self.optimizer.unwrap_or(base_name) {
            OptimizerName::Sgd => OptimizerKind::sgd(self.momentum.unwrap_or(base_m), wd),
            OptimizerName::Adam => OptimizerKind::adamw(self.weight_decay.unwrap_or(0.0)),
            OptimizerName::Adamw => OptimizerKind::adamw(wd),
        }
    }
}

/// `finetune`, `scratch`, `freeze`.
pub fn train(a: TrainArgs, recipe: Recipe) -> anyhow::Result<()> {
    if let (Some(w), Recipe::Scratch) = (&a.run.weights, recipe) {
        bail!("scratch trains from random weights: --weights {w} does not apply (finetune or freeze start from weights)");
    }
    if let (Some(c), HeadStart::Xavier) = (&a.positive_class, a.head_init) {
        bail!("--positive-class {c} applies only with --head-init hotdog");
    }
    let arch = a.run.backbone;
    let base = recipe.phase(arch, a.epochs);
    let mut phase = PhaseConfig {
        optimizer: a.optimizer(&base.optimizer),
        lr: a.lr.unwrap_or(base.lr),
        head_lr_mult: a.head_lr_mult.unwrap_or(base.head_lr_mult),
        reduction: a.loss.unwrap_or(base.reduction),
        freeze: a.freeze.clone().unwrap_or(base.freeze.clone()),
        bn_mode: a.bn.unwrap_or(base.bn_mode),
        early_stopping: a.patience.map(EarlyStopping::new),
        ..base
    };
    // Each may be fine alone and their product still 0 in float32.
    args::rate("the head's learning rate (--lr x --head-lr-mult)", phase.lr * phase.head_lr_mult)?;
    a.schedule.apply(&mut phase)?;
    let mut exp = a.run.experiment(recipe.name(), recipe.init(arch, &a.run.weights), vec![phase], a.augment)?;
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
    a.run.run(exp)
}

/// `two-phase`: the Keras recipe.
#[derive(Args, Clone)]
#[command(after_help = args::ENVIRONMENT)]
pub struct TwoPhaseArgs {
    #[command(flatten)]
    run: RunArgs,
    #[arg(long, default_value_t = 10)]
    head_epochs: usize,
    #[arg(long, default_value_t = 10)]
    fine_epochs: usize,
    #[arg(long, default_value_t = 1e-3, value_parser = RATE)]
    head_lr: f64,
    #[arg(long, default_value_t = 1e-5, value_parser = RATE)]
    fine_lr: f64,
    /// First block to unfreeze in phase 2 (default: the backbone's top ~30%).
    #[arg(long)]
    unfreeze_from: Option<String>,
    #[arg(long, default_value_t = 3, value_parser = COUNT)]
    patience: usize,
    /// Applied to each phase on its own (each warms up and anneals over its own epochs).
    #[command(flatten)]
    schedule: ScheduleArgs,
}

pub fn two_phase(a: TwoPhaseArgs) -> anyhow::Result<()> {
    crate::args::worded("--head-epochs + --fine-epochs", limits::at_least_one(a.head_epochs.saturating_add(a.fine_epochs)))?;
    let arch = a.run.backbone;
    let mut phases = recipes::keras_two_phase(arch, a.head_epochs, a.fine_epochs, a.unfreeze_from.clone(), a.patience);
    phases[0].lr = a.head_lr;
    phases[1].lr = a.fine_lr;
    for p in &mut phases {
        a.schedule.apply(p)?;
    }
    // Fail on a bad block name now, not after phase 1.
    phases[1].freeze.predicate(arch)?;
    let init = Recipe::KerasHead.init(arch, &a.run.weights);
    let mut exp = a.run.experiment("two-phase", init, phases, Augment::Keras)?;
    // Phase 2's early stopping needs validation: 20% of train unless DIR/val exists or
    // --split cuts one (the Keras lesson also validates on a split of its own).
    if exp.split.is_none() && exp.val_split.is_none() && !exp.data.join("val").is_dir() {
        exp.val_split = Some(0.2);
    }
    a.run.run(exp)
}

#[derive(Args)]
pub struct LrFindArgs {
    #[command(flatten)]
    run: RunArgs,
    #[arg(long, value_enum, default_value_t = Recipe::Finetune)]
    recipe: Recipe,
    #[arg(long, default_value_t = 1e-7, value_parser = RATE)]
    start_lr: f64,
    #[arg(long, default_value_t = 10.0, value_parser = RATE)]
    end_lr: f64,
    /// At most this many steps (one pass over the training data at most: lower --batch-size for more).
    #[arg(long, default_value_t = 100)]
    steps: usize,
    /// Head lr = swept lr x this (default: the recipe's).
    #[arg(long, value_parser = RATE)]
    head_lr_mult: Option<f64>,
}

/// The lr sweep on a copy of the recipe's starting model; writes OUT/lr-find.{png,json}.
pub fn lr_find(a: LrFindArgs) -> anyhow::Result<()> {
    use transfer_workbook::train::{lr_find, LrFindConfig};
    let c = &a.run;
    let arch = c.backbone;
    crate::args::fits(c.batch_size, c.image_size(), true)?;
    if a.steps < 5 {
        bail!("--steps must be at least 5 (got {})", a.steps);
    }
    if a.start_lr >= a.end_lr {
        bail!("--start-lr {} must be below --end-lr {}", a.start_lr, a.end_lr);
    }
    if c.resume || c.overwrite {
        bail!("lr-find writes only OUT/lr-find.{{png,json}} and trains nothing to keep: --resume and --overwrite do not apply");
    }
    let (phase, name) = (a.recipe.phase(arch, 1), a.recipe.name());
    let init = a.recipe.init(arch, &c.weights);
    let (device, kernels) = c.compute.resolve()?;
    let dir = c.data.dir()?;
    // The sweep runs on the photos training would train on: without the ones --val-split or
    // --split hold out.
    let train = transfer_workbook::tasks::experiment::load_parts(&dir, c.split()?.as_ref(), c.val_split, c.seed, c.limit_per_class)?.train;
    eprintln!("the sweep runs on the {} training photos", train.len());
    let opts = ModelOptions { seed: c.seed, kernels, ..ModelOptions::new(arch, train.classes.clone()) };
    let model = transfer_workbook::tasks::experiment::build_model(&opts, &init, &device, c.data.cache.hub().as_deref())?.rebuild(phase.freeze.clone(), phase.bn_mode)?;
    let norm = arch.normalization();
    let pipeline = if a.recipe == Recipe::KerasHead { Pipeline::keras_train(c.image_size(), norm) } else { Pipeline::d2l_train(c.image_size(), norm) };
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
    let r = lr_find(&model, train, Arc::new(pipeline), &cfg)?;
    eprintln!();
    let out = c.out.clone().unwrap_or_else(|| PathBuf::from("runs").join("lr-find"));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let title = format!("lr finder: {arch}, {name}, {}px, batch {}", c.image_size(), c.batch_size);
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

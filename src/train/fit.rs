//! The training loop: phases (each with its own freezing, BatchNorm mode, optimizer and
//! learning rates), d2l's per-epoch report, early stopping with best-weights restore on the
//! validation loss, and
//! a checkpoint after every epoch that a later run resumes from exactly.
//!
//! [`train`] reads as: resume, then phases, then epochs.

use super::early_stopping::{EarlyStopping, Verdict, Watch};
use super::evaluate::{evaluate, evaluate_activations, Activations, ACTIVATION_CACHE_BYTES};
use super::history::{EpochRecord, History};
use super::metrics::{correct, cross_entropy, Reduction};
use super::optim::{Optimizer, OptimizerKind};
use super::schedule::{Schedule, StepSchedule};
use crate::checkpoint::RunFiles;
use crate::data::{ImageFolder, Loader};
use crate::models::{BnMode, Classifier, Freeze};
use crate::transforms::Pipeline;
use anyhow::Context;
use candle_core::Tensor;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// One phase of training.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PhaseConfig {
    pub name: String,
    pub epochs: usize,
    pub optimizer: OptimizerKind,
    /// Backbone learning rate.
    pub lr: f64,
    /// Head learning rate = `lr * head_lr_mult` (d2l: 10).
    pub head_lr_mult: f64,
    pub freeze: Freeze,
    pub bn_mode: BnMode,
    pub reduction: Reduction,
    /// Stop the phase when the validation loss stops improving, and keep its best weights
    /// (needs a validation split: nothing is chosen on the test split).
    pub early_stopping: Option<EarlyStopping>,
    /// How the lr moves over the phase, per step (see [`super::schedule`]); default constant.
    #[serde(default)]
    pub schedule: Schedule,
    /// Epochs at the start of the phase that warm the lr up (per step).
    #[serde(default)]
    pub warmup_epochs: usize,
}

/// What stays the same across phases.
#[derive(Clone, Debug)]
pub struct TrainConfig {
    pub batch_size: usize,
    pub seed: u64,
    pub train_pipeline: Pipeline,
    pub test_pipeline: Pipeline,
    /// Where a checkpoint is written after each epoch (and resumed from when `resume`).
    pub checkpoint_dir: Option<PathBuf>,
    pub resume: bool,
    pub progress: bool,
    /// Device label for the report (`cpu`, `cuda:0`).
    pub device_label: String,
    /// What else defines the run that only the caller knows (the command, where the weights
    /// came from, the head's init, image size, augmentation), as (flag, value): a resumed run
    /// must match each, like the settings the loop records itself (backbone, seed, precision,
    /// every phase's optimizer, learning rates, freezing, BatchNorm mode and loss).
    pub recorded: Vec<(String, String)>,
}

/// Where a run stands, saved as the checkpoint's `state.json`.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
struct ResumeState {
    epochs_done: usize,
    /// Epochs finished in each phase so far; a phase runs on until its configured count, so a
    /// finished run resumed with more epochs trains the extra ones.
    phase_epochs: Vec<usize>,
    /// Phases ended by early stopping (never resumed).
    stopped_early: Vec<bool>,
    /// The phase whose optimizer state is in `optimizer.safetensors`.
    optimizer_phase: Option<usize>,
    optimizer_steps: u64,
    #[serde(flatten)]
    watch: Watch,
    history: History,
    /// What the run was started with; a resume with other data or steps is refused.
    #[serde(default)]
    settings: Option<RunSettings>,
}

/// The settings a resumed run must share with the run it continues: the same photos in each
/// split (so `--val-split`, `--seed` and `--limit-per-class` cannot move a held-out photo into
/// training), the same batch size (steps), for scheduled phases the same length, and every
/// other choice that shapes the training (`choices`). A phase's epochs on a constant schedule
/// may grow: that is how a finished run is continued.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct RunSettings {
    batch_size: usize,
    /// SHA-256 of the training photos' paths, in order; the same for the validation photos.
    train_files: String,
    val_files: Option<String>,
    /// Per phase: schedule, warmup epochs, and the epochs a non-constant schedule spans.
    phases: Vec<(Schedule, usize, Option<usize>)>,
    /// (what, value) for each other choice, in order; absent in checkpoints of earlier
    /// versions, which are resumed with only the checks above.
    #[serde(default)]
    choices: Option<Vec<(String, String)>>,
}

impl RunSettings {
    fn of(model: &Classifier, cfg: &TrainConfig, train: &ImageFolder, val: Option<&ImageFolder>, phases: &[PhaseConfig]) -> anyhow::Result<Self> {
        use sha2::Digest;
        let digest = |ds: &ImageFolder| {
            let mut h = sha2::Sha256::new();
            for (p, l) in ds.paths.iter().zip(&ds.labels) {
                h.update(p.to_string_lossy().as_bytes());
                h.update(l.to_le_bytes());
            }
            hex::encode(h.finalize())
        };
        let mut choices = cfg.recorded.clone();
        choices.push(("--backbone".into(), model.arch.name().into()));
        choices.push(("--seed".into(), cfg.seed.to_string()));
        choices.push(("--precision".into(), json(&model.kernels.precision)?));
        // The transforms carry the image size, the augmentation and the normalization.
        for (what, p) in [("the training transforms (--image-size, --augment)", &cfg.train_pipeline), ("the test transforms (--image-size)", &cfg.test_pipeline)] {
            choices.push((what.into(), hex::encode(sha2::Sha256::digest(format!("{p:?}").as_bytes()))[..16].to_string()));
        }
        // The recipe (`finetune`, `freeze`, `two-phase`...) names its phases.
        choices.push(("the phases (the command)".into(), phases.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(", ")));
        for p in phases {
            let n = &p.name;
            choices.push((format!("phase '{n}': the optimizer (--optimizer, --momentum, --weight-decay)"), json(&p.optimizer)?));
            choices.push((format!("phase '{n}': the learning rate (--lr)"), crate::util::paths::number(p.lr)));
            choices.push((format!("phase '{n}': the head's learning-rate multiplier (--head-lr-mult)"), crate::util::paths::number(p.head_lr_mult)));
            choices.push((format!("phase '{n}': the frozen blocks (--freeze)"), json(&p.freeze)?));
            choices.push((format!("phase '{n}': BatchNorm (--bn)"), json(&p.bn_mode)?));
            choices.push((format!("phase '{n}': the loss (--loss)"), json(&p.reduction)?));
            choices.push((format!("phase '{n}': early stopping (--patience)"), json(&p.early_stopping)?));
        }
        Ok(RunSettings {
            batch_size: cfg.batch_size,
            train_files: digest(train),
            val_files: val.map(digest),
            phases: phases.iter().map(|p| (p.schedule, p.warmup_epochs, (p.schedule != Schedule::Constant).then_some(p.epochs))).collect(),
            choices: Some(choices),
        })
    }

    /// What differs from the saved run's settings, worded for the user, if anything.
    fn mismatch(&self, saved: &RunSettings) -> Option<String> {
        if self.batch_size != saved.batch_size {
            return Some(format!("--batch-size was {}, now {}", saved.batch_size, self.batch_size));
        }
        if self.train_files != saved.train_files || self.val_files != saved.val_files {
            return Some("the training or validation photos (--data, --val-split, --seed or --limit-per-class) differ".into());
        }
        if let (Some(now), Some(then)) = (&self.choices, &saved.choices) {
            let missing = "(not set)".to_string();
            for (what, value) in now {
                let old = then.iter().find(|(w, _)| w == what).map_or(&missing, |(_, v)| v);
                if old != value {
                    return Some(format!("{what} was {old}, now {value}"));
                }
            }
            if let Some((what, old)) = then.iter().find(|(w, _)| !now.iter().any(|(n, _)| n == w)) {
                return Some(format!("{what} was {old}, now {missing}"));
            }
        }
        if self.phases != saved.phases {
            return Some("the schedule (--schedule, --warmup-epochs, or the epochs of a scheduled phase) differs".into());
        }
        None
    }
}

/// A value recorded in [`RunSettings::choices`]: its JSON, compact (a string without quotes).
fn json<T: serde::Serialize>(value: &T) -> anyhow::Result<String> {
    Ok(match serde_json::to_value(value)? {
        serde_json::Value::String(s) => s,
        v => v.to_string(),
    })
}

impl ResumeState {
    fn ensure(&mut self, phases: usize) {
        self.phase_epochs.resize(phases.max(self.phase_epochs.len()), 0);
        self.stopped_early.resize(phases.max(self.stopped_early.len()), false);
    }
}

pub struct Outcome {
    pub model: Classifier,
    pub history: History,
}

/// Train `model` through `phases` without a validation split (see [`train_validated`]).
/// `on_epoch` sees each finished epoch (for live plots).
pub fn train(
    model: Classifier,
    train: Arc<ImageFolder>,
    test: Arc<ImageFolder>,
    phases: &[PhaseConfig],
    cfg: &TrainConfig,
    on_epoch: &mut dyn FnMut(&EpochRecord, &History),
) -> anyhow::Result<Outcome> {
    train_validated(model, train, None, test, phases, cfg, on_epoch)
}

/// Early stopping needs a validation split: it never watches the test split. Checked again by
/// [`train_validated`]; callers check first to fail before any work.
pub fn check_validation_for(phases: &[PhaseConfig], has_validation: bool) -> anyhow::Result<()> {
    if let (false, Some(p)) = (has_validation, phases.iter().find(|p| p.early_stopping.is_some())) {
        anyhow::bail!(
            "phase '{}' uses early stopping (--patience), which needs a validation split (--val-split F or a DIR/val/ folder): it never watches the test split",
            p.name
        );
    }
    Ok(())
}

/// Train `model` through `phases`. `val` is evaluated after every epoch and is what early
/// stopping watches; `test` is evaluated too (d2l's per-epoch report) but never chosen on, so a
/// phase with early stopping and no `val` is an error.
pub fn train_validated(
    model: Classifier,
    train: Arc<ImageFolder>,
    val: Option<Arc<ImageFolder>>,
    test: Arc<ImageFolder>,
    phases: &[PhaseConfig],
    cfg: &TrainConfig,
    on_epoch: &mut dyn FnMut(&EpochRecord, &History),
) -> anyhow::Result<Outcome> {
    check_validation_for(phases, val.is_some())?;
    if train.classes != model.class_names {
        anyhow::bail!("the data has classes {:?} but the model's head has {:?}", train.classes, model.class_names);
    }
    let files = cfg.checkpoint_dir.clone().map(|dir| RunFiles { dir });
    if let Some(f) = &files {
        f.create()?;
    }
    let settings = RunSettings::of(&model, cfg, &train, val.as_deref(), phases)?;
    let mut state = resume(&model, cfg, files.as_ref(), settings)?;
    state.ensure(phases.len());
    let data = Data { train, val, test, train_pipe: Arc::new(cfg.train_pipeline.clone()), test_pipe: Arc::new(cfg.test_pipeline.clone()) };
    let mut model = model;
    for (pi, phase) in phases.iter().enumerate() {
        if state.stopped_early[pi] || state.phase_epochs[pi] >= phase.epochs {
            continue;
        }
        model = model.rebuild(phase.freeze.clone(), phase.bn_mode)?;
        let mut run = PhaseRun::start(&model, pi, phase, &mut state, files.as_ref())?;
        while state.phase_epochs[pi] < phase.epochs {
            if run.epoch(&model, phases.len(), &data, cfg, &mut state, on_epoch)? == Verdict::Stop {
                break;
            }
        }
    }
    Ok(Outcome { model, history: state.history })
}

/// The saved state of an interrupted run (its model loaded into `model`), or a fresh start.
/// A resume whose settings differ from the saved run's is refused before any tensor is read,
/// naming the setting with its old and new value.
fn resume(model: &Classifier, cfg: &TrainConfig, files: Option<&RunFiles>, settings: RunSettings) -> anyhow::Result<ResumeState> {
    if let (true, Some(f)) = (cfg.resume, files) {
        if let Some(mut s) = f.load_state::<ResumeState>()? {
            match &mut s.settings {
                Some(saved) => {
                    if let Some(what) = settings.mismatch(saved) {
                        let out = f.dir.parent().unwrap_or(&f.dir);
                        anyhow::bail!("--resume: the run in {} was trained with other settings: {what}; pass the same settings, or --overwrite to start over", crate::util::paths::shown(out));
                    }
                    // A checkpoint of an earlier version records its choices from now on.
                    if saved.choices.is_none() {
                        saved.choices = settings.choices;
                    }
                }
                None => s.settings = Some(settings),
            }
            f.load_weights(model).with_context(|| format!("--resume: loading the checkpoint in {} into a {} model", crate::util::paths::shown(&f.dir), model.arch))?;
            eprintln!("resuming from {} after epoch {}", f.dir.display(), s.epochs_done);
            return Ok(s);
        }
    }
    Ok(ResumeState { settings: Some(settings), ..Default::default() })
}

struct Data {
    train: Arc<ImageFolder>,
    val: Option<Arc<ImageFolder>>,
    test: Arc<ImageFolder>,
    train_pipe: Arc<Pipeline>,
    test_pipe: Arc<Pipeline>,
}

/// One phase under way: its optimizer, the best weights early stopping has kept, and the test
/// and validation activations after the backbone's frozen prefix, which cannot change.
struct PhaseRun<'a> {
    index: usize,
    phase: &'a PhaseConfig,
    opt: Optimizer,
    best: Option<HashMap<String, Tensor>>,
    files: Option<&'a RunFiles>,
    /// Filled at the first evaluation: (test, validation), each `None` where nothing is cached.
    activations: Option<(Option<Activations>, Option<Activations>)>,
}

impl<'a> PhaseRun<'a> {
    /// A new optimizer for the phase; a phase resumed half-way gets its optimizer state and
    /// best weights back, a phase starting afresh forgets the previous phase's best loss.
    fn start(model: &Classifier, index: usize, phase: &'a PhaseConfig, state: &mut ResumeState, files: Option<&'a RunFiles>) -> anyhow::Result<Self> {
        let mut opt = Optimizer::new(phase.optimizer.clone(), model.param_groups(phase.lr, phase.head_lr_mult));
        let continuing = state.phase_epochs[index] > 0;
        let mut best = None;
        if let (true, Some(f)) = (continuing, files) {
            if state.optimizer_phase == Some(index) {
                // SGD without momentum saves no state, only its step count.
                opt.load_state(f.load_optimizer()?.unwrap_or_default(), state.optimizer_steps)?;
            }
        }
        if continuing && phase.early_stopping.is_some() {
            if let Some(f) = files {
                best = f.load_best()?;
            }
        } else {
            state.watch = Watch::default();
        }
        Ok(Self { index, phase, opt, best, files, activations: None })
    }

    /// (test loss and accuracy, validation's). Where the backbone's first steps are fixed for
    /// the whole phase (`Classifier::fixed_steps`: their blocks frozen and BatchNorm `Frozen`,
    /// so no running statistic moves either), their activations are computed once and each
    /// evaluation runs only the rest; otherwise (or past the cache's size limit) full passes.
    fn evaluate(&mut self, model: &Classifier, data: &Data, cfg: &TrainConfig) -> anyhow::Result<((f64, f64), Option<(f64, f64)>)> {
        if self.activations.is_none() {
            let test = Activations::of(model, &data.test, &data.test_pipe, cfg.batch_size, ACTIVATION_CACHE_BYTES)?;
            let val = match &data.val {
                Some(v) => Activations::of(model, v, &data.test_pipe, cfg.batch_size, ACTIVATION_CACHE_BYTES)?,
                None => None,
            };
            self.activations = Some((test, val));
        }
        let Some((test_cache, val_cache)) = &self.activations else { unreachable!("filled above") };
        let score = |ds: &Arc<ImageFolder>, cache: &Option<Activations>| match cache {
            Some(a) => evaluate_activations(model, a),
            None => evaluate(model, ds, &data.test_pipe, cfg.batch_size),
        };
        let test = score(&data.test, test_cache)?;
        let val = data.val.as_ref().map(|v| score(v, val_cache)).transpose()?;
        Ok((test, val))
    }

    /// Train one epoch, evaluate, report, apply early stopping, checkpoint.
    fn epoch(
        &mut self,
        model: &Classifier,
        num_phases: usize,
        data: &Data,
        cfg: &TrainConfig,
        state: &mut ResumeState,
        on_epoch: &mut dyn FnMut(&EpochRecord, &History),
    ) -> anyhow::Result<Verdict> {
        let (pi, phase) = (self.index, self.phase);
        let epoch = state.epochs_done + 1;
        let label = if num_phases > 1 {
            format!("{} epoch {}/{}", phase.name, state.phase_epochs[pi] + 1, phase.epochs)
        } else {
            format!("epoch {}/{}", epoch, phase.epochs)
        };
        let (loss, train_acc, n, secs, lr) = train_epoch(model, &mut self.opt, phase, &data.train, &data.train_pipe, cfg, epoch, label)?;
        let ((test_loss, test_acc), val) = self.evaluate(model, data, cfg)?;
        let rec = EpochRecord {
            epoch,
            loss,
            train_acc,
            test_acc,
            test_loss,
            val_loss: val.map(|v| v.0),
            val_acc: val.map(|v| v.1),
            examples_per_sec: n as f64 / secs.max(1e-9),
            train_seconds: secs,
            phase: phase.name.clone(),
            lr,
        };
        let val_text = val.map_or(String::new(), |(l, a)| format!(", val loss {l:.3}, val acc {a:.3}"));
        println!(
            "epoch {epoch} [{}]: loss {loss:.3}, train acc {train_acc:.3}{val_text}, test loss {test_loss:.3}, test acc {test_acc:.3}, {:.1} examples/sec",
            phase.name, rec.examples_per_sec
        );
        state.history.records.push(rec.clone());
        state.epochs_done += 1;
        state.phase_epochs[pi] += 1;
        state.optimizer_phase = Some(pi);
        state.optimizer_steps = self.opt.steps;
        // Checked in `train_validated`: early stopping only ever sees the validation loss.
        let verdict = match (&phase.early_stopping, val) {
            (Some(es), Some((val_loss, _))) => es.observe(&mut state.watch, val_loss, epoch),
            _ => Verdict::Wait,
        };
        match verdict {
            Verdict::Improved => {
                self.best = Some(snapshot(model)?);
            }
            Verdict::Stop => {
                println!("early stopping: no validation-loss improvement for {} epochs", phase.early_stopping.as_ref().map_or(0, |e| e.patience));
                state.stopped_early[pi] = true;
            }
            Verdict::Wait => {}
        }
        let phase_over = state.stopped_early[pi] || state.phase_epochs[pi] == phase.epochs;
        if let (true, Some(_), Some(b)) = (phase_over, &phase.early_stopping, &self.best) {
            model.load_state(b, "best weights")?;
            state.history.best_epoch = state.watch.best_epoch;
            println!(
                "restored the best weights (epoch {}, val loss {:.4})",
                state.watch.best_epoch.unwrap_or(0),
                state.watch.best_loss.unwrap_or(f64::NAN)
            );
        }
        if let Some(f) = self.files {
            f.save(model, Some(self.opt.state()), self.best.as_ref(), &*state)?;
        }
        on_epoch(&rec, &state.history);
        Ok(verdict)
    }
}

fn progress_bar(run: &TrainConfig, len: usize, label: String) -> ProgressBar {
    let bar = ProgressBar::new(len as u64);
    if !run.progress {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar.set_style(
        ProgressStyle::with_template("{prefix} {bar:25} {pos}/{len} batches {msg} [{elapsed}<{eta}]")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_prefix(label);
    bar
}

/// One pass over the training data; returns (mean loss, accuracy, examples, seconds, the
/// backbone lr averaged over the epoch's steps).
fn train_epoch(
    model: &Classifier,
    opt: &mut Optimizer,
    phase: &PhaseConfig,
    train: &Arc<ImageFolder>,
    pipeline: &Arc<Pipeline>,
    run: &TrainConfig,
    epoch: usize,
    label: String,
) -> anyhow::Result<(f64, f64, usize, f64, f64)> {
    let loader = Loader::new(train.clone(), pipeline.clone(), run.batch_size, true, run.seed, epoch as u64);
    model.seed_dropout(run.seed, epoch as u64);
    let total = loader.num_batches;
    let bar = progress_bar(run, total, label.clone());
    // No terminal (a notebook, a log file): one plain line per batch instead of a bar.
    let text_progress = run.progress && !std::io::stderr().is_terminal();
    let started = Instant::now();
    let (mut loss_sum, mut ok, mut n, mut secs) = (0.0, 0usize, 0usize, 0.0);
    // The optimizer counts the phase's steps (restored on resume): the lr is a pure function of it.
    let sched = StepSchedule::new(phase.schedule, phase.warmup_epochs, phase.epochs, total);
    let mut lr_sum = 0.0;
    for (i, batch) in loader.enumerate() {
        let b = batch?;
        lr_sum += super::schedule::set_lrs(opt, phase.lr, sched.factor(opt.steps as usize));
        // d2l times the training step only, not waiting for data.
        let t0 = Instant::now();
        let (x, y) = b.on(model.device())?;
        let logits = model.forward_t(&x, true)?;
        let loss = cross_entropy(&logits, &y, phase.reduction)?;
        opt.backward_step(&loss)?;
        let l = loss.to_scalar::<f32>()? as f64;
        loss_sum += match phase.reduction {
            Reduction::Sum => l,
            Reduction::Mean => l * b.len as f64,
        };
        ok += correct(&logits, &y)?;
        n += b.len;
        secs += t0.elapsed().as_secs_f64();
        bar.inc(1);
        let msg = format!("loss {:.3} acc {:.3}", loss_sum / n as f64, ok as f64 / n as f64);
        if text_progress {
            println!("  {label}: batch {}/{total}, {msg}, {:.0} s", i + 1, started.elapsed().as_secs_f64());
        }
        bar.set_message(msg);
    }
    bar.finish_and_clear();
    if !loss_sum.is_finite() {
        anyhow::bail!("training diverged in epoch {epoch}: the loss is {loss_sum} (try a lower learning rate)");
    }
    Ok((loss_sum / n.max(1) as f64, ok as f64 / n.max(1) as f64, n, secs, lr_sum / total.max(1) as f64))
}

/// Deep copy (the model's tensors are updated in place).
fn snapshot(model: &Classifier) -> anyhow::Result<HashMap<String, Tensor>> {
    model.state().into_iter().map(|(k, t)| Ok((k, t.copy()?))).collect()
}

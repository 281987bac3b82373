//! The training loop: phases (each with its own freezing, BatchNorm mode, optimizer and
//! learning rates), d2l's per-epoch report, early stopping with best-weights restore, and
//! a checkpoint after every epoch that a later run resumes from exactly.

use super::history::{EpochRecord, History};
use super::metrics::{correct, cross_entropy, Reduction};
use super::optim::{Optimizer, OptimizerKind, ParamGroup};
use crate::data::{ImageFolder, Loader};
use crate::models::{BnMode, Classifier, Freeze};
use crate::transforms::Pipeline;
use anyhow::Context;
use candle_core::Tensor;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EarlyStopping {
    /// Epochs without improvement of the test/validation loss before stopping.
    pub patience: usize,
    pub min_delta: f64,
}

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
    pub early_stopping: Option<EarlyStopping>,
}

/// What stays the same across phases.
#[derive(Clone, Debug)]
pub struct RunConfig {
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
}

/// Where a run stands, saved beside the checkpoint.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
struct RunState {
    epochs_done: usize,
    /// Epochs finished in each phase so far; a phase runs on until its configured count, so a
    /// finished run resumed with more epochs trains the extra ones.
    phase_epochs: Vec<usize>,
    /// Phases ended by early stopping (never resumed).
    stopped_early: Vec<bool>,
    /// The phase whose optimizer state is in `optimizer.safetensors`.
    optimizer_phase: Option<usize>,
    optimizer_steps: u64,
    best_loss: Option<f64>,
    best_epoch: Option<usize>,
    wait: usize,
    history: History,
}

impl RunState {
    fn ensure(&mut self, phases: usize) {
        self.phase_epochs.resize(phases.max(self.phase_epochs.len()), 0);
        self.stopped_early.resize(phases.max(self.stopped_early.len()), false);
    }
}

/// Mean loss per example and accuracy of `model` in evaluation mode.
pub fn evaluate(model: &Classifier, ds: &Arc<ImageFolder>, pipeline: &Arc<Pipeline>, batch_size: usize) -> anyhow::Result<(f64, f64)> {
    let (mut loss, mut ok, mut n) = (0.0, 0usize, 0usize);
    for batch in Loader::new(ds.clone(), pipeline.clone(), batch_size, false, 0, 0) {
        let b = batch?;
        let x = b.images.to_device(model.device())?;
        let y = b.labels.to_device(model.device())?;
        let logits = model.forward_t(&x, false)?;
        loss += cross_entropy(&logits, &y, Reduction::Sum)?.to_scalar::<f32>()? as f64;
        ok += correct(&logits, &y)?;
        n += b.len;
    }
    Ok((loss / n.max(1) as f64, ok as f64 / n.max(1) as f64))
}

fn progress_bar(run: &RunConfig, len: usize, label: String) -> ProgressBar {
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

/// One pass over the training data; returns (mean loss, accuracy, examples, seconds).
fn train_epoch(
    model: &Classifier,
    opt: &mut Optimizer,
    phase: &PhaseConfig,
    train: &Arc<ImageFolder>,
    pipeline: &Arc<Pipeline>,
    run: &RunConfig,
    epoch: usize,
    label: String,
) -> anyhow::Result<(f64, f64, usize, f64)> {
    let loader = Loader::new(train.clone(), pipeline.clone(), run.batch_size, true, run.seed, epoch as u64);
    let total = loader.num_batches;
    let bar = progress_bar(run, total, label.clone());
    // No terminal (a notebook, a log file): one plain line per batch instead of a bar.
    let text_progress = run.progress && !std::io::stderr().is_terminal();
    let started = Instant::now();
    let (mut loss_sum, mut ok, mut n, mut secs) = (0.0, 0usize, 0usize, 0.0);
    for (i, batch) in loader.enumerate() {
        let b = batch?;
        // d2l times the training step only, not waiting for data.
        let t0 = Instant::now();
        let x = b.images.to_device(model.device())?;
        let y = b.labels.to_device(model.device())?;
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
    Ok((loss_sum / n.max(1) as f64, ok as f64 / n.max(1) as f64, n, secs))
}

fn optimizer_for(model: &Classifier, phase: &PhaseConfig) -> Optimizer {
    let (backbone, head) = model.trainable();
    let mut groups = Vec::new();
    if !backbone.is_empty() {
        groups.push(ParamGroup { name: "backbone".into(), lr: phase.lr, params: backbone });
    }
    groups.push(ParamGroup { name: "head".into(), lr: phase.lr * phase.head_lr_mult, params: head });
    Optimizer::new(phase.optimizer.clone(), groups)
}

/// Deep copy (the model's tensors are updated in place).
fn snapshot(model: &Classifier) -> anyhow::Result<HashMap<String, Tensor>> {
    model.state().into_iter().map(|(k, t)| Ok((k, t.copy()?))).collect()
}

struct Checkpoint {
    dir: PathBuf,
}

impl Checkpoint {
    fn model(&self) -> PathBuf {
        self.dir.join("model.safetensors")
    }
    fn best(&self) -> PathBuf {
        self.dir.join("best.safetensors")
    }
    fn optimizer(&self) -> PathBuf {
        self.dir.join("optimizer.safetensors")
    }
    fn state(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    fn save(&self, model: &Classifier, opt: Option<&Optimizer>, state: &RunState) -> anyhow::Result<()> {
        model.save(&self.model())?;
        if let Some(opt) = opt {
            crate::models::weights::save_safetensors(opt.state(), HashMap::new(), &self.optimizer())?;
        }
        let s = serde_json::to_string_pretty(state)?;
        std::fs::write(self.state(), s).with_context(|| format!("writing {}", self.state().display()))
    }

    fn load(&self, model: &Classifier) -> anyhow::Result<Option<RunState>> {
        if !self.state().is_file() {
            return Ok(None);
        }
        let s = std::fs::read_to_string(self.state())?;
        let state: RunState = serde_json::from_str(&s).with_context(|| format!("parsing {}", self.state().display()))?;
        let tensors = crate::models::weights::read_tensors(&self.model())?;
        model.load_state(&tensors, &self.model().display().to_string())?;
        Ok(Some(state))
    }
}

pub struct Outcome {
    pub model: Classifier,
    pub history: History,
}

/// Train `model` through `phases`. `on_epoch` sees each finished epoch (for live plots).
pub fn train(
    model: Classifier,
    train: Arc<ImageFolder>,
    test: Arc<ImageFolder>,
    phases: &[PhaseConfig],
    run: &RunConfig,
    on_epoch: &mut dyn FnMut(&EpochRecord, &History),
) -> anyhow::Result<Outcome> {
    if train.classes != model.class_names {
        anyhow::bail!("the data has classes {:?} but the model's head has {:?}", train.classes, model.class_names);
    }
    let train_pipe = Arc::new(run.train_pipeline.clone());
    let test_pipe = Arc::new(run.test_pipeline.clone());
    let ckpt = run.checkpoint_dir.as_ref().map(|d| Checkpoint { dir: d.clone() });
    if let Some(c) = &ckpt {
        std::fs::create_dir_all(&c.dir).with_context(|| format!("creating {}", c.dir.display()))?;
    }
    let mut state = RunState::default();
    if let (true, Some(c)) = (run.resume, &ckpt) {
        if let Some(s) = c.load(&model)? {
            eprintln!("resuming from {} after epoch {}", c.dir.display(), s.epochs_done);
            state = s;
        }
    }
    let mut model = model;
    let mut best: Option<HashMap<String, Tensor>> = None;
    state.ensure(phases.len());
    for (pi, phase) in phases.iter().enumerate() {
        if state.stopped_early[pi] || state.phase_epochs[pi] >= phase.epochs {
            continue;
        }
        model = model.rebuild(phase.freeze.clone(), phase.bn_mode)?;
        let mut opt = optimizer_for(&model, phase);
        let continuing = state.phase_epochs[pi] > 0;
        if continuing && state.optimizer_phase == Some(pi) {
            if let Some(c) = ckpt.as_ref().filter(|c| c.optimizer().is_file()) {
                opt.load_state(crate::models::weights::read_tensors(&c.optimizer())?, state.optimizer_steps)?;
            }
        }
        if continuing && phase.early_stopping.is_some() {
            if let Some(c) = ckpt.as_ref().filter(|c| c.best().is_file()) {
                best = Some(crate::models::weights::read_tensors(&c.best())?);
            }
        } else {
            state.best_loss = None;
            state.wait = 0;
            best = None;
        }
        while state.phase_epochs[pi] < phase.epochs {
            let epoch = state.epochs_done + 1;
            let label = if phases.len() > 1 {
                format!("{} epoch {}/{}", phase.name, state.phase_epochs[pi] + 1, phase.epochs)
            } else {
                format!("epoch {}/{}", epoch, phase.epochs)
            };
            let (loss, train_acc, n, secs) = train_epoch(&model, &mut opt, phase, &train, &train_pipe, run, epoch, label)?;
            let (test_loss, test_acc) = evaluate(&model, &test, &test_pipe, run.batch_size)?;
            let rec = EpochRecord {
                epoch,
                loss,
                train_acc,
                test_acc,
                test_loss,
                examples_per_sec: n as f64 / secs.max(1e-9),
                train_seconds: secs,
                phase: phase.name.clone(),
                lr: phase.lr,
            };
            println!(
                "epoch {epoch} [{}]: loss {loss:.3}, train acc {train_acc:.3}, test loss {test_loss:.3}, test acc {test_acc:.3}, {:.1} examples/sec",
                phase.name, rec.examples_per_sec
            );
            state.history.records.push(rec.clone());
            state.epochs_done += 1;
            state.phase_epochs[pi] += 1;
            state.optimizer_phase = Some(pi);
            state.optimizer_steps = opt.steps;
            if let Some(es) = &phase.early_stopping {
                if state.best_loss.is_none_or(|b| test_loss < b - es.min_delta) {
                    state.best_loss = Some(test_loss);
                    state.best_epoch = Some(epoch);
                    state.wait = 0;
                    let snap = snapshot(&model)?;
                    if let Some(c) = &ckpt {
                        crate::models::weights::save_safetensors(&snap, HashMap::new(), &c.best())?;
                    }
                    best = Some(snap);
                } else {
                    state.wait += 1;
                    if state.wait >= es.patience {
                        println!("early stopping: no test-loss improvement for {} epochs", es.patience);
                        state.stopped_early[pi] = true;
                    }
                }
            }
            if state.stopped_early[pi] || state.phase_epochs[pi] == phase.epochs {
                if let (Some(_), Some(b)) = (&phase.early_stopping, &best) {
                    model.load_state(b, "best weights")?;
                    state.history.best_epoch = state.best_epoch;
                    println!("restored the best weights (epoch {})", state.best_epoch.unwrap_or(0));
                }
            }
            if let Some(c) = &ckpt {
                c.save(&model, Some(&opt), &state)?;
            }
            on_epoch(&rec, &state.history);
            if state.stopped_early[pi] {
                break;
            }
        }
    }
    Ok(Outcome { model, history: state.history })
}

/// Where `train` keeps its checkpoint under an output folder.
pub fn checkpoint_dir(out: &Path) -> PathBuf {
    out.join("checkpoint")
}

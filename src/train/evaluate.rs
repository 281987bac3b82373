//! The one evaluation loop: a model in evaluation mode over a dataset, batch by batch.

use super::metrics::{correct, cross_entropy, Reduction};
use crate::data::{ImageFolder, Loader};
use crate::models::Classifier;
use crate::transforms::Pipeline;
use candle_core::{Device, Tensor};
use std::sync::Arc;

/// `ds` in order, batch by batch, each batch's images and labels moved to `device`.
fn batches_on<'a>(
    device: &'a Device,
    ds: &Arc<ImageFolder>,
    pipeline: &Arc<Pipeline>,
    batch_size: usize,
) -> impl Iterator<Item = anyhow::Result<(Tensor, Tensor)>> + 'a {
    Loader::new(ds.clone(), pipeline.clone(), batch_size, false, 0, 0).map(move |batch| {
        Ok(batch?.on(device)?)
    })
}

/// Run `model` (evaluation mode) over `ds` in order; `f` sees each batch's logits and labels.
pub fn for_each_batch(
    model: &Classifier,
    ds: &Arc<ImageFolder>,
    pipeline: &Arc<Pipeline>,
    batch_size: usize,
    mut f: impl FnMut(&Tensor, &Tensor) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    for batch in batches_on(model.device(), ds, pipeline, batch_size) {
        let (x, y) = batch?;
        f(&model.forward_t(&x, false)?, &y)?;
    }
    Ok(())
}

/// Mean loss per example and accuracy of `model` in evaluation mode.
pub fn evaluate(model: &Classifier, ds: &Arc<ImageFolder>, pipeline: &Arc<Pipeline>, batch_size: usize) -> anyhow::Result<(f64, f64)> {
    let mut score = Score::default();
    for_each_batch(model, ds, pipeline, batch_size, |logits, y| score.add(logits, y))?;
    Ok(score.mean())
}

/// Summed loss, correct predictions and examples over batches.
#[derive(Default)]
struct Score {
    loss: f64,
    ok: usize,
    n: usize,
}

impl Score {
    fn add(&mut self, logits: &Tensor, y: &Tensor) -> anyhow::Result<()> {
        self.loss += cross_entropy(logits, y, Reduction::Sum)?.to_scalar::<f32>()? as f64;
        self.ok += correct(logits, y)?;
        self.n += y.dim(0)?;
        Ok(())
    }

    /// (mean loss per example, accuracy).
    fn mean(&self) -> (f64, f64) {
        (self.loss / self.n.max(1) as f64, self.ok as f64 / self.n.max(1) as f64)
    }
}

/// Most bytes one split's cached activations may take; a larger cache is not built and the
/// split is evaluated by full passes (EfficientNet-Lite0 frozen below `_blocks.11` keeps
/// 112x14x14 floats, 88 KB, per 224-px photo; frozen below `_blocks.1`, 0.8 MB).
pub const ACTIVATION_CACHE_BYTES: usize = 1 << 30;

/// A dataset's backbone activations after the model's fixed steps (`Classifier::fixed_steps`:
/// frozen blocks under BatchNorm `Frozen`, whose output never changes while the phase trains),
/// batch by batch in evaluation order, with the labels. A phase computes them once and each
/// evaluation runs only the remaining steps and the head (`evaluate_activations`), with the
/// same bits as `evaluate` (tests/training/train.rs checks it).
pub struct Activations {
    steps: usize,
    batches: Vec<(Tensor, Tensor)>,
}

impl Activations {
    /// `None` when no step is fixed, or when they would take more than `limit_bytes` (a
    /// training phase passes [`ACTIVATION_CACHE_BYTES`]).
    pub fn of(model: &Classifier, ds: &Arc<ImageFolder>, pipeline: &Arc<Pipeline>, batch_size: usize, limit_bytes: usize) -> anyhow::Result<Option<Self>> {
        let steps = model.fixed_steps();
        if steps == 0 {
            return Ok(None);
        }
        let mut batches = Vec::new();
        for batch in batches_on(model.device(), ds, pipeline, batch_size) {
            let (x, y) = batch?;
            let a = model.activations(&x, steps)?;
            let per_example = a.elem_count() * a.dtype().size_in_bytes() / x.dim(0)?.max(1);
            if batches.is_empty() && per_example * ds.len() > limit_bytes {
                return Ok(None);
            }
            batches.push((a, y));
        }
        Ok(Some(Self { steps, batches }))
    }

    /// After how many of the backbone's steps the activations were taken.
    pub fn steps(&self) -> usize {
        self.steps
    }
}

/// `evaluate` from cached activations: only the backbone's remaining steps and the head run.
pub fn evaluate_activations(model: &Classifier, activations: &Activations) -> anyhow::Result<(f64, f64)> {
    let mut score = Score::default();
    for (a, y) in &activations.batches {
        score.add(&model.logits_from(a, activations.steps)?, y)?;
    }
    Ok(score.mean())
}

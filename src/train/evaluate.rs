//! The one evaluation loop: a model in evaluation mode over a dataset, batch by batch.

use super::metrics::{correct, cross_entropy, Reduction};
use crate::data::{ImageFolder, Loader};
use crate::models::Classifier;
use crate::transforms::Pipeline;
use candle_core::Tensor;
use std::sync::Arc;

/// Run `model` (evaluation mode) over `ds` in order; `f` sees each batch's logits and labels.
pub fn for_each_batch(
    model: &Classifier,
    ds: &Arc<ImageFolder>,
    pipeline: &Arc<Pipeline>,
    batch_size: usize,
    mut f: impl FnMut(&Tensor, &Tensor) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    for batch in Loader::new(ds.clone(), pipeline.clone(), batch_size, false, 0, 0) {
        let b = batch?;
        let x = b.images.to_device(model.device())?;
        let y = b.labels.to_device(model.device())?;
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

/// A dataset's pooled backbone features (evaluation mode, batch by batch, in order) and labels.
/// While the whole backbone is frozen with BatchNorm `Frozen`, those features never change: a
/// phase computes them once and evaluates only the head afterwards (`evaluate_features`), with
/// the same bits as `evaluate` (tests/train.rs checks it).
pub struct Features {
    batches: Vec<(Tensor, Tensor)>,
}

impl Features {
    pub fn of(model: &Classifier, ds: &Arc<ImageFolder>, pipeline: &Arc<Pipeline>, batch_size: usize) -> anyhow::Result<Self> {
        let mut batches = Vec::new();
        for batch in Loader::new(ds.clone(), pipeline.clone(), batch_size, false, 0, 0) {
            let b = batch?;
            let x = b.images.to_device(model.device())?;
            batches.push((model.features_t(&x, false)?, b.labels.to_device(model.device())?));
        }
        Ok(Self { batches })
    }
}

/// `evaluate` from cached features: only the head runs.
pub fn evaluate_features(model: &Classifier, features: &Features) -> anyhow::Result<(f64, f64)> {
    let mut score = Score::default();
    for (f, y) in &features.batches {
        score.add(&model.head_logits(f)?, y)?;
    }
    Ok(score.mean())
}

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
    let (mut loss, mut ok, mut n) = (0.0, 0usize, 0usize);
    for_each_batch(model, ds, pipeline, batch_size, |logits, y| {
        loss += cross_entropy(logits, y, Reduction::Sum)?.to_scalar::<f32>()? as f64;
        ok += correct(logits, y)?;
        n += y.dim(0)?;
        Ok(())
    })?;
    Ok((loss / n.max(1) as f64, ok as f64 / n.max(1) as f64))
}

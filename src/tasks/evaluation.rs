//! The report written after every training run and by `finetune evaluate`: `metrics.json`
//! (accuracy, per-class precision / recall / F1 / support, the confusion matrix),
//! `confusion.png` and `top-losses.png`.

use crate::data::ImageFolder;
use crate::models::Classifier;
use crate::plot::{save_confusion, save_top_losses};
use crate::train::{Metrics, Predictions};
use crate::transforms::Pipeline;
use std::path::Path;
use std::sync::Arc;

/// A model's predictions on one split and the metrics computed from them.
pub struct Evaluation {
    pub metrics: Metrics,
    pub predictions: Predictions,
}

/// Evaluate `model` on `ds` (named `split` in the report) with the backbone's test-time
/// preprocessing at `image_size`.
pub fn evaluate_split(model: &Classifier, ds: &Arc<ImageFolder>, split: &str, image_size: u32, batch_size: usize) -> anyhow::Result<Evaluation> {
    evaluate_split_with(model, ds, split, &Pipeline::d2l_test(image_size, model.arch.normalization()), batch_size)
}

/// [`evaluate_split`] with a given test-time pipeline (a saved model's own size and
/// normalization, from its [`crate::checkpoint::ModelCard`]).
pub fn evaluate_split_with(model: &Classifier, ds: &Arc<ImageFolder>, split: &str, pipeline: &Pipeline, batch_size: usize) -> anyhow::Result<Evaluation> {
    if ds.classes != model.class_names {
        anyhow::bail!("{} has classes {:?} but the model's head has {:?}", crate::util::paths::shown(&ds.root), ds.classes, model.class_names);
    }
    let pipeline = Arc::new(pipeline.clone());
    let predictions = Predictions::collect(model, ds, &pipeline, batch_size)?;
    let metrics = Metrics::from_predictions(split, &predictions, &model.class_names)?;
    Ok(Evaluation { metrics, predictions })
}

/// Write `OUT/metrics.json`, `OUT/confusion.png` and `OUT/top-losses.png`.
pub fn write_report(ev: &Evaluation, ds: &ImageFolder, title: &str, out: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).map_err(|e| anyhow::anyhow!("creating {}: {e}", out.display()))?;
    ev.metrics.save_json(&out.join("metrics.json"))?;
    save_confusion(&ev.metrics, title, &out.join("confusion.png"))?;
    save_top_losses(ds, &ev.predictions, &out.join("top-losses.png"))
}

/// The closing line: the test accuracy of the model that was kept, and how it was chosen.
pub fn kept_model_line(history: &crate::train::History, test: &Metrics) -> String {
    let best = history.best_epoch.and_then(|e| history.records.iter().find(|r| r.epoch == e));
    match (best, history.last()) {
        (Some(r), _) => format!(
            "kept epoch {} (lowest val loss {:.4}, val acc {:.3}): test acc {:.3}",
            r.epoch,
            r.val_loss.unwrap_or(f64::NAN),
            r.val_acc.unwrap_or(f64::NAN),
            test.accuracy
        ),
        (None, Some(r)) => format!("kept the last epoch ({}): test acc {:.3}", r.epoch, test.accuracy),
        (None, None) => format!("no epochs were run: test acc {:.3}", test.accuracy),
    }
}

//! After training: what the model gets wrong (fastai's `ClassificationInterpretation`).
//! Per-photo class probabilities, accuracy, per-class precision / recall / F1 / support, the
//! confusion matrix, and the most confidently wrong photos ("top losses").

use super::evaluate::for_each_batch;
use crate::data::ImageFolder;
use crate::models::Classifier;
use crate::transforms::Pipeline;
use anyhow::Context;
use std::path::Path;
use std::sync::Arc;

/// The model's softmax output for every photo of a split, in the split's order.
#[derive(Clone, Debug, PartialEq)]
pub struct Predictions {
    pub labels: Vec<u32>,
    /// Arg-max class of each photo.
    pub preds: Vec<u32>,
    /// Class probabilities of each photo (softmax of the logits).
    pub probs: Vec<Vec<f32>>,
}

impl Predictions {
    /// Run `model` (evaluation mode) over `ds` with `pipeline`.
    pub fn collect(model: &Classifier, ds: &Arc<ImageFolder>, pipeline: &Arc<Pipeline>, batch_size: usize) -> anyhow::Result<Self> {
        let mut p = Self { labels: Vec::with_capacity(ds.len()), preds: Vec::with_capacity(ds.len()), probs: Vec::with_capacity(ds.len()) };
        for_each_batch(model, ds, pipeline, batch_size, |logits, y| {
            let probs = candle_nn::ops::softmax(logits, 1)?.to_dtype(candle_core::DType::F32)?.to_vec2::<f32>()?;
            p.labels.extend(y.to_vec1::<u32>()?);
            p.preds.extend(logits.argmax(1)?.to_vec1::<u32>()?);
            p.probs.extend(probs);
            Ok(())
        })?;
        Ok(p)
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Cross-entropy of photo `i`: `-ln p(true class)`.
    pub fn loss(&self, i: usize) -> f64 {
        -(self.probs[i][self.labels[i] as usize].max(1e-30) as f64).ln()
    }

    /// Probability the model gives its own prediction for photo `i`.
    pub fn confidence(&self, i: usize) -> f32 {
        self.probs[i][self.preds[i] as usize]
    }

    /// The `k` most confidently wrong photos: misclassified ones by decreasing loss (ties in
    /// file order). Fewer than `k` when fewer are wrong.
    pub fn top_losses(&self, k: usize) -> Vec<usize> {
        let mut wrong: Vec<usize> = (0..self.len()).filter(|&i| self.preds[i] != self.labels[i]).collect();
        wrong.sort_by(|&a, &b| self.loss(b).total_cmp(&self.loss(a)).then(a.cmp(&b)));
        wrong.truncate(k);
        wrong
    }
}

/// One class's row of the report.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ClassReport {
    pub class: String,
    /// Of the photos predicted as this class, the fraction that are (0 when none is predicted).
    pub precision: f64,
    /// Of the photos of this class, the fraction predicted as it.
    pub recall: f64,
    /// Harmonic mean of precision and recall (0 when both are 0).
    pub f1: f64,
    /// Photos of this class.
    pub support: usize,
}

/// `metrics.json`.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Metrics {
    /// Which split was evaluated (`test`, `val`, ...).
    pub split: String,
    pub images: usize,
    pub accuracy: f64,
    /// Unweighted mean of the classes' F1.
    pub macro_f1: f64,
    pub classes: Vec<ClassReport>,
    /// `confusion[true][predicted]`: photo counts, rows are the true classes.
    pub confusion: Vec<Vec<usize>>,
}

impl Metrics {
    /// From true and predicted class indices (both below `class_names.len()`).
    pub fn from_labels(split: &str, labels: &[u32], preds: &[u32], class_names: &[String]) -> anyhow::Result<Self> {
        let n = class_names.len();
        if labels.len() != preds.len() {
            anyhow::bail!("{} labels but {} predictions", labels.len(), preds.len());
        }
        let mut confusion = vec![vec![0usize; n]; n];
        for (&t, &p) in labels.iter().zip(preds) {
            if t as usize >= n || p as usize >= n {
                anyhow::bail!("class index {} out of range for {n} classes", t.max(p));
            }
            confusion[t as usize][p as usize] += 1;
        }
        let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        let classes: Vec<ClassReport> = (0..n)
            .map(|c| {
                let tp = confusion[c][c];
                let support: usize = confusion[c].iter().sum();
                let predicted: usize = confusion.iter().map(|row| row[c]).sum();
                let (precision, recall) = (ratio(tp, predicted), ratio(tp, support));
                let f1 = if precision + recall > 0.0 { 2.0 * precision * recall / (precision + recall) } else { 0.0 };
                ClassReport { class: class_names[c].clone(), precision, recall, f1, support }
            })
            .collect();
        let correct: usize = (0..n).map(|c| confusion[c][c]).sum();
        Ok(Self {
            split: split.to_string(),
            images: labels.len(),
            accuracy: ratio(correct, labels.len()),
            macro_f1: classes.iter().map(|c| c.f1).sum::<f64>() / n.max(1) as f64,
            classes,
            confusion,
        })
    }

    pub fn from_predictions(split: &str, p: &Predictions, class_names: &[String]) -> anyhow::Result<Self> {
        Self::from_labels(split, &p.labels, &p.preds, class_names)
    }

    /// A plain-text table: one line per class, then accuracy.
    pub fn table(&self) -> String {
        let w = self.classes.iter().map(|c| c.class.len()).max().unwrap_or(5).max(5);
        let mut s = format!("{:<w$} {:>9} {:>6} {:>6} {:>7}\n", "class", "precision", "recall", "f1", "support");
        for c in &self.classes {
            s += &format!("{:<w$} {:>9.3} {:>6.3} {:>6.3} {:>7}\n", c.class, c.precision, c.recall, c.f1, c.support);
        }
        s += &format!("{} acc {:.3} ({} images), macro F1 {:.3}", self.split, self.accuracy, self.images, self.macro_f1);
        s
    }

    pub fn save_json(&self, path: &Path) -> anyhow::Result<()> {
        std::fs::write(path, serde_json::to_string_pretty(self)?).with_context(|| format!("writing {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("c{i}")).collect()
    }

    /// 3 classes, 10 photos, worked out by hand:
    /// true  0 0 0 0 1 1 1 2 2 2
    /// pred  0 0 1 2 1 1 0 2 2 1
    /// confusion rows (true) x cols (pred): [2 1 1] [1 2 0] [0 1 2]
    /// class 0: tp 2, predicted 3, support 4 -> P 2/3, R 1/2, F1 2*(1/3)/(7/6) = 4/7
    /// class 1: tp 2, predicted 4, support 3 -> P 1/2, R 2/3, F1 4/7
    /// class 2: tp 2, predicted 3, support 3 -> P 2/3, R 2/3, F1 2/3
    /// accuracy 6/10.
    #[test]
    fn precision_recall_f1_match_a_hand_computation() {
        let m = Metrics::from_labels("test", &[0, 0, 0, 0, 1, 1, 1, 2, 2, 2], &[0, 0, 1, 2, 1, 1, 0, 2, 2, 1], &names(3)).unwrap();
        assert_eq!(m.confusion, vec![vec![2, 1, 1], vec![1, 2, 0], vec![0, 1, 2]]);
        let want = [(2.0 / 3.0, 0.5, 4.0 / 7.0, 4), (0.5, 2.0 / 3.0, 4.0 / 7.0, 3), (2.0 / 3.0, 2.0 / 3.0, 2.0 / 3.0, 3)];
        for (c, (p, r, f, s)) in m.classes.iter().zip(want) {
            assert!((c.precision - p).abs() < 1e-12 && (c.recall - r).abs() < 1e-12 && (c.f1 - f).abs() < 1e-12, "{c:?}");
            assert_eq!(c.support, s);
        }
        assert!((m.accuracy - 0.6).abs() < 1e-12);
        assert!((m.macro_f1 - (4.0 / 7.0 + 4.0 / 7.0 + 2.0 / 3.0) / 3.0).abs() < 1e-12);
    }

    #[test]
    fn a_class_never_predicted_has_zero_precision_and_f1() {
        let m = Metrics::from_labels("val", &[0, 1, 1], &[0, 0, 0], &names(2)).unwrap();
        assert_eq!((m.classes[1].precision, m.classes[1].recall, m.classes[1].f1), (0.0, 0.0, 0.0));
        assert!((m.classes[0].precision - 1.0 / 3.0).abs() < 1e-12 && m.classes[0].recall == 1.0);
        assert!(Metrics::from_labels("t", &[0, 2], &[0, 0], &names(2)).is_err());
    }

    #[test]
    fn top_losses_are_the_confidently_wrong_photos_first() {
        let p = Predictions {
            labels: vec![0, 0, 1, 1],
            preds: vec![0, 1, 0, 1],
            probs: vec![vec![0.9, 0.1], vec![0.4, 0.6], vec![0.95, 0.05], vec![0.2, 0.8]],
        };
        // Wrong: photo 1 (p true 0.4, loss 0.92) and photo 2 (p true 0.05, loss 3.0).
        assert_eq!(p.top_losses(5), vec![2, 1]);
        assert_eq!(p.top_losses(1), vec![2]);
        assert!((p.loss(2) - -(0.05f64).ln()).abs() < 1e-6);
        assert!((p.confidence(2) - 0.95).abs() < 1e-7);
    }
}

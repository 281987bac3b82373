//! Per-epoch metrics, d2l's report lines, and `history.json`.

use anyhow::Context;
use std::path::Path;

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EpochRecord {
    /// 1-based, counted across phases.
    pub epoch: usize,
    /// Mean training loss per example.
    pub loss: f64,
    pub train_acc: f64,
    pub test_acc: f64,
    /// Mean loss per example on the test split (reported, never chosen on).
    pub test_loss: f64,
    /// Mean loss per example on the validation split (early stopping watches it); `null`
    /// without validation.
    #[serde(default)]
    pub val_loss: Option<f64>,
    #[serde(default)]
    pub val_acc: Option<f64>,
    /// Training examples per second (training batches only, as d2l times them).
    pub examples_per_sec: f64,
    pub train_seconds: f64,
    pub phase: String,
    pub lr: f64,
}

#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct History {
    pub records: Vec<EpochRecord>,
    /// Epoch whose weights were kept (early stopping), if any.
    pub best_epoch: Option<usize>,
}

impl History {
    pub fn last(&self) -> Option<&EpochRecord> {
        self.records.last()
    }

    /// Examples/sec over all epochs (d2l: total examples / total training time).
    pub fn overall_examples_per_sec(&self) -> f64 {
        let secs: f64 = self.records.iter().map(|r| r.train_seconds).sum();
        let ex: f64 = self.records.iter().map(|r| r.examples_per_sec * r.train_seconds).sum();
        if secs > 0.0 {
            ex / secs
        } else {
            0.0
        }
    }

    /// d2l's two closing lines: `loss 0.177, train acc 0.928, test acc 0.941` / `296.9 examples/sec on cpu`.
    pub fn summary_lines(&self, device: &str) -> String {
        let shown = self.best_epoch.and_then(|e| self.records.iter().find(|r| r.epoch == e)).or(self.last());
        match shown {
            None => "no epochs were run".to_string(),
            Some(r) => format!(
                "loss {:.3}, train acc {:.3}, test acc {:.3}\n{:.1} examples/sec on {device}",
                r.loss,
                r.train_acc,
                r.test_acc,
                self.overall_examples_per_sec()
            ),
        }
    }

    /// `history.json`: an array of epoch objects.
    pub fn save_json(&self, path: &Path) -> anyhow::Result<()> {
        let s = serde_json::to_string_pretty(&self.records)?;
        // Temp + fsync + rename: a kill never leaves half a history.
        crate::checkpoint::atomic::write_atomic(path, s.as_bytes())
    }

    pub fn load_json(path: &Path) -> anyhow::Result<Self> {
        let s = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Ok(Self { records: serde_json::from_str(&s).with_context(|| format!("parsing {}", path.display()))?, best_epoch: None })
    }

    /// Epoch numbers at which a new phase starts (for marking curves).
    pub fn phase_starts(&self) -> Vec<(usize, String)> {
        let mut out = Vec::new();
        let mut prev: Option<&str> = None;
        for r in &self.records {
            if prev != Some(r.phase.as_str()) {
                if prev.is_some() {
                    out.push((r.epoch, r.phase.clone()));
                }
                prev = Some(&r.phase);
            }
        }
        out
    }
}

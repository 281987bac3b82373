//! Early stopping on a watched loss, with the epoch of the best weights (Keras
//! `EarlyStopping(patience, restore_best_weights=True)`).

/// Stop after `patience` epochs without the loss improving by more than `min_delta`.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EarlyStopping {
    pub patience: usize,
    pub min_delta: f64,
}

/// What early stopping has seen so far (saved in the checkpoint, so a resumed run goes on).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Watch {
    pub best_loss: Option<f64>,
    pub best_epoch: Option<usize>,
    /// Epochs since the last improvement.
    pub wait: usize,
}

/// The outcome of one epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A new best: keep these weights.
    Improved,
    /// No improvement, patience left.
    Wait,
    /// No improvement for `patience` epochs.
    Stop,
}

impl EarlyStopping {
    pub fn new(patience: usize) -> Self {
        Self { patience, min_delta: 0.0 }
    }

    /// Record `loss` of `epoch` in `watch` and say what to do.
    pub fn observe(&self, watch: &mut Watch, loss: f64, epoch: usize) -> Verdict {
        if watch.best_loss.is_none_or(|b| loss < b - self.min_delta) {
            *watch = Watch { best_loss: Some(loss), best_epoch: Some(epoch), wait: 0 };
            Verdict::Improved
        } else {
            watch.wait += 1;
            if watch.wait >= self.patience {
                Verdict::Stop
            } else {
                Verdict::Wait
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stops_after_patience_epochs_without_improvement() {
        let es = EarlyStopping::new(2);
        let mut w = Watch::default();
        let verdicts: Vec<Verdict> = [1.0, 0.8, 0.9, 0.7, 0.75, 0.71].iter().enumerate().map(|(i, &l)| es.observe(&mut w, l, i + 1)).collect();
        use Verdict::*;
        assert_eq!(verdicts, [Improved, Improved, Wait, Improved, Wait, Stop]);
        assert_eq!((w.best_loss, w.best_epoch), (Some(0.7), Some(4)));
    }

    #[test]
    fn min_delta_demands_a_real_improvement() {
        let es = EarlyStopping { patience: 1, min_delta: 0.1 };
        let mut w = Watch::default();
        assert_eq!(es.observe(&mut w, 1.0, 1), Verdict::Improved);
        assert_eq!(es.observe(&mut w, 0.95, 2), Verdict::Stop);
        assert_eq!(w.best_epoch, Some(1));
    }
}

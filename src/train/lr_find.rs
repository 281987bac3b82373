//! fastai's learning-rate finder (Smith 2015, "Cyclical Learning Rates", section 3.3): train
//! for at most one pass over the data while the lr grows geometrically from `start_lr` to
//! `end_lr`, record the loss of every step, and stop once the smoothed loss exceeds
//! `diverge` times its best value.
//!
//! The suggestion ([`suggest`]) is the lr of the **steepest descent** of the smoothed loss
//! (the most negative `d loss / d log(lr)`, central differences), searched only up to the
//! smoothed loss's minimum, so it lies inside the swept range and below the divergence; fastai's
//! `SuggestionMethod.Steep`. When the minimum comes too early to have a slope before it, the
//! suggestion is the lr of the minimum / 10 (fastai's other classic rule), clamped to the start.
//!
//! The model's weights and BatchNorm statistics are restored afterwards: the sweep changes
//! nothing the caller sees.

use super::metrics::{cross_entropy, Reduction};
use super::optim::{Optimizer, OptimizerKind};
use crate::data::{ImageFolder, Loader};
use crate::models::Classifier;
use crate::transforms::Pipeline;
use anyhow::bail;
use std::sync::Arc;

/// The sweep's settings.
#[derive(Clone, Debug)]
pub struct LrFindConfig {
    pub start_lr: f64,
    pub end_lr: f64,
    /// At most this many steps (fewer when one pass over the data has fewer batches).
    pub max_steps: usize,
    /// Exponential moving average of the loss (fastai: 0.98), bias-corrected.
    pub smoothing: f64,
    /// Stop when the smoothed loss exceeds this many times its best (fastai: 4).
    pub diverge: f64,
    pub batch_size: usize,
    pub seed: u64,
    pub optimizer: OptimizerKind,
    /// The head's lr = the swept lr x this (d2l: 10).
    pub head_lr_mult: f64,
    pub reduction: Reduction,
    /// Called after each step with (step, steps).
    pub on_step: Option<fn(usize, usize)>,
}

impl Default for LrFindConfig {
    fn default() -> Self {
        Self {
            start_lr: 1e-7,
            end_lr: 10.0,
            max_steps: 100,
            smoothing: 0.98,
            diverge: 4.0,
            batch_size: 16,
            seed: 0,
            optimizer: OptimizerKind::sgd(0.0, 1e-3),
            head_lr_mult: 10.0,
            reduction: Reduction::Sum,
            on_step: None,
        }
    }
}

/// One step of the sweep: the (backbone) lr it used, its loss per example, the smoothed loss.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LrPoint {
    pub step: usize,
    pub lr: f64,
    pub loss: f64,
    pub smoothed: f64,
}

/// How the suggestion was chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SuggestionRule {
    /// The steepest descent of the smoothed loss before its minimum.
    SteepestDescent,
    /// The lr of the smoothed loss's minimum / 10 (the minimum came too early for a slope).
    MinimumOverTen,
}

impl SuggestionRule {
    pub fn describe(self) -> &'static str {
        match self {
            Self::SteepestDescent => "steepest descent of the smoothed loss (most negative d loss / d log lr, before its minimum)",
            Self::MinimumOverTen => "lr at the minimum of the smoothed loss / 10",
        }
    }
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct LrFindResult {
    pub start_lr: f64,
    pub end_lr: f64,
    /// The steps planned (one pass or `max_steps`), and those run.
    pub planned_steps: usize,
    pub points: Vec<LrPoint>,
    /// The lr at which the smoothed loss exceeded `diverge` x its best, if it did.
    pub diverged_at: Option<f64>,
    /// The lr of the lowest smoothed loss.
    pub min_loss_lr: f64,
    pub suggestion: f64,
    pub rule: SuggestionRule,
}

/// The `i`-th of `n` geometrically spaced lrs from `start` to `end` (both included).
pub fn geometric_lr(start: f64, end: f64, i: usize, n: usize) -> f64 {
    if n <= 1 {
        return start;
    }
    start * (end / start).powf(i as f64 / (n - 1) as f64)
}

/// The suggested lr for a smoothed loss curve over `lrs` (see the module doc), and the rule used.
pub fn suggest(lrs: &[f64], smoothed: &[f64]) -> Option<(f64, SuggestionRule)> {
    let n = lrs.len().min(smoothed.len());
    if n == 0 {
        return None;
    }
    let min = (0..n).filter(|&i| smoothed[i].is_finite()).min_by(|&a, &b| smoothed[a].total_cmp(&smoothed[b]))?;
    // The first tenth is skipped: the bias-corrected average is still noisy there.
    let skip = (n / 10).max(1);
    let mut best: Option<(usize, f64)> = None;
    for i in skip..=min {
        if i + 1 >= n {
            break;
        }
        let slope = (smoothed[i + 1] - smoothed[i - 1]) / (lrs[i + 1].ln() - lrs[i - 1].ln());
        if slope.is_finite() && slope < 0.0 && best.is_none_or(|(_, s)| slope < s) {
            best = Some((i, slope));
        }
    }
    Some(match best {
        Some((i, _)) => (lrs[i], SuggestionRule::SteepestDescent),
        None => ((lrs[min] / 10.0).max(lrs[0]), SuggestionRule::MinimumOverTen),
    })
}

/// Sweep the lr over (at most) one shuffled pass of `train` through `pipeline`. `model` should
/// already be set up as it will train (freezing, BatchNorm mode); its state is restored after.
pub fn lr_find(model: &Classifier, train: Arc<ImageFolder>, pipeline: Arc<Pipeline>, cfg: &LrFindConfig) -> anyhow::Result<LrFindResult> {
    if !(cfg.start_lr > 0.0 && cfg.end_lr > cfg.start_lr && cfg.end_lr.is_finite()) {
        bail!("the lr sweep needs 0 < start lr < end lr, got {} .. {}", cfg.start_lr, cfg.end_lr);
    }
    if train.is_empty() {
        bail!("no training images to sweep the learning rate over");
    }
    let saved: std::collections::HashMap<_, _> = model.state().into_iter().map(|(k, t)| Ok((k, t.copy()?))).collect::<anyhow::Result<_>>()?;
    let result = sweep(model, train, pipeline, cfg);
    model.load_state(&saved, "the weights before the lr sweep")?;
    result
}

fn sweep(model: &Classifier, train: Arc<ImageFolder>, pipeline: Arc<Pipeline>, cfg: &LrFindConfig) -> anyhow::Result<LrFindResult> {
    let loader = Loader::new(train, pipeline, cfg.batch_size, true, cfg.seed, 1);
    model.seed_dropout(cfg.seed, 1);
    let steps = cfg.max_steps.min(loader.num_batches).max(1);
    let mut opt = Optimizer::new(cfg.optimizer.clone(), model.param_groups(cfg.start_lr, cfg.head_lr_mult));
    let (mut avg, mut best) = (0.0f64, f64::INFINITY);
    let mut points = Vec::with_capacity(steps);
    let mut diverged_at = None;
    for (i, batch) in loader.take(steps).enumerate() {
        let b = batch?;
        let lr = geometric_lr(cfg.start_lr, cfg.end_lr, i, steps);
        super::schedule::set_lrs(&mut opt, lr, cfg.head_lr_mult, 1.0);
        let x = b.images.to_device(model.device())?;
        let y = b.labels.to_device(model.device())?;
        let loss = cross_entropy(&model.forward_t(&x, true)?, &y, cfg.reduction)?;
        opt.backward_step(&loss)?;
        let l = loss.to_scalar::<f32>()? as f64;
        // Per example, whatever the reduction, so curves of different batch sizes compare.
        let loss = match cfg.reduction {
            Reduction::Sum => l / b.len as f64,
            Reduction::Mean => l,
        };
        avg = cfg.smoothing * avg + (1.0 - cfg.smoothing) * loss;
        let smoothed = avg / (1.0 - cfg.smoothing.powi(i as i32 + 1));
        points.push(LrPoint { step: i, lr, loss, smoothed });
        if let Some(f) = cfg.on_step {
            f(i + 1, steps);
        }
        if !smoothed.is_finite() || smoothed > cfg.diverge * best {
            diverged_at = Some(lr);
            break;
        }
        best = best.min(smoothed);
    }
    let lrs: Vec<f64> = points.iter().map(|p| p.lr).collect();
    let sm: Vec<f64> = points.iter().map(|p| p.smoothed).collect();
    let Some((suggestion, rule)) = suggest(&lrs, &sm) else { bail!("the lr sweep recorded no finite loss") };
    let min_loss_lr = points.iter().filter(|p| p.smoothed.is_finite()).min_by(|a, b| a.smoothed.total_cmp(&b.smoothed)).map_or(cfg.start_lr, |p| p.lr);
    Ok(LrFindResult { start_lr: cfg.start_lr, end_lr: cfg.end_lr, planned_steps: steps, points, diverged_at, min_loss_lr, suggestion, rule })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steepest_descent_on_a_hand_made_curve() {
        // Half-decade steps 1e-4 .. 1: central differences over one decade (ln 10) are
        // (s[i+1] - s[i-1]) / ln 10: i=1 -0.02, i=2 -0.10, i=3 -0.38, i=4 -0.50, i=5 -0.25,
        // i=6 +0.10. The minimum is at i=6 (0.35); the steepest descent before it is i=4: 1e-2.
        let lrs: Vec<f64> = (0..9).map(|i| 10f64.powf(-4.0 + 0.5 * i as f64)).collect();
        let sm = [1.0, 1.0, 0.98, 0.9, 0.6, 0.4, 0.35, 0.5, 2.0];
        let (lr, rule) = suggest(&lrs, &sm).unwrap();
        assert_eq!(rule, SuggestionRule::SteepestDescent);
        assert!((lr - 1e-2).abs() < 1e-12, "{lr}");
        // A steeper drop after the minimum does not count: only up to the minimum. Ten points:
        // i=1 -0.5, i=2 -0.45, i=3 -0.3, i=4 -0.15, i=5 -0.1; minimum at i=6; i=8 (-2.8) is after it.
        let lrs: Vec<f64> = (0..10).map(|i| 10f64.powf(-4.0 + 0.5 * i as f64)).collect();
        let sm2 = [1.0, 0.9, 0.5, 0.45, 0.2, 0.3, 0.1, 3.0, 9.0, 0.2];
        assert_eq!(suggest(&lrs, &sm2).unwrap(), (lrs[1], SuggestionRule::SteepestDescent));
    }

    #[test]
    fn minimum_over_ten_when_the_loss_only_rises() {
        let lrs: Vec<f64> = (0..5).map(|i| geometric_lr(1e-3, 1e1, i, 5)).collect();
        assert!((lrs[1] - 1e-2).abs() < 1e-15 && (lrs[4] - 10.0).abs() < 1e-12);
        let sm = [0.5, 0.6, 0.8, 1.5, 3.0];
        // Minimum at i=0 -> 1e-3 / 10, clamped to the start 1e-3.
        assert_eq!(suggest(&lrs, &sm).unwrap(), (1e-3, SuggestionRule::MinimumOverTen));
        let sm = [0.6, 0.5, 0.8, 1.5, 3.0];
        // Minimum at i=1; the slope at i=1 is positive (0.8 - 0.6) -> 1e-2 / 10.
        assert_eq!(suggest(&lrs, &sm).unwrap(), (1e-3, SuggestionRule::MinimumOverTen));
        assert!(suggest(&[], &[]).is_none());
    }
}

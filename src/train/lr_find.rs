//! fastai's learning-rate finder (Smith 2015, "Cyclical Learning Rates", section 3.3): train
//! for at most one pass over the data while the lr grows geometrically from `start_lr` to
//! `end_lr`, record the loss of every step, and stop once the smoothed loss exceeds
//! `diverge` times its best value.
//!
//! The suggestion ([`suggest`]) is fastai's default rule since 2.5, **valley** ([`valley`]):
//! the middle of the longest stretch over which the smoothed loss keeps falling (the longest
//! decreasing subsequence, fastai's code), computed on the points before the divergence so it
//! lies inside the swept range and below it. On the real photos (Lite0, batch 8, 45 steps) the
//! per-step loss is noisy enough that the older **steepest descent** rule ([`steepest`], the most
//! negative `d loss / d log(lr)` before the minimum) picked 3.3e-7, a wiggle in the first steps,
//! while valley picked 5.1e-5; both, and the lr of the minimum / 10, are reported. When the loss
//! never falls, the suggestion is the minimum's lr / 10, clamped to the start.
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
    /// fastai's valley: the middle of the longest decreasing stretch of the smoothed loss.
    Valley,
    /// The steepest descent of the smoothed loss before its minimum.
    SteepestDescent,
    /// The lr of the smoothed loss's minimum / 10 (the minimum came too early for a slope).
    MinimumOverTen,
}

impl SuggestionRule {
    pub fn describe(self) -> &'static str {
        match self {
            Self::Valley => "fastai's valley: the middle of the longest stretch over which the smoothed loss keeps falling",
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
    /// The other rules, for comparison: steepest descent (if the loss fell) and minimum / 10.
    pub steepest: Option<f64>,
    pub min_over_ten: f64,
}

/// The `i`-th of `n` geometrically spaced lrs from `start` to `end` (both included).
pub fn geometric_lr(start: f64, end: f64, i: usize, n: usize) -> f64 {
    if n <= 1 {
        return start;
    }
    start * (end / start).powf(i as f64 / (n - 1) as f64)
}

/// fastai's `valley` (fastai/callback/schedule.py): the longest decreasing subsequence of
/// `smoothed` and the point half way along it (`start + len/3 + len/6`, as fastai rounds).
/// `None` when the loss never falls.
pub fn valley(lrs: &[f64], smoothed: &[f64]) -> Option<f64> {
    let n = lrs.len().min(smoothed.len());
    let mut lds = vec![1usize; n];
    // fastai's start is one before the run's first point when the run starts at index 0 (-1).
    let (mut max_start, mut max_end) = (0isize, 0usize);
    for i in 1..n {
        for j in 0..i {
            if smoothed[i] < smoothed[j] && lds[i] < lds[j] + 1 {
                lds[i] = lds[j] + 1;
            }
            if lds[max_end] < lds[i] {
                max_end = i;
                max_start = max_end as isize - lds[max_end] as isize;
            }
        }
    }
    if max_end == 0 {
        return None;
    }
    let sections = (max_end as isize - max_start) as f64 / 3.0;
    let idx = max_start + sections as isize + (sections / 2.0) as isize;
    Some(lrs[idx.clamp(0, n as isize - 1) as usize])
}

/// The lr of the most negative `d smoothed / d ln(lr)` (central differences) up to the
/// minimum of `smoothed`, the first tenth skipped (the bias-corrected average is still noisy
/// there). `None` when the loss does not fall before its minimum.
pub fn steepest(lrs: &[f64], smoothed: &[f64]) -> Option<f64> {
    let n = lrs.len().min(smoothed.len());
    let min = (0..n).filter(|&i| smoothed[i].is_finite()).min_by(|&a, &b| smoothed[a].total_cmp(&smoothed[b]))?;
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
    best.map(|(i, _)| lrs[i])
}

/// The lr of the lowest smoothed loss / 10, no lower than the first lr.
pub fn min_over_ten(lrs: &[f64], smoothed: &[f64]) -> Option<f64> {
    let n = lrs.len().min(smoothed.len());
    let min = (0..n).filter(|&i| smoothed[i].is_finite()).min_by(|&a, &b| smoothed[a].total_cmp(&smoothed[b]))?;
    Some((lrs[min] / 10.0).max(lrs[0]))
}

/// The suggested lr for a smoothed loss curve over `lrs` (points before any divergence): valley,
/// else minimum / 10; and the rule used.
pub fn suggest(lrs: &[f64], smoothed: &[f64]) -> Option<(f64, SuggestionRule)> {
    if let Some(lr) = valley(lrs, smoothed) {
        return Some((lr, SuggestionRule::Valley));
    }
    min_over_ten(lrs, smoothed).map(|lr| (lr, SuggestionRule::MinimumOverTen))
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
        super::schedule::set_lrs(&mut opt, lr, 1.0);
        let (x, y) = b.on(model.device())?;
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
    // The rules look at the points before the divergence.
    let kept = &points[..points.len() - usize::from(diverged_at.is_some() && points.len() > 1)];
    let lrs: Vec<f64> = kept.iter().map(|p| p.lr).collect();
    let sm: Vec<f64> = kept.iter().map(|p| p.smoothed).collect();
    let Some((suggestion, rule)) = suggest(&lrs, &sm) else { bail!("the lr sweep recorded no finite loss") };
    let (steepest, min_over_ten) = (steepest(&lrs, &sm), min_over_ten(&lrs, &sm).unwrap_or(cfg.start_lr));
    let min_loss_lr = points.iter().filter(|p| p.smoothed.is_finite()).min_by(|a, b| a.smoothed.total_cmp(&b.smoothed)).map_or(cfg.start_lr, |p| p.lr);
    Ok(LrFindResult { start_lr: cfg.start_lr, end_lr: cfg.end_lr, planned_steps: steps, points, diverged_at, min_loss_lr, suggestion, rule, steepest, min_over_ten })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valley_on_a_hand_made_curve() {
        // Longest decreasing run lengths (lds): 1, 1, 2, 2, 3, 4, 4, 5, 5, 1. fastai keeps the
        // first index reaching the longest, 7 (0.5), and start = 7 - 5 = 2; sections = 5/3,
        // idx = 2 + 1 + 0 = 3.
        let lrs: Vec<f64> = (0..10).map(|i| 10f64.powf(-4.0 + 0.5 * i as f64)).collect();
        let sm = [1.0, 1.1, 0.9, 0.95, 0.8, 0.7, 0.75, 0.5, 0.6, 3.0];
        assert_eq!(valley(&lrs, &sm), Some(lrs[3]));
        assert_eq!(suggest(&lrs, &sm), Some((lrs[3], SuggestionRule::Valley)));
        // A steady fall over 10 points: lds = 1..10, start 9 - 10 = -1, sections 10/3,
        // idx -1 + 3 + 1 = 3 (as fastai's Python computes it).
        let fall: Vec<f64> = (0..10).map(|i| 2.0 - 0.1 * i as f64).collect();
        assert_eq!(valley(&lrs, &fall), Some(lrs[3]));
        assert_eq!(valley(&lrs, &[1.0, 1.0, 2.0]), None);
    }

    #[test]
    fn steepest_descent_on_a_hand_made_curve() {
        // Half-decade steps 1e-4 .. 1: central differences over one decade (ln 10) are
        // (s[i+1] - s[i-1]) / ln 10: i=1 -0.02, i=2 -0.10, i=3 -0.38, i=4 -0.50, i=5 -0.25,
        // i=6 +0.10. The minimum is at i=6 (0.35); the steepest descent before it is i=4: 1e-2.
        let lrs: Vec<f64> = (0..9).map(|i| 10f64.powf(-4.0 + 0.5 * i as f64)).collect();
        let sm = [1.0, 1.0, 0.98, 0.9, 0.6, 0.4, 0.35, 0.5, 2.0];
        let lr = steepest(&lrs, &sm).unwrap();
        assert!((lr - 1e-2).abs() < 1e-12, "{lr}");
        // A steeper drop after the minimum does not count: only up to the minimum. Ten points:
        // i=1 -0.5, i=2 -0.45, i=3 -0.3, i=4 -0.15, i=5 -0.1; minimum at i=6; i=8 (-2.8) is after it.
        let lrs: Vec<f64> = (0..10).map(|i| 10f64.powf(-4.0 + 0.5 * i as f64)).collect();
        let sm2 = [1.0, 0.9, 0.5, 0.45, 0.2, 0.3, 0.1, 3.0, 9.0, 0.2];
        assert_eq!(steepest(&lrs, &sm2), Some(lrs[1]));
    }

    #[test]
    fn minimum_over_ten_when_the_loss_only_rises() {
        let lrs: Vec<f64> = (0..5).map(|i| geometric_lr(1e-3, 1e1, i, 5)).collect();
        assert!((lrs[1] - 1e-2).abs() < 1e-15 && (lrs[4] - 10.0).abs() < 1e-12);
        // Never falls: no valley, no steepest descent; minimum at i=0 -> 1e-3 / 10, clamped to 1e-3.
        let sm = [0.5, 0.6, 0.8, 1.5, 3.0];
        assert_eq!(steepest(&lrs, &sm), None);
        assert_eq!(suggest(&lrs, &sm).unwrap(), (1e-3, SuggestionRule::MinimumOverTen));
        // Minimum at i=2 (not the first): 1e-1 / 10 = 1e-2.
        assert!((min_over_ten(&lrs, &[0.6, 0.5, 0.4, 1.5, 3.0]).unwrap() - 1e-2).abs() < 1e-15);
        assert!(suggest(&[], &[]).is_none());
    }
}

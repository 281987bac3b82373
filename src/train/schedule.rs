//! Learning-rate schedules (`--schedule constant|cosine|onecycle`, `--warmup-epochs N`),
//! applied **per optimizer step** within a phase: the factor that multiplies each parameter
//! group's base lr is a pure function of (step in the phase, steps in the phase), so a run
//! resumed from a checkpoint (which restores the optimizer's step count) continues on exactly
//! the same curve.
//!
//! - `constant`: 1 (after the warmup).
//! - `cosine`: `0.5 * (1 + cos(pi * t))`, `t` going from 0 at the first step after the warmup
//!   to 1 after the last step (timm/PyTorch `CosineAnnealingLR` to 0).
//! - `onecycle`: PyTorch's `OneCycleLR` (cosine annealing, `div_factor` 25,
//!   `final_div_factor` 1e4): from `lr/25` up to `lr` over the warmup (the first
//!   `--warmup-epochs`, or 30% of the steps, PyTorch's `pct_start`, when none is given), then
//!   down to `lr/25/1e4`.
//! - A warmup for `constant` and `cosine` rises linearly: step `s < W` uses `(s + 1) / W`.

use super::optim::Optimizer;

/// The shape of the learning rate over a phase.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Schedule {
    /// The same lr every step (d2l, Keras); the default.
    #[default]
    Constant,
    /// Cosine decay from lr to 0 over the phase (after the warmup).
    Cosine,
    /// PyTorch's OneCycleLR: lr/25 up to lr (warmup, default 30% of the steps), then cosine down to lr/25/1e4.
    Onecycle,
}

impl crate::util::Choice for Schedule {
    const CHOICES: &'static [crate::util::Named<Self>] = &[
        crate::util::Named { value: Schedule::Constant, name: "constant", aliases: &[], help: "The same lr every step (d2l, Keras); the default" },
        crate::util::Named { value: Schedule::Cosine, name: "cosine", aliases: &[], help: "Cosine decay from lr to 0 over the phase (after the warmup)" },
        crate::util::Named {
            value: Schedule::Onecycle,
            name: "onecycle",
            aliases: &["one-cycle"],
            help: "PyTorch's OneCycleLR: lr/25 up to lr (warmup, default 30% of the steps), then cosine down to lr/25/1e4",
        },
    ];
}

/// PyTorch `OneCycleLR` defaults.
const ONECYCLE_DIV: f64 = 25.0;
const ONECYCLE_FINAL_DIV: f64 = 1e4;
const ONECYCLE_PCT_START: f64 = 0.3;

/// `end + (start - end) / 2 * (1 + cos(pi * pct))` (PyTorch's `_annealing_cos`).
fn anneal_cos(start: f64, end: f64, pct: f64) -> f64 {
    end + (start - end) / 2.0 * (1.0 + (std::f64::consts::PI * pct).cos())
}

impl Schedule {
    /// The factor for the base lr at 0-based `step` of a phase of `total` steps, the first
    /// `warmup` of which warm up.
    pub fn factor(self, step: usize, total: usize, warmup: usize) -> f64 {
        let total = total.max(1);
        let step = step.min(total - 1);
        let warmup = warmup.min(total);
        match self {
            Schedule::Onecycle => {
                let initial = 1.0 / ONECYCLE_DIV;
                let min = initial / ONECYCLE_FINAL_DIV;
                // PyTorch: the peak is reached at step `pct_start * total - 1`.
                let up = if warmup > 0 { warmup as f64 } else { ONECYCLE_PCT_START * total as f64 };
                let peak = (up - 1.0).max(0.0);
                let s = step as f64;
                if s <= peak && peak > 0.0 {
                    anneal_cos(initial, 1.0, s / peak)
                } else {
                    let rest = (total as f64 - 1.0 - peak).max(1.0);
                    anneal_cos(1.0, min, (s - peak) / rest)
                }
            }
            _ if step < warmup => (step + 1) as f64 / warmup as f64,
            Schedule::Constant => 1.0,
            Schedule::Cosine => {
                let t = (step - warmup) as f64 / (total - warmup).max(1) as f64;
                0.5 * (1.0 + (std::f64::consts::PI * t).cos())
            }
        }
    }
}

/// A phase's schedule: its shape and warmup length, and the phase's length in steps.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepSchedule {
    pub schedule: Schedule,
    pub warmup_steps: usize,
    pub total_steps: usize,
}

impl StepSchedule {
    /// For a phase of `epochs` epochs of `steps_per_epoch` batches.
    pub fn new(schedule: Schedule, warmup_epochs: usize, epochs: usize, steps_per_epoch: usize) -> Self {
        Self { schedule, warmup_steps: warmup_epochs * steps_per_epoch, total_steps: epochs * steps_per_epoch }
    }

    pub fn factor(&self, step: usize) -> f64 {
        self.schedule.factor(step, self.total_steps, self.warmup_steps)
    }
}

/// Set the optimizer's group lrs for one step: `lr * factor` times each group's own multiplier
/// (the head's 10x of [`crate::models::Classifier::param_groups`]). Returns `lr * factor`.
pub fn set_lrs(opt: &mut Optimizer, lr: f64, factor: f64) -> f64 {
    for g in &mut opt.groups {
        g.lr = lr * g.lr_mult * factor;
    }
    lr * factor
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-12, "{a} != {b}");
    }

    #[test]
    fn constant_is_one_and_warms_up_linearly() {
        for s in 0..10 {
            close(Schedule::Constant.factor(s, 10, 0), 1.0);
        }
        // Warmup of 4 steps: 1/4, 2/4, 3/4, then 1.
        let f: Vec<f64> = (0..6).map(|s| Schedule::Constant.factor(s, 10, 4)).collect();
        for (g, w) in f.iter().zip([0.25, 0.5, 0.75, 1.0, 1.0, 1.0]) {
            close(*g, w);
        }
    }

    #[test]
    fn cosine_at_start_middle_end() {
        // 100 steps, no warmup: t = s/100.
        close(Schedule::Cosine.factor(0, 100, 0), 1.0);
        close(Schedule::Cosine.factor(50, 100, 0), 0.5);
        close(Schedule::Cosine.factor(25, 100, 0), 0.5 * (1.0 + (std::f64::consts::PI / 4.0).cos()));
        // Last step: t = 99/100, cos(0.99 pi) = -0.99950656...
        close(Schedule::Cosine.factor(99, 100, 0), 0.5 * (1.0 - 0.999_506_560_365_731_7));
        // With 10 warmup steps: step 9 is the end of the warmup (1.0), step 10 starts the cosine
        // at 1, step 55 is its middle (45 of 90).
        close(Schedule::Cosine.factor(4, 100, 10), 0.5);
        close(Schedule::Cosine.factor(9, 100, 10), 1.0);
        close(Schedule::Cosine.factor(10, 100, 10), 1.0);
        close(Schedule::Cosine.factor(55, 100, 10), 0.5);
    }

    #[test]
    fn onecycle_matches_pytorch_onecyclelr() {
        // torch.optim.lr_scheduler.OneCycleLR(max_lr=1, total_steps=100) (pct_start 0.3,
        // div 25, final_div 1e4, cos): the peak at step 29 = 0.3*100 - 1; lr 0.04 at step 0;
        // half way up (step 14.5) would be (1 + 0.04)/2; the last step is 0.04/1e4.
        close(Schedule::Onecycle.factor(0, 100, 0), 0.04);
        close(Schedule::Onecycle.factor(29, 100, 0), 1.0);
        let s14 = 0.04 + (1.0 - 0.04) / 2.0 * (1.0 - (std::f64::consts::PI * 14.0 / 29.0).cos());
        close(Schedule::Onecycle.factor(14, 100, 0), s14);
        close(Schedule::Onecycle.factor(99, 100, 0), 0.04 / 1e4);
        // Down half way: step 29 + 35 = 64 of the 70 remaining -> (1 + 4e-6)/2.
        close(Schedule::Onecycle.factor(64, 100, 0), (1.0 + 4e-6) / 2.0);
        // A warmup of 10 steps puts the peak at step 9.
        close(Schedule::Onecycle.factor(9, 100, 10), 1.0);
        assert!(Schedule::Onecycle.factor(8, 100, 10) < 1.0 && Schedule::Onecycle.factor(10, 100, 10) < 1.0);
    }

    #[test]
    fn steps_past_the_end_and_empty_phases_do_not_panic() {
        for s in [Schedule::Constant, Schedule::Cosine, Schedule::Onecycle] {
            assert!(s.factor(500, 10, 3).is_finite());
            assert!(s.factor(0, 0, 0).is_finite());
            assert!(s.factor(0, 1, 5).is_finite());
        }
    }
}

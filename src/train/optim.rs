//! Optimizers with PyTorch's update formulas and one learning rate per parameter group
//! (d2l: backbone `lr`, head `10 * lr`). State is exposed so checkpoints can resume exactly.

use crate::models::ParamGroup;
use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor};
use std::collections::HashMap;

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum OptimizerKind {
    /// `torch.optim.SGD(momentum, weight_decay)`: `d = g + wd*p; buf = m*buf + d; p -= lr*buf`.
    Sgd { momentum: f64, weight_decay: f64 },
    /// `torch.optim.AdamW` (decoupled decay); with `weight_decay = 0` it is Adam.
    AdamW { beta1: f64, beta2: f64, eps: f64, weight_decay: f64 },
}

impl OptimizerKind {
    pub fn sgd(momentum: f64, weight_decay: f64) -> Self {
        Self::Sgd { momentum, weight_decay }
    }
    pub fn adam() -> Self {
        Self::AdamW { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 }
    }
    pub fn adamw(weight_decay: f64) -> Self {
        Self::AdamW { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay }
    }
    pub fn name(&self) -> &'static str {
        match self {
            Self::Sgd { .. } => "sgd",
            Self::AdamW { weight_decay, .. } if *weight_decay == 0.0 => "adam",
            Self::AdamW { .. } => "adamw",
        }
    }
}

pub struct Optimizer {
    pub kind: OptimizerKind,
    pub groups: Vec<ParamGroup>,
    /// Per-parameter state: `momentum` (SGD) or `exp_avg`, `exp_avg_sq` (Adam), by state key.
    state: HashMap<String, Tensor>,
    pub steps: u64,
}

impl Optimizer {
    pub fn new(kind: OptimizerKind, groups: Vec<ParamGroup>) -> Self {
        Self { kind, groups, state: HashMap::new(), steps: 0 }
    }

    /// One update from the gradients of a `backward()`; parameters without a gradient are left alone.
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.steps += 1;
        let t = self.steps as i32;
        for g in &self.groups {
            for (name, var) in &g.params {
                let Some(grad) = grads.get(var.as_tensor()) else { continue };
                let p = var.as_tensor().detach();
                let new_p = match self.kind {
                    OptimizerKind::Sgd { momentum, weight_decay } => {
                        let d = if weight_decay != 0.0 { (grad + (&p * weight_decay)?)? } else { grad.clone() };
                        let d = if momentum != 0.0 {
                            let key = format!("momentum.{name}");
                            let buf = match self.state.get(&key) {
                                None => d,
                                Some(b) => ((b * momentum)? + d)?,
                            };
                            self.state.insert(key, buf.clone());
                            buf
                        } else {
                            d
                        };
                        (p - (d * g.lr)?)?
                    }
                    OptimizerKind::AdamW { beta1, beta2, eps, weight_decay } => {
                        let p = if weight_decay != 0.0 { (&p * (1.0 - g.lr * weight_decay))? } else { p };
                        let (km, kv) = (format!("exp_avg.{name}"), format!("exp_avg_sq.{name}"));
                        let m = match self.state.get(&km) {
                            None => (grad * (1.0 - beta1))?,
                            Some(m) => ((m * beta1)? + (grad * (1.0 - beta1))?)?,
                        };
                        let v = match self.state.get(&kv) {
                            None => (grad.sqr()? * (1.0 - beta2))?,
                            Some(v) => ((v * beta2)? + (grad.sqr()? * (1.0 - beta2))?)?,
                        };
                        let bc1 = 1.0 - beta1.powi(t);
                        let bc2 = 1.0 - beta2.powi(t);
                        let denom = ((v.sqrt()? / bc2.sqrt())? + eps)?;
                        let upd = ((&m / denom)? * (g.lr / bc1))?;
                        self.state.insert(km, m);
                        self.state.insert(kv, v);
                        (p - upd)?
                    }
                };
                var.set(&new_p)?;
            }
        }
        Ok(())
    }

    /// `loss.backward()` then [`Optimizer::step`].
    pub fn backward_step(&mut self, loss: &Tensor) -> Result<()> {
        let grads = loss.backward()?;
        self.step(&grads)
    }

    pub fn state(&self) -> &HashMap<String, Tensor> {
        &self.state
    }

    /// Restore state saved from [`Optimizer::state`] after `steps` updates.
    pub fn load_state(&mut self, state: HashMap<String, Tensor>, steps: u64) -> Result<()> {
        let device = self.groups.iter().flat_map(|g| g.params.first()).map(|(_, v)| v.device().clone()).next();
        self.state = match device {
            Some(d) => state.into_iter().map(|(k, t)| Ok((k, t.to_device(&d)?))).collect::<Result<_>>()?,
            None => state,
        };
        self.steps = steps;
        Ok(())
    }
}

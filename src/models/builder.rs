//! A `VarBuilder` that also knows its store, so layers can reach their `Var`s (BatchNorm
//! running statistics are updated in place) and the BatchNorm mode chosen for the run.

use super::store::{ParamStore, KAIMING_FAN_OUT};
use crate::ops::conv::Conv2d;
use candle_core::{Result, Var};
use candle_nn::VarBuilder;

/// How BatchNorm layers behave while training (evaluation always uses running statistics).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum BnMode {
    /// Normalise with batch statistics and update running mean/var (PyTorch `model.train()`).
    Train,
    /// Normalise with the running statistics and leave them untouched (Keras `training=False`).
    Frozen,
}

#[derive(Clone)]
pub struct Builder {
    pub vb: VarBuilder<'static>,
    pub store: ParamStore,
    pub bn_mode: BnMode,
}

impl Builder {
    pub fn pp<S: ToString>(&self, name: S) -> Self {
        Self { vb: self.vb.pp(name), store: self.store.clone(), bn_mode: self.bn_mode }
    }

    /// The full dotted name of `leaf` under this builder's prefix.
    pub fn path(&self, leaf: &str) -> String {
        let p = self.vb.prefix();
        if p.is_empty() {
            leaf.to_string()
        } else {
            format!("{p}.{leaf}")
        }
    }

    /// The variable behind `leaf` (created beforehand through `vb`).
    pub fn var(&self, leaf: &str) -> Result<Var> {
        let name = self.path(leaf);
        self.store
            .var(&name)
            .ok_or_else(|| candle_core::Error::Msg(format!("parameter '{name}' was not created")))
    }

    /// A bias-free `k x k` convolution, weights initialised like torchvision's ResNet
    /// (Kaiming-normal, fan-out).
    pub fn conv2d_no_bias(&self, c_in: usize, c_out: usize, k: usize, stride: usize, padding: usize) -> Result<Conv2d> {
        let w = self.vb.get_with_hints((c_out, c_in, k, k), "weight", KAIMING_FAN_OUT)?;
        Ok(Conv2d { weight: w, stride, padding })
    }
}

//! A `VarBuilder` that also knows its store, so layers can reach their `Var`s (BatchNorm
//! running statistics are updated in place), the BatchNorm mode chosen for the run and the
//! kernels its convolutions run on.

use super::store::{ParamStore, KAIMING_FAN_OUT};
use crate::ops::{Conv2d, Kernels};
use candle_core::{Result, Var};
use candle_nn::VarBuilder;

/// How BatchNorm layers behave while training (evaluation always uses running statistics).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BnMode {
    /// Normalise with batch statistics and update running mean/var (PyTorch `model.train()`).
    Train,
    /// Normalise with the running statistics and leave them untouched (Keras `training=False`).
    Frozen,
}

impl crate::util::Choice for BnMode {
    const CHOICES: &'static [crate::util::Named<Self>] = &[
        crate::util::Named { value: BnMode::Train, name: "train", aliases: &[], help: "Normalise with batch statistics and update running mean/var (PyTorch `model.train()`)" },
        crate::util::Named {
            value: BnMode::Frozen,
            name: "frozen",
            aliases: &[],
            help: "Normalise with the running statistics and leave them untouched (Keras `training=False`)",
        },
    ];
}

#[derive(Clone)]
pub struct Builder {
    pub vb: VarBuilder<'static>,
    pub store: ParamStore,
    pub bn_mode: BnMode,
    /// The kernels every convolution it builds runs on.
    pub kernels: Kernels,
}

impl Builder {
    pub fn pp<S: ToString>(&self, name: S) -> Self {
        Self { vb: self.vb.pp(name), store: self.store.clone(), bn_mode: self.bn_mode, kernels: self.kernels }
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
        Ok(Conv2d { weight: w, stride, padding, kernels: self.kernels })
    }
}

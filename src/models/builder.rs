//! A `VarBuilder` that also knows its store, so layers can reach their `Var`s (BatchNorm
//! running statistics are updated in place) and the BatchNorm mode chosen for the run.

use super::batch_norm::BnMode;
use super::store::ParamStore;
use candle_core::{Result, Var};
use super::conv::Conv2d;
use candle_nn::{Init, VarBuilder};

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

    /// A bias-free convolution, weights initialised like torchvision's ResNet.
    pub fn conv2d_no_bias(&self, c_in: usize, c_out: usize, k: usize, stride: usize, padding: usize, groups: usize, init: Init) -> Result<Conv2d> {
        let w = self.vb.get_with_hints((c_out, c_in / groups, k, k), "weight", init)?;
        Ok(Conv2d { weight: w, stride, padding, groups })
    }
}

//! BatchNorm2d that can train: batch statistics and a momentum update of the running
//! statistics (PyTorch semantics), or frozen on its running statistics (Keras `training=False`).
//! The arithmetic (fused CPU kernels, generic fallback, backward) is in `ops::batch_norm`.

use super::builder::{BnMode, Builder};
use crate::ops::batch_norm::{batch_norm_eval_act, batch_norm_train_act, Activation};
use candle_core::{Result, Tensor, Var};
use candle_nn::{Init, ModuleT};

pub struct BatchNorm {
    weight: Tensor,
    bias: Tensor,
    running_mean: Var,
    running_var: Var,
    eps: f64,
    momentum: f64,
    mode: BnMode,
}

impl BatchNorm {
    /// torchvision's defaults: eps 1e-5, momentum 0.1.
    pub fn new(c: usize, b: &Builder) -> Result<Self> {
        Self::with_eps_momentum(c, 1e-5, 0.1, b)
    }

    pub fn with_eps_momentum(c: usize, eps: f64, momentum: f64, b: &Builder) -> Result<Self> {
        let weight = b.vb.get_with_hints(c, "weight", Init::Const(1.0))?;
        let bias = b.vb.get_with_hints(c, "bias", Init::Const(0.0))?;
        b.vb.get_with_hints(c, "running_mean", Init::Const(0.0))?;
        b.vb.get_with_hints(c, "running_var", Init::Const(1.0))?;
        Ok(Self {
            weight,
            bias,
            running_mean: b.var("running_mean")?,
            running_var: b.var("running_var")?,
            eps,
            momentum,
            mode: b.bn_mode,
        })
    }

    /// `running = (1 - m) * running + m * batch`, with the unbiased batch variance (as PyTorch).
    fn update_running(&self, mean: &Tensor, var: &Tensor, n: usize) -> Result<()> {
        let m = self.momentum;
        let n = n as f64;
        let unbiased = (var * (n / (n - 1.0).max(1.0)))?;
        let rm = ((self.running_mean.as_tensor() * (1.0 - m))? + (mean * m)?)?;
        let rv = ((self.running_var.as_tensor() * (1.0 - m))? + (unbiased * m)?)?;
        self.running_mean.set(&rm.to_dtype(self.running_mean.dtype())?)?;
        self.running_var.set(&rv.to_dtype(self.running_var.dtype())?)
    }
}

impl BatchNorm {
    /// `act(BN(x) + residual)`: what follows BatchNorm in a block, fused into its pass on the
    /// CPU (`ops::batch_norm::Normalize` says what that saves).
    pub fn forward_act(&self, x: &Tensor, train: bool, residual: Option<&Tensor>, act: Activation) -> Result<Tensor> {
        if train && self.mode == BnMode::Train {
            let (b, _, h, w) = x.dims4()?;
            let (y, mean, var) = batch_norm_train_act(x, &self.weight, &self.bias, self.eps, residual, act)?;
            self.update_running(&mean, &var, b * h * w)?;
            Ok(y)
        } else {
            let (rm, rv) = (self.running_mean.as_tensor().copy()?, self.running_var.as_tensor().copy()?);
            batch_norm_eval_act(x, &self.weight, &self.bias, &rm, &rv, self.eps, residual, act)
        }
    }
}

impl ModuleT for BatchNorm {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_act(x, train, None, Activation::Identity)
    }
}

//! BatchNorm2d that can train: batch statistics and a momentum update of the running
//! statistics (PyTorch semantics), or frozen on its running statistics (Keras `training=False`).

use super::builder::Builder;
use candle_core::{Result, Tensor, Var};
use candle_nn::{Init, ModuleT};

/// How BatchNorm layers behave while training (evaluation always uses running statistics).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BnMode {
    /// Normalise with batch statistics and update running mean/var (PyTorch `model.train()`).
    Train,
    /// Normalise with the running statistics and leave them untouched (Keras `training=False`).
    Frozen,
}

impl std::str::FromStr for BnMode {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s {
            "train" => Ok(Self::Train),
            "frozen" => Ok(Self::Frozen),
            _ => anyhow::bail!("unknown BatchNorm mode '{s}' (expected 'train' or 'frozen')"),
        }
    }
}

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

    fn channel_view(t: &Tensor) -> Result<Tensor> {
        t.reshape((1, t.elem_count(), 1, 1))
    }

    fn forward_train(&self, x: &Tensor) -> Result<Tensor> {
        let (b, _, h, w) = x.dims4()?;
        let n = (b * h * w) as f64;
        let mean = x.mean_keepdim((0, 2, 3))?;
        let centered = x.broadcast_sub(&mean)?;
        let var = centered.sqr()?.mean_keepdim((0, 2, 3))?;
        let inv_std = (var.clone() + self.eps)?.sqrt()?.recip()?;
        let y = centered
            .broadcast_mul(&inv_std)?
            .broadcast_mul(&Self::channel_view(&self.weight)?)?
            .broadcast_add(&Self::channel_view(&self.bias)?)?;
        // Running variance uses the unbiased estimate, as PyTorch does.
        let m = self.momentum;
        let unbiased = (var.detach().flatten_all()? * (n / (n - 1.0).max(1.0)))?;
        let rm = ((self.running_mean.as_tensor() * (1.0 - m))? + (mean.detach().flatten_all()? * m)?)?;
        let rv = ((self.running_var.as_tensor() * (1.0 - m))? + (unbiased * m)?)?;
        self.running_mean.set(&rm.to_dtype(self.running_mean.dtype())?)?;
        self.running_var.set(&rv.to_dtype(self.running_var.dtype())?)?;
        Ok(y)
    }

    fn forward_running(&self, x: &Tensor) -> Result<Tensor> {
        // y = x * scale + shift with scale = w / sqrt(rv + eps), shift = b - rm * scale.
        let rv = self.running_var.as_tensor().detach();
        let rm = self.running_mean.as_tensor().detach();
        let scale = (&self.weight * (rv + self.eps)?.sqrt()?.recip()?)?;
        let shift = (&self.bias - (rm * &scale)?)?;
        x.broadcast_mul(&Self::channel_view(&scale)?)?.broadcast_add(&Self::channel_view(&shift)?)
    }
}

impl ModuleT for BatchNorm {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        if train && self.mode == BnMode::Train {
            self.forward_train(x)
        } else {
            self.forward_running(x)
        }
    }
}

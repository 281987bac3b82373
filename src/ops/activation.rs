//! ReLU and ReLU6 (`min(max(x, 0), 6)`, MobileNet/EfficientNet-Lite) as one clipping op.
//! Candle's `clamp` differentiates through broadcast scalars and a full reduction (1.6 s per
//! 77 MB tensor here), and its `relu` backward is four passes with three fresh buffers (zeros,
//! `ge`, cast, multiply); this op does one pass forward and one backward on the CPU, and falls
//! back to Candle's `relu` (and `relu(x) - relu(x - 6)`) elsewhere.

use super::cpu_f32;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// `max(x, 0)`; the gradient passes where the output is positive (PyTorch's rule: none at 0).
pub fn relu(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == candle_core::DType::F32 {
        x.contiguous()?.apply_op1(Clip { hi: f32::INFINITY, name: "relu" })
    } else {
        x.relu()
    }
}

/// `min(max(x, 0), 6)`; the gradient passes where `0 < x < 6` (PyTorch's hardtanh rule).
pub fn relu6(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == candle_core::DType::F32 {
        x.contiguous()?.apply_op1(Clip { hi: 6.0, name: "relu6" })
    } else {
        x.relu()? - (x - 6.0)?.relu()?
    }
}

/// `min(max(x, 0), hi)`, NaN kept (as PyTorch).
struct Clip {
    hi: f32,
    name: &'static str,
}

impl CustomOp1 for Clip {
    fn name(&self) -> &'static str {
        self.name
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = cpu_f32(s, l, self.name)?;
        let hi = self.hi;
        let y = x.par_iter().map(|&v| if v < 0.0 { 0.0 } else if v > hi { hi } else { v }).collect();
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    /// From the output alone: `0 < y < hi` exactly where `0 < x < hi`.
    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(res.detach().apply_op2_no_bwd(&grad.contiguous()?, &ClipGrad { hi: self.hi, name: self.name })?))
    }
}

/// `grad` where `0 < y < hi`, else 0; arguments (output, grad).
struct ClipGrad {
    hi: f32,
    name: &'static str,
}

impl CustomOp2 for ClipGrad {
    fn name(&self) -> &'static str {
        "clip-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (y, g) = (cpu_f32(s1, l1, self.name)?, cpu_f32(s2, l2, self.name)?);
        let hi = self.hi;
        let out = y.par_iter().zip(g).map(|(&y, &g)| if y > 0.0 && y < hi { g } else { 0.0 }).collect();
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

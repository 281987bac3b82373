//! ReLU and ReLU6 (`min(max(x, 0), 6)`, MobileNet/EfficientNet-Lite). Candle's `clamp`
//! differentiates through broadcast scalars and a full reduction (1.6 s per 77 MB tensor
//! here), and its `relu` backward is four passes with three fresh buffers (zeros, `ge`, cast,
//! multiply); these ops do one pass forward and one backward on the CPU, and fall back to
//! Candle's `relu` (and `relu(x) - relu(x - 6)`) elsewhere.

use super::cpu_f32;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// `max(x, 0)`; the gradient passes where the output is positive (PyTorch's rule: none at 0).
pub fn relu(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == candle_core::DType::F32 {
        x.contiguous()?.apply_op1(Relu)
    } else {
        x.relu()
    }
}

struct Relu;

impl CustomOp1 for Relu {
    fn name(&self) -> &'static str {
        "relu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = cpu_f32(s, l, "relu")?;
        // NaN stays NaN, as in PyTorch.
        Ok((CpuStorage::F32(x.par_iter().map(|&v| if v < 0.0 { 0.0 } else { v }).collect()), l.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(res.detach().apply_op2_no_bwd(&grad.contiguous()?, &ReluGrad)?))
    }
}

/// `grad` where the ReLU output is positive, else 0; arguments (output, grad).
struct ReluGrad;

impl CustomOp2 for ReluGrad {
    fn name(&self) -> &'static str {
        "relu-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (y, g) = (cpu_f32(s1, l1, "relu")?, cpu_f32(s2, l2, "relu")?);
        let out = y.par_iter().zip(g).map(|(&y, &g)| if y > 0.0 { g } else { 0.0 }).collect();
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

pub fn relu6(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == candle_core::DType::F32 {
        x.contiguous()?.apply_op1(Relu6)
    } else {
        x.relu()? - (x - 6.0)?.relu()?
    }
}

struct Relu6;

impl CustomOp1 for Relu6 {
    fn name(&self) -> &'static str {
        "relu6"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = cpu_f32(s, l, "relu6")?;
        Ok((CpuStorage::F32(x.iter().map(|v| v.clamp(0.0, 6.0)).collect()), l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(arg.detach().apply_op2_no_bwd(&grad.contiguous()?, &Relu6Grad)?))
    }
}

/// `grad` where `0 < x < 6`, else 0 (PyTorch's hardtanh gradient).
struct Relu6Grad;

impl CustomOp2 for Relu6Grad {
    fn name(&self) -> &'static str {
        "relu6-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, g) = (cpu_f32(s1, l1, "relu6")?, cpu_f32(s2, l2, "relu6")?);
        let out = x.iter().zip(g).map(|(&x, &g)| if x > 0.0 && x < 6.0 { g } else { 0.0 }).collect();
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

//! ReLU and ReLU6 (`min(max(x, 0), 6)`, MobileNet/EfficientNet-Lite) as one clipping op.
//! Candle's `clamp` differentiates through broadcast scalars and a full reduction (1.6 s per
//! 77 MB tensor here), and its `relu` backward is four passes with three fresh buffers (zeros,
//! `ge`, cast, multiply); this op does one pass forward and one backward on the CPU, and falls
//! back to Candle's `relu` (and `relu(x) - relu(x - 6)`) elsewhere.

use super::{cpu_f32, par_output};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};

/// Elements per parallel task: large enough that the inner loop runs vectorised, small
/// enough to spread a layer's activations over the threads.
const CHUNK: usize = 1 << 14;

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
        let y = par_output(x.len(), CHUNK, |i, ys| {
            ys.copy_from_slice(&x[i * CHUNK..i * CHUNK + ys.len()]);
            clip_in_place(ys, hi);
        });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    /// From the output alone: `0 < y < hi` exactly where `0 < x < hi`.
    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(clip_grad(&res.detach(), &grad.contiguous()?, self.hi)?))
    }
}

/// `v = min(max(v, 0), hi)` over a slice, NaN kept (also BatchNorm's fused activation).
pub(crate) fn clip_in_place(ys: &mut [f32], hi: f32) {
    for o in ys.iter_mut() {
        let v = *o;
        // Two selects, not an if/else-if chain: the chain compiled to scalar compares and
        // branches (ReLU was 14% of a ResNet-18 step); selects vectorise.
        let lo = if v < 0.0 { 0.0 } else { v };
        *o = if lo > hi { hi } else { lo };
    }
}

/// The gradient of `min(max(x, 0), hi)` from its contiguous output `y`: `grad` where `0 < y < hi`.
pub(crate) fn clip_grad(y: &Tensor, grad: &Tensor, hi: f32) -> Result<Tensor> {
    y.apply_op2_no_bwd(grad, &ClipGrad { hi })
}

/// `grad` where `0 < y < hi`, else 0; arguments (output, grad).
struct ClipGrad {
    hi: f32,
}

impl CustomOp2 for ClipGrad {
    fn name(&self) -> &'static str {
        "clip-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (y, g) = (cpu_f32(s1, l1, "clip-grad")?, cpu_f32(s2, l2, "clip-grad")?);
        let hi = self.hi;
        let out = par_output(y.len(), CHUNK, |i, os| {
            let (ys, gs) = (&y[i * CHUNK..i * CHUNK + os.len()], &g[i * CHUNK..i * CHUNK + os.len()]);
            for ((o, &y), &g) in os.iter_mut().zip(ys).zip(gs) {
                let pass = (y > 0.0) & (y < hi);
                *o = if pass { g } else { 0.0 };
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

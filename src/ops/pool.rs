//! Max-pooling with a backward pass for any kernel/stride (Candle's own has none when
//! kernel != stride, which ResNet's 3x3/s2 stem pool needs).
//!
//! CPU f32: a direct kernel, forward and backward (parallel over the B*C planes). The generic
//! path (other devices and dtypes) is built from differentiable ops: the elementwise maximum
//! of the k*k strided views of the padded input, whose 9 `index_select`s and their
//! `index_add` backward cost ~0.5 s of a 5 s ResNet-18 training step (batch 32, 224 px).

use super::{cpu_f32, par_output};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Device, Layout, Result, Shape, Tensor};

fn strided_indices(start: usize, stride: usize, count: usize, dev: &Device) -> Result<Tensor> {
    let idx: Vec<u32> = (0..count).map(|i| (start + i * stride) as u32).collect();
    Tensor::from_vec(idx, count, dev)
}

/// `[B, C, H, W] -> [B, C, Ho, Wo]`, like `torch.nn.MaxPool2d(k, stride, padding)`; the
/// gradient goes to the first maximum of each window (row-major), as in PyTorch.
pub fn max_pool2d(x: &Tensor, k: usize, stride: usize, padding: usize) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    if padding * 2 > k {
        candle_core::bail!("max_pool2d: padding {padding} is more than half the kernel {k}");
    }
    if h + 2 * padding < k || w + 2 * padding < k || stride == 0 {
        candle_core::bail!("max_pool2d: input {h}x{w} is smaller than the kernel {k}");
    }
    if x.device().is_cpu() && x.dtype() == candle_core::DType::F32 {
        return x.contiguous()?.apply_op1(MaxPool { k, stride, padding });
    }
    max_pool2d_generic(x, k, stride, padding)
}

/// The device-generic max-pool from tensor ops (autograd differentiates it).
pub fn max_pool2d_generic(x: &Tensor, k: usize, stride: usize, padding: usize) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    if padding * 2 > k {
        candle_core::bail!("max_pool2d: padding {padding} is more than half the kernel {k}");
    }
    // Replicate padding never changes a window's maximum: the copied edge value is itself in the window.
    let x = x.pad_with_same(2, padding, padding)?.pad_with_same(3, padding, padding)?;
    let (hp, wp) = (h + 2 * padding, w + 2 * padding);
    if hp < k || wp < k {
        candle_core::bail!("max_pool2d: input {h}x{w} is smaller than the kernel {k}");
    }
    let (ho, wo) = ((hp - k) / stride + 1, (wp - k) / stride + 1);
    let mut out: Option<Tensor> = None;
    for dy in 0..k {
        let rows = x.index_select(&strided_indices(dy, stride, ho, x.device())?, 2)?;
        for dx in 0..k {
            let view = rows.index_select(&strided_indices(dx, stride, wo, x.device())?, 3)?;
            out = Some(match out {
                None => view,
                Some(m) => m.maximum(&view)?,
            });
        }
    }
    out.ok_or_else(|| candle_core::Error::Msg("max_pool2d: empty kernel".into()))
}

/// Global average pooling `[B, C, H, W] -> [B, C]`.
pub fn global_avg_pool(x: &Tensor) -> Result<Tensor> {
    x.mean((2, 3))
}

#[derive(Clone, Copy)]
struct MaxPool {
    k: usize,
    stride: usize,
    padding: usize,
}

impl MaxPool {
    fn out_size(&self, h: usize, w: usize) -> (usize, usize) {
        ((h + 2 * self.padding - self.k) / self.stride + 1, (w + 2 * self.padding - self.k) / self.stride + 1)
    }

    /// Rows (or columns) of the input inside window `o`: `o * stride - pad ..+ k`, clipped.
    #[inline]
    fn span(&self, o: usize, len: usize) -> std::ops::Range<usize> {
        let start = (o * self.stride) as isize - self.padding as isize;
        start.max(0) as usize..((start + self.k as isize).max(0) as usize).min(len)
    }

    /// Index in the plane of the first maximum of window (oy, ox) (NaN wins, as in PyTorch),
    /// and its value.
    #[inline]
    fn argmax(&self, plane: &[f32], w: usize, rows: std::ops::Range<usize>, cols: std::ops::Range<usize>) -> (usize, f32) {
        let (mut best, mut idx) = (f32::NEG_INFINITY, rows.start * w + cols.start);
        for iy in rows {
            for ix in cols.clone() {
                let v = plane[iy * w + ix];
                if v > best || v.is_nan() {
                    best = v;
                    idx = iy * w + ix;
                    if v.is_nan() {
                        return (idx, v);
                    }
                }
            }
        }
        (idx, best)
    }
}

impl CustomOp1 for MaxPool {
    fn name(&self) -> &'static str {
        "max-pool2d"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = cpu_f32(s, l, "max_pool2d")?;
        let (b, c, h, w) = l.shape().dims4()?;
        let (ho, wo) = self.out_size(h, w);
        let y = par_output(b * c * ho * wo, ho * wo, |i, yp| {
            let xp = &x[i * h * w..(i + 1) * h * w];
            for oy in 0..ho {
                let rows = self.span(oy, h);
                for ox in 0..wo {
                    yp[oy * wo + ox] = self.argmax(xp, w, rows.clone(), self.span(ox, w)).1;
                }
            }
        });
        Ok((CpuStorage::F32(y), Shape::from((b, c, ho, wo))))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(x.detach().apply_op2_no_bwd(&grad.contiguous()?, &MaxPoolGrad(*self))?))
    }
}

/// dx: each output gradient added to the first maximum of its window; arguments (x, grad).
/// Windows overlap when stride < k: one plane per task, outputs in order, so deterministic.
struct MaxPoolGrad(MaxPool);

impl CustomOp2 for MaxPoolGrad {
    fn name(&self) -> &'static str {
        "max-pool2d-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, g) = (cpu_f32(s1, l1, "max_pool2d")?, cpu_f32(s2, l2, "max_pool2d")?);
        let p = &self.0;
        let (_, _, h, w) = l1.shape().dims4()?;
        let (ho, wo) = p.out_size(h, w);
        let dx = par_output(x.len(), h * w, |i, dp| {
            let (xp, gp) = (&x[i * h * w..(i + 1) * h * w], &g[i * ho * wo..(i + 1) * ho * wo]);
            for oy in 0..ho {
                let rows = p.span(oy, h);
                for ox in 0..wo {
                    dp[p.argmax(xp, w, rows.clone(), p.span(ox, w)).0] += gp[oy * wo + ox];
                }
            }
        });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

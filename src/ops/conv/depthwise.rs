//! Depthwise convolution (`groups == channels`), the core of EfficientNet's blocks.
//!
//! Candle runs a grouped convolution as one convolution per group (up to 1152 per layer,
//! forward and backward). Here the CPU path is a direct kernel with its own backward
//! (parallel over batch x channel planes); other devices use a formulation from shifted
//! slices times per-channel weights, which autograd differentiates.

use crate::ops::{cpu_f32, par_output, Kernels};
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Geometry of one depthwise convolution: stride and (possibly asymmetric) zero padding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DwParams {
    pub stride: usize,
    pub pad_top: usize,
    pub pad_bottom: usize,
    pub pad_left: usize,
    pub pad_right: usize,
}

impl DwParams {
    fn out_size(&self, h: usize, w: usize, k: usize) -> (usize, usize) {
        ((h + self.pad_top + self.pad_bottom - k) / self.stride + 1, (w + self.pad_left + self.pad_right - k) / self.stride + 1)
    }
}

/// `x [B, C, H, W]`, `w [C, 1, k, k]` -> `[B, C, Ho, Wo]`, on the default kernels.
pub fn depthwise_conv2d(x: &Tensor, w: &Tensor, p: DwParams) -> Result<Tensor> {
    depthwise_conv2d_with(x, w, p, Kernels::default())
}

/// [`depthwise_conv2d`] on the given kernels (`candle_depthwise`: Candle's own grouped conv).
pub fn depthwise_conv2d_with(x: &Tensor, w: &Tensor, p: DwParams, kernels: Kernels) -> Result<Tensor> {
    let (_, c, _, _) = x.dims4()?;
    let (cw, one, kh, kw) = w.dims4()?;
    if cw != c || one != 1 || kh != kw {
        candle_core::bail!("depthwise conv: kernel {:?} does not fit {c} channels", w.dims());
    }
    if kernels.candle_depthwise {
        let x = x.pad_with_zeros(2, p.pad_top, p.pad_bottom)?.pad_with_zeros(3, p.pad_left, p.pad_right)?;
        return x.conv2d(w, 0, p.stride, 1, c);
    }
    if x.device().is_cpu() && x.dtype() == candle_core::DType::F32 {
        return x.contiguous()?.apply_op2(&w.contiguous()?, DwConv { p, k: kh });
    }
    shifted_slices(x, w, p, kh)
}

/// Sum over kernel offsets of strided views of the padded input times one weight per channel.
fn shifted_slices(x: &Tensor, w: &Tensor, p: DwParams, k: usize) -> Result<Tensor> {
    let (b, c, h, wd) = x.dims4()?;
    let (ho, wo) = p.out_size(h, wd, k);
    let s = p.stride;
    // Pad so that every view `[dy + s*i]` fits, then take every s-th row/column by reshaping.
    let (hp, wp) = ((ho - 1) * s + k + s, (wo - 1) * s + k + s);
    let xp = x
        .pad_with_zeros(2, p.pad_top, hp - h - p.pad_top)?
        .pad_with_zeros(3, p.pad_left, wp - wd - p.pad_left)?;
    let mut acc: Option<Tensor> = None;
    for dy in 0..k {
        let rows = xp.narrow(2, dy, ho * s)?.reshape((b, c, ho, s, wp))?.narrow(3, 0, 1)?.squeeze(3)?;
        for dx in 0..k {
            let view = rows.narrow(3, dx, wo * s)?.reshape((b, c, ho, wo, s))?.narrow(4, 0, 1)?.squeeze(4)?;
            let wk = w.narrow(2, dy, 1)?.narrow(3, dx, 1)?.reshape((1, c, 1, 1))?;
            let term = view.broadcast_mul(&wk)?;
            acc = Some(match acc {
                None => term,
                Some(a) => (a + term)?,
            });
        }
    }
    acc.ok_or_else(|| candle_core::Error::Msg("depthwise conv: empty kernel".into()))
}

struct DwConv {
    p: DwParams,
    k: usize,
}

struct Geometry {
    planes: usize,
    c: usize,
    h: usize,
    w: usize,
    ho: usize,
    wo: usize,
}

impl DwConv {
    fn geometry(&self, x: &Layout) -> Result<Geometry> {
        let (b, c, h, w) = x.shape().dims4()?;
        let (ho, wo) = self.p.out_size(h, w, self.k);
        Ok(Geometry { planes: b * c, c, h, w, ho, wo })
    }

    /// For output row/col `o` and kernel offset `d`, the input index, if inside the image.
    #[inline]
    fn src(o: usize, d: usize, stride: usize, pad: usize, len: usize) -> Option<usize> {
        let i = (o * stride + d) as isize - pad as isize;
        (i >= 0 && (i as usize) < len).then_some(i as usize)
    }

    /// The outputs `o` (of `out_len`) whose input `o * stride + d - pad` lies in `0..in_len`,
    /// so the inner loops need no bounds checks.
    #[inline]
    fn valid(d: usize, stride: usize, pad: usize, in_len: usize, out_len: usize) -> std::ops::Range<usize> {
        let start = if pad > d { (pad - d).div_ceil(stride) } else { 0 };
        let end = (in_len + pad).saturating_sub(d).div_ceil(stride).min(out_len);
        start..end.max(start)
    }
}

impl CustomOp2 for DwConv {
    fn name(&self) -> &'static str {
        "depthwise-conv2d"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, w) = (cpu_f32(s1, l1, "depthwise conv")?, cpu_f32(s2, l2, "depthwise conv")?);
        let g = self.geometry(l1)?;
        let (k, p) = (self.k, self.p);
        let out = par_output(g.planes * g.ho * g.wo, g.ho * g.wo, |plane, o| {
            let xi = &x[plane * g.h * g.w..(plane + 1) * g.h * g.w];
            let wk = &w[(plane % g.c) * k * k..(plane % g.c + 1) * k * k];
            for ky in 0..k {
                for oy in 0..g.ho {
                    let Some(iy) = Self::src(oy, ky, p.stride, p.pad_top, g.h) else { continue };
                    let row = &xi[iy * g.w..(iy + 1) * g.w];
                    let orow = &mut o[oy * g.wo..(oy + 1) * g.wo];
                    for kx in 0..k {
                        let wv = wk[ky * k + kx];
                        let r = Self::valid(kx, p.stride, p.pad_left, g.w, g.wo);
                        if r.is_empty() {
                            continue;
                        }
                        // Zipped slices, so the stride-1 loop vectorises (indexed, it kept its
                        // bounds checks); same arithmetic, same order.
                        let src = &row[r.start * p.stride + kx - p.pad_left..];
                        if p.stride == 1 {
                            for (o, xv) in orow[r].iter_mut().zip(src) {
                                *o += wv * xv;
                            }
                        } else {
                            for (o, xv) in orow[r].iter_mut().zip(src.iter().step_by(p.stride)) {
                                *o += wv * xv;
                            }
                        }
                    }
                }
            }
        });
        let (b, c, _, _) = l1.shape().dims4()?;
        Ok((CpuStorage::F32(out), Shape::from((b, c, g.ho, g.wo))))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let op = || DwConv { p: self.p, k: self.k };
        // No input gradient where the input needs none (the output of a frozen block).
        let gx = if x.track_op() {
            Some(grad.apply_op2_no_bwd(&w.detach(), &DwGradInput { op: op(), x_dims: x.dims4()? })?)
        } else {
            None
        };
        let gw = if w.track_op() { Some(x.detach().apply_op2_no_bwd(&grad, &DwGradWeight { op: op() })?) } else { None };
        Ok((gx, gw))
    }
}

/// d(loss)/d(x): scatter each output gradient back through the kernel.
struct DwGradInput {
    op: DwConv,
    x_dims: (usize, usize, usize, usize),
}

impl CustomOp2 for DwGradInput {
    fn name(&self) -> &'static str {
        "depthwise-conv2d-grad-input"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (gy, w) = (cpu_f32(s1, l1, "depthwise conv")?, cpu_f32(s2, l2, "depthwise conv")?);
        let (b, c, h, wd) = self.x_dims;
        let (k, p) = (self.op.k, self.op.p);
        let (ho, wo) = p.out_size(h, wd, k);
        let gx = par_output(b * c * h * wd, h * wd, |plane, gxi| {
            let g = &gy[plane * ho * wo..(plane + 1) * ho * wo];
            let wk = &w[(plane % c) * k * k..(plane % c + 1) * k * k];
            for ky in 0..k {
                for oy in 0..ho {
                    let Some(iy) = DwConv::src(oy, ky, p.stride, p.pad_top, h) else { continue };
                    let grow = &g[oy * wo..(oy + 1) * wo];
                    let xrow = &mut gxi[iy * wd..(iy + 1) * wd];
                    for kx in 0..k {
                        let wv = wk[ky * k + kx];
                        let r = DwConv::valid(kx, p.stride, p.pad_left, wd, wo);
                        if r.is_empty() {
                            continue;
                        }
                        let dst = &mut xrow[r.start * p.stride + kx - p.pad_left..];
                        if p.stride == 1 {
                            for (d, gv) in dst.iter_mut().zip(&grow[r]) {
                                *d += wv * gv;
                            }
                        } else {
                            for (d, gv) in dst.iter_mut().step_by(p.stride).zip(&grow[r]) {
                                *d += wv * gv;
                            }
                        }
                    }
                }
            }
        });
        Ok((CpuStorage::F32(gx), Shape::from(self.x_dims)))
    }
}

/// d(loss)/d(w): per channel, the correlation of input and output gradient over the batch.
struct DwGradWeight {
    op: DwConv,
}

impl CustomOp2 for DwGradWeight {
    fn name(&self) -> &'static str {
        "depthwise-conv2d-grad-weight"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, gy) = (cpu_f32(s1, l1, "depthwise conv")?, cpu_f32(s2, l2, "depthwise conv")?);
        let g = self.op.geometry(l1)?;
        let (k, p) = (self.op.k, self.op.p);
        let batch = g.planes / g.c;
        let mut gw = vec![0f32; g.c * k * k];
        gw.par_chunks_mut(k * k).enumerate().for_each(|(ch, gwc)| {
            for bi in 0..batch {
                let plane = bi * g.c + ch;
                let xi = &x[plane * g.h * g.w..(plane + 1) * g.h * g.w];
                let go = &gy[plane * g.ho * g.wo..(plane + 1) * g.ho * g.wo];
                for ky in 0..k {
                    for oy in 0..g.ho {
                        let Some(iy) = DwConv::src(oy, ky, p.stride, p.pad_top, g.h) else { continue };
                        let row = &xi[iy * g.w..(iy + 1) * g.w];
                        let grow = &go[oy * g.wo..(oy + 1) * g.wo];
                        for kx in 0..k {
                            let mut acc = 0f32;
                            for ox in DwConv::valid(kx, p.stride, p.pad_left, g.w, g.wo) {
                                acc += grow[ox] * row[ox * p.stride + kx - p.pad_left];
                            }
                            gwc[ky * k + kx] += acc;
                        }
                    }
                }
            }
        });
        Ok((CpuStorage::F32(gw), Shape::from((g.c, 1, k, k))))
    }
}

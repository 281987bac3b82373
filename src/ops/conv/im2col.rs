//! CPU convolution as im2col + GEMM (f32), forward and backward, for `ops::conv`.
//!
//! Per image `b`, with `K = C*kh*kw` and `N = Ho*Wo`:
//! - forward: `cols_b [K, N] = im2col(x_b)`, `y_b [Co, N] = W [Co, K] · cols_b`, written
//!   straight into the NCHW output (its `[Co, Ho*Wo]` block is exactly `y_b`);
//! - `dW = Σ_b dY_b [Co, N] · cols_b^T [N, K]` (cols recomputed, see `ConvGradWeight`);
//! - `dX_b = col2im(W^T [K, Co] · dY_b [Co, N])`.
//!
//! Transposed operands are passed to `gemm` as strides, never copied. A pointwise convolution
//! (1x1, stride 1, no padding) uses `x_b` itself as `cols_b` and writes `W^T · dY_b` straight
//! into `dX_b`.
//!
//! Determinism: every output element is produced by one GEMM whose k-reduction runs in a fixed
//! order whatever the thread count (gemm 0.19 parallelises over output blocks only; checked by
//! `tests/ops/conv.rs`), and the per-image kernel gradients are summed in fixed groups of
//! images (`parallel::sum_in_parts`), the groups in order, so the result never depends on scheduling.

use super::parallel::{for_each_item, gemm_par, per_item_parallel, sum_in_parts, GROUP_COLS};
use super::winograd;
use crate::ops::gemm::{sgemm, Mat, Precision};
use crate::ops::{cpu_f32, par_zeros, Kernels};
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};

/// Stride and symmetric zero padding of a convolution (no dilation, one group), and the kernels
/// it runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvParams {
    pub stride: usize,
    pub padding: usize,
    pub kernels: Kernels,
}

/// Sizes of one convolution.
#[derive(Clone, Copy, Debug)]
struct Geom {
    b: usize,
    c: usize,
    h: usize,
    w: usize,
    co: usize,
    kh: usize,
    kw: usize,
    ho: usize,
    wo: usize,
    stride: usize,
    pad: usize,
    precision: Precision,
    winograd: bool,
}

impl Geom {
    fn new(x: (usize, usize, usize, usize), w: (usize, usize, usize, usize), p: ConvParams) -> Result<Self> {
        let (b, c, h, wd) = x;
        let (co, ci, kh, kw) = w;
        if ci != c {
            candle_core::bail!("conv2d: input has {c} channels, kernel expects {ci}");
        }
        if p.stride == 0 || h + 2 * p.padding < kh || wd + 2 * p.padding < kw {
            candle_core::bail!("conv2d: kernel {kh}x{kw} (padding {}) does not fit a {h}x{wd} input", p.padding);
        }
        let ho = (h + 2 * p.padding - kh) / p.stride + 1;
        let wo = (wd + 2 * p.padding - kw) / p.stride + 1;
        Ok(Self { b, c, h, w: wd, co, kh, kw, ho, wo, stride: p.stride, pad: p.padding, precision: p.kernels.precision, winograd: p.kernels.winograd })
    }

    /// Rows of the column matrix (`C*kh*kw`).
    fn k(&self) -> usize {
        self.c * self.kh * self.kw
    }

    /// Columns of the column matrix, output pixels per channel (`Ho*Wo`).
    fn n(&self) -> usize {
        self.ho * self.wo
    }

    fn in_len(&self) -> usize {
        self.c * self.h * self.w
    }

    /// A pointwise convolution: the column matrix is the image itself.
    fn pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.pad == 0
    }

    /// Whether the forward, input-gradient and kernel-gradient kernels take the Winograd path (`winograd.rs`):
    /// 3x3, stride 1, padding 1, at least 8x8. Measured (`examples/conv_layers`, batch 32,
    /// 2 threads): on ResNet-18's 56, 28 and 14 px layers 1.3-1.7x faster than im2col, on its
    /// 7 px layers slower (40-48 ms against 39-40: 2x2 tiles cover 8x8 there, and the GEMMs'
    /// depth is all 512 channels).
    fn winograd(&self) -> bool {
        (self.kh, self.kw, self.stride, self.pad) == (3, 3, 1, 1) && self.h.min(self.w) >= 8 && self.winograd
    }

    /// The Winograd kernel's sizes for a convolution from `c` to `co` channels at this size.
    fn winograd_shape(&self, c: usize, co: usize) -> winograd::Shape {
        winograd::Shape { b: self.b, c, h: self.h, w: self.w, co, precision: self.precision }
    }

    /// Outputs `o` of `out_len` whose input `o * stride + d - pad` lies in `0..in_len`.
    #[inline]
    fn valid(&self, d: usize, in_len: usize, out_len: usize) -> std::ops::Range<usize> {
        let (s, p) = (self.stride, self.pad);
        let start = if p > d { (p - d).div_ceil(s) } else { 0 };
        let end = (in_len + p).saturating_sub(d).div_ceil(s).min(out_len);
        start.min(end)..end
    }

    /// Input row of output row `oy` at kernel row `ky`, if inside the image.
    #[inline]
    fn src_row(&self, oy: usize, ky: usize) -> Option<usize> {
        let i = (oy * self.stride + ky) as isize - self.pad as isize;
        (i >= 0 && (i as usize) < self.h).then_some(i as usize)
    }

    /// `cols [K, N]` of one image `x [C, H, W]` (every element written, padding as zeros), as
    /// the columns `off..off + N` of a `[K, ld]` row-major matrix (a group of images side by side).
    fn im2col(&self, x: &[f32], cols: &mut [f32], ld: usize, off: usize) {
        let n = self.n();
        let (s, p) = (self.stride, self.pad);
        for c in 0..self.c {
            let xc = &x[c * self.h * self.w..(c + 1) * self.h * self.w];
            for ky in 0..self.kh {
                for kx in 0..self.kw {
                    let row = (c * self.kh + ky) * self.kw + kx;
                    let out = &mut cols[row * ld + off..row * ld + off + n];
                    let r = self.valid(kx, self.w, self.wo);
                    for oy in 0..self.ho {
                        let orow = &mut out[oy * self.wo..(oy + 1) * self.wo];
                        let Some(iy) = self.src_row(oy, ky) else {
                            orow.fill(0.0);
                            continue;
                        };
                        let xrow = &xc[iy * self.w..(iy + 1) * self.w];
                        orow[..r.start].fill(0.0);
                        orow[r.end..].fill(0.0);
                        if s == 1 {
                            orow[r.clone()].copy_from_slice(&xrow[r.start + kx - p..r.end + kx - p]);
                        } else if s == 2 && !r.is_empty() {
                            // Pairs, first of each: vectorised as a de-interleave (an indexed
                            // loop is a scalar gather; the ResNet stem's im2col is all stride 2).
                            let src = &xrow[r.start * 2 + kx - p..];
                            for (o, pair) in orow[r.clone()].iter_mut().zip(src.chunks(2)) {
                                *o = pair[0];
                            }
                        } else {
                            for ox in r.clone() {
                                orow[ox] = xrow[ox * s + kx - p];
                            }
                        }
                    }
                }
            }
        }
    }

    /// `dx [C, H, W] += col2im(cols [K, N])`, in a fixed order; `cols` are the columns
    /// `off..off + N` of a `[K, ld]` matrix.
    fn col2im(&self, cols: &[f32], dx: &mut [f32], ld: usize, off: usize) {
        let n = self.n();
        let (s, p) = (self.stride, self.pad);
        for c in 0..self.c {
            let dc = &mut dx[c * self.h * self.w..(c + 1) * self.h * self.w];
            for ky in 0..self.kh {
                for kx in 0..self.kw {
                    let row = (c * self.kh + ky) * self.kw + kx;
                    let src = &cols[row * ld + off..row * ld + off + n];
                    let r = self.valid(kx, self.w, self.wo);
                    for oy in 0..self.ho {
                        let Some(iy) = self.src_row(oy, ky) else { continue };
                        let srow = &src[oy * self.wo..(oy + 1) * self.wo];
                        let drow = &mut dc[iy * self.w..(iy + 1) * self.w];
                        if s == 1 {
                            for (d, v) in drow[r.start + kx - p..r.end + kx - p].iter_mut().zip(&srow[r.clone()]) {
                                *d += v;
                            }
                        } else {
                            for ox in r.clone() {
                                drow[ox * s + kx - p] += srow[ox];
                            }
                        }
                    }
                }
            }
        }
    }
}

impl Geom {
    /// Images per GEMM.
    fn group(&self) -> usize {
        GROUP_COLS.div_ceil(self.n().max(1)).clamp(1, (self.b / 4).max(1))
    }

    /// Scratch floats for a group of `nb` images: the column matrix (none for a pointwise
    /// conv of one image) and, for several images, a `[Co, nb*N]` output/gradient block.
    fn scratch(&self, nb: usize) -> usize {
        match nb {
            1 if self.pointwise() => 0,
            1 => self.k() * self.n(),
            _ => (self.k() + self.co) * nb * self.n(),
        }
    }
}

/// Copy the `[rows, n]` matrix `src` into columns `off..off + n` of the `[rows, ld]` matrix `dst`.
fn put_block(src: &[f32], dst: &mut [f32], rows: usize, n: usize, ld: usize, off: usize) {
    for r in 0..rows {
        dst[r * ld + off..r * ld + off + n].copy_from_slice(&src[r * n..(r + 1) * n]);
    }
}

/// Copy columns `off..off + n` of the `[rows, ld]` matrix `src` into the `[rows, n]` matrix `dst`.
fn take_block(src: &[f32], dst: &mut [f32], rows: usize, n: usize, ld: usize, off: usize) {
    for r in 0..rows {
        dst[r * n..(r + 1) * n].copy_from_slice(&src[r * ld + off..r * ld + off + n]);
    }
}

/// Split a group's scratch into its column matrix `[K, m*N]` and its `[Co, m*N]` block.
fn split_group<'a>(g: &Geom, m: usize, s: &'a mut [f32]) -> (&'a mut [f32], &'a mut [f32]) {
    let l = m * g.n();
    let (cols, rest) = s.split_at_mut(g.k() * l);
    (cols, &mut rest[..g.co * l])
}

/// Fill a group's column matrix `[K, m*N]` from its `m` images `xg`.
fn group_cols(g: &Geom, xg: &[f32], m: usize, cols: &mut [f32]) {
    let (n, l) = (g.n(), m * g.n());
    for (j, xb) in xg.chunks(g.in_len()).take(m).enumerate() {
        if g.pointwise() {
            put_block(xb, cols, g.c, n, l, j * n);
        } else {
            g.im2col(xb, cols, l, j * n);
        }
    }
}

/// Forward: arguments (x `[B, C, H, W]`, w `[Co, C, kh, kw]`), both contiguous f32.
pub struct Conv {
    pub p: ConvParams,
}

impl CustomOp2 for Conv {
    fn name(&self) -> &'static str {
        "conv2d-gemm"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, w) = (cpu_f32(s1, l1, "conv2d")?, cpu_f32(s2, l2, "conv2d")?);
        let g = Geom::new(l1.shape().dims4()?, l2.shape().dims4()?, self.p)?;
        if g.winograd() {
            let y = winograd::conv3x3(g.winograd_shape(g.c, g.co), x, &winograd::Direct(w, g.c));
            return Ok((CpuStorage::F32(y), Shape::from((g.b, g.co, g.ho, g.wo))));
        }
        let (k, n, nb) = (g.k(), g.n(), g.group());
        let mut y = par_zeros(g.b * g.co * n);
        let items: Vec<(&[f32], &mut [f32])> = x.chunks(nb * g.in_len()).zip(y.chunks_mut(nb * g.co * n)).collect();
        let per_item = per_item_parallel(items.len());
        let par = gemm_par(per_item);
        for_each_item(items, per_item, g.scratch(nb), |_, (xg, yg), s| {
            let m = yg.len() / (g.co * n);
            if nb == 1 {
                let cols: &[f32] = if g.pointwise() {
                    xg
                } else {
                    g.im2col(xg, s, n, 0);
                    s
                };
                sgemm(g.precision, g.co, n, k, yg, false, Mat::rows(w, k), Mat::rows(cols, n), par);
                return;
            }
            let l = m * n;
            let (cols, out) = split_group(&g, m, s);
            group_cols(&g, xg, m, cols);
            sgemm(g.precision, g.co, l, k, out, false, Mat::rows(w, k), Mat::rows(cols, l), par);
            for (j, yb) in yg.chunks_mut(g.co * n).enumerate() {
                take_block(out, yb, g.co, n, l, j * n);
            }
        });
        Ok((CpuStorage::F32(y), Shape::from((g.b, g.co, g.ho, g.wo))))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        // No input gradient where the input needs none (the image, or a frozen block's output).
        let gx = if x.track_op() {
            Some(grad.apply_op2_no_bwd(&w.detach(), &ConvGradInput { p: self.p, x_dims: x.dims4()? })?)
        } else {
            None
        };
        let gw = if w.track_op() { Some(x.detach().apply_op2_no_bwd(&grad, &ConvGradWeight { p: self.p, w_dims: w.dims4()? })?) } else { None };
        Ok((gx, gw))
    }
}

/// d(loss)/d(x) = col2im(W^T · dY_b) per image; arguments (dY, w).
pub struct ConvGradInput {
    pub p: ConvParams,
    pub x_dims: (usize, usize, usize, usize),
}

impl CustomOp2 for ConvGradInput {
    fn name(&self) -> &'static str {
        "conv2d-gemm-grad-input"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (gy, w) = (cpu_f32(s1, l1, "conv2d")?, cpu_f32(s2, l2, "conv2d")?);
        let g = Geom::new(self.x_dims, l2.shape().dims4()?, self.p)?;
        if l1.shape().dims4()? != (g.b, g.co, g.ho, g.wo) {
            candle_core::bail!("conv2d backward: gradient shape {:?} does not match the output", l1.shape());
        }
        if g.winograd() {
            // The input gradient of a 3x3 stride-1 padding-1 convolution is one too.
            let dx = winograd::conv3x3(g.winograd_shape(g.co, g.c), gy, &winograd::FlippedTransposed(w, g.c));
            return Ok((CpuStorage::F32(dx), Shape::from(self.x_dims)));
        }
        let (k, n, nb) = (g.k(), g.n(), g.group());
        let mut dx = par_zeros(g.b * g.in_len());
        let items: Vec<(&[f32], &mut [f32])> = gy.chunks(nb * g.co * n).zip(dx.chunks_mut(nb * g.in_len())).collect();
        let per_item = per_item_parallel(items.len());
        let par = gemm_par(per_item);
        for_each_item(items, per_item, g.scratch(nb), |_, (gyg, dxg), s| {
            let m = gyg.len() / (g.co * n);
            if nb == 1 {
                if g.pointwise() {
                    sgemm(g.precision, k, n, g.co, dxg, false, Mat::transposed(w, k), Mat::rows(gyg, n), par);
                } else {
                    sgemm(g.precision, k, n, g.co, s, false, Mat::transposed(w, k), Mat::rows(gyg, n), par);
                    g.col2im(s, dxg, n, 0);
                }
                return;
            }
            let l = m * n;
            let (cols, dy) = split_group(&g, m, s);
            for (j, gyb) in gyg.chunks(g.co * n).enumerate() {
                put_block(gyb, dy, g.co, n, l, j * n);
            }
            sgemm(g.precision, k, l, g.co, cols, false, Mat::transposed(w, k), Mat::rows(dy, l), par);
            for (j, dxb) in dxg.chunks_mut(g.in_len()).enumerate() {
                if g.pointwise() {
                    take_block(cols, dxb, g.c, n, l, j * n);
                } else {
                    g.col2im(cols, dxb, l, j * n);
                }
            }
        });
        Ok((CpuStorage::F32(dx), Shape::from(self.x_dims)))
    }
}

/// d(loss)/d(w) = Σ_b dY_b · cols_b^T; arguments (x, dY).
///
/// The columns are recomputed here rather than kept from the forward: keeping them costs
/// C*k*k*Ho*Wo floats per image and layer, 1.9 GB for a ResNet-18 step at batch 32 (the
/// whole step peaks at 1.9 GB RSS without them), while all im2col calls, forward and
/// backward, are 3.3% of the step's `perf` samples (so recomputing costs ~1.6%).
pub struct ConvGradWeight {
    pub p: ConvParams,
    pub w_dims: (usize, usize, usize, usize),
}

impl CustomOp2 for ConvGradWeight {
    fn name(&self) -> &'static str {
        "conv2d-gemm-grad-weight"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, gy) = (cpu_f32(s1, l1, "conv2d")?, cpu_f32(s2, l2, "conv2d")?);
        let g = Geom::new(l1.shape().dims4()?, self.w_dims, self.p)?;
        if l2.shape().dims4()? != (g.b, g.co, g.ho, g.wo) {
            candle_core::bail!("conv2d backward: gradient shape {:?} does not match the output", l2.shape());
        }
        if g.winograd() {
            let dw = winograd::kernel_grad3x3(g.winograd_shape(g.c, g.co), x, gy);
            return Ok((CpuStorage::F32(dw), Shape::from(self.w_dims)));
        }
        let (k, n, nb) = (g.k(), g.n(), g.group());
        // Units of work are groups of `nb` images.
        let dw = sum_in_parts(g.b.div_ceil(nb), g.co * k, g.scratch(nb), |units, dw, s, par| {
            for (j, u) in units.enumerate() {
                let imgs = u * nb..((u + 1) * nb).min(g.b);
                let m = imgs.len();
                let xg = &x[imgs.start * g.in_len()..imgs.end * g.in_len()];
                let gyg = &gy[imgs.start * g.co * n..imgs.end * g.co * n];
                if nb == 1 {
                    let cols: &[f32] = if g.pointwise() {
                        xg
                    } else {
                        g.im2col(xg, s, n, 0);
                        s
                    };
                    sgemm(g.precision, g.co, k, n, dw, j > 0, Mat::rows(gyg, n), Mat::transposed(cols, n), par);
                    continue;
                }
                let l = m * n;
                let (cols, dy) = split_group(&g, m, s);
                group_cols(&g, xg, m, cols);
                for (i, gyb) in gyg.chunks(g.co * n).enumerate() {
                    put_block(gyb, dy, g.co, n, l, i * n);
                }
                sgemm(g.precision, g.co, k, l, dw, j > 0, Mat::rows(dy, l), Mat::transposed(cols, l), par);
            }
        });
        Ok((CpuStorage::F32(dw), Shape::from(self.w_dims)))
    }
}

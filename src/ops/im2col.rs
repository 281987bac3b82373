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
//! `tests/ops_conv.rs`), and the per-image kernel gradients are summed in fixed groups of
//! images (`DW_GROUPS`), the groups in order, so the result never depends on scheduling.

use super::cpu_f32;
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

/// Stride and symmetric zero padding of a convolution (no dilation, one group).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvParams {
    pub stride: usize,
    pub padding: usize,
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
        Ok(Self { b, c, h, w: wd, co, kh, kw, ho, wo, stride: p.stride, pad: p.padding })
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

    /// `cols [K, N]` of one image `x [C, H, W]` (every element written, padding as zeros).
    fn im2col(&self, x: &[f32], cols: &mut [f32]) {
        let n = self.n();
        let (s, p) = (self.stride, self.pad);
        for c in 0..self.c {
            let xc = &x[c * self.h * self.w..(c + 1) * self.h * self.w];
            for ky in 0..self.kh {
                for kx in 0..self.kw {
                    let row = (c * self.kh + ky) * self.kw + kx;
                    let out = &mut cols[row * n..(row + 1) * n];
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

    /// `dx [C, H, W] += col2im(cols [K, N])`, in a fixed order.
    fn col2im(&self, cols: &[f32], dx: &mut [f32]) {
        let n = self.n();
        let (s, p) = (self.stride, self.pad);
        for c in 0..self.c {
            let dc = &mut dx[c * self.h * self.w..(c + 1) * self.h * self.w];
            for ky in 0..self.kh {
                for kx in 0..self.kw {
                    let row = (c * self.kh + ky) * self.kw + kx;
                    let src = &cols[row * n..(row + 1) * n];
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

/// A row-major or strided f32 matrix operand: `data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
struct Mat<'a> {
    data: &'a [f32],
    rs: usize,
    cs: usize,
}

impl<'a> Mat<'a> {
    fn rows(data: &'a [f32], cols: usize) -> Self {
        Self { data, rs: cols, cs: 1 }
    }

    /// The transpose of a row-major `[_, cols]` matrix.
    fn transposed(data: &'a [f32], cols: usize) -> Self {
        Self { data, rs: 1, cs: cols }
    }

    fn check(&self, m: usize, n: usize) {
        if m > 0 && n > 0 {
            assert!((m - 1) * self.rs + (n - 1) * self.cs < self.data.len(), "gemm operand out of bounds");
        }
    }
}

/// `dst [m, n] (row-major) = lhs [m, k] · rhs [k, n]`, or `+=` with `accumulate`.
fn sgemm(m: usize, n: usize, k: usize, dst: &mut [f32], accumulate: bool, lhs: Mat, rhs: Mat, par: Parallelism) {
    assert!(dst.len() >= m * n);
    lhs.check(m, k);
    rhs.check(k, n);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst[..m * n].fill(0.0);
        }
        return;
    }
    // SAFETY: the bounds of all three operands are checked above; `dst` is borrowed mutably
    // and so cannot alias the operands.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            // gemm computes dst = alpha * dst + beta * lhs * rhs (alpha only read with read_dst).
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        )
    }
}

/// How to spread a batch over the threads: with at least two images per thread, whole
/// images per thread with single-threaded GEMMs; with fewer, images in turn and each GEMM on
/// all threads. Measured with `examples/conv_layers` (ResNet-18 shapes, batch 32, 2 threads):
/// per image, 160-195 GFLOP/s on the 3x3 layers and 0.66 + 0.66 + 0.71 s (fwd, dX, dW) per
/// step; gemm's threading, 110-155 GFLOP/s and 0.88 + 0.80 + 1.09 s (slower on every layer,
/// 2.7x on the stem's dW).
fn per_image_parallel(batch: usize) -> bool {
    let threads = rayon::current_num_threads();
    threads > 1 && batch >= 2 * threads
}

fn gemm_par(per_image: bool) -> Parallelism {
    if per_image || rayon::current_num_threads() == 1 {
        Parallelism::None
    } else {
        Parallelism::Rayon(0)
    }
}

thread_local! {
    /// Column-matrix scratch of this thread, kept between calls: allocating it per call
    /// (up to 7 MB for the ResNet stem) made the kernel zero fresh pages every time.
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `f` with this thread's scratch buffer of at least `len` floats (contents unspecified).
fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len() < len {
                buf.resize(len, 0.0);
            }
            f(&mut buf[..len])
        }
        // Re-entered on this thread (a rayon steal while waiting): a buffer of its own.
        Err(_) => f(&mut vec![0f32; len]),
    })
}

/// Run `f(index, item, scratch)` over `items`, in parallel when `parallel`, each call with
/// a scratch buffer of `scratch_len` floats.
fn for_each_item<T: Send>(items: Vec<T>, parallel: bool, scratch_len: usize, f: impl Fn(usize, T, &mut [f32]) + Sync + Send) {
    if parallel {
        items.into_par_iter().enumerate().for_each(|(i, t)| with_scratch(scratch_len, |s| f(i, t, s)));
    } else {
        with_scratch(scratch_len, |s| {
            for (i, t) in items.into_iter().enumerate() {
                f(i, t, s);
            }
        });
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
        let (k, n) = (g.k(), g.n());
        let mut y = vec![0f32; g.b * g.co * n];
        let per_image = per_image_parallel(g.b);
        let par = gemm_par(per_image);
        let items: Vec<(&[f32], &mut [f32])> = x.chunks(g.in_len()).zip(y.chunks_mut(g.co * n)).collect();
        let scratch = if g.pointwise() { 0 } else { k * n };
        for_each_item(items, per_image, scratch, |_, (xb, yb), cols| {
            let cols: &[f32] = if g.pointwise() {
                xb
            } else {
                g.im2col(xb, cols);
                cols
            };
            sgemm(g.co, n, k, yb, false, Mat::rows(w, k), Mat::rows(cols, n), par);
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
        let (k, n) = (g.k(), g.n());
        let mut dx = vec![0f32; g.b * g.in_len()];
        let per_image = per_image_parallel(g.b);
        let par = gemm_par(per_image);
        let items: Vec<(&[f32], &mut [f32])> = gy.chunks(g.co * n).zip(dx.chunks_mut(g.in_len())).collect();
        let scratch = if g.pointwise() { 0 } else { k * n };
        for_each_item(items, per_image, scratch, |_, (gyb, dxb), cols| {
            if g.pointwise() {
                sgemm(k, n, g.co, dxb, false, Mat::transposed(w, k), Mat::rows(gyb, n), par);
            } else {
                sgemm(k, n, g.co, cols, false, Mat::transposed(w, k), Mat::rows(gyb, n), par);
                g.col2im(cols, dxb);
            }
        });
        Ok((CpuStorage::F32(dx), Shape::from(self.x_dims)))
    }
}

/// Images are summed into this many partial kernel gradients (fixed, whatever the thread
/// count, so the sum order is too), then the partials in order.
const DW_GROUPS: usize = 8;

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
        let (k, n) = (g.k(), g.n());
        let wlen = g.co * k;
        let groups = g.b.clamp(1, DW_GROUPS);
        let per_group = g.b.div_ceil(groups);
        let groups = g.b.div_ceil(per_group);
        let mut partial = vec![0f32; groups * wlen];
        let per_image = per_image_parallel(g.b);
        let par = gemm_par(per_image);
        let items: Vec<&mut [f32]> = partial.chunks_mut(wlen).collect();
        let scratch = if g.pointwise() { 0 } else { k * n };
        for_each_item(items, per_image, scratch, |gi, dw, cols| {
            let first = gi * per_group;
            for (j, bi) in (first..(first + per_group).min(g.b)).enumerate() {
                let xb = &x[bi * g.in_len()..(bi + 1) * g.in_len()];
                let gyb = &gy[bi * g.co * n..(bi + 1) * g.co * n];
                let cols: &[f32] = if g.pointwise() {
                    xb
                } else {
                    g.im2col(xb, cols);
                    cols
                };
                sgemm(g.co, k, n, dw, j > 0, Mat::rows(gyb, n), Mat::transposed(cols, n), par);
            }
        });
        let (first, rest) = partial.split_at_mut(wlen);
        for part in rest.chunks(wlen) {
            for (a, b) in first.iter_mut().zip(part) {
                *a += b;
            }
        }
        partial.truncate(wlen);
        Ok((CpuStorage::F32(partial), Shape::from(self.w_dims)))
    }
}

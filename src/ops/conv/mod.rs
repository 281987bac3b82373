//! Convolution with a fast backward pass.
//!
//! The convolution family, one file each:
//! - `im2col.rs`: the CPU kernel in f32, im2col + GEMM, forward and backward;
//! - `winograd.rs`: Winograd F(2x2, 3x3) for stride-1 3x3 layers, called by `im2col.rs`;
//! - `parallel.rs`: how both spread work over the threads, deterministically;
//! - `depthwise.rs`: depthwise convolution (EfficientNet), its own kernel and backward;
//! - here: the [`Conv2d`] layer and [`conv2d`], which picks the CPU kernel or the generic path
//!   below (CUDA, f64 and other dtypes), as the [`Kernels`] it is given say.
//!
//! The generic path:
//!
//! Candle computes a convolution's input gradient with `conv_transpose2d`, whose CPU kernel is
//! a direct loop (3-4x slower than the forward im2col + GEMM here). This module runs Candle's
//! forward, then attaches its own gradient rule: the input gradient as an ordinary convolution
//! of the (stride-dilated) output gradient with the flipped, transposed kernel, and no input
//! gradient at all where the input needs none (the image, or the output of a frozen block).

pub mod depthwise;
pub mod im2col;
mod parallel;
mod winograd;

use crate::ops::Kernels;
use im2col::{Conv, ConvParams};
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Module, Result, Shape, Tensor};

/// A convolution layer (no bias, one group: ResNet and EfficientNet convs have no bias, and
/// depthwise convolutions have their own op in `depthwise.rs`).
#[derive(Clone, Debug)]
pub struct Conv2d {
    pub weight: Tensor,
    pub stride: usize,
    pub padding: usize,
    /// The kernels it runs on (the model's, from its builder).
    pub kernels: Kernels,
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        conv2d_with(x, &self.weight, self.stride, self.padding, self.kernels)
    }
}

/// `conv2d(x, w)` (stride, symmetric zero padding, no dilation, one group) with the gradient
/// rule above, on the default kernels.
pub fn conv2d(x: &Tensor, w: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
    conv2d_with(x, w, stride, padding, Kernels::default())
}

/// [`conv2d`] on the given kernels (their precision and Winograd apply to the CPU f32 path).
pub fn conv2d_with(x: &Tensor, w: &Tensor, stride: usize, padding: usize, kernels: Kernels) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 && w.dtype() == DType::F32 {
        let op = Conv { p: ConvParams { stride, padding, kernels } };
        let (x, w) = (x.contiguous()?, w.contiguous()?);
        return if x.track_op() || w.track_op() { x.apply_op2(&w, op) } else { x.apply_op2_no_bwd(&w, &op) };
    }
    conv2d_generic(x, w, stride, padding)
}

/// The device- and dtype-generic convolution: Candle's forward with the gradient rule above
/// (and the reference the CPU kernel is tested against, in f64).
pub fn conv2d_generic(x: &Tensor, w: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
    let (c_out, c_in, kh, kw) = w.dims4()?;
    if (kh, kw, stride, padding) == (1, 1, 1, 0) {
        // A pointwise convolution is a matrix product per image: no im2col copy, and autograd
        // of `matmul` gives both gradients as GEMMs.
        let (b, _, h, wd) = x.dims4()?;
        let y = w.reshape((c_out, c_in))?.broadcast_left(b)?.matmul(&x.reshape((b, c_in, h * wd))?)?;
        return y.reshape((b, c_out, h, wd));
    }
    let y = x.detach().conv2d(&w.detach(), padding, stride, 1, 1)?;
    if !x.track_op() && !w.track_op() {
        return Ok(y);
    }
    y.apply_op3(x, w, ConvGrad { stride, padding })
}

/// Identity on its first argument (the forward result); its backward supplies the gradients
/// of the convolution of the second (input) by the third (kernel).
struct ConvGrad {
    stride: usize,
    padding: usize,
}

impl CustomOp3 for ConvGrad {
    fn name(&self) -> &'static str {
        "conv2d-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        identity(s1, l1)
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        identity(s1, l1)
    }

    fn bwd(&self, _y: &Tensor, x: &Tensor, w: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.detach();
        let gx = if x.track_op() { Some(input_grad(&grad, &w.detach(), x.dims4()?, self.stride, self.padding)?) } else { None };
        let gw = if w.track_op() { Some(kernel_grad(&x.detach(), &grad, w.dims4()?, self.stride, self.padding)?) } else { None };
        Ok((None, gx, gw))
    }
}

fn identity<S: BackendStorage>(s: &S, l: &Layout) -> Result<(S, Shape)> {
    if !l.is_contiguous() || l.start_offset() != 0 {
        candle_core::bail!("conv2d-grad: the forward result must be contiguous");
    }
    Ok((s.try_clone(l)?, l.shape().clone()))
}

/// Insert `stride - 1` zeros between rows and columns of `g [B, C, Ho, Wo]` and cut/extend to
/// `len_h x len_w` (the positions a stride-1 convolution would produce).
fn dilate(g: &Tensor, stride: usize, len_h: usize, len_w: usize) -> Result<Tensor> {
    if stride == 1 {
        return Ok(g.clone());
    }
    let (b, c, ho, wo) = g.dims4()?;
    let d = g
        .reshape((b, c, ho, 1, wo, 1))?
        .pad_with_zeros(3, 0, stride - 1)?
        .pad_with_zeros(5, 0, stride - 1)?
        .reshape((b, c, ho * stride, wo * stride))?;
    d.narrow(2, 0, len_h)?.narrow(3, 0, len_w)
}

/// d(loss)/d(input) = conv(dilate(grad), flip(w)^T, padding k-1-p).
fn input_grad(grad: &Tensor, w: &Tensor, x_dims: (usize, usize, usize, usize), stride: usize, padding: usize) -> Result<Tensor> {
    let (_, _, h, wd) = x_dims;
    let (_, _, kh, kw) = w.dims4()?;
    if padding + 1 > kh || padding + 1 > kw {
        // Padding this large has no flipped-kernel equivalent; fall back to Candle's rule.
        let out_h = (grad.dim(2)? - 1) * stride + kh - 2 * padding;
        return grad.conv_transpose2d(w, padding, h - out_h, stride, 1);
    }
    let g = dilate(grad, stride, h + 2 * padding - kh + 1, wd + 2 * padding - kw + 1)?;
    let rev = |n: usize| Tensor::from_vec((0..n as u32).rev().collect::<Vec<u32>>(), n, w.device());
    let wf = w.index_select(&rev(kh)?, 2)?.index_select(&rev(kw)?, 3)?.transpose(0, 1)?.contiguous()?;
    g.conv2d(&wf, kh - 1 - padding, 1, 1, 1)
}

/// d(loss)/d(kernel): a convolution over the batch (Candle's own rule, kept).
fn kernel_grad(x: &Tensor, grad: &Tensor, w_dims: (usize, usize, usize, usize), stride: usize, padding: usize) -> Result<Tensor> {
    let (_, _, kh, kw) = w_dims;
    let gk = x.transpose(0, 1)?.conv2d(&grad.transpose(0, 1)?, padding, 1, stride, 1)?.transpose(0, 1)?;
    gk.narrow(2, 0, kh)?.narrow(3, 0, kw)?.contiguous()
}

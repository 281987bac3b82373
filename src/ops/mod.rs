//! Every custom op and fast kernel of the workbook, in one place (as candle-nn keeps its own in
//! `ops.rs`). Each op has its CPU kernel, a generic path for other devices (CUDA) built from
//! Candle tensor ops, and its backward pass. Ops know tensors only: never layers or models.

pub mod activation;
pub mod batch_norm;
pub mod conv;
pub mod gemm;
mod kernels;
pub mod pool;

pub use activation::{relu, relu6};
pub use batch_norm::{batch_norm_eval, batch_norm_eval_act, batch_norm_train, batch_norm_train_act, Activation};
pub use conv::depthwise::{depthwise_conv2d, depthwise_conv2d_with, DwParams};
pub use conv::{conv2d, conv2d_with, Conv2d};
pub use gemm::{bf16_supported, Precision};
pub use kernels::Kernels;
pub use pool::{global_avg_pool, max_pool2d};

use candle_core::{CpuStorage, Layout, Result};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// The `f32` values of a contiguous CPU tensor, for the hand-written kernels; `what` names the
/// op in the error.
pub(crate) fn cpu_f32<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&s.as_slice::<f32>()?[a..b]),
        None => candle_core::bail!("{what}: expected a contiguous f32 tensor"),
    }
}

/// `len` zeros, written by all threads (`par_output` says why): for outputs that a product
/// overwrites or a scatter adds into.
pub(crate) fn par_zeros(len: usize) -> Vec<f32> {
    par_output(len, 1 << 16, |_, _| {})
}

/// A new buffer of `len` floats, filled in parallel: `fill(i, part)` writes every element of
/// chunk `i` (`part`, `chunk` floats, the last one shorter), which arrives zeroed.
///
/// An op's output written whole needs no zero-filled `vec![0f32; len]` first: with memory kept
/// for reuse (`keep_freed_memory`), that zeroing was one serial `memset` of every output on the
/// calling thread while the others waited: `perf` on the notebook kernel's main thread (glibc)
/// showed `memset` in 71% of its samples. Here each chunk is zeroed by the thread that fills it,
/// while it is in that core's cache.
pub(crate) fn par_output(len: usize, chunk: usize, fill: impl Fn(usize, &mut [f32]) + Sync) -> Vec<f32> {
    let mut out: Vec<f32> = Vec::with_capacity(len);
    out.spare_capacity_mut()[..len].par_chunks_mut(chunk.max(1)).enumerate().for_each(|(i, part)| {
        part.fill(MaybeUninit::new(0.0));
        // SAFETY: every element of `part` was initialised just above, and `MaybeUninit<f32>`
        // has the layout of `f32`.
        let part = unsafe { &mut *(part as *mut [MaybeUninit<f32>] as *mut [f32]) };
        fill(i, part);
    });
    // SAFETY: the chunks cover `0..len` and each was initialised (a panic in `fill` propagates
    // before this line, dropping `out` with length 0).
    unsafe { out.set_len(len) };
    out
}

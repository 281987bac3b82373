//! Every custom op and fast kernel of the workbook, in one place (as candle-nn keeps its own in
//! `ops.rs`). Each op has its CPU kernel, a generic path for other devices (CUDA) built from
//! Candle tensor ops, and its backward pass. Ops know tensors only: never layers or models.

pub mod activation;
pub mod batch_norm;
mod bf16;
pub mod conv;
pub mod depthwise;
pub mod gemm;
pub mod im2col;
pub mod pool;
mod winograd;

pub use activation::{relu, relu6};
pub use batch_norm::{batch_norm_eval, batch_norm_eval_act, batch_norm_train, batch_norm_train_act, Activation};
pub use conv::{conv2d, Conv2d};
pub use depthwise::{depthwise_conv2d, DwParams};
pub use gemm::{bf16_supported, precision, set_precision, Precision};
pub use pool::{global_avg_pool, max_pool2d};

use candle_core::{CpuStorage, Layout, Result};

/// The `f32` values of a contiguous CPU tensor, for the hand-written kernels; `what` names the
/// op in the error.
pub(crate) fn cpu_f32<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&s.as_slice::<f32>()?[a..b]),
        None => candle_core::bail!("{what}: expected a contiguous f32 tensor"),
    }
}

//! The custom ops and CPU kernels (`transfer_workbook::ops`), one module per op family, in one
//! test binary: BatchNorm, the bfloat16 product, convolution, pooling, ReLU, Winograd.

#[allow(dead_code)]
#[path = "../support/mod.rs"]
mod support;

mod batch_norm;
mod bf16;
mod conv;
mod pool;
mod relu;
mod winograd;

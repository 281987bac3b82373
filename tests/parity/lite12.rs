//! EfficientNet-Lite1 and Lite2 parity with the same PyTorch reference as Lite0 (`lite0.rs`:
//! the same formula, cases and checks), against `tests/fixtures/parity/lite{1,2}.safetensors`
//! written by `tools/parity/gen_lite0.py --arch lite1|lite2`. They prove the family's scaling:
//! Lite1's 21 blocks (depth x1.1), Lite2's 21 blocks with widened stages (width x1.1: 48, 88,
//! 120, 208 and 352 channels), the fixed 32-channel stem and 1280-channel head, and Lite2's
//! dropout 0.3 turned off as Lite0's is. Forward (eval and train), loss, gradients and running
//! statistics; the optimizer steps are shared code, checked on Lite0 and the ResNets (at 21
//! blocks the reference's own float32 and float64 SGD weights differ by ~1.7e-5, so no input
//! makes them a sharp check).

use crate::parity::{forward_backward, Precision};
use transfer_workbook::models::Arch;

#[test]
fn lite1_f64_forward_backward() {
    forward_backward(Arch::EfficientNetLite1, Precision::F64);
}

#[test]
fn lite1_f32_forward_backward() {
    forward_backward(Arch::EfficientNetLite1, Precision::F32);
}

#[test]
fn lite2_f64_forward_backward() {
    forward_backward(Arch::EfficientNetLite2, Precision::F64);
}

#[test]
fn lite2_f32_forward_backward() {
    forward_backward(Arch::EfficientNetLite2, Precision::F32);
}

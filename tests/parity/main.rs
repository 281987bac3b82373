//! Parity with PyTorch fixtures (tests/fixtures/parity): EfficientNet-Lite0/1/2, ResNet, and the
//! transforms. `cargo test --release --test parity -- --nocapture` prints every difference
//! (`--test parity lite0` for one of them).

#[allow(dead_code)]
#[path = "../support/mod.rs"]
mod support;
#[allow(dead_code)]
#[path = "../support/parity.rs"]
mod parity;

mod lite0;
mod lite12;
mod resnet;
mod transforms;

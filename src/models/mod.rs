//! Backbones you can train, one interface for all of them (Keras-applications style): an
//! [`Arch`] names the network, its tensor names, its blocks (for freezing) and its
//! preprocessing contract; a [`Classifier`] is that backbone plus a separate head.
//! The arithmetic of the layers lives in [`crate::ops`]; weight files in `crate::checkpoint`.

pub mod arch;
pub mod batch_norm;
pub mod builder;
pub mod classifier;
pub mod efficientnet_lite;
pub mod head;
pub mod resnet;
pub mod store;

pub use arch::Arch;
pub use batch_norm::BatchNorm;
pub use builder::{BnMode, Builder};
pub use classifier::{Classifier, ModelOptions};
pub use head::{Freeze, HeadInit};
pub use store::{NamedTensors, ParamGroup, ParamStore};

use candle_core::{Result, Tensor};
use std::ops::Range;

/// A backbone without its classifier: images `[B, 3, H, W]` to pooled features `[B, D]`, run
/// as a sequence of steps (stem, blocks, ..., global pooling last) that [`Arch::steps`] names.
/// Running steps `0..k` and then `k..n` on the result gives `features_t`'s bits for every `k`,
/// so a training phase can keep the output of a frozen prefix and run only the rest.
pub trait FeatureExtractor: Send + Sync {
    /// Steps `steps` of the forward pass on `x`, the input of step `steps.start`.
    fn forward_steps(&self, x: &Tensor, steps: Range<usize>, train: bool) -> Result<Tensor>;
    /// How many steps the forward pass has (`Arch::steps().len()`).
    fn num_steps(&self) -> usize;
    fn feature_dim(&self) -> usize;

    fn features_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_steps(x, 0..self.num_steps(), train)
    }
}

/// `steps` must lie within a forward pass of `n` steps.
fn check_steps(steps: &Range<usize>, n: usize) -> Result<()> {
    if steps.start > steps.end || steps.end > n {
        candle_core::bail!("steps {steps:?} out of a forward pass of {n} steps");
    }
    Ok(())
}

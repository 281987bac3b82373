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

/// A backbone without its classifier: images `[B, 3, H, W]` to pooled features `[B, D]`.
pub trait FeatureExtractor: Send + Sync {
    fn features_t(&self, x: &Tensor, train: bool) -> Result<Tensor>;
    fn feature_dim(&self) -> usize;
}

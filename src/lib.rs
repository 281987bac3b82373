//! # The Rust transfer-learning workbook
//!
//! Fine-tuning pretrained CNNs with Candle, as in d2l.ai 13.2 (the hot-dog example) and the
//! Keras two-phase recipe. Small public pieces, one high-level call:
//!
//! - [`data`]: image-folder datasets, the d2l hot-dog download, a prefetching batch loader;
//! - [`transforms`]: torchvision-style augmentation and each backbone's normalization;
//! - [`models`]: trainable backbones with torchvision names, heads, freezing, weight loading;
//! - [`train`]: optimizers with per-store learning rates, the epoch loop, recipes;
//! - [`plot`]: training curves and image grids;
//! - [`fine_tune`]: the whole d2l experiment in one call.

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub mod bench;
pub mod data;
pub mod device;
pub mod imagenet;
pub mod models;
pub mod notebook;
pub mod plot;
pub mod predict;
pub mod run;
pub mod train;
pub mod transforms;
pub mod zero_shot;

pub use device::{device_label, parse_device};
pub use run::{fine_tune, Augment, Experiment, ExperimentResult, ModelInit};

// Re-exported so notebooks and users need only this crate as a dependency.
pub use anyhow;
pub use candle_core;
pub use candle_nn;
pub use image;

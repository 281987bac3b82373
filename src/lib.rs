//! # The Rust transfer-learning workbook
//!
//! Fine-tuning pretrained CNNs with Candle, as in d2l.ai 13.2 (the hot-dog example) and the
//! Keras two-phase recipe. Small public pieces, one high-level call:
//!
//! The layers, each importing only the ones above it in this list (plus the leaf helpers
//! [`paths`], [`imagenet`], [`device`]):
//! - [`transforms`]: torchvision-style augmentation and each backbone's normalization;
//! - [`data`]: image-folder datasets, the d2l hot-dog download, a prefetching batch loader;
//! - [`ops`]: every custom op and fast kernel (CPU kernel, generic fallback, backward);
//! - [`models`]: trainable backbones with torchvision names, heads, freezing, the `Arch` registry;
//! - [`checkpoint`]: weight files (safetensors, zip and legacy `.pth`), hub/file sources, saved
//!   models and the training checkpoint;
//! - [`train`]: optimizers with per-store learning rates, evaluation, the epoch loop, recipes;
//! - [`plot`]: training curves and image grids;
//! - [`experiment`] / [`fine_tune`]: the whole d2l experiment in one call; [`predict`],
//!   [`zero_shot`], [`bench`] and [`notebook`] on top.

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub mod bench;
pub mod checkpoint;
pub mod data;
pub mod device;
pub mod experiment;
pub mod imagenet;
pub mod models;
pub mod notebook;
pub mod ops;
pub mod paths;
pub mod plot;
pub mod predict;
pub mod train;
pub mod transforms;
pub mod zero_shot;

pub use device::{device_label, parse_device};
pub use experiment::{fine_tune, Augment, Experiment, ExperimentResult, ModelInit};

// Re-exported so notebooks and users need only this crate as a dependency.
pub use anyhow;
pub use candle_core;
pub use candle_nn;
pub use image;

//! # The Rust transfer-learning workbook
//!
//! Fine-tuning pretrained CNNs with Candle, as in d2l.ai 13.2 (the hot-dog example) and the
//! Keras two-phase recipe. Small public pieces, one high-level call:
//!
//! The layers, each importing only the ones above it in this list (plus the leaf helpers of
//! [`util`]: enums chosen by name, devices, ImageNet's class names, paths as reports print them):
//! - [`transforms`]: torchvision-style augmentation and each backbone's normalization;
//! - [`data`]: image-folder datasets, the d2l hot-dog download, a prefetching batch loader;
//! - [`ops`]: every custom op and fast kernel (CPU kernel, generic fallback, backward);
//! - [`models`]: trainable backbones with torchvision names, heads, freezing, the `Arch` registry;
//! - [`checkpoint`]: weight files (safetensors, zip and legacy `.pth`), hub/file sources, saved
//!   models and the training checkpoint;
//! - [`train`]: optimizers with per-store learning rates, evaluation, the epoch loop, recipes;
//! - [`plot`]: training curves and image grids;
//! - [`tasks`]: the commands' library side, each a whole job in one call: [`fine_tune`] (the
//!   d2l experiment), evaluation (metrics.json, confusion matrix, top losses), predict,
//!   zero-shot, bench and the notebooks' helpers;
//! - [`serve`]: a saved model behind HTTP (`finetune serve`), on top of [`tasks::predict`].

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Ask the allocator to keep freed memory for reuse instead of returning it to the OS. A
/// training step frees and reallocates gigabytes of activations; returned pages come back
/// zeroed by the kernel. Call once, early (the CLI does, and so does [`notebook::start`]).
/// With the `mimalloc` feature (the CLI) it sets mimalloc's `purge_delay = -1`; without it, on
/// glibc (the notebooks: Evcxr's kernel cannot take a second allocator), it lifts the mmap and
/// trim thresholds and pads the heap top. docs/performance.md has the measurements.
pub fn keep_freed_memory() {
    #[cfg(feature = "mimalloc")]
    {
        extern "C" {
            // mimalloc.h (v2 and v3): `void mi_option_set(mi_option_t option, long value)`.
            fn mi_option_set(option: std::os::raw::c_int, value: std::os::raw::c_long);
        }
        /// `mi_option_purge_delay` in mimalloc.h's `mi_option_e` (the same in v2 and v3).
        const MI_OPTION_PURGE_DELAY: std::os::raw::c_int = 15;
        // SAFETY: a plain option setter of the linked mimalloc; options may change at any time.
        unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, -1) }
    }
    #[cfg(all(not(feature = "mimalloc"), target_os = "linux", target_env = "gnu"))]
    {
        use std::os::raw::c_int;
        extern "C" {
            // glibc's malloc.h: `int mallopt(int param, int value)`.
            fn mallopt(param: c_int, value: c_int) -> c_int;
        }
        // malloc.h's parameter numbers.
        const M_TRIM_THRESHOLD: c_int = -1;
        const M_TOP_PAD: c_int = -2;
        const M_MMAP_THRESHOLD: c_int = -3;
        // SAFETY: mallopt only changes glibc's malloc tunables, valid at any time; a value it
        // refuses is ignored (it returns 0), which leaves that tunable as it was.
        unsafe {
            // Older glibc (before 2.26) refuses an mmap threshold above half its heap size
            // (32 MB on 64-bit). Setting the trim threshold below also freezes the mmap
            // threshold where it is, so it must never stay at the 128 KB default: take the
            // largest one glibc accepts.
            if mallopt(M_MMAP_THRESHOLD, c_int::MAX) == 0 {
                mallopt(M_MMAP_THRESHOLD, 32 << 20);
            }
            mallopt(M_TRIM_THRESHOLD, c_int::MAX);
            mallopt(M_TOP_PAD, 256 << 20);
        }
    }
}

pub mod checkpoint;
pub mod data;
pub mod models;
pub mod ops;
pub mod plot;
#[cfg(feature = "serve")]
pub mod serve;
pub mod tasks;
pub mod train;
pub mod transforms;
pub mod util;

pub use util::device::{device_label, parse_device};
pub use tasks::experiment::{fine_tune, Augment, Experiment, ExperimentResult, ModelInit};

// Re-exported so notebooks and users need only this crate as a dependency.
pub use anyhow;
pub use candle_core;
pub use candle_nn;
pub use image;

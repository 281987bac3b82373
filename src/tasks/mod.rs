//! The commands' library side: each module is one whole job a CLI command or a notebook runs
//! with one call, built from the layers below ([`crate::train`], [`crate::checkpoint`], ...).
//! - [`experiment`]: the d2l fine-tuning experiment ([`crate::fine_tune`]) and its settings;
//! - [`evaluation`]: a trained model on a test folder (metrics.json, confusion matrix, top losses);
//! - [`predict`]: a saved model on photos (files, folders, globs; text, JSON or CSV);
//! - [`zero_shot`]: the ImageNet classifier as a hot-dog detector, before any training;
//! - [`bench`]: training and inference speed on random data or one real epoch;
//! - [`notebook`]: the notebooks' setting, inline pictures and tables.

pub mod bench;
pub mod evaluation;
pub mod experiment;
pub mod notebook;
pub mod predict;
pub mod zero_shot;

//! Leaf helpers every layer may use: they import nothing of the crate.
//! - [`choice`]: enums picked by name (a flag's value, an environment variable);
//! - [`device`]: `cpu`, `cuda`, `cuda:N` to a Candle device;
//! - [`imagenet`]: the ImageNet-1k class names;
//! - [`paths`]: paths and numbers as reports print them.

pub mod choice;
pub mod device;
pub mod imagenet;
pub mod paths;

pub use choice::{Choice, Named, UnknownChoice};

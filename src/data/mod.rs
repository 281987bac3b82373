//! Data: image-folder datasets decoded once into memory, the d2l hot-dog download, a
//! train/validation/test split, and a batch loader that augments in parallel and prepares the
//! next batch while one trains.

pub mod decode;
pub mod download;
pub mod duplicates;
pub mod image_folder;
pub mod loader;
pub mod split;

pub use decode::decode_image;
pub use download::{download_extract, flowers, flowers_source, hotdog, hotdog_source, FLOWERS_URL, FLOWERS_URL_ENV, HOTDOG_SHA1, HOTDOG_URL, HOTDOG_URL_ENV};
pub use image_folder::{ImageFolder, Skipped};
pub use loader::{Batch, Loader};
pub use duplicates::Duplicates;
pub use split::{carve_validation, check_val_fraction, SplitSpec};

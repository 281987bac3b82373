//! Everything that reads or writes weights: safetensors, zip `.pth` and legacy `.pth` files,
//! where pretrained weights come from (hub, local file), whole models, and the checkpoint a
//! training run leaves after each epoch.

pub mod atomic;
pub mod card;
pub mod hub;
pub mod legacy_pth;
pub mod lock;
pub mod model;
pub mod out_folder;
pub mod source;
pub mod training;
pub mod weights;
pub mod zip_pth;

pub use card::ModelCard;
pub use model::{load_model, load_model_with_card, load_pretrained, read_named, save_model, save_model_with_card};
pub use source::{default_weights, WeightsSource};
pub use lock::RunLock;
pub use training::RunFiles;
pub use weights::{read_safetensors_metadata, read_tensors, save_safetensors};

//! Backbones you can train, one interface for all of them (Keras-applications style): an
//! [`Arch`] names the network, its tensor names, its blocks (for freezing) and its
//! preprocessing contract; a [`Classifier`] is that backbone plus a separate head.

pub mod batch_norm;
pub mod builder;
pub mod classifier;
pub mod conv;
pub mod legacy_pth;
pub mod pool;
pub mod resnet;
pub mod store;
pub mod weights;

pub use batch_norm::{BatchNorm, BnMode};
pub use builder::Builder;
pub use classifier::{Classifier, Freeze, HeadInit, ModelOptions};
pub use store::{ParamStore, Pretrained};
pub use weights::WeightsSource;

use crate::transforms::Normalization;
use candle_core::{Result, Tensor};
use resnet::{ResNet, ResNetConfig};

/// A backbone without its classifier: images `[B, 3, H, W]` to pooled features `[B, D]`.
pub trait FeatureExtractor: Send + Sync {
    fn features_t(&self, x: &Tensor, train: bool) -> Result<Tensor>;
    fn feature_dim(&self) -> usize;
}

/// The backbones the workbook knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Arch {
    #[serde(rename = "resnet18")]
    ResNet18,
    #[serde(rename = "resnet34")]
    ResNet34,
    #[serde(rename = "resnet50")]
    ResNet50,
}

impl Arch {
    pub const ALL: [Arch; 3] = [Arch::ResNet18, Arch::ResNet34, Arch::ResNet50];

    pub fn name(self) -> &'static str {
        match self {
            Arch::ResNet18 => "resnet18",
            Arch::ResNet34 => "resnet34",
            Arch::ResNet50 => "resnet50",
        }
    }

    pub fn from_name(name: &str) -> anyhow::Result<Self> {
        let key = name.to_ascii_lowercase().replace(['-', '_'], "");
        Self::ALL.into_iter().find(|a| a.name().replace('-', "") == key).ok_or_else(|| {
            let known: Vec<_> = Self::ALL.iter().map(|a| a.name()).collect();
            anyhow::anyhow!("unknown backbone '{name}' (known: {})", known.join(", "))
        })
    }

    fn resnet_config(self) -> ResNetConfig {
        match self {
            Arch::ResNet18 => ResNetConfig::R18,
            Arch::ResNet34 => ResNetConfig::R34,
            Arch::ResNet50 => ResNetConfig::R50,
        }
    }

    pub fn feature_dim(self) -> usize {
        self.resnet_config().feature_dim()
    }

    /// The classifier's tensor prefix in the reference checkpoints.
    pub fn head_prefix(self) -> &'static str {
        "fc"
    }

    /// Freezable blocks, input side first.
    pub fn blocks(self) -> Vec<String> {
        ["conv1", "bn1", "layer1", "layer2", "layer3", "layer4"].iter().map(|s| s.to_string()).collect()
    }

    /// The block a tensor name belongs to.
    pub fn block_of(self, name: &str) -> String {
        name.split('.').next().unwrap_or(name).to_string()
    }

    /// Where the Keras recipe's second phase starts unfreezing (roughly the top 30%).
    pub fn default_unfreeze_from(self) -> String {
        "layer4".into()
    }

    /// The input preprocessing the pretrained weights expect.
    pub fn normalization(self) -> Normalization {
        Normalization::imagenet()
    }

    /// Where the pretrained ImageNet weights live on the Hugging Face hub.
    pub fn hub_weights(self) -> WeightsSource {
        let repo = format!("timm/{}.tv_in1k", self.name());
        WeightsSource::Hub { repo, file: "model.safetensors".into() }
    }

    pub fn build(self, b: &Builder) -> Result<Box<dyn FeatureExtractor>> {
        Ok(Box::new(ResNet::new(self.resnet_config(), b)?))
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

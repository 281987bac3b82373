//! What a run's `model.safetensors` says about itself beside its tensors (the safetensors
//! string metadata): enough for `predict` and `serve` to take raw photos and preprocess them
//! exactly as the model was trained, and for a person to tell one model file from another.
//!
//! Keys (all strings): `backbone`, `classes` (JSON array), `image_size`, `normalization`
//! (JSON, as [`Normalization`] serialises), `trained_at` (RFC 3339, UTC) and `test_accuracy`.
//! Files written before a key existed simply lack it: every field is optional, and
//! [`ModelCard::image_size_or_default`] / [`ModelCard::normalization_for`] give the backbone's
//! defaults.

use super::weights::read_safetensors_metadata;
use crate::data::SplitSpec;
use crate::models::Arch;
use crate::ops::Kernels;
use crate::transforms::Normalization;
use anyhow::Context;
use std::collections::HashMap;
use std::path::Path;

/// The image size a model is assumed to take when its file does not say (torchvision's and
/// d2l's 224 px).
pub const DEFAULT_IMAGE_SIZE: u32 = 224;

/// A saved model's metadata.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct ModelCard {
    /// The backbone's name (`Arch::name`).
    pub backbone: Option<String>,
    pub classes: Option<Vec<String>>,
    /// The square input size it was trained at (px).
    pub image_size: Option<u32>,
    /// The pixel-to-value contract it was trained with.
    pub normalization: Option<Normalization>,
    /// When training finished, RFC 3339 in UTC.
    pub trained_at: Option<String>,
    /// Test accuracy of the saved weights, as the run measured it.
    pub test_accuracy: Option<f64>,
    /// The CPU kernels it was trained on (precision, Winograd): a record, not a requirement.
    pub kernels: Option<Kernels>,
    /// How an unsplit folder of classes was cut (`--split`), so `evaluate` can cut it the same way.
    pub split: Option<SplitSpec>,
}

impl ModelCard {
    /// The card of a `.safetensors` file (empty for other formats, which carry no metadata).
    /// Malformed values are errors naming the file and the key.
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        if !path.extension().is_some_and(|e| e == "safetensors") {
            return Ok(Self::default());
        }
        Self::from_metadata(&read_safetensors_metadata(path)?).with_context(|| format!("{}: model metadata", path.display()))
    }

    pub fn from_metadata(meta: &HashMap<String, String>) -> anyhow::Result<Self> {
        let classes = match meta.get("classes") {
            Some(c) => Some(serde_json::from_str(c).context("bad 'classes' (expected a JSON array of names)")?),
            None => None,
        };
        let image_size = match meta.get("image_size") {
            Some(s) => Some(s.parse::<u32>().ok().filter(|&v| v > 0).with_context(|| format!("bad 'image_size' {s:?}"))?),
            None => None,
        };
        let normalization = match meta.get("normalization") {
            Some(s) => {
                let n: Normalization = serde_json::from_str(s).with_context(|| format!("bad 'normalization' {s:?}"))?;
                if let Normalization::MeanStd { mean, std } = n {
                    // Each channel is divided by its std: 0 gives infinities, below 0 flips the image.
                    if !std.iter().all(|v| v.is_finite() && *v > 0.0) || !mean.iter().all(|v| v.is_finite()) {
                        anyhow::bail!("bad 'normalization' {s:?}: each std must be a finite number above 0 and each mean finite");
                    }
                }
                Some(n)
            }
            None => None,
        };
        let test_accuracy = match meta.get("test_accuracy") {
            Some(s) => Some(s.parse::<f64>().ok().filter(|v| (0.0..=1.0).contains(v)).with_context(|| format!("bad 'test_accuracy' {s:?}"))?),
            None => None,
        };
        let kernels = match meta.get("kernels") {
            Some(s) => Some(serde_json::from_str(s).with_context(|| format!("bad 'kernels' {s:?}"))?),
            None => None,
        };
        let split = match meta.get("split") {
            Some(s) => Some(serde_json::from_str(s).with_context(|| format!("bad 'split' {s:?}"))?),
            None => None,
        };
        Ok(Self {
            split,
            backbone: meta.get("backbone").cloned(),
            classes,
            image_size,
            normalization,
            trained_at: meta.get("trained_at").cloned(),
            test_accuracy,
            kernels,
        })
    }

    /// The string metadata to write (only the fields that are set).
    pub fn to_metadata(&self) -> HashMap<String, String> {
        let mut m = HashMap::new();
        if let Some(b) = &self.backbone {
            m.insert("backbone".into(), b.clone());
        }
        if let Some(c) = &self.classes {
            m.insert("classes".into(), serde_json::to_string(c).unwrap_or_default());
        }
        if let Some(s) = self.image_size {
            m.insert("image_size".into(), s.to_string());
        }
        if let Some(n) = &self.normalization {
            m.insert("normalization".into(), serde_json::to_string(n).unwrap_or_default());
        }
        if let Some(t) = &self.trained_at {
            m.insert("trained_at".into(), t.clone());
        }
        if let Some(a) = self.test_accuracy {
            m.insert("test_accuracy".into(), format!("{a}"));
        }
        if let Some(k) = &self.kernels {
            m.insert("kernels".into(), serde_json::to_string(k).unwrap_or_default());
        }
        if let Some(sp) = &self.split {
            m.insert("split".into(), serde_json::to_string(sp).unwrap_or_default());
        }
        m
    }

    /// The backbone named in the card, if any.
    pub fn arch(&self) -> anyhow::Result<Option<Arch>> {
        self.backbone.as_deref().map(|b| Arch::from_name(b).with_context(|| format!("backbone {b:?} in the metadata"))).transpose()
    }

    pub fn image_size_or_default(&self) -> u32 {
        self.image_size.unwrap_or(DEFAULT_IMAGE_SIZE)
    }

    /// The recorded image size, else `arch`'s own ([`Arch::default_image_size`]).
    pub fn image_size_for(&self, arch: Arch) -> u32 {
        self.image_size.unwrap_or(arch.default_image_size())
    }

    /// The recorded normalization, else `arch`'s own.
    pub fn normalization_for(&self, arch: Arch) -> Normalization {
        self.normalization.unwrap_or_else(|| arch.normalization())
    }
}

/// The current time as RFC 3339 in UTC, seconds precision (for [`ModelCard::trained_at`]).
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_bad_values() {
        let card = ModelCard {
            backbone: Some("efficientnet-lite0".into()),
            classes: Some(vec!["hotdog".into(), "not-hotdog".into()]),
            image_size: Some(160),
            normalization: Some(Normalization::MinusOneOne),
            trained_at: Some(now_rfc3339()),
            test_accuracy: Some(0.924),
            kernels: Some(Kernels::with_precision(crate::ops::Precision::Bf16)),
            split: Some(SplitSpec { train: 0.8, val: 0.1, test: 0.1, seed: 7 }),
        };
        let back = ModelCard::from_metadata(&card.to_metadata()).unwrap();
        assert_eq!(back, card);
        assert_eq!(back.arch().unwrap(), Some(Arch::EfficientNetLite0));
        let old = ModelCard::from_metadata(&HashMap::from([("backbone".to_string(), "resnet18".to_string())])).unwrap();
        assert_eq!(old.image_size_or_default(), 224);
        assert_eq!(old.normalization_for(Arch::ResNet18), Normalization::imagenet());
        for (k, v) in [("image_size", "0"), ("image_size", "big"), ("test_accuracy", "1.5"), ("normalization", "\"sepia\""), ("classes", "hotdog"), ("kernels", "fast"), ("split", "0.8")] {
            let err = ModelCard::from_metadata(&HashMap::from([(k.to_string(), v.to_string())])).unwrap_err();
            assert!(format!("{err:#}").contains(k), "{k}={v}: {err:#}");
        }
    }

    #[test]
    fn a_normalization_that_divides_by_zero_or_flips_is_refused() {
        let card = |mean: [f32; 3], std: [f32; 3]| {
            let n = serde_json::to_string(&Normalization::MeanStd { mean, std }).unwrap();
            ModelCard::from_metadata(&HashMap::from([("normalization".to_string(), n)]))
        };
        assert!(card([0.5; 3], [0.2; 3]).unwrap().normalization.is_some());
        for std in [[0.2, 0.0, 0.2], [-1.0, 1.0, 1.0]] {
            let e = format!("{:#}", card([0.5; 3], std).unwrap_err());
            assert!(e.contains("bad 'normalization'") && e.contains("above 0"), "{e}");
        }
    }
}

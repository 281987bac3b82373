//! Pixel to tensor value conventions: each backbone's preprocessing contract is one of these.

/// How `u8` RGB pixels become network input values (channel-first output).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Normalization {
    /// torchvision `ToTensor` + `Normalize(mean, std)`: `(v / 255 - mean) / std`.
    MeanStd { mean: [f32; 3], std: [f32; 3] },
    /// Keras "caffe" mode (ResNet50 in keras.applications): BGR order, `v - mean_bgr`, no scaling.
    CaffeBgr,
    /// Keras "tf" mode (MobileNet, EfficientNet-Lite): `v / 127.5 - 1`, in [-1, 1].
    MinusOneOne,
    /// `ToTensor` alone: `v / 255`, in [0, 1].
    Unit,
}

impl Normalization {
    pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
    pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];
    pub const CAFFE_MEAN_BGR: [f32; 3] = [103.939, 116.779, 123.68];

    pub fn imagenet() -> Self {
        Self::MeanStd { mean: Self::IMAGENET_MEAN, std: Self::IMAGENET_STD }
    }

    /// The value of channel `c` (output order) for one RGB pixel.
    #[inline]
    pub fn value(&self, rgb: [u8; 3], c: usize) -> f32 {
        match self {
            Self::MeanStd { mean, std } => (rgb[c] as f32 / 255.0 - mean[c]) / std[c],
            Self::CaffeBgr => rgb[2 - c] as f32 - Self::CAFFE_MEAN_BGR[c],
            Self::MinusOneOne => rgb[c] as f32 / 127.5 - 1.0,
            Self::Unit => rgb[c] as f32 / 255.0,
        }
    }

    /// Back to displayable RGB (for showing augmented samples).
    pub fn invert(&self, values: [f32; 3]) -> [u8; 3] {
        let mut out = [0u8; 3];
        for c in 0..3 {
            let v = match self {
                Self::MeanStd { mean, std } => (values[c] * std[c] + mean[c]) * 255.0,
                Self::CaffeBgr => values[2 - c] + Self::CAFFE_MEAN_BGR[2 - c],
                Self::MinusOneOne => (values[c] + 1.0) * 127.5,
                Self::Unit => values[c] * 255.0,
            };
            out[c] = v.round().clamp(0.0, 255.0) as u8;
        }
        out
    }

    /// `HWC u8` image to a `CHW f32` buffer.
    pub fn to_chw(&self, img: &image::RgbImage) -> Vec<f32> {
        let (w, h) = img.dimensions();
        let plane = (w * h) as usize;
        let mut out = vec![0f32; 3 * plane];
        for (i, p) in img.pixels().enumerate() {
            for c in 0..3 {
                out[c * plane + i] = self.value(p.0, c);
            }
        }
        out
    }
}

impl std::str::FromStr for Normalization {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        Ok(match s {
            "imagenet" => Self::imagenet(),
            "caffe" => Self::CaffeBgr,
            "tf" | "minus-one-one" => Self::MinusOneOne,
            "unit" => Self::Unit,
            _ => anyhow::bail!("unknown normalization '{s}' (expected imagenet, caffe, tf or unit)"),
        })
    }
}

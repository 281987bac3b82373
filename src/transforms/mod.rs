//! Augmentation and preprocessing pipelines: geometric steps on `u8` RGB images, then one
//! [`Normalization`] into a `CHW f32` tensor. Every random step draws from an RNG the caller
//! seeds, so a run is reproducible (and resumable) sample by sample.

pub mod normalize;
pub mod ops;

pub use normalize::Normalization;
pub use ops::CropBox;

use image::RgbImage;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// One geometric step.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// torchvision `RandomResizedCrop(size, scale, ratio)`.
    RandomResizedCrop { size: u32, scale: (f64, f64), ratio: (f64, f64) },
    /// torchvision `RandomHorizontalFlip(p)`.
    RandomHorizontalFlip { p: f64 },
    /// torchvision `Resize([h, w])` (both sides given: aspect ratio not kept).
    Resize { height: u32, width: u32 },
    /// torchvision `CenterCrop(size)`.
    CenterCrop { size: u32 },
    /// A uniformly placed `size x size` crop (Keras `RandomCrop`).
    RandomCrop { size: u32 },
}

impl Step {
    pub fn apply<R: Rng>(&self, img: &RgbImage, rng: &mut R) -> anyhow::Result<RgbImage> {
        Ok(match *self {
            Step::RandomResizedCrop { size, scale, ratio } => {
                let b = ops::random_resized_crop_box(rng, img.width(), img.height(), scale, ratio);
                ops::resized_crop(img, b, size, size)?
            }
            Step::RandomHorizontalFlip { p } => {
                if rng.gen_bool(p) {
                    ops::hflip(img)
                } else {
                    img.clone()
                }
            }
            Step::Resize { height, width } => ops::resize(img, height, width)?,
            Step::CenterCrop { size } => ops::center_crop(img, size, size),
            Step::RandomCrop { size } => {
                let (w, h) = img.dimensions();
                if size > w || size > h {
                    anyhow::bail!("RandomCrop({size}) is larger than the {w}x{h} image");
                }
                let top = rng.gen_range(0..=h - size);
                let left = rng.gen_range(0..=w - size);
                ops::crop(img, CropBox { top, left, height: size, width: size })
            }
        })
    }
}

/// Geometric steps followed by a normalization.
#[derive(Clone, Debug, PartialEq)]
pub struct Pipeline {
    pub steps: Vec<Step>,
    pub normalization: Normalization,
}

impl Pipeline {
    /// d2l's training augmentation: RandomResizedCrop(size) + RandomHorizontalFlip + normalize.
    pub fn d2l_train(size: u32, normalization: Normalization) -> Self {
        Self {
            steps: vec![
                Step::RandomResizedCrop { size, scale: (0.08, 1.0), ratio: (3.0 / 4.0, 4.0 / 3.0) },
                Step::RandomHorizontalFlip { p: 0.5 },
            ],
            normalization,
        }
    }

    /// d2l's test preprocessing: Resize([256, 256]) + CenterCrop(224), scaled for other sizes.
    pub fn d2l_test(size: u32, normalization: Normalization) -> Self {
        let resize = ((size as f64) * 256.0 / 224.0).round() as u32;
        Self {
            steps: vec![Step::Resize { height: resize, width: resize }, Step::CenterCrop { size }],
            normalization,
        }
    }

    /// The Keras lesson's augmentation: resize to 256, random 224 crop, random flip.
    pub fn keras_train(size: u32, normalization: Normalization) -> Self {
        let resize = ((size as f64) * 256.0 / 224.0).round() as u32;
        Self {
            steps: vec![
                Step::Resize { height: resize, width: resize },
                Step::RandomCrop { size },
                Step::RandomHorizontalFlip { p: 0.5 },
            ],
            normalization,
        }
    }

    /// The output side length, if the pipeline fixes it.
    pub fn output_size(&self) -> Option<u32> {
        self.steps.iter().rev().find_map(|s| match *s {
            Step::RandomResizedCrop { size, .. } | Step::CenterCrop { size } | Step::RandomCrop { size } => Some(size),
            Step::Resize { height, width } if height == width => Some(height),
            _ => None,
        })
    }

    /// The geometric steps only (for showing augmented images).
    pub fn augment<R: Rng>(&self, img: &RgbImage, rng: &mut R) -> anyhow::Result<RgbImage> {
        let mut out = img.clone();
        for s in &self.steps {
            out = s.apply(&out, rng)?;
        }
        Ok(out)
    }

    /// Geometric steps then normalization into a `CHW` buffer.
    pub fn apply<R: Rng>(&self, img: &RgbImage, rng: &mut R) -> anyhow::Result<Vec<f32>> {
        Ok(self.normalization.to_chw(&self.augment(img, rng)?))
    }
}

/// The RNG for one sample: independent of thread scheduling, so parallel augmentation is
/// reproducible, and a resumed run sees the same crops as an uninterrupted one.
pub fn sample_rng(seed: u64, epoch: u64, index: u64) -> ChaCha8Rng {
    // SplitMix64-style mixing of the three numbers into one seed.
    let mut z = seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ index.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ChaCha8Rng::seed_from_u64(z ^ (z >> 31))
}

//! Geometric image transforms with torchvision semantics, driven by an explicit seeded RNG.
//! Resampling is Pillow-style antialiased bilinear (fast_image_resize's convolution), the
//! filter torchvision applies to PIL images.

use anyhow::Context;
use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::RgbImage;
use rand::Rng;

/// A crop box: top-left corner and size, in pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CropBox {
    pub top: u32,
    pub left: u32,
    pub height: u32,
    pub width: u32,
}

/// Resize the `crop` region of `img` to `height x width` (bilinear, antialiased).
pub fn resized_crop(img: &RgbImage, crop: CropBox, height: u32, width: u32) -> anyhow::Result<RgbImage> {
    let src = ImageRef::new(img.width(), img.height(), img.as_raw(), PixelType::U8x3).context("wrapping the image for resizing")?;
    let mut dst = Image::new(width, height, PixelType::U8x3);
    let opts = ResizeOptions::new()
        .resize_alg(ResizeAlg::Convolution(FilterType::Bilinear))
        .crop(crop.left as f64, crop.top as f64, crop.width as f64, crop.height as f64);
    Resizer::new().resize(&src, &mut dst, &opts).context("resizing")?;
    RgbImage::from_raw(width, height, dst.into_vec()).context("resized buffer has the wrong size")
}

pub fn resize(img: &RgbImage, height: u32, width: u32) -> anyhow::Result<RgbImage> {
    let full = CropBox { top: 0, left: 0, height: img.height(), width: img.width() };
    resized_crop(img, full, height, width)
}

/// torchvision `CenterCrop`: the offset rounds like `int(round((H - h) / 2))`; pads with zeros
/// when the crop is larger than the image.
pub fn center_crop(img: &RgbImage, height: u32, width: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    if height > h || width > w {
        let mut padded = RgbImage::new(width.max(w), height.max(h));
        let (px, py) = ((width.max(w) - w) / 2, (height.max(h) - h) / 2);
        image::imageops::replace(&mut padded, img, px as i64, py as i64);
        return center_crop(&padded, height, width);
    }
    let top = ((h - height) as f64 / 2.0).round() as u32;
    let left = ((w - width) as f64 / 2.0).round() as u32;
    image::imageops::crop_imm(img, left, top, width, height).to_image()
}

pub fn crop(img: &RgbImage, b: CropBox) -> RgbImage {
    image::imageops::crop_imm(img, b.left, b.top, b.width, b.height).to_image()
}

pub fn hflip(img: &RgbImage) -> RgbImage {
    image::imageops::flip_horizontal(img)
}

/// torchvision `RandomResizedCrop.get_params`: 10 tries at a random area/aspect, then the
/// centre crop clamped to the ratio range.
pub fn random_resized_crop_box<R: Rng>(rng: &mut R, width: u32, height: u32, scale: (f64, f64), ratio: (f64, f64)) -> CropBox {
    let area = (width * height) as f64;
    let (log_lo, log_hi) = (ratio.0.ln(), ratio.1.ln());
    for _ in 0..10 {
        let target = area * rng.gen_range(scale.0..=scale.1);
        let aspect = rng.gen_range(log_lo..=log_hi).exp();
        let w = (target * aspect).sqrt().round() as i64;
        let h = (target / aspect).sqrt().round() as i64;
        if 0 < w && w <= width as i64 && 0 < h && h <= height as i64 {
            let top = rng.gen_range(0..=(height as i64 - h)) as u32;
            let left = rng.gen_range(0..=(width as i64 - w)) as u32;
            return CropBox { top, left, height: h as u32, width: w as u32 };
        }
    }
    let in_ratio = width as f64 / height as f64;
    let (w, h) = if in_ratio < ratio.0 {
        (width, ((width as f64 / ratio.0).round() as u32).min(height))
    } else if in_ratio > ratio.1 {
        (((height as f64 * ratio.1).round() as u32).min(width), height)
    } else {
        (width, height)
    };
    CropBox { top: (height - h) / 2, left: (width - w) / 2, height: h, width: w }
}

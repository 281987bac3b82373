//! Untrusted upload bytes to an RGB image, or an [`ApiError`] saying what is wrong with them.
//!
//! Two guards the `image` crate alone does not give a server:
//! - a decompression bomb (a few KB of PNG declaring 30,000 x 30,000 px = 2.7 GB of RGB) is
//!   refused from its header before any pixel buffer is allocated; the budget counts the
//!   decoder's buffer *and* the RGB copy made from any other pixel format (a greyscale PNG of
//!   11,000 x 11,000 px passed the side limit and then held ~730 MB per decoding thread);
//! - a truncated JPEG (an upload cut off mid-transfer) decodes *without error* in `image` 0.25,
//!   the missing rows coming out grey, so it is checked structurally: the segments are walked
//!   from SOI to the EOI marker, and running out of bytes first means the file was cut.

use super::error::ApiError;
use image::{ImageDecoder, ImageFormat, ImageReader, Limits, RgbImage};
use std::io::Cursor;

/// What one upload may decode to.
#[derive(Clone, Copy, Debug)]
pub struct DecodeLimits {
    /// Largest width and height (px). 12,000 admits a 108 MP phone photo (12,000 x 9,000).
    pub max_side: u32,
    /// Largest memory one decode may take (bytes): the decoder's buffer plus the RGB copy.
    pub max_alloc: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        // 12,000 x 9,000 RGB is 324 MB; the limit sits just above it.
        Self { max_side: 12_000, max_alloc: 400 << 20 }
    }
}

/// Decode an uploaded image (JPEG, PNG, WebP, BMP or GIF; the format is sniffed from the bytes).
pub fn decode_upload(bytes: &[u8], limits: DecodeLimits) -> Result<RgbImage, ApiError> {
    if bytes.is_empty() {
        return Err(ApiError::bad_request("empty body: send the image bytes (JPEG, PNG, WebP, BMP or GIF)"));
    }
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| ApiError::bad_request(format!("cannot read the upload: {e}")))?;
    let Some(format) = reader.format() else {
        return Err(ApiError::bad_request(format!(
            "not an image: the {} bytes sent are not JPEG, PNG, WebP, BMP or GIF (they start with {})",
            bytes.len(),
            hex_prefix(bytes)
        )));
    };
    if format == ImageFormat::Jpeg {
        check_jpeg_complete(bytes)?;
    }
    let mut l = Limits::default();
    l.max_image_width = Some(limits.max_side);
    l.max_image_height = Some(limits.max_side);
    l.max_alloc = Some(limits.max_alloc);
    reader.limits(l);
    let decoder = match reader.into_decoder() {
        Ok(d) => d,
        Err(image::ImageError::Limits(e)) => {
            return Err(ApiError::payload_too_large(format!("{format:?} header refused by the decoder's limits ({e}): decompression-bomb guard")))
        }
        Err(e) => return Err(ApiError::bad_request(format!("not a readable {format:?} image: {e}"))),
    };
    let (w, h) = decoder.dimensions();
    if w > limits.max_side || h > limits.max_side {
        return Err(too_large(w, h, limits));
    }
    let color = decoder.color_type();
    let rgb_copy = if color == image::ColorType::Rgb8 { 0 } else { w as u64 * h as u64 * 3 };
    let need = decoder.total_bytes().saturating_add(rgb_copy);
    if need > limits.max_alloc {
        return Err(ApiError::payload_too_large(format!(
            "image is {w} x {h} px {color:?}: decoding it and converting it to RGB needs {} MiB, over the limit of {} MiB (decompression-bomb guard)",
            need.div_ceil(1 << 20),
            limits.max_alloc >> 20
        )));
    }
    match image::DynamicImage::from_decoder(decoder) {
        Ok(img) => Ok(img.into_rgb8()),
        Err(image::ImageError::Limits(e)) => Err(ApiError::payload_too_large(format!(
            "{w} x {h} px {format:?} image refused by the decoder's limits ({e}): decompression-bomb guard"
        ))),
        Err(e) => Err(ApiError::bad_request(format!("not a valid {format:?} image ({w} x {h} px): {e}"))),
    }
}

fn too_large(w: u32, h: u32, limits: DecodeLimits) -> ApiError {
    ApiError::payload_too_large(format!(
        "image is {w} x {h} px, over the limit of {m} x {m} px (decompression-bomb guard)",
        m = limits.max_side
    ))
}

fn hex_prefix(bytes: &[u8]) -> String {
    bytes.iter().take(8).map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" ")
}

/// The walk of [`crate::data::decode::check_jpeg_complete`] (the same check the training data
/// gets), as a 400 answer. Bytes after EOI (a phone's appended motion-photo video) are allowed.
pub fn check_jpeg_complete(b: &[u8]) -> Result<(), ApiError> {
    crate::data::decode::check_jpeg_complete(b).map_err(|e| ApiError::bad_request(format!("{e}: was the upload cut off?")))
}

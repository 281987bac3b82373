//! Untrusted upload bytes to an RGB image, or an [`ApiError`] saying what is wrong with them.
//!
//! Two guards the `image` crate alone does not give a server:
//! - a decompression bomb (a few KB of PNG declaring 30,000 x 30,000 px = 2.7 GB of RGB) is
//!   refused from its header by `image::Limits` before any pixel buffer is allocated;
//! - a truncated JPEG (an upload cut off mid-transfer) decodes *without error* in `image` 0.25,
//!   the missing rows coming out grey, so it is checked structurally: the segments are walked
//!   from SOI to the EOI marker, and running out of bytes first means the file was cut.

use super::error::ApiError;
use image::{ImageFormat, ImageReader, Limits, RgbImage};
use std::io::Cursor;

/// What one upload may decode to.
#[derive(Clone, Copy, Debug)]
pub struct DecodeLimits {
    /// Largest width and height (px). 12,000 admits a 108 MP phone photo (12,000 x 9,000).
    pub max_side: u32,
    /// Largest buffer the decoder may allocate (bytes).
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
    let reader = ImageReader::new(Cursor::new(bytes))
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
    let (w, h) = match reader.into_dimensions() {
        Ok(d) => d,
        Err(image::ImageError::Limits(e)) => {
            return Err(ApiError::payload_too_large(format!("{format:?} header refused by the decoder's limits ({e}): decompression-bomb guard")))
        }
        Err(e) => return Err(ApiError::bad_request(format!("not a readable {format:?} image: {e}"))),
    };
    if w > limits.max_side || h > limits.max_side {
        return Err(too_large(w, h, limits));
    }
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut l = Limits::default();
    l.max_image_width = Some(limits.max_side);
    l.max_image_height = Some(limits.max_side);
    l.max_alloc = Some(limits.max_alloc);
    reader.limits(l);
    match reader.decode() {
        Ok(img) => Ok(img.to_rgb8()),
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

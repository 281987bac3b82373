//! Untrusted upload bytes to an RGB image, or an [`ApiError`] saying what is wrong with them:
//! the decode of the training photos ([`crate::data::decode`]: decompression bombs refused
//! from the header, the RGB copy counted; truncated JPEGs refused), as HTTP answers.

use super::error::ApiError;
pub use crate::data::decode::DecodeLimits;
use crate::data::decode::{decode_bytes, DecodeError};
use image::RgbImage;

/// Decode an uploaded image (JPEG, PNG, WebP, BMP or GIF; the format is sniffed from the
/// bytes) with [`crate::data::decode::decode_bytes`]: over the limits is 413, anything else
/// wrong with the bytes 400.
pub fn decode_upload(bytes: &[u8], limits: DecodeLimits) -> Result<RgbImage, ApiError> {
    if bytes.is_empty() {
        return Err(ApiError::bad_request("empty body: send the image bytes (JPEG, PNG, WebP, BMP or GIF)"));
    }
    decode_bytes(bytes, limits).map_err(|e| match e {
        DecodeError::TooLarge(m) => ApiError::payload_too_large(m),
        DecodeError::Invalid(m) if m.starts_with("truncated") => ApiError::bad_request(format!("{m}: was the upload cut off?")),
        DecodeError::Invalid(m) => ApiError::bad_request(m),
    })
}

/// The walk of [`crate::data::decode::check_jpeg_complete`] (the same check the training data
/// gets), as a 400 answer. Bytes after EOI (a phone's appended motion-photo video) are allowed.
pub fn check_jpeg_complete(b: &[u8]) -> Result<(), ApiError> {
    crate::data::decode::check_jpeg_complete(b).map_err(|e| ApiError::bad_request(format!("{e}: was the upload cut off?")))
}

//! Decoding one image file, refusing truncated data. The `image` crate decodes a JPEG cut
//! short (for instance the first 2 KB of a photo) without an error, filling the missing part
//! with grey; Pillow refuses it ("image file is truncated"). So a JPEG's marker structure is
//! walked first: every segment must be whole and the entropy-coded data must reach the EOI
//! marker. PNG and the other formats already fail in their decoders when cut short.

use anyhow::{bail, Context};
use image::RgbImage;
use std::path::Path;

/// Check that JPEG data (starting with SOI, `FF D8`) is complete: segments are walked by
/// their lengths (so an EXIF thumbnail's own EOI inside APP1 is skipped), each scan's
/// entropy-coded data is read up to the next marker, and the image must end with EOI.
pub fn check_jpeg_complete(bytes: &[u8]) -> Result<(), String> {
    let truncated = |what: &str| Err(format!("truncated JPEG ({} bytes, {what})", bytes.len()));
    if bytes.len() < 4 || bytes[0] != 0xFF || bytes[1] != 0xD8 {
        return Err("not a JPEG (no SOI marker)".into());
    }
    let mut i = 2;
    loop {
        // Fill bytes (FF FF ...) may precede a marker.
        while i < bytes.len() && bytes[i] == 0xFF && i + 1 < bytes.len() && bytes[i + 1] == 0xFF {
            i += 1;
        }
        if i + 1 >= bytes.len() {
            return truncated("no EOI marker");
        }
        if bytes[i] != 0xFF {
            return Err(format!("corrupt JPEG: expected a marker at byte {i}"));
        }
        let marker = bytes[i + 1];
        i += 2;
        match marker {
            0xD9 => return Ok(()),
            // Markers without a length: TEM, RSTn.
            0x01 | 0xD0..=0xD7 => continue,
            _ => {}
        }
        if i + 2 > bytes.len() {
            return truncated("a segment header is cut");
        }
        let len = u16::from_be_bytes([bytes[i], bytes[i + 1]]) as usize;
        if len < 2 {
            return Err(format!("corrupt JPEG: segment length {len} at byte {i}"));
        }
        if i + len > bytes.len() {
            return truncated("a segment is cut");
        }
        i += len;
        if marker == 0xDA {
            // Entropy-coded data: runs to the next marker that is neither a stuffed FF 00 nor
            // a restart marker.
            loop {
                if i + 1 >= bytes.len() {
                    return truncated("the image data stops before its end");
                }
                if bytes[i] == 0xFF && bytes[i + 1] != 0x00 && !(0xD0..=0xD7).contains(&bytes[i + 1]) && bytes[i + 1] != 0xFF {
                    break;
                }
                i += 1;
            }
        }
    }
}

/// Decode an image file to RGB; a truncated or corrupt file is an error naming it.
pub fn decode_image(path: &Path) -> anyhow::Result<RgbImage> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if bytes.starts_with(&[0xFF, 0xD8]) {
        if let Err(e) = check_jpeg_complete(&bytes) {
            bail!("{}: {e}", path.display());
        }
    }
    let img = image::load_from_memory(&bytes).with_context(|| format!("{}: cannot decode", path.display()))?;
    Ok(img.to_rgb8())
}

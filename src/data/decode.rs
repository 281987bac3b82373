//! Decoding one image (a training photo, a file to predict, an upload to serve), refusing what
//! the `image` crate alone would take:
//! - truncated data: `image` decodes a JPEG cut short (for instance the first 2 KB of a photo)
//!   without an error, filling the missing part with grey; Pillow refuses it ("image file is
//!   truncated"). So a JPEG's marker structure is walked first: every segment must be whole and
//!   the entropy-coded data must reach the EOI marker. A JPEG cut short with an EOI appended
//!   passes that walk, and `image`'s decoder (zune-jpeg) makes the rows it has no data for up
//!   from zero bits: JPEGs are decoded by zune-jpeg with `image`'s own options in strict mode,
//!   on the data without that marker, so a scan that runs out is an error ([`decode_jpeg`]).
//!   PNG and the other formats already fail in their decoders when cut short.
//! - decompression bombs: a 388 KB greyscale PNG declaring 20,000 x 20,000 px passed the
//!   decoder's own limits, then its RGB conversion allocated 1.2 GB (a panic in `image` under
//!   a memory cap). The size is checked from the header against [`DecodeLimits`], counting the
//!   decoder's buffer *and* the RGB copy, before any pixel buffer exists.

use anyhow::Context;
use image::{ImageDecoder, ImageFormat, ImageReader, RgbImage};
use std::io::Cursor;
use std::path::Path;

/// What one image may decode to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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

/// Why an image was not decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Over [`DecodeLimits`] (seen from the header: nothing was allocated for it).
    #[error("{0}")]
    TooLarge(String),
    /// Not an image, an unknown format, corrupt or cut short.
    #[error("{0}")]
    Invalid(String),
}

/// Decode image bytes (JPEG, PNG, WebP, BMP or GIF; the format is sniffed) to RGB within
/// `limits`.
pub fn decode_bytes(bytes: &[u8], limits: DecodeLimits) -> Result<RgbImage, DecodeError> {
    use DecodeError::{Invalid, TooLarge};
    if bytes.is_empty() {
        return Err(Invalid("empty: no image bytes (JPEG, PNG, WebP, BMP or GIF)".into()));
    }
    let mut reader = ImageReader::new(Cursor::new(bytes)).with_guessed_format().map_err(|e| Invalid(format!("cannot read the image: {e}")))?;
    let Some(format) = reader.format() else {
        let start = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" ");
        return Err(Invalid(format!("not an image: the {} bytes are not JPEG, PNG, WebP, BMP or GIF (they start with {start})", bytes.len())));
    };
    if format == ImageFormat::Jpeg {
        check_jpeg_complete(bytes).map_err(Invalid)?;
    }
    // The size from the header alone, before the decoder's own limits (which would refuse
    // it without saying how large it is).
    let (w, h) = ImageReader::with_format(Cursor::new(bytes), format).into_dimensions().map_err(|e| Invalid(format!("not a readable {format:?} image: {e}")))?;
    if w > limits.max_side || h > limits.max_side {
        return Err(TooLarge(format!("image is {w} x {h} px, over the limit of {m} x {m} px (decompression-bomb guard)", m = limits.max_side)));
    }
    let mut l = image::Limits::default();
    l.max_image_width = Some(limits.max_side);
    l.max_image_height = Some(limits.max_side);
    l.max_alloc = Some(limits.max_alloc);
    reader.limits(l);
    let decoder = match reader.into_decoder() {
        Ok(d) => d,
        Err(image::ImageError::Limits(e)) => return Err(TooLarge(format!("{format:?} header refused by the decoder's limits ({e}): decompression-bomb guard"))),
        Err(e) => return Err(Invalid(format!("not a readable {format:?} image: {e}"))),
    };
    let (w, h) = decoder.dimensions();
    let color = decoder.color_type();
    let rgb_copy = if color == image::ColorType::Rgb8 { 0 } else { w as u64 * h as u64 * 3 };
    let need = decoder.total_bytes().saturating_add(rgb_copy);
    if need > limits.max_alloc {
        return Err(TooLarge(format!(
            "image is {w} x {h} px {color:?}: decoding it and converting it to RGB needs {} MiB, over the limit of {} MiB (decompression-bomb guard)",
            need.div_ceil(1 << 20),
            limits.max_alloc >> 20
        )));
    }
    if format == ImageFormat::Jpeg {
        if let Some(img) = decode_jpeg(bytes).map_err(Invalid)? {
            return Ok(img);
        }
    }
    match image::DynamicImage::from_decoder(decoder) {
        Ok(img) => Ok(img.into_rgb8()),
        Err(image::ImageError::Limits(e)) => Err(TooLarge(format!("{w} x {h} px {format:?} image refused by the decoder's limits ({e}): decompression-bomb guard"))),
        Err(e) => Err(Invalid(format!("not a valid {format:?} image ({w} x {h} px): {e}"))),
    }
}

/// Check that JPEG data (starting with SOI, `FF D8`) is complete: segments are walked by
/// their lengths (so an EXIF thumbnail's own EOI inside APP1 is skipped), each scan's
/// entropy-coded data is read up to the next marker, and the image must end with EOI.
pub fn check_jpeg_complete(bytes: &[u8]) -> Result<(), String> {
    jpeg_end(bytes).map(|_| ())
}

/// [`check_jpeg_complete`]'s walk, returning where the EOI marker that ends the image starts.
fn jpeg_end(bytes: &[u8]) -> Result<usize, String> {
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
            0xD9 => return Ok(i - 2),
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

/// Decode a JPEG (already checked by [`check_jpeg_complete`] and sized within the limits) as
/// `image` does, refusing image data that runs out before the last row. zune-jpeg (`image`'s
/// decoder) feeds zero bits once it meets the EOI marker, so a JPEG cut short with an EOI
/// appended decodes to made-up rows. Here it gets the data without that marker, followed by
/// [`JPEG_PAD`] zero bytes (room for its read-ahead, never consumed by a whole image), in
/// strict mode: a scan that needs more, or whose codes break, is an error. `Ok(None)`: strict mode objects to
/// something else (stray bytes between segments, a progressive or multi-scan layout it wants
/// to end on a marker), for `image`'s lenient decoder to take as before.
pub fn decode_jpeg(bytes: &[u8]) -> Result<Option<RgbImage>, String> {
    use zune_core::{bytestream::ZCursor, colorspace::ColorSpace, options::DecoderOptions};
    use zune_jpeg::errors::DecodeErrors;
    let end = jpeg_end(bytes)?;
    let mut data = Vec::with_capacity(end + JPEG_PAD);
    data.extend_from_slice(&bytes[..end]);
    data.resize(end + JPEG_PAD, 0);
    let options = DecoderOptions::default().set_strict_mode(true).set_max_width(usize::MAX).set_max_height(usize::MAX);
    let mut decoder = zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(data.as_slice()), options);
    if decoder.decode_headers().is_err() {
        return Ok(None);
    }
    let (Some((w, h)), Some(input)) = (decoder.dimensions(), decoder.input_colorspace()) else { return Ok(None) };
    // `image`'s choice of output (codecs/jpeg/decoder.rs): RGB, RGBA, grey and grey+alpha as
    // they are, anything else (YCbCr, CMYK, ...) converted to RGB by the decoder.
    let out = match input {
        ColorSpace::RGB | ColorSpace::RGBA | ColorSpace::Luma | ColorSpace::LumaA => input,
        _ => ColorSpace::RGB,
    };
    decoder.set_options(decoder.options().jpeg_set_out_colorspace(out));
    let cut = |e: &DecodeErrors| format!("truncated or corrupt JPEG ({} bytes): the image data ends or breaks before its last row ({e})", bytes.len());
    let pixels = match decoder.decode() {
        Ok(p) => p,
        // Bits or codes running out, or codes that decode to nothing: rows the data cannot make.
        Err(e @ (DecodeErrors::ExhaustedData | DecodeErrors::HuffmanDecode(_) | DecodeErrors::MCUError(_))) => return Err(cut(&e)),
        // Strict mode's own objection (stray bytes before a marker) is not broken data.
        Err(e @ DecodeErrors::FormatStatic(m)) if !m.starts_with("[strict-mode]") => return Err(cut(&e)),
        // The bit reader's own: "Code length N more than bits left M", "Bad Huffman Code ...".
        Err(DecodeErrors::Format(m)) if m.contains("bits left") || m.contains("Huffman") => return Err(cut(&DecodeErrors::Format(m))),
        Err(_) => return Ok(None),
    };
    let (w, h) = (w as u32, h as u32);
    let bad = || format!("JPEG decoder returned a buffer that does not fit {w} x {h} px {out:?}");
    use image::{DynamicImage, ImageBuffer};
    let img = match out {
        ColorSpace::RGB => DynamicImage::ImageRgb8(ImageBuffer::from_raw(w, h, pixels).ok_or_else(bad)?),
        ColorSpace::RGBA => DynamicImage::ImageRgba8(ImageBuffer::from_raw(w, h, pixels).ok_or_else(bad)?),
        ColorSpace::Luma => DynamicImage::ImageLuma8(ImageBuffer::from_raw(w, h, pixels).ok_or_else(bad)?),
        _ => DynamicImage::ImageLumaA8(ImageBuffer::from_raw(w, h, pixels).ok_or_else(bad)?),
    };
    Ok(Some(img.into_rgb8()))
}

/// Zero bytes after a JPEG's image data for [`decode_jpeg`]: zune-jpeg reads at most 8 bytes
/// ahead of what it decodes; a cut that loses fewer bytes than this goes unseen (a sliver of
/// the last row).
const JPEG_PAD: usize = 64;

/// Decode an image file to RGB within the default [`DecodeLimits`]; a truncated, corrupt or
/// too large file is an error naming it.
pub fn decode_image(path: &Path) -> anyhow::Result<RgbImage> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    decode_bytes(&bytes, DecodeLimits::default()).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

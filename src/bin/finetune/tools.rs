//! Looking around: info, peek, bench, download.

use crate::args::{self, choice, COUNT, CacheArgs, ComputeArgs, DataArgs, IMAGE_SIZE};
use anyhow::{bail, Context};
use candle_core::Device;
use clap::Args;
use std::path::PathBuf;
use transfer_workbook::checkpoint::{load_model, WeightsSource};
use transfer_workbook::data::{hotdog, ImageFolder};
use transfer_workbook::models::{Arch, BnMode, Classifier, Freeze, ModelOptions};
use transfer_workbook::tasks::bench::BenchConfig;
use transfer_workbook::ops::Precision;

#[derive(Args)]
pub struct InfoArgs {
    #[arg(long, default_value = "resnet18", value_parser = choice::<Arch>())]
    backbone: Arch,
    /// Pretrained weights to inspect (default: random weights, same shapes).
    #[arg(long)]
    weights: Option<String>,
    #[command(flatten)]
    cache: CacheArgs,
}

/// The head, the parameter counts, and what each `--freeze` leaves trainable.
pub fn info(a: InfoArgs) -> anyhow::Result<()> {
    let arch = a.backbone;
    let model = match &a.weights {
        Some(w) => load_model(&WeightsSource::parse(w), Some(arch), &Device::Cpu, a.cache.hub().as_deref())?,
        None => Classifier::scratch(&ModelOptions::new(arch, transfer_workbook::util::imagenet::class_names()), &Device::Cpu)?,
    };
    println!("backbone: {arch} (normalization {:?})", arch.normalization());
    println!("{}: {}", arch.head_prefix(), model.head_description());
    let (total, _) = model.parameter_counts();
    println!("parameters: {total}");
    for freeze in [Freeze::Nothing, Freeze::Below(arch.default_unfreeze_from()), Freeze::Backbone] {
        let m = model.rebuild(freeze.clone(), BnMode::Train)?;
        let (_, trainable) = m.parameter_counts();
        println!("trainable with --freeze {:<10} {trainable}", freeze.to_string());
    }
    println!("blocks (input side first): {}", arch.blocks().join(", "));
    Ok(())
}

#[derive(Args)]
pub struct PeekArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Which split to show.
    #[arg(long, default_value = "train")]
    split: String,
    #[arg(long, default_value = "runs/peek.png")]
    out: PathBuf,
}

pub fn peek(a: PeekArgs) -> anyhow::Result<()> {
    let dir = a.data.dir()?;
    let ds = ImageFolder::load(dir.join(&a.split))?;
    eprintln!("{}", ds.summary());
    if let Some(parent) = a.out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    transfer_workbook::plot::save_peek(&ds, &a.out)?;
    println!("wrote {} (top: first 8 of '{}', bottom: last 8 of '{}')", a.out.display(), ds.classes[0], ds.classes[ds.classes.len() - 1]);
    Ok(())
}

#[derive(Args)]
pub struct BenchArgs {
    /// Backbones, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "resnet18,efficientnet-lite0", value_parser = choice::<Arch>())]
    backbone: Vec<Arch>,
    #[arg(long, default_value_t = 32, value_parser = COUNT)]
    batch_size: usize,
    /// Image size in pixels (default: each backbone's own, 224; efficientnet-lite1 240, efficientnet-lite2 260).
    #[arg(long, value_parser = IMAGE_SIZE)]
    image_size: Option<u32>,
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    #[arg(long, default_value_t = 3)]
    steps: usize,
    #[arg(long, default_value = "none")]
    freeze: Freeze,
    #[command(flatten)]
    compute: ComputeArgs,
    /// Run depthwise convolutions through Candle's grouped conv (the "before" of the benchmark).
    #[arg(long)]
    candle_depthwise: bool,
    /// Also time one real epoch on this data folder: decode DIR/train, then augment + train.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Append the results as JSON lines to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// One JSON line per result, appended to `--json FILE` when given.
fn append_json(path: &Option<PathBuf>, value: &impl serde::Serialize) -> anyhow::Result<()> {
    if let Some(p) = path {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(p).with_context(|| format!("opening {}", p.display()))?;
        writeln!(f, "{}", serde_json::to_string(value)?)?;
    }
    Ok(())
}

/// Training steps and inference on random data, and optionally one epoch on photos.
pub fn bench(a: BenchArgs) -> anyhow::Result<()> {
    let (device, mut kernels) = a.compute.resolve()?;
    kernels.candle_depthwise = a.candle_depthwise;
    for &arch in &a.backbone {
        crate::args::fits(a.batch_size, a.image_size.unwrap_or(arch.default_image_size()), true)?;
    }
    if a.steps == 0 && a.data.is_none() {
        bail!("--steps 0 times no training step: give --steps N, or --data DIR to time only an epoch on photos");
    }
    if a.compute.precision == Precision::Bf16 {
        println!("convolutions in bf16 (bf16 products, f32 sums)");
    }
    println!("{:<20} {:>8} {:>6} {:>6} {:>12} {:>10} {:>12}", "backbone", "device", "batch", "size", "train img/s", "step ms", "infer img/s");
    // `--steps 0`: only the epoch on real photos (with --data).
    for &arch in a.backbone.iter().filter(|_| a.steps > 0) {
        let c = BenchConfig { batch_size: a.batch_size, image_size: a.image_size.unwrap_or(arch.default_image_size()), freeze: a.freeze.clone(), kernels, warmup: a.warmup, steps: a.steps };
        let r = transfer_workbook::tasks::bench::bench_model(arch, &device, &c)?;
        println!(
            "{:<20} {:>8} {:>6} {:>6} {:>12.1} {:>10.0} {:>12.1}",
            r.backbone, r.device, r.batch_size, r.image_size, r.train_img_per_sec, r.train_step_ms, r.eval_img_per_sec
        );
        append_json(&a.json, &r)?;
    }
    if let Some(dir) = &a.data {
        for &arch in &a.backbone {
            let r = transfer_workbook::tasks::bench::bench_epoch(arch, &device, kernels, dir, a.batch_size, a.image_size.unwrap_or(arch.default_image_size()))?;
            println!(
                "{:<20} epoch on {}: decode {:.1} s, augment + train {:.1} s for {} photos ({:.1} img/s)",
                r.backbone,
                transfer_workbook::util::paths::shown(dir),
                r.decode_seconds,
                r.epoch_seconds,
                r.images,
                r.epoch_img_per_sec
            );
            append_json(&a.json, &r)?;
        }
    }
    Ok(())
}

#[derive(Args)]
#[command(after_help = args::ENVIRONMENT)]
pub struct DownloadArgs {
    /// hotdog: d2l's hotdog.zip (train/ and test/); flowers: TensorFlow's flower_photos.tgz
    /// (5 classes, unsplit: train on it with --split 0.8,0.1,0.1).
    #[arg(long, default_value = "hotdog", value_parser = ["hotdog", "flowers"])]
    dataset: String,
    #[command(flatten)]
    cache: CacheArgs,
}

/// A data set into the cache (checked, then unpacked); prints its folder.
pub fn download(a: DownloadArgs) -> anyhow::Result<()> {
    let dir = match a.dataset.as_str() {
        "flowers" => transfer_workbook::data::flowers(&a.cache.data()).context("getting TensorFlow's flower photos")?,
        _ => hotdog(&a.cache.data())?,
    };
    println!("{}", dir.display());
    Ok(())
}

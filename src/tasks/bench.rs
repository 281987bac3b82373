//! Throughput of a full training step (forward, backward, optimizer) and of inference on
//! random data, and of the data pipeline alone. Timings, never asserted in tests.

use crate::data::{ImageFolder, Loader};
use crate::models::{Arch, Classifier, Freeze, ModelOptions};
use crate::ops::Kernels;
use crate::transforms::Pipeline;
use crate::train::metrics::{cross_entropy, Reduction};
use crate::train::{recipes, Optimizer};
use candle_core::{Device, Tensor};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

#[derive(Clone, Debug, serde::Serialize)]
pub struct BenchResult {
    pub backbone: String,
    pub device: String,
    pub batch_size: usize,
    pub image_size: u32,
    pub freeze: String,
    pub train_img_per_sec: f64,
    pub train_step_ms: f64,
    pub eval_img_per_sec: f64,
}

fn sync(t: &Tensor) -> candle_core::Result<()> {
    // Reading a scalar back waits for queued GPU work.
    t.sum_all()?.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>().map(|_| ())
}

/// What [`bench_model`] times: `steps` training steps and `steps` inference batches after
/// `warmup` untimed ones, at this batch and size, on these kernels.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    pub batch_size: usize,
    pub image_size: u32,
    pub freeze: Freeze,
    pub kernels: Kernels,
    pub warmup: usize,
    pub steps: usize,
}

impl Default for BenchConfig {
    /// `finetune bench`'s defaults: batch 32 at 224 px, everything trained, 1 + 3 steps.
    fn default() -> Self {
        Self { batch_size: 32, image_size: 224, freeze: Freeze::Nothing, kernels: Kernels::default(), warmup: 1, steps: 3 }
    }
}

/// Time training steps and inference batches of `arch` on random data (see [`BenchConfig`]).
pub fn bench_model(arch: Arch, device: &Device, c: &BenchConfig) -> anyhow::Result<BenchResult> {
    let (batch, image_size, freeze, warmup, steps) = (c.batch_size, c.image_size, &c.freeze, c.warmup, c.steps);
    let opts = ModelOptions { freeze: freeze.clone(), kernels: c.kernels, ..ModelOptions::new(arch, vec!["0".into(), "1".into()]) };
    let model = Classifier::scratch(&opts, device)?;
    let phase = recipes::d2l_finetune(1);
    let mut opt = Optimizer::new(phase.optimizer.clone(), model.param_groups(1e-5, 10.0));
    let size = image_size as usize;
    let x = Tensor::randn(0f32, 1f32, (batch, 3, size, size), device)?;
    let y = Tensor::from_vec((0..batch as u32).map(|i| i % 2).collect::<Vec<_>>(), batch, device)?;
    let mut train_secs = 0.0;
    for i in 0..warmup + steps {
        let t0 = Instant::now();
        let loss = cross_entropy(&model.forward_t(&x, true)?, &y, Reduction::Sum)?;
        opt.backward_step(&loss)?;
        sync(&loss)?;
        if i >= warmup {
            train_secs += t0.elapsed().as_secs_f64();
        }
    }
    let mut eval_secs = 0.0;
    for i in 0..warmup + steps {
        let t0 = Instant::now();
        sync(&model.forward_t(&x, false)?)?;
        if i >= warmup {
            eval_secs += t0.elapsed().as_secs_f64();
        }
    }
    let n = (steps * batch) as f64;
    Ok(BenchResult {
        backbone: arch.name().into(),
        device: crate::device_label(device),
        batch_size: batch,
        image_size,
        freeze: freeze.to_string(),
        train_img_per_sec: n / train_secs,
        train_step_ms: 1000.0 * train_secs / steps as f64,
        eval_img_per_sec: n / eval_secs,
    })
}

/// One real training epoch on a data folder, as a user runs it: decode every photo of
/// `DIR/train`, then d2l's augmentation and a training step per batch (the loader prepares the
/// next batch while one trains).
#[derive(Clone, Debug, serde::Serialize)]
pub struct EpochBench {
    pub backbone: String,
    pub batch_size: usize,
    pub image_size: u32,
    pub images: usize,
    /// Reading and decoding the JPEGs.
    pub decode_seconds: f64,
    /// Augmentation + training over all the photos (decode excluded).
    pub epoch_seconds: f64,
    pub epoch_img_per_sec: f64,
}

/// Time decode, then one epoch of d2l fine-tuning steps of `arch` (random weights: speed does
/// not depend on them) on `data/train`.
pub fn bench_epoch(arch: Arch, device: &Device, kernels: Kernels, data: &Path, batch: usize, image_size: u32) -> anyhow::Result<EpochBench> {
    let t0 = Instant::now();
    let ds = Arc::new(ImageFolder::load(data.join("train"))?);
    let decode_seconds = t0.elapsed().as_secs_f64();
    let model = Classifier::scratch(&ModelOptions { kernels, ..ModelOptions::new(arch, ds.classes.clone()) }, device)?;
    let phase = recipes::d2l_finetune(1);
    let mut opt = Optimizer::new(phase.optimizer.clone(), model.param_groups(phase.lr, phase.head_lr_mult));
    let pipeline = Arc::new(Pipeline::d2l_train(image_size, arch.normalization()));
    let t1 = Instant::now();
    let mut n = 0;
    for b in Loader::new(ds.clone(), pipeline, batch, true, 0, 0) {
        let b = b?;
        let logits = model.forward_t(&b.images.to_device(device)?, true)?;
        let loss = cross_entropy(&logits, &b.labels.to_device(device)?, Reduction::Sum)?;
        opt.backward_step(&loss)?;
        sync(&loss)?;
        n += b.len;
    }
    let epoch_seconds = t1.elapsed().as_secs_f64();
    Ok(EpochBench {
        backbone: arch.name().into(),
        batch_size: batch,
        image_size,
        images: n,
        decode_seconds,
        epoch_seconds,
        epoch_img_per_sec: n as f64 / epoch_seconds,
    })
}

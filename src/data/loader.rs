//! Batches for one epoch: a seeded shuffle, per-sample seeded augmentation in parallel
//! (rayon), and a producer thread that prepares the next batch while the current one trains.

use super::ImageFolder;
use crate::transforms::{sample_rng, Pipeline};
use candle_core::Tensor;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;

/// Images `[B, 3, H, W]` and labels `[B]` (u32), on the CPU.
pub struct Batch {
    pub images: Tensor,
    pub labels: Tensor,
    pub len: usize,
}

impl Batch {
    /// The images and labels on `device` (a copy off the CPU; the same tensors on it).
    pub fn on(&self, device: &candle_core::Device) -> candle_core::Result<(Tensor, Tensor)> {
        Ok((self.images.to_device(device)?, self.labels.to_device(device)?))
    }
}

/// Iterator over the batches of one epoch.
pub struct Loader {
    rx: Receiver<anyhow::Result<Batch>>,
    pub num_batches: usize,
}

impl Iterator for Loader {
    type Item = anyhow::Result<Batch>;
    fn next(&mut self) -> Option<Self::Item> {
        self.rx.recv().ok()
    }
}

/// The sample order of an epoch: shuffled with `(seed, epoch)`, or file order.
pub fn epoch_order(n: usize, shuffle: bool, seed: u64, epoch: u64) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..n).collect();
    if shuffle {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ epoch.wrapping_mul(0x2545_F491_4F6C_DD1D));
        idx.shuffle(&mut rng);
    }
    idx
}

/// Build one batch from dataset indices (each sample's RNG depends only on its position).
pub fn make_batch(ds: &ImageFolder, pipeline: &Pipeline, indices: &[usize], seed: u64, epoch: u64) -> anyhow::Result<Batch> {
    let samples: Vec<Vec<f32>> = indices
        .par_iter()
        .map(|&i| pipeline.apply(&ds.images[i], &mut sample_rng(seed, epoch, i as u64)))
        .collect::<anyhow::Result<_>>()?;
    let plane = samples.first().map(|s| s.len() / 3).unwrap_or(0);
    let side = (plane as f64).sqrt() as usize;
    if side * side != plane || samples.iter().any(|s| s.len() != 3 * plane) {
        anyhow::bail!("the transform pipeline must end with a fixed square size (e.g. a crop)");
    }
    let data: Vec<f32> = samples.concat();
    let images = Tensor::from_vec(data, (indices.len(), 3, side, side), &candle_core::Device::Cpu)?;
    let labels: Vec<u32> = indices.iter().map(|&i| ds.labels[i]).collect();
    let labels = Tensor::from_vec(labels, indices.len(), &candle_core::Device::Cpu)?;
    Ok(Batch { images, labels, len: indices.len() })
}

impl Loader {
    /// Start producing the batches of `epoch`; at most `prefetch` batches wait ready.
    pub fn new(ds: Arc<ImageFolder>, pipeline: Arc<Pipeline>, batch_size: usize, shuffle: bool, seed: u64, epoch: u64) -> Self {
        let order = epoch_order(ds.len(), shuffle, seed, epoch);
        let batch_size = batch_size.max(1);
        let num_batches = order.len().div_ceil(batch_size);
        let (tx, rx) = sync_channel(1);
        std::thread::spawn(move || {
            for chunk in order.chunks(batch_size) {
                let b = make_batch(&ds, &pipeline, chunk, seed, epoch);
                let failed = b.is_err();
                if tx.send(b).is_err() || failed {
                    break;
                }
            }
        });
        Self { rx, num_batches }
    }
}

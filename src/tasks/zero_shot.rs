//! d2l's observation made measurable: the untouched ImageNet head already knows hot dogs
//! (class 934). A photo is called "hot dog" when class 934 is the top-1 (or in the top-5).

use crate::data::ImageFolder;
use crate::util::imagenet::HOTDOG_CLASS;
pub use crate::models::head::positive_class;
use crate::models::Classifier;
use crate::train::for_each_batch;
use crate::transforms::Pipeline;
use anyhow::bail;
use std::sync::Arc;

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ZeroShot {
    /// Accuracy with "hot dog" iff class 934 is the top-1.
    pub top1_acc: f64,
    /// Accuracy with "hot dog" iff class 934 is among the top-5.
    pub top5_acc: f64,
    pub images: usize,
}

/// Classify `ds` with a model whose head is ImageNet's 1000 classes.
pub fn zero_shot(model: &Classifier, ds: &Arc<ImageFolder>, pipeline: &Pipeline, positive: usize, batch_size: usize) -> anyhow::Result<ZeroShot> {
    if model.num_classes() != 1000 {
        bail!("zero-shot needs the ImageNet head (1000 classes), this model has {}", model.num_classes());
    }
    let (mut ok1, mut ok5, mut n) = (0usize, 0usize, 0usize);
    for_each_batch(model, ds, &Arc::new(pipeline.clone()), batch_size, |logits, labels| {
        let rows = logits.to_device(&candle_core::Device::Cpu)?.to_vec2::<f32>()?;
        let labels = labels.to_device(&candle_core::Device::Cpu)?.to_vec1::<u32>()?;
        for (row, label) in rows.iter().zip(labels) {
            let target = row[HOTDOG_CLASS];
            let rank = row.iter().filter(|&&v| v > target).count();
            let truth = label as usize == positive;
            ok1 += usize::from((rank == 0) == truth);
            ok5 += usize::from((rank < 5) == truth);
            n += 1;
        }
        Ok(())
    })?;
    Ok(ZeroShot { top1_acc: ok1 as f64 / n.max(1) as f64, top5_acc: ok5 as f64 / n.max(1) as f64, images: n })
}

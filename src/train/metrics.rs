//! Loss and accuracy helpers shared by training and evaluation.

use candle_core::{DType, Result, Tensor};

/// How the batch loss is reduced before `backward()`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reduction {
    /// Sum over the batch, as d2l's `train_ch13` does (its lr 5e-5 assumes it).
    Sum,
    /// Mean over the batch (PyTorch's default, Keras).
    Mean,
}

impl crate::util::Choice for Reduction {
    const CHOICES: &'static [crate::util::Named<Self>] = &[
        crate::util::Named { value: Reduction::Sum, name: "sum", aliases: &[], help: "Sum over the batch, as d2l's `train_ch13` does (its lr 5e-5 assumes it)" },
        crate::util::Named { value: Reduction::Mean, name: "mean", aliases: &[], help: "Mean over the batch (PyTorch's default, Keras)" },
    ];
}

/// Cross-entropy of `logits [B, C]` against `labels [B]` (u32), reduced as asked.
pub fn cross_entropy(logits: &Tensor, labels: &Tensor, reduction: Reduction) -> Result<Tensor> {
    let mean = candle_nn::loss::cross_entropy(logits, labels)?;
    match reduction {
        Reduction::Mean => Ok(mean),
        Reduction::Sum => mean * logits.dim(0)? as f64,
    }
}

/// Number of rows whose arg-max equals the label.
pub fn correct(logits: &Tensor, labels: &Tensor) -> Result<usize> {
    let pred = logits.argmax(1)?;
    Ok(pred.eq(labels)?.to_dtype(DType::U32)?.sum_all()?.to_scalar::<u32>()? as usize)
}

//! Max-pooling with a backward pass for any kernel/stride (Candle's own has none when
//! kernel != stride, which ResNet's 3x3/s2 stem pool needs), built from differentiable ops:
//! the elementwise maximum of the k*k strided views of the padded input.

use candle_core::{Device, Result, Tensor};

fn strided_indices(start: usize, stride: usize, count: usize, dev: &Device) -> Result<Tensor> {
    let idx: Vec<u32> = (0..count).map(|i| (start + i * stride) as u32).collect();
    Tensor::from_vec(idx, count, dev)
}

/// `[B, C, H, W] -> [B, C, Ho, Wo]`, like `torch.nn.MaxPool2d(k, stride, padding)`.
pub fn max_pool2d(x: &Tensor, k: usize, stride: usize, padding: usize) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    if padding * 2 > k {
        candle_core::bail!("max_pool2d: padding {padding} is more than half the kernel {k}");
    }
    // Replicate padding never changes a window's maximum: the copied edge value is itself in the window.
    let x = x.pad_with_same(2, padding, padding)?.pad_with_same(3, padding, padding)?;
    let (hp, wp) = (h + 2 * padding, w + 2 * padding);
    if hp < k || wp < k {
        candle_core::bail!("max_pool2d: input {h}x{w} is smaller than the kernel {k}");
    }
    let (ho, wo) = ((hp - k) / stride + 1, (wp - k) / stride + 1);
    let mut out: Option<Tensor> = None;
    for dy in 0..k {
        let rows = x.index_select(&strided_indices(dy, stride, ho, x.device())?, 2)?;
        for dx in 0..k {
            let view = rows.index_select(&strided_indices(dx, stride, wo, x.device())?, 3)?;
            out = Some(match out {
                None => view,
                Some(m) => m.maximum(&view)?,
            });
        }
    }
    out.ok_or_else(|| candle_core::Error::Msg("max_pool2d: empty kernel".into()))
}

/// Global average pooling `[B, C, H, W] -> [B, C]`.
pub fn global_avg_pool(x: &Tensor) -> Result<Tensor> {
    x.mean((2, 3))
}

//! ResNet-18/34/50 with torchvision's tensor names (`conv1`, `bn1`, `layer1.0.conv1`, ...,
//! `layer2.0.downsample.0`), so stock checkpoints load as they are. The classifier `fc` is
//! not part of this module: it lives in its own store (see `Classifier`).

use super::batch_norm::BatchNorm;
use super::builder::Builder;
use super::{check_steps, FeatureExtractor};
use crate::ops::{global_avg_pool, max_pool2d, Activation, Conv2d};
use candle_core::{Module, Result, Tensor};
use std::ops::Range;

/// Depth variants: blocks per stage, and whether blocks are bottlenecks (ResNet-50).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResNetConfig {
    pub blocks: [usize; 4],
    pub bottleneck: bool,
}

impl ResNetConfig {
    pub const R18: Self = Self { blocks: [2, 2, 2, 2], bottleneck: false };
    pub const R34: Self = Self { blocks: [3, 4, 6, 3], bottleneck: false };
    pub const R50: Self = Self { blocks: [3, 4, 6, 3], bottleneck: true };

    pub fn feature_dim(&self) -> usize {
        if self.bottleneck {
            2048
        } else {
            512
        }
    }
}

struct ConvBn {
    conv: Conv2d,
    bn: BatchNorm,
}

impl ConvBn {
    /// `conv{i}` + `bn{i}` of a block (or `downsample.0` + `downsample.1` via explicit names).
    fn new(b: &Builder, conv: &str, bn: &str, c_in: usize, c_out: usize, k: usize, stride: usize) -> Result<Self> {
        Ok(Self {
            conv: b.pp(conv).conv2d_no_bias(c_in, c_out, k, stride, k / 2)?,
            bn: BatchNorm::new(c_out, &b.pp(bn))?,
        })
    }

    /// `act(bn(conv(x)) + residual)`, the BatchNorm, the addition and the activation fused.
    fn forward_act(&self, x: &Tensor, train: bool, residual: Option<&Tensor>, act: Activation) -> Result<Tensor> {
        self.bn.forward_act(&self.conv.forward(x)?, train, residual, act)
    }
}

/// A basic block (two 3x3 convs) or a bottleneck (1x1, 3x3 with the stride, 1x1 expand x4).
struct Block {
    convs: Vec<ConvBn>,
    downsample: Option<ConvBn>,
}

impl Block {
    fn new(b: &Builder, c_in: usize, width: usize, stride: usize, bottleneck: bool) -> Result<Self> {
        let (convs, c_out) = if bottleneck {
            let out = width * 4;
            (
                vec![
                    ConvBn::new(b, "conv1", "bn1", c_in, width, 1, 1)?,
                    ConvBn::new(b, "conv2", "bn2", width, width, 3, stride)?,
                    ConvBn::new(b, "conv3", "bn3", width, out, 1, 1)?,
                ],
                out,
            )
        } else {
            (
                vec![
                    ConvBn::new(b, "conv1", "bn1", c_in, width, 3, stride)?,
                    ConvBn::new(b, "conv2", "bn2", width, width, 3, 1)?,
                ],
                width,
            )
        };
        let downsample = if stride != 1 || c_in != c_out {
            Some(ConvBn::new(&b.pp("downsample"), "0", "1", c_in, c_out, 1, stride)?)
        } else {
            None
        };
        Ok(Self { convs, downsample })
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let shortcut = match &self.downsample {
            Some(d) => d.forward_act(x, train, None, Activation::Identity)?,
            None => x.clone(),
        };
        let mut y = x.clone();
        let last = self.convs.len() - 1;
        for cb in &self.convs[..last] {
            y = cb.forward_act(&y, train, None, Activation::Relu)?;
        }
        self.convs[last].forward_act(&y, train, Some(&shortcut), Activation::Relu)
    }
}

pub struct ResNet {
    stem: ConvBn,
    layers: Vec<Vec<Block>>,
    cfg: ResNetConfig,
}

impl ResNet {
    pub fn new(cfg: ResNetConfig, b: &Builder) -> Result<Self> {
        let stem = ConvBn {
            conv: b.pp("conv1").conv2d_no_bias(3, 64, 7, 2, 3)?,
            bn: BatchNorm::new(64, &b.pp("bn1"))?,
        };
        let expansion = if cfg.bottleneck { 4 } else { 1 };
        let mut c_in = 64;
        let mut layers = Vec::with_capacity(4);
        for (stage, &n) in cfg.blocks.iter().enumerate() {
            let width = 64 << stage;
            let lb = b.pp(format!("layer{}", stage + 1));
            let mut blocks = Vec::with_capacity(n);
            for i in 0..n {
                let stride = if i == 0 && stage > 0 { 2 } else { 1 };
                blocks.push(Block::new(&lb.pp(i), c_in, width, stride, cfg.bottleneck)?);
                c_in = width * expansion;
            }
            layers.push(blocks);
        }
        Ok(Self { stem, layers, cfg })
    }
}

impl FeatureExtractor for ResNet {
    /// Step 0 the stem (with its max-pool), 1..=4 `layer1`..`layer4`, 5 the pooling.
    fn forward_steps(&self, x: &Tensor, steps: Range<usize>, train: bool) -> Result<Tensor> {
        check_steps(&steps, self.num_steps())?;
        let mut x = x.clone();
        for step in steps {
            x = match step {
                0 => max_pool2d(&self.stem.forward_act(&x, train, None, Activation::Relu)?, 3, 2, 1)?,
                s if s <= self.layers.len() => {
                    for block in &self.layers[s - 1] {
                        x = block.forward_t(&x, train)?;
                    }
                    x
                }
                _ => global_avg_pool(&x)?,
            };
        }
        Ok(x)
    }

    fn num_steps(&self) -> usize {
        self.layers.len() + 2
    }

    fn feature_dim(&self) -> usize {
        self.cfg.feature_dim()
    }
}

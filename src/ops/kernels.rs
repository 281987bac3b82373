//! Which CPU kernels a model's convolutions run on: configuration the model carries (its
//! builder hands it to every layer), set by the experiment and recorded with the run, never a
//! process-wide switch.

use super::gemm::Precision;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Kernels {
    /// The arithmetic of the convolutions' matrix products (f32 by default).
    pub precision: Precision,
    /// Winograd F(2x2, 3x3) for 3x3 stride-1 convolutions (on by default; off: im2col + GEMM,
    /// which rounds differently).
    pub winograd: bool,
    /// Depthwise convolutions through Candle's own grouped convolution instead of the
    /// workbook's kernel (off by default: for benchmarks, "before").
    pub candle_depthwise: bool,
}

impl Default for Kernels {
    fn default() -> Self {
        Self { precision: Precision::F32, winograd: true, candle_depthwise: false }
    }
}

impl Kernels {
    /// `Kernels` with this precision, the rest default.
    pub fn with_precision(precision: Precision) -> Self {
        Self { precision, ..Self::default() }
    }

    /// Whether this CPU can run them (bf16 needs AVX512-BF16).
    pub fn check(&self) -> candle_core::Result<()> {
        self.precision.check()
    }
}

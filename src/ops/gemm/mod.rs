//! The matrix products of the CPU convolution kernels (`ops::conv`'s im2col and Winograd), in
//! the arithmetic each convolution's `Kernels` asks for:
//! - `Precision::F32` (default): float32 through the `gemm` crate (Candle's own matmul backend);
//! - `Precision::Bf16` (opt-in, CPUs with AVX512-BF16): both operands rounded to bfloat16 as
//!   they are packed, products summed in float32 (`bf16.rs`). Tensors, weights, gradients and
//!   optimizer state stay float32 (the "master weights"): only the convolutions' multiplications
//!   lose precision, as in PyTorch's CPU autocast to bfloat16.

mod bf16;
mod mat;

pub use mat::Mat;

use candle_core::Result;

/// The arithmetic of the CPU convolutions' matrix products (see the module comment).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// float32 products and sums.
    #[default]
    F32,
    /// bfloat16 products, float32 sums (AVX512-BF16 CPUs only).
    Bf16,
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(crate::util::Choice::name(*self))
    }
}

impl crate::util::Choice for Precision {
    const CHOICES: &'static [crate::util::Named<Self>] = &[
        crate::util::Named { value: Precision::F32, name: "f32", aliases: &[], help: "float32 products and sums" },
        crate::util::Named { value: Precision::Bf16, name: "bf16", aliases: &[], help: "bfloat16 products, float32 sums (AVX512-BF16 CPUs only)" },
    ];
}

/// Whether this CPU can run `Precision::Bf16` (x86-64 with AVX512-BF16).
pub fn bf16_supported() -> bool {
    bf16::supported()
}

impl Precision {
    /// Whether this CPU can run it: `Bf16` is refused, with the reason, on a CPU without AVX512-BF16.
    pub fn check(self) -> Result<()> {
        if self == Precision::Bf16 && !bf16::supported() {
            candle_core::bail!("precision bf16 needs a CPU with AVX512-BF16 (x86-64: Intel Cooper Lake / Sapphire Rapids or later, AMD Zen 4 or later); this one has none: use f32");
        }
        Ok(())
    }
}

/// Products whose `dst` the bf16 kernel's 12 x 32 tiles would fill less than three quarters of
/// stay f32 under `Precision::Bf16`: there the padded tiles cost more than bf16 saves.
/// Measured (`examples/gemm_peak`, one thread, GFLOP/s f32 / bf16): EfficientNet-Lite0's
/// pointwise kernel gradient 96x16x12544 (half the tile's columns) 100 / 53, its input gradient
/// 16x12544x96 (two thirds of the rows) 111 / 102; full tiles 1024³ 110 / 201.
fn bf16_pays(m: usize, n: usize) -> bool {
    let used = |len: usize, tile: usize| len as f64 / len.next_multiple_of(tile) as f64;
    used(m, bf16::MR) * used(n, bf16::NR) >= 0.75
}

/// The arithmetic of one `[m, n]` product under `precision` (see `bf16_pays`).
fn precision_for(precision: Precision, m: usize, n: usize) -> Precision {
    match precision {
        Precision::Bf16 if bf16_pays(m, n) => Precision::Bf16,
        _ => Precision::F32,
    }
}

/// `dst [m, n] (row-major) = lhs [m, k] · rhs [k, n]`, or `+=` with `accumulate`, in
/// `precision` (f32 where bf16 does not pay: `bf16_pays`); `parallel`: spread this one product
/// over the threads.
#[allow(clippy::too_many_arguments)]
pub(crate) fn sgemm(precision: Precision, m: usize, n: usize, k: usize, dst: &mut [f32], accumulate: bool, lhs: Mat, rhs: Mat, parallel: bool) {
    gemm_with(precision_for(precision, m, n), m, n, k, dst, accumulate, lhs, rhs, parallel)
}

/// A left operand prepared once for several products `lhs · rhs_i` (`sgemm_prepared`): in bf16
/// packed once (Winograd's kernel serves every block of ~128 tiles; packing it per block was
/// ~5% of a bf16 ResNet-18 step), in f32 the matrix as it is.
pub(crate) enum Lhs<'a> {
    Plain { lhs: Mat<'a>, m: usize, k: usize },
    Packed { lhs: Mat<'a>, packed: bf16::Packed },
}

/// `lhs [m, k]` prepared for `sgemm_prepared` in `precision`.
pub(crate) fn prepare<'a>(precision: Precision, m: usize, k: usize, lhs: Mat<'a>) -> Lhs<'a> {
    lhs.check(m, k);
    if precision == Precision::Bf16 && bf16::supported() && m > 0 && k > 0 {
        Lhs::Packed { lhs, packed: bf16::Packed::new(m, k, lhs) }
    } else {
        Lhs::Plain { lhs, m, k }
    }
}

/// `sgemm` with a prepared left operand: `dst [m, n] = lhs · rhs [k, n]` (or `+=`), the same
/// arithmetic as `sgemm` in the precision `lhs` was prepared in (f32 where bf16 does not pay).
pub(crate) fn sgemm_prepared(n: usize, dst: &mut [f32], accumulate: bool, lhs: &Lhs, rhs: Mat, parallel: bool) {
    match lhs {
        Lhs::Plain { lhs, m, k } => gemm_with(Precision::F32, *m, n, *k, dst, accumulate, *lhs, rhs, parallel),
        Lhs::Packed { lhs, packed } => {
            let (m, k) = packed.dims();
            if !bf16_pays(m, n) {
                return gemm_with(Precision::F32, m, n, k, dst, accumulate, *lhs, rhs, parallel);
            }
            assert!(dst.len() >= m * n);
            rhs.check(k, n);
            if n > 0 {
                bf16::gemm_packed(n, dst, accumulate, packed, rhs, parallel);
            }
        }
    }
}

/// `sgemm` in a given arithmetic (`Bf16` falls back to f32 where the CPU lacks it: only
/// `Precision::check` refuses). Public for the tests and `examples/gemm_peak`.
#[allow(clippy::too_many_arguments)]
pub fn gemm_with(precision: Precision, m: usize, n: usize, k: usize, dst: &mut [f32], accumulate: bool, lhs: Mat, rhs: Mat, parallel: bool) {
    assert!(dst.len() >= m * n);
    lhs.check(m, k);
    rhs.check(k, n);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst[..m * n].fill(0.0);
        }
        return;
    }
    if precision == Precision::Bf16 && bf16::supported() {
        return bf16::gemm(m, n, k, dst, accumulate, lhs, rhs, parallel);
    }
    let par = if parallel { gemm::Parallelism::Rayon(0) } else { gemm::Parallelism::None };
    // SAFETY: the bounds of all three operands are checked above; `dst` is borrowed mutably
    // and so cannot alias the operands.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            // gemm computes dst = alpha * dst + beta * lhs * rhs (alpha only read with read_dst).
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A prepared left operand gives the same bits as the plain product, in both precisions
    /// (f32 where bf16 does not pay),
    /// over several k-blocks, ragged edges, `+=`, serial and parallel (the process-wide
    /// precision is left alone: other tests of this binary run beside it).
    #[test]
    fn prepared_lhs_gives_the_plain_products_bits() {
        let precisions: &[Precision] = if bf16::supported() { &[Precision::F32, Precision::Bf16] } else { &[Precision::F32] };
        for &(m, n, k) in &[(13, 45, 7), (72, 128, 800), (24, 96, 385)] {
            let a: Vec<f32> = (0..m * k).map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0).collect();
            let b: Vec<f32> = (0..k * n).map(|i| ((i * 53 % 97) as f32 - 48.0) / 31.0).collect();
            let init: Vec<f32> = (0..m * n).map(|i| (i % 7) as f32 - 3.0).collect();
            for &p in precisions {
                let lhs = prepare(p, m, k, Mat::rows(&a, k));
                if p == Precision::Bf16 {
                    assert_eq!(bf16_pays(m, n), m > 13);
                }
                assert_eq!(matches!(lhs, Lhs::Packed { .. }), p == Precision::Bf16);
                for accumulate in [false, true] {
                    for parallel in [false, true] {
                        let (mut plain, mut prepared) = (init.clone(), init.clone());
                        // Half-filled tiles stay f32 (`bf16_pays`): (13, 45) does, the other two are bf16.
                        let q = if bf16_pays(m, n) { p } else { Precision::F32 };
                        gemm_with(q, m, n, k, &mut plain, accumulate, Mat::rows(&a, k), Mat::rows(&b, n), parallel);
                        sgemm_prepared(n, &mut prepared, accumulate, &lhs, Mat::rows(&b, n), parallel);
                        assert_eq!(plain, prepared, "{p} ({m}, {n}, {k}) accumulate {accumulate} parallel {parallel}");
                    }
                }
            }
        }
    }
}

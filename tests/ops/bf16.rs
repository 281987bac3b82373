//! The opt-in bfloat16 matrix product (`ops::Precision::Bf16`): operands rounded to bfloat16
//! to nearest, ties to even (checked against the `half` crate's conversion), products summed
//! in float32 (checked against float64 sums of the rounded operands, on odd sizes, several
//! k-blocks, strided operands, `+=`); threads never change a bit; and the convolutions take the
//! path when their `Kernels` ask (their results move by bfloat16 rounding, not more).
//! On a CPU without AVX512-BF16 the tests
//! check what such a CPU does instead (`Kernels::check` refuses bf16, a bf16 product request
//! computes float32's), and say that the bf16 product itself went untested.

use candle_core::{Device, Tensor};
use transfer_workbook::ops::gemm::{gemm_with, Mat};
use transfer_workbook::ops::{bf16_supported, Kernels, Precision};

use crate::support::{conv_outputs, max_difference, uniform_values as values};

fn bf16(x: f32) -> f64 {
    half::bf16::from_f32(x).to_f32() as f64
}

/// `a [m, k] · b [k, n]` in float64 from the operands rounded to bfloat16, and `Σ |a b|` per element.
fn reference(m: usize, n: usize, k: usize, a: &[f32], (ars, acs): (usize, usize), b: &[f32], (brs, bcs): (usize, usize)) -> (Vec<f64>, Vec<f64>) {
    let mut out = vec![0f64; m * n];
    let mut mag = vec![0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            for p in 0..k {
                let v = bf16(a[i * ars + p * acs]) * bf16(b[p * brs + j * bcs]);
                out[i * n + j] += v;
                mag[i * n + j] += v.abs();
            }
        }
    }
    (out, mag)
}

/// On a CPU without AVX512-BF16 there is no bf16 product to test: what such a CPU must do
/// instead is checked (a bf16 request computes float32's product, bit for bit), and the test
/// says so in its output. `true`: the CPU has the instructions, test the product.
fn has_bf16_or_falls_back() -> bool {
    if bf16_supported() {
        return true;
    }
    for (s, &(m, n, k)) in [(1, 1, 1), (13, 33, 3), (25, 31, 800)].iter().enumerate() {
        let (a, b) = (values(m * k, s as u64), values(k * n, s as u64 + 100));
        let (mut asked, mut f32s) = (vec![0f32; m * n], vec![0f32; m * n]);
        gemm_with(Precision::Bf16, m, n, k, &mut asked, false, Mat::rows(&a, k), Mat::rows(&b, n), false);
        gemm_with(Precision::F32, m, n, k, &mut f32s, false, Mat::rows(&a, k), Mat::rows(&b, n), false);
        assert_eq!(asked, f32s, "({m}, {n}, {k}): without AVX512-BF16 a bf16 request must compute float32's product");
    }
    eprintln!("note: this CPU has no AVX512-BF16: checked that a bf16 request computes in float32; the bf16 product itself is not tested here");
    false
}

#[test]
fn bf16_product_sums_bf16_rounded_operands_in_f32() {
    if !has_bf16_or_falls_back() {
        return;
    }
    // (m, n, k): single tiles, ragged edges, odd k, several k-blocks of 384.
    for (s, &(m, n, k)) in [(1, 1, 1), (12, 32, 2), (13, 33, 3), (5, 70, 385), (25, 31, 800), (64, 100, 1153)].iter().enumerate() {
        for (t, (at, bt)) in [(false, false), (true, false), (false, true), (true, true)].into_iter().enumerate() {
            let seed = 10 * s as u64 + t as u64;
            let (a, b) = (values(m * k, seed), values(k * n, seed + 100));
            // `lhs` as [m, k] row-major or as the transpose of a [k, m] matrix; `rhs` likewise.
            let (la, lstr) = if at { (Mat::transposed(&a, m), (1, m)) } else { (Mat::rows(&a, k), (k, 1)) };
            let (lb, rstr) = if bt { (Mat::transposed(&b, k), (1, k)) } else { (Mat::rows(&b, n), (n, 1)) };
            let (want, mag) = reference(m, n, k, &a, lstr, &b, rstr);
            let init = values(m * n, seed + 200);
            for accumulate in [false, true] {
                let mut serial = init.clone();
                gemm_with(Precision::Bf16, m, n, k, &mut serial, accumulate, la, lb, false);
                let mut par = init.clone();
                gemm_with(Precision::Bf16, m, n, k, &mut par, accumulate, la, lb, true);
                assert_eq!(serial, par, "({m}, {n}, {k}) transposed {at}/{bt}: the parallel product differs in bits");
                for (e, ((&got, &w), &g)) in serial.iter().zip(&want).zip(&mag).enumerate() {
                    let w = if accumulate { w + init[e] as f64 } else { w };
                    let bound = (k as f64 + 2.0) * f32::EPSILON as f64 * (g + init[e].abs() as f64) + 1e-30;
                    assert!((got as f64 - w).abs() <= bound, "({m}, {n}, {k}) transposed {at}/{bt} accumulate {accumulate}, element {e}: {got} vs {w} (bound {bound:e})");
                }
            }
        }
    }
}

#[test]
fn operands_round_to_nearest_even_like_half() {
    if !has_bf16_or_falls_back() {
        return;
    }
    let one = 1.0f32;
    let ulp = 2f32.powi(-7); // a bfloat16 ulp at 1
    let xs = [
        one,
        one + ulp / 2.0,       // tie, rounds to even 1.0
        one + 3.0 * ulp / 2.0, // tie, rounds to even 1 + 2 ulp
        one + ulp / 2.0 + f32::EPSILON,
        -one - ulp / 4.0,
        f32::MAX, // to infinity
        f32::INFINITY,
        -0.0,
        3.0e-39, // a denormal float32
        1.0e30,
        0.1,
    ];
    for x in xs {
        // [1, 1] = [1, 1] · [1, 1] with the other factor 1: the rounded operand itself.
        let mut y = [0f32];
        gemm_with(Precision::Bf16, 1, 1, 1, &mut y, false, Mat::rows(&[x], 1), Mat::rows(&[1.0], 1), false);
        let want = half::bf16::from_f32(x).to_f32();
        // VDPBF16PS treats denormal inputs as zero.
        let want = if want != 0.0 && want.abs() < f32::MIN_POSITIVE { 0.0 } else { want };
        assert_eq!(y[0], want, "{x:e}");
    }
    let mut y = [0f32];
    gemm_with(Precision::Bf16, 1, 1, 1, &mut y, false, Mat::rows(&[f32::NAN], 1), Mat::rows(&[1.0], 1), false);
    assert!(y[0].is_nan());
}

#[test]
fn convolutions_take_the_bf16_path_when_asked() {
    if !bf16_supported() {
        let err = Kernels::with_precision(Precision::Bf16).check().unwrap_err().to_string();
        assert!(err.contains("AVX512-BF16"), "{err}");
        return;
    }
    let dev = Device::Cpu;
    // (batch, C, Co, H, W, k, stride, padding): Winograd 3x3, im2col 3x3 stride 2, pointwise
    // 1x1, the 7x7 stem, grouped images (7x7 output). Channels and sizes such that every
    // product of the forward pass and both gradients fills the bf16 tiles enough to take the
    // bf16 path (`ops::gemm`: at least three quarters; the others stay f32).
    for (i, &(b, c, co, h, w, kk, st, pd)) in
        [(2, 24, 36, 24, 24, 3, 1, 1), (2, 24, 36, 17, 15, 3, 2, 1), (3, 32, 48, 9, 9, 1, 1, 0), (2, 3, 24, 23, 23, 7, 2, 3), (8, 36, 36, 7, 7, 3, 1, 1)].iter().enumerate()
    {
        let s = 100 * i as u64;
        let x = Tensor::from_vec(values(b * c * h * w, s), (b, c, h, w), &dev).unwrap();
        let k = Tensor::from_vec(values(co * c * kk * kk, s + 1), (co, c, kk, kk), &dev).unwrap();
        let (ho, wo) = ((h + 2 * pd - kk) / st + 1, (w + 2 * pd - kk) / st + 1);
        let r = Tensor::from_vec(values(b * co * ho * wo, s + 2), (b, co, ho, wo), &dev).unwrap();
        let bf16 = Kernels::with_precision(Precision::Bf16);
        let exact = conv_outputs(&x, &k, &r, st, pd, Kernels::default());
        let low = conv_outputs(&x, &k, &r, st, pd, bf16);
        let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap().install(|| conv_outputs(&x, &k, &r, st, pd, bf16));
        for (what, ((l, e), o)) in ["y", "dx", "dw"].iter().zip(low.iter().zip(&exact).zip(&one)) {
            assert_eq!(l, o, "{what} of case {i}: bf16 result depends on the thread count");
            let (err, scale) = max_difference(l, e);
            // Each operand rounds by at most 2^-9 relative: sums of many products move by far less
            // than 1% of the largest output, and by more than f32 rounding does.
            assert!(err <= 1e-2 * scale, "{what} of case {i}: bf16 differs from f32 by {err:e} (scale {scale:e})");
            assert!(err > 1e-5 * scale, "{what} of case {i}: bf16 equals f32 to {err:e}: the path was not taken");
        }
    }
}

//! The CPU f32 convolution kernels (`ops::conv2d`: im2col + GEMM, and Winograd F(2x2, 3x3) for
//! 3x3 stride-1 padding-1 convolutions of at least 8x8) against independent
//! references: Candle's own `conv2d` with Candle's autograd in f64, and for one tiny case
//! central finite differences of a direct-loop f64 convolution. Also the frozen-input case
//! and bit-for-bit determinism across rayon thread counts.

use crate::support;
use candle_core::{DType, Device, Tensor, Var};
use transfer_workbook::ops::conv2d;

use crate::support::uniform_values as values;

#[derive(Clone, Copy, Debug)]
struct Case {
    b: usize,
    c: usize,
    co: usize,
    h: usize,
    w: usize,
    k: usize,
    stride: usize,
    pad: usize,
}

const fn case(b: usize, c: usize, co: usize, h: usize, w: usize, k: usize, stride: usize, pad: usize) -> Case {
    Case { b, c, co, h, w, k, stride, pad }
}

impl Case {
    fn out(&self) -> (usize, usize) {
        ((self.h + 2 * self.pad - self.k) / self.stride + 1, (self.w + 2 * self.pad - self.k) / self.stride + 1)
    }
}

/// Input, kernel and an output weighting `r` (the loss is `Σ r * y`, so dY = r).
fn data(t: &Case, seed: u64) -> (Tensor, Tensor, Tensor) {
    let (ho, wo) = t.out();
    let dev = Device::Cpu;
    let x = Tensor::from_vec(values(t.b * t.c * t.h * t.w, seed), (t.b, t.c, t.h, t.w), &dev).unwrap();
    let w = Tensor::from_vec(values(t.co * t.c * t.k * t.k, seed + 1), (t.co, t.c, t.k, t.k), &dev).unwrap();
    let r = Tensor::from_vec(values(t.b * t.co * ho * wo, seed + 2), (t.b, t.co, ho, wo), &dev).unwrap();
    (x, w, r)
}

/// (y, dx, dw) from the kernel under test, in f32.
fn ours(t: &Case, x: &Tensor, w: &Tensor, r: &Tensor) -> (Tensor, Tensor, Tensor) {
    let (xv, wv) = (Var::from_tensor(x).unwrap(), Var::from_tensor(w).unwrap());
    let y = conv2d(xv.as_tensor(), wv.as_tensor(), t.stride, t.pad).unwrap();
    let grads = (&y * r).unwrap().sum_all().unwrap().backward().unwrap();
    (y, grads.get(xv.as_tensor()).unwrap().clone(), grads.get(wv.as_tensor()).unwrap().clone())
}

/// (y, dx, dw) from Candle's own conv2d and autograd, in f64.
fn reference(t: &Case, x: &Tensor, w: &Tensor, r: &Tensor) -> (Tensor, Tensor, Tensor) {
    let f = |v: &Tensor| v.to_dtype(DType::F64).unwrap();
    let (xv, wv) = (Var::from_tensor(&f(x)).unwrap(), Var::from_tensor(&f(w)).unwrap());
    let y = xv.as_tensor().conv2d(wv.as_tensor(), t.pad, t.stride, 1, 1).unwrap();
    let grads = (&y * f(r)).unwrap().sum_all().unwrap().backward().unwrap();
    (y, grads.get(xv.as_tensor()).unwrap().clone(), grads.get(wv.as_tensor()).unwrap().clone())
}

fn flat(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap()
}

/// Largest difference relative to the largest reference magnitude.
fn assert_close(what: &str, got: &Tensor, want: &Tensor, tol: f64) {
    assert_eq!(got.dims(), want.dims(), "{what}: shape");
    let (g, w) = (flat(got), flat(want));
    let (err, scale) = support::max_difference_f64(&g, &w);
    let scale = scale.max(1e-12);
    assert!(err <= tol * scale, "{what}: max error {err:e} vs scale {scale:e} (tolerance {tol:e} relative)");
}

const CASES: &[Case] = &[
    case(1, 3, 5, 13, 11, 3, 1, 1),
    case(3, 4, 6, 13, 11, 3, 2, 1),
    case(3, 3, 8, 13, 11, 7, 2, 3),
    case(1, 3, 4, 8, 7, 7, 1, 3),
    case(3, 5, 4, 13, 11, 1, 1, 0),
    case(3, 6, 7, 13, 11, 1, 2, 0),
    case(1, 2, 3, 9, 10, 3, 1, 0),
    case(3, 4, 5, 12, 12, 3, 2, 0),
    case(3, 7, 2, 11, 13, 3, 1, 3),
    // Big enough for several GEMM depth blocks (C*k*k = 1152) and for gemm's own threading.
    case(3, 128, 96, 14, 14, 3, 1, 1),
    case(8, 64, 32, 15, 15, 3, 2, 1),
    // Few output pixels: several images side by side in one GEMM (groups of 2, the last one
    // short), for a 3x3, a pointwise and a strided 1x1 convolution.
    case(9, 6, 5, 7, 6, 3, 1, 1),
    case(9, 8, 6, 5, 5, 1, 1, 0),
    case(8, 5, 7, 9, 9, 1, 2, 0),
    case(12, 4, 3, 8, 8, 7, 2, 3),
    // 3x3, stride 1, padding 1, at least 8x8: Winograd F(2x2, 3x3) for y, dx and dw. Odd
    // sizes (a last tile half outside), batch 1, tile rows cut into blocks (56 px, 29 tiles
    // a row), several small images per GEMM block (groups of 2, the last one short).
    case(1, 4, 3, 9, 11, 3, 1, 1),
    case(2, 16, 8, 56, 57, 3, 1, 1),
    case(9, 6, 5, 8, 9, 3, 1, 1),
];

#[test]
fn matches_candle_f64_reference() {
    for (i, t) in CASES.iter().enumerate() {
        let (x, w, r) = data(t, 10 * i as u64);
        let (y, dx, dw) = ours(t, &x, &w, &r);
        let (ry, rdx, rdw) = reference(t, &x, &w, &r);
        assert_close(&format!("{t:?} forward"), &y, &ry, 1e-5);
        assert_close(&format!("{t:?} dx"), &dx, &rdx, 1e-5);
        assert_close(&format!("{t:?} dw"), &dw, &rdw, 1e-5);
    }
}

/// Direct-loop convolution in f64 (independent of both Candle and the kernel under test).
fn naive_conv(t: &Case, x: &[f64], w: &[f64]) -> Vec<f64> {
    let (ho, wo) = t.out();
    let mut y = vec![0f64; t.b * t.co * ho * wo];
    for b in 0..t.b {
        for o in 0..t.co {
            for oy in 0..ho {
                for ox in 0..wo {
                    let mut acc = 0f64;
                    for c in 0..t.c {
                        for ky in 0..t.k {
                            for kx in 0..t.k {
                                let iy = (oy * t.stride + ky) as isize - t.pad as isize;
                                let ix = (ox * t.stride + kx) as isize - t.pad as isize;
                                if iy < 0 || ix < 0 || iy >= t.h as isize || ix >= t.w as isize {
                                    continue;
                                }
                                acc += x[((b * t.c + c) * t.h + iy as usize) * t.w + ix as usize] * w[((o * t.c + c) * t.k + ky) * t.k + kx];
                            }
                        }
                    }
                    y[((b * t.co + o) * ho + oy) * wo + ox] = acc;
                }
            }
        }
    }
    y
}

#[test]
fn matches_finite_differences() {
    // The second case runs images in groups of two (one GEMM per pair).
    // The third runs the Winograd kernels (3x3, stride 1, padding 1, odd 9x8).
    for t in [case(2, 2, 3, 5, 6, 3, 2, 1), case(8, 2, 3, 3, 3, 3, 1, 1), case(2, 2, 3, 9, 8, 3, 1, 1)] {
        let (x, w, r) = data(&t, 99);
        let (y, dx, dw) = ours(&t, &x, &w, &r);
        let (xf, wf, rf) = (flat(&x), flat(&w), flat(&r));
        let loss = |x: &[f64], w: &[f64]| naive_conv(&t, x, w).iter().zip(&rf).map(|(a, b)| a * b).sum::<f64>();
        let eps = 1e-4;
        let fd = |v: &[f64], f: &dyn Fn(&[f64]) -> f64| -> Vec<f64> {
            (0..v.len())
                .map(|i| {
                    let (mut p, mut m) = (v.to_vec(), v.to_vec());
                    p[i] += eps;
                    m[i] -= eps;
                    (f(&p) - f(&m)) / (2.0 * eps)
                })
                .collect()
        };
        let fdx = fd(&xf, &|v| loss(v, &wf));
        let fdw = fd(&wf, &|v| loss(&xf, v));
        let as_t = |v: Vec<f64>, like: &Tensor| Tensor::from_vec(v, like.dims(), &Device::Cpu).unwrap();
        assert_close(&format!("{t:?} forward vs direct loop"), &y, &as_t(naive_conv(&t, &xf, &wf), &y), 1e-5);
        assert_close(&format!("{t:?} dx vs finite differences"), &dx, &as_t(fdx, &dx), 1e-5);
        assert_close(&format!("{t:?} dw vs finite differences"), &dw, &as_t(fdw, &dw), 1e-5);
    }
}

#[test]
fn frozen_input_gets_no_gradient() {
    let t = case(3, 4, 6, 13, 11, 3, 2, 1);
    let (x, w, r) = data(&t, 7);
    let wv = Var::from_tensor(&w).unwrap();
    // `x` is a plain tensor (an image, or a frozen block's output): only dW is computed.
    assert!(!x.track_op());
    let y = conv2d(&x, wv.as_tensor(), t.stride, t.pad).unwrap();
    let grads = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
    assert!(grads.get(&x).is_none());
    let (_, _, rdw) = reference(&t, &x, &w, &r);
    assert_close("dw with a frozen input", grads.get(wv.as_tensor()).unwrap(), &rdw, 1e-5);
    // Neither side tracked: a plain forward.
    let y2 = conv2d(&x, &w, t.stride, t.pad).unwrap();
    assert!(!y2.track_op());
    assert_eq!(flat(&y2), flat(&y));
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|v| v.to_bits()).collect()
}

#[test]
fn bit_identical_across_thread_counts() {
    // Batch 3 runs each GEMM on all threads (gemm's own threading); batch 8 and 32 split
    // images over threads with single-threaded GEMMs; 1 thread runs everything in turn.
    let cases = [case(3, 128, 128, 28, 28, 3, 1, 1), case(8, 64, 64, 30, 30, 3, 2, 1), case(32, 16, 24, 17, 17, 3, 1, 1), case(3, 256, 64, 14, 14, 1, 1, 0), case(32, 16, 24, 7, 7, 3, 1, 1), case(30, 32, 16, 7, 7, 1, 1, 0)];
    for (i, t) in cases.iter().enumerate() {
        let (x, w, r) = data(t, 1000 + i as u64);
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                let (y, dx, dw) = ours(t, &x, &w, &r);
                (bits(&y), bits(&dx), bits(&dw))
            })
        };
        let one = run(1);
        for threads in [2, 2, 3, 4] {
            let other = run(threads);
            assert!(one.0 == other.0, "{t:?}: forward differs with {threads} threads");
            assert!(one.1 == other.1, "{t:?}: dx differs with {threads} threads");
            assert!(one.2 == other.2, "{t:?}: dw differs with {threads} threads");
        }
    }
}

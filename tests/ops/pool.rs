//! The CPU f32 max-pool kernel against the tensor-op path (forward, and gradient where no
//! window has a tie) and against a direct-loop reference that sends the gradient to the first
//! maximum of each window, as PyTorch does (with ties).

use crate::support;
use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use transfer_workbook::ops::max_pool2d;
use transfer_workbook::ops::pool::max_pool2d_generic;

use crate::support::uniform_values;

fn input(dims: (usize, usize, usize, usize), levels: Option<u32>, seed: u64) -> Tensor {
    let n = dims.0 * dims.1 * dims.2 * dims.3;
    let v: Vec<f32> = match levels {
        // Few distinct values: many windows with tied maxima.
        Some(l) => {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            (0..n).map(|_| rng.gen_range(0..l) as f32).collect()
        }
        None => uniform_values(n, seed),
    };
    Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
}

/// (y, dx) of `Σ r * pool(x)` for a pooling function.
fn run(f: impl Fn(&Tensor) -> Tensor, x: &Tensor, seed: u64) -> (Vec<f32>, Vec<f32>) {
    let xv = Var::from_tensor(x).unwrap();
    let y = f(xv.as_tensor());
    let r = Tensor::from_vec(uniform_values(y.elem_count(), seed), y.dims(), &Device::Cpu).unwrap();
    let grads = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    (flat(&y), flat(grads.get(xv.as_tensor()).unwrap()))
}

/// Direct loops: the first maximum (row-major) of each window gets the output's gradient.
fn reference(x: &Tensor, k: usize, s: usize, p: usize, seed: u64) -> (Vec<f32>, Vec<f32>) {
    let (b, c, h, w) = x.dims4().unwrap();
    let (ho, wo) = ((h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1);
    let xs = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let r = uniform_values(b * c * ho * wo, seed);
    let (mut y, mut dx) = (vec![0f32; b * c * ho * wo], vec![0f32; xs.len()]);
    for plane in 0..b * c {
        for oy in 0..ho {
            for ox in 0..wo {
                let mut best: Option<(usize, f32)> = None;
                for ky in 0..k {
                    for kx in 0..k {
                        let (iy, ix) = ((oy * s + ky) as isize - p as isize, (ox * s + kx) as isize - p as isize);
                        if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                            continue;
                        }
                        let i = plane * h * w + iy as usize * w + ix as usize;
                        if best.is_none_or(|(_, v)| xs[i] > v) {
                            best = Some((i, xs[i]));
                        }
                    }
                }
                let (i, v) = best.unwrap();
                let o = (plane * ho + oy) * wo + ox;
                y[o] = v;
                dx[i] += r[o];
            }
        }
    }
    (y, dx)
}

const SHAPES: &[((usize, usize, usize, usize), usize, usize, usize)] = &[
    ((2, 3, 13, 11), 3, 2, 1),
    ((1, 2, 12, 12), 3, 2, 1),
    ((3, 2, 13, 11), 3, 1, 1),
    ((2, 2, 13, 11), 2, 2, 0),
    ((2, 3, 9, 10), 3, 3, 0),
    ((1, 4, 7, 7), 3, 2, 0),
];

#[test]
fn matches_tensor_op_path_without_ties() {
    for (i, &(dims, k, s, p)) in SHAPES.iter().enumerate() {
        let x = input(dims, None, i as u64);
        let ours = run(|t| max_pool2d(t, k, s, p).unwrap(), &x, 100 + i as u64);
        let generic = run(|t| max_pool2d_generic(t, k, s, p).unwrap(), &x, 100 + i as u64);
        assert_eq!(ours.0, generic.0, "{dims:?} k{k} s{s} p{p}: forward");
        let (err, _) = support::max_difference(&ours.1, &generic.1);
        assert!(err < 1e-6, "{dims:?} k{k} s{s} p{p}: dx differs by {err}");
    }
}

#[test]
fn gradient_goes_to_first_maximum_with_ties() {
    for (i, &(dims, k, s, p)) in SHAPES.iter().enumerate() {
        for levels in [2, 5] {
            let x = input(dims, Some(levels), 10 * i as u64 + levels as u64);
            let (y, dx) = run(|t| max_pool2d(t, k, s, p).unwrap(), &x, 7);
            let (ry, rdx) = reference(&x, k, s, p, 7);
            assert_eq!(y, ry, "{dims:?} k{k} s{s} p{p}: forward");
            // Same additions in the same order: exact.
            assert_eq!(dx, rdx, "{dims:?} k{k} s{s} p{p} levels {levels}: dx");
        }
    }
}

#[test]
fn f64_takes_the_generic_path() {
    let x = input((1, 2, 9, 9), None, 3).to_dtype(DType::F64).unwrap();
    let a = max_pool2d(&x, 3, 2, 1).unwrap();
    let b = max_pool2d(&x.to_dtype(DType::F32).unwrap(), 3, 2, 1).unwrap();
    assert_eq!(a.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap(), b.flatten_all().unwrap().to_vec1::<f32>().unwrap());
}

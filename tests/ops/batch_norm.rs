//! The fused BatchNorm op (`act(BN(x) + residual)`, CPU f32 kernels) against two references:
//! the same arithmetic written with plain Candle tensor ops in f64 and differentiated by
//! autograd (independent of the kernels), and the unfused ops in f32 (BatchNorm, Candle's
//! addition, the ReLU op), which the fused op must match bit for bit: fusing changed the
//! speed of a training step, not its numbers.

use candle_core::{DType, Device, Tensor, Var};
use transfer_workbook::ops::{batch_norm_eval, batch_norm_eval_act, batch_norm_train, batch_norm_train_act, relu, relu6, Activation};

use crate::support::uniform_values;

const EPS: f64 = 1e-5;

struct Inputs {
    x: Tensor,
    w: Tensor,
    b: Tensor,
    r: Tensor,
    /// Weights of the loss `Σ y * probe`, so every output gets its own gradient.
    probe: Tensor,
}

fn inputs(shape: (usize, usize, usize, usize), seed: u64) -> Inputs {
    let dev = Device::Cpu;
    let n = shape.0 * shape.1 * shape.2 * shape.3;
    let c = shape.1;
    let t = |k: u64, len: usize, scale: f32, shift: f32, dims: &[usize]| {
        let v: Vec<f32> = uniform_values(len, seed * 10 + k).iter().map(|v| v * scale + shift).collect();
        Tensor::from_vec(v, dims, &dev).unwrap()
    };
    let dims = [shape.0, shape.1, shape.2, shape.3];
    // Weights around 3 and biases around 2 put outputs on both sides of 0 and of 6.
    Inputs {
        x: t(0, n, 3.0, 0.0, &dims),
        w: t(1, c, 1.0, 3.0, &[c]),
        b: t(2, c, 1.0, 2.0, &[c]),
        r: t(3, n, 1.5, 0.0, &dims),
        probe: t(4, n, 1.0, 0.0, &dims),
    }
}

/// Output and gradients of (x, w, b, residual) of `f`, as f64 vectors.
fn run(inp: &Inputs, dtype: DType, f: impl Fn(&Tensor, &Tensor, &Tensor, &Tensor) -> Tensor) -> Vec<Vec<f64>> {
    let vars: Vec<Var> = [&inp.x, &inp.w, &inp.b, &inp.r].iter().map(|t| Var::from_tensor(&t.to_dtype(dtype).unwrap()).unwrap()).collect();
    let y = f(vars[0].as_tensor(), vars[1].as_tensor(), vars[2].as_tensor(), vars[3].as_tensor());
    let loss = (&y * inp.probe.to_dtype(dtype).unwrap()).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    let flat = |t: &Tensor| t.flatten_all().unwrap().to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap();
    let mut out = vec![flat(&y)];
    for v in &vars {
        out.push(grads.get(v.as_tensor()).map(flat).unwrap_or_default());
    }
    out
}

fn channel(t: &Tensor) -> Tensor {
    t.reshape((1, t.elem_count(), 1, 1)).unwrap()
}

/// Training-mode BatchNorm, the residual and the activation with plain tensor ops (f64).
fn reference_train(x: &Tensor, w: &Tensor, b: &Tensor, r: Option<&Tensor>, act: Activation) -> Tensor {
    let mean = x.mean_keepdim(0).unwrap().mean_keepdim(2).unwrap().mean_keepdim(3).unwrap();
    let centered = x.broadcast_sub(&mean).unwrap();
    let var = centered.sqr().unwrap().mean_keepdim(0).unwrap().mean_keepdim(2).unwrap().mean_keepdim(3).unwrap();
    let y = centered.broadcast_div(&(var + EPS).unwrap().sqrt().unwrap()).unwrap();
    let mut y = y.broadcast_mul(&channel(w)).unwrap().broadcast_add(&channel(b)).unwrap();
    if let Some(r) = r {
        y = (y + r).unwrap();
    }
    match act {
        Activation::Identity => y,
        Activation::Relu => y.relu().unwrap(),
        Activation::Relu6 => y.minimum(6.0).unwrap().relu().unwrap(),
    }
}

/// The unfused f32 ops: BatchNorm, Candle's addition, the ReLU op.
fn unfused(bn: Tensor, r: Option<&Tensor>, act: Activation) -> Tensor {
    let y = match r {
        Some(r) => (bn + r).unwrap(),
        None => bn,
    };
    match act {
        Activation::Identity => y,
        Activation::Relu => relu(&y).unwrap(),
        Activation::Relu6 => relu6(&y).unwrap(),
    }
}

fn assert_close(what: &str, got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(1f64, |m, v| m.max(v.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tol * scale, "{what}[{i}]: {g} vs {w} (scale {scale})");
    }
}

const NAMES: [&str; 5] = ["y", "dx", "dw", "db", "dresidual"];
const ACTS: [Activation; 3] = [Activation::Identity, Activation::Relu, Activation::Relu6];

#[test]
fn fused_train_matches_f64_tensor_ops_and_unfused_ops_exactly() {
    // Odd spatial sizes, batch 1, a single channel with 1x1 maps.
    for (k, shape) in [(2, 3, 7, 5), (1, 4, 3, 3), (3, 1, 1, 1), (4, 2, 6, 6)].into_iter().enumerate() {
        let inp = inputs(shape, 7 + k as u64);
        for act in ACTS {
            for with_residual in [false, true] {
                let case = format!("{shape:?} {act:?} residual {with_residual}");
                let fused = run(&inp, DType::F32, |x, w, b, r| batch_norm_train_act(x, w, b, EPS, with_residual.then_some(r), act).unwrap().0);
                let want = run(&inp, DType::F64, |x, w, b, r| reference_train(x, w, b, with_residual.then_some(r), act));
                let split = run(&inp, DType::F32, |x, w, b, r| unfused(batch_norm_train(x, w, b, EPS).unwrap().0, with_residual.then_some(r), act));
                for (i, name) in NAMES.iter().enumerate() {
                    if i == 4 && !with_residual {
                        assert!(fused[i].is_empty(), "{case}: a residual gradient without a residual");
                        continue;
                    }
                    assert_close(&format!("{case} {name} vs f64"), &fused[i], &want[i], 2e-4);
                    assert_eq!(fused[i], split[i], "{case} {name}: fused and unfused differ");
                }
            }
        }
    }
}

#[test]
fn fused_eval_matches_unfused_ops_exactly() {
    let inp = inputs((2, 3, 5, 4), 3);
    let dev = Device::Cpu;
    let mean = Tensor::new(&[0.5f32, -1.0, 0.1], &dev).unwrap();
    let var = Tensor::new(&[2.0f32, 0.3, 1.0], &dev).unwrap();
    for act in ACTS {
        for with_residual in [false, true] {
            let fused = run(&inp, DType::F32, |x, w, b, r| batch_norm_eval_act(x, w, b, &mean, &var, EPS, with_residual.then_some(r), act).unwrap());
            let split = run(&inp, DType::F32, |x, w, b, r| unfused(batch_norm_eval(x, w, b, &mean, &var, EPS).unwrap(), with_residual.then_some(r), act));
            for (i, name) in NAMES.iter().enumerate() {
                assert_eq!(fused[i], split[i], "{act:?} residual {with_residual} {name}");
            }
            // Eval mode by hand: dx = w / sqrt(var + eps) * (probe masked by the activation).
            let y = &fused[0];
            let (probe, w) = (inp.probe.flatten_all().unwrap().to_vec1::<f32>().unwrap(), inp.w.to_vec1::<f32>().unwrap());
            let (v, hw) = (var.to_vec1::<f32>().unwrap(), 20);
            for (j, &dx) in fused[1].iter().enumerate() {
                let c = (j / hw) % 3;
                let pass = match act {
                    Activation::Identity => true,
                    Activation::Relu => y[j] > 0.0,
                    Activation::Relu6 => y[j] > 0.0 && y[j] < 6.0,
                };
                let want = if pass { (w[c] / (v[c] + EPS as f32).sqrt() * probe[j]) as f64 } else { 0.0 };
                assert!((dx - want).abs() <= 1e-5 * want.abs().max(1.0), "{act:?} dx[{j}]: {dx} vs {want}");
            }
        }
    }
}

#[test]
fn a_residual_of_another_shape_is_an_error_naming_both() {
    let inp = inputs((2, 3, 4, 4), 1);
    let r = Tensor::zeros((2, 3, 2, 2), DType::F32, &Device::Cpu).unwrap();
    let err = batch_norm_train_act(&inp.x, &inp.w, &inp.b, EPS, Some(&r), Activation::Relu).unwrap_err().to_string();
    assert!(err.contains("[2, 3, 2, 2]") && err.contains("[2, 3, 4, 4]"), "{err}");
}

#[test]
fn parameters_of_another_channel_count_are_an_error_naming_them() {
    let inp = inputs((2, 3, 4, 4), 1);
    let dev = &Device::Cpu;
    let four = Tensor::ones(4, DType::F32, dev).unwrap();
    let err = batch_norm_train_act(&inp.x, &four, &inp.b, EPS, None, Activation::Relu).unwrap_err().to_string();
    assert!(err.contains("weight") && err.contains("[4]") && err.contains("3 channels"), "{err}");
    let var = Tensor::ones(3, DType::F32, dev).unwrap();
    let err = batch_norm_eval(&inp.x, &inp.w, &inp.b, &four, &var, EPS).unwrap_err().to_string();
    assert!(err.contains("running mean") && err.contains("[4]"), "{err}");
}

//! The CPU f32 ReLU op against Candle's `relu`: same forward, same gradient away from 0, and
//! PyTorch's rule at exactly 0 (no gradient; Candle passes it).

use candle_core::{Device, Tensor, Var};
use transfer_workbook::ops::relu;

fn grad_of(f: impl Fn(&Tensor) -> Tensor, x: &Tensor, r: &Tensor) -> (Vec<f32>, Vec<f32>) {
    let v = Var::from_tensor(x).unwrap();
    let y = f(v.as_tensor());
    let g = (&y * r).unwrap().sum_all().unwrap().backward().unwrap();
    (y.flatten_all().unwrap().to_vec1().unwrap(), g.get(v.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap())
}

#[test]
fn relu_matches_candle_and_torch_rule_at_zero() {
    let dev = Device::Cpu;
    // Exact zeros in a few places, the rest random.
    let mut xs = Tensor::randn(0f32, 1., 2 * 3 * 7 * 5, &dev).unwrap().to_vec1::<f32>().unwrap();
    for i in (0..xs.len()).step_by(17) {
        xs[i] = 0.0;
    }
    let x = Tensor::from_vec(xs.clone(), (2, 3, 7, 5), &dev).unwrap();
    let r = Tensor::randn(0f32, 1., (2, 3, 7, 5), &dev).unwrap();
    let (y, g) = grad_of(|t| relu(t).unwrap(), &x, &r);
    let (cy, cg) = grad_of(|t| t.relu().unwrap(), &x, &r);
    assert_eq!(y, cy);
    for (i, &xv) in xs.iter().enumerate() {
        if xv == 0.0 {
            assert_eq!(g[i], 0.0, "no gradient at x = 0 (PyTorch)");
        } else {
            assert_eq!(g[i], cg[i]);
        }
    }
    // A strided (non-contiguous) input works too.
    let t = x.transpose(2, 3).unwrap();
    assert_eq!(relu(&t).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap(), t.relu().unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap());
}

//! The two CPU paths of a 3x3 stride-1 convolution, Winograd F(2x2, 3x3) (the default) and
//! im2col + GEMM (`ops::im2col::use_winograd(false)`), give the same y, dx and dw to f32
//! rounding, and the switch really changes the path (the results are not bit-identical).
//! Its own test binary: the switch is process-wide.

use candle_core::{Device, Tensor, Var};
use transfer_workbook::ops::conv2d;
use transfer_workbook::ops::im2col::use_winograd;

mod support;
use support::uniform_values as values;

fn run(x: &Tensor, w: &Tensor, r: &Tensor) -> Vec<Vec<f32>> {
    let (xv, wv) = (Var::from_tensor(x).unwrap(), Var::from_tensor(w).unwrap());
    let y = conv2d(xv.as_tensor(), wv.as_tensor(), 1, 1).unwrap();
    let g = (&y * r).unwrap().sum_all().unwrap().backward().unwrap();
    [&y, g.get(xv.as_tensor()).unwrap(), g.get(wv.as_tensor()).unwrap()].iter().map(|t| t.flatten_all().unwrap().to_vec1::<f32>().unwrap()).collect()
}

#[test]
fn winograd_and_im2col_agree_to_rounding() {
    let dev = Device::Cpu;
    // ResNet-18's layer-1 shape at batch 4, and a small odd one.
    for (i, (b, c, co, h, w)) in [(4, 64, 64, 56, 56), (3, 5, 7, 11, 9)].into_iter().enumerate() {
        let s = 100 * i as u64;
        let x = Tensor::from_vec(values(b * c * h * w, s), (b, c, h, w), &dev).unwrap();
        let k = Tensor::from_vec(values(co * c * 9, s + 1), (co, c, 3, 3), &dev).unwrap();
        let r = Tensor::from_vec(values(b * co * h * w, s + 2), (b, co, h, w), &dev).unwrap();
        use_winograd(false);
        let direct = run(&x, &k, &r);
        use_winograd(true);
        let wino = run(&x, &k, &r);
        for (what, (a, d)) in ["y", "dx", "dw"].iter().zip(wino.iter().zip(&direct)) {
            let scale = d.iter().fold(0f32, |m, v| m.max(v.abs()));
            let err = a.iter().zip(d).fold(0f32, |m, (p, q)| m.max((p - q).abs()));
            assert!(err <= 1e-5 * scale, "{what} ({b}, {c}, {co}, {h}, {w}): max difference {err:e}, scale {scale:e}");
            assert!(a != d, "{what}: bit-identical, so the switch did not change the path");
        }
    }
}

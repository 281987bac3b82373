//! The two CPU paths of a 3x3 stride-1 convolution, Winograd F(2x2, 3x3) (the default) and
//! im2col + GEMM (`Kernels { winograd: false, .. }`), give the same y, dx and dw to f32
//! rounding, and the setting really changes the path (the results are not bit-identical).

use candle_core::{Device, Tensor};
use transfer_workbook::ops::Kernels;

use crate::support::{conv_outputs, max_difference, uniform_values as values};

#[test]
fn winograd_and_im2col_agree_to_rounding() {
    let dev = Device::Cpu;
    // ResNet-18's layer-1 shape at batch 4, and a small odd one.
    for (i, (b, c, co, h, w)) in [(4, 64, 64, 56, 56), (3, 5, 7, 11, 9)].into_iter().enumerate() {
        let s = 100 * i as u64;
        let x = Tensor::from_vec(values(b * c * h * w, s), (b, c, h, w), &dev).unwrap();
        let k = Tensor::from_vec(values(co * c * 9, s + 1), (co, c, 3, 3), &dev).unwrap();
        let r = Tensor::from_vec(values(b * co * h * w, s + 2), (b, co, h, w), &dev).unwrap();
        let direct = conv_outputs(&x, &k, &r, 1, 1, Kernels { winograd: false, ..Kernels::default() });
        let wino = conv_outputs(&x, &k, &r, 1, 1, Kernels::default());
        for (what, (a, d)) in ["y", "dx", "dw"].iter().zip(wino.iter().zip(&direct)) {
            let (err, scale) = max_difference(a, d);
            assert!(err <= 1e-5 * scale, "{what} ({b}, {c}, {co}, {h}, {w}): max difference {err:e}, scale {scale:e}");
            assert!(a != d, "{what}: bit-identical, so the switch did not change the path");
        }
    }
}

//! Time the CPU convolution (forward, dX, dW) on every ResNet-18 conv shape, batch 32: im2col +
//! GEMM, and for the 3x3 stride-1 layers also Winograd F(2x2, 3x3) (forward, dX and dW; the
//! 7 px layers run im2col either way, `ops::conv::im2col`'s size rule). `cargo run --release --example
//! conv_layers [batch]`; RAYON_NUM_THREADS sets the threads.

use candle_core::{Device, Tensor};
use std::time::Instant;
use transfer_workbook::ops::conv::im2col::{Conv, ConvGradInput, ConvGradWeight, ConvParams};
use transfer_workbook::ops::Kernels;

fn time<T>(reps: usize, f: impl Fn() -> T) -> f64 {
    f();
    let mut v: Vec<f64> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[reps / 2]
}

fn main() -> candle_core::Result<()> {
    let b: usize = std::env::args().nth(1).map(|s| s.parse().unwrap()).unwrap_or(32);
    // (c_in, c_out, size, k, stride, pad, count in the network)
    let layers = [
        (3, 64, 224, 7, 2, 3, 1),
        (64, 64, 56, 3, 1, 1, 4),
        (64, 128, 56, 3, 2, 1, 1),
        (128, 128, 28, 3, 1, 1, 3),
        (64, 128, 56, 1, 2, 0, 1),
        (128, 256, 28, 3, 2, 1, 1),
        (256, 256, 14, 3, 1, 1, 3),
        (128, 256, 28, 1, 2, 0, 1),
        (256, 512, 14, 3, 2, 1, 1),
        (512, 512, 7, 3, 1, 1, 3),
        (256, 512, 14, 1, 2, 0, 1),
    ];
    let dev = Device::Cpu;
    let mut totals = [[0f64; 3]; 2];
    println!("{:>5} {:>5} {:>4} {:>2} {:>2} {:>3} {:>9} {:>9} {:>9}  GFLOP/s(fwd)  path", "cin", "cout", "hw", "k", "s", "n", "fwd ms", "dx ms", "dw ms");
    for (ci, co, hw, k, s, p, count) in layers {
        let x = Tensor::randn(0f32, 1., (b, ci, hw, hw), &dev)?;
        let w = Tensor::randn(0f32, 1., (co, ci, k, k), &dev)?;
        let pr = ConvParams { stride: s, padding: p, kernels: Kernels::default() };
        let y = x.apply_op2_no_bwd(&w, &Conv { p: pr })?;
        let (_, _, ho, wo) = y.dims4()?;
        let flops = 2.0 * (b * co * ho * wo * ci * k * k) as f64;
        let winograd = (k, s, p) == (3, 1, 1);
        let paths: &[bool] = if winograd { &[false, true] } else { &[false] };
        for &on in paths {
            let pr = ConvParams { kernels: Kernels { winograd: on, ..Kernels::default() }, ..pr };
            let f = time(5, || x.apply_op2_no_bwd(&w, &Conv { p: pr }).unwrap());
            let dx = time(5, || y.apply_op2_no_bwd(&w, &ConvGradInput { p: pr, x_dims: x.dims4().unwrap() }).unwrap());
            let dw = time(5, || x.apply_op2_no_bwd(&y, &ConvGradWeight { p: pr, w_dims: w.dims4().unwrap() }).unwrap());
            // GFLOP/s of the direct form (the work the layer stands for), whatever the path.
            let path = if on { "winograd" } else { "im2col" };
            println!("{ci:>5} {co:>5} {hw:>4} {k:>2} {s:>2} {count:>3} {f:>9.1} {dx:>9.1} {dw:>9.1}  {:>6.1}  {path}", flops / f / 1e6);
            // Totals: `[im2col everywhere, Winograd where it applies]`.
            for (i, t) in totals.iter_mut().enumerate() {
                if on == (i == 1) || !winograd {
                    t[0] += f * count as f64;
                    t[1] += dx * count as f64;
                    t[2] += dw * count as f64;
                }
            }
        }
    }
    for (t, what) in totals.iter().zip(["im2col everywhere", "Winograd for 3x3 stride 1"]) {
        println!("network total, {what}: fwd {:.0} ms, dx {:.0} ms, dw {:.0} ms", t[0], t[1], t[2]);
    }
    Ok(())
}

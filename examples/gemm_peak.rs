//! Single GEMM throughput of the convolutions' matrix product on shapes from ResNet-18 convs,
//! float32 (the gemm crate) and, where the CPU has AVX512-BF16, bfloat16 products with float32
//! sums (`ops::Precision::Bf16`), 1 thread and all threads
//! (`cargo run --release --example gemm_peak`): the baseline the conv kernels are compared to.
use std::time::Instant;
use transfer_workbook::ops::gemm::{gemm_with, Mat};
use transfer_workbook::ops::{bf16_supported, Precision};

fn main() {
    let precisions: &[Precision] = if bf16_supported() { &[Precision::F32, Precision::Bf16] } else { &[Precision::F32] };
    println!("{:>18} {:>5} {:>9} {:>9}", "m x n x k(ᵀ: rhs transposed)", "prec", "1 thread", "parallel");
    // (m, n, k, rhs transposed): ResNet-18's 3x3 layers (im2col forward, dX, dW with its
    // transposed columns), its 7 px layers, then EfficientNet-Lite0's pointwise layers at
    // 112/56 px (forward, dX, and dW = dY · Xᵀ).
    let shapes = [
        (1024usize, 1024usize, 1024usize, false),
        (64, 3136, 576, false),
        (576, 3136, 64, false),
        (64, 576, 3136, true),
        (512, 49, 4608, false),
        (4608, 49, 512, false),
        (512, 4608, 49, true),
        (96, 12544, 16, false),
        (16, 12544, 96, false),
        (96, 16, 12544, true),
        (24, 3136, 144, false),
        (144, 3136, 24, false),
        (24, 144, 3136, true),
    ];
    for &(m, n, k, bt) in &shapes {
        let a: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.25 - 0.5).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i % 5) as f32 * 0.5 - 1.0).collect();
        let mut c = vec![0f32; m * n];
        for &p in precisions {
            let mut rates = Vec::new();
            for parallel in [false, true] {
                let mut best = f64::MAX;
                for _ in 0..7 {
                    let t = Instant::now();
                    let rhs = if bt { Mat::transposed(&b, k) } else { Mat::rows(&b, n) };
                    gemm_with(p, m, n, k, &mut c, false, Mat::rows(&a, k), rhs, parallel);
                    best = best.min(t.elapsed().as_secs_f64());
                }
                rates.push(2.0 * (m * n * k) as f64 / best / 1e9);
            }
            println!("{:>18} {:>5} {:>9.1} {:>9.1}  GFLOP/s", format!("{m}x{n}x{k}{}", if bt { "ᵀ" } else { "" }), p.to_string(), rates[0], rates[1]);
        }
    }
}

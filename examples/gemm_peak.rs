//! Single GEMM throughput of the gemm crate on shapes from ResNet-18 convs, 1 and 2 threads
//! (`cargo run --release --example gemm_peak`): the baseline the conv kernel is compared to.
use std::time::Instant;
fn main() {
    for &(m, n, k) in &[(1024usize, 1024usize, 1024usize), (64, 3136, 576), (576, 3136, 64), (64, 576, 3136), (512, 49, 4608), (4608, 49, 512), (512, 4608, 49)] {
        let a = vec![1.0f32; m * k];
        let b = vec![1.0f32; k * n];
        let mut c = vec![0f32; m * n];
        for par in [gemm::Parallelism::None, gemm::Parallelism::Rayon(2)] {
            let mut best = f64::MAX;
            for _ in 0..7 {
                let t = Instant::now();
                unsafe { gemm::gemm(m, n, k, c.as_mut_ptr(), 1, n as isize, false, a.as_ptr(), 1, k as isize, b.as_ptr(), 1, n as isize, 1.0, 1.0, false, false, false, par) };
                best = best.min(t.elapsed().as_secs_f64());
            }
            println!("{m}x{n}x{k} {:?}: {:.1} GFLOP/s", par, 2.0 * (m * n * k) as f64 / best / 1e9);
        }
    }
}

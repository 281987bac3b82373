//! How the CPU convolution kernels (`im2col`, `winograd`) spread their work over the threads,
//! with a scratch buffer per thread, and sum kernel gradients in an order that never depends
//! on the thread count.

use rayon::prelude::*;

/// How to spread work items (groups of images) over the threads: with at least two per
/// thread, whole items per thread with single-threaded GEMMs; with fewer, items in turn and
/// each GEMM on all threads. Measured with `examples/conv_layers` (ResNet-18 shapes, batch 32,
/// 2 threads): per image, 160-195 GFLOP/s on the 3x3 layers and 0.66 + 0.66 + 0.71 s (fwd, dX,
/// dW) per step; gemm's threading, 110-155 GFLOP/s and 0.88 + 0.80 + 1.09 s (slower on every
/// layer, 2.7x on the stem's dW).
pub(super) fn per_item_parallel(items: usize) -> bool {
    let threads = rayon::current_num_threads();
    threads > 1 && items >= 2 * threads
}

/// Whether a GEMM should spread over the threads itself (items are not run in parallel).
pub(super) fn gemm_par(per_item: bool) -> bool {
    !per_item && rayon::current_num_threads() > 1
}

/// Columns a GEMM should get at least: late layers have few output pixels (ResNet's 7x7 = 49),
/// and one GEMM per image then packs the whole kernel (up to 9.4 MB) again for 49 columns and
/// re-reads the kernel gradient as often. Images are put side by side in one GEMM until it has
/// this many columns (at most a quarter of the batch per group, so there are still groups for
/// every thread). The group size depends only on the shapes, never on the thread count.
pub(super) const GROUP_COLS: usize = 384;

thread_local! {
    /// Column-matrix scratch of this thread, kept between calls: allocating it per call
    /// (up to 7 MB for the ResNet stem) made the kernel zero fresh pages every time.
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `f` with this thread's scratch buffer of at least `len` floats (contents unspecified).
fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len() < len {
                buf.resize(len, 0.0);
            }
            f(&mut buf[..len])
        }
        // Re-entered on this thread (a rayon steal while waiting): a buffer of its own.
        Err(_) => f(&mut vec![0f32; len]),
    })
}

/// Run `f(index, item, scratch)` over `items`, in parallel when `parallel`, each call with
/// a scratch buffer of `scratch_len` floats.
pub(super) fn for_each_item<T: Send>(items: Vec<T>, parallel: bool, scratch_len: usize, f: impl Fn(usize, T, &mut [f32]) + Sync + Send) {
    if parallel {
        items.into_par_iter().enumerate().for_each(|(i, t)| with_scratch(scratch_len, |s| f(i, t, s)));
    } else {
        with_scratch(scratch_len, |s| {
            for (i, t) in items.into_iter().enumerate() {
                f(i, t, s);
            }
        });
    }
}

/// Image groups are summed into this many partial kernel gradients (fixed, whatever the thread
/// count, so the sum order is too), then the partials in order.
const DW_GROUPS: usize = 8;

/// A kernel gradient summed deterministically (im2col's and Winograd's): `units` units of work
/// (image groups) split into at most `DW_GROUPS` runs of consecutive units, whatever the thread
/// count; `f(run, partial, scratch, parallel_gemm)` writes the sum of one run into its partial
/// (`len` floats, zeroed); then the partials are added in order. Returns the sum.
pub(super) fn sum_in_parts(units: usize, len: usize, scratch: usize, f: impl Fn(std::ops::Range<usize>, &mut [f32], &mut [f32], bool) + Sync + Send) -> Vec<f32> {
    let parts = units.clamp(1, DW_GROUPS);
    let per_part = units.div_ceil(parts).max(1);
    let parts = units.div_ceil(per_part).max(1);
    let mut partial = vec![0f32; parts * len];
    let per_item = per_item_parallel(parts);
    let par = gemm_par(per_item);
    let items: Vec<&mut [f32]> = partial.chunks_mut(len).collect();
    for_each_item(items, per_item, scratch, |pi, part, s| f(pi * per_part..((pi + 1) * per_part).min(units), part, s, par));
    let (first, rest) = partial.split_at_mut(len);
    for part in rest.chunks(len) {
        for (a, b) in first.iter_mut().zip(part) {
            *a += b;
        }
    }
    partial.truncate(len);
    partial
}


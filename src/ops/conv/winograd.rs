//! 3x3, stride-1, padding-1 convolution by Winograd's minimal filtering F(2x2, 3x3), CPU f32,
//! for `im2col.rs`'s forward, input-gradient and kernel-gradient kernels.
//!
//! Each 2x2 block of outputs ("tile") is computed from the 4x4 input patch around it as
//! `Y = Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A`: 16 products per tile and channel pair where the direct
//! form needs 36. Summed over input channels, the 16 element-wise products become 16 GEMMs,
//! `M[ξ] [Co, tiles] = U[ξ] [Co, C] · V[ξ] [C, tiles]`, with `U = G g Gᵀ` (the kernel,
//! transformed once per call) and `V = Bᵀ d B` (the input, transformed per image group);
//! the outputs come back by the transform `Aᵀ M A`. The transform matrices hold only 0, ±1
//! and ±1/2, so the rounding stays within a few ulps of the im2col + GEMM form
//! (`tests/ops/conv.rs` checks both against f64).
//!
//! The input gradient of such a convolution is the same convolution of the output gradient
//! with the kernel flipped and its channels swapped, so one kernel serves both.
//!
//! Determinism: each output element comes from one GEMM (fixed k-order) and fixed transforms,
//! and image groups depend on the shapes only, never on the thread count.

use super::parallel::{for_each_item, gemm_par, per_item_parallel, sum_in_parts, GROUP_COLS};
use crate::ops::gemm::{prepare, sgemm, sgemm_prepared, Lhs, Mat, Precision};
use crate::ops::par_zeros;

/// `f(o, i, ky, kx)`: the kernel value for output channel `o`, input channel `i`.
pub(super) trait Kernel: Sync {
    fn at(&self, o: usize, i: usize, ky: usize, kx: usize) -> f32;
}

/// A `[Co, C, 3, 3]` kernel as it is (the forward convolution).
pub(super) struct Direct<'a>(pub &'a [f32], pub usize);

impl Kernel for Direct<'_> {
    fn at(&self, o: usize, i: usize, ky: usize, kx: usize) -> f32 {
        self.0[((o * self.1 + i) * 3 + ky) * 3 + kx]
    }
}

/// The kernel of the input gradient of a `[Co, C, 3, 3]` convolution: flipped in both spatial
/// axes, input and output channels swapped (`[C, Co, 3, 3]`).
pub(super) struct FlippedTransposed<'a>(pub &'a [f32], pub usize);

impl Kernel for FlippedTransposed<'_> {
    fn at(&self, o: usize, i: usize, ky: usize, kx: usize) -> f32 {
        // o is the forward's input channel, i its output channel; self.1 = the forward's C.
        self.0[((i * self.1 + o) * 3 + (2 - ky)) * 3 + (2 - kx)]
    }
}

/// Sizes of one convolution: `x [B, C, H, W]` -> `y [B, Co, H, W]`.
#[derive(Clone, Copy, Debug)]
pub(super) struct Shape {
    pub b: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub co: usize,
    /// The arithmetic of its GEMMs.
    pub precision: Precision,
}

impl Shape {
    fn tiles_h(&self) -> usize {
        self.h.div_ceil(2)
    }

    fn tiles_w(&self) -> usize {
        self.w.div_ceil(2)
    }

    /// Tiles per image.
    fn tiles(&self) -> usize {
        self.tiles_h() * self.tiles_w()
    }

    /// Images per GEMM: enough tiles for the GEMM's columns (as `im2col`'s groups), at most a
    /// quarter of the batch so that every thread has groups.
    fn group(&self) -> usize {
        GROUP_COLS.div_ceil(self.tiles().max(1)).clamp(1, (self.b / 4).max(1))
    }
}

/// `U [16, Co, C]` = `G g Gᵀ` for every channel pair, `G = [[1, 0, 0], [½, ½, ½], [½, -½, ½], [0, 0, 1]]`.
fn transform_kernel(k: &impl Kernel, co: usize, c: usize) -> Vec<f32> {
    let plane = co * c;
    let mut u = vec![0f32; 16 * plane];
    for o in 0..co {
        for i in 0..c {
            let g = |ky, kx| k.at(o, i, ky, kx);
            // t = G g (4x3), row by row.
            let mut t = [[0f32; 3]; 4];
            for x in 0..3 {
                let (g0, g1, g2) = (g(0, x), g(1, x), g(2, x));
                t[0][x] = g0;
                t[1][x] = 0.5 * (g0 + g1 + g2);
                t[2][x] = 0.5 * (g0 - g1 + g2);
                t[3][x] = g2;
            }
            for (r, tr) in t.iter().enumerate() {
                let v = [tr[0], 0.5 * (tr[0] + tr[1] + tr[2]), 0.5 * (tr[0] - tr[1] + tr[2]), tr[2]];
                for (s, vs) in v.iter().enumerate() {
                    u[(r * 4 + s) * plane + o * c + i] = *vs;
                }
            }
        }
    }
    u
}

/// `V[ξ][c][off + tx]` = `Bᵀ d B` of the tiles of tile row `ty` of one image `x [C, H, W]`,
/// with `Bᵀ = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]`; `V` is `[16, C, ld]`.
fn transform_input(s: &Shape, x: &[f32], ty: usize, v: &mut [f32], ld: usize, off: usize) {
    let tw = s.tiles_w();
    let pw = 2 * tw + 2; // padded row: one zero column left, zeros past the right edge
    let mut d = vec![0f32; 4 * pw];
    let mut t = vec![0f32; 4 * pw];
    let plane = s.c * ld;
    for c in 0..s.c {
        let xc = &x[c * s.h * s.w..(c + 1) * s.h * s.w];
        // The 4 input rows 2ty-1 ..= 2ty+2, zero outside the image.
        for (r, row) in d.chunks_exact_mut(pw).enumerate() {
            let iy = (2 * ty + r) as isize - 1;
            if iy >= 0 && (iy as usize) < s.h {
                let iy = iy as usize;
                row[0] = 0.0;
                row[1..1 + s.w].copy_from_slice(&xc[iy * s.w..(iy + 1) * s.w]);
                row[1 + s.w..].fill(0.0);
            } else {
                row.fill(0.0);
            }
        }
        // t = Bᵀ d down the rows, every column at once.
        let (d0, d1, d2, d3) = (&d[..pw], &d[pw..2 * pw], &d[2 * pw..3 * pw], &d[3 * pw..]);
        let (t0, rest) = t.split_at_mut(pw);
        let (t1, rest) = rest.split_at_mut(pw);
        let (t2, t3) = rest.split_at_mut(pw);
        for j in 0..pw {
            t0[j] = d0[j] - d2[j];
            t1[j] = d1[j] + d2[j];
            t2[j] = d2[j] - d1[j];
            t3[j] = d1[j] - d3[j];
        }
        // V = t B across the columns of each tile.
        let col = c * ld + off;
        for (r, tr) in [&*t0, &*t1, &*t2, &*t3].into_iter().enumerate() {
            let at = |q: usize| (r * 4 + q) * plane + col;
            let (rest, v3) = v.split_at_mut(at(3));
            let (rest, v2) = rest.split_at_mut(at(2));
            let (rest, v1) = rest.split_at_mut(at(1));
            let v0 = &mut rest[at(0)..at(0) + tw];
            let (v1, v2, v3) = (&mut v1[..tw], &mut v2[..tw], &mut v3[..tw]);
            for (tx, q) in tr.windows(4).step_by(2).take(tw).enumerate() {
                v0[tx] = q[0] - q[2];
                v1[tx] = q[1] + q[2];
                v2[tx] = q[2] - q[1];
                v3[tx] = q[1] - q[3];
            }
        }
    }
}

/// Output rows of tile row `ty` of one image `y [Co, H, W]` from `M[ξ][o][off + tx]`
/// (`[16, Co, ld]`) by `Aᵀ M A`, `Aᵀ = [[1, 1, 1, 0], [0, 1, -1, -1]]`; outputs past an odd
/// edge are dropped.
fn transform_output(s: &Shape, m: &[f32], ld: usize, off: usize, ty: usize, y: &mut [f32]) {
    let tw = s.tiles_w();
    let plane = s.co * ld;
    let mut out = vec![0f32; 2 * 2 * tw];
    for o in 0..s.co {
        let yo = &mut y[o * s.h * s.w..(o + 1) * s.h * s.w];
        let col = o * ld + off;
        let mq: [&[f32]; 16] = std::array::from_fn(|q| &m[q * plane + col..q * plane + col + tw]);
        let (r0, r1) = out.split_at_mut(2 * tw);
        for tx in 0..tw {
            // a = Aᵀ M (2x4), then y = a A (2x2).
            let mut a = [[0f32; 4]; 2];
            for j in 0..4 {
                let (m0, m1, m2, m3) = (mq[j][tx], mq[4 + j][tx], mq[8 + j][tx], mq[12 + j][tx]);
                a[0][j] = m0 + m1 + m2;
                a[1][j] = m1 - m2 - m3;
            }
            r0[2 * tx] = a[0][0] + a[0][1] + a[0][2];
            r0[2 * tx + 1] = a[0][1] - a[0][2] - a[0][3];
            r1[2 * tx] = a[1][0] + a[1][1] + a[1][2];
            r1[2 * tx + 1] = a[1][1] - a[1][2] - a[1][3];
        }
        for (dy, r) in out.chunks_exact(2 * tw).enumerate() {
            let oy = 2 * ty + dy;
            if oy < s.h {
                yo[oy * s.w..(oy + 1) * s.w].copy_from_slice(&r[..s.w]);
            }
        }
    }
}

/// Columns (tiles) per block of the GEMMs: a block's transformed input and products
/// (`16 * (C + Co) * cols` floats) should stay in the core's cache between the transforms and
/// the GEMMs. Measured with `examples/conv_layers` (see `Geom::winograd` in im2col.rs).
const BLOCK_COLS: usize = 128;

/// `y [B, Co, H, W]` = the 3x3, stride-1, padding-1 convolution of `x [B, C, H, W]` by `k`.
pub(super) fn conv3x3(s: Shape, x: &[f32], k: &impl Kernel) -> Vec<f32> {
    let ut = transform_kernel(k, s.co, s.c);
    // U[ξ] is the left operand of every block's GEMMs: prepared once.
    let u: Vec<Lhs> = ut.chunks_exact(s.co * s.c).map(|uq| prepare(s.precision, s.co, s.c, Mat::rows(uq, s.c))).collect();
    let (th, tw, nb) = (s.tiles_h(), s.tiles_w(), s.group());
    let (in_len, out_len) = (s.c * s.h * s.w, s.co * s.h * s.w);
    // A block: about BLOCK_COLS tiles, whole tile rows, of one image or (small images) several.
    let rows_per_block = BLOCK_COLS.div_ceil(tw);
    let mut y = par_zeros(s.b * out_len);
    let items: Vec<(&[f32], &mut [f32])> = x.chunks(nb * in_len).zip(y.chunks_mut(nb * out_len)).collect();
    let per_item = per_item_parallel(items.len());
    let par = gemm_par(per_item);
    let scratch = 16 * (s.c + s.co) * rows_per_block.min(nb * th) * tw;
    for_each_item(items, per_item, scratch, |_, (xg, yg), buf| {
        let m = yg.len() / out_len;
        // The group's tile rows in order, in blocks of `rows_per_block`.
        let all: Vec<(usize, usize)> = (0..m).flat_map(|j| (0..th).map(move |ty| (j, ty))).collect();
        for rows in all.chunks(rows_per_block) {
            let l = rows.len() * tw;
            let (v, rest) = buf.split_at_mut(16 * s.c * l);
            let mm = &mut rest[..16 * s.co * l];
            for (k, &(j, ty)) in rows.iter().enumerate() {
                transform_input(&s, &xg[j * in_len..(j + 1) * in_len], ty, v, l, k * tw);
            }
            for (q, uq) in u.iter().enumerate() {
                let vq = &v[q * s.c * l..(q + 1) * s.c * l];
                sgemm_prepared(l, &mut mm[q * s.co * l..(q + 1) * s.co * l], false, uq, Mat::rows(vq, l), par);
            }
            for (k, &(j, ty)) in rows.iter().enumerate() {
                transform_output(&s, mm, l, k * tw, ty, &mut yg[j * out_len..(j + 1) * out_len]);
            }
        }
    });
    y
}

/// `dM[ξ][o][off + tx]` = `A dY Aᵀ` of the 2x2 output-gradient tiles of tile row `ty` of one
/// image `gy [Co, H, W]` (zeros past an odd edge); `dM` is `[16, Co, ld]`. The transpose of the
/// output transform: `y = Aᵀ M A` gives `dM = A dy Aᵀ`.
fn transform_grad(s: &Shape, gy: &[f32], ty: usize, dm: &mut [f32], ld: usize, off: usize) {
    let tw = s.tiles_w();
    let plane = s.co * ld;
    let mut p = vec![0f32; 2 * 2 * tw];
    for o in 0..s.co {
        let go = &gy[o * s.h * s.w..(o + 1) * s.h * s.w];
        for (dy, row) in p.chunks_exact_mut(2 * tw).enumerate() {
            let oy = 2 * ty + dy;
            if oy < s.h {
                row[..s.w].copy_from_slice(&go[oy * s.w..(oy + 1) * s.w]);
                row[s.w..].fill(0.0);
            } else {
                row.fill(0.0);
            }
        }
        let col = o * ld + off;
        let (p0, p1) = p.split_at(2 * tw);
        for tx in 0..tw {
            let (a0, b0, a1, b1) = (p0[2 * tx], p0[2 * tx + 1], p1[2 * tx], p1[2 * tx + 1]);
            // Rows of A dY: (a0, b0), (a0 + a1, b0 + b1), (a0 - a1, b0 - b1), (-a1, -b1);
            // each row (a, b) times Aᵀ: (a, a + b, a - b, -b).
            let r = [(a0, b0), (a0 + a1, b0 + b1), (a0 - a1, b0 - b1), (-a1, -b1)];
            for (i, &(a, b)) in r.iter().enumerate() {
                for (j, v) in [a, a + b, a - b, -b].into_iter().enumerate() {
                    dm[(i * 4 + j) * plane + col + tx] = v;
                }
            }
        }
    }
}

/// `dW [Co, C, 3, 3]` of the 3x3, stride-1, padding-1 convolution of `x [B, C, H, W]` whose
/// output gradient is `gy [B, Co, H, W]`: `dU[ξ] = Σ_tiles dM[ξ] · V[ξ]ᵀ` (16 GEMMs over the
/// tiles, the forward's `V`), then `dW = Gᵀ dU G` (the transpose of the kernel transform).
/// Image groups are summed by `parallel::sum_in_parts`, as `im2col`'s kernel gradient: the
/// result never depends on the thread count.
pub(super) fn kernel_grad3x3(s: Shape, x: &[f32], gy: &[f32]) -> Vec<f32> {
    let (th, tw, nb) = (s.tiles_h(), s.tiles_w(), s.group());
    let (in_len, out_len, ulen) = (s.c * s.h * s.w, s.co * s.h * s.w, 16 * s.co * s.c);
    let rows_per_block = BLOCK_COLS.div_ceil(tw);
    let scratch = 16 * (s.c + s.co) * rows_per_block.min(nb * th) * tw;
    let du = sum_in_parts(s.b.div_ceil(nb), ulen, scratch, |units, du, buf, par| {
        let imgs = units.start * nb..(units.end * nb).min(s.b);
        // This run's tile rows in order, in blocks of `rows_per_block` as in the forward.
        let all: Vec<(usize, usize)> = imgs.flat_map(|j| (0..th).map(move |ty| (j, ty))).collect();
        for (bi, rows) in all.chunks(rows_per_block).enumerate() {
            let l = rows.len() * tw;
            let (v, rest) = buf.split_at_mut(16 * s.c * l);
            let dm = &mut rest[..16 * s.co * l];
            for (k, &(j, ty)) in rows.iter().enumerate() {
                transform_input(&s, &x[j * in_len..(j + 1) * in_len], ty, v, l, k * tw);
                transform_grad(&s, &gy[j * out_len..(j + 1) * out_len], ty, dm, l, k * tw);
            }
            for q in 0..16 {
                let (dmq, vq) = (&dm[q * s.co * l..(q + 1) * s.co * l], &v[q * s.c * l..(q + 1) * s.c * l]);
                sgemm(s.precision, s.co, s.c, l, &mut du[q * s.co * s.c..(q + 1) * s.co * s.c], bi > 0, Mat::rows(dmq, l), Mat::transposed(vq, l), par);
            }
        }
    });
    // dW = Gᵀ dU G per channel pair, Gᵀ = [[1, ½, ½, 0], [0, ½, -½, 0], [0, ½, ½, 1]].
    let plane = s.co * s.c;
    let mut dw = vec![0f32; s.co * s.c * 9];
    for (oc, d) in dw.chunks_exact_mut(9).enumerate() {
        let u = |i: usize, j: usize| du[(i * 4 + j) * plane + oc];
        // t = Gᵀ dU (3x4), column by column.
        let mut t = [[0f32; 4]; 3];
        for j in 0..4 {
            let (u0, u1, u2, u3) = (u(0, j), u(1, j), u(2, j), u(3, j));
            t[0][j] = u0 + 0.5 * (u1 + u2);
            t[1][j] = 0.5 * (u1 - u2);
            t[2][j] = 0.5 * (u1 + u2) + u3;
        }
        for (a, ta) in t.iter().enumerate() {
            d[a * 3] = ta[0] + 0.5 * (ta[1] + ta[2]);
            d[a * 3 + 1] = 0.5 * (ta[1] - ta[2]);
            d[a * 3 + 2] = 0.5 * (ta[1] + ta[2]) + ta[3];
        }
    }
    dw
}

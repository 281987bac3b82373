//! bfloat16 GEMM with float32 sums for x86-64 CPUs with AVX512-BF16 (`Precision::Bf16` of
//! `ops::gemm`): `dst [m, n] (+)= lhs [m, k] · rhs [k, n]`, operands f32 in memory.
//!
//! `VDPBF16PS` multiplies pairs of bfloat16 along k and adds both products to a float32 lane:
//! 32 multiply-adds per instruction where an f32 FMA does 16. The operands are rounded to
//! bfloat16 (to nearest, ties to even) while they are packed, as pairs of consecutive k:
//! - `lhs` in panels of `MR` rows: `[pair][row]`, one 32-bit pair per row, broadcast;
//! - `rhs` in panels of `NR` columns: `[pair][column]`, two 512-bit vectors per pair.
//!
//! The micro-kernel keeps an `MR x NR` block of `dst` in 24 registers over a block of `KC`
//! k-values. Loops: k-blocks (outer, in order) → pack all of `lhs`'s block → column panels
//! (pack `rhs`'s panel, 24 KB, stays in L1) → row panels. A parallel product splits the
//! column panels over the threads; every element still sums its k-blocks in order and each
//! block in one fixed order, so results never depend on the thread count. A left operand used
//! by several products (Winograd's transformed kernel) can be packed once (`Packed`,
//! `gemm_packed`): the same arithmetic in the same order.

use super::Mat;
use rayon::prelude::*;

/// Rows of a micro-tile (broadcast `lhs` pairs).
pub(super) const MR: usize = 12;
/// Columns of a micro-tile (two vectors of 16 float32).
pub(super) const NR: usize = 32;
/// k-values per block (even): the `rhs` panel is `KC/2 * NR * 4` = 24 KB.
const KC: usize = 384;

/// Whether this CPU has what the kernel needs.
pub(super) fn supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512bw") && std::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The bfloat16 nearest to `x` (ties to even; NaN stays NaN), as the low 16 bits.
#[inline(always)]
fn round(x: f32) -> u32 {
    let b = x.to_bits();
    let nearest = b.wrapping_add(0x7FFF + ((b >> 16) & 1)) >> 16;
    if b & 0x7FFF_FFFF > 0x7F80_0000 {
        (b >> 16) | 0x40
    } else {
        nearest
    }
}

/// Two float32 as a pair of bfloat16: `a` in the low half (the first of the pair).
#[inline(always)]
fn pair(a: f32, b: f32) -> u32 {
    round(a) | (round(b) << 16)
}

/// Pack k-values `k0..k0 + kc` of `w` lines `o0..o0 + w` of `src` (`src[k * ks + o * os]`) as
/// `out[p * W + j]` = the pair (k0 + 2p, k0 + 2p + 1) of line `o0 + j`; zeros past `kc` and `w`.
/// With AVX512-BF16's conversion where a layout allows it (16 lines at a time across rows;
/// 16, 8 or 4 along lines, `vector`); the rest, and other layouts, by `pair`, compiled for
/// AVX-512 so those loops vectorise too.
#[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx512f,avx512bw,avx512bf16"))]
#[allow(clippy::too_many_arguments)]
unsafe fn pack<const W: usize>(src: &[f32], ks: usize, os: usize, k0: usize, kc: usize, o0: usize, w: usize, out: &mut [u32]) {
    let kp = kc.div_ceil(2);
    let out = &mut out[..kp * W];
    if w < W {
        out.fill(0);
    }
    let full = kc / 2;
    let at = |k: usize, o: usize| src[(k0 + k) * ks + (o0 + o) * os];
    if os == 1 {
        // Lines contiguous (a row-major `rhs`, a transposed `lhs`): pairs across two rows.
        let done = vector::across_rows::<W>(src, ks, k0, full, o0, w, out);
        for p in 0..full {
            let r0 = &src[(k0 + 2 * p) * ks + o0..][..w];
            let r1 = &src[(k0 + 2 * p + 1) * ks + o0..][..w];
            for j in done..w {
                out[p * W + j] = pair(r0[j], r1[j]);
            }
        }
    } else if ks == 1 {
        // k contiguous (a row-major `lhs`, a transposed `rhs`): each line's pairs are adjacent.
        let done = vector::along_lines::<W>(src, os, k0, full, o0, w, out);
        for j in done..w {
            let line = &src[(o0 + j) * os + k0..][..2 * full];
            for (p, ab) in line.chunks_exact(2).enumerate() {
                out[p * W + j] = pair(ab[0], ab[1]);
            }
        }
    } else {
        for p in 0..full {
            for j in 0..w {
                out[p * W + j] = pair(at(2 * p, j), at(2 * p + 1, j));
            }
        }
    }
    if kc % 2 == 1 {
        for j in 0..w {
            out[full * W + j] = round(at(kc - 1, j));
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod vector {
    use std::arch::x86_64::*;

    /// `pack`'s pairs `0..full` across rows `2p`, `2p + 1` (lines contiguous, `os == 1`), 16
    /// lines at a time: both rows converted at once (low half row `2p`), then the words
    /// interleaved. Returns the lines done (a multiple of 16).
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn across_rows<const W: usize>(src: &[f32], ks: usize, k0: usize, full: usize, o0: usize, w: usize, out: &mut [u32]) -> usize {
        let lines = w / 16 * 16;
        if full == 0 || lines == 0 {
            return 0;
        }
        // Bounds: the last row read is k0 + 2 full - 1, its last line o0 + lines - 1.
        assert!((k0 + 2 * full - 1) * ks + o0 + lines <= src.len() && (full - 1) * W + lines <= out.len());
        let interleave = _mm512_set_epi16(
            31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0,
        );
        let (s, o) = (src.as_ptr(), out.as_mut_ptr());
        for p in 0..full {
            let r0 = s.add((k0 + 2 * p) * ks + o0);
            let r1 = r0.add(ks);
            for j in (0..lines).step_by(16) {
                let words: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(_mm512_loadu_ps(r1.add(j)), _mm512_loadu_ps(r0.add(j))));
                _mm512_storeu_si512(o.add(p * W + j).cast(), _mm512_permutexvar_epi16(interleave, words));
            }
        }
        lines
    }

    /// `pack`'s pairs `0..full` along lines (k contiguous, `ks == 1`), 16, 8 or 4 lines at a
    /// time: each line's pair is 8 bytes, gathered for 8 (or 4) lines per instruction, and two
    /// gathers converted at once give the lines' pairs in order. Returns the lines done (all but
    /// the last `w % 4`). The lhs panels (12 lines) go 8 + 4: Winograd's GEMMs are only ~128
    /// columns wide, so a scalar lhs packing measured ~15% of a bf16 ResNet-18 step.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn along_lines<const W: usize>(src: &[f32], os: usize, k0: usize, full: usize, o0: usize, w: usize, out: &mut [u32]) -> usize {
        let lines = w / 4 * 4;
        if full == 0 || lines == 0 || 15 * os > i32::MAX as usize {
            return 0;
        }
        assert!((o0 + lines - 1) * os + k0 + 2 * full <= src.len() && (full - 1) * W + lines <= out.len());
        let os32 = os as i32;
        let eight = _mm256_setr_epi32(0, os32, 2 * os32, 3 * os32, 4 * os32, 5 * os32, 6 * os32, 7 * os32);
        let four = _mm_setr_epi32(0, os32, 2 * os32, 3 * os32);
        let (s, o) = (src.as_ptr(), out.as_mut_ptr());
        let mut j = 0;
        while j < lines {
            let c = if lines - j >= 16 { 16 } else if lines - j >= 8 { 8 } else { 4 };
            let mask = ((1u32 << c) - 1) as __mmask16;
            let first = s.add((o0 + j) * os + k0);
            let second = first.add(8 * os);
            for p in 0..full {
                let a = if c >= 8 {
                    _mm512_i32gather_epi64::<4>(eight, first.add(2 * p).cast())
                } else {
                    _mm512_zextsi256_si512(_mm256_i32gather_epi64::<4>(first.add(2 * p).cast(), four))
                };
                let b = if c == 16 { _mm512_i32gather_epi64::<4>(eight, second.add(2 * p).cast()) } else { _mm512_setzero_si512() };
                let pairs = _mm512_cvtne2ps_pbh(_mm512_castsi512_ps(b), _mm512_castsi512_ps(a));
                _mm512_mask_storeu_epi32(o.add(p * W + j).cast(), mask, std::mem::transmute::<__m512bh, __m512i>(pairs));
            }
            j += c;
        }
        lines
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod vector {
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn across_rows<const W: usize>(_: &[f32], _: usize, _: usize, _: usize, _: usize, _: usize, _: &mut [u32]) -> usize {
        0
    }
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn along_lines<const W: usize>(_: &[f32], _: usize, _: usize, _: usize, _: usize, _: usize, _: &mut [u32]) -> usize {
        0
    }
}

/// `dst` rows `rows` x columns `cols` (at most `MR x NR`, row stride `ldc`) `=` or `+=` the
/// product of a packed `lhs` panel `a` and `rhs` panel `b` over `kp` pairs.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel(kp: usize, a: &[u32], b: &[u32], dst: *mut f32, ldc: usize, rows: usize, cols: usize, add: bool) {
    use std::arch::x86_64::*;
    debug_assert!(a.len() >= kp * MR && b.len() >= kp * NR);
    let (a, b) = (a.as_ptr(), b.as_ptr());
    let mut acc = [_mm512_setzero_ps(); 2 * MR];
    for p in 0..kp {
        // SAFETY: `a` holds `kp * MR` pairs and `b` `kp * NR` (checked by the caller).
        let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(p * NR).cast()));
        let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(p * NR + 16).cast()));
        let ap = a.add(p * MR);
        for i in 0..MR {
            let ai: __m512bh = std::mem::transmute(_mm512_set1_epi32(*ap.add(i) as i32));
            acc[2 * i] = _mm512_dpbf16_ps(acc[2 * i], ai, b0);
            acc[2 * i + 1] = _mm512_dpbf16_ps(acc[2 * i + 1], ai, b1);
        }
    }
    let mask = |c: usize| -> __mmask16 { ((1u32 << c.min(16)) - 1) as __mmask16 };
    let (m0, m1) = (mask(cols), mask(cols.saturating_sub(16)));
    for (i, v) in acc.chunks_exact(2).take(rows).enumerate() {
        // SAFETY: the caller hands a `rows x cols` block of `dst` with row stride `ldc`; the
        // masks keep the stores inside `cols`.
        let d = dst.add(i * ldc);
        let (mut v0, mut v1) = (v[0], v[1]);
        if add {
            v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(m0, d));
            v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(m1, d.add(16)));
        }
        _mm512_mask_storeu_ps(d, m0, v0);
        _mm512_mask_storeu_ps(d.add(16), m1, v1);
    }
}

#[cfg(not(target_arch = "x86_64"))]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel(_: usize, _: &[u32], _: &[u32], _: *mut f32, _: usize, _: usize, _: usize, _: bool) {
    unreachable!("bf16::supported() is false off x86-64")
}

thread_local! {
    /// Packed `lhs` block and `rhs` panel of this thread, kept between calls.
    static PACKS: std::cell::RefCell<(Vec<u32>, Vec<u32>)> = const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// `f` with this thread's packing buffers of at least `a` and `b` pairs (contents unspecified).
fn with_packs<R>(a: usize, b: usize, f: impl FnOnce(&mut [u32], &mut [u32]) -> R) -> R {
    PACKS.with(|cell| match cell.try_borrow_mut() {
        Ok(mut bufs) => {
            let (pa, pb) = &mut *bufs;
            if pa.len() < a {
                pa.resize(a, 0);
            }
            if pb.len() < b {
                pb.resize(b, 0);
            }
            f(&mut pa[..a], &mut pb[..b])
        }
        // Re-entered on this thread (a rayon steal while waiting): buffers of its own.
        Err(_) => f(&mut vec![0; a], &mut vec![0; b]),
    })
}

/// `dst` shared between the threads of one product; each writes only its own column panels.
#[derive(Clone, Copy)]
struct Dst(*mut f32);
// SAFETY: the column panels handed to the threads are disjoint.
unsafe impl Send for Dst {}
unsafe impl Sync for Dst {}

impl Dst {
    /// The element at `offset` (a method, so closures capture the whole `Dst`, not its pointer).
    fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

/// A left operand packed once for several products (Winograd's transformed kernel serves
/// every block of tiles): its panels for each k-block in order, as `gemm` packs them.
pub(crate) struct Packed {
    m: usize,
    k: usize,
    panels: Vec<u32>,
}

/// Pack `lhs [m, k]`'s k-block `k0..k0 + kc` into `apack` (`m.div_ceil(MR) * MR * kp` pairs).
fn pack_lhs_block(m: usize, lhs: Mat, k0: usize, kc: usize, apack: &mut [u32], parallel: bool) {
    let kp = kc.div_ceil(2);
    let pack_a = |(r, panel): (usize, &mut [u32])| {
        // SAFETY: in bounds: `lhs` was checked for `[m, k]`.
        unsafe { pack::<MR>(lhs.data, lhs.cs, lhs.rs, k0, kc, r * MR, MR.min(m - r * MR), panel) }
    };
    if parallel {
        apack.par_chunks_mut(MR * kp).enumerate().for_each(pack_a);
    } else {
        apack.chunks_mut(MR * kp).enumerate().for_each(pack_a);
    }
}

impl Packed {
    /// `lhs [m, k]` (checked by the caller), packed.
    pub(super) fn new(m: usize, k: usize, lhs: Mat) -> Self {
        // Every k-block but the last has an even KC values: ceil(k / 2) pairs in all.
        let per_pair = m.div_ceil(MR) * MR;
        let mut panels = vec![0u32; per_pair * k.div_ceil(2)];
        let mut at = 0;
        for k0 in (0..k).step_by(KC) {
            let kc = KC.min(k - k0);
            let len = per_pair * kc.div_ceil(2);
            pack_lhs_block(m, lhs, k0, kc, &mut panels[at..at + len], false);
            at += len;
        }
        Self { m, k, panels }
    }

    /// `(m, k)`.
    pub(super) fn dims(&self) -> (usize, usize) {
        (self.m, self.k)
    }
}

/// One k-block of a product: every column panel of `rhs` packed and multiplied by the packed
/// `lhs` block `apack`; `dst` `=` or (`add`) `+=`.
#[allow(clippy::too_many_arguments)]
fn columns(m: usize, n: usize, k0: usize, kc: usize, apack: &[u32], out: Dst, add: bool, rhs: Mat, parallel: bool, bpack: &mut [u32]) {
    let (kp, row_panels) = (kc.div_ceil(2), m.div_ceil(MR));
    let column = |c: usize, bpack: &mut [u32]| {
        let cols = NR.min(n - c * NR);
        // SAFETY: in bounds: `rhs` was checked for `[k, n]`.
        unsafe { pack::<NR>(rhs.data, rhs.rs, rhs.cs, k0, kc, c * NR, cols, bpack) };
        for r in 0..row_panels {
            let rows = MR.min(m - r * MR);
            // SAFETY: the `rows x cols` block at (r * MR, c * NR) lies inside `dst [m, n]`,
            // and no other thread writes column panel `c`.
            unsafe { kernel(kp, &apack[r * MR * kp..], bpack, out.at(r * MR * n + c * NR), n, rows, cols, add) };
        }
    };
    let col_panels = n.div_ceil(NR);
    if parallel {
        (0..col_panels).into_par_iter().for_each_init(|| vec![0u32; kp * NR], |b, c| column(c, b));
    } else {
        let bpack = &mut bpack[..kp * NR];
        (0..col_panels).for_each(|c| column(c, bpack));
    }
}

/// `dst [m, n] (row-major) = lhs [m, k] · rhs [k, n]`, or `+=` with `accumulate`; operands
/// checked by `gemm::gemm_with`, and `supported()` must be true.
#[allow(clippy::too_many_arguments)]
pub(super) fn gemm(m: usize, n: usize, k: usize, dst: &mut [f32], accumulate: bool, lhs: Mat, rhs: Mat, parallel: bool) {
    let row_panels = m.div_ceil(MR);
    let out = Dst(dst.as_mut_ptr());
    let kp_max = KC.min(k).div_ceil(2);
    with_packs(row_panels * MR * kp_max, kp_max * NR, |apack, bpack| {
        for k0 in (0..k).step_by(KC) {
            let kc = KC.min(k - k0);
            let apack = &mut apack[..row_panels * MR * kc.div_ceil(2)];
            pack_lhs_block(m, lhs, k0, kc, apack, parallel);
            columns(m, n, k0, kc, apack, out, accumulate || k0 > 0, rhs, parallel, bpack);
        }
    })
}

/// `gemm` with a packed `lhs` (`Packed::new`): the same arithmetic in the same order.
pub(super) fn gemm_packed(n: usize, dst: &mut [f32], accumulate: bool, lhs: &Packed, rhs: Mat, parallel: bool) {
    let (m, k) = (lhs.m, lhs.k);
    let row_panels = m.div_ceil(MR);
    let out = Dst(dst.as_mut_ptr());
    let kp_max = KC.min(k).div_ceil(2);
    with_packs(0, kp_max * NR, |_, bpack| {
        let mut at = 0;
        for k0 in (0..k).step_by(KC) {
            let kc = KC.min(k - k0);
            let len = row_panels * MR * kc.div_ceil(2);
            columns(m, n, k0, kc, &lhs.panels[at..at + len], out, accumulate || k0 > 0, rhs, parallel, bpack);
            at += len;
        }
    })
}

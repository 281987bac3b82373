//! A matrix operand of the GEMMs: a slice with row and column strides.

/// A row-major or strided f32 matrix operand: `data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub struct Mat<'a> {
    pub(super) data: &'a [f32],
    pub(super) rs: usize,
    pub(super) cs: usize,
}

impl<'a> Mat<'a> {
    /// A row-major `[_, cols]` matrix.
    pub fn rows(data: &'a [f32], cols: usize) -> Self {
        Self { data, rs: cols, cs: 1 }
    }

    /// The transpose of a row-major `[_, cols]` matrix.
    pub fn transposed(data: &'a [f32], cols: usize) -> Self {
        Self { data, rs: 1, cs: cols }
    }

    pub(super) fn check(&self, m: usize, n: usize) {
        if m > 0 && n > 0 {
            assert!((m - 1) * self.rs + (n - 1) * self.cs < self.data.len(), "gemm operand out of bounds");
        }
    }
}

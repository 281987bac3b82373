//! BatchNorm's arithmetic: fused CPU kernels with an explicit backward pass, and a tensor-op
//! path for other devices (autograd differentiates it). The layer with its running statistics
//! is `models::BatchNorm`.
//!
//! Written with tensor ops, BatchNorm's backward reduces full activations over (N, H, W)
//! through Candle's generic strided reduction four times per layer, which dominated a CPU
//! training step. Here statistics, normalisation and the gradients are single passes over
//! each channel's planes (parallel over channels).
//!
//! With `x̂ = (x - mean) * inv_std`, `y = w * x̂ + b`, sums over a channel's N*H*W values:
//! `db = Σg`, `dw = Σ g x̂`, and `dx = w * inv_std * (g - (db + x̂ dw) / M)` with batch
//! statistics, or `dx = w * inv_std * g` when the statistics are constants (running stats).

use super::{cpu_f32, par_output};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Visit the `(batch, plane)` slices of channel `c` of an `[N, C, HW]` buffer.
fn planes(data: &[f32], n: usize, c_count: usize, hw: usize, c: usize) -> impl Iterator<Item = &[f32]> {
    (0..n).map(move |b| &data[(b * c_count + c) * hw..(b * c_count + c + 1) * hw])
}

/// Lanes of the reductions below: independent accumulators the compiler keeps in vector
/// registers. A plain `iter().sum()` is one dependency chain (float addition is not
/// associative, so it is not vectorised): one add per FP-add latency, which made the
/// statistics and gradient sums ~14% of a ResNet-18 training step (`perf`, batch 32). The
/// order is still fixed (lane `i` takes elements `i, i + 16, ...`, lanes summed in order),
/// so results do not depend on the thread count.
const LANES: usize = 16;

/// `Σ f(v)` over a plane, in f64.
#[inline(always)]
fn lane_sum(p: &[f32], f: impl Fn(f32) -> f64) -> f64 {
    let mut acc = [0f64; LANES];
    let chunks = p.chunks_exact(LANES);
    let tail = chunks.remainder();
    for ch in chunks {
        for i in 0..LANES {
            acc[i] += f(ch[i]);
        }
    }
    for (i, &v) in tail.iter().enumerate() {
        acc[i] += f(v);
    }
    acc.iter().sum()
}

/// `(Σ g, Σ g (x - mean))` over a plane, accumulated in f32 lanes, returned in f64.
#[inline(always)]
fn lane_grad_sums(xp: &[f32], gp: &[f32], mean: f32) -> (f64, f64) {
    let (mut a, mut b) = ([0f32; LANES], [0f32; LANES]);
    let (xc, gc) = (xp.chunks_exact(LANES), gp.chunks_exact(LANES));
    let (xt, gt) = (xc.remainder(), gc.remainder());
    for (xs, gs) in xc.zip(gc) {
        for i in 0..LANES {
            a[i] += gs[i];
            b[i] += gs[i] * (xs[i] - mean);
        }
    }
    for (i, (&xv, &gv)) in xt.iter().zip(gt).enumerate() {
        a[i] += gv;
        b[i] += gv * (xv - mean);
    }
    (a.iter().map(|&v| v as f64).sum(), b.iter().map(|&v| v as f64).sum())
}

struct Dims {
    n: usize,
    c: usize,
    hw: usize,
}

fn dims(l: &Layout) -> Result<Dims> {
    let (n, c, h, w) = l.shape().dims4()?;
    Ok(Dims { n, c, hw: h * w })
}

/// Per-channel mean and biased variance, as a `[2, C]` tensor.
struct ChannelStats;

impl CustomOp1 for ChannelStats {
    fn name(&self) -> &'static str {
        "bn-channel-stats"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = cpu_f32(s, l, "batch norm")?;
        let d = dims(l)?;
        let m = (d.n * d.hw) as f64;
        let stats: Vec<(f32, f32)> = (0..d.c)
            .into_par_iter()
            .map(|c| {
                let sum: f64 = planes(x, d.n, d.c, d.hw, c).map(|p| lane_sum(p, |v| v as f64)).sum();
                let mean = sum / m;
                let sq: f64 = planes(x, d.n, d.c, d.hw, c).map(|p| lane_sum(p, |v| (v as f64 - mean).powi(2))).sum();
                (mean as f32, (sq / m) as f32)
            })
            .collect();
        let mut out: Vec<f32> = stats.iter().map(|s| s.0).collect();
        out.extend(stats.iter().map(|s| s.1));
        Ok((CpuStorage::F32(out), Shape::from((2, d.c))))
    }
}

/// `[2, C]`: mean and biased variance of each channel of a contiguous `[N, C, H, W]` f32 tensor.
pub fn channel_stats(x: &Tensor) -> Result<Tensor> {
    x.detach().contiguous()?.apply_op1_no_bwd(&ChannelStats)
}

/// What follows BatchNorm in a block, fused into its pass: nothing, ReLU or ReLU6.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    Identity,
    Relu,
    Relu6,
}

impl Activation {
    /// The upper clip of `min(max(v, 0), hi)`; `None` for the identity.
    fn clip(self) -> Option<f32> {
        match self {
            Activation::Identity => None,
            Activation::Relu => Some(f32::INFINITY),
            Activation::Relu6 => Some(6.0),
        }
    }

    /// The activation as its own op (the path for other devices).
    fn apply(self, y: Tensor) -> Result<Tensor> {
        match self {
            Activation::Identity => Ok(y),
            Activation::Relu => super::relu(&y),
            Activation::Relu6 => super::relu6(&y),
        }
    }
}

/// `y = act(w * (x - mean) * inv_std + b [+ residual])` in one pass; arguments (x, [w; b] as a
/// `[2, C]` tensor) or (x, [w; b], residual).
///
/// A ResNet block is conv -> BN -> ReLU and, at its end, BN -> + shortcut -> ReLU. As separate
/// ops each arrow is a full activation written and read again, and in the backward pass each
/// one costs Candle's gradient bookkeeping: a zero-filled buffer plus an addition for every
/// gradient that reaches a tensor (`GradStore::or_insert`), and a pass for the ReLU mask.
/// Fused, the backward pass masks the gradient once and hands the same buffer to the residual.
/// The arithmetic is the separate ops' (normalise, add, clip, in that order), so results are
/// bit-identical to them.
struct Normalize {
    mean: Vec<f32>,
    inv_std: Vec<f32>,
    /// Statistics come from this batch (their gradient flows back into dx).
    batch_stats: bool,
    act: Activation,
}

impl Normalize {
    fn cpu(&self, x: (&CpuStorage, &Layout), wb: (&CpuStorage, &Layout), residual: Option<(&CpuStorage, &Layout)>) -> Result<(CpuStorage, Shape)> {
        let (l1, what) = (x.1, "batch norm");
        let (x, wb) = (cpu_f32(x.0, x.1, what)?, cpu_f32(wb.0, wb.1, what)?);
        let r = residual.map(|(s, l)| cpu_f32(s, l, what)).transpose()?;
        let d = dims(l1)?;
        let (w, b) = wb.split_at(d.c);
        let clip = self.act.clip();
        let y = par_output(x.len(), d.hw, |i, yp| {
            let xp = &x[i * d.hw..(i + 1) * d.hw];
            let c = i % d.c;
            let scale = w[c] * self.inv_std[c];
            let shift = b[c] - self.mean[c] * scale;
            match r {
                // (x * scale + shift) + r, the separate ops' rounding, in the same pass.
                Some(r) => {
                    for ((yv, xv), rv) in yp.iter_mut().zip(xp).zip(&r[i * d.hw..(i + 1) * d.hw]) {
                        *yv = xv * scale + shift + rv;
                    }
                }
                None => {
                    for (yv, xv) in yp.iter_mut().zip(xp) {
                        *yv = xv * scale + shift;
                    }
                }
            }
            if let Some(hi) = clip {
                super::activation::clip_in_place(yp, hi);
            }
        });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    /// Gradients of (x, [w; b], residual) from the output `y` and its gradient.
    fn grads(&self, x: &Tensor, wb: &Tensor, residual: Option<&Tensor>, y: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        // The gradient past the activation: the one buffer BN's backward and the residual share.
        let g = match self.act.clip() {
            Some(hi) => super::activation::clip_grad(&y.detach(), &grad, hi)?,
            None => grad,
        };
        let sums = x.detach().apply_op2_no_bwd(&g, &GradSums { mean: self.mean.clone(), inv_std: self.inv_std.clone() })?;
        let (db, dw) = (sums.get(0)?, sums.get(1)?);
        let dx = if x.track_op() {
            let op = GradInput {
                mean: self.mean.clone(),
                inv_std: self.inv_std.clone(),
                weight: wb.detach().get(0)?.to_vec1::<f32>()?,
                db: db.to_vec1::<f32>()?,
                dw: dw.to_vec1::<f32>()?,
                batch_stats: self.batch_stats,
            };
            Some(x.detach().apply_op2_no_bwd(&g, &op)?)
        } else {
            None
        };
        let dwb = if wb.track_op() { Some(Tensor::stack(&[dw, db], 0)?) } else { None };
        let dr = residual.filter(|r| r.track_op()).map(|_| g);
        Ok((dx, dwb, dr))
    }
}

impl CustomOp2 for Normalize {
    fn name(&self) -> &'static str {
        "batch-norm"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        self.cpu((s1, l1), (s2, l2), None)
    }

    fn bwd(&self, x: &Tensor, wb: &Tensor, res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dwb, _) = self.grads(x, wb, None, res, grad)?;
        Ok((dx, dwb))
    }
}

impl CustomOp3 for Normalize {
    fn name(&self) -> &'static str {
        "batch-norm-residual"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        self.cpu((s1, l1), (s2, l2), Some((s3, l3)))
    }

    fn bwd(&self, x: &Tensor, wb: &Tensor, r: &Tensor, res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        self.grads(x, wb, Some(r), res, grad)
    }
}

/// `[2, C]`: `Σg` and `Σ g x̂` per channel; arguments (x, grad).
struct GradSums {
    mean: Vec<f32>,
    inv_std: Vec<f32>,
}

impl CustomOp2 for GradSums {
    fn name(&self) -> &'static str {
        "batch-norm-grad-sums"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, g) = (cpu_f32(s1, l1, "batch norm")?, cpu_f32(s2, l2, "batch norm")?);
        let d = dims(l1)?;
        let sums: Vec<(f32, f32)> = (0..d.c)
            .into_par_iter()
            .map(|c| {
                let (mut sg, mut sgx) = (0f64, 0f64);
                for (xp, gp) in planes(x, d.n, d.c, d.hw, c).zip(planes(g, d.n, d.c, d.hw, c)) {
                    let (a, b) = lane_grad_sums(xp, gp, self.mean[c]);
                    sg += a;
                    sgx += b;
                }
                (sg as f32, (sgx * self.inv_std[c] as f64) as f32)
            })
            .collect();
        let mut out: Vec<f32> = sums.iter().map(|s| s.0).collect();
        out.extend(sums.iter().map(|s| s.1));
        Ok((CpuStorage::F32(out), Shape::from((2, d.c))))
    }
}

/// dx; arguments (x, grad).
struct GradInput {
    mean: Vec<f32>,
    inv_std: Vec<f32>,
    weight: Vec<f32>,
    db: Vec<f32>,
    dw: Vec<f32>,
    batch_stats: bool,
}

impl CustomOp2 for GradInput {
    fn name(&self) -> &'static str {
        "batch-norm-grad-input"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, g) = (cpu_f32(s1, l1, "batch norm")?, cpu_f32(s2, l2, "batch norm")?);
        let d = dims(l1)?;
        let m = (d.n * d.hw) as f32;
        let dx = par_output(x.len(), d.hw, |i, dp| {
            let (xp, gp) = (&x[i * d.hw..(i + 1) * d.hw], &g[i * d.hw..(i + 1) * d.hw]);
            let c = i % d.c;
            let k = self.weight[c] * self.inv_std[c];
            if self.batch_stats {
                let (mdb, mdw) = (self.db[c] / m, self.dw[c] / m);
                for ((dv, xv), gv) in dp.iter_mut().zip(xp).zip(gp) {
                    let xhat = (xv - self.mean[c]) * self.inv_std[c];
                    *dv = k * (gv - mdb - xhat * mdw);
                }
            } else {
                for (dv, gv) in dp.iter_mut().zip(gp) {
                    *dv = k * gv;
                }
            }
        });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// Normalise `x` with per-channel `mean` / `var` (`[C]`), scale and shift, add `residual`,
/// apply `act` (CPU kernels, one op).
#[allow(clippy::too_many_arguments)]
fn normalize_cpu(x: &Tensor, weight: &Tensor, bias: &Tensor, mean: &Tensor, var: &Tensor, eps: f64, batch_stats: bool, residual: Option<&Tensor>, act: Activation) -> Result<Tensor> {
    let c = x.dim(1)?;
    for (name, t) in [("weight", weight), ("bias", bias), ("running mean", mean), ("running var", var)] {
        if t.dims() != [c] {
            candle_core::bail!("batch norm: {name} of shape {:?} for an activation of {c} channels (shape {:?})", t.dims(), x.dims());
        }
    }
    let mean = mean.to_vec1::<f32>()?;
    let inv_std = var.to_vec1::<f32>()?.iter().map(|v| 1.0 / (v + eps as f32).sqrt()).collect();
    let op = Normalize { mean, inv_std, batch_stats, act };
    let wb = Tensor::stack(&[weight, bias], 0)?;
    match residual {
        Some(r) => {
            if r.shape() != x.shape() {
                candle_core::bail!("batch norm: residual of shape {:?} added to an activation of shape {:?}", r.dims(), x.dims());
            }
            x.contiguous()?.apply_op3(&wb, &r.contiguous()?, op)
        }
        None => x.contiguous()?.apply_op2(&wb, op),
    }
}

fn use_cpu_kernels(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == candle_core::DType::F32 && x.rank() == 4
}

fn channel_view(t: &Tensor) -> Result<Tensor> {
    t.reshape((1, t.elem_count(), 1, 1))
}

/// Per-channel mean `[1, C, 1, 1]` with tensor ops. Reducing the contiguous spatial dims first
/// is ~50x faster on Candle's CPU backend than one reduction over (0, 2, 3).
fn channel_mean(x: &Tensor, n: f64) -> Result<Tensor> {
    x.sum_keepdim((2, 3))?.sum_keepdim(0)? / n
}

/// Training-mode BatchNorm of `x [N, C, H, W]` with this batch's statistics:
/// `(y, mean [C], biased var [C])`; the statistics come back detached, for the running update.
/// CPU f32: the fused kernels above; elsewhere: tensor ops that autograd differentiates.
pub fn batch_norm_train(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<(Tensor, Tensor, Tensor)> {
    batch_norm_train_act(x, weight, bias, eps, None, Activation::Identity)
}

/// [`batch_norm_train`] followed by `+ residual` (same shape as `x`) and `act`, fused on the
/// CPU: `(act(BN(x) + residual), mean, var)`.
pub fn batch_norm_train_act(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64, residual: Option<&Tensor>, act: Activation) -> Result<(Tensor, Tensor, Tensor)> {
    if use_cpu_kernels(x) {
        let stats = channel_stats(x)?;
        let (mean, var) = (stats.get(0)?, stats.get(1)?);
        let y = normalize_cpu(x, weight, bias, &mean, &var, eps, true, residual, act)?;
        return Ok((y, mean, var));
    }
    let (b, _, h, w) = x.dims4()?;
    let n = (b * h * w) as f64;
    let mean = channel_mean(x, n)?;
    let centered = x.broadcast_sub(&mean)?;
    let var = channel_mean(&centered.sqr()?, n)?;
    let inv_std = (var.clone() + eps)?.sqrt()?.recip()?;
    let y = centered
        .broadcast_mul(&inv_std)?
        .broadcast_mul(&channel_view(weight)?)?
        .broadcast_add(&channel_view(bias)?)?;
    Ok((add_then(y, residual, act)?, mean.detach().flatten_all()?, var.detach().flatten_all()?))
}

/// Evaluation-mode BatchNorm: normalise with fixed statistics `mean`, `var` (`[C]`, no gradient).
pub fn batch_norm_eval(x: &Tensor, weight: &Tensor, bias: &Tensor, mean: &Tensor, var: &Tensor, eps: f64) -> Result<Tensor> {
    batch_norm_eval_act(x, weight, bias, mean, var, eps, None, Activation::Identity)
}

/// [`batch_norm_eval`] followed by `+ residual` and `act`, fused on the CPU.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_eval_act(x: &Tensor, weight: &Tensor, bias: &Tensor, mean: &Tensor, var: &Tensor, eps: f64, residual: Option<&Tensor>, act: Activation) -> Result<Tensor> {
    if use_cpu_kernels(x) {
        return normalize_cpu(x, weight, bias, mean, var, eps, false, residual, act);
    }
    // y = x * scale + shift with scale = w / sqrt(var + eps), shift = b - mean * scale.
    let scale = (weight * (var.detach() + eps)?.sqrt()?.recip()?)?;
    let shift = (bias - (mean.detach() * &scale)?)?;
    let y = x.broadcast_mul(&channel_view(&scale)?)?.broadcast_add(&channel_view(&shift)?)?;
    add_then(y, residual, act)
}

/// `act(y + residual)` as separate ops (the path for other devices).
fn add_then(y: Tensor, residual: Option<&Tensor>, act: Activation) -> Result<Tensor> {
    let y = match residual {
        Some(r) => (y + r)?,
        None => y,
    };
    act.apply(y)
}

//! 2-D convolution as a candle custom op whose CPU forward and backward are im2col/col2im + GEMM
//! (the `gemm` crate candle itself uses), tiled so each column buffer stays in cache, parallel over
//! (image, tile) or (image, channel block) tasks with rayon.
//!
//! Why: candle 0.11's CPU conv backward sends the input gradient through a direct-loop
//! `conv_transpose2d`, measured at ~16 GFLOP/s on a 2-core Xeon while GEMM reaches ~200.
//! Here the three products of a conv layer are all GEMMs over the same column layout:
//!
//! - forward:      `Y[n]  = W · col(X[n])`            (Cout × K) · (K × P)
//! - input grad:   `dX[n] = col2im(Wᵀ · dY[n])`        (K × Cout) · (Cout × P)
//! - weight grad:  `dW    = Σₙ dY[n] · col(X[n])ᵀ`     (Cout × P) · (P × K)
//!
//! with `K = Cin/groups · kh · kw` and `P` the output pixels of a tile. A 1×1 stride-1 unpadded
//! conv needs no column buffer: `X[n]` already is `col(X[n])`.
//!
//! On CUDA/Metal (or for non-f32 dtypes) [`conv2d`] calls candle's built-in conv instead: correct,
//! just slower — never a wrong result.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::{cpu_f32, with_f32, OutBuf, SyncPtr};

/// Convolution hyper-parameters (the same in both spatial dimensions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvParams {
    pub stride: usize,
    pub padding: usize,
    pub dilation: usize,
    pub groups: usize,
}

impl Default for ConvParams {
    fn default() -> Self {
        Self {
            stride: 1,
            padding: 0,
            dilation: 1,
            groups: 1,
        }
    }
}

/// Shapes of one convolution.
#[derive(Debug, Clone, Copy)]
struct Geom {
    n: usize,
    cin: usize,
    h: usize,
    w: usize,
    cout: usize,
    kh: usize,
    kw: usize,
    oh: usize,
    ow: usize,
    p: ConvParams,
}

impl Geom {
    fn new(x: &[usize], wt: &[usize], p: ConvParams) -> candle_core::Result<Self> {
        let (&[n, cin, h, w], &[cout, cin_g, kh, kw]) = (x, wt) else {
            candle_core::bail!("conv2d: expected 4-D input and weight, got {x:?} and {wt:?}")
        };
        if p.groups == 0 || cin % p.groups != 0 || cout % p.groups != 0 || cin / p.groups != cin_g {
            candle_core::bail!(
                "conv2d: input {x:?} and weight {wt:?} do not fit groups = {}",
                p.groups
            )
        }
        if p.stride == 0 || p.dilation == 0 {
            candle_core::bail!("conv2d: stride and dilation must be >= 1")
        }
        let ext_h = p.dilation * (kh - 1) + 1;
        let ext_w = p.dilation * (kw - 1) + 1;
        if h + 2 * p.padding < ext_h || w + 2 * p.padding < ext_w {
            candle_core::bail!("conv2d: kernel {kh}×{kw} larger than padded input {h}×{w}")
        }
        let oh = (h + 2 * p.padding - ext_h) / p.stride + 1;
        let ow = (w + 2 * p.padding - ext_w) / p.stride + 1;
        Ok(Self {
            n,
            cin,
            h,
            w,
            cout,
            kh,
            kw,
            oh,
            ow,
            p,
        })
    }
    fn cin_g(&self) -> usize {
        self.cin / self.p.groups
    }
    fn cout_g(&self) -> usize {
        self.cout / self.p.groups
    }
    /// Rows of the column matrix of one group.
    fn k(&self) -> usize {
        self.cin_g() * self.kh * self.kw
    }
    /// 1×1, stride 1, no padding: the input is its own column matrix.
    fn is_pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.p.stride == 1 && self.p.padding == 0
    }
    /// Output rows per tile, so that a column tile holds about 128 Ki floats (512 KiB).
    fn rows_per_tile(&self) -> usize {
        const TARGET: usize = 128 * 1024;
        (TARGET / (self.k() * self.ow).max(1)).clamp(1, self.oh)
    }
    fn tiles(&self) -> Vec<(usize, usize)> {
        let r = self.rows_per_tile();
        (0..self.oh)
            .step_by(r)
            .map(|r0| (r0, (r0 + r).min(self.oh)))
            .collect()
    }
}

/// `dst (m×n) = [dst +] lhs (m×k) · rhs (k×n)` with explicit (row, column) strides, single-threaded
/// (the callers parallelise over tasks).
#[allow(clippy::too_many_arguments)]
#[inline]
unsafe fn gemm_f32(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: isize,
    accumulate: bool,
    lhs: *const f32,
    lhs_rs: isize,
    lhs_cs: isize,
    rhs: *const f32,
    rhs_rs: isize,
    rhs_cs: isize,
) {
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        dst_rs,
        accumulate,
        lhs,
        lhs_cs,
        lhs_rs,
        rhs,
        rhs_cs,
        rhs_rs,
        1.0f32,
        1.0f32,
        false,
        false,
        false,
        gemm::Parallelism::None,
    )
}

/// Fill `col` (K × P, P = (r1 - r0)·ow) with the patches of output rows `r0..r1` of image `x`
/// (`cin_g` channels starting at `x`). Out-of-image taps are zero.
fn im2col(x: &[f32], g: &Geom, r0: usize, r1: usize, col: &mut [f32]) {
    let (h, w, ow) = (g.h as isize, g.w as isize, g.ow);
    let (s, pad, d) = (
        g.p.stride as isize,
        g.p.padding as isize,
        g.p.dilation as isize,
    );
    let plen = (r1 - r0) * ow;
    for c in 0..g.cin_g() {
        let plane = &x[c * g.h * g.w..(c + 1) * g.h * g.w];
        for i in 0..g.kh {
            for j in 0..g.kw {
                let row = &mut col[((c * g.kh + i) * g.kw + j) * plen..][..plen];
                let dx = j as isize * d - pad;
                // Output columns whose input column is inside the image: 0 <= ox*s + dx < w.
                let ox_lo = if dx >= 0 {
                    0
                } else {
                    ((-dx + s - 1) / s) as usize
                };
                let ox_hi = if w - dx <= 0 {
                    0
                } else {
                    (((w - dx + s - 1) / s) as usize).min(ow)
                };
                for oy in r0..r1 {
                    let out = &mut row[(oy - r0) * ow..(oy - r0 + 1) * ow];
                    let iy = oy as isize * s - pad + i as isize * d;
                    if iy < 0 || iy >= h || ox_lo >= ox_hi {
                        out.fill(0.0);
                        continue;
                    }
                    let src = &plane[iy as usize * g.w..(iy as usize + 1) * g.w];
                    out[..ox_lo].fill(0.0);
                    out[ox_hi..].fill(0.0);
                    if s == 1 {
                        let start = (ox_lo as isize + dx) as usize;
                        out[ox_lo..ox_hi].copy_from_slice(&src[start..start + ox_hi - ox_lo]);
                    } else {
                        for (ox, o) in out.iter_mut().enumerate().take(ox_hi).skip(ox_lo) {
                            *o = src[(ox as isize * s + dx) as usize];
                        }
                    }
                }
            }
        }
    }
}

/// The adjoint of [`im2col`]: add the column gradients of output rows `r0..r1` of channels
/// `c0..c1` (rows of `col` relative to `c0`) into the image gradient `dx` (channels from `c0`).
fn col2im(col: &[f32], g: &Geom, c_count: usize, r0: usize, r1: usize, dx: &mut [f32]) {
    let (h, w, ow) = (g.h as isize, g.w as isize, g.ow);
    let (s, pad, d) = (
        g.p.stride as isize,
        g.p.padding as isize,
        g.p.dilation as isize,
    );
    let plen = (r1 - r0) * ow;
    for c in 0..c_count {
        let plane = &mut dx[c * g.h * g.w..(c + 1) * g.h * g.w];
        for i in 0..g.kh {
            for j in 0..g.kw {
                let row = &col[((c * g.kh + i) * g.kw + j) * plen..][..plen];
                let dxo = j as isize * d - pad;
                let ox_lo = if dxo >= 0 {
                    0
                } else {
                    ((-dxo + s - 1) / s) as usize
                };
                let ox_hi = if w - dxo <= 0 {
                    0
                } else {
                    (((w - dxo + s - 1) / s) as usize).min(ow)
                };
                if ox_lo >= ox_hi {
                    continue;
                }
                for oy in r0..r1 {
                    let iy = oy as isize * s - pad + i as isize * d;
                    if iy < 0 || iy >= h {
                        continue;
                    }
                    let src = &row[(oy - r0) * ow..(oy - r0 + 1) * ow];
                    let dst = &mut plane[iy as usize * g.w..(iy as usize + 1) * g.w];
                    if s == 1 {
                        let start = (ox_lo as isize + dxo) as usize;
                        for (o, v) in dst[start..start + ox_hi - ox_lo]
                            .iter_mut()
                            .zip(&src[ox_lo..ox_hi])
                        {
                            *o += v;
                        }
                    } else {
                        for (ox, v) in src.iter().enumerate().take(ox_hi).skip(ox_lo) {
                            dst[(ox as isize * s + dxo) as usize] += v;
                        }
                    }
                }
            }
        }
    }
}

/// Forward: `Y = conv(X, W) [+ b]`.
fn forward(x: &[f32], wt: &[f32], bias: Option<&[f32]>, g: &Geom) -> Vec<f32> {
    let (k, cin_g, cout_g) = (g.k(), g.cin_g(), g.cout_g());
    let p_out = g.oh * g.ow;
    // Every element is written below: by the bias fill, or by a GEMM that does not read dst.
    let mut y = OutBuf::new(g.n * g.cout * p_out);
    let yp = y.sync_ptr();
    let tiles = g.tiles();
    let tasks: Vec<(usize, usize)> = (0..g.n)
        .flat_map(|n| (0..tiles.len()).map(move |t| (n, t)))
        .collect();
    tasks
        .par_iter()
        .for_each_init(Vec::new, |col: &mut Vec<f32>, &(n, t)| {
            let (r0, r1) = tiles[t];
            let plen = (r1 - r0) * g.ow;
            for grp in 0..g.p.groups {
                let xin = &x[(n * g.cin + grp * cin_g) * g.h * g.w..][..cin_g * g.h * g.w];
                let (rhs, rhs_rs) = if g.is_pointwise() {
                    (xin[r0 * g.w..].as_ptr(), (g.h * g.w) as isize)
                } else {
                    col.resize(k * plen, 0.0);
                    im2col(xin, g, r0, r1, col);
                    (col.as_ptr(), plen as isize)
                };
                // SAFETY: every task writes its own (image, rows) block of Y; pointers and strides
                // stay inside their buffers.
                let off = (n * g.cout + grp * cout_g) * p_out + r0 * g.ow;
                if let Some(b) = bias {
                    for co in 0..cout_g {
                        let row = unsafe { yp.uninit(off + co * p_out, plen) };
                        row.fill(std::mem::MaybeUninit::new(b[grp * cout_g + co]));
                    }
                }
                let dst = unsafe { yp.ptr().add(off) };
                unsafe {
                    gemm_f32(
                        cout_g,
                        plen,
                        k,
                        dst,
                        p_out as isize,
                        bias.is_some(),
                        wt[grp * cout_g * k..].as_ptr(),
                        k as isize,
                        1,
                        rhs,
                        rhs_rs,
                        1,
                    );
                }
            }
        });
    // SAFETY: the tasks cover every (image, channel, row) of Y: bias fill or GEMM wrote it.
    unsafe { y.assume_init() }
}

/// Input gradient: `dX = col2im(Wᵀ · dY)`, tasks over (image, group, channel block).
fn backward_input(dy: &[f32], wt: &[f32], g: &Geom) -> Vec<f32> {
    let (k, cin_g, cout_g) = (g.k(), g.cin_g(), g.cout_g());
    let khw = g.kh * g.kw;
    let p_out = g.oh * g.ow;
    let mut dx = vec![0f32; g.n * g.cin * g.h * g.w];
    let dxp = SyncPtr::new(dx.as_mut_ptr());
    let threads = rayon::current_num_threads().max(1);
    let blocks = (2 * threads).div_ceil(g.n * g.p.groups).clamp(1, cin_g);
    let per_block = cin_g.div_ceil(blocks);
    let tiles = g.tiles();
    let mut tasks = vec![];
    for n in 0..g.n {
        for grp in 0..g.p.groups {
            for c0 in (0..cin_g).step_by(per_block) {
                tasks.push((n, grp, c0, (c0 + per_block).min(cin_g)));
            }
        }
    }
    tasks
        .par_iter()
        .for_each_init(Vec::new, |col: &mut Vec<f32>, &(n, grp, c0, c1)| {
            let cc = c1 - c0;
            let ch0 = n * g.cin + grp * cin_g + c0;
            let dyg = &dy[(n * g.cout + grp * cout_g) * p_out..];
            // Wᵀ rows for channels c0..c1: element (r, o) of Wᵀ is W[o, r].
            let lhs = wt[grp * cout_g * k + c0 * khw..].as_ptr();
            // SAFETY: each task owns channels c0..c1 of image n (and group grp) of dX.
            let dxc = unsafe { dxp.init(ch0 * g.h * g.w, cc * g.h * g.w) };
            if g.is_pointwise() {
                unsafe {
                    gemm_f32(
                        cc,
                        p_out,
                        cout_g,
                        dxc.as_mut_ptr(),
                        p_out as isize,
                        false,
                        lhs,
                        1,
                        k as isize,
                        dyg.as_ptr(),
                        p_out as isize,
                        1,
                    );
                }
                return;
            }
            for &(r0, r1) in &tiles {
                let plen = (r1 - r0) * g.ow;
                col.resize(cc * khw * plen, 0.0);
                unsafe {
                    gemm_f32(
                        cc * khw,
                        plen,
                        cout_g,
                        col.as_mut_ptr(),
                        plen as isize,
                        false,
                        lhs,
                        1,
                        k as isize,
                        dyg[r0 * g.ow..].as_ptr(),
                        p_out as isize,
                        1,
                    );
                }
                col2im(col, g, cc, r0, r1, dxc);
            }
        });
    dx
}

/// Weight gradient: `dW = Σ dY · col(X)ᵀ`, tasks over (image, tile), each thread accumulating its
/// own dW, summed at the end.
fn backward_weight(x: &[f32], dy: &[f32], g: &Geom) -> Vec<f32> {
    let (k, cin_g, cout_g) = (g.k(), g.cin_g(), g.cout_g());
    let p_out = g.oh * g.ow;
    let tiles = g.tiles();
    let tasks: Vec<(usize, usize)> = (0..g.n)
        .flat_map(|n| (0..tiles.len()).map(move |t| (n, t)))
        .collect();
    let wlen = g.cout * k;
    // One accumulator per thread: tasks are cut into as many contiguous groups as threads, each
    // summed sequentially into its own dW (rayon's `fold` would make one per split).
    let groups = rayon::current_num_threads().max(1).min(tasks.len().max(1));
    let per = tasks.len().div_ceil(groups);
    let partial: Vec<Vec<f32>> = tasks
        .par_chunks(per.max(1))
        .map(|chunk| {
            let mut dw = vec![0f32; wlen];
            let mut col = Vec::new();
            for &(n, t) in chunk {
                let (r0, r1) = tiles[t];
                let plen = (r1 - r0) * g.ow;
                for grp in 0..g.p.groups {
                    let xin = &x[(n * g.cin + grp * cin_g) * g.h * g.w..][..cin_g * g.h * g.w];
                    let (rhs, rhs_cs) = if g.is_pointwise() {
                        (xin[r0 * g.w..].as_ptr(), (g.h * g.w) as isize)
                    } else {
                        col.resize(k * plen, 0.0);
                        im2col(xin, g, r0, r1, &mut col);
                        (col.as_ptr(), plen as isize)
                    };
                    // col(X)ᵀ: element (p, r) is col[r, p].
                    unsafe {
                        gemm_f32(
                            cout_g,
                            k,
                            plen,
                            dw[grp * cout_g * k..].as_mut_ptr(),
                            k as isize,
                            true,
                            dy[(n * g.cout + grp * cout_g) * p_out + r0 * g.ow..].as_ptr(),
                            p_out as isize,
                            1,
                            rhs,
                            1,
                            rhs_cs,
                        );
                    }
                }
            }
            dw
        })
        .collect();
    let mut it = partial.into_iter();
    let mut dw = it.next().unwrap_or_else(|| vec![0f32; wlen]);
    for p in it {
        dw.iter_mut().zip(&p).for_each(|(a, b)| *a += b);
    }
    dw
}

/// The forward custom op; its backward calls [`ConvInputGrad`] and [`ConvWeightGrad`].
struct ConvOp(ConvParams);

impl CustomOp2 for ConvOp {
    fn name(&self) -> &'static str {
        "kdet-conv2d"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = Geom::new(l1.dims(), l2.dims(), self.0)?;
        let y = forward(
            cpu_f32(s1, l1, "conv2d")?,
            cpu_f32(s2, l2, "conv2d")?,
            None,
            &g,
        );
        Ok((CpuStorage::F32(y), Shape::from((g.n, g.cout, g.oh, g.ow))))
    }
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let dy = dy.contiguous()?;
        // Skip gradients nobody needs: the network input (an image batch) and frozen weights
        // are not tracked by autograd.
        let dx = match x.track_op() {
            true => Some(dy.apply_op2_no_bwd(
                w,
                &ConvInputGrad {
                    p: self.0,
                    x_dims: x.dims().to_vec(),
                },
            )?),
            false => None,
        };
        let dw = match w.track_op() {
            true => Some(x.apply_op2_no_bwd(
                &dy,
                &ConvWeightGrad {
                    p: self.0,
                    w_dims: w.dims().to_vec(),
                },
            )?),
            false => None,
        };
        Ok((dx, dw))
    }
}

/// The forward custom op with a bias, added inside the kernel (no broadcast pass).
struct ConvBiasOp(ConvParams);

impl CustomOp3 for ConvBiasOp {
    fn name(&self) -> &'static str {
        "kdet-conv2d-bias"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = Geom::new(l1.dims(), l2.dims(), self.0)?;
        if l3.dims() != [g.cout] {
            candle_core::bail!("conv2d: bias shape {:?}, expected [{}]", l3.dims(), g.cout)
        }
        let b = cpu_f32(s3, l3, "conv2d")?;
        let y = forward(
            cpu_f32(s1, l1, "conv2d")?,
            cpu_f32(s2, l2, "conv2d")?,
            Some(b),
            &g,
        );
        Ok((CpuStorage::F32(y), Shape::from((g.n, g.cout, g.oh, g.ow))))
    }
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dw) = ConvOp(self.0).bwd(x, w, y, dy)?;
        // db[c] = Σ_{n, y, x} dY[n, c, y, x], one task per channel.
        let (n, c, oh, ow) = dy.dims4()?;
        let p = oh * ow;
        let db: Vec<f32> = with_f32(dy, |d| {
            (0..c)
                .into_par_iter()
                .map(|ch| {
                    (0..n)
                        .map(|i| d[(i * c + ch) * p..][..p].iter().sum::<f32>())
                        .sum()
                })
                .collect()
        })?;
        Ok((dx, dw, Some(Tensor::from_vec(db, b.dims(), b.device())?)))
    }
}

/// `(dY, W) → dX`.
struct ConvInputGrad {
    p: ConvParams,
    x_dims: Vec<usize>,
}

impl CustomOp2 for ConvInputGrad {
    fn name(&self) -> &'static str {
        "kdet-conv2d-input-grad"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = Geom::new(&self.x_dims, l2.dims(), self.p)?;
        if l1.dims() != [g.n, g.cout, g.oh, g.ow] {
            candle_core::bail!(
                "conv2d backward: gradient shape {:?} does not match the output",
                l1.dims()
            )
        }
        let dx = backward_input(cpu_f32(s1, l1, "conv2d")?, cpu_f32(s2, l2, "conv2d")?, &g);
        Ok((CpuStorage::F32(dx), Shape::from(self.x_dims.clone())))
    }
}

/// `(X, dY) → dW`.
struct ConvWeightGrad {
    p: ConvParams,
    w_dims: Vec<usize>,
}

impl CustomOp2 for ConvWeightGrad {
    fn name(&self) -> &'static str {
        "kdet-conv2d-weight-grad"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = Geom::new(l1.dims(), &self.w_dims, self.p)?;
        if l2.dims() != [g.n, g.cout, g.oh, g.ow] {
            candle_core::bail!(
                "conv2d backward: gradient shape {:?} does not match the output",
                l2.dims()
            )
        }
        let dw = backward_weight(cpu_f32(s1, l1, "conv2d")?, cpu_f32(s2, l2, "conv2d")?, &g);
        Ok((CpuStorage::F32(dw), Shape::from(self.w_dims.clone())))
    }
}

/// Which implementation runs a convolution.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ConvImpl {
    /// kdet's im2col + GEMM op on CPU f32; candle's built-in elsewhere.
    #[default]
    Kdet,
    /// Always candle's built-in `conv2d` (the reference path, for tests and benchmarks).
    Candle,
}

/// `conv2d(x, w) + b` with `x: N×Cin×H×W`, `w: Cout×Cin/groups×kh×kw`, `b: Cout`.
pub fn conv2d(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    p: ConvParams,
    imp: ConvImpl,
) -> candle_core::Result<Tensor> {
    let on_cpu = x.device().is_cpu() && x.dtype() == DType::F32 && w.dtype() == DType::F32;
    if imp == ConvImpl::Kdet && on_cpu {
        let (x, w) = (x.contiguous()?, w.contiguous()?);
        return match b {
            Some(b) => x.apply_op3(&w, &b.contiguous()?, ConvBiasOp(p)),
            None => x.apply_op2(&w, ConvOp(p)),
        };
    }
    let y = x.conv2d(w, p.padding, p.stride, p.dilation, p.groups)?;
    match b {
        Some(b) => y.broadcast_add(&b.reshape((1, b.elem_count(), 1, 1))?),
        None => Ok(y),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::gradcheck::assert_grad_matches_fd;
    use candle_core::{Device, Var};

    fn rand(shape: &[usize], seed: u64) -> Tensor {
        // Deterministic values in [-1, 1).
        let n: usize = shape.iter().product();
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let v: Vec<f32> = (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn max_rel(a: &Tensor, b: &Tensor) -> f32 {
        let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(a.len(), b.len());
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
        a.iter()
            .zip(&b)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()))
            / scale
    }

    /// (x shape, w shape, params): odd sizes, stride 2, groups, 1×1, 7×7, dilation.
    fn cases() -> Vec<([usize; 4], [usize; 4], ConvParams)> {
        let p = |stride, padding, dilation, groups| ConvParams {
            stride,
            padding,
            dilation,
            groups,
        };
        vec![
            ([2, 3, 11, 13], [4, 3, 3, 3], p(1, 1, 1, 1)),
            ([2, 4, 15, 9], [6, 4, 3, 3], p(2, 1, 1, 1)),
            ([1, 6, 10, 10], [4, 3, 3, 3], p(1, 1, 1, 2)),
            ([2, 5, 7, 9], [8, 5, 1, 1], p(1, 0, 1, 1)),
            ([2, 5, 8, 9], [3, 5, 1, 1], p(2, 0, 1, 1)),
            ([1, 3, 23, 19], [5, 3, 7, 7], p(2, 3, 1, 1)),
            ([2, 4, 12, 12], [4, 4, 3, 3], p(1, 2, 2, 1)),
            ([1, 8, 9, 9], [8, 1, 3, 3], p(1, 1, 1, 8)),
            ([1, 2, 5, 6], [3, 2, 3, 2], p(1, 0, 1, 1)),
        ]
    }

    /// Gradients of `Σ r ⊙ conv(x, w) + b` for an implementation, or candle's error.
    fn grads(
        xs: &[usize],
        ws: &[usize],
        p: ConvParams,
        seed: u64,
        imp: ConvImpl,
    ) -> candle_core::Result<[Tensor; 4]> {
        let x = Var::from_tensor(&rand(xs, seed)).unwrap();
        let w = Var::from_tensor(&rand(ws, seed + 100)).unwrap();
        let b = Var::from_tensor(&rand(&[ws[0]], seed + 200)).unwrap();
        let y = conv2d(&x, &w, Some(&b), p, imp)?;
        // A non-uniform upstream gradient.
        let r = rand(y.dims(), seed + 300);
        let g = (&y * &r)?.sum_all()?.backward()?;
        Ok([
            y,
            g.get(&x).unwrap().clone(),
            g.get(&w).unwrap().clone(),
            g.get(&b).unwrap().clone(),
        ])
    }

    #[test]
    fn forward_and_gradients_match_candle() {
        let mut candle_failed = 0;
        for (i, (xs, ws, p)) in cases().into_iter().enumerate() {
            let k = grads(&xs, &ws, p, 1 + i as u64, ConvImpl::Kdet).unwrap();
            match grads(&xs, &ws, p, 1 + i as u64, ConvImpl::Candle) {
                Ok(c) => {
                    for (name, a, b) in [
                        ("y", &k[0], &c[0]),
                        ("dx", &k[1], &c[1]),
                        ("dw", &k[2], &c[2]),
                        ("db", &k[3], &c[3]),
                    ] {
                        assert_eq!(a.dims(), b.dims(), "case {i}: {name}");
                        let e = max_rel(a, b);
                        assert!(
                            e < 1e-4,
                            "case {i} ({xs:?} {ws:?} {p:?}): {name} rel err {e}"
                        );
                    }
                }
                // candle 0.11's backward fails when (H + 2p − k) is not a multiple of the stride
                // (its conv_transpose2d returns one row/column short); such cases are checked
                // against finite differences below.
                Err(e) => {
                    assert!(e.to_string().contains("shape mismatch"), "case {i}: {e}");
                    check_finite_differences(&xs, &ws, p);
                    candle_failed += 1;
                }
            }
        }
        assert!(candle_failed < cases().len() / 2);
    }

    /// Central differences of `Σ r ⊙ conv(x, w)` for x and for w. The function is bilinear, so
    /// with h = 1e-2 the only error is f32 rounding of the sums.
    fn check_finite_differences(xs: &[usize], ws: &[usize], p: ConvParams) {
        let (x, w) = (rand(xs, 7), rand(ws, 8));
        let what = format!("{xs:?} {ws:?} {p:?}");
        let conv = |a: &Tensor, b: &Tensor| conv2d(a, b, None, p, ConvImpl::Kdet).unwrap();
        assert_grad_matches_fd(|t| conv(t, &w), &x, 1e-2, 2e-3, &format!("{what} dx"));
        assert_grad_matches_fd(|t| conv(&x, t), &w, 1e-2, 2e-3, &format!("{what} dw"));
    }

    #[test]
    fn gradients_match_finite_differences() {
        let p = |stride, padding, dilation, groups| ConvParams {
            stride,
            padding,
            dilation,
            groups,
        };
        check_finite_differences(&[1, 2, 6, 5], &[3, 2, 3, 3], p(2, 1, 1, 1));
        check_finite_differences(&[2, 4, 5, 7], &[2, 2, 3, 1], p(1, 1, 2, 2));
        check_finite_differences(&[1, 3, 7, 6], &[2, 3, 1, 1], p(2, 0, 1, 1));
    }
}

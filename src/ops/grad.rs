//! Input gradients (`kernels/grad.wgsl`): dL/dx of the forward ops the UNet uses, for
//! pix2pix-zero's cross-attention guidance (diffusers back-propagates an L2 loss on attention
//! maps to the latents). Only activations get gradients, never weights. Arithmetic in f32 in
//! every storage dtype; outputs take the first tensor argument's dtype. Work that would exceed
//! one storage binding is split by ranges of rows / batch entries (/ output channels for the
//! convolution, which also keeps each invocation under lavapipe's loop limit).

use super::conv::{aligned_range, conv_out_dim, usable_binding};
use super::gemm::LAVAPIPE_MAX_LOOP;
use super::{flat_grid, same_dtype};
use crate::error::{shape_err, Error, Result};
use crate::gpu::{Context, DType, KernelSpec, Tensor, Work};
use crate::ops::attention::AttnInput;
use bytemuck::{Pod, Zeroable};

const SOURCE: &str = concat!(include_str!("../../kernels/activations.wgsl"), include_str!("../../kernels/grad.wgsl"));
const WG: u32 = 256;
/// Workgroup width of the per-row kernels on short rows (layer norm, short softmax rows).
const ROW_WG: u32 = 64;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Default)]
struct Params {
    len: u32,
    row: u32,
    a: u32,
    b: u32,
    c: u32,
    d: u32,
    e: u32,
    f: u32,
    g: u32,
    h: u32,
    k: u32,
    s: u32,
    off0: i32,
    off1: i32,
    off2: i32,
    eps: f32,
    t: u32,
    _pad: [u32; 3],
}

fn spec(section: &str, entry: &'static str, dtype: DType, wg: u32) -> KernelSpec {
    KernelSpec::new("grad", super::wgsl_section(SOURCE, section), entry, dtype).define("WG", format!("{wg}u"))
}

fn on_cpu(ctx: &Context) -> bool {
    ctx.info.device_type == wgpu::DeviceType::Cpu
}

fn too_large(what: String, elems: usize, dtype: DType, ctx: &Context) -> Error {
    Error::BindingTooLarge { what, bytes: (elems * dtype.size()) as u64, limit: ctx.max_binding() }
}

/// dL/dx of `y = conv2d(x, w, bias, stride, padding)` (torch semantics, square kernel, no
/// dilation or groups): dy `[N, Cout, Ho, Wo]`, w `[Cout, Cin, k, k]` -> `[N, Cin, H, W]` with
/// `(H, W) = in_hw` (a stride-2 convolution of an odd size loses it). Stride 1 runs as the
/// forward convolution (its tuned variants) of dy with the flipped, transposed weight; other
/// strides (and weights over one binding) run [`conv2d_input_grad_direct`].
pub fn conv2d_input_grad(ctx: &Context, dy: &Tensor, w: &Tensor, stride: usize, padding: usize, in_hw: (usize, usize)) -> Result<Tensor> {
    check_conv(dy, w, stride, padding, in_hw)?;
    let k = w.dim(2);
    // The flip binds the whole weight; the direct kernel splits it over output channels.
    if stride != 1 || padding >= k || w.byte_len() > usable_binding(ctx) {
        return conv2d_input_grad_direct(ctx, dy, w, stride, padding, in_hw);
    }
    let (cout, cin) = (w.dim(0), w.dim(1));
    ctx.profile_op("grad", || (format!("flip {}", super::dims(w.shape())), super::bytes_of(w, 2 * w.numel())));
    let wt = Tensor::empty(ctx, &[cin, cout, k, k], w.dtype())?;
    let (grid, row) = flat_grid(ctx, wt.numel(), WG);
    let params = Params { len: wt.numel() as u32, row, a: cin as u32, b: cout as u32, f: k as u32, ..Default::default() };
    ctx.dispatch(&spec("flip", "flip", w.dtype(), WG), bytemuck::bytes_of(&params), &[w.binding(), wt.binding()], grid)?;
    super::conv::conv2d(ctx, dy, &wt, None, 1, k - 1 - padding)
}

fn check_conv(dy: &Tensor, w: &Tensor, stride: usize, padding: usize, in_hw: (usize, usize)) -> Result<()> {
    let op = "conv2d_input_grad";
    if dy.shape().len() != 4 || w.shape().len() != 4 || w.dim(2) != w.dim(3) || dy.dim(1) != w.dim(0) || w.dim(0) == 0 || stride == 0 {
        return shape_err(op, format!("dy {:?} must be [N, Cout, Ho, Wo] and w {:?} [Cout, Cin, k, k], stride {stride} >= 1", dy.shape(), w.shape()));
    }
    same_dtype(op, &[dy, w])?;
    let (k, (h, wd)) = (w.dim(2), in_hw);
    if h + 2 * padding < k || wd + 2 * padding < k || conv_out_dim(h, k, stride, padding) != dy.dim(2) || conv_out_dim(wd, k, stride, padding) != dy.dim(3) {
        return shape_err(op, format!("in_hw {in_hw:?} with k {k}, stride {stride}, padding {padding} does not give dy's {}x{}", dy.dim(2), dy.dim(3)));
    }
    Ok(())
}

/// [`conv2d_input_grad`] by the direct kernel at any stride: one invocation per dx element
/// sums its taps over output channels.
pub fn conv2d_input_grad_direct(ctx: &Context, dy: &Tensor, w: &Tensor, stride: usize, padding: usize, in_hw: (usize, usize)) -> Result<Tensor> {
    let op = "conv2d_input_grad";
    check_conv(dy, w, stride, padding, in_hw)?;
    let (n, cout, ho, wo) = (dy.dim(0), dy.dim(1), dy.dim(2), dy.dim(3));
    let (cin, k) = (w.dim(1), w.dim(2));
    let (h, wd) = in_hw;
    let dtype = dy.dtype();
    ctx.profile_op("grad", || {
        (format!("conv_dx {} k{k}s{stride}p{padding} ->{h}x{wd}", super::dims(dy.shape())), Work::Flops(super::conv::conv2d_flops(&[n, cin, h, wd], w.shape(), stride, padding)))
    });
    let dx = Tensor::empty(ctx, &[n, cin, h, wd], dtype)?;
    if dx.numel() == 0 {
        return Ok(dx);
    }
    let taps = k * k;
    let avail = usable_binding(ctx) as usize / dtype.size();
    // Output channels per dispatch: the co loop runs once per valid tap (k*k at most) on top of
    // the 2k tap-loop iterations, against lavapipe's limit; one channel's weights and dy plane
    // must fit a binding.
    let loop_cs = if on_cpu(ctx) { (LAVAPIPE_MAX_LOOP - 2 * k - taps) / taps } else { usize::MAX };
    let cs = cout.min(loop_cs).min(avail / (cin * taps).max(1)).min(avail / (ho * wo));
    let (dx_b, dy_b) = (cin * h * wd, cout * ho * wo);
    if cs == 0 || dx_b > avail {
        let what = format!("{op}: one batch entry's dx [{cin}, {h}, {wd}], one output channel's weights [{cin}, {k}, {k}] or dy plane {ho}x{wo}");
        return Err(too_large(what, dx_b.max(cin * taps).max(ho * wo), dtype, ctx));
    }
    let nb_max = if cs == cout { (avail / dx_b).min(avail / dy_b) } else { 1 };
    let mut n0 = 0;
    while n0 < n {
        let nb = nb_max.min(n - n0);
        let mut co0 = 0;
        while co0 < cout {
            let c = cs.min(cout - co0);
            let (dxb, dx_off) = aligned_range(ctx, &dx, n0 * dx_b, (n0 + nb) * dx_b, n0 * dx_b);
            let (dyb, dy_off) = aligned_range(ctx, dy, n0 * dy_b + co0 * ho * wo, (n0 + nb - 1) * dy_b + (co0 + c) * ho * wo, n0 * dy_b);
            let (wb, w_off) = aligned_range(ctx, w, co0 * cin * taps, (co0 + c) * cin * taps, 0);
            let (grid, row) = flat_grid(ctx, nb * dx_b, WG);
            let params = Params {
                len: (nb * dx_b) as u32,
                row,
                a: cin as u32,
                b: h as u32,
                c: wd as u32,
                d: ho as u32,
                e: wo as u32,
                f: k as u32,
                g: cout as u32,
                h: co0 as u32,
                k: c as u32,
                s: stride as u32,
                off0: dy_off,
                off1: w_off,
                off2: dx_off,
                t: padding as u32,
                ..Default::default()
            };
            // Later channel ranges add to what the first wrote (a partial sum stored in the
            // storage dtype; only past ~6600 channels at 3x3 on lavapipe, or at a lowered limit).
            let spec = spec("conv", "conv_dx", dtype, WG).define("ACC", format!("{}u", (co0 > 0) as u32));
            ctx.dispatch(&spec, bytemuck::bytes_of(&params), &[dyb, wb, dxb], grid)?;
            co0 += c;
        }
        n0 += nb;
    }
    Ok(dx)
}

/// dL/dx of `norm::group_norm(x, groups, weight, bias, eps, silu)`: x and dy `[N, C, ...]`;
/// with `silu` the pre-activation is recomputed from x. Returns x's shape.
#[allow(clippy::too_many_arguments)]
pub fn group_norm_grad(ctx: &Context, x: &Tensor, dy: &Tensor, groups: usize, weight: &Tensor, bias: &Tensor, eps: f32, silu: bool) -> Result<Tensor> {
    let op = "group_norm_grad";
    if x.shape().len() < 2 || groups == 0 || !x.dim(1).is_multiple_of(groups) {
        return shape_err(op, format!("x {:?} must be [N, C, ...] with C a multiple of {groups} groups", x.shape()));
    }
    let (n, c) = (x.dim(0), x.dim(1));
    let hw = x.numel() / (n * c).max(1);
    let cpg = c / groups;
    norm_grad(ctx, op, x, dy, weight, bias, eps, silu, NormRows { rows: n * groups, len: cpg * hw, hw, cpg, groups, channels: c })
}

/// dL/dx of `norm::layer_norm(x, weight, bias, eps)` over the last dimension D (`weight`,
/// `bias` `[D]`). Returns x's shape.
pub fn layer_norm_grad(ctx: &Context, x: &Tensor, dy: &Tensor, weight: &Tensor, bias: &Tensor, eps: f32) -> Result<Tensor> {
    let op = "layer_norm_grad";
    if x.shape().is_empty() || x.dim(-1) == 0 {
        return shape_err(op, format!("x {:?} needs a last dimension", x.shape()));
    }
    let d = x.dim(-1);
    // A layer-norm row is a group of D one-element channels.
    norm_grad(ctx, op, x, dy, weight, bias, eps, false, NormRows { rows: x.numel() / d, len: d, hw: 1, cpg: d, groups: 1, channels: d })
}

struct NormRows {
    rows: usize,
    len: usize,
    hw: usize,
    cpg: usize,
    groups: usize,
    channels: usize,
}

#[allow(clippy::too_many_arguments)]
fn norm_grad(ctx: &Context, op: &'static str, x: &Tensor, dy: &Tensor, weight: &Tensor, bias: &Tensor, eps: f32, silu: bool, r: NormRows) -> Result<Tensor> {
    if dy.shape() != x.shape() || weight.numel() != r.channels || bias.numel() != r.channels {
        return shape_err(op, format!("x {:?}, dy {:?}, weight {:?}, bias {:?}: dy must match x, affine {} channels", x.shape(), dy.shape(), weight.shape(), bias.shape(), r.channels));
    }
    same_dtype(op, &[x, dy, weight, bias])?;
    let dtype = x.dtype();
    ctx.profile_op("grad", || (format!("{op} {} g{}", super::dims(x.shape()), r.groups), super::bytes_of(x, 9 * x.numel())));
    let dx = Tensor::empty(ctx, x.shape(), dtype)?;
    if dx.numel() == 0 {
        return Ok(dx);
    }
    let wg = if r.len < 1024 { ROW_WG } else { WG };
    // Four passes over the row plus four tree reductions per invocation.
    let iters = 4 * r.len.div_ceil(wg as usize) + 4 * wg.trailing_zeros() as usize;
    if on_cpu(ctx) && iters > LAVAPIPE_MAX_LOOP {
        return Err(Error::Unsupported(format!("{op}: rows of {} elements need {iters} loop iterations per invocation, over the {LAVAPIPE_MAX_LOOP} this software Vulkan driver runs; use a GPU", r.len)));
    }
    let avail = usable_binding(ctx) as usize / dtype.size();
    if r.len > avail {
        return Err(too_large(format!("{op}: one group / row of {} elements", r.len), r.len, dtype, ctx));
    }
    let spec = spec("norm", "norm_dx", dtype, wg).define("SILU", format!("{}u", silu as u32));
    let per = avail / r.len;
    let mut r0 = 0;
    while r0 < r.rows {
        let rs = per.min(r.rows - r0);
        let (lo, hi) = (r0 * r.len, (r0 + rs) * r.len);
        let (xb, x_off) = aligned_range(ctx, x, lo, hi, lo);
        let (gb, g_off) = aligned_range(ctx, dy, lo, hi, lo);
        let (db, d_off) = aligned_range(ctx, &dx, lo, hi, lo);
        let (grid, row) = flat_grid(ctx, rs, 1);
        let params = Params {
            len: rs as u32,
            row,
            a: r.len as u32,
            b: r.hw as u32,
            c: r.cpg as u32,
            d: r.groups as u32,
            e: r0 as u32,
            off0: x_off,
            off1: g_off,
            off2: d_off,
            eps,
            ..Default::default()
        };
        ctx.dispatch(&spec, bytemuck::bytes_of(&params), &[xb, gb, weight.binding(), bias.binding(), db], grid)?;
        r0 += rs;
    }
    Ok(dx)
}

/// Runs a per-element kernel over `rows` rows in dispatches of whole rows that fit one binding:
/// `lens[i]` is tensor i's row length (bindings in that order), `threads` the invocations per
/// row; the kernel gets len = rows * threads and off0.. = each binding's index of the
/// dispatch's first row.
#[allow(clippy::too_many_arguments)]
fn by_rows(ctx: &Context, what: &str, spec: &KernelSpec, mut params: Params, ts: &[&Tensor], lens: &[usize], rows: usize, threads: usize) -> Result<()> {
    let widest = *lens.iter().max().unwrap_or(&1);
    let dtype = ts[0].dtype();
    let per = usable_binding(ctx) as usize / dtype.size() / widest.max(1);
    if per == 0 {
        return Err(too_large(format!("{what}: one row of {widest} elements"), widest, dtype, ctx));
    }
    let mut r0 = 0;
    while r0 < rows {
        let rs = per.min(rows - r0);
        let mut bindings = vec![];
        let mut offs = [0i32; 3];
        for (i, (t, &l)) in ts.iter().zip(lens).enumerate() {
            let (b, o) = aligned_range(ctx, t, r0 * l, (r0 + rs) * l, r0 * l);
            bindings.push(b);
            offs[i] = o;
        }
        (params.off0, params.off1, params.off2) = (offs[0], offs[1], offs[2]);
        let (grid, row) = flat_grid(ctx, rs * threads, WG);
        params.len = (rs * threads) as u32;
        params.row = row;
        ctx.dispatch(spec, bytemuck::bytes_of(&params), &bindings, grid)?;
        r0 += rs;
    }
    Ok(())
}

/// dL/dx of `softmax::geglu(x)`: x `[.., 2F]` (hidden | gate), dy `[.., F]` -> `[.., 2F]`, with
/// the forward kernel's erf GELU.
pub fn geglu_grad(ctx: &Context, x: &Tensor, dy: &Tensor) -> Result<Tensor> {
    let op = "geglu_grad";
    let r = x.shape().len();
    if r == 0 || !x.dim(-1).is_multiple_of(2) || dy.shape().len() != r || dy.shape()[..r - 1] != x.shape()[..r - 1] || 2 * dy.dim(-1) != x.dim(-1) {
        return shape_err(op, format!("x {:?} must be [.., 2F] and dy {:?} [.., F]", x.shape(), dy.shape()));
    }
    same_dtype(op, &[x, dy])?;
    ctx.profile_op("grad", || (format!("geglu_dx {}", super::dims(x.shape())), super::bytes_of(x, 5 * dy.numel())));
    let dx = Tensor::empty(ctx, x.shape(), x.dtype())?;
    if dx.numel() == 0 {
        return Ok(dx);
    }
    let f = dy.dim(-1);
    let params = Params { a: f as u32, ..Default::default() };
    by_rows(ctx, op, &spec("geglu", "geglu_dx", x.dtype(), WG), params, &[x, dy, &dx], &[2 * f, f, 2 * f], dy.numel() / f, f)?;
    Ok(dx)
}

/// The adjoint of `resample::upsample_nearest2x`: dy `[N, C, 2H, 2W]` -> `[N, C, H, W]`, each
/// element the sum of its 2x2 block.
pub fn upsample_nearest2x_grad(ctx: &Context, dy: &Tensor) -> Result<Tensor> {
    let op = "upsample_nearest2x_grad";
    if dy.shape().len() != 4 || !dy.dim(2).is_multiple_of(2) || !dy.dim(3).is_multiple_of(2) {
        return shape_err(op, format!("dy {:?} must be [N, C, 2H, 2W]", dy.shape()));
    }
    let (h, w) = (dy.dim(2) / 2, dy.dim(3) / 2);
    ctx.profile_op("grad", || (format!("up2_dx {}", super::dims(dy.shape())), super::bytes_of(dy, dy.numel() * 5 / 4)));
    let dx = Tensor::empty(ctx, &[dy.dim(0), dy.dim(1), h, w], dy.dtype())?;
    if dx.numel() == 0 {
        return Ok(dx);
    }
    // A dx row of W comes from two dy rows of 2W.
    let params = Params { a: w as u32, ..Default::default() };
    by_rows(ctx, op, &spec("up2", "up2_dx", dy.dtype(), WG), params, &[dy, &dx], &[4 * w, w], dx.numel() / w, w)?;
    Ok(dx)
}

/// The inverse of `resample::concat_channels(a, b)`: x `[N, C, ...]` -> (`[N, ca, ...]`,
/// `[N, C - ca, ...]`).
pub fn split_channels(ctx: &Context, x: &Tensor, ca: usize) -> Result<(Tensor, Tensor)> {
    let op = "split_channels";
    if x.shape().len() < 2 || ca > x.dim(1) {
        return shape_err(op, format!("x {:?} must be [N, C, ...] with C >= {ca}", x.shape()));
    }
    let (n, c) = (x.dim(0), x.dim(1));
    let inner = x.numel() / (n * c).max(1);
    ctx.profile_op("grad", || (format!("split {} at {ca}", super::dims(x.shape())), super::bytes_of(x, 2 * x.numel())));
    let mut sa = x.shape().to_vec();
    let mut sb = x.shape().to_vec();
    (sa[1], sb[1]) = (ca, c - ca);
    let a = Tensor::empty(ctx, &sa, x.dtype())?;
    let b = Tensor::empty(ctx, &sb, x.dtype())?;
    let (la, lb) = (ca * inner, (c - ca) * inner);
    super::resample::copy_blocks(ctx, op, x, 0, la + lb, &a, 0, la, la, n)?;
    super::resample::copy_blocks(ctx, op, x, la, la + lb, &b, 0, lb, lb, n)?;
    Ok((a, b))
}

/// dL/ds of `p = softmax(s)` over the last dimension: `p * (dp - sum_j p_j dp_j)` per row;
/// p and dp `[..., N]`. Returns p's shape.
pub fn softmax_grad(ctx: &Context, p: &Tensor, dp: &Tensor) -> Result<Tensor> {
    let op = "softmax_grad";
    if p.shape().is_empty() || p.shape() != dp.shape() {
        return shape_err(op, format!("p {:?} and dp {:?} must be the same [..., N]", p.shape(), dp.shape()));
    }
    same_dtype(op, &[p, dp])?;
    let dtype = p.dtype();
    ctx.profile_op("grad", || (format!("softmax_dx {}", super::dims(p.shape())), super::bytes_of(p, 4 * p.numel())));
    let ds = Tensor::empty(ctx, p.shape(), dtype)?;
    if ds.numel() == 0 {
        return Ok(ds);
    }
    let n = p.dim(-1);
    let rows = p.numel() / n;
    let wg = if n < 1024 { ROW_WG } else { WG };
    let iters = 2 * n.div_ceil(wg as usize) + wg.trailing_zeros() as usize;
    if on_cpu(ctx) && iters > LAVAPIPE_MAX_LOOP {
        return Err(Error::Unsupported(format!("{op}: rows of {n} need {iters} loop iterations per invocation, over the {LAVAPIPE_MAX_LOOP} this software Vulkan driver runs; use a GPU")));
    }
    let avail = usable_binding(ctx) as usize / dtype.size();
    if n > avail {
        return Err(too_large(format!("{op}: one row of {n}"), n, dtype, ctx));
    }
    let spec = spec("softmax", "softmax_dx", dtype, wg);
    let mut r0 = 0;
    while r0 < rows {
        let rs = (avail / n).min(rows - r0);
        let (lo, hi) = (r0 * n, (r0 + rs) * n);
        let (pb, p_off) = aligned_range(ctx, p, lo, hi, lo);
        let (gb, g_off) = aligned_range(ctx, dp, lo, hi, lo);
        let (db, d_off) = aligned_range(ctx, &ds, lo, hi, lo);
        let (grid, row) = flat_grid(ctx, rs, 1);
        let params = Params { len: rs as u32, row, a: n as u32, off0: p_off, off1: g_off, off2: d_off, ..Default::default() };
        ctx.dispatch(&spec, bytemuck::bytes_of(&params), &[pb, gb, db], grid)?;
        r0 += rs;
    }
    Ok(ds)
}

/// diffusers' `head_to_batch_dim`: columns `offset_cols .. + heads*head_dim` of a token-major
/// `[B, L, row_stride]` tensor as the contiguous per-head `[B*heads, L, head_dim]` (index
/// `b*heads + h`).
pub fn split_heads(ctx: &Context, x: AttnInput, heads: usize, head_dim: usize) -> Result<Tensor> {
    let s = x.tensor.shape();
    if s.len() != 3 || s[2] != x.row_stride || x.offset_cols + heads * head_dim > x.row_stride {
        let cols = format!("columns {}..{}", x.offset_cols, x.offset_cols + heads * head_dim);
        return shape_err("split_heads", format!("x {s:?}: {cols} of rows of {} do not fit", x.row_stride));
    }
    ctx.profile_op("grad", || (format!("split_heads {} h{heads}", super::dims(s)), super::bytes_of(x.tensor, 2 * s[0] * s[1] * heads * head_dim)));
    let out = Tensor::empty(ctx, &[s[0] * heads, s[1], head_dim], x.tensor.dtype())?;
    heads_copy(ctx, x.tensor, x.offset_cols, &out, heads, head_dim, true)?;
    Ok(out)
}

/// diffusers' `batch_to_head_dim` of several tensors at once: each part `[B*heads, L, d]`;
/// returns token-major `[B, L, parts.len()*heads*d]`, part p's head h at columns
/// `p*heads*d + h*d ..` (`merge_heads(&[dq, dk, dv])` lays out a fused q|k|v gradient).
pub fn merge_heads(ctx: &Context, parts: &[&Tensor], heads: usize) -> Result<Tensor> {
    let op = "merge_heads";
    let Some(first) = parts.first() else {
        return shape_err(op, "no parts");
    };
    let s = first.shape();
    if s.len() != 3 || heads == 0 || !s[0].is_multiple_of(heads) || parts.iter().any(|t| t.shape() != s) {
        let shapes: Vec<_> = parts.iter().map(|t| t.shape().to_vec()).collect();
        return shape_err(op, format!("parts {shapes:?} must all be [B*{heads}, L, d]"));
    }
    same_dtype(op, parts)?;
    let width = parts.len() * heads * s[2];
    ctx.profile_op("grad", || (format!("merge_heads {}x{} h{heads}", parts.len(), super::dims(s)), super::bytes_of(first, 2 * parts.len() * first.numel())));
    let out = Tensor::empty(ctx, &[s[0] / heads, s[1], width], first.dtype())?;
    for (i, part) in parts.iter().enumerate() {
        heads_copy(ctx, &out, i * heads * s[2], part, heads, s[2], false)?;
    }
    Ok(out)
}

/// Copies between token-major `tok [B, L, W]` columns `col0 + h*d + j` and head-major
/// `hm [B*heads, L, d]`, in dispatches of whole batch entries that fit the bindings.
fn heads_copy(ctx: &Context, tok: &Tensor, col0: usize, hm: &Tensor, heads: usize, d: usize, to_heads: bool) -> Result<()> {
    let (b, l, rs) = (tok.dim(0), tok.dim(1), tok.dim(2));
    let per_hm = heads * l * d;
    if per_hm == 0 || b == 0 {
        return Ok(());
    }
    let avail = usable_binding(ctx) as usize / tok.dtype().size();
    let per = (avail / (l * rs)).min(avail / per_hm);
    if per == 0 {
        return Err(too_large(format!("split_heads/merge_heads: one batch entry [{l}, {rs}]"), l * rs, tok.dtype(), ctx));
    }
    let spec = spec("heads", if to_heads { "to_heads" } else { "from_heads" }, tok.dtype(), WG);
    let mut b0 = 0;
    while b0 < b {
        let nb = per.min(b - b0);
        let origin = b0 * l * rs;
        let (tb, t_off) = aligned_range(ctx, tok, origin + col0, (b0 + nb - 1) * l * rs + (l - 1) * rs + col0 + heads * d, origin);
        let (hb, h_off) = aligned_range(ctx, hm, b0 * per_hm, (b0 + nb) * per_hm, b0 * per_hm);
        let (grid, row) = flat_grid(ctx, nb * per_hm, WG);
        let params = Params { len: (nb * per_hm) as u32, row, a: heads as u32, b: rs as u32, c: col0 as u32, d: d as u32, e: l as u32, off0: t_off, off1: h_off, ..Default::default() };
        let bindings = if to_heads { [tb, hb] } else { [hb, tb] };
        ctx.dispatch(&spec, bytemuck::bytes_of(&params), &bindings, grid)?;
        b0 += nb;
    }
    Ok(())
}

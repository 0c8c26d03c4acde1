//! Group norm (with optional fused SiLU) and layer norm (`kernels/norm.wgsl`). Statistics are
//! computed in f32 with shifted sums per invocation merged by Chan's formula; big groups are
//! reduced by many workgroups (chunks), and tensors over one storage binding are split by ranges
//! of groups (or of chunks within a group) / rows.

use super::conv::{aligned_range, usable_binding};
use super::{flat_grid, same_dtype};
use crate::error::{shape_err, Error, Result};
use crate::gpu::{Context, DType, KernelSpec, Tensor};
use bytemuck::{Pod, Zeroable};

const NORM: &str = include_str!("../../kernels/norm.wgsl");
const LN_MARKER: &str = "// ---- layer norm";

fn gn_source() -> &'static str {
    &NORM[..NORM.find(LN_MARKER).expect("layer-norm marker in norm.wgsl")]
}
fn ln_source() -> &'static str {
    &NORM[NORM.find(LN_MARKER).expect("layer-norm marker in norm.wgsl")..]
}

const WG: u32 = 256;
const LN_WG: u32 = 64;
/// Elements one group-norm workgroup reduces / normalises.
const CHUNK: usize = 8192;
/// Most chunks per group (and elements per invocation of a chunk), so that gn_apply's loops stay
/// far below lavapipe's 65535-iteration limit.
const MAX_CHUNKS: usize = 16384;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct GnParams {
    group_len: u32,
    hw: u32,
    cpg: u32,
    groups: u32,
    chunk: u32,
    nchunks: u32,
    g0: u32,
    k0: u32,
    x_off: i32,
    y_off: i32,
    eps: f32,
    _pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct LnParams {
    d: u32,
    rows: u32,
    row_groups: u32,
    x_off: i32,
    y_off: i32,
    eps: f32,
    _pad: [u32; 2],
}

/// Bytes moved by a norm over `numel` elements of `dtype` (read twice, written once), for
/// bandwidth figures in benchmarks.
pub fn norm_bytes(numel: usize, dtype: DType) -> f64 {
    3.0 * (numel * dtype.size()) as f64
}

/// GroupNorm over x `[N, C, ...]` with `groups` groups of C/groups channels; per-channel affine
/// `weight`, `bias` `[C]`; `silu` fuses SiLU after the affine (SD's ResnetBlock norm + act).
pub fn group_norm(ctx: &Context, x: &Tensor, groups: usize, weight: &Tensor, bias: &Tensor, eps: f32, silu: bool) -> Result<Tensor> {
    let op = "group_norm";
    if x.shape().len() < 2 {
        return shape_err(op, format!("x {:?} must be [N, C, ...]", x.shape()));
    }
    let (n, c) = (x.dim(0), x.dim(1));
    if groups == 0 || c % groups != 0 {
        return shape_err(op, format!("{c} channels in {groups} groups"));
    }
    if weight.numel() != c || bias.numel() != c {
        return shape_err(op, format!("weight {:?} / bias {:?} for {c} channels", weight.shape(), bias.shape()));
    }
    same_dtype(op, &[x, weight, bias])?;
    let dtype = x.dtype();
    let es = dtype.size();
    ctx.profile_op("norm", || {
        let act = if silu { "+silu" } else { "" };
        (format!("group_norm{act} {} g{groups}", super::dims(x.shape())), crate::gpu::Work::Bytes(norm_bytes(x.numel(), dtype)))
    });
    let y = Tensor::empty(ctx, x.shape(), dtype)?;
    let hw = x.numel() / (n * c).max(1);
    let cpg = c / groups;
    let group_len = cpg * hw;
    let ng = n * groups;
    if y.numel() == 0 {
        return Ok(y);
    }
    let avail = usable_binding(ctx) as usize / es;
    // Loop budget (lavapipe ends all loops of an invocation after 65535 iterations in total):
    // gn_apply merges all of a group's chunk partials (nchunks iterations) and then walks its
    // chunk (chunk / WG), so groups over MAX_CHUNKS * CHUNK elements (~134M) take bigger chunks.
    let chunk = CHUNK.max(group_len.div_ceil(MAX_CHUNKS).next_multiple_of(WG as usize)).min(avail);
    if chunk == 0 {
        return Err(Error::BindingTooLarge { what: "group_norm".into(), bytes: es as u64, limit: ctx.max_binding() });
    }
    let nchunks = group_len.div_ceil(chunk);
    let max_groups = ctx.limits.max_compute_workgroups_per_dimension as usize;
    if nchunks > max_groups.min(MAX_CHUNKS) || chunk / WG as usize > MAX_CHUNKS {
        return Err(Error::Unsupported(format!("group_norm with {group_len} elements per group")));
    }
    let part = Tensor::empty(ctx, &[ng * nchunks * 4], DType::F32)?;
    // Dispatch ranges: (first group, groups, first chunk, chunks).
    let mut ranges = vec![];
    if group_len <= avail {
        let per = (avail / group_len).min(max_groups);
        let mut g0 = 0;
        while g0 < ng {
            let gs = per.min(ng - g0);
            ranges.push((g0, gs, 0, nchunks));
            g0 += gs;
        }
    } else {
        let per = (avail / chunk).max(1);
        for g in 0..ng {
            let mut k0 = 0;
            while k0 < nchunks {
                let ks = per.min(nchunks - k0);
                ranges.push((g, 1, k0, ks));
                k0 += ks;
            }
        }
    }
    let spec = |entry: &'static str| {
        KernelSpec::new("norm", gn_source(), entry, dtype)
            .define("WG", format!("{WG}u"))
            .define("SILU", format!("{}u", silu as u32))
    };
    for entry in ["gn_stats", "gn_apply"] {
        for &(g0, gs, k0, ks) in &ranges {
            let start = g0 * group_len + k0 * chunk;
            let end = (g0 + gs - 1) * group_len + ((k0 + ks) * chunk).min(group_len);
            let (xb, x_off) = aligned_range(ctx, x, start, end, g0 * group_len);
            let (yb, y_off) = aligned_range(ctx, &y, start, end, g0 * group_len);
            let params = GnParams {
                group_len: group_len as u32,
                hw: hw as u32,
                cpg: cpg as u32,
                groups: groups as u32,
                chunk: chunk as u32,
                nchunks: nchunks as u32,
                g0: g0 as u32,
                k0: k0 as u32,
                x_off,
                y_off,
                eps,
                _pad: 0,
            };
            let grid = [ks as u32, gs as u32, 1];
            if entry == "gn_stats" {
                ctx.dispatch(&spec(entry), bytemuck::bytes_of(&params), &[xb, part.binding()], grid)?;
            } else {
                ctx.dispatch(&spec(entry), bytemuck::bytes_of(&params), &[xb, part.binding(), weight.binding(), bias.binding(), yb], grid)?;
            }
        }
    }
    Ok(y)
}

/// LayerNorm over the last dimension D of x `[..., D]`, affine `weight`, `bias` `[D]`.
pub fn layer_norm(ctx: &Context, x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f32) -> Result<Tensor> {
    let op = "layer_norm";
    if x.shape().is_empty() {
        return shape_err(op, "x is a scalar");
    }
    let d = x.dim(-1);
    if weight.numel() != d || bias.numel() != d {
        return shape_err(op, format!("weight {:?} / bias {:?} for last dim {d}", weight.shape(), bias.shape()));
    }
    same_dtype(op, &[x, weight, bias])?;
    let dtype = x.dtype();
    ctx.profile_op("norm", || (format!("layer_norm {}", super::dims(x.shape())), crate::gpu::Work::Bytes(norm_bytes(x.numel(), dtype))));
    let y = Tensor::empty(ctx, x.shape(), dtype)?;
    if y.numel() == 0 {
        return Ok(y);
    }
    let rows = x.numel() / d;
    let avail = usable_binding(ctx) as usize / dtype.size();
    let per = avail / d;
    if per == 0 {
        return Err(Error::BindingTooLarge { what: format!("layer_norm row of {d}"), bytes: (d * dtype.size()) as u64, limit: ctx.max_binding() });
    }
    let spec = KernelSpec::new("norm", ln_source(), "ln_main", dtype).define("WG", format!("{LN_WG}u"));
    let mut r0 = 0;
    while r0 < rows {
        let rs = per.min(rows - r0);
        let (xb, x_off) = aligned_range(ctx, x, r0 * d, (r0 + rs) * d, r0 * d);
        let (yb, y_off) = aligned_range(ctx, &y, r0 * d, (r0 + rs) * d, r0 * d);
        let (grid, row) = flat_grid(ctx, rs, 1);
        let params = LnParams { d: d as u32, rows: rs as u32, row_groups: row, x_off, y_off, eps, _pad: [0; 2] };
        ctx.dispatch(&spec, bytemuck::bytes_of(&params), &[xb, weight.binding(), bias.binding(), yb], grid)?;
        r0 += rs;
    }
    Ok(y)
}

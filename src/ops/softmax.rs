//! Softmax over the last dimension and GEGLU (`kernels/softmax.wgsl`).
//!
//! Softmax: short rows (<= [`SMALL`]) get one invocation each, rows up to [`SEG`] one workgroup
//! each, longer rows are cut into segments reduced by separate workgroups (a stats pass, then an
//! apply pass that merges the row's partial (max, sum) pairs). Tensors over one storage binding
//! are split by ranges of rows, and a single row over one binding by ranges of segments. Every
//! invocation's total loop trip count stays far below lavapipe's 65535 limit (see the kernel).

use super::conv::{aligned_range, usable_binding};
use super::{flat_grid, same_dtype};
use crate::error::{shape_err, Error, Result};
use crate::gpu::{Context, DType, KernelSpec, Tensor};
use bytemuck::{Pod, Zeroable};

const SOURCE: &str = concat!(include_str!("../../kernels/activations.wgsl"), include_str!("../../kernels/softmax.wgsl"));

/// Invocations per workgroup.
const WG: usize = 64;
/// Longest row one invocation handles alone (two passes of SMALL iterations).
pub const SMALL: usize = 256;
/// Longest row (segment) one workgroup handles: SEG / WG = 4096 iterations per pass.
pub const SEG: usize = WG * 4096;
/// Most segments per row: softmax_apply's merge loop runs this many iterations on top of SEG/WG.
const MAX_SEGS: usize = 32768;

/// The common part of the file plus one `// ---- name` section, compiled as its own module.
fn section(name: &str) -> String {
    super::wgsl_section(SOURCE, name)
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Default)]
struct Params {
    n: u32,
    rows: u32,
    row_groups: u32,
    seg: u32,
    nsegs: u32,
    k0: u32,
    x_off: i32,
    y_off: i32,
    p_off: u32,
    scale: f32,
    _pad: [u32; 2],
}

fn spec(section_name: &str, entry: &'static str, dtype: DType) -> KernelSpec {
    KernelSpec::new("softmax", section(section_name), entry, dtype).define("WG", format!("{WG}u"))
}

/// `softmax(scale * x)` over the last dimension of `x [..., N]`, numerically stable (the row
/// maximum is subtracted), computed in f32; output shaped and typed like `x`.
pub fn softmax(ctx: &Context, x: &Tensor, scale: f32) -> Result<Tensor> {
    if x.shape().is_empty() {
        return shape_err("softmax", "x is a scalar");
    }
    let dtype = x.dtype();
    ctx.profile_op("softmax", || (format!("softmax {}", super::dims(x.shape())), super::bytes_of(x, 3 * x.numel())));
    let y = Tensor::empty(ctx, x.shape(), dtype)?;
    if x.numel() == 0 {
        return Ok(y);
    }
    let n = x.dim(-1);
    let rows = x.numel() / n;
    let avail = usable_binding(ctx) as usize / dtype.size();
    if avail == 0 {
        return Err(Error::BindingTooLarge { what: "softmax".into(), bytes: dtype.size() as u64, limit: ctx.max_binding() });
    }
    let max_groups = ctx.limits.max_compute_workgroups_per_dimension as usize;
    let seg = SEG.min(avail);

    if n <= seg {
        // Whole rows per workgroup (or per invocation), ranges of rows per dispatch.
        let small = n <= SMALL;
        let spec = spec("rows", if small { "softmax_small" } else { "softmax_rows" }, dtype);
        let per = avail / n;
        let mut r0 = 0;
        while r0 < rows {
            let rs = per.min(rows - r0);
            let (xb, x_off) = aligned_range(ctx, x, r0 * n, (r0 + rs) * n, r0 * n);
            let (yb, y_off) = aligned_range(ctx, &y, r0 * n, (r0 + rs) * n, r0 * n);
            let (grid, row_groups) = flat_grid(ctx, rs, if small { WG as u32 } else { 1 });
            let params = Params { n: n as u32, rows: rs as u32, row_groups, x_off, y_off, scale, ..Default::default() };
            ctx.dispatch(&spec, bytemuck::bytes_of(&params), &[xb, yb], grid)?;
            r0 += rs;
        }
        return Ok(y);
    }

    // Long rows: segments of `seg` elements, a (max, sum) pair per (row, segment).
    let nsegs = n.div_ceil(seg);
    if nsegs > MAX_SEGS {
        return Err(Error::Unsupported(format!("softmax over rows of {n} elements (at most {} per row)", MAX_SEGS * seg)));
    }
    let part = Tensor::empty(ctx, &[rows * nsegs * 2], DType::F32)?;
    // Dispatch ranges: (first row, rows, first segment, segments).
    let mut ranges = vec![];
    if n <= avail {
        let per = (avail / n).min(max_groups);
        let mut r0 = 0;
        while r0 < rows {
            let rs = per.min(rows - r0);
            ranges.push((r0, rs, 0, nsegs));
            r0 += rs;
        }
    } else {
        let per = (avail / seg).max(1);
        for r in 0..rows {
            let mut k0 = 0;
            while k0 < nsegs {
                let ks = per.min(nsegs - k0);
                ranges.push((r, 1, k0, ks));
                k0 += ks;
            }
        }
    }
    let part_limit = usable_binding(ctx) as usize / 4;
    for entry in ["softmax_stats", "softmax_apply"] {
        let spec = spec("segments", entry, dtype);
        for &(r0, rs, k0, ks) in &ranges {
            let start = r0 * n + k0 * seg;
            let end = (r0 + rs - 1) * n + ((k0 + ks) * seg).min(n);
            let (xb, x_off) = aligned_range(ctx, x, start, end, r0 * n);
            let (yb, y_off) = aligned_range(ctx, &y, start, end, r0 * n);
            let (p0, p1) = (2 * r0 * nsegs, 2 * (r0 + rs) * nsegs);
            if p1 - p0 > part_limit {
                return Err(Error::BindingTooLarge { what: "softmax partial sums".into(), bytes: ((p1 - p0) * 4) as u64, limit: ctx.max_binding() });
            }
            let (pb, p_off) = aligned_range(ctx, &part, p0, p1, p0);
            let params = Params {
                n: n as u32,
                rows: rs as u32,
                row_groups: 0,
                seg: seg as u32,
                nsegs: nsegs as u32,
                k0: k0 as u32,
                x_off,
                y_off,
                p_off: (p_off / 2) as u32,
                scale,
                _pad: [0; 2],
            };
            let grid = [ks as u32, rs as u32, 1];
            if entry == "softmax_stats" {
                ctx.dispatch(&spec, bytemuck::bytes_of(&params), &[xb, pb], grid)?;
            } else {
                ctx.dispatch(&spec, bytemuck::bytes_of(&params), &[xb, pb, yb], grid)?;
            }
        }
    }
    Ok(y)
}

/// diffusers' GEGLU activation: `x [..., 2F]` is split into `(hidden, gate)` halves of the last
/// dimension and `hidden * gelu(gate)` (exact erf GELU) `[..., F]` is returned. The projection
/// before it is a separate GEMM. Split by rows (or by columns of a row) to fit bindings.
pub fn geglu(ctx: &Context, x: &Tensor) -> Result<Tensor> {
    if x.shape().is_empty() || x.dim(-1) % 2 != 0 {
        return shape_err("geglu", format!("x {:?} must have an even last dimension", x.shape()));
    }
    same_dtype("geglu", &[x])?;
    let dtype = x.dtype();
    let f = x.dim(-1) / 2;
    let mut shape = x.shape().to_vec();
    *shape.last_mut().unwrap() = f;
    ctx.profile_op("softmax", || (format!("geglu {}", super::dims(x.shape())), super::bytes_of(x, x.numel() * 3 / 2)));
    let y = Tensor::empty(ctx, &shape, dtype)?;
    if y.numel() == 0 {
        return Ok(y);
    }
    let rows = y.numel() / f;
    let avail = usable_binding(ctx) as usize / dtype.size();
    if avail == 0 {
        return Err(Error::BindingTooLarge { what: "geglu".into(), bytes: dtype.size() as u64, limit: ctx.max_binding() });
    }
    let spec = spec("geglu", "geglu", dtype);
    // Whole rows per dispatch where they fit (the hidden and gate bindings each span
    // rs * 2F - F elements), else one row's columns in ranges.
    let (rows_per, cols_per) = if 2 * f <= avail { (avail / (2 * f), f) } else { (1, avail) };
    let mut r0 = 0;
    while r0 < rows {
        let rs = rows_per.min(rows - r0);
        let mut c0 = 0;
        while c0 < f {
            let cs = cols_per.min(f - c0);
            let hs = r0 * 2 * f + c0;
            let he = (r0 + rs - 1) * 2 * f + c0 + cs;
            let (hb, h_off) = aligned_range(ctx, x, hs, he, hs);
            let (gb, g_off) = aligned_range(ctx, x, hs + f, he + f, hs + f);
            let ys = r0 * f + c0;
            let (yb, y_off) = aligned_range(ctx, &y, ys, (r0 + rs - 1) * f + c0 + cs, ys);
            let (grid, row_groups) = flat_grid(ctx, rs * cs, WG as u32);
            let params = Params {
                n: f as u32,
                rows: rs as u32,
                row_groups,
                seg: cs as u32,
                nsegs: 0,
                k0: (2 * f) as u32,
                x_off: h_off,
                y_off,
                p_off: g_off as u32,
                scale: 1.0,
                _pad: [0; 2],
            };
            ctx.dispatch(&spec, bytemuck::bytes_of(&params), &[hb, gb, yb], grid)?;
            c0 += cs;
        }
        r0 += rs;
    }
    Ok(y)
}

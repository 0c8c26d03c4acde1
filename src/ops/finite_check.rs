//! Non-finite count and finite min/max of a tensor (`kernels/finite_check.wgsl`): the
//! pipeline's NaN and constant-image guards. One dispatch per binding-sized range, one readback
//! of the per-workgroup partials (3 floats per 4096 elements) per check.

use super::conv::{aligned_range, usable_binding};
use crate::error::{Error, Result};
use crate::gpu::{grid_1d, Context, DType, KernelSpec, Tensor};
use bytemuck::{Pod, Zeroable};

const SOURCE: &str = include_str!("../../kernels/finite_check.wgsl");
const WG: usize = 256;
/// Elements per invocation: 4096 per workgroup.
const PER: usize = 16;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Default)]
struct Params {
    n: u32,
    x_off: u32,
    p_off: u32,
    _pad: u32,
}

/// What [`finite_stats`] found.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FiniteStats {
    /// NaN and ±inf elements.
    pub nonfinite: u64,
    /// Smallest and largest finite element (`+inf` / `-inf` when there is none).
    pub min: f32,
    pub max: f32,
}

impl FiniteStats {
    pub fn all_finite(&self) -> bool {
        self.nonfinite == 0
    }
    /// The finite values span at most `eps` (a constant tensor).
    pub fn constant(&self, eps: f32) -> bool {
        self.max - self.min <= eps
    }
}

/// Count the non-finite elements of `x` and the range of its finite ones, on the GPU.
pub async fn finite_stats(ctx: &Context, x: &Tensor) -> Result<FiniteStats> {
    let n = x.numel();
    let per_group = WG * PER;
    let spec = KernelSpec::new("finite_check", SOURCE, "main", x.dtype()).define("WG", format!("{WG}u")).define("PER", format!("{PER}u"));
    ctx.profile_op("finite_check", || (format!("finite_check {}", super::dims(x.shape())), super::bytes_of(x, n)));
    let avail = usable_binding(ctx) as usize / x.dtype().size() / per_group * per_group;
    if avail == 0 {
        return Err(Error::BindingTooLarge { what: "finite_check".into(), bytes: (per_group * x.dtype().size()) as u64, limit: ctx.max_binding() });
    }
    let groups = n.div_ceil(per_group);
    let part = Tensor::empty(ctx, &[3 * groups.max(1)], DType::F32)?;
    let mut s = 0;
    while s < n {
        let len = avail.min(n - s);
        let (xb, x_off) = aligned_range(ctx, x, s, s + len, s);
        let (pb, _) = aligned_range(ctx, &part, 0, part.numel(), 0);
        let g = len.div_ceil(per_group) as u32;
        let params = Params { n: len as u32, x_off: x_off as u32, p_off: (s / per_group) as u32, _pad: 0 };
        ctx.dispatch(&spec, bytemuck::bytes_of(&params), &[xb, pb], grid_1d(g, ctx.limits.max_compute_workgroups_per_dimension))?;
        s += len;
    }
    let mut out = FiniteStats { nonfinite: 0, min: f32::INFINITY, max: f32::NEG_INFINITY };
    if n == 0 {
        return Ok(out);
    }
    for c in part.to_f32(ctx).await?.chunks_exact(3).take(groups) {
        out.nonfinite += c[0] as u64;
        if c[1] <= c[2] {
            out.min = out.min.min(c[1]);
            out.max = out.max.max(c[2]);
        }
    }
    Ok(out)
}

/// [`finite_stats`], blocking (native).
#[cfg(not(target_arch = "wasm32"))]
pub fn finite_stats_blocking(ctx: &Context, x: &Tensor) -> Result<FiniteStats> {
    pollster::block_on(finite_stats(ctx, x))
}

/// The same on the host (the reference the tests and the latents check use).
pub fn finite_stats_cpu(x: &[f32]) -> FiniteStats {
    let mut out = FiniteStats { nonfinite: 0, min: f32::INFINITY, max: f32::NEG_INFINITY };
    for &v in x {
        if v.is_finite() {
            out.min = out.min.min(v);
            out.max = out.max.max(v);
        } else {
            out.nonfinite += 1;
        }
    }
    out
}

//! Embeddings: diffusers' sinusoidal timestep embedding, and token/position row lookup
//! (`kernels/embedding.wgsl`).

use super::conv::{aligned_range, usable_binding};
use super::{flat_grid, same_dtype};
use crate::error::{shape_err, Error, Result};
use crate::gpu::{Context, DType, KernelSpec, Tensor};
use bytemuck::{Pod, Zeroable};

const SOURCE: &str = include_str!("../../kernels/embedding.wgsl");
const WG: u32 = 64;

/// The frequencies and angles of [`timestep_embedding`] exactly as diffusers computes them in
/// f32 on the CPU: `exponent = f32(-ln(max_period)) * i / f32(half - shift)`, `freq = exp(exponent)`,
/// `arg = t * freq`, every step rounded to f32. Returns `[B, dim]` row-major values.
pub fn timestep_embedding_values(timesteps: &[f32], dim: usize, flip_sin_to_cos: bool, downscale_freq_shift: f32, max_period: f32) -> Vec<f32> {
    let half = dim / 2;
    let neg_log = -(max_period as f64).ln() as f32;
    let denom = (half as f64 - downscale_freq_shift as f64) as f32;
    let freqs: Vec<f32> = (0..half).map(|i| ((neg_log * i as f32) / denom).exp()).collect();
    let mut out = vec![0f32; timesteps.len() * dim];
    for (b, &t) in timesteps.iter().enumerate() {
        let row = &mut out[b * dim..(b + 1) * dim];
        for (i, &f) in freqs.iter().enumerate() {
            let arg = t * f;
            let (s, c) = (arg.sin(), arg.cos());
            if flip_sin_to_cos {
                row[i] = c;
                row[half + i] = s;
            } else {
                row[i] = s;
                row[half + i] = c;
            }
        }
        // Odd dim: the last column stays zero (diffusers pads (0, 1)).
    }
    out
}

/// diffusers' `get_timestep_embedding`: `[B, dim]` of `[sin(t * f_i), cos(t * f_i)]` (or
/// `[cos, sin]` with `flip_sin_to_cos`), `f_i = exp(-ln(max_period) * i / (dim/2 - shift))`,
/// zero-padded when `dim` is odd. SD's UNet: `flip_sin_to_cos = true`, `shift = 0`,
/// `max_period = 10000`.
///
/// Computed on the host in f32 with the same rounding steps as torch (B x dim values, a few
/// KiB): the sines of arguments up to ~1000 rad would otherwise depend on the GPU's `sin`
/// range reduction, which WGSL leaves loose and drivers implement differently.
pub fn timestep_embedding(
    ctx: &Context,
    timesteps: &[f32],
    dim: usize,
    flip_sin_to_cos: bool,
    downscale_freq_shift: f32,
    max_period: f32,
    dtype: DType,
) -> Result<Tensor> {
    if dim / 2 == 0 || (dim / 2) as f32 == downscale_freq_shift {
        return shape_err("timestep_embedding", format!("dim {dim} with downscale_freq_shift {downscale_freq_shift}"));
    }
    let v = timestep_embedding_values(timesteps, dim, flip_sin_to_cos, downscale_freq_shift, max_period);
    Tensor::from_f32(ctx, &v, &[timesteps.len(), dim], dtype)
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    d: u32,
    row: u32,
    v0: u32,
    vrows: u32,
    t_off: i32,
    id_off: u32,
    pos_off: i32,
    out_off: i32,
    _pad: [u32; 3],
}

/// `out[i] = table[ids[i]] (+ positions[i])`: table `[V, D]`, positions `[P, D]` with
/// `P >= ids.len()` (row i for token i, as CLIP's position embedding), output `[L, D]` in the
/// table's dtype. A table over one storage binding (CLIP-L's 49408 x 768 f32 is 152 MB) is split
/// into row ranges, each dispatch writing the tokens whose ids fall in its range; long id lists
/// are split into token ranges.
pub fn embedding_lookup(ctx: &Context, table: &Tensor, ids: &[u32], positions: Option<&Tensor>) -> Result<Tensor> {
    let op = "embedding_lookup";
    if table.shape().len() != 2 {
        return shape_err(op, format!("table {:?} must be [V, D]", table.shape()));
    }
    let (v, d) = (table.dim(0), table.dim(1));
    if let Some(&bad) = ids.iter().find(|&&i| i as usize >= v) {
        return shape_err(op, format!("token id {bad} out of range for a table of {v} rows"));
    }
    if let Some(p) = positions {
        if p.shape().len() != 2 || p.dim(1) != d || p.dim(0) < ids.len() {
            return shape_err(op, format!("positions {:?} for {} tokens of width {d}", p.shape(), ids.len()));
        }
        same_dtype(op, &[table, p])?;
    }
    let dtype = table.dtype();
    let l = ids.len();
    ctx.profile_op("embedding", || (format!("lookup {l}x{d}"), super::bytes_of(table, (2 + positions.is_some() as usize) * l * d)));
    let out = Tensor::empty(ctx, &[l, d], dtype)?;
    if out.numel() == 0 {
        return Ok(out);
    }
    let avail = usable_binding(ctx) as usize / dtype.size();
    if d > avail {
        return Err(Error::BindingTooLarge { what: format!("{op} rows of {d}"), bytes: (d * dtype.size()) as u64, limit: ctx.max_binding() });
    }
    let id_t = Tensor::from_bytes(ctx, bytemuck::cast_slice(ids), &[l], DType::F32)?;
    let spec = KernelSpec::new("embedding", SOURCE, "main", dtype)
        .define("WG", format!("{WG}u"))
        .define("POS", format!("{}u", positions.is_some() as u32));
    let per_rows = avail / d;
    let mut t0 = 0;
    while t0 < l {
        let ts = per_rows.min(l - t0);
        let tok = &ids[t0..t0 + ts];
        let (ob, out_off) = aligned_range(ctx, &out, t0 * d, (t0 + ts) * d, t0 * d);
        let (ib, id_off) = aligned_range(ctx, &id_t, t0, t0 + ts, t0);
        let mut v0 = 0;
        while v0 < v {
            let vs = per_rows.min(v - v0);
            let range = v0 as u32..(v0 + vs) as u32;
            if tok.iter().any(|i| range.contains(i)) {
                let (tb, t_off) = aligned_range(ctx, table, v0 * d, (v0 + vs) * d, v0 * d);
                let (pb, pos_off) = match positions {
                    Some(p) => aligned_range(ctx, p, t0 * d, (t0 + ts) * d, t0 * d),
                    None => (tb, 0),
                };
                let (grid, row) = flat_grid(ctx, ts * d, WG);
                let params = Params {
                    n: (ts * d) as u32,
                    d: d as u32,
                    row,
                    v0: v0 as u32,
                    vrows: vs as u32,
                    t_off,
                    id_off: id_off as u32,
                    pos_off,
                    out_off,
                    _pad: [0; 3],
                };
                ctx.dispatch(&spec, bytemuck::bytes_of(&params), &[tb, ib, ob, pb], grid)?;
            }
            v0 += vs;
        }
        t0 += ts;
    }
    Ok(out)
}

//! The Rust side of each kernel family in `kernels/`: shape checks, splitting work that would
//! exceed one storage binding, and the dispatch.

pub mod attention;
pub mod attention_variants;
pub mod elementwise;
pub mod conv;
pub mod conv_variants;
pub mod norm;
pub mod pixel_shuffle;
pub mod resample;
pub mod gemm;
pub mod grad;
pub mod gemm_tune;
pub mod gemm_variants;
pub mod reference;
pub mod softmax;
pub mod embedding;
pub mod finite_check;

use crate::gpu::{Context, Tensor};
use crate::error::{shape_err, Result};

/// Elements per chunk when a flat op must be split so no binding exceeds the device limit.
/// Chunk starts stay on the storage-offset alignment.
pub(crate) fn chunk_elems(ctx: &Context, elem_size: usize) -> usize {
    let align = ctx.limits.min_storage_buffer_offset_alignment.max(256) as usize;
    let max = ctx.max_binding() as usize / elem_size;
    max / (align / elem_size.min(align)) * (align / elem_size.min(align))
}

/// Workgroup grid for `threads` invocations at `wg` per group, and the threads per grid row
/// the kernel uses to rebuild the flat index (`gid.y * row + gid.x`).
pub(crate) fn flat_grid(ctx: &Context, threads: usize, wg: u32) -> ([u32; 3], u32) {
    let groups = (threads as u32).div_ceil(wg);
    let grid = crate::gpu::grid_1d(groups, ctx.limits.max_compute_workgroups_per_dimension);
    (grid, grid[0] * wg)
}

/// `[2, 320, 64, 64]` as `2x320x64x64`, for profile shape strings.
pub(crate) fn dims(s: &[usize]) -> String {
    s.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("x")
}

/// Bytes of `elems` elements of `t`'s dtype, for bandwidth-bound ops' profile rates.
pub(crate) fn bytes_of(t: &Tensor, elems: usize) -> crate::gpu::Work {
    crate::gpu::Work::Bytes((elems * t.dtype().size()) as f64)
}

/// The common part of a sectioned kernel file (the text before its first `// ---- ` line) plus
/// section `name`, compiled as its own module (sections declare overlapping bindings).
pub(crate) fn wgsl_section(source: &str, name: &str) -> String {
    let marker = format!("// ---- {name}\n");
    let common_end = source.find("// ---- ").expect("sections in the kernel file");
    let start = source.find(&marker).expect("the named section in the kernel file");
    let rest = &source[start + marker.len()..];
    let end = rest.find("// ---- ").unwrap_or(rest.len());
    format!("{}{}", &source[..common_end], &rest[..end])
}

pub(crate) fn same_dtype(op: &'static str, ts: &[&Tensor]) -> Result<()> {
    if ts.windows(2).any(|w| w[0].dtype() != w[1].dtype()) {
        let d: Vec<_> = ts.iter().map(|t| t.dtype().name()).collect();
        return shape_err(op, format!("mixed dtypes {d:?}"));
    }
    Ok(())
}

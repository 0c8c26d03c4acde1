//! Nearest 2x upsampling and channel concatenation (`kernels/resample.wgsl`), split into chunks
//! so that no binding exceeds [`Context::max_binding`].

use super::conv::{aligned_range, usable_binding};
use super::{flat_grid, same_dtype};
use crate::error::{shape_err, Error, Result};
use crate::gpu::{Context, KernelSpec, Tensor};
use bytemuck::{Pod, Zeroable};

const RESAMPLE: &str = include_str!("../../kernels/resample.wgsl");
const WG: u32 = 256;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    len: u32,
    w: u32,
    row: u32,
    src_off: i32,
    src_stride: u32,
    dst_off: i32,
    dst_stride: u32,
    _pad: u32,
}

/// Nearest-neighbour 2x upsampling: x `[N, C, H, W]` -> `[N, C, 2H, 2W]`.
pub fn upsample_nearest2x(ctx: &Context, x: &Tensor) -> Result<Tensor> {
    if x.shape().len() != 4 {
        return shape_err("upsample_nearest2x", format!("x {:?} must be [N, C, H, W]", x.shape()));
    }
    let (n, c, h, w) = (x.dim(0), x.dim(1), x.dim(2), x.dim(3));
    ctx.profile_op("resample", || (format!("up2 {}", super::dims(x.shape())), super::bytes_of(x, 5 * x.numel())));
    let y = Tensor::empty(ctx, &[n, c, 2 * h, 2 * w], x.dtype())?;
    if y.numel() == 0 {
        return Ok(y);
    }
    let rows = n * c * h;
    let avail = usable_binding(ctx) as usize / x.dtype().size();
    // Output rows are 2W wide and come in pairs: a chunk of r input rows writes 4rW elements.
    let per = avail / (4 * w);
    if per == 0 {
        return Err(Error::BindingTooLarge { what: format!("upsample_nearest2x of {:?}", x.shape()), bytes: (4 * w * x.dtype().size()) as u64, limit: ctx.max_binding() });
    }
    let spec = KernelSpec::new("resample", RESAMPLE, "up2", x.dtype()).define("WG", format!("{WG}u"));
    let mut r0 = 0;
    while r0 < rows {
        let rs = per.min(rows - r0);
        let (sb, src_off) = aligned_range(ctx, x, r0 * w, (r0 + rs) * w, r0 * w);
        let (db, dst_off) = aligned_range(ctx, &y, 4 * r0 * w, 4 * (r0 + rs) * w, 4 * r0 * w);
        let (grid, row) = flat_grid(ctx, rs * w, WG);
        let params = Params { len: (rs * w) as u32, w: w as u32, row, src_off, src_stride: 0, dst_off, dst_stride: 0, _pad: 0 };
        ctx.dispatch(&spec, bytemuck::bytes_of(&params), &[sb, db], grid)?;
        r0 += rs;
    }
    Ok(y)
}

/// Nearest-neighbour resize: x `[N, C, H, W]` -> `[N, C, ho, wo]`, as torch's
/// `interpolate(size=(ho, wo), mode="nearest")`. The UNet's up blocks use it where diffusers
/// passes `upsample_size` (a skip of odd size, e.g. a 90-row latent at 720 px); for the sizes
/// that occur there (`2H − 1`) it equals 2x upsampling cropped. Not split: both tensors must fit
/// one binding.
pub fn resize_nearest(ctx: &Context, x: &Tensor, ho: usize, wo: usize) -> Result<Tensor> {
    if x.shape().len() != 4 {
        return shape_err("resize_nearest", format!("x {:?} must be [N, C, H, W]", x.shape()));
    }
    let (n, c, h, w) = (x.dim(0), x.dim(1), x.dim(2), x.dim(3));
    ctx.profile_op("resample", || (format!("resize {} ->{ho}x{wo}", super::dims(x.shape())), super::bytes_of(x, x.numel() + n * c * ho * wo)));
    let y = Tensor::empty(ctx, &[n, c, ho, wo], x.dtype())?;
    if y.numel() == 0 || x.numel() == 0 {
        return Ok(y);
    }
    for t in [x, &y] {
        let bytes = t.byte_len();
        if bytes > usable_binding(ctx) {
            return Err(Error::BindingTooLarge { what: format!("resize_nearest of {:?} to {ho}x{wo}", x.shape()), bytes, limit: ctx.max_binding() });
        }
    }
    let spec = KernelSpec::new("resample", RESAMPLE, "resize", x.dtype()).define("WG", format!("{WG}u"));
    let (sb, src_off) = aligned_range(ctx, x, 0, x.numel(), 0);
    let (db, dst_off) = aligned_range(ctx, &y, 0, y.numel(), 0);
    let (grid, row) = flat_grid(ctx, y.numel(), WG);
    let params = Params { len: y.numel() as u32, w: w as u32, row, src_off, src_stride: h as u32, dst_off, dst_stride: wo as u32, _pad: ho as u32 };
    ctx.dispatch(&spec, bytemuck::bytes_of(&params), &[sb, db], grid)?;
    Ok(y)
}

/// Concatenation along channels: a `[N, Ca, H, W]`, b `[N, Cb, H, W]` -> `[N, Ca+Cb, H, W]`
/// (the UNet's skip connections).
pub fn concat_channels(ctx: &Context, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let op = "concat_channels";
    if a.shape().len() < 2 || a.shape().len() != b.shape().len() || a.dim(0) != b.dim(0) || a.shape()[2..] != b.shape()[2..] {
        return shape_err(op, format!("{:?} and {:?} differ outside dim 1", a.shape(), b.shape()));
    }
    same_dtype(op, &[a, b])?;
    let (n, ca, cb) = (a.dim(0), a.dim(1), b.dim(1));
    let mut shape = a.shape().to_vec();
    shape[1] = ca + cb;
    ctx.profile_op("resample", || (format!("concat {}+{}", super::dims(a.shape()), cb), super::bytes_of(a, 2 * (a.numel() + b.numel()))));
    let y = Tensor::empty(ctx, &shape, a.dtype())?;
    if y.numel() == 0 {
        return Ok(y);
    }
    let inner = a.numel() / (n * ca).max(1);
    let (la, lb, ly) = (ca * inner, cb * inner, (ca + cb) * inner);
    copy_blocks(ctx, op, a, 0, la, &y, 0, ly, la, n)?;
    copy_blocks(ctx, op, b, 0, lb, &y, la, ly, lb, n)?;
    Ok(y)
}

/// `dst[dst0 + z * dst_stride + i] = src[src0 + z * src_stride + i]` for `i < len`, `z < n`:
/// blocks of a channel concatenation (or split). One dispatch (z over the batch) where both
/// tensors fit one binding, else per block in chunks of at most one usable binding.
#[allow(clippy::too_many_arguments)]
pub(crate) fn copy_blocks(ctx: &Context, op: &'static str, src: &Tensor, src0: usize, src_stride: usize, dst: &Tensor, dst0: usize, dst_stride: usize, len: usize, n: usize) -> Result<()> {
    if len == 0 || n == 0 {
        return Ok(());
    }
    let avail = usable_binding(ctx) as usize / src.dtype().size();
    if avail == 0 {
        return Err(Error::BindingTooLarge { what: op.into(), bytes: src.dtype().size() as u64, limit: ctx.max_binding() });
    }
    let spec = KernelSpec::new("resample", RESAMPLE, "copy", src.dtype()).define("WG", format!("{WG}u"));
    let max_z = ctx.limits.max_compute_workgroups_per_dimension as usize;
    if src.byte_len() <= ctx.max_binding() && dst.byte_len() <= ctx.max_binding() && n <= max_z {
        // Whole tensors: one dispatch, z over the batch.
        let (grid, row) = flat_grid(ctx, len, WG);
        let (db, yo) = aligned_range(ctx, dst, 0, dst.numel(), 0);
        let (sb, so) = aligned_range(ctx, src, 0, src.numel(), 0);
        let params = Params { len: len as u32, w: 0, row, src_off: so + src0 as i32, src_stride: src_stride as u32, dst_off: yo + dst0 as i32, dst_stride: dst_stride as u32, _pad: 0 };
        return ctx.dispatch(&spec, bytemuck::bytes_of(&params), &[sb, db], [grid[0], grid[1], n as u32]);
    }
    for i in 0..n {
        let mut s0 = 0;
        while s0 < len {
            let sl = avail.min(len - s0);
            let s = src0 + i * src_stride + s0;
            let (sb, src_off) = aligned_range(ctx, src, s, s + sl, s);
            let d = dst0 + i * dst_stride + s0;
            let (db, dst_off) = aligned_range(ctx, dst, d, d + sl, d);
            let (grid, row) = flat_grid(ctx, sl, WG);
            let params = Params { len: sl as u32, w: 0, row, src_off, src_stride: 0, dst_off, dst_stride: 0, _pad: 0 };
            ctx.dispatch(&spec, bytemuck::bytes_of(&params), &[sb, db], grid)?;
            s0 += sl;
        }
    }
    Ok(())
}

/// Swap the last two dims: [.., M, N] -> [.., N, M] (NCHW <-> token-major around attention).
/// Split over the leading (batch) dims when the tensor exceeds one binding.
pub fn transpose_last2(ctx: &Context, x: &Tensor) -> Result<Tensor> {
    let r = x.shape().len();
    if r < 2 {
        return shape_err("transpose_last2", format!("needs 2+ dims, got {:?}", x.shape()));
    }
    let (m, n) = (x.dim(-2), x.dim(-1));
    let batch: usize = x.shape()[..r - 2].iter().product();
    let mut shape = x.shape().to_vec();
    shape.swap(r - 2, r - 1);
    ctx.profile_op("resample", || (format!("transpose {}", super::dims(x.shape())), super::bytes_of(x, 2 * x.numel())));
    let y = Tensor::empty(ctx, &shape, x.dtype())?;
    let mat = m * n;
    let es = x.dtype().size() as u64;
    let limit = usable_binding(ctx);
    if mat as u64 * es > limit {
        return Err(Error::BindingTooLarge { what: format!("transpose of one {m}x{n} matrix"), bytes: mat as u64 * es, limit });
    }
    let per = ((limit / (mat as u64 * es).max(1)) as usize).clamp(1, ctx.limits.max_compute_workgroups_per_dimension as usize);
    let spec = KernelSpec::new("resample", RESAMPLE, "transpose", x.dtype()).define("WG", format!("{WG}u"));
    let mut b0 = 0;
    while b0 < batch {
        let nb = per.min(batch - b0);
        let (lo, hi) = (b0 * mat, (b0 + nb) * mat);
        let (src, src_off) = aligned_range(ctx, x, lo, hi, lo);
        let (dst, dst_off) = aligned_range(ctx, &y, lo, hi, lo);
        let params = Params { len: m as u32, w: n as u32, row: 0, src_off, src_stride: 0, dst_off, dst_stride: 0, _pad: 0 };
        ctx.dispatch(&spec, bytemuck::bytes_of(&params), &[src, dst], [(n as u32).div_ceil(16), (m as u32).div_ceil(16), nb as u32])?;
        b0 += nb;
    }
    Ok(y)
}

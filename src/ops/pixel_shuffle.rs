//! Pixel unshuffle (`kernels/pixel_shuffle.wgsl`): space-to-depth as torch's
//! `F.pixel_unshuffle`, which basicsr's RRDBNet applies to its input for x2 (factor 2) and x1
//! (factor 4) models.

use super::flat_grid;
use crate::error::{shape_err, Error, Result};
use crate::gpu::{Context, KernelSpec, Tensor};
use bytemuck::{Pod, Zeroable};

const SOURCE: &str = include_str!("../../kernels/pixel_shuffle.wgsl");
const WG: u32 = 256;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    len: u32,
    r: u32,
    ho: u32,
    wo: u32,
    row: u32,
    _pad: [u32; 3],
}

/// x `[N, C, H, W]` -> `[N, C*r*r, H/r, W/r]`; H and W must be multiples of `r`. Not split:
/// the tensor must fit one binding (an RGB input tile is 12 bytes per pixel in f32).
pub fn pixel_unshuffle(ctx: &Context, x: &Tensor, r: usize) -> Result<Tensor> {
    let op = "pixel_unshuffle";
    if x.shape().len() != 4 || r == 0 || x.dim(2) % r != 0 || x.dim(3) % r != 0 {
        return shape_err(op, format!("x {:?} must be [N, C, H, W] with H and W multiples of {r}", x.shape()));
    }
    let (n, c, h, w) = (x.dim(0), x.dim(1), x.dim(2), x.dim(3));
    if x.byte_len() > ctx.max_binding() {
        return Err(Error::BindingTooLarge { what: format!("pixel_unshuffle of {:?}", x.shape()), bytes: x.byte_len(), limit: ctx.max_binding() });
    }
    ctx.profile_op("pixel_shuffle", || (format!("unshuffle{r} {}", super::dims(x.shape())), super::bytes_of(x, 2 * x.numel())));
    let y = Tensor::empty(ctx, &[n, c * r * r, h / r, w / r], x.dtype())?;
    if y.numel() == 0 {
        return Ok(y);
    }
    let spec = KernelSpec::new("pixel_shuffle", SOURCE, "unshuffle", x.dtype()).define("WG", format!("{WG}u"));
    let (grid, row) = flat_grid(ctx, y.numel(), WG);
    let params = Params { len: y.numel() as u32, r: r as u32, ho: (h / r) as u32, wo: (w / r) as u32, row, _pad: [0; 3] };
    ctx.dispatch(&spec, bytemuck::bytes_of(&params), &[x.binding(), y.binding()], grid)?;
    Ok(y)
}

//! Size checks made before a generation allocates anything, so that a size the device cannot
//! hold fails naming the device limit instead of deep inside an op (or after gigabytes of
//! latents and text conditioning were made).

use crate::gpu::Context;
use crate::models::unet::{DownBlockType, UNet2DConditionModel};
use crate::{Error, Result};

/// The decoded image, a `[1, 3, H, W]` f32 tensor, must fit one buffer of the device (checked
/// before anything is allocated, so `--width 100000` names the limit instead of failing in
/// wgpu or allocating gigabytes of latents on the host).
pub fn check_device_size(ctx: &Context, width: usize, height: usize) -> Result<()> {
    let bytes = (width as u64).saturating_mul(height as u64).saturating_mul(3 * 4);
    let limit = ctx.limits.max_buffer_size;
    if bytes > limit {
        let side = ((limit / 12) as f64).sqrt() as usize / 8 * 8;
        return Err(Error::BufferTooLarge {
            what: format!("a {width}x{height} image (its decoded [1, 3, {height}, {width}] f32 tensor; at most about {side}x{side} here)"),
            bytes,
            limit,
        });
    }
    Ok(())
}

/// The UNet's largest activation at this latent size must fit one GPU buffer. At the first
/// level (full latent resolution) that is the transformer's GEGLU projection, `[batch, h·w,
/// 8·c0]`, where the level has attention (SD 1.x/2.x), else the up path's skip concatenation
/// `[batch, c0 + c1, h, w]`; every other tensor is smaller.
pub(crate) fn check_unet_fits(ctx: &Context, unet: &UNet2DConditionModel, batch: usize, width: usize, height: usize) -> Result<()> {
    let c = &unet.config;
    let c0 = c.block_out_channels[0];
    let c1 = c.block_out_channels.get(1).copied().unwrap_or(c0);
    let attn0 = c.down_block_types.first() == Some(&DownBlockType::CrossAttnDownBlock2D);
    let (lh, lw) = (height.div_ceil(8), width.div_ceil(8));
    let (channels, what) = if attn0 { (8 * c0, "GEGLU projection") } else { (c0 + c1, "skip concatenation") };
    let bytes = [batch, lh, lw, channels, unet.dtype.size()].iter().fold(1u64, |a, &x| a.saturating_mul(x as u64));
    let limit = ctx.limits.max_buffer_size;
    if bytes > limit {
        // The largest square that fits, in multiples of 64 pixels.
        let per_px = (bytes / (lh as u64 * lw as u64).max(1)).max(1);
        let side = (((limit / per_px) as f64).sqrt() as usize * 8) / 64 * 64;
        return Err(Error::BufferTooLarge {
            what: format!(
                "a {width}x{height} image (the UNet's first-level {what}, [{batch}, {}, {channels}] {:?}; at most about {side}x{side} here)",
                lh * lw,
                unet.dtype
            ),
            bytes,
            limit,
        });
    }
    Ok(())
}

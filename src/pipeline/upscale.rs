//! Upscaling with a Real-ESRGAN model ([`RealEsrgan`]), tiled as Real-ESRGAN's
//! `RealESRGANer.tile_process` does (realesrgan/utils.py): the image is cut into `tile` x `tile`
//! input squares, each is run grown by `pad` pixels on every side (clipped at the image's edges)
//! and only its own square of the output is kept, so seams get context from both sides. A
//! tile's every intermediate tensor must fit one storage binding; a tile that would not is
//! shrunk ([`plan_tiles`] says so).

use super::Image;
use crate::error::{Error, Result};
use crate::gpu::{Context, Tensor};
use crate::models::esrgan::RealEsrgan;

/// `--tile` default (input pixels; A1111's ESRGAN tile default is 192, Real-ESRGAN's CLI 0).
pub const DEFAULT_TILE: usize = 512;
/// Context added around each tile (Real-ESRGAN uses 10, A1111 8 to 32).
pub const DEFAULT_PAD: usize = 16;

/// How an image will be cut.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TilePlan {
    /// Tile edge in input pixels (at least the image's larger side: one tile).
    pub tile: usize,
    /// Context around each tile.
    pub pad: usize,
    /// Tiles across and down.
    pub grid: (usize, usize),
    /// Set when the asked-for tile did not fit the adapter's binding limit and was shrunk.
    pub note: Option<String>,
}

/// The tiles for a `width` x `height` image at `tile` (0 = whole image) and `pad`: the asked-for
/// size when every tile's tensors fit one binding, else the largest that does (in steps of the
/// model's pixel-unshuffle factor, which tile edges must keep to).
pub fn plan_tiles(ctx: &Context, model: &RealEsrgan, width: usize, height: usize, tile: usize, pad: usize) -> Result<TilePlan> {
    let cfg = &model.config;
    let u = cfg.unshuffle();
    let (w, h) = (width.next_multiple_of(u), height.next_multiple_of(u));
    let pad = pad.next_multiple_of(u);
    let align = ctx.limits.min_storage_buffer_offset_alignment.max(4) as u64;
    let limit = ctx.max_binding().saturating_sub(align);
    let fits = |t: usize| {
        let (th, tw) = if t >= w.max(h) { (h, w) } else { ((t + 2 * pad).min(h), (t + 2 * pad).min(w)) };
        cfg.peak_tensor_bytes(th, tw, model.dtype) <= limit
    };
    let asked = if tile == 0 { w.max(h) } else { tile.next_multiple_of(u).min(w.max(h)) };
    // Stepping down by the factor is cheap (arithmetic only) and finds the largest tile.
    let mut t = asked;
    while !fits(t) {
        if t <= u {
            return Err(Error::BindingTooLarge {
                what: format!("a Real-ESRGAN tile of {u} px with {pad} px of padding"),
                bytes: cfg.peak_tensor_bytes(u + 2 * pad, u + 2 * pad, model.dtype),
                limit: ctx.max_binding(),
            });
        }
        t -= u;
    }
    let note = (t < asked).then(|| {
        let what = if tile == 0 { "the whole image".to_string() } else { format!("tile {tile}") };
        format!(
            "{what} would need a {} MiB tensor, over this adapter's {} MiB storage binding limit; using tile {t}",
            cfg.peak_tensor_bytes((asked + 2 * pad).min(h), (asked + 2 * pad).min(w), model.dtype) >> 20,
            ctx.max_binding() >> 20
        )
    });
    Ok(TilePlan { tile: t, pad, grid: (w.div_ceil(t), h.div_ceil(t)), note })
}

/// Upscale an RGB8 image by the model's native scale, tiles of `tile` input pixels (0 = the whole
/// image in one call) with [`DEFAULT_PAD`] of context. Output = round(255 * clamp(y, 0, 1)), as
/// Real-ESRGAN writes it.
#[cfg(not(target_arch = "wasm32"))]
pub fn upscale(ctx: &Context, model: &RealEsrgan, img: &Image, tile: usize) -> Result<Image> {
    let plan = plan_tiles(ctx, model, img.width, img.height, tile, DEFAULT_PAD)?;
    let chw = image_to_chw(img);
    let y = upscale_chw(ctx, model, &chw, img.width, img.height, &plan)?;
    Ok(chw_to_image(&y, img.width * model.config.scale, img.height * model.config.scale))
}

/// RGB8 (HWC) -> planar f32 in [0, 1].
pub fn image_to_chw(img: &Image) -> Vec<f32> {
    let n = img.width * img.height;
    let mut v = vec![0.0; 3 * n];
    for (i, px) in img.rgb.chunks_exact(3).enumerate() {
        for c in 0..3 {
            v[c * n + i] = px[c] as f32 / 255.0;
        }
    }
    v
}

/// Planar f32 -> RGB8, clamped to [0, 1] and rounded.
pub fn chw_to_image(v: &[f32], width: usize, height: usize) -> Image {
    let n = width * height;
    let rgb = (0..n).flat_map(|i| (0..3).map(move |c| (v[c * n + i].clamp(0.0, 1.0) * 255.0).round() as u8)).collect();
    Image { width, height, rgb }
}

/// [`upscale_chw_async`], blocking (native).
#[cfg(not(target_arch = "wasm32"))]
pub fn upscale_chw(ctx: &Context, model: &RealEsrgan, chw: &[f32], width: usize, height: usize, plan: &TilePlan) -> Result<Vec<f32>> {
    pollster::block_on(upscale_chw_async(ctx, model, chw, width, height, plan))
}

/// The model on planar f32 `[3, height, width]` by `plan`; returns `[3, s*height, s*width]`,
/// not clamped. Sizes that are not multiples of the model's pixel-unshuffle factor are padded
/// on the right and bottom by reflection and cropped after (Real-ESRGAN's `mod_pad`). Async
/// for the browser, where readbacks are.
pub async fn upscale_chw_async(ctx: &Context, model: &RealEsrgan, chw: &[f32], width: usize, height: usize, plan: &TilePlan) -> Result<Vec<f32>> {
    let (s, u) = (model.config.scale, model.config.unshuffle());
    if width == 0 || height == 0 || chw.len() != 3 * width * height {
        return Err(Error::Unsupported(format!("upscale: a {width}x{height} image needs {} planar RGB values, got {}", 3 * width * height, chw.len())));
    }
    let (w, h) = (width.next_multiple_of(u), height.next_multiple_of(u));
    let reflect = |i: usize, n: usize| if i < n { i } else { (2 * (n - 1)).saturating_sub(i) };
    let at = |c: usize, y: usize, x: usize| chw[(c * height + reflect(y, height)) * width + reflect(x, width)];
    let (ow, oh) = (w * s, h * s);
    let mut out = vec![0.0f32; 3 * ow * oh];
    let (t, p) = (plan.tile, plan.pad);
    for ty in 0..h.div_ceil(t) {
        for tx in 0..w.div_ceil(t) {
            let (x0, y0) = (tx * t, ty * t);
            let (x1, y1) = ((x0 + t).min(w), (y0 + t).min(h));
            let (px0, py0) = (x0.saturating_sub(p), y0.saturating_sub(p));
            let (px1, py1) = ((x1 + p).min(w), (y1 + p).min(h));
            let (tw, th) = (px1 - px0, py1 - py0);
            let mut input = Vec::with_capacity(3 * tw * th);
            for c in 0..3 {
                for y in py0..py1 {
                    input.extend((px0..px1).map(|x| at(c, y, x)));
                }
            }
            let x = Tensor::from_f32(ctx, &input, &[1, 3, th, tw], model.dtype)?;
            let y = model.forward(ctx, &x)?.to_f32(ctx).await?;
            let (ytw, yth) = (tw * s, th * s);
            for c in 0..3 {
                for oy in y0 * s..y1 * s {
                    let src = (c * yth + oy - py0 * s) * ytw + (x0 - px0) * s;
                    let dst = (c * oh + oy) * ow + x0 * s;
                    out[dst..dst + (x1 - x0) * s].copy_from_slice(&y[src..src + (x1 - x0) * s]);
                }
            }
        }
    }
    if (w, h) == (width, height) {
        return Ok(out);
    }
    let (cw, ch) = (width * s, height * s);
    Ok((0..3).flat_map(|c| (0..ch).flat_map(move |y| (0..cw).map(move |x| (c, y, x)))).map(|(c, y, x)| out[(c * oh + y) * ow + x]).collect())
}

/// Upscale by any factor `by` > 0, as A1111's `Upscaler.upscale`: the model runs (at most 3
/// times) until the image is at least `by` times its size, then `resize` (the caller's Lanczos)
/// brings it to `round(by * size)` exactly. A1111 also rounds that size down to a multiple of 8;
/// Pigment keeps it exact.
#[cfg(not(target_arch = "wasm32"))]
pub fn upscale_by(ctx: &Context, model: &RealEsrgan, img: &Image, by: f32, tile: usize, resize: impl Fn(&Image, usize, usize) -> Image) -> Result<Image> {
    if !(by.is_finite() && by > 0.0 && by <= 16.0) {
        return Err(Error::Unsupported(format!("upscale factor {by}: give a number in (0, 16]")));
    }
    let (w, h) = (((img.width as f32 * by).round() as usize).max(1), ((img.height as f32 * by).round() as usize).max(1));
    let mut cur = img.clone();
    for _ in 0..3 {
        if cur.width >= w && cur.height >= h {
            break;
        }
        let before = (cur.width, cur.height);
        cur = upscale(ctx, model, &cur, tile)?;
        if (cur.width, cur.height) == before {
            break; // a 1x (restoration) model
        }
    }
    Ok(if (cur.width, cur.height) == (w, h) { cur } else { resize(&cur, w, h) })
}

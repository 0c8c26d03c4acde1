//! Inpainting: the mask as diffusers' `StableDiffusionInpaintPipeline` prepares it, the 9-channel
//! UNet input (`[latents, mask, masked_image_latents]`) and, for ordinary 4-channel UNets, the
//! per-step blend `(1 − m)·add_noise(image_latents, noise, t_next) + m·latents`.

use super::Image;
use crate::schedulers::Scheduler;
use crate::Result;

/// The mask at pixel and latent resolution, and the image with the repainted part zeroed.
pub(crate) struct MaskLatents {
    /// `[h/8, w/8]`, 0 or 1: `F.interpolate(mask, size=latent)` (nearest: pixel `(8i, 8j)`).
    pub latent_mask: Vec<f32>,
    /// `init_image · (mask < 0.5)`, `[1, 3, H, W]` in [-1, 1].
    pub masked_image: Vec<f32>,
}

/// PIL's `convert("L")`: `(19595 R + 38470 G + 7471 B + 2^15) >> 16`.
pub fn luma(rgb: &[u8]) -> Vec<u8> {
    rgb.chunks_exact(3)
        .map(|p| ((19595 * p[0] as u32 + 38470 * p[1] as u32 + 7471 * p[2] as u32 + 0x8000) >> 16) as u8)
        .collect()
}

impl MaskLatents {
    /// `mask`: white (≥ 128 after grayscale, blur and binarising at 0.5) = repaint.
    pub fn new(mask: &Image, blur: usize, pixels: &[f32]) -> MaskLatents {
        let (w, h) = (mask.width, mask.height);
        let mut l = luma(&mask.rgb);
        if blur > 0 {
            l = gaussian_blur(&l, w, h, blur as f32);
        }
        // VaeImageProcessor(do_binarize=True): v/255 < 0.5 → 0 else 1.
        let m: Vec<f32> = l.iter().map(|&v| if (v as f32 / 255.0f32) < 0.5 { 0.0 } else { 1.0 }).collect();
        let hw = w * h;
        let masked_image = (0..3 * hw).map(|i| if m[i % hw] < 0.5 { pixels[i] } else { 0.0 }).collect();
        let (lh, lw) = (h / 8, w / 8);
        let latent_mask = (0..lh * lw).map(|i| m[(i / lw) * 8 * w + (i % lw) * 8]).collect();
        MaskLatents { latent_mask, masked_image }
    }
}

/// Per-step inpainting state.
pub(crate) struct Inpaint {
    latent_mask: Vec<f32>,
    /// 9-channel UNet: appended to every UNet input.
    masked_image_latents: Option<Vec<f32>>,
    /// 4-channel UNet: the clean image latents blended back each step, and the run's noise.
    image_latents: Option<Vec<f32>>,
    noise: Vec<f32>,
}

impl Inpaint {
    pub fn new(latent_mask: Vec<f32>, masked_image_latents: Option<Vec<f32>>, image_latents: Option<Vec<f32>>, noise: Vec<f32>) -> Inpaint {
        Inpaint { latent_mask, masked_image_latents, image_latents, noise }
    }

    /// 9-channel UNet: `cat([scaled latents, mask, masked_image_latents], dim=1)` for one batch
    /// element (channel-major, so a plain append).
    pub fn extend_input(&self, xin: &mut Vec<f32>) {
        if let Some(mil) = &self.masked_image_latents {
            xin.extend_from_slice(&self.latent_mask);
            xin.extend_from_slice(mil);
        }
    }

    /// 4-channel UNet, after `step(_, i, …)`: keep the unmasked part on the image's own noising
    /// trajectory (noised to the next evaluation's timestep; clean after the last).
    pub fn blend(&self, x: &mut [f32], sched: &dyn Scheduler, i: usize) -> Result<()> {
        let Some(il) = &self.image_latents else { return Ok(()) };
        let proper = if i + 1 < sched.timesteps().len() { sched.add_noise(il, &self.noise, i + 1)? } else { il.clone() };
        let hw = self.latent_mask.len();
        for (k, v) in x.iter_mut().enumerate() {
            let m = self.latent_mask[k % hw];
            *v = (1.0f32 - m) * proper[k] + m * *v;
        }
        Ok(())
    }
}

/// PIL's `ImageFilter.GaussianBlur(radius)` on an 8-bit plane: three box blurs of a fractional
/// radius per direction (Gwosdek et al.), fixed point with 24 fractional bits, edges extended,
/// rounding to 8 bits after every pass, as Pillow's `ImagingGaussianBlur` does.
pub fn gaussian_blur(plane: &[u8], w: usize, h: usize, radius: f32) -> Vec<u8> {
    const PASSES: usize = 3;
    let r = box_radius(radius, PASSES);
    let mut a = plane.to_vec();
    for _ in 0..PASSES {
        for y in 0..h {
            let line = box_blur_line(&a[y * w..(y + 1) * w], r);
            a[y * w..(y + 1) * w].copy_from_slice(&line);
        }
    }
    let mut t = transpose(&a, w, h);
    for _ in 0..PASSES {
        for x in 0..w {
            let line = box_blur_line(&t[x * h..(x + 1) * h], r);
            t[x * h..(x + 1) * h].copy_from_slice(&line);
        }
    }
    transpose(&t, h, w)
}

fn transpose(a: &[u8], w: usize, h: usize) -> Vec<u8> {
    let mut t = vec![0u8; a.len()];
    for y in 0..h {
        for x in 0..w {
            t[x * h + y] = a[y * w + x];
        }
    }
    t
}

/// Pillow's `_gaussian_blur_radius` (C float; the square root in double).
fn box_radius(radius: f32, passes: usize) -> f32 {
    let sigma2 = radius * radius / passes as f32;
    let big_l = (12.0f64 * sigma2 as f64 + 1.0).sqrt() as f32;
    let l = ((big_l as f64 - 1.0) / 2.0).floor() as f32;
    let mut a = (2.0 * l + 1.0) * (l * (l + 1.0) - 3.0 * sigma2);
    a /= 6.0 * (sigma2 - (l + 1.0) * (l + 1.0));
    l + a
}

/// Pillow's `ImagingLineBoxBlur8`: a box of `2·⌊r⌋ + 1` full taps plus the two next taps weighted
/// by the fraction, edge pixels repeated.
fn box_blur_line(line: &[u8], float_radius: f32) -> Vec<u8> {
    let n = line.len();
    let lastx = n as i64 - 1;
    let radius = float_radius as i64;
    let ww = (16777216.0f32 / (float_radius * 2.0 + 1.0)) as u32 as i64;
    let fw = ((1i64 << 24) - (radius * 2 + 1) * ww) / 2;
    let edge_a = (radius + 1).min(n as i64);
    let edge_b = (n as i64 - radius - 1).max(0);
    let px = |i: i64| line[i as usize] as i64;
    let mut out = vec![0u8; n];
    let mut acc = px(0) * (radius + 1);
    for x in 0..edge_a - 1 {
        acc += px(x);
    }
    acc += px(lastx) * (radius - edge_a + 1);
    let mut emit = |x: i64, acc: i64, left: i64, right: i64| {
        let bulk = acc * ww + (px(left) + px(right)) * fw;
        out[x as usize] = ((bulk + (1 << 23)) >> 24) as u8;
    };
    if edge_a <= edge_b {
        for x in 0..edge_a {
            acc += px(x + radius) - px(0);
            emit(x, acc, 0, x + radius + 1);
        }
        for x in edge_a..edge_b {
            acc += px(x + radius) - px(x - radius - 1);
            emit(x, acc, x - radius - 1, x + radius + 1);
        }
        for x in edge_b..=lastx {
            acc += px(lastx) - px(x - radius - 1);
            emit(x, acc, x - radius - 1, lastx);
        }
    } else {
        for x in 0..edge_b {
            acc += px(x + radius) - px(0);
            emit(x, acc, 0, lastx);
        }
        for x in edge_b..edge_a {
            acc += px(lastx) - px(0);
            emit(x, acc, 0, lastx);
        }
        for x in edge_a..=lastx {
            acc += px(lastx) - px(x - radius - 1);
            emit(x, acc, x - radius - 1, lastx);
        }
    }
    out
}

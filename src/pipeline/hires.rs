//! Hires fix, as A1111's `StableDiffusionProcessingTxt2Img.sample_hr_pass`: txt2img at the base
//! size, upscale to `round8(scale · size)`, then img2img at the target size.
//!
//! * `Latent`: the base latents resized bilinearly, `F.interpolate(mode="bilinear",
//!   antialias=False)` (align_corners False); `LatentNearest`: `mode="nearest"`. The resized
//!   latents are the img2img start, noised to the strength's first step with fresh noise.
//! * `Lanczos`: the base latents decoded by the VAE, resized with PIL's Lanczos (reimplemented
//!   here to the bit: 22-bit fixed-point taps, horizontal pass then vertical, as PIL's
//!   `ImagingResample`), and used as the img2img init image (VAE-encoded, posterior sample).
//! * `Model`: a Real-ESRGAN / ESRGAN file, as A1111's `images.resize_image` with an upscaler:
//!   the decoded base image through the model (tiled) until it is at least the target size (at
//!   most 3 passes), then PIL's Lanczos to the target when the model's scale overshoots.
//!
//! Seeds: the second pass draws from a fresh generator seeded with the image's seed (A1111
//! reseeds its second-pass noise with the same seeds). Steps: `steps` of a schedule of `steps`
//! (0 = the base steps) of which the last `int(steps · denoise)` run, as diffusers'
//! `StableDiffusionImg2ImgPipeline` (and A1111's `t_enc = int(denoise · steps)`).
//! Checked against diffusers' pipelines composed so (`tools/fixtures_hires.py`).

use super::{GenerateOptions, Image};
use crate::{Error, Result};

/// How the base image is enlarged (A1111's "Upscaler").
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HiresUpscaler {
    Latent,
    LatentNearest,
    Lanczos,
    /// A Real-ESRGAN / ESRGAN (RRDBNet) `.safetensors`; `name` is what the infotext shows.
    Model { name: String, path: std::path::PathBuf },
}

impl HiresUpscaler {
    /// The built-ins `latent`, `latent-nearest`, `lanczos` (also A1111's own names), or the
    /// path of an RRDBNet `.safetensors` (named by its file stem).
    pub fn parse(s: &str) -> Result<HiresUpscaler> {
        if let Some(b) = HiresUpscaler::builtin(s) {
            return Ok(b);
        }
        let path = std::path::Path::new(s);
        if path.is_file() {
            let name = path.file_stem().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| s.to_string());
            return Ok(HiresUpscaler::Model { name, path: path.to_path_buf() });
        }
        Err(Error::Unsupported(format!(
            "hires upscaler '{s}': not latent, latent-nearest or lanczos, and no such file; give the path of a Real-ESRGAN / ESRGAN .safetensors (e.g. RealESRGAN_x4plus.safetensors)"
        )))
    }

    /// A built-in upscaler by Pigment's or A1111's name.
    pub fn builtin(s: &str) -> Option<HiresUpscaler> {
        match s.trim().to_ascii_lowercase().as_str() {
            "latent" => Some(HiresUpscaler::Latent),
            "latent-nearest" | "latent_nearest" | "latent (nearest)" => Some(HiresUpscaler::LatentNearest),
            "lanczos" => Some(HiresUpscaler::Lanczos),
            _ => None,
        }
    }

    /// The name A1111 writes in `Hires upscaler:`.
    pub fn a1111_name(&self) -> &str {
        match self {
            HiresUpscaler::Latent => "Latent",
            HiresUpscaler::LatentNearest => "Latent (nearest)",
            HiresUpscaler::Lanczos => "Lanczos",
            HiresUpscaler::Model { name, .. } => name,
        }
    }
}

/// The `Model` upscaler's step: `img` through `model` (tiles of the default size) until it is at
/// least `width` x `height` (at most 3 passes; a 1x model stops after one), then PIL's Lanczos
/// to exactly that size, as A1111's `Upscaler.upscale` + `images.resize_image`.
#[cfg(not(target_arch = "wasm32"))]
pub fn upscale_with_model(ctx: &crate::gpu::Context, model: &crate::models::esrgan::RealEsrgan, img: &Image, width: usize, height: usize) -> Result<Image> {
    let mut cur = img.clone();
    for _ in 0..3 {
        if cur.width >= width && cur.height >= height {
            break;
        }
        let before = (cur.width, cur.height);
        cur = super::upscale::upscale(ctx, model, &cur, super::upscale::DEFAULT_TILE)?;
        if (cur.width, cur.height) == before {
            break;
        }
    }
    Ok(if (cur.width, cur.height) == (width, height) { cur } else { resize_lanczos(&cur, width, height) })
}

/// The second pass (`--hires-scale`, `--hires-steps`, `--hires-denoise`, `--hires-upscaler`).
#[derive(Clone, Debug, PartialEq)]
pub struct HiresOptions {
    /// Target size = `round8(scale · width) × round8(scale · height)`.
    pub scale: f32,
    /// Steps of the second pass; 0 = the base pass's.
    pub steps: usize,
    /// Denoising strength of the second pass, in (0, 1].
    pub denoise: f32,
    pub upscaler: HiresUpscaler,
}

impl Default for HiresOptions {
    /// A1111's defaults: ×2, same steps, 0.7, Latent.
    fn default() -> Self {
        HiresOptions { scale: 2.0, steps: 0, denoise: 0.7, upscaler: HiresUpscaler::Latent }
    }
}

fn round8(v: f32) -> usize {
    ((v / 8.0).round() as usize * 8).max(8)
}

impl HiresOptions {
    /// `(width, height)` of the second pass.
    pub fn target(&self, width: usize, height: usize) -> (usize, usize) {
        (round8(self.scale * width as f32), round8(self.scale * height as f32))
    }

    /// The second pass's options: the target size, the hires steps and strength; `init_image`
    /// is set by the caller for pixel upscalers.
    pub fn second_pass(&self, o: &GenerateOptions) -> GenerateOptions {
        let (width, height) = self.target(o.width, o.height);
        GenerateOptions {
            width,
            height,
            steps: if self.steps == 0 { o.steps } else { self.steps },
            strength: self.denoise,
            init_image: None,
            mask: None,
            hires: None,
            ..o.clone()
        }
    }

    /// Rejects what the second pass cannot run, naming the flag.
    pub fn check(&self, o: &GenerateOptions) -> Result<()> {
        if !(self.scale.is_finite() && self.scale > 0.0 && self.scale <= 8.0) {
            return Err(Error::Unsupported(format!("hires scale {} must be in (0, 8] (A1111 offers 1 to 4)", self.scale)));
        }
        if !(self.denoise > 0.0 && self.denoise <= 1.0) {
            return Err(Error::Unsupported(format!("hires denoising strength {} must be in (0, 1]", self.denoise)));
        }
        if o.init_image.is_some() || o.mask.is_some() {
            return Err(Error::Unsupported("hires fix is a txt2img second pass: drop the init image / mask, or the hires options".into()));
        }
        if o.control.is_some() {
            return Err(Error::Unsupported("hires fix with ControlNet is not supported yet: drop --controlnet or the hires options".into()));
        }
        let p = self.second_pass(o);
        if crate::schedulers::begin_index(p.steps, p.strength, 1).is_none() {
            return Err(Error::Unsupported(format!(
                "hires denoising strength {} with {} hires steps runs no step (int(steps × strength) = 0); raise --hires-denoise or --hires-steps",
                self.denoise, p.steps
            )));
        }
        Ok(())
    }
}

/// `F.interpolate(x, size=(ho, wo), mode="bilinear", align_corners=False, antialias=False)` on
/// `[C, h, w]` planes, in f32 as PyTorch's CPU kernel: source `max(scale·(d + 0.5) − 0.5, 0)`
/// with `scale = in / out`, the upper neighbour clamped to the edge.
pub fn resize_bilinear(x: &[f32], c: usize, h: usize, w: usize, ho: usize, wo: usize) -> Vec<f32> {
    let axis = |inp: usize, out: usize| -> Vec<(usize, usize, f32)> {
        let scale = inp as f32 / out as f32;
        (0..out)
            .map(|d| {
                let src = (scale * (d as f32 + 0.5) - 0.5).max(0.0);
                let i0 = (src as usize).min(inp - 1);
                let i1 = if i0 < inp - 1 { i0 + 1 } else { i0 };
                (i0, i1, src - i0 as f32)
            })
            .collect()
    };
    let (ys, xs) = (axis(h, ho), axis(w, wo));
    let mut out = Vec::with_capacity(c * ho * wo);
    for p in x.chunks_exact(h * w).take(c) {
        for &(y0, y1, ly) in &ys {
            for &(x0, x1, lx) in &xs {
                let at = |y: usize, xx: usize| p[y * w + xx];
                out.push((1.0 - ly) * ((1.0 - lx) * at(y0, x0) + lx * at(y0, x1)) + ly * ((1.0 - lx) * at(y1, x0) + lx * at(y1, x1)));
            }
        }
    }
    out
}

/// `F.interpolate(x, size=(ho, wo), mode="nearest")`: source `min(floor(d · in/out), in − 1)`.
pub fn resize_nearest(x: &[f32], c: usize, h: usize, w: usize, ho: usize, wo: usize) -> Vec<f32> {
    let idx = |inp: usize, out: usize, d: usize| (((d as f32) * (inp as f32 / out as f32)).floor() as usize).min(inp - 1);
    let mut out = Vec::with_capacity(c * ho * wo);
    for p in x.chunks_exact(h * w).take(c) {
        for y in 0..ho {
            let sy = idx(h, ho, y);
            for xx in 0..wo {
                out.push(p[sy * w + idx(w, wo, xx)]);
            }
        }
    }
    out
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// PIL's per-output taps for one axis: `(first source index, fixed-point weights)`.
fn lanczos_taps(inp: usize, out: usize) -> Vec<(usize, Vec<i32>)> {
    let sinc = |x: f64| if x == 0.0 { 1.0 } else { (std::f64::consts::PI * x).sin() / (std::f64::consts::PI * x) };
    let lanczos = |x: f64| if (-3.0..3.0).contains(&x) { sinc(x) * sinc(x / 3.0) } else { 0.0 };
    let scale = inp as f64 / out as f64;
    let filterscale = scale.max(1.0);
    let support = 3.0 * filterscale;
    let ss = 1.0 / filterscale;
    (0..out)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(inp as i64) as usize;
            let k: Vec<f64> = (xmin..xmax).map(|x| lanczos((x as f64 - center + 0.5) * ss)).collect();
            let sum: f64 = k.iter().sum();
            let fixed = k
                .iter()
                .map(|&v| {
                    let v = if sum != 0.0 { v / sum } else { v };
                    let f = v * (1u32 << PRECISION_BITS) as f64;
                    (if f < 0.0 { f - 0.5 } else { f + 0.5 }) as i32
                })
                .collect();
            (xmin, fixed)
        })
        .collect()
}

fn clip8(acc: i64) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// PIL's `Image.resize((w, h), Image.LANCZOS)` of an RGB image (A1111's "Lanczos" upscaler).
pub fn resize_lanczos(img: &Image, width: usize, height: usize) -> Image {
    let (w0, h0) = (img.width, img.height);
    let half = 1i64 << (PRECISION_BITS - 1);
    // Horizontal pass (skipped by PIL when the width is unchanged), then vertical.
    let mid = if width != w0 {
        let taps = lanczos_taps(w0, width);
        let mut m = vec![0u8; h0 * width * 3];
        for y in 0..h0 {
            for (x, (x0, k)) in taps.iter().enumerate() {
                for c in 0..3 {
                    let acc = k.iter().enumerate().fold(half, |a, (i, &kk)| a + img.rgb[(y * w0 + x0 + i) * 3 + c] as i64 * kk as i64);
                    m[(y * width + x) * 3 + c] = clip8(acc);
                }
            }
        }
        m
    } else {
        img.rgb.clone()
    };
    let rgb = if height != h0 {
        let taps = lanczos_taps(h0, height);
        let mut o = vec![0u8; height * width * 3];
        for (y, (y0, k)) in taps.iter().enumerate() {
            for x in 0..width {
                for c in 0..3 {
                    let acc = k.iter().enumerate().fold(half, |a, (i, &kk)| a + mid[((y0 + i) * width + x) * 3 + c] as i64 * kk as i64);
                    o[(y * width + x) * 3 + c] = clip8(acc);
                }
            }
        }
        o
    } else {
        mid
    };
    Image { width, height, rgb }
}

/// A1111's infotext fields for the second pass, after the base ones:
/// `, Denoising strength: D, Hires upscale: S[, Hires steps: N], Hires upscaler: NAME`
/// (`Hires steps` only when set, as A1111 writes it).
pub fn a1111_parameters(h: &HiresOptions) -> String {
    let mut s = format!(", Denoising strength: {}, Hires upscale: {}", h.denoise, h.scale);
    if h.steps > 0 {
        s.push_str(&format!(", Hires steps: {}", h.steps));
    }
    s.push_str(&format!(", Hires upscaler: {}", h.upscaler.a1111_name()));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bilinear_2x_matches_torch_on_a_ramp() {
        // torch: F.interpolate(torch.tensor([[[[0., 1.], [2., 3.]]]]), size=(4, 4), mode="bilinear")
        let got = resize_bilinear(&[0.0, 1.0, 2.0, 3.0], 1, 2, 2, 4, 4);
        let row0 = [0.0, 0.25, 0.75, 1.0];
        let want: Vec<f32> = [0.0f32, 0.5, 1.5, 2.0].iter().flat_map(|&r| row0.iter().map(move |&c| r + c)).collect();
        assert_eq!(got, want);
        assert_eq!(resize_nearest(&[0.0, 1.0, 2.0, 3.0], 1, 2, 2, 4, 4)[..4], [0.0, 0.0, 1.0, 1.0]);
    }

    #[test]
    fn lanczos_keeps_a_flat_image() {
        let img = Image { width: 5, height: 3, rgb: vec![77; 45] };
        assert!(resize_lanczos(&img, 10, 7).rgb.iter().all(|&v| v == 77));
    }

    #[test]
    fn upscaler_names() {
        assert_eq!(HiresUpscaler::parse("latent-nearest").unwrap().a1111_name(), "Latent (nearest)");
        let e = HiresUpscaler::parse("4x-UltraSharp.pth").unwrap_err().to_string();
        assert!(e.contains("'4x-UltraSharp.pth'") && e.contains("no such file"), "{e}");
    }
}

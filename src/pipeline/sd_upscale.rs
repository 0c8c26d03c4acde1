//! The Stable Diffusion x4 upscaler (diffusers' `StableDiffusionUpscalePipeline`,
//! stabilityai/stable-diffusion-x4-upscaler): a text-conditioned latent diffusion model whose
//! latents have the low-resolution image's size and whose 3-level VAE (factor 4) decodes them to
//! 4x that size. (`upscale.rs` is Real-ESRGAN's, a plain convolutional upscaler.)
//!
//! As diffusers, for the same seed (one torch-compatible generator):
//! 1. the image to `[-1, 1]`, noised by `low_res_scheduler` (DDPM) `add_noise` at `noise_level`
//!    with the generator's first `randn` (the image's shape);
//! 2. latents `randn · init_noise_sigma` (the generator's second draw), latent size = image size;
//! 3. each step: `scale_model_input(latents)` concatenated on channels with the noised image
//!    (4 + 3 = the UNet's 7 input channels), the UNet with `class_labels = noise_level` (its
//!    class embedding is added to the time embedding), guidance `uncond + g (cond - uncond)`;
//! 4. the VAE decode of `latents / scaling_factor` (0.08333).

use super::img2img::image_to_tensor_data;
use super::{phase, uses_cfg, GenerateOptions, Image, StableDiffusion};
use crate::gpu::Context;
use crate::models::unet::UNetExtras;
use crate::rng::TorchRng;
use crate::schedulers::{self, NoiseSchedule, SamplerKind, SchedulerConfig, SigmaSchedule};
use crate::{DType, Error, Result, Tensor};

/// diffusers' `max_noise_level` default (the pipeline config's).
pub const DEFAULT_MAX_NOISE_LEVEL: usize = 350;

/// What an upscale needs besides the model and the image.
#[derive(Clone, Debug)]
pub struct SdUpscaleOptions {
    pub prompt: String,
    pub negative_prompt: String,
    /// Noise added to the low-resolution image, `0..=max_noise_level` (diffusers' default 20):
    /// more lets the model invent more detail and follow the input less.
    pub noise_level: usize,
    pub steps: usize,
    /// Classifier-free guidance (diffusers' default 9; <= 1 runs no unconditional batch).
    pub guidance: f32,
    pub seed: u64,
    /// The sampler (the model's own scheduler is DDIM).
    pub sampler: SamplerKind,
    /// Latent tile side (= input pixels; `None`: the whole image). The UNet then runs per
    /// overlapping tile and the predictions are blended before each scheduler step; a tile the
    /// device cannot hold is shrunk. diffusers has no tiling: only an untiled run matches it.
    pub tile: Option<usize>,
}

impl Default for SdUpscaleOptions {
    fn default() -> Self {
        SdUpscaleOptions {
            prompt: String::new(),
            negative_prompt: String::new(),
            noise_level: 20,
            steps: 20,
            guidance: 9.0,
            seed: 0,
            sampler: SamplerKind::Ddim,
            tile: None,
        }
    }
}

/// The x4 upscaler: the SD parts (tokenizer, text encoder, 7-channel UNet, VAE, scheduler) and
/// the low-resolution image's noise schedule.
pub struct SdUpscaler {
    pub sd: StableDiffusion,
    /// `low_res_scheduler`'s `alphas_cumprod` (training schedule, f32 as diffusers holds it).
    pub low_res_alphas_cumprod: Vec<f32>,
    pub max_noise_level: usize,
}

/// Whether `dir` is an x4-upscaler diffusers folder: a `low_res_scheduler/` and a UNet with
/// 7 input channels (4 latent + 3 image).
#[cfg(not(target_arch = "wasm32"))]
pub fn is_x4_upscaler(dir: &std::path::Path) -> bool {
    let unet_in = std::fs::read_to_string(dir.join("unet/config.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v.get("in_channels").and_then(serde_json::Value::as_u64));
    dir.join("low_res_scheduler").is_dir() && unet_in == Some(7)
}

impl SdUpscaler {
    /// From the parts and the low-res scheduler config (`low_res_scheduler/scheduler_config.json`).
    pub fn new(sd: StableDiffusion, low_res_scheduler: &SchedulerConfig, max_noise_level: usize) -> Result<SdUpscaler> {
        let lc = sd.vae.config.latent_channels;
        let unet_in = sd.unet.in_channels();
        if unet_in != lc + 3 {
            return Err(Error::Unsupported(format!(
                "{}: the x4 upscaler's UNet takes {} channels (latents + RGB), this one {unet_in}",
                sd.name,
                lc + 3
            )));
        }
        if sd.unet.class_embedding.is_none() {
            return Err(Error::Unsupported(format!("{}: the x4 upscaler's UNet needs class embeddings (num_class_embeds) for the noise level", sd.name)));
        }
        let low_res_alphas_cumprod = NoiseSchedule::new(low_res_scheduler)?.alphas_cumprod;
        Ok(SdUpscaler { sd, low_res_alphas_cumprod, max_noise_level })
    }

    /// A diffusers `StableDiffusionUpscalePipeline` folder ([`is_x4_upscaler`]).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn load(ctx: &Context, dir: &std::path::Path, want_f16: bool) -> Result<SdUpscaler> {
        let file = dir.join("low_res_scheduler/scheduler_config.json");
        let text = std::fs::read_to_string(&file)
            .map_err(|e| Error::Unsupported(format!("{}: {e} (an x4 upscaler folder has low_res_scheduler/)", file.display())))?;
        let low_res = SchedulerConfig::from_json(&text)?;
        let max_noise_level = std::fs::read_to_string(dir.join("model_index.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v.get("max_noise_level").and_then(serde_json::Value::as_u64))
            .map_or(DEFAULT_MAX_NOISE_LEVEL, |n| n as usize);
        Self::new(StableDiffusion::load(ctx, dir, want_f16)?, &low_res, max_noise_level)
    }

    /// Output pixels per input pixel (the VAE's factor: 4).
    pub fn factor(&self) -> usize {
        self.sd.vae.config.scale_factor()
    }

    /// Upscale `image` (blocking, native); `progress(step, total)` after each UNet evaluation.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn upscale(&self, ctx: &Context, image: &Image, o: &SdUpscaleOptions, progress: impl FnMut(usize, usize)) -> Result<Image> {
        pollster::block_on(self.upscale_async(ctx, image, o, progress))
    }

    pub async fn upscale_async(&self, ctx: &Context, image: &Image, o: &SdUpscaleOptions, progress: impl FnMut(usize, usize)) -> Result<Image> {
        let latents = self.sample(ctx, image, o, progress).await?;
        let f = self.factor();
        phase(ctx, "vae decode");
        let z = Tensor::from_f32(ctx, &latents, &[1, self.sd.vae.config.latent_channels, image.height, image.width], DType::F32)?;
        let rgb = self.sd.vae.latents_to_image_u8_async(ctx, &z).await?;
        Ok(Image { width: f * image.width, height: f * image.height, rgb })
    }

    /// The sampler loop; returns the final latents `[1, 4, h, w]` (h, w: the input's size).
    pub async fn sample(&self, ctx: &Context, image: &Image, o: &SdUpscaleOptions, mut progress: impl FnMut(usize, usize)) -> Result<Vec<f32>> {
        let (sd, unet) = (&self.sd, &self.sd.unet);
        let (w, h) = (image.width, image.height);
        if w == 0 || h == 0 || image.rgb.len() != w * h * 3 {
            return Err(Error::Unsupported(format!("input image: {} bytes for {w}x{h} RGB", image.rgb.len())));
        }
        let f = self.factor();
        // diffusers' VaeImageProcessor resizes to a multiple of the VAE factor (the UNet takes any
        // size): ask for that size rather than resize silently.
        if w % f != 0 || h % f != 0 {
            return Err(Error::Unsupported(format!(
                "input image {w}x{h}: both sides must be multiples of {f} (the x4 upscaler's VAE factor); crop or resize it to {}x{}",
                (w / f).max(1) * f,
                (h / f).max(1) * f
            )));
        }
        super::check_device_size(ctx, f * w, f * h)?;
        if o.noise_level > self.max_noise_level {
            return Err(Error::Unsupported(format!("noise level {} is above the model's max_noise_level {}", o.noise_level, self.max_noise_level)));
        }
        if o.steps == 0 {
            return Err(Error::Unsupported("steps must be at least 1".into()));
        }
        let guided = uses_cfg(o.guidance);
        let batch_n = if guided { 2 } else { 1 };
        let tiles = self.plan_tiles(ctx, batch_n, w, h, o.tile)?;

        phase(ctx, "text encoder");
        let go = GenerateOptions { prompt: o.prompt.clone(), negative_prompt: o.negative_prompt.clone(), ..Default::default() };
        let cond = sd.encode_prompt(ctx, &go, guided).await?;
        let text = if cond.text.dtype() == unet.dtype {
            cond.text
        } else {
            Tensor::from_f32(ctx, &cond.text.to_f32(ctx).await?, cond.text.shape(), unet.dtype)?
        };

        let mut sched = schedulers::build(o.sampler, SigmaSchedule::Normal, &sd.scheduler_config, o.steps)?;
        let mut rng = TorchRng::new(o.seed);
        // low_res_scheduler.add_noise(image, randn(image.shape), noise_level) (DDPM, f32)
        let ac = self.low_res_alphas_cumprod.get(o.noise_level).copied().ok_or_else(|| {
            Error::Unsupported(format!("noise level {} is beyond the low-res schedule's {} steps", o.noise_level, self.low_res_alphas_cumprod.len()))
        })?;
        let (a, b) = (ac.sqrt(), (1.0f32 - ac).sqrt());
        let noise = rng.randn(3 * w * h);
        let low: Vec<f32> = image_to_tensor_data(image).iter().zip(&noise).map(|(&x, &n)| a * x + b * n).collect();
        let lc = sd.vae.config.latent_channels;
        let n = lc * w * h;
        let sigma0 = sched.init_noise_sigma();
        let mut x: Vec<f32> = rng.randn(n).into_iter().map(|v| v * sigma0).collect();

        phase(ctx, "unet");
        let total = sched.timesteps().len();
        let labels = [o.noise_level];
        let whole = tiles.len() == 1;
        for i in 0..total {
            let t = sched.timesteps()[i];
            // [scaled latents | noised image] per batch entry (NCHW: channel concat of batch 1).
            let mut full = sched.scale_model_input(&x, i);
            full.extend_from_slice(&low);
            let (mut acc, mut wsum) = (vec![0f32; n], vec![0f32; w * h]);
            for tile in &tiles {
                let one = if whole { std::mem::take(&mut full) } else { tile.cut(&full, lc + 3, w) };
                let mut batch = one.clone();
                if guided {
                    batch.extend_from_slice(&one);
                }
                let sample = Tensor::from_f32(ctx, &batch, &[batch_n, lc + 3, tile.h, tile.w], text.dtype())?;
                let out = unet.forward_with(ctx, &sample, &[t], (&text).into(), None, None, None, UNetExtras { class_labels: Some(labels.as_slice()), ..Default::default() })?.to_f32(ctx).await?;
                let tn = lc * tile.h * tile.w;
                let pred = if guided { schedulers::cfg_combine(&out[..tn], &out[tn..], o.guidance) } else { out };
                if whole {
                    acc = pred;
                    wsum.fill(1.0);
                } else {
                    tile.accumulate(&pred, lc, w, h, &mut acc, &mut wsum);
                }
            }
            let hw = w * h;
            let pred: Vec<f32> = acc.iter().enumerate().map(|(k, &v)| v / wsum[k % hw]).collect();
            x = sched.step(&pred, i, &x, &mut rng);
            if x.iter().any(|v| !v.is_finite()) {
                let hint = if unet.dtype == DType::F16 { " (an f16 overflow: run with --no-f16)" } else { "" };
                return Err(Error::Unsupported(format!("the latents turned non-finite at step {}{hint}", i + 1)));
            }
            progress(i + 1, total);
        }
        Ok(x)
    }
}

/// One latent tile: origin, size and the blend ramp's width.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tile {
    pub x: usize,
    pub y: usize,
    pub w: usize,
    pub h: usize,
    pub overlap: usize,
}

impl Tile {
    /// `[C, h, w]` of this tile from a `[C, H, width]` map.
    fn cut(&self, full: &[f32], channels: usize, width: usize) -> Vec<f32> {
        let height = full.len() / (channels * width);
        let mut out = Vec::with_capacity(channels * self.h * self.w);
        for c in 0..channels {
            for r in self.y..self.y + self.h {
                let row = (c * height + r) * width;
                out.extend_from_slice(&full[row + self.x..row + self.x + self.w]);
            }
        }
        out
    }

    /// Weight of a tile position along one axis: a linear ramp over `overlap` from each edge
    /// that lies inside the image (1 at the image's border), never 0.
    fn ramp(&self, p: usize, len: usize, start: usize, size: usize) -> f32 {
        let o = self.overlap as f32 + 1.0;
        let mut v = 1f32;
        if start > 0 {
            v = v.min((p + 1) as f32 / o);
        }
        if start + len < size {
            v = v.min((len - p) as f32 / o);
        }
        v
    }

    fn accumulate(&self, pred: &[f32], channels: usize, width: usize, height: usize, acc: &mut [f32], wsum: &mut [f32]) {
        for r in 0..self.h {
            let wy = self.ramp(r, self.h, self.y, height);
            for q in 0..self.w {
                let wt = wy * self.ramp(q, self.w, self.x, width);
                let k = (self.y + r) * width + self.x + q;
                wsum[k] += wt;
                for c in 0..channels {
                    acc[c * width * height + k] += wt * pred[(c * self.h + r) * self.w + q];
                }
            }
        }
    }
}

/// Tile origins along one axis: one tile when it fits, else evenly spread tiles overlapping by
/// at least `overlap`, the last ending at the border.
fn starts(size: usize, tile: usize, overlap: usize) -> Vec<usize> {
    if size <= tile {
        return vec![0];
    }
    let n = (size - overlap).div_ceil(tile - overlap);
    (0..n).map(|i| i * (size - tile) / (n - 1)).collect()
}

impl SdUpscaler {
    /// The latent tiles for a `w`x`h` input: the whole image, or tiles of `tile` (a multiple of
    /// the UNet's down-sampling factor, overlapping by a quarter) when asked for or when the
    /// whole latent's activations would not fit a device buffer (then the largest that fits).
    pub fn plan_tiles(&self, ctx: &Context, batch: usize, w: usize, h: usize, tile: Option<usize>) -> Result<Vec<Tile>> {
        let unet = &self.sd.unet;
        let m = unet.config.downscale();
        // check_unet_fits counts latents as pixels / 8.
        let fits = |t: usize| super::limits::check_unet_fits(ctx, unet, batch, 8 * t.min(w), 8 * t.min(h));
        let mut t = tile.unwrap_or(w.max(h)).max(m);
        if t < w.max(h) {
            t = (t / m * m).max(m);
        }
        while fits(t).is_err() && t > m {
            t = ((t - 1) / m * m).max(m);
        }
        fits(t)?;
        // Shrunk below what was asked for (the whole image when nothing was): say so.
        if t < w.max(h) && t < tile.unwrap_or(usize::MAX) {
            let msg = format!("x4 upscaler: the UNet runs in {t}x{t} latent tiles (the largest this device holds; the result differs a little from an untiled run)");
            self.sd.warnings.lock().unwrap_or_else(|e| e.into_inner()).push(msg);
        }
        if t >= w && t >= h {
            return Ok(vec![Tile { x: 0, y: 0, w, h, overlap: 0 }]);
        }
        let overlap = (t / 4).max(1).min(t - 1);
        let (tw, th) = (t.min(w), t.min(h));
        let mut tiles = Vec::new();
        for &y in &starts(h, th, overlap) {
            for &x in &starts(w, tw, overlap) {
                tiles.push(Tile { x, y, w: tw, h: th, overlap });
            }
        }
        Ok(tiles)
    }
}

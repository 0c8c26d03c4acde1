//! DiffEdit's mask estimation (diffusers' `StableDiffusionDiffEditPipeline.generate_mask`): where
//! the noise predicted for a target prompt differs from that for a source prompt, on the input
//! image noised to the encode strength's timestep, averaged over several noise draws.
//!
//! Generator order as diffusers for one image: the VAE posterior samples of all `maps` copies
//! (one draw), then their noise (one draw). DDIM's timesteps (diffusers' DiffEdit example
//! scheduler), `add_noise` at the strength's begin index. The map is the mean over the maps and
//! channels of `|ε_target − ε_source|` (each guided); the mask is `clamp(map, 0, c) / c > 0.5`
//! with `c = mean(map) · ratio`.
//!
//! diffusers 0.39 unpacks `encode_prompt`'s (prompt, negative) the wrong way round in
//! `generate_mask`, guiding towards the negative prompt; with one negative for source and target
//! (all this offers) that only scales the map by (g − 1)/g, which the mask does not see. Here the
//! guidance is the usual `neg + g·(pos − neg)`. Only the mask is implemented: inversion
//! (DDIMInverse) and the masked denoising are not.

use super::{GenerateOptions, Image, StableDiffusion};
use crate::gpu::Context;
use crate::rng::TorchRng;
use crate::schedulers::{self, SamplerKind, SigmaSchedule};
use crate::{Error, Result, Tensor};

/// `generate_mask`'s arguments (defaults: diffusers').
#[derive(Clone, Debug)]
pub struct MaskOptions {
    /// What the image shows now, e.g. "a bowl of fruits".
    pub source_prompt: String,
    /// What it should show, e.g. "a bowl of pears".
    pub target_prompt: String,
    /// The negative prompt of both.
    pub negative_prompt: String,
    /// Noise draws averaged (`num_maps_per_mask`, 10).
    pub maps: usize,
    /// How far the image is noised, in (0, 1] (`mask_encode_strength`, 0.5).
    pub encode_strength: f32,
    /// The clamp at `ratio · mean(map)` (`mask_thresholding_ratio`, 3).
    pub threshold_ratio: f32,
    /// DDIM steps the encode timestep is taken from (`num_inference_steps`, 50).
    pub steps: usize,
    /// Guidance, > 1 (`guidance_scale`, 7.5).
    pub guidance: f32,
    pub seed: u64,
}

impl Default for MaskOptions {
    fn default() -> Self {
        MaskOptions {
            source_prompt: String::new(),
            target_prompt: String::new(),
            negative_prompt: String::new(),
            maps: 10,
            encode_strength: 0.5,
            threshold_ratio: 3.0,
            steps: 50,
            guidance: 7.5,
            seed: 0,
        }
    }
}

/// The estimated mask at latent resolution.
#[derive(Clone, Debug)]
pub struct DiffEditMask {
    /// Latent width and height (the image's / 8).
    pub width: usize,
    pub height: usize,
    /// Mean `|ε_target − ε_source|` per latent pixel.
    pub map: Vec<f32>,
    /// 0 or 1 (1 = edit).
    pub mask: Vec<f32>,
}

impl DiffEditMask {
    /// The mask as a black/white image at `scale` pixels per latent pixel (8: the image's size).
    pub fn to_image(&self, scale: usize) -> Image {
        let (w, h) = (self.width * scale, self.height * scale);
        let rgb = (0..w * h).flat_map(|p| [(self.mask[(p / w / scale) * self.width + (p % w) / scale] * 255.0) as u8; 3]).collect();
        Image { width: w, height: h, rgb }
    }
}

fn check(sd: &StableDiffusion, image: &Image, m: &MaskOptions) -> Result<()> {
    super::check_size(image.width, image.height)?;
    if image.rgb.len() != image.width * image.height * 3 {
        return Err(Error::Unsupported(format!("DiffEdit image: {} bytes for {}x{} RGB", image.rgb.len(), image.width, image.height)));
    }
    if sd.unet.in_channels() != sd.vae.config.latent_channels || sd.is_sdxl() {
        return Err(Error::Unsupported(format!("DiffEdit masks need an SD 1.x/2.x text-to-image model; {} is not one", sd.name)));
    }
    if m.maps == 0 || m.steps == 0 {
        return Err(Error::Unsupported("DiffEdit: maps and steps must be at least 1".into()));
    }
    if !(m.guidance > 1.0) {
        return Err(Error::Unsupported(format!("DiffEdit mask guidance {} must be above 1 (diffusers' generate_mask fails without guidance)", m.guidance)));
    }
    if !(m.threshold_ratio > 0.0) {
        return Err(Error::Unsupported(format!("DiffEdit threshold ratio {} must be positive", m.threshold_ratio)));
    }
    if !(m.encode_strength > 0.0 && m.encode_strength <= 1.0) {
        return Err(Error::Unsupported(format!("DiffEdit encode strength {} must be in (0, 1]", m.encode_strength)));
    }
    Ok(())
}

impl StableDiffusion {
    /// DiffEdit's mask for editing `image` from `source_prompt` to `target_prompt`.
    pub async fn diffedit_mask_async(&self, ctx: &Context, image: &Image, m: &MaskOptions) -> Result<DiffEditMask> {
        check(self, image, m)?;
        let (h, w) = (image.height / 8, image.width / 8);
        let n = self.vae.config.latent_channels * h * w;
        // [negative, source] and [negative, target], each [2, L, D]
        let text_of = |prompt: &str| GenerateOptions { prompt: prompt.into(), negative_prompt: m.negative_prompt.clone(), ..Default::default() };
        let src = self.encode_prompt(ctx, &text_of(&m.source_prompt), true).await?.text;
        let tgt = self.encode_prompt(ctx, &text_of(&m.target_prompt), true).await?.text;
        if src.shape() != tgt.shape() {
            return Err(Error::Unsupported("DiffEdit: the source and target prompts must fit the same number of 75-token chunks".into()));
        }
        let mut shape = src.shape().to_vec();
        shape[0] = 4;
        let text = Tensor::from_f32(ctx, &[src.to_f32(ctx).await?, tgt.to_f32(ctx).await?].concat(), &shape, self.unet.dtype)?;

        let sched = schedulers::build(SamplerKind::Ddim, SigmaSchedule::Normal, &self.scheduler_config, m.steps)?;
        let begin = schedulers::begin_index(m.steps, m.encode_strength, 1)
            .ok_or_else(|| Error::Unsupported(format!("DiffEdit encode strength {} with {} steps leaves no step", m.encode_strength, m.steps)))?;
        let t = sched.timesteps()[begin];

        super::phase(ctx, "vae encode");
        let pixels = super::img2img::image_to_tensor_data(image);
        let img = Tensor::from_f32(ctx, &pixels, &[1, 3, image.height, image.width], self.vae.dtype)?;
        let (mean, _logvar, std) = self.encoder_vae(ctx)?.encode_async(ctx, &img, None).await?;
        let (mean, std) = (mean.to_f32(ctx).await?, std.to_f32(ctx).await?);
        let mut rng = TorchRng::new(m.seed);
        let eps = rng.randn(m.maps * n);
        let k = self.vae.config.scaling_factor;
        let latents: Vec<f32> = eps.iter().enumerate().map(|(i, &e)| k * (mean[i % n] + std[i % n] * e)).collect();
        let noise = rng.randn(latents.len());
        let noisy = sched.add_noise(&latents, &noise, begin)?;

        super::phase(ctx, "unet");
        let hw = h * w;
        let mut map = vec![0f32; hw];
        // one UNet batch of 4 per map ([neg, source, neg, target]) instead of diffusers' 4·maps
        for x in noisy.chunks(n) {
            let xin = sched.scale_model_input(x, begin);
            let sample = Tensor::from_f32(ctx, &xin.repeat(4), &[4, self.vae.config.latent_channels, h, w], self.unet.dtype)?;
            let out = self.unet.forward_full(ctx, &sample, &[t], &text, None, None, None)?.to_f32(ctx).await?;
            let e = |b: usize| &out[b * n..(b + 1) * n];
            let source = schedulers::cfg_combine(e(0), e(1), m.guidance);
            let target = schedulers::cfg_combine(e(2), e(3), m.guidance);
            for (i, (s, t)) in source.iter().zip(&target).enumerate() {
                map[i % hw] += (t - s).abs();
            }
        }
        let count = (m.maps * self.vae.config.latent_channels) as f32;
        map.iter_mut().for_each(|v| *v /= count);
        let c = map.iter().sum::<f32>() / hw as f32 * m.threshold_ratio;
        let mask = map.iter().map(|&v| if v.clamp(0.0, c) / c <= 0.5 { 0.0 } else { 1.0 }).collect();
        Ok(DiffEditMask { width: w, height: h, map, mask })
    }

    /// [`StableDiffusion::diffedit_mask_async`], blocking (native).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn diffedit_mask(&self, ctx: &Context, image: &Image, m: &MaskOptions) -> Result<DiffEditMask> {
        pollster::block_on(self.diffedit_mask_async(ctx, image, m))
    }
}

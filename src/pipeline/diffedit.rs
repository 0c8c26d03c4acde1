//! DiffEdit (diffusers' `StableDiffusionDiffEditPipeline`): an image edited from a source prompt
//! to a target prompt in three steps, each as diffusers computes it on SD 1.x/2.x with DDIM:
//!
//! 1. the mask (`generate_mask`): where the noise predicted for the target differs from that for
//!    the source, on the input image noised to the encode strength's timestep, averaged over
//!    several noise draws;
//! 2. the inversion (`invert`): the image's latents (a posterior sample) taken up DDIM's
//!    timesteps by `DDIMInverseScheduler` under the source prompt, for `int(steps · strength)`
//!    steps, every step's latents kept (noisiest first, as diffusers returns them). The default
//!    `num_reg_steps = 0` is the only one offered: no auto-correlation / KL regularisation;
//! 3. the edit (`__call__`): DDIM from the noisiest inverted latents under the target prompt,
//!    each step followed by `mask · x + (1 − mask) · inverted[i]`. As in diffusers, step `i`'s
//!    result (one timestep less noisy) is blended with `inverted[i]`, the latents of the step's
//!    own starting timestep, so the last step keeps the inversion at DDIM's smallest timestep
//!    outside the mask, not the clean image latents.
//!
//! Mask details. Generator order as diffusers for one image: the VAE posterior samples of all `maps` copies
//! (one draw), then their noise (one draw). DDIM's timesteps (diffusers' DiffEdit example
//! scheduler), `add_noise` at the strength's begin index. The map is the mean over the maps and
//! channels of `|ε_target − ε_source|` (each guided); the mask is `clamp(map, 0, c) / c > 0.5`
//! with `c = mean(map) · ratio`.
//!
//! diffusers 0.39 unpacks `encode_prompt`'s (prompt, negative) the wrong way round in
//! `generate_mask`, guiding towards the negative prompt; with one negative for source and target
//! (all this offers) that only scales the map by (g − 1)/g, which the mask does not see. Here the
//! guidance is the usual `neg + g·(pos − neg)`. Its guidance must be above 1 (diffusers' fails
//! otherwise); the inversion and the edit also run unguided at guidance <= 1 (one batch).

use super::{GenerateOptions, Image, StableDiffusion};
use crate::gpu::Context;
use crate::rng::TorchRng;
use crate::schedulers::ddim_inverse::DdimInverse;
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

/// The model, image and prompts every DiffEdit stage needs.
fn check_common(sd: &StableDiffusion, image: &Image, m: &MaskOptions) -> Result<()> {
    super::check_size(image.width, image.height)?;
    if image.rgb.len() != image.width * image.height * 3 {
        return Err(Error::Unsupported(format!("DiffEdit image: {} bytes for {}x{} RGB", image.rgb.len(), image.width, image.height)));
    }
    if sd.is_sdxl() {
        return Err(Error::Unsupported(format!("DiffEdit supports SD 1.x/2.x models (diffusers' DiffEdit pipeline has no SDXL variant); {} is SDXL", sd.name)));
    }
    let (unet_in, lc) = (sd.unet.in_channels(), sd.vae.config.latent_channels);
    if unet_in != lc {
        let what = if unet_in == 2 * lc + 1 { "an inpainting UNet" } else { "a UNet" };
        return Err(Error::Unsupported(format!(
            "DiffEdit needs a text-to-image model ({lc}-channel UNet); {} has {what} with {unet_in} input channels (inpaint with it by `pigment generate --init-image --mask` instead)",
            sd.name
        )));
    }
    for (what, p) in [("source", &m.source_prompt), ("target", &m.target_prompt)] {
        if p.trim().is_empty() {
            return Err(Error::Unsupported(format!("DiffEdit: the {what} prompt is empty (say what the image shows now with --source, what it should show with --target)")));
        }
    }
    if m.steps == 0 {
        return Err(Error::Unsupported("DiffEdit: steps must be at least 1".into()));
    }
    Ok(())
}

fn check(sd: &StableDiffusion, image: &Image, m: &MaskOptions) -> Result<()> {
    check_common(sd, image, m)?;
    if m.maps == 0 {
        return Err(Error::Unsupported("DiffEdit: maps must be at least 1".into()));
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

impl DiffEditMask {
    /// A mask given as an image of `width`×`height` (white = edit): each 8×8 block's mean
    /// luminance (PIL's `convert("L")` weights), binarised at 0.5 as diffusers' `preprocess_mask`.
    /// A mask written by [`DiffEditMask::to_image`] reads back as the same mask.
    pub fn from_image(img: &Image, width: usize, height: usize) -> Result<DiffEditMask> {
        if (img.width, img.height) != (width, height) || img.rgb.len() != width * height * 3 {
            return Err(Error::Unsupported(format!("DiffEdit mask is {}x{} but the image is {width}x{height}: give a mask of the image's size", img.width, img.height)));
        }
        let (w, h) = (width / 8, height / 8);
        let mut map = vec![0f32; w * h];
        for (p, px) in img.rgb.chunks(3).enumerate() {
            let l = (px[0] as u32 * 299 + px[1] as u32 * 587 + px[2] as u32 * 114) / 1000;
            map[(p / width / 8) * w + (p % width) / 8] += l as f32 / (255.0 * 64.0);
        }
        let mask = map.iter().map(|&v| if v >= 0.5 { 1.0 } else { 0.0 }).collect();
        Ok(DiffEditMask { width: w, height: h, map, mask })
    }
}

/// A whole DiffEdit: the mask (unless given), the inversion, the edit.
#[derive(Clone, Debug)]
pub struct DiffEditOptions {
    /// The prompts, negative prompt, steps, guidance and seed of all three stages, and the mask
    /// estimate's own settings.
    pub mask: MaskOptions,
    /// How much of the schedule the inversion climbs and the edit descends (`inpaint_strength`
    /// of `invert` and `__call__`), in (0, 1]; 0.8 as diffusers.
    pub strength: f32,
    /// The edit's negative prompt; `None`: the source prompt (diffusers' DiffEdit example), the
    /// mask's and the inversion's is `mask.negative_prompt`.
    pub edit_negative_prompt: Option<String>,
}

impl Default for DiffEditOptions {
    fn default() -> Self {
        DiffEditOptions { mask: MaskOptions::default(), strength: 0.8, edit_negative_prompt: None }
    }
}

/// What `invert` returns: every inverted step's latents `[1, C, H/8, W/8]`, noisiest first.
#[derive(Clone, Debug)]
pub struct Inverted {
    pub latents: Vec<Vec<f32>>,
    /// The timestep of each, the same order.
    pub timesteps: Vec<i64>,
}

fn check_edit(sd: &StableDiffusion, image: &Image, o: &DiffEditOptions) -> Result<usize> {
    check_common(sd, image, &o.mask)?;
    if !(o.strength > 0.0 && o.strength <= 1.0) {
        return Err(Error::Unsupported(format!("DiffEdit strength {} must be in (0, 1] (the share of the {} steps inverted and edited)", o.strength, o.mask.steps)));
    }
    schedulers::begin_index(o.mask.steps, o.strength, 1).ok_or_else(|| {
        Error::Unsupported(format!("DiffEdit strength {} with {} steps runs no step (int(steps × strength) = 0): raise either", o.strength, o.mask.steps))
    })
}

impl StableDiffusion {
    /// `[negative, prompt]` (guided) or `[prompt]` text conditioning in the UNet's dtype (also
    /// pix2pix-zero's inversion).
    pub(super) async fn diffedit_text(&self, ctx: &Context, prompt: &str, negative: &str, guided: bool) -> Result<Tensor> {
        let o = GenerateOptions { prompt: prompt.into(), negative_prompt: negative.into(), ..Default::default() };
        let text = self.encode_prompt(ctx, &o, guided).await?.text;
        if text.shape()[0] != 1 + guided as usize {
            return Err(Error::Unsupported("DiffEdit and pix2pix-zero prompts cannot use AND (Composable Diffusion)".into()));
        }
        if text.dtype() == self.unet.dtype {
            return Ok(text);
        }
        Tensor::from_f32(ctx, &text.to_f32(ctx).await?, text.shape(), self.unet.dtype)
    }

    /// One (guided) noise prediction for latents `x` of `shape` at timestep `t`.
    pub(super) async fn diffedit_eps(&self, ctx: &Context, x: &[f32], t: f32, text: &Tensor, guidance: f32, shape: &[usize; 4]) -> Result<Vec<f32>> {
        let b = text.shape()[0];
        let sample = Tensor::from_f32(ctx, &x.repeat(b), &[b, shape[1], shape[2], shape[3]], self.unet.dtype)?;
        let out = self.unet.forward_full(ctx, &sample, &[t], text, None, None, None)?.to_f32(ctx).await?;
        Ok(if b == 2 { schedulers::cfg_combine(&out[..x.len()], &out[x.len()..], guidance) } else { out })
    }

    pub(super) fn diffedit_shape(&self, width: usize, height: usize) -> [usize; 4] {
        [1, self.vae.config.latent_channels, height / 8, width / 8]
    }

    /// DiffEdit's inversion of `image` under the source prompt (diffusers' `invert` with
    /// `num_reg_steps = 0`): one VAE posterior sample (the seed's first draw), then
    /// `int(steps · strength)` DDIM inverse steps.
    pub async fn diffedit_invert_async(&self, ctx: &Context, image: &Image, o: &DiffEditOptions) -> Result<Inverted> {
        let t_start = check_edit(self, image, o)?;
        let m = &o.mask;
        let guided = super::uses_cfg(m.guidance);
        let text = self.diffedit_text(ctx, &m.source_prompt, &m.negative_prompt, guided).await?;
        let inv = DdimInverse::new(&self.scheduler_config, m.steps)?;
        let timesteps = inv.timesteps()[..m.steps - t_start].to_vec();
        let shape = self.diffedit_shape(image.width, image.height);
        let size = GenerateOptions { width: image.width, height: image.height, ..Default::default() };
        let mut rng = TorchRng::new(m.seed);
        let mut x = super::img2img::encode_sample(self, ctx, &super::img2img::image_to_tensor_data(image), &size, &mut rng).await?;
        super::phase(ctx, "unet");
        let mut latents = Vec::with_capacity(timesteps.len());
        for (i, &t) in timesteps.iter().enumerate() {
            let eps = self.diffedit_eps(ctx, &x, t as f32, &text, m.guidance, &shape).await?;
            x = inv.step(&eps, i, &x);
            latents.push(x.clone());
        }
        latents.reverse();
        Ok(Inverted { latents, timesteps: timesteps.into_iter().rev().collect() })
    }

    /// DiffEdit's edit (diffusers' `__call__`): DDIM from `inverted`'s noisiest latents under
    /// the target prompt, each step blended outside `mask` with the inverted latents; `image`
    /// gives the size (and is checked as the inversion's).
    pub async fn diffedit_edit_async(&self, ctx: &Context, image: &Image, mask: &DiffEditMask, inverted: &Inverted, o: &DiffEditOptions) -> Result<Image> {
        let begin = check_edit(self, image, o)?;
        let m = &o.mask;
        let shape = self.diffedit_shape(image.width, image.height);
        if (mask.width, mask.height) != (shape[3], shape[2]) || mask.mask.len() != shape[2] * shape[3] {
            return Err(Error::Unsupported(format!("DiffEdit mask is {}x{} latent pixels, the image needs {}x{}", mask.width, mask.height, shape[3], shape[2])));
        }
        let n = shape.iter().product::<usize>();
        let mut sched = schedulers::build(SamplerKind::Ddim, SigmaSchedule::Normal, &self.scheduler_config, m.steps)?;
        let total = sched.timesteps().len();
        if inverted.latents.len() != total - begin || inverted.latents.iter().any(|l| l.len() != n) {
            return Err(Error::Unsupported(format!(
                "DiffEdit: {} inverted latents for {} edit steps (invert with the same steps, strength and size)",
                inverted.latents.len(),
                total - begin
            )));
        }
        let guided = super::uses_cfg(m.guidance);
        let negative = o.edit_negative_prompt.as_deref().unwrap_or(&m.source_prompt);
        let text = self.diffedit_text(ctx, &m.target_prompt, negative, guided).await?;
        let hw = shape[2] * shape[3];
        let mut rng = TorchRng::new(m.seed);
        let mut x = inverted.latents[0].clone();
        super::phase(ctx, "unet");
        for (k, i) in (begin..total).enumerate() {
            let xin = sched.scale_model_input(&x, i);
            let eps = self.diffedit_eps(ctx, &xin, sched.timesteps()[i], &text, m.guidance, &shape).await?;
            x = sched.step(&eps, i, &x, &mut rng);
            // diffusers' `latents * mask + image_latents[i] * (1 - mask)`, in that order
            for (j, (v, &z)) in x.iter_mut().zip(&inverted.latents[k]).enumerate() {
                let keep = mask.mask[j % hw];
                *v = *v * keep + z * (1.0f32 - keep);
            }
        }
        self.decode_checked(ctx, &x, &shape, image.width, image.height).await
    }

    /// The whole DiffEdit: the mask (estimated unless `mask` is given), the inversion, the edit.
    pub async fn diffedit_async(&self, ctx: &Context, image: &Image, o: &DiffEditOptions, mask: Option<DiffEditMask>) -> Result<(DiffEditMask, Image)> {
        check_edit(self, image, o)?;
        let mask = match mask {
            Some(m) => m,
            None => self.diffedit_mask_async(ctx, image, &o.mask).await?,
        };
        let inverted = self.diffedit_invert_async(ctx, image, o).await?;
        let edited = self.diffedit_edit_async(ctx, image, &mask, &inverted, o).await?;
        Ok((mask, edited))
    }

    /// [`StableDiffusion::diffedit_invert_async`], blocking (native).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn diffedit_invert(&self, ctx: &Context, image: &Image, o: &DiffEditOptions) -> Result<Inverted> {
        pollster::block_on(self.diffedit_invert_async(ctx, image, o))
    }

    /// [`StableDiffusion::diffedit_edit_async`], blocking (native).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn diffedit_edit(&self, ctx: &Context, image: &Image, mask: &DiffEditMask, inverted: &Inverted, o: &DiffEditOptions) -> Result<Image> {
        pollster::block_on(self.diffedit_edit_async(ctx, image, mask, inverted, o))
    }

    /// [`StableDiffusion::diffedit_async`], blocking (native).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn diffedit(&self, ctx: &Context, image: &Image, o: &DiffEditOptions, mask: Option<DiffEditMask>) -> Result<(DiffEditMask, Image)> {
        pollster::block_on(self.diffedit_async(ctx, image, o, mask))
    }
}

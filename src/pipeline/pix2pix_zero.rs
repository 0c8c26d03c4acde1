//! pix2pix-zero (diffusers' `StableDiffusionPix2PixZeroPipeline.__call__`): an image generated
//! from a prompt, edited along a concept direction while its layout is kept by cross-attention
//! guidance.
//!
//! 1. The edit direction: the mean text-encoder output of the target sentences minus that of the
//!    source sentences (`get_embeds`, `construct_direction`), `[77, D]`, added to the prompt's
//!    cond embedding (`prompt_embeds_edit[1:2] += direction`).
//! 2. A first denoising pass from the seed's noise under the unedited prompt records every
//!    cross-attention map at every step (the reference layout).
//! 3. A second pass from the same noise under the edited prompt: at each step the UNet input
//!    `x_in` (the CFG batch) takes one SGD step `x_in −= amount · ∇ loss`, the loss being the L2
//!    distance of its cross-attention maps from the references
//!    ([`crate::models::unet_grad`]); the UNet is evaluated again at the new `x_in` and the
//!    scheduler steps from `x_in`'s first (uncond) half, as diffusers does.
//!
//! Differences from diffusers, both where it misbehaves: without guidance (≤ 1) diffusers' one
//! batch gets no edit direction (`[1:2]` is empty); here it does. With a sigma sampler diffusers
//! steps from the *scaled* `x_in` (its `scale_model_input` is not undone); here it is undone.
//! With DDIM (diffusers' example) neither applies.

use super::pix2pix_zero_invert::InvertOptions;
use super::{GenerateOptions, Image, StableDiffusion};
use crate::gpu::Context;
use crate::rng::TorchRng;
use crate::schedulers;
use crate::{Error, Result, Tensor};

/// pix2pix-zero's edit: from the concept of the source sentences to that of the target ones.
#[derive(Clone, Debug)]
pub struct Pix2PixZeroOptions {
    /// Sentences with the concept to edit away, e.g. "a cat", "a photo of a cat" (more
    /// sentences give a cleaner direction; diffusers' example uses hundreds).
    pub source: Vec<String>,
    /// The same sentences with the new concept ("a dog", "a photo of a dog").
    pub target: Vec<String>,
    /// The SGD learning rate of the cross-attention guidance (`cross_attention_guidance_amount`,
    /// 0.1); 0 switches it off (the edited prompt alone).
    pub guidance_amount: f32,
    /// The start latents `[1, 4, H/8, W/8]` (an inverted image's, to edit a real image);
    /// `None`: the seed's noise (diffusers' `latents`).
    pub latents: Option<Vec<f32>>,
}

impl Default for Pix2PixZeroOptions {
    fn default() -> Self {
        Pix2PixZeroOptions { source: Vec::new(), target: Vec::new(), guidance_amount: 0.1, latents: None }
    }
}

fn check(sd: &StableDiffusion, o: &GenerateOptions, p: &Pix2PixZeroOptions) -> Result<()> {
    super::check_size(o.width, o.height)?;
    if sd.is_sdxl() {
        return Err(Error::Unsupported(format!("pix2pix-zero supports SD 1.x/2.x models (diffusers' pipeline has no SDXL variant); {} is SDXL", sd.name)));
    }
    if sd.unet.in_channels() != sd.vae.config.latent_channels {
        return Err(Error::Unsupported(format!("pix2pix-zero needs a text-to-image UNet; {} has {} input channels", sd.name, sd.unet.in_channels())));
    }
    let other = [
        (o.mask.is_some(), "a mask (inpainting)"),
        (o.control.is_some(), "ControlNet"),
        (o.hires.is_some(), "the hires fix"),
        (o.gligen.is_some(), "GLIGEN boxes"),
        (o.instruct.is_some(), "InstructPix2Pix"),
        (o.sag_scale != 0.0, "Self-Attention Guidance"),
    ];
    if let Some((_, what)) = other.iter().find(|(on, _)| *on) {
        return Err(Error::Unsupported(format!("pix2pix-zero does not combine with {what}")));
    }
    for (what, flag, s) in [("source", "--edit-from", &p.source), ("target", "--edit-to", &p.target)] {
        if s.is_empty() || s.iter().any(|t| t.trim().is_empty()) {
            return Err(Error::Unsupported(format!("pix2pix-zero: give at least one non-empty {what} sentence ({flag})")));
        }
    }
    if !(p.guidance_amount.is_finite() && p.guidance_amount >= 0.0) {
        return Err(Error::Unsupported(format!("pix2pix-zero cross-attention guidance amount {} must be 0 or more", p.guidance_amount)));
    }
    if o.steps == 0 {
        return Err(Error::Unsupported("pix2pix-zero: steps must be at least 1".into()));
    }
    if o.init_image.is_some() && o.sampler != schedulers::SamplerKind::Ddim {
        return Err(Error::Unsupported("pix2pix-zero edits an image by DDIM inversion: use the ddim sampler (--sampler ddim)".into()));
    }
    Ok(())
}

impl StableDiffusion {
    /// diffusers' `get_embeds`: the mean over `sentences` of the text encoder's output for each
    /// (one 77-token chunk; the final layer norm, no CLIP skip), `[77 · D]` on the host.
    pub async fn concept_embedding_async(&self, ctx: &Context, sentences: &[String]) -> Result<Vec<f32>> {
        let mut sum: Vec<f32> = Vec::new();
        for s in sentences {
            let o = GenerateOptions { prompt: s.clone(), ..Default::default() };
            let text = self.encode_prompt(ctx, &o, false).await?.text;
            let v = text.to_f32(ctx).await?;
            if text.shape()[0] != 1 || text.shape()[1] != 77 {
                return Err(Error::Unsupported(format!("pix2pix-zero sentence '{s}' must fit one 75-token chunk, without AND")));
            }
            if sum.is_empty() {
                sum = v;
            } else {
                sum.iter_mut().zip(&v).for_each(|(a, b)| *a += b);
            }
        }
        let n = sentences.len().max(1) as f32;
        Ok(sum.into_iter().map(|v| v / n).collect())
    }

    /// `target − source` concept embeddings, `[77 · D]` (diffusers' `construct_direction`).
    pub async fn edit_direction_async(&self, ctx: &Context, p: &Pix2PixZeroOptions) -> Result<Vec<f32>> {
        let s = self.concept_embedding_async(ctx, &p.source).await?;
        let t = self.concept_embedding_async(ctx, &p.target).await?;
        Ok(t.iter().zip(&s).map(|(t, s)| t - s).collect())
    }

    /// pix2pix-zero from a prompt: `o`'s prompt, negative prompt, seed, size, steps, guidance and
    /// sampler (DDIM is diffusers' example); `progress(step, total)` counts both passes. With
    /// `o.init_image` (and no `p.latents`) the image is edited: first inverted under the prompt
    /// as its caption ([`Self::pix2pix_zero_invert_async`], diffusers' `invert` defaults,
    /// `o.steps` DDIM steps, unguided), then edited from those latents (DDIM only).
    pub async fn pix2pix_zero_async(&self, ctx: &Context, o: &GenerateOptions, p: &Pix2PixZeroOptions, progress: impl FnMut(usize, usize)) -> Result<Image> {
        let x = self.pix2pix_zero_latents_async(ctx, o, p, progress).await?;
        let shape = [1, self.vae.config.latent_channels, o.height / 8, o.width / 8];
        self.decode_checked(ctx, &x, &shape, o.width, o.height).await
    }

    /// [`Self::pix2pix_zero_async`]'s final latents `[1, 4, H/8, W/8]`, before the VAE decode.
    pub async fn pix2pix_zero_latents_async(&self, ctx: &Context, o: &GenerateOptions, p: &Pix2PixZeroOptions, mut progress: impl FnMut(usize, usize)) -> Result<Vec<f32>> {
        check(self, o, p)?;
        let guided = super::uses_cfg(o.guidance);
        let text = self.encode_prompt(ctx, o, guided).await?.text;
        let b = 1 + guided as usize;
        if text.shape()[0] != b {
            return Err(Error::Unsupported("pix2pix-zero prompts cannot use AND (Composable Diffusion)".into()));
        }
        let direction = self.edit_direction_async(ctx, p).await?;
        let mut rows = text.to_f32(ctx).await?;
        let per = rows.len() / b;
        if direction.len() != per {
            return Err(Error::Unsupported("pix2pix-zero: the prompt must fit one 75-token chunk (the edit direction is 77 tokens)".into()));
        }
        let text = Tensor::from_f32(ctx, &rows, text.shape(), self.unet.dtype)?;
        // the cond entry (the last) moves along the direction
        rows[(b - 1) * per..].iter_mut().zip(&direction).for_each(|(v, d)| *v += d);
        let text_edit = Tensor::from_f32(ctx, &rows, text.shape(), self.unet.dtype)?;

        let shape = [1, self.vae.config.latent_channels, o.height / 8, o.width / 8];
        let batch = [b, shape[1], shape[2], shape[3]];
        let mut sched = schedulers::build(o.sampler, o.schedule, &self.scheduler_config, o.steps)?;
        let mut rng = TorchRng::new(o.seed);
        let n = shape.iter().product::<usize>();
        let x_t = match (&p.latents, &o.init_image) {
            (Some(l), _) if l.len() == n => l.clone(),
            (Some(l), _) => return Err(Error::Unsupported(format!("pix2pix-zero: {} start latents for a {}x{} image ({n} needed)", l.len(), o.width, o.height))),
            // a real image: its inversion under the prompt as caption (diffusers' `invert`)
            (None, Some(image)) => {
                let inv = InvertOptions { prompt: o.prompt.clone(), steps: o.steps, seed: o.seed, ..Default::default() };
                self.pix2pix_zero_invert_async(ctx, image, &inv).await?.to_f32(ctx).await?
            }
            (None, None) => super::img2img::prepare(self, ctx, o, sched.as_ref(), &mut rng).await?.latents,
        };
        let evals = sched.timesteps().len();
        let guide = |out: &[f32]| if b == 2 { schedulers::cfg_combine(&out[..n], &out[n..], o.guidance) } else { out.to_vec() };

        super::phase(ctx, "unet");
        // Pass 1: the reference maps of every evaluation (on the host, as diffusers keeps them).
        let mut references: Vec<Vec<(Vec<f32>, Vec<usize>)>> = Vec::with_capacity(evals);
        let mut x = x_t.clone();
        for i in 0..evals {
            let xin = sched.scale_model_input(&x, i);
            let sample = Tensor::from_f32(ctx, &xin.repeat(b), &batch, self.unet.dtype)?;
            let run = self.unet.forward_cross_maps(ctx, &sample, sched.timesteps()[i], &text, None)?;
            let mut maps = Vec::with_capacity(run.maps.len());
            for m in &run.maps {
                maps.push((m.to_f32(ctx).await?, m.shape().to_vec()));
            }
            references.push(maps);
            x = sched.step(&guide(&run.sample.to_f32(ctx).await?), i, &x, &mut rng);
            progress(i + 1, 2 * evals);
        }

        // Pass 2: the edit, guided towards the reference maps.
        sched.reset();
        let mut x = x_t;
        for (i, maps) in references.into_iter().enumerate() {
            let t = sched.timesteps()[i];
            let mut x_in = sched.scale_model_input(&x, i).repeat(b);
            if p.guidance_amount > 0.0 {
                let sample = Tensor::from_f32(ctx, &x_in, &batch, self.unet.dtype)?;
                let reference = maps.iter().map(|(v, s)| Tensor::from_f32(ctx, v, s, self.unet.dtype)).collect::<Result<Vec<_>>>()?;
                let grad = self.unet.cross_attention_loss_grad(ctx, &sample, t, &text_edit, None, &reference)?.to_f32(ctx).await?;
                x_in.iter_mut().zip(&grad).for_each(|(v, g)| *v -= p.guidance_amount * g);
            }
            let sample = Tensor::from_f32(ctx, &x_in, &batch, self.unet.dtype)?;
            let out = self.unet.forward_full(ctx, &sample, &[t], &text_edit, None, None, None)?.to_f32(ctx).await?;
            // the latents are x_in's first half, unscaled (the identity for DDIM)
            let unscale = 1.0 / sched.scale_model_input(&[1.0], i)[0];
            let latents: Vec<f32> = x_in[..n].iter().map(|v| v * unscale).collect();
            x = sched.step(&guide(&out), i, &latents, &mut rng);
            progress(evals + i + 1, 2 * evals);
        }
        Ok(x)
    }

    /// [`StableDiffusion::pix2pix_zero_async`], blocking (native).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn pix2pix_zero(&self, ctx: &Context, o: &GenerateOptions, p: &Pix2PixZeroOptions, progress: impl FnMut(usize, usize)) -> Result<Image> {
        pollster::block_on(self.pix2pix_zero_async(ctx, o, p, progress))
    }

    /// [`StableDiffusion::pix2pix_zero_latents_async`], blocking (native).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn pix2pix_zero_latents(&self, ctx: &Context, o: &GenerateOptions, p: &Pix2PixZeroOptions) -> Result<Vec<f32>> {
        pollster::block_on(self.pix2pix_zero_latents_async(ctx, o, p, |_, _| {}))
    }
}

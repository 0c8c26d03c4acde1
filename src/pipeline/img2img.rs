//! img2img and inpainting start: the latents (and, for inpainting, the per-step extras) that the
//! sampler loop begins from, as diffusers' `StableDiffusionImg2ImgPipeline` /
//! `StableDiffusionInpaintPipeline` prepare them for the same seed.
//!
//! Generator order (one torch-compatible generator, as diffusers with `generator=`):
//! img2img: VAE posterior sample of the image, then the noise. Inpainting: image posterior
//! sample (only for 4-channel UNets or strength < 1), noise, then the masked image's posterior
//! sample (drawn even for 4-channel UNets, which never use those latents); the sampler's own
//! noise (Euler a, ...) comes after.

use super::inpaint::{Inpaint, MaskLatents};
use super::{Autoencoder, GenerateOptions, Image, StableDiffusion};
use crate::gpu::Context;
use crate::rng::TorchRng;
use crate::schedulers::{self, Scheduler};
use crate::{Error, Result, Tensor};

/// Where the sampler loop starts.
pub(crate) struct Start {
    /// First model evaluation (index into `timesteps()`).
    pub begin: usize,
    pub latents: Vec<f32>,
    pub inpaint: Option<Inpaint>,
}

/// Rejects bad img2img/inpainting input before any model runs.
pub(crate) fn check(sd: &StableDiffusion, o: &GenerateOptions) -> Result<()> {
    let lc = sd.vae.config.latent_channels;
    let unet_in = sd.unet.in_channels();
    let inpaint_unet = unet_in == 2 * lc + 1;
    if super::pix2pix::is_pix2pix_unet(sd) {
        return Err(super::pix2pix::needs_image(sd));
    }
    if unet_in != lc && !inpaint_unet {
        return Err(Error::Unsupported(format!(
            "UNet with {unet_in} input channels (expected {lc}, or {} for an inpainting UNet)",
            2 * lc + 1
        )));
    }
    if inpaint_unet && o.mask.is_none() {
        return Err(Error::Unsupported(format!(
            "this is an inpainting model (UNet with {unet_in} input channels): give an init image and a mask (--init-image FILE --mask FILE)"
        )));
    }
    if o.mask.is_some() && o.init_image.is_none() {
        return Err(Error::Unsupported("a mask needs an init image to inpaint (--init-image FILE)".into()));
    }
    let Some(img) = &o.init_image else { return Ok(()) };
    if !(o.strength > 0.0 && o.strength <= 1.0) {
        return Err(Error::Unsupported(format!("strength {} must be in (0, 1] (1 = ignore the init image's content)", o.strength)));
    }
    check_image("init image", img, o)?;
    if let Some(m) = &o.mask {
        check_image("mask", m, o)?;
    }
    if schedulers::begin_index(o.steps, o.strength, 1).is_none() {
        return Err(Error::Unsupported(format!(
            "strength {} with {} steps runs no step (int(steps × strength) = 0); raise the strength to at least {} or the steps",
            o.strength,
            o.steps,
            1.0 / o.steps as f32
        )));
    }
    Ok(())
}

fn check_image(what: &str, img: &Image, o: &GenerateOptions) -> Result<()> {
    if img.rgb.len() != img.width * img.height * 3 {
        return Err(Error::Unsupported(format!(
            "{what}: {} bytes for {}x{} RGB (expected {})",
            img.rgb.len(),
            img.width,
            img.height,
            img.width * img.height * 3
        )));
    }
    if (img.width, img.height) != (o.width, o.height) {
        return Err(Error::Unsupported(format!(
            "{what} is {}x{} but the output is {}x{}: resize the {what} to {}x{} or set the size to {}x{}",
            img.width, img.height, o.width, o.height, o.width, o.height, img.width, img.height
        )));
    }
    Ok(())
}

/// `VaeImageProcessor.preprocess` of an image already at the output size: `2·(v/255) − 1`,
/// `[1, 3, H, W]`.
pub(crate) fn image_to_tensor_data(img: &Image) -> Vec<f32> {
    let hw = img.width * img.height;
    let mut out = vec![0f32; 3 * hw];
    for p in 0..hw {
        for c in 0..3 {
            out[c * hw + p] = 2.0f32 * (img.rgb[p * 3 + c] as f32 / 255.0f32) - 1.0f32;
        }
    }
    out
}

/// `scaling_factor · latent_dist.sample(generator)`: one `randn` for the posterior sample.
pub(crate) async fn encode_sample(
    sd: &StableDiffusion,
    ctx: &Context,
    pixels: &[f32],
    o: &GenerateOptions,
    rng: &mut TorchRng,
) -> Result<Vec<f32>> {
    if let (Autoencoder::Taesd, Some(taesd)) = (o.encoder, &sd.taesd) {
        // AutoencoderTiny's output has `latents`, not a distribution: diffusers'
        // `retrieve_latents` takes them as they are (no generator draw), already in the UNet's
        // scale (TAESD's scaling_factor is 1).
        super::phase(ctx, "taesd encode");
        let img = Tensor::from_f32(ctx, pixels, &[1, 3, o.height, o.width], taesd.dtype)?;
        return taesd.encode(ctx, &img)?.to_f32(ctx).await;
    }
    super::phase(ctx, "vae encode");
    let img = Tensor::from_f32(ctx, pixels, &[1, 3, o.height, o.width], sd.vae.dtype)?;
    let vae = sd.encoder_vae(ctx)?;
    let (mean, _logvar, std) = vae.encode_async(ctx, &img, None).await?;
    drop((img, _logvar));
    let (mean, std) = (mean.to_f32(ctx).await?, std.to_f32(ctx).await?);
    let eps = rng.randn(mean.len());
    let k = sd.vae.config.scaling_factor;
    Ok(mean.iter().zip(&std).zip(&eps).map(|((&m, &s), &e)| k * (m + s * e)).collect())
}

/// img2img from latents (the hires fix's latent upscalers; diffusers' img2img given a 4-channel
/// tensor as `image`): no VAE encode and so no posterior draw, the noise is the generator's first.
/// With `denoising_start` (a refiner continuing a base's latents) the latents are taken as they
/// are, from that point of the schedule, with no noise (diffusers' `add_noise=False`).
pub(crate) fn from_latents(latents: &[f32], o: &GenerateOptions, sched: &dyn Scheduler, cfg: &schedulers::SchedulerConfig, rng: &mut TorchRng) -> Result<Start> {
    if let Some(f) = o.denoising_start {
        return Ok(Start { begin: super::refiner::start_index(sched, cfg, f)?, latents: latents.to_vec(), inpaint: None });
    }
    let begin = schedulers::begin_index(sched.num_inference_steps(), o.strength, sched.order())
        .ok_or_else(|| Error::Unsupported(format!("strength {} leaves no step", o.strength)))?;
    let noise = rng.randn(latents.len());
    Ok(Start { begin, latents: sched.add_noise(latents, &noise, begin)?, inpaint: None })
}

/// The starting latents for txt2img (`randn · init_noise_sigma`), img2img or inpainting.
pub(crate) async fn prepare(
    sd: &StableDiffusion,
    ctx: &Context,
    o: &GenerateOptions,
    sched: &dyn Scheduler,
    rng: &mut TorchRng,
) -> Result<Start> {
    let n = sd.vae.config.latent_channels * (o.height / 8) * (o.width / 8);
    let sigma0 = sched.init_noise_sigma();
    let Some(init) = &o.init_image else {
        let latents = rng.randn(n).into_iter().map(|v| v * sigma0).collect();
        return Ok(Start { begin: 0, latents, inpaint: None });
    };
    let begin = schedulers::begin_index(sched.num_inference_steps(), o.strength, sched.order())
        .ok_or_else(|| Error::Unsupported(format!("strength {} leaves no step", o.strength)))?;
    let pixels = image_to_tensor_data(init);
    let Some(mask) = &o.mask else {
        let image_latents = encode_sample(sd, ctx, &pixels, o, rng).await?;
        let noise = rng.randn(n);
        let latents = sched.add_noise(&image_latents, &noise, begin)?;
        return Ok(Start { begin, latents, inpaint: None });
    };
    let ml = MaskLatents::new(mask, o.mask_blur, &pixels);
    let nine = sd.unet.in_channels() != sd.vae.config.latent_channels;
    let strength_max = o.strength == 1.0;
    let image_latents =
        if !nine || !strength_max { Some(encode_sample(sd, ctx, &pixels, o, rng).await?) } else { None };
    let noise = rng.randn(n);
    let latents = match &image_latents {
        Some(il) if !strength_max => sched.add_noise(il, &noise, begin)?,
        _ => noise.iter().map(|v| v * sigma0).collect(),
    };
    let masked_image_latents = if nine {
        Some(encode_sample(sd, ctx, &ml.masked_image, o, rng).await?)
    } else {
        // diffusers encodes the masked image for 4-channel UNets too and drops it: draw the
        // posterior sample's randn to keep the generator in step, skip the encode (TAESD's
        // encode draws nothing).
        if o.encoder == Autoencoder::Full {
            rng.randn(n);
        }
        None
    };
    let inpaint = Inpaint::new(ml.latent_mask, masked_image_latents, if nine { None } else { image_latents }, noise);
    Ok(Start { begin, latents, inpaint: Some(inpaint) })
}

//! InstructPix2Pix: edit an image by an instruction, as diffusers'
//! `StableDiffusionInstructPix2PixPipeline` does for the same seed.
//!
//! The UNet takes 8 channels: the scaled noisy latents (`scale_model_input` runs before the
//! concatenation) followed by the input image's latents, which are the VAE posterior's mode
//! *without* the scaling factor (`prepare_image_latents`; the mode draws nothing from the
//! generator, so the noise is the generator's first draw, as txt2img's). Guidance runs three
//! batches, in diffusers' order: (prompt, image), (negative, image), (negative, zeros), combined
//! as `uncond + g·(text − image) + ig·(image − uncond)`. Without guidance (g ≤ 1) one batch of
//! (prompt, image) runs.

use super::{Autoencoder, Conditioning, GenerateOptions, Image, StableDiffusion};
use crate::gpu::Context;
use crate::{Error, Result, Tensor};

/// What an edit needs besides the prompt (the instruction) and the sampler settings.
#[derive(Clone, Debug)]
pub struct InstructOptions {
    /// The image to edit; the output has its size (`GenerateOptions::width`/`height` must match).
    pub image: Image,
    /// diffusers' `image_guidance_scale` (≥ 1): how closely the result keeps to the image.
    pub image_guidance: f32,
}

impl InstructOptions {
    /// diffusers' default image guidance, 1.5.
    pub fn new(image: Image) -> InstructOptions {
        InstructOptions { image, image_guidance: 1.5 }
    }
}

/// An InstructPix2Pix UNet: the latents plus the image latents (8 for SD 1.x).
pub fn is_pix2pix_unet(sd: &StableDiffusion) -> bool {
    sd.unet.in_channels() == 2 * sd.vae.config.latent_channels
}

/// The error for an InstructPix2Pix model asked to generate without an image.
pub(crate) fn needs_image(sd: &StableDiffusion) -> Error {
    Error::Unsupported(format!(
        "{} is an InstructPix2Pix model (UNet with {} input channels: latents + image latents): it edits an image, `pigment edit IN.png \"make it snowy\" --model MODEL` (library: GenerateOptions::instruct)",
        sd.name,
        sd.unet.in_channels()
    ))
}

/// Rejects what an edit cannot run, before any model runs.
pub(crate) fn check(sd: &StableDiffusion, o: &GenerateOptions, ip: &InstructOptions) -> Result<()> {
    if !is_pix2pix_unet(sd) {
        return Err(Error::Unsupported(format!(
            "{} is not an InstructPix2Pix model: its UNet has {} input channels, InstructPix2Pix's has {} (latents + image latents), e.g. timbrooks/instruct-pix2pix",
            sd.name,
            sd.unet.in_channels(),
            2 * sd.vae.config.latent_channels
        )));
    }
    if sd.is_sdxl() {
        return Err(Error::Unsupported("InstructPix2Pix for SDXL is not supported (SD 1.x/2.x InstructPix2Pix models are)".into()));
    }
    let other = [
        (o.init_image.is_some(), "an init image (the edited image is the instruct image)"),
        (o.mask.is_some(), "a mask"),
        (o.control.is_some(), "a ControlNet"),
        (o.hires.is_some(), "the hires fix"),
        (o.sag_scale != 0.0, "Self-Attention Guidance (--sag-scale)"),
        (o.gligen.is_some(), "GLIGEN boxes"),
        (o.encoder == Autoencoder::Taesd, "the TAESD encoder (its latents are scaled, InstructPix2Pix's are not)"),
    ];
    if let Some((_, what)) = other.iter().find(|(on, _)| *on) {
        return Err(Error::Unsupported(format!("InstructPix2Pix editing does not combine with {what}")));
    }
    if !(ip.image_guidance.is_finite() && ip.image_guidance >= 1.0) {
        return Err(Error::Unsupported(format!(
            "image guidance {} must be at least 1 (diffusers turns all guidance off below 1; 1.5 is its default)",
            ip.image_guidance
        )));
    }
    let img = &ip.image;
    if img.rgb.len() != img.width * img.height * 3 {
        return Err(Error::Unsupported(format!("image to edit: {} bytes for {}x{} RGB (expected {})", img.rgb.len(), img.width, img.height, img.width * img.height * 3)));
    }
    if (img.width, img.height) != (o.width, o.height) {
        return Err(Error::Unsupported(format!(
            "the image to edit is {}x{} but the output is {}x{}: an edit keeps the image's size, set width/height to it",
            img.width, img.height, o.width, o.height
        )));
    }
    Ok(())
}

/// UNet batches per evaluation: 3 with guidance, else 1.
pub(crate) fn batch_n(guided: bool) -> usize {
    if guided { 3 } else { 1 }
}

/// The image latents and guidance scales of one edit.
pub(crate) struct ImageCond {
    latents: Vec<f32>,
    guided: bool,
    image_guidance: f32,
}

impl ImageCond {
    /// `vae.encode(image).latent_dist.mode()`: the posterior mean, unscaled.
    pub async fn prepare(sd: &StableDiffusion, ctx: &Context, o: &GenerateOptions, ip: &InstructOptions, guided: bool) -> Result<ImageCond> {
        super::phase(ctx, "vae encode");
        let pixels = super::img2img::image_to_tensor_data(&ip.image);
        let img = Tensor::from_f32(ctx, &pixels, &[1, 3, o.height, o.width], sd.vae.dtype)?;
        let vae = sd.encoder_vae(ctx)?;
        let (mean, _logvar, _std) = vae.encode_async(ctx, &img, None).await?;
        Ok(ImageCond { latents: mean.to_f32(ctx).await?, guided, image_guidance: ip.image_guidance })
    }

    /// The UNet input from the scaled latents of one batch element: `[xin, image]` ×2 and
    /// `[xin, 0]` with guidance, else `[xin, image]` (channel-major, so appends).
    pub fn batch(&self, xin: &[f32]) -> Vec<f32> {
        let mut b = Vec::with_capacity(batch_n(self.guided) * (xin.len() + self.latents.len()));
        for k in 0..batch_n(self.guided) {
            b.extend_from_slice(xin);
            if k < 2 {
                b.extend_from_slice(&self.latents);
            } else {
                b.resize(b.len() + self.latents.len(), 0.0);
            }
        }
        b
    }

    /// diffusers' combination of the (text, image), (image), (uncond) predictions, `n` each.
    pub fn combine(&self, out: Vec<f32>, n: usize, guidance: f32) -> Vec<f32> {
        if !self.guided {
            return out;
        }
        let (text, rest) = out.split_at(n);
        let (image, uncond) = rest.split_at(n);
        let ig = self.image_guidance;
        (0..n).map(|k| uncond[k] + guidance * (text[k] - image[k]) + ig * (image[k] - uncond[k])).collect()
    }
}

/// `[negative, prompt]` text conditioning reordered to diffusers' `[prompt, negative, negative]`
/// (unchanged without guidance: `[prompt]`).
pub(crate) async fn text(ctx: &Context, c: Conditioning, guided: bool) -> Result<Conditioning> {
    if !guided {
        return Ok(c);
    }
    let data = c.text.to_f32(ctx).await?;
    let (neg, prompt) = data.split_at(data.len() / 2);
    let mut shape = c.text.shape().to_vec();
    shape[0] = 3;
    let text = Tensor::from_f32(ctx, &[prompt, neg, neg].concat(), &shape, c.text.dtype())?;
    Ok(Conditioning { text, added: None })
}

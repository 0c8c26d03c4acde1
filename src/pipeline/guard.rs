//! The NaN and black-image guards at the end of a generation: the final latents (after the
//! UNet loop) and the decoded image are checked for NaN/inf on the GPU
//! ([`crate::ops::finite_check`], one small readback each). A non-finite f16 VAE decode is run
//! again with an f32 decoder (as diffusers' `force_upcast` does for SDXL's VAE), and an f16
//! sampling loop whose latents turn non-finite (checked on the host after every step, where they
//! already are) again with an f32 UNet, each with a warning; a non-finite f32 result is an error
//! naming the stage. A constant (e.g. all-black) image is returned with a warning.

use super::{phase, Image, StableDiffusion};
use crate::models::unet::UNet2DConditionModel;
use crate::models::vae::{image_to_u8, AutoencoderKL};
use crate::ops::finite_check::{finite_stats, FiniteStats};
use crate::{DType, Error, Result, Tensor};
use crate::gpu::Context;
use std::sync::Arc;

/// The finite values of the decoded image (in [-1, 1]) span less than one 8-bit level.
const CONSTANT_SPAN: f32 = 2.0 / 255.0;

fn non_finite(stage: &'static str, s: &FiniteStats, total: usize, hint: &str) -> Error {
    Error::NonFinite { stage, count: s.nonfinite, total: total as u64, hint: hint.to_string() }
}

impl StableDiffusion {
    /// The f32 decoder for re-running an f16 decode that overflowed; loaded from the base
    /// weights on first use and kept.
    fn f32_vae(&self, ctx: &Context) -> Result<Arc<AutoencoderKL>> {
        let mut slot = self.vae_f32.lock().unwrap();
        if let Some(v) = slot.as_ref() {
            return Ok(v.clone());
        }
        let mut v = AutoencoderKL::load_decoder(ctx, self.weights.vae()?, DType::F32)?;
        v.tiling = self.vae.tiling.clone();
        let v = Arc::new(v);
        *slot = Some(v.clone());
        Ok(v)
    }

    /// The f32 UNet (current LoRAs merged) for re-running a sampling loop whose f16 latents
    /// turned non-finite at `step`; loaded from the base weights on first use and kept until
    /// the LoRAs change. Warns, or fails naming the stage when it cannot be loaded.
    pub(super) fn f32_unet(&self, ctx: &Context, step: usize) -> Result<Arc<UNet2DConditionModel>> {
        let mut slot = self.unet_f32.lock().unwrap();
        let unet = match slot.as_ref() {
            Some(u) => u.clone(),
            None => {
                let u = self.unet_in(ctx, DType::F32).map_err(|e| {
                    Error::Unsupported(format!(
                        "the f16 UNet gave non-finite latents at step {step} and an f32 UNet could not be loaded ({e}); run with --no-f16 (PIGMENT_F16=0)"
                    ))
                })?;
                let u = Arc::new(u);
                *slot = Some(u.clone());
                u
            }
        };
        self.warn(format!("the f16 UNet gave non-finite latents at step {step}; sampled again in f32 (slower, more memory)"));
        Ok(unet)
    }

    /// Warnings from the generations since the last call (the f32 re-run of a VAE decode, a
    /// constant image), for the caller to show.
    pub fn take_warnings(&self) -> Vec<String> {
        std::mem::take(&mut *self.warnings.lock().unwrap())
    }

    fn warn(&self, w: String) {
        self.warnings.lock().unwrap().push(w);
    }

    /// The final decode of `x` (host latents) with both guards.
    pub(super) async fn decode_checked(&self, ctx: &Context, x: &[f32], latent_shape: &[usize; 4], width: usize, height: usize) -> Result<Image> {
        phase(ctx, "vae decode");
        let latents = Tensor::from_f32(ctx, x, latent_shape, DType::F32)?;
        let s = finite_stats(ctx, &latents).await?;
        if !s.all_finite() && !ctx.planning() {
            let hint = if self.unet.dtype == DType::F16 {
                "the UNet overflowed f16; run it in f32 with --no-f16 (PIGMENT_F16=0)"
            } else {
                "the UNet produced NaN in f32: check the checkpoint and LoRAs, or lower --cfg"
            };
            return Err(non_finite("UNet sampling loop", &s, x.len(), hint));
        }
        let mut img = self.decode_with(ctx, &self.vae, &latents).await?;
        let mut s = finite_stats(ctx, &img).await?;
        if !s.all_finite() && !ctx.planning() && self.vae.dtype == DType::F16 {
            self.warn(format!(
                "the f16 VAE decode gave {} non-finite values of {}; decoded again in f32 (slower, more memory)",
                s.nonfinite,
                img.numel()
            ));
            let v32 = self.f32_vae(ctx).map_err(|e| {
                Error::Unsupported(format!("the f16 VAE decode overflowed and an f32 decoder could not be loaded ({e}); run with --no-f16"))
            })?;
            img = self.decode_with(ctx, &v32, &latents).await?;
            s = finite_stats(ctx, &img).await?;
        }
        if !s.all_finite() && !ctx.planning() {
            return Err(non_finite("VAE decode", &s, img.numel(), "the VAE produced NaN in f32: check the VAE weights"));
        }
        let v = img.to_f32(ctx).await?;
        let rgb = image_to_u8(&v, img.dim(0), img.dim(1), img.dim(2), img.dim(3));
        if s.constant(CONSTANT_SPAN) && !ctx.planning() {
            let level = ((s.min / 2.0 + 0.5).clamp(0.0, 1.0) * 255.0).round();
            self.warn(format!(
                "the image is a single colour (every value {level:.0} of 255{}): the model produced no picture",
                if level == 0.0 { ", all black" } else { "" }
            ));
        }
        Ok(Image { width, height, rgb })
    }

    async fn decode_with(&self, ctx: &Context, vae: &AutoencoderKL, latents: &Tensor) -> Result<Tensor> {
        let converted;
        let latents = if vae.dtype != latents.dtype() {
            converted = Tensor::from_f32(ctx, &latents.to_f32(ctx).await?, latents.shape(), vae.dtype)?;
            &converted
        } else {
            latents
        };
        vae.latents_to_image_async(ctx, latents).await
    }
}

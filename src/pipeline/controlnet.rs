//! ControlNet in txt2img, img2img and inpainting, as diffusers' `StableDiffusionControlNetPipeline`
//! and, for SDXL, `StableDiffusionXLControlNetPipeline` (one ControlNet, `guess_mode` false): the
//! control image (at the output size, RGB8) to floats in [0, 1] (no normalisation to [-1, 1]),
//! repeated for the CFG batch [uncond, cond]; every step the ControlNet sees the UNet's latent
//! input, timestep and text (and SDXL's text_embeds / time_ids), and its residuals times the
//! conditioning scale go into the UNet's skip connections and mid block. Steps outside
//! `[guidance_start, guidance_end]` (fractions of the schedule, diffusers'
//! `control_guidance_start/end`) run the UNet alone.

use super::{GenerateOptions, Image, StableDiffusion};
use crate::gpu::Context;
use crate::models::controlnet::{ControlNetConfig, ControlNetModel, ControlNetOutput};
use crate::models::unet::AddedCond;
use crate::weights;
use crate::{Error, Result, Tensor};
use std::path::Path;

/// What [`GenerateOptions::control`] holds; needs a ControlNet loaded with
/// [`StableDiffusion::load_controlnet`].
#[derive(Clone, Debug)]
pub struct ControlOptions {
    /// The hint, RGB8 at exactly the generation's width × height (resize it first; the CLI does).
    pub image: Image,
    /// `controlnet_conditioning_scale` (A1111 "Weight"), default 1.
    pub scale: f32,
    /// `control_guidance_start` / `control_guidance_end`: the part of the schedule the
    /// ControlNet acts on, default 0 and 1.
    pub guidance_start: f32,
    pub guidance_end: f32,
}

impl ControlOptions {
    pub fn new(image: Image) -> ControlOptions {
        ControlOptions { image, scale: 1.0, guidance_start: 0.0, guidance_end: 1.0 }
    }
}

impl StableDiffusion {
    /// Load a ControlNet for this model ([`weights::open_controlnet`]: a diffusers folder or an
    /// A1111 `.safetensors`), in the UNet's dtype. Errors, naming both, when it was made for
    /// another architecture (context width, block widths, ...).
    pub fn load_controlnet(&mut self, ctx: &Context, path: &Path) -> Result<()> {
        let c = weights::open_controlnet(path)?;
        let config = ControlNetConfig::for_component(&c, Some(&self.unet.config))?;
        config.check_matches(&self.unet.config, &path.display().to_string())?;
        self.controlnet = Some(ControlNetModel::load_with(ctx, &c, config, self.unet.dtype)?);
        Ok(())
    }
}

/// The ControlNet and its prepared hint for one generation.
pub(super) struct Control<'a> {
    model: &'a ControlNetModel,
    opts: &'a ControlOptions,
    /// The hint through `controlnet_cond_embedding`, batch [uncond, cond].
    hint: Tensor,
}

/// `None` when the options ask for no control (a loaded ControlNet then sits idle).
/// `batch`: the UNet's (2 with classifier-free guidance, else 1).
pub(super) fn prepare<'a>(ctx: &Context, sd: &'a StableDiffusion, o: &'a GenerateOptions, batch: usize) -> Result<Option<Control<'a>>> {
    let Some(opts) = &o.control else { return Ok(None) };
    let Some(model) = &sd.controlnet else {
        return Err(Error::Unsupported("a control image was given but no ControlNet is loaded (StableDiffusion::load_controlnet, CLI --controlnet)".into()));
    };
    let img = &opts.image;
    if (img.width, img.height) != (o.width, o.height) {
        return Err(Error::Unsupported(format!(
            "the control image is {}x{} but the output is {}x{}; resize it to the output size",
            img.width, img.height, o.width, o.height
        )));
    }
    let (s, e) = (opts.guidance_start, opts.guidance_end);
    if !(0.0..=1.0).contains(&s) || !(0.0..=1.0).contains(&e) || s >= e {
        return Err(Error::Unsupported(format!("control guidance start {s} / end {e}: need 0 <= start < end <= 1")));
    }
    let cond = model.prepare_cond(ctx, &img.rgb, img.width, img.height, batch)?;
    let hint = model.cond_embedding(ctx, &cond)?;
    Ok(Some(Control { model, opts, hint }))
}

impl Control<'_> {
    /// The residuals for evaluation `i` of the `total` that run (img2img counts from its begin
    /// index, as diffusers' ControlNet img2img pipeline); `None` outside the guidance window,
    /// where diffusers multiplies them by 0.
    /// `added`: SDXL's text_embeds / time_ids, the UNet's.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn residuals(
        &self,
        ctx: &Context,
        sample: &Tensor,
        t: f32,
        text: &Tensor,
        added: Option<&AddedCond>,
        i: usize,
        total: usize,
    ) -> Result<Option<ControlNetOutput>> {
        let (i, n) = (i as f64, total as f64);
        let keep = !(i / n < self.opts.guidance_start as f64 || (i + 1.0) / n > self.opts.guidance_end as f64);
        if !keep || self.opts.scale == 0.0 {
            return Ok(None);
        }
        self.model.forward_embedded(ctx, sample, &[t], text, added, &self.hint, self.opts.scale).map(Some)
    }
}

/// A1111's ControlNet entry for the PNG `parameters` (appended after the base parameters).
pub fn a1111_parameters(c: &ControlOptions, model: &str, module: &str) -> String {
    format!(
        ", ControlNet 0: \"Module: {module}, Model: {model}, Weight: {}, Guidance Start: {}, Guidance End: {}\"",
        c.scale, c.guidance_start, c.guidance_end
    )
}

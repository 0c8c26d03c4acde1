//! txt2img: prompt → CLIP → sampler loop over the UNet with classifier-free guidance → VAE → RGB.
//!
//! Matches diffusers' StableDiffusionPipeline (and StableDiffusionXLPipeline for SDXL) for the
//! same seed: initial noise from the torch-compatible generator times the sampler's
//! `init_noise_sigma`, one batched UNet call per evaluation with the batch ordered [uncond,
//! cond], guidance `uncond + g (cond - uncond)`; at guidance <= 1 (Turbo models' 0) only the
//! cond batch runs, as diffusers' `do_classifier_free_guidance` is then false.

use crate::gpu::Context;
use crate::models::clip::ClipTextModel;
use crate::models::taesd::Taesd;
use crate::models::unet::{AddedCond, CrossContext, UNet2DConditionModel, UNetExtras};
use crate::models::vae::AutoencoderKL;
use crate::rng::TorchRng;
use crate::schedulers::{self, SamplerKind, SchedulerConfig, SigmaSchedule};
use crate::tokenizer::{ClipTokenizer, PadToken};
use crate::weights::{self, OpenOptions, TextEncoderKind, Weights};
use crate::{DType, Error, Result, Tensor};
use std::path::Path;

pub mod compose;
pub mod controlnet;
pub mod diffedit;
pub mod pix2pix_zero_invert;
pub mod gligen;
pub mod dit;
mod guard;
pub mod hires;
pub mod hypernetwork;
pub mod imagenet;
mod img2img;
pub mod inpaint;
mod limits;
pub use gligen::{GligenOptions, GroundingBox};
pub use limits::check_device_size;
pub mod pix2pix;
pub mod pix2pix_zero;
pub mod plan;
pub mod refiner;
mod sag;
pub mod sdxl;
pub use sdxl::SdxlParts;
pub mod upscale;
pub mod sd_upscale;
pub use plan::MemoryPlan;
pub use controlnet::ControlOptions;
pub use hires::{HiresOptions, HiresUpscaler};
pub use pix2pix::InstructOptions;

/// Everything a generation needs besides the model.
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    pub prompt: String,
    pub negative_prompt: String,
    /// SDXL: the prompts for text_encoder_2 (diffusers' `prompt_2` / `negative_prompt_2`;
    /// `None`: the same as the first). Refused for single-encoder models.
    pub prompt_2: Option<String>,
    pub negative_prompt_2: Option<String>,
    pub seed: u64,
    pub width: usize,
    pub height: usize,
    pub steps: usize,
    pub guidance: f32,
    pub sampler: SamplerKind,
    /// Sigma spacing (A1111's "Schedule type"); Karras/Exponential only where the sampler has them.
    pub schedule: SigmaSchedule,
    /// A1111 counting: 1 = last layer, 2 = penultimate (followed by the final layer norm).
    pub clip_skip: usize,
    /// img2img / inpainting source, `width`×`height` RGB; `None` = txt2img.
    pub init_image: Option<Image>,
    /// Inpainting mask, `width`×`height` RGB, white = repaint (grayscale ≥ 128 after the blur);
    /// needs `init_image`.
    pub mask: Option<Image>,
    /// How much of the schedule runs from the noised init image, in (0, 1] (A1111's
    /// "denoising strength"; 1 = start from pure noise).
    pub strength: f32,
    /// Gaussian blur radius applied to the mask before binarising (PIL's `GaussianBlur`).
    pub mask_blur: usize,
    /// ControlNet conditioning (needs [`StableDiffusion::load_controlnet`]).
    pub control: Option<ControlOptions>,
    /// SDXL micro-conditioning (diffusers' `original_size`, `crops_coords_top_left`,
    /// `target_size`), each `(height, width)` / `(top, left)` in pixels; `None` = the output
    /// size, crop (0, 0). Ignored by SD 1.x/2.x.
    pub original_size: Option<(usize, usize)>,
    pub crops_coords_top_left: (usize, usize),
    pub target_size: Option<(usize, usize)>,
    /// Hires fix: a second img2img pass at a larger size (txt2img only).
    pub hires: Option<HiresOptions>,
    /// Decoder of the final image; [`VaeDecoder::Taesd`] needs [`StableDiffusion::set_taesd`].
    pub decoder: VaeDecoder,
    /// Decoder of the previews (`generate_with_previews`).
    pub preview_decoder: VaeDecoder,
    /// Encoder of init and masked images (img2img, inpainting, the hires fix's pixel
    /// upscalers); [`Autoencoder::Taesd`] is a fast draft encode (diffusers' img2img with
    /// `vae=AutoencoderTiny`: no posterior sample, so no generator draw).
    pub encoder: Autoencoder,
    /// Self-Attention Guidance scale (diffusers' `sag_scale`; 0 = off, 0.75 is the reference's
    /// default); SD 1.x/2.x with an integer-timestep sampler.
    pub sag_scale: f32,
    /// GLIGEN: phrases placed in boxes (needs a GLIGEN checkpoint).
    pub gligen: Option<GligenOptions>,
    /// InstructPix2Pix: edit this image by the prompt (needs an 8-channel UNet; [`pix2pix`]).
    pub instruct: Option<InstructOptions>,
    /// SDXL refiner: the aesthetic scores of its time ids for the prompt and the negative
    /// (diffusers' `aesthetic_score` 6 / `negative_aesthetic_score` 2.5). Ignored by others.
    pub aesthetic_score: f32,
    pub negative_aesthetic_score: f32,
    /// diffusers' `denoising_end` / `denoising_start` ([`refiner`]): stop where a refiner takes
    /// over, or continue handed-over latents from there. Set by
    /// [`StableDiffusion::generate_refined`]; `None` = the whole schedule.
    pub denoising_end: Option<f32>,
    pub denoising_start: Option<f32>,
}

/// Which autoencoder turns latents into pixels or pixels into latents.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Autoencoder {
    /// The model's own VAE.
    #[default]
    Full,
    /// TAESD ([`StableDiffusion::set_taesd`]): a tiny approximation, ~100× cheaper.
    Taesd,
}

/// The decoder's name for [`Autoencoder`].
pub type VaeDecoder = Autoencoder;

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            prompt: String::new(),
            negative_prompt: String::new(),
            prompt_2: None,
            negative_prompt_2: None,
            seed: 0,
            width: 512,
            height: 512,
            steps: 20,
            guidance: 7.5,
            sampler: SamplerKind::Euler,
            schedule: SigmaSchedule::Normal,
            clip_skip: 1,
            init_image: None,
            mask: None,
            strength: 0.8,
            mask_blur: 0,
            control: None,
            original_size: None,
            crops_coords_top_left: (0, 0),
            target_size: None,
            hires: None,
            decoder: VaeDecoder::Full,
            preview_decoder: VaeDecoder::Full,
            encoder: Autoencoder::Full,
            sag_scale: 0.0,
            gligen: None,
            instruct: None,
            aesthetic_score: 6.0,
            negative_aesthetic_score: 2.5,
            denoising_end: None,
            denoising_start: None,
        }
    }
}

/// An RGB image, row-major, 3 bytes per pixel.
#[derive(Clone)]
pub struct Image {
    pub width: usize,
    pub height: usize,
    pub rgb: Vec<u8>,
}

impl std::fmt::Debug for Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Image({}x{}, {} bytes)", self.width, self.height, self.rgb.len())
    }
}

/// Width and height must be multiples of 8 (the VAE's factor); name the nearest valid sizes.
pub fn check_size(width: usize, height: usize) -> Result<()> {
    for (what, v) in [("width", width), ("height", height)] {
        if v == 0 || v % 8 != 0 {
            let down = (v / 8 * 8).max(8);
            return Err(Error::Unsupported(format!(
                "{what} {v} is not a multiple of 8; use {down} or {}",
                down + 8
            )));
        }
    }
    Ok(())
}

pub struct StableDiffusion {
    pub tokenizer: ClipTokenizer,
    pub clip: ClipTextModel,
    pub unet: UNet2DConditionModel,
    /// The decoder (and `post_quant_conv`); the encoder is loaded when img2img or inpainting
    /// first needs it ([`StableDiffusion::encoder_vae`]).
    pub vae: AutoencoderKL,
    /// `vae` with its encoder, once loaded (shares the decoder's tensors).
    pub(crate) vae_encoder: std::sync::Mutex<Option<std::sync::Arc<AutoencoderKL>>>,
    /// Set by [`StableDiffusion::load_controlnet`].
    pub controlnet: Option<crate::models::controlnet::ControlNetModel>,
    /// SDXL's second text encoder and tokenizer (`None` for SD 1.x/2.x and the refiner).
    pub sdxl: Option<SdxlParts>,
    /// Set for an SDXL refiner, whose `clip` / `tokenizer` are text_encoder_2 / tokenizer_2.
    pub refiner: Option<refiner::RefinerParts>,
    pub scheduler_config: SchedulerConfig,
    /// Shown in the PNG parameters (`Model: ...`).
    pub name: String,
    /// The base weights, kept to merge LoRAs from ([`StableDiffusion::set_loras`]).
    pub(crate) weights: Weights,
    pub(crate) loras: crate::lora::Applied,
    /// The f32 decoder an overflowing f16 decode is re-run with (see `guard`), once needed.
    pub(crate) vae_f32: std::sync::Mutex<Option<std::sync::Arc<AutoencoderKL>>>,
    /// The f32 UNet (LoRAs merged) an overflowing f16 sampling loop is re-run with, once needed.
    pub(crate) unet_f32: std::sync::Mutex<Option<std::sync::Arc<UNet2DConditionModel>>>,
    /// Warnings for the caller ([`StableDiffusion::take_warnings`]).
    pub(crate) warnings: std::sync::Mutex<Vec<String>>,
    /// TAESD, for [`VaeDecoder::Taesd`] previews and final decodes ([`StableDiffusion::set_taesd`]).
    pub taesd: Option<std::sync::Arc<Taesd>>,
    /// Hypernetworks and multipliers ([`StableDiffusion::set_hypernetworks`]).
    pub hypernetworks: Vec<(std::sync::Arc<crate::models::hypernetwork::Hypernetwork>, f32)>,
}

impl StableDiffusion {
    /// A diffusers folder or a single-file `.safetensors` checkpoint.
    pub fn load(ctx: &Context, path: &Path, want_f16: bool) -> Result<StableDiffusion> {
        Self::load_with_config(ctx, path, None, want_f16)
    }

    /// As [`StableDiffusion::load`]; `config_dir` is a diffusers folder whose configs (and
    /// tokenizer and scheduler) describe a single-file checkpoint, as diffusers'
    /// `from_single_file(path, config=folder)`.
    /// A path `synthetic:sd15` or `synthetic:sd21v` is a full-size model with generated weights
    /// ([`weights::synthetic`]).
    pub fn load_with_config(ctx: &Context, path: &Path, config_dir: Option<&Path>, want_f16: bool) -> Result<StableDiffusion> {
        if let Some(model) = path.to_str().and_then(weights::synthetic::SyntheticModel::from_spec) {
            return Self::load_synthetic(ctx, model?, want_f16);
        }
        let weights = Weights::open_with(path, &OpenOptions { config_dir: config_dir.map(Path::to_path_buf) })?;
        let dtype = weights::storage_dtype(ctx, want_f16);
        // The SDXL refiner's only text encoder is text_encoder_2 ([`refiner`]).
        let is_refiner = refiner::is_refiner(&weights);
        let (te, tok) = match weights.text_encoder_2().filter(|_| is_refiner) {
            Some(te2) => (te2, "tokenizer_2"),
            None => (weights.text_encoder()?, "tokenizer"),
        };
        // Where tokenizer/ and scheduler/ live: the model folder, or the config folder.
        let folder = if path.is_dir() { Some(path) } else { config_dir };
        let tokenizer = if let Some(dir) = folder.filter(|d| d.join(tok).is_dir()) {
            ClipTokenizer::from_dir(dir.join(tok)).map_err(|e| Error::Unsupported(format!("{tok}: {e}")))?
        } else {
            // Single files carry no tokenizer: the embedded CLIP BPE, padded as the family does.
            ClipTokenizer::embedded(match te.text_kind {
                Some(TextEncoderKind::OpenClip) => PadToken::Exclamation,
                _ if is_refiner => PadToken::Exclamation,
                _ => PadToken::EndOfText,
            })
        };
        let scheduler_file = folder.map(|d| d.join("scheduler").join("scheduler_config.json"));
        let scheduler_config = match scheduler_file.and_then(|f| std::fs::read_to_string(f).ok()) {
            Some(text) => SchedulerConfig::from_json(&text)?,
            None => SchedulerConfig::stable_diffusion_default(!is_refiner && te.text_kind == Some(TextEncoderKind::OpenClip)),
        };
        let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let mut sd = Self::from_weights(ctx, weights, tokenizer, scheduler_config, name, dtype)?;
        if is_refiner {
            sd.refiner = Some(refiner::RefinerParts::load(&sd, folder)?);
        } else {
            sd.sdxl = SdxlParts::load(ctx, &sd.weights, folder, dtype)?;
        }
        Ok(sd)
    }

    /// A synthetic full-size model: generated weights, the embedded CLIP tokenizer, the
    /// model's scheduler config.
    pub fn load_synthetic(ctx: &Context, model: weights::synthetic::SyntheticModel, want_f16: bool) -> Result<StableDiffusion> {
        use weights::synthetic::SyntheticModel;
        let pad = if model == SyntheticModel::Sd21v { PadToken::Exclamation } else { PadToken::EndOfText };
        let scheduler_config = SchedulerConfig::from_json(model.scheduler_json())?;
        let name = format!("synthetic-{}", model.name());
        let dtype = weights::storage_dtype(ctx, want_f16);
        let mut sd = Self::from_weights(ctx, model.weights()?, ClipTokenizer::embedded(pad), scheduler_config, name, dtype)?;
        // SDXL: tokenizer_2 is the embedded BPE padded with "!" (no folder to read it from).
        sd.sdxl = SdxlParts::load(ctx, &sd.weights, None, dtype)?;
        Ok(sd)
    }

    fn from_weights(ctx: &Context, weights: Weights, tokenizer: ClipTokenizer, scheduler_config: SchedulerConfig, name: String, dtype: DType) -> Result<StableDiffusion> {
        let te = match weights.text_encoder_2().filter(|_| refiner::is_refiner(&weights)) {
            Some(te2) => te2,
            None => weights.text_encoder()?,
        };
        Ok(StableDiffusion {
            tokenizer,
            clip: ClipTextModel::load(ctx, te, dtype)?,
            unet: UNet2DConditionModel::load(ctx, weights.unet()?, dtype)?,
            // txt2img needs only the decoder: the encoder waits for img2img (~70 MB for SD 1.5)
            vae: AutoencoderKL::load_decoder(ctx, weights.vae()?, dtype)?,
            vae_encoder: Default::default(),
            controlnet: None,
            sdxl: None,
            refiner: None,
            scheduler_config,
            name,
            weights,
            loras: Default::default(),
            vae_f32: Default::default(),
            unet_f32: Default::default(),
            warnings: Default::default(),
            taesd: None,
            hypernetworks: Vec::new(),
        })
    }

    /// Keep the text encoders' layers on the host, uploading each as it runs (CLI `--medvram`;
    /// see [`ClipTextModel::stream_layers`]): the GPU then holds the UNet and VAE only, which
    /// brings SDXL at 1024x1024 in f16 under 7 GB.
    pub fn stream_text_encoders(&mut self, ctx: &Context) {
        self.clip.stream_layers();
        if let Some(x) = &mut self.sdxl {
            x.clip_2.stream_layers();
        }
        ctx.trim_pool();
    }

    /// TAESD for previews and final decodes that ask for [`VaeDecoder::Taesd`] (`None` removes it).
    pub fn set_taesd(&mut self, taesd: Option<Taesd>) {
        self.taesd = taesd.map(std::sync::Arc::new);
    }

    /// The VAE with its encoder, loaded from the base weights on first use and kept.
    pub fn encoder_vae(&self, ctx: &Context) -> Result<std::sync::Arc<AutoencoderKL>> {
        let mut slot = self.vae_encoder.lock().unwrap();
        if let Some(v) = slot.as_ref() {
            return Ok(v.clone());
        }
        let v = std::sync::Arc::new(self.vae.with_encoder(ctx, self.weights.vae()?)?);
        *slot = Some(v.clone());
        Ok(v)
    }

    /// Whether the model is SDXL (two text encoders, added conditioning), or an SDXL refiner.
    pub fn is_sdxl(&self) -> bool {
        self.sdxl.is_some() || self.refiner.is_some()
    }

    /// Text conditioning for [uncond, cond…] as one [B, 77·chunks, D] tensor (one cond per
    /// distinct `AND` sub-prompt, [`compose`]), or [cond] alone ([1, ..]) without
    /// classifier-free guidance; SDXL's added conditioning with it.
    async fn encode(&self, ctx: &Context, o: &GenerateOptions, c: &compose::Composed, guided: bool) -> Result<Conditioning> {
        if let Some(x) = &self.sdxl {
            return x.encode(ctx, self, o, c, guided).await;
        }
        if let Some(r) = &self.refiner {
            return r.encode(ctx, self, o, c, guided).await;
        }
        if o.prompt_2.is_some() || o.negative_prompt_2.is_some() {
            return Err(Error::Unsupported(format!("prompt_2 / negative_prompt_2 are for SDXL's second text encoder; {} has one (put it all in the prompt)", self.name)));
        }
        compose::encode_single(self, ctx, o, c, guided).await
    }

    /// [`Self::encode`] of `o.prompt` as it parses (the pipelines without `AND` handling of their
    /// own).
    pub(crate) async fn encode_prompt(&self, ctx: &Context, o: &GenerateOptions, guided: bool) -> Result<Conditioning> {
        self.encode(ctx, o, &compose::Composed::parse(&o.prompt)?, guided).await
    }

    /// What the UNet is conditioned on for `o` (blocking, native): the text `[B, L, D]`
    /// (B = 2, [negative, prompt], when `o.guidance` > 1, else 1; a prompt with `AND` has one
    /// cond entry per distinct sub-prompt after the negative) and, for SDXL, the added
    /// conditioning (pooled `text_embeds` and time ids) for the same batch.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn conditioning(&self, ctx: &Context, o: &GenerateOptions) -> Result<(Tensor, Option<AddedCond>)> {
        let composed = compose::Composed::parse(&o.prompt)?;
        let c = pollster::block_on(self.encode(ctx, o, &composed, composed.guided(o.guidance)))?;
        Ok((c.text, c.added))
    }

    /// Run txt2img (img2img / inpainting with `init_image` / `mask`), blocking (native); `progress(step, total)` is called after each model
    /// evaluation.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn generate(&self, ctx: &Context, o: &GenerateOptions, progress: impl FnMut(usize, usize)) -> Result<Image> {
        pollster::block_on(self.generate_async(ctx, o, progress))
    }

    /// As [`StableDiffusion::generate`], also calling `preview(step, image)` with the VAE decode
    /// of the current latents after every `every`-th model evaluation but the last (whose image
    /// is the result). Each preview costs one VAE decode.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn generate_with_previews(
        &self,
        ctx: &Context,
        o: &GenerateOptions,
        every: usize,
        progress: impl FnMut(usize, usize),
        mut preview: impl FnMut(usize, &Image),
    ) -> Result<Image> {
        pollster::block_on(self.generate_with_previews_async(ctx, o, Some((every, &mut preview)), progress))
    }

    /// Run txt2img (async: on the web every readback waits for the browser's event loop).
    pub async fn generate_async(&self, ctx: &Context, o: &GenerateOptions, progress: impl FnMut(usize, usize)) -> Result<Image> {
        self.generate_with_previews_async(ctx, o, None, progress).await
    }

    /// [`StableDiffusion::generate_async`] with optional previews: `(every, preview)` as in
    /// [`StableDiffusion::generate_with_previews`].
    pub async fn generate_with_previews_async(
        &self,
        ctx: &Context,
        o: &GenerateOptions,
        preview: Option<(usize, &mut dyn FnMut(usize, &Image))>,
        mut progress: impl FnMut(usize, usize),
    ) -> Result<Image> {
        self.generate_steps_async(ctx, o, preview, |i, total| {
            progress(i, total);
            std::ops::ControlFlow::Continue(())
        })
        .await
    }

    /// As [`StableDiffusion::generate_with_previews`], but `step(done, total)` may answer
    /// `Break` to stop sampling early: the latents so far are decoded and returned (A1111's
    /// interrupt/skip, which `pigment serve` offers).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn generate_steps(
        &self,
        ctx: &Context,
        o: &GenerateOptions,
        preview: Option<(usize, &mut dyn FnMut(usize, &Image))>,
        step: impl FnMut(usize, usize) -> std::ops::ControlFlow<()>,
    ) -> Result<Image> {
        pollster::block_on(self.generate_steps_async(ctx, o, preview, step))
    }

    /// [`StableDiffusion::generate_steps`], async.
    pub async fn generate_steps_async(
        &self,
        ctx: &Context,
        o: &GenerateOptions,
        mut preview: Option<(usize, &mut dyn FnMut(usize, &Image))>,
        mut progress: impl FnMut(usize, usize) -> std::ops::ControlFlow<()>,
    ) -> Result<Image> {
        if let Some(h) = &o.hires {
            return hires_generate(self, ctx, o, h, preview, &mut progress).await;
        }
        let s = self.sample(ctx, o, None, &mut preview, &mut progress).await?;
        self.decode_final(ctx, &s, o.width, o.height, o.decoder).await
    }

    /// The sampler loop: text conditioning, start latents (txt2img noise, the init image's, or
    /// `init_latents` noised to the strength's first step), every model evaluation. Returns the
    /// final latents (or those so far when `progress` answered `Break`).
    /// An f16 UNet whose latents turn non-finite is stopped at that step and the whole loop runs
    /// again with an f32 UNet (same seed, so the same image an f32 run gives), with a warning.
    pub(crate) async fn sample(
        &self,
        ctx: &Context,
        o: &GenerateOptions,
        init_latents: Option<&[f32]>,
        preview: &mut Option<(usize, &mut dyn FnMut(usize, &Image))>,
        progress: &mut dyn FnMut(usize, usize) -> std::ops::ControlFlow<()>,
    ) -> Result<Sampled> {
        let step = match self.sample_with(ctx, o, init_latents, preview, progress, &self.unet).await? {
            Sampling::Done(s) => return Ok(s),
            Sampling::Overflowed { step } => step,
        };
        let unet = self.f32_unet(ctx, step)?;
        match self.sample_with(ctx, o, init_latents, preview, progress, &unet).await? {
            Sampling::Done(s) => Ok(s),
            Sampling::Overflowed { .. } => unreachable!("only an f16 UNet reports an overflow"),
        }
    }

    async fn sample_with(
        &self,
        ctx: &Context,
        o: &GenerateOptions,
        init_latents: Option<&[f32]>,
        preview: &mut Option<(usize, &mut dyn FnMut(usize, &Image))>,
        progress: &mut dyn FnMut(usize, usize) -> std::ops::ControlFlow<()>,
        unet: &UNet2DConditionModel,
    ) -> Result<Sampling> {
        check_size(o.width, o.height)?;
        check_device_size(ctx, o.width, o.height)?;
        if o.steps == 0 {
            return Err(Error::Unsupported("steps must be at least 1".into()));
        }
        match &o.instruct {
            Some(ip) => pix2pix::check(self, o, ip)?,
            None => img2img::check(self, o)?,
        }
        refiner::check(self, o, init_latents.is_some())?;
        for (d, what) in [(o.decoder, "final decode"), (o.preview_decoder, "previews")] {
            if d == VaeDecoder::Taesd && self.taesd.is_none() {
                return Err(Error::Unsupported(format!("TAESD {what} need TAESD weights (--taesd PATH; library: StableDiffusion::set_taesd)")));
            }
        }
        if o.encoder == Autoencoder::Taesd && o.init_image.is_some() {
            match &self.taesd {
                None => return Err(Error::Unsupported("the TAESD encoder needs TAESD weights (--taesd PATH; library: StableDiffusion::set_taesd)".into())),
                Some(t) if !t.has_encoder() => {
                    return Err(Error::Unsupported("this TAESD has no encoder: give taesd_encoder.safetensors beside the decoder, or a diffusers AutoencoderTiny folder".into()))
                }
                _ => {}
            }
        }
        phase(ctx, "text encoder");
        // diffusers' `do_classifier_free_guidance`: guidance > 1, else one batch of cond alone;
        // `AND` sub-prompts add one cond entry each and always run the uncond one (A1111)
        let composed = compose::Composed::parse(&o.prompt)?;
        let guided = composed.guided(o.guidance);
        let batch_n = match o.instruct {
            Some(_) if !composed.is_plain() => return Err(Error::Unsupported("AND (Composable Diffusion) cannot be combined with an InstructPix2Pix edit".into())),
            Some(_) => pix2pix::batch_n(guided),
            None => composed.batch(guided),
        };
        if !composed.is_plain() && (o.gligen.is_some() || o.sag_scale != 0.0) {
            return Err(Error::Unsupported("AND (Composable Diffusion) cannot be combined with GLIGEN boxes or --sag-scale".into()));
        }
        limits::check_unet_fits(ctx, unet, batch_n, o.width, o.height)?;
        let mut cond = self.encode(ctx, o, &composed, guided).await?;
        let mut instruct = None;
        if let Some(ip) = &o.instruct {
            cond = pix2pix::text(ctx, cond, guided).await?;
            instruct = Some(pix2pix::ImageCond::prepare(self, ctx, o, ip, guided).await?);
        }
        let text32;
        let text = if cond.text.dtype() == unet.dtype {
            &cond.text
        } else {
            text32 = Tensor::from_f32(ctx, &cond.text.to_f32(ctx).await?, cond.text.shape(), unet.dtype)?;
            &text32
        };
        let sag = sag::Sag::new(self, ctx, o, unet, text).await?;
        let hyper = self.hyper_contexts(ctx, text)?;
        if hyper.is_some() && sag.is_some() {
            return Err(Error::Unsupported("--sag-scale cannot be combined with hypernetworks (SAG's degraded UNet call has no hypernetwork reference)".into()));
        }
        let cross = match &hyper {
            Some((k, v)) => CrossContext { k, v },
            None => text.into(),
        };
        let mut sched = schedulers::build(o.sampler, o.schedule, &self.scheduler_config, o.steps)?;
        let (h, w) = (o.height / 8, o.width / 8);
        let latent_shape = [1, self.vae.config.latent_channels, h, w];
        let n: usize = latent_shape.iter().product();
        let mut rng = TorchRng::new(o.seed);
        // txt2img: randn · init_noise_sigma from evaluation 0; img2img/inpainting: the noised
        // image from the strength's begin index; given latents: those, noised the same way.
        let start = match init_latents {
            Some(l) => img2img::from_latents(l, o, sched.as_ref(), &self.scheduler_config, &mut rng)?,
            None => img2img::prepare(self, ctx, o, sched.as_ref(), &mut rng).await?,
        };
        let (begin, mut x, inpaint) = (start.begin, start.latents, start.inpaint);
        let total = sched.timesteps().len();
        // A base handing over to a refiner stops at `denoising_end`.
        let end = match o.denoising_end {
            Some(f) => refiner::end_index(sched.as_ref(), &self.scheduler_config, begin, f)?,
            None => total,
        };
        let dtype = text.dtype();
        let control = controlnet::prepare(ctx, self, o, batch_n)?;
        let gligen = gligen::Grounding::prepare(self, ctx, o, unet, guided, total, dtype).await?;
        if control.is_some() && unet.dtype != cond.text.dtype() {
            return Err(Error::Unsupported("the f16 UNet overflowed with a ControlNet, which has no f32 re-run: run with --no-f16".into()));
        }
        // Overflow is looked for only where an f32 re-run can follow (not in `--plan` dry runs).
        let watch = unet.dtype == DType::F16 && !ctx.planning();
        phase(ctx, "unet");
        for i in begin..end {
            let t = sched.timesteps()[i];
            let mut xin = sched.scale_model_input(&x, i);
            if let Some(p) = &inpaint {
                p.extend_input(&mut xin);
            }
            let batch = match &instruct {
                Some(ic) => ic.batch(&xin),
                None => xin.repeat(batch_n),
            };
            let shape = [batch_n, unet.in_channels(), h, w];
            let sample = Tensor::from_f32(ctx, &batch, &shape, dtype)?;
            let res = match &control {
                Some(c) => c.residuals(ctx, &sample, t, text, cond.added.as_ref(), i - begin, total - begin)?,
                None => None,
            };
            let mut probe = None;
            let extras = UNetExtras { probe: sag.is_some().then_some(&mut probe), gligen: gligen.objs(i), class_labels: None };
            let out = unet.forward_with(ctx, &sample, &[t], cross, cond.added.as_ref(), res.as_ref(), None, extras)?.to_f32(ctx).await?;
            let mut pred = match &instruct {
                Some(ic) => ic.combine(out.clone(), n, o.guidance),
                None if guided => composed.combine(&out, n, o.guidance),
                None => out.clone(),
            };
            if let (Some(s), Some(p)) = (&sag, &probe) {
                s.guide(ctx, unet, sched.as_ref(), p, &x, &out[..n], &mut pred, i, t, latent_shape).await?;
            }
            x = sched.step(&pred, i, &x, &mut rng);
            if let Some(p) = &inpaint {
                p.blend(&mut x, sched.as_ref(), i)?;
            }
            // The latents are on the host already: a scan is cheaper than a GPU reduction here.
            if watch && x.iter().any(|v| !v.is_finite()) {
                return Ok(Sampling::Overflowed { step: i + 1 - begin });
            }
            if progress(i + 1 - begin, end - begin).is_break() {
                return Ok(Sampling::Done(Sampled { latents: x, shape: latent_shape, interrupted: true }));
            }
            if let Some((every, show)) = preview.as_mut() {
                let done = i + 1 - begin;
                if i + 1 < end && done % (*every).max(1) == 0 {
                    let s = Sampled { latents: x, shape: latent_shape, interrupted: false };
                    show(done, &self.decode(ctx, &s, o.width, o.height, o.preview_decoder).await?);
                    x = s.latents;
                    phase(ctx, "unet");
                }
            }
        }
        Ok(Sampling::Done(Sampled { latents: x, shape: latent_shape, interrupted: false }))
    }

    /// The result's decode: with the model's VAE through the NaN / constant-image guards
    /// ([`guard`]); TAESD's (an approximation asked for speed) as is.
    pub(crate) async fn decode_final(&self, ctx: &Context, s: &Sampled, width: usize, height: usize, decoder: VaeDecoder) -> Result<Image> {
        match decoder {
            VaeDecoder::Full => self.decode_checked(ctx, &s.latents, &s.shape, width, height).await,
            VaeDecoder::Taesd => self.decode(ctx, s, width, height, decoder).await,
        }
    }

    pub(crate) async fn decode(&self, ctx: &Context, s: &Sampled, width: usize, height: usize, decoder: VaeDecoder) -> Result<Image> {
        phase(ctx, "vae decode");
        let latents = Tensor::from_f32(ctx, &s.latents, &s.shape, DType::F32)?;
        let rgb = match (decoder, &self.taesd) {
            (VaeDecoder::Taesd, Some(t)) => t.latents_to_image_u8_async(ctx, &latents).await?,
            (VaeDecoder::Taesd, None) => return Err(Error::Unsupported("TAESD decoding needs TAESD weights (--taesd PATH)".into())),
            (VaeDecoder::Full, _) => self.vae.latents_to_image_u8_async(ctx, &latents).await?,
        };
        Ok(Image { width, height, rgb })
    }
}

/// diffusers' `do_classifier_free_guidance` (`guidance_scale > 1`): at 1 the guided prediction
/// equals the cond one, at 0 (Turbo) it is the cond one by definition, so no uncond batch runs.
pub fn uses_cfg(guidance: f32) -> bool {
    guidance > 1.0
}

/// What the UNet is conditioned on: `[B, L, D]` text (B = 2 with guidance, 1 without) and
/// SDXL's added conditioning for the same batch.
pub(crate) struct Conditioning {
    pub text: Tensor,
    pub added: Option<AddedCond>,
}

/// Latents out of the sampler loop.
/// How a sampling loop ended: done (or interrupted), or stopped where an f16 UNet overflowed.
enum Sampling {
    Done(Sampled),
    Overflowed { step: usize },
}

pub(crate) struct Sampled {
    pub latents: Vec<f32>,
    pub shape: [usize; 4],
    /// `progress` answered `Break`.
    pub interrupted: bool,
}

/// The hires fix ([`hires`]): base pass, upscale, second pass; `progress` counts both passes.
async fn hires_generate(
    sd: &StableDiffusion,
    ctx: &Context,
    o: &GenerateOptions,
    h: &HiresOptions,
    mut preview: Option<(usize, &mut dyn FnMut(usize, &Image))>,
    progress: &mut dyn FnMut(usize, usize) -> std::ops::ControlFlow<()>,
) -> Result<Image> {
    h.check(o)?;
    let mut second = h.second_pass(o);
    // Progress over both passes (the second runs its last int(steps · denoise) steps).
    let first_steps = o.steps;
    let second_steps = second.steps - schedulers::begin_index(second.steps, second.strength, 1).unwrap_or(0);
    let total = first_steps + second_steps;
    let base = {
        let mut p = |i: usize, _: usize| progress(i, total);
        sd.sample(ctx, o, None, &mut preview, &mut p).await?
    };
    if base.interrupted {
        return sd.decode_final(ctx, &base, o.width, o.height, o.decoder).await;
    }
    let (lc, bh, bw) = (base.shape[1], base.shape[2], base.shape[3]);
    let (th, tw) = (second.height / 8, second.width / 8);
    let init = match &h.upscaler {
        HiresUpscaler::Latent => Some(hires::resize_bilinear(&base.latents, lc, bh, bw, th, tw)),
        HiresUpscaler::LatentNearest => Some(hires::resize_nearest(&base.latents, lc, bh, bw, th, tw)),
        HiresUpscaler::Lanczos => {
            let img = sd.decode(ctx, &base, o.width, o.height, VaeDecoder::Full).await?;
            second.init_image = Some(hires::resize_lanczos(&img, second.width, second.height));
            None
        }
        #[cfg(not(target_arch = "wasm32"))]
        HiresUpscaler::Model { path, .. } => {
            let img = sd.decode(ctx, &base, o.width, o.height, VaeDecoder::Full).await?;
            let model = crate::models::esrgan::RealEsrgan::open(ctx, path, sd.vae.dtype).map_err(|e| Error::Unsupported(format!("hires upscaler {}: {e}", path.display())))?;
            second.init_image = Some(hires::upscale_with_model(ctx, &model, &img, second.width, second.height)?);
            None
        }
        #[cfg(target_arch = "wasm32")]
        HiresUpscaler::Model { .. } => return Err(Error::Unsupported("model upscalers in hires fix need the native build".into())),
    };
    let mut p = |i: usize, _: usize| progress(first_steps + i, total);
    let s = sd.sample(ctx, &second, init.as_deref(), &mut preview, &mut p).await?;
    sd.decode_final(ctx, &s, second.width, second.height, o.decoder).await
}

/// Start a phase of a generation with the free buffers of the last one dropped: they are sized
/// for its activations (CLIP's are no use to the UNet, the UNet's none to the VAE's 512²
/// ones), so keeping them only raised the peak. [`MemoryPlan`] reports per phase.
pub(crate) fn phase(ctx: &Context, name: &str) {
    ctx.trim_pool();
    ctx.begin_phase(name);
}

/// A1111's `parameters` text, as its PNG info tab shows and parses it. Current A1111 style:
/// `Sampler: DPM++ 2M, Schedule type: Karras`; the schedule type is written for every sampler
/// that has a choice (so A1111's "Automatic", which is Karras for DPM++, does not replace an
/// explicit Normal) and left out for those that have none (DDIM, PLMS, Euler a, LCM, DDPM).
pub fn a1111_parameters(o: &GenerateOptions, model: &str) -> String {
    let mut s = o.prompt.clone();
    if !o.negative_prompt.is_empty() {
        s.push_str(&format!("\nNegative prompt: {}", o.negative_prompt));
    }
    let mut sampler = o.sampler.a1111_name().to_string();
    if o.sampler.supports_karras() {
        sampler.push_str(&format!(", Schedule type: {}", o.schedule.a1111_name()));
    }
    s.push_str(&format!(
        "\nSteps: {}, Sampler: {sampler}, CFG scale: {}, Seed: {}, Size: {}x{}, Model: {model}",
        o.steps, o.guidance, o.seed, o.width, o.height
    ));
    if o.clip_skip > 1 {
        s.push_str(&format!(", Clip skip: {}", o.clip_skip));
    }
    if o.sag_scale > 0.0 {
        // the names of A1111's SAG extension (sd_webui_SAG)
        s.push_str(&format!(", SAG Guidance Enabled: True, SAG Guidance Scale: {}", o.sag_scale));
    }
    if let Some(h) = &o.hires {
        s.push_str(&hires::a1111_parameters(h));
    } else if o.init_image.is_some() {
        s.push_str(&format!(", Denoising strength: {}", o.strength));
        if o.mask.is_some() {
            s.push_str(&format!(", Mask blur: {}", o.mask_blur));
        }
    }
    s
}

//! txt2img: prompt → CLIP → sampler loop over the UNet with classifier-free guidance → VAE → RGB.
//!
//! Matches diffusers' StableDiffusionPipeline for the same seed: initial noise from the
//! torch-compatible generator times the sampler's `init_noise_sigma`, one batched UNet call per
//! evaluation with the batch ordered [uncond, cond], guidance `uncond + g (cond - uncond)`.

use crate::gpu::Context;
use crate::models::clip::ClipTextModel;
use crate::models::unet::UNet2DConditionModel;
use crate::models::vae::AutoencoderKL;
use crate::prompt;
use crate::rng::TorchRng;
use crate::schedulers::{self, SamplerKind, SchedulerConfig, SigmaSchedule};
use crate::tokenizer::{ClipTokenizer, PadToken};
use crate::weights::{self, OpenOptions, TextEncoderKind, Weights};
use crate::{DType, Error, Result, Tensor};
use std::path::Path;

pub mod controlnet;
mod img2img;
pub mod inpaint;
pub mod plan;
pub mod upscale;
pub use plan::MemoryPlan;
pub use controlnet::ControlOptions;

/// Everything a generation needs besides the model.
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    pub prompt: String,
    pub negative_prompt: String,
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
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            prompt: String::new(),
            negative_prompt: String::new(),
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
    pub scheduler_config: SchedulerConfig,
    /// Shown in the PNG parameters (`Model: ...`).
    pub name: String,
    /// The base weights, kept to merge LoRAs from ([`StableDiffusion::set_loras`]).
    pub(crate) weights: Weights,
    pub(crate) loras: crate::lora::Applied,
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
        let te = weights.text_encoder()?;
        // Where tokenizer/ and scheduler/ live: the model folder, or the config folder.
        let folder = if path.is_dir() { Some(path) } else { config_dir };
        let tokenizer = if let Some(dir) = folder.filter(|d| d.join("tokenizer").is_dir()) {
            ClipTokenizer::from_dir(dir.join("tokenizer")).map_err(|e| Error::Unsupported(format!("tokenizer: {e}")))?
        } else {
            // Single files carry no tokenizer: the embedded CLIP BPE, padded as the family does.
            ClipTokenizer::embedded(match te.text_kind {
                Some(TextEncoderKind::OpenClip) => PadToken::Exclamation,
                _ => PadToken::EndOfText,
            })
        };
        let scheduler_file = folder.map(|d| d.join("scheduler").join("scheduler_config.json"));
        let scheduler_config = match scheduler_file.and_then(|f| std::fs::read_to_string(f).ok()) {
            Some(text) => SchedulerConfig::from_json(&text)?,
            None => SchedulerConfig::stable_diffusion_default(te.text_kind == Some(TextEncoderKind::OpenClip)),
        };
        let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        Self::from_weights(ctx, weights, tokenizer, scheduler_config, name, dtype)
    }

    /// A synthetic full-size model: generated weights, the embedded CLIP tokenizer, the
    /// model's scheduler config.
    pub fn load_synthetic(ctx: &Context, model: weights::synthetic::SyntheticModel, want_f16: bool) -> Result<StableDiffusion> {
        use weights::synthetic::SyntheticModel;
        let pad = if model == SyntheticModel::Sd15 { PadToken::EndOfText } else { PadToken::Exclamation };
        let scheduler_config = SchedulerConfig::from_json(model.scheduler_json())?;
        let name = format!("synthetic-{}", model.name());
        Self::from_weights(ctx, model.weights()?, ClipTokenizer::embedded(pad), scheduler_config, name, weights::storage_dtype(ctx, want_f16))
    }

    fn from_weights(ctx: &Context, weights: Weights, tokenizer: ClipTokenizer, scheduler_config: SchedulerConfig, name: String, dtype: DType) -> Result<StableDiffusion> {
        let te = weights.text_encoder()?;
        Ok(StableDiffusion {
            tokenizer,
            clip: ClipTextModel::load(ctx, te, dtype)?,
            unet: UNet2DConditionModel::load(ctx, weights.unet()?, dtype)?,
            // txt2img needs only the decoder: the encoder waits for img2img (~70 MB for SD 1.5)
            vae: AutoencoderKL::load_decoder(ctx, weights.vae()?, dtype)?,
            vae_encoder: Default::default(),
            controlnet: None,
            scheduler_config,
            name,
            weights,
            loras: Default::default(),
        })
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

    /// Text conditioning for [uncond, cond] as one [2, 77·chunks, D] tensor.
    async fn encode(&self, ctx: &Context, o: &GenerateOptions) -> Result<Tensor> {
        let mut cond = prompt::tokenize_prompt(&self.tokenizer, &o.prompt).chunks;
        let mut uncond = prompt::tokenize_prompt(&self.tokenizer, &o.negative_prompt).chunks;
        prompt::match_chunk_counts(&self.tokenizer, &mut uncond, &mut cond);
        let u = self.clip.encode_chunks_async(ctx, &uncond, o.clip_skip).await?;
        let c = self.clip.encode_chunks_async(ctx, &cond, o.clip_skip).await?;
        let (mut data, cdata) = (u.to_f32(ctx).await?, c.to_f32(ctx).await?);
        data.extend(cdata);
        let mut shape = c.shape().to_vec();
        shape[0] = 2;
        Tensor::from_f32(ctx, &data, &shape, c.dtype())
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
        check_size(o.width, o.height)?;
        if o.steps == 0 {
            return Err(Error::Unsupported("steps must be at least 1".into()));
        }
        img2img::check(self, o)?;
        phase(ctx, "text encoder");
        let text = self.encode(ctx, o).await?;
        let mut sched = schedulers::build(o.sampler, o.schedule, &self.scheduler_config, o.steps)?;
        let (h, w) = (o.height / 8, o.width / 8);
        let latent_shape = [1, self.vae.config.latent_channels, h, w];
        let n: usize = latent_shape.iter().product();
        let mut rng = TorchRng::new(o.seed);
        // txt2img: randn · init_noise_sigma from evaluation 0; img2img/inpainting: the noised
        // image from the strength's begin index.
        let start = img2img::prepare(self, ctx, o, sched.as_ref(), &mut rng).await?;
        let (begin, mut x, inpaint) = (start.begin, start.latents, start.inpaint);
        let total = sched.timesteps().len();
        let dtype = text.dtype();
        let control = controlnet::prepare(ctx, self, o)?;
        phase(ctx, "unet");
        for i in begin..total {
            let t = sched.timesteps()[i];
            let mut xin = sched.scale_model_input(&x, i);
            if let Some(p) = &inpaint {
                p.extend_input(&mut xin);
            }
            let mut batch = xin.clone();
            batch.extend_from_slice(&xin);
            let shape = [2, self.unet.in_channels(), h, w];
            let sample = Tensor::from_f32(ctx, &batch, &shape, dtype)?;
            let res = match &control {
                Some(c) => c.residuals(ctx, &sample, t, &text, i - begin, total - begin)?,
                None => None,
            };
            let out = self.unet.forward_controlled(ctx, &sample, &[t], &text, res.as_ref())?.to_f32(ctx).await?;
            let guided = schedulers::cfg_combine(&out[..n], &out[n..], o.guidance);
            x = sched.step(&guided, i, &x, &mut rng);
            if let Some(p) = &inpaint {
                p.blend(&mut x, sched.as_ref(), i)?;
            }
            if progress(i + 1 - begin, total - begin).is_break() {
                break;
            }
            if let Some((every, show)) = preview.as_mut() {
                let done = i + 1 - begin;
                if i + 1 < total && done % (*every).max(1) == 0 {
                    show(done, &self.decode(ctx, &x, &latent_shape, o).await?);
                    phase(ctx, "unet");
                }
            }
        }
        self.decode(ctx, &x, &latent_shape, o).await
    }

    async fn decode(&self, ctx: &Context, x: &[f32], latent_shape: &[usize; 4], o: &GenerateOptions) -> Result<Image> {
        phase(ctx, "vae decode");
        let latents = Tensor::from_f32(ctx, x, latent_shape, DType::F32)?;
        let rgb = self.vae.latents_to_image_u8_async(ctx, &latents).await?;
        Ok(Image { width: o.width, height: o.height, rgb })
    }
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
    if o.init_image.is_some() {
        s.push_str(&format!(", Denoising strength: {}", o.strength));
        if o.mask.is_some() {
            s.push_str(&format!(", Mask blur: {}", o.mask_blur));
        }
    }
    s
}

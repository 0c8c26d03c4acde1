//! Class-conditional ImageNet generation with DiT (diffusers' `DiTPipeline`): a diffusers folder
//! with `transformer/` (`DiTTransformer2DModel`), `vae/`, `scheduler/` and `model_index.json`.
//!
//! As `DiTPipeline` for the same seed: `randn` latents `[1, C, S, S]` from the torch-compatible
//! generator; with guidance > 1 a doubled batch `[latents, latents]` with labels
//! `[label, null]` (the null class is `num_embeds_ada_norm`, 1000), guidance
//! `uncond + g (cond - uncond)` on the first `in_channels` output channels only, the learned
//! sigma channels dropped, and the sampler stepping the whole doubled batch (so ancestral
//! samplers draw noise for both halves, as diffusers does); decode with `1 / scaling_factor`.
//!
//! One deliberate difference: the start noise is scaled by the sampler's `init_noise_sigma`.
//! DiTPipeline skips that, which is the same for DDIM / DPM++ / UniPC (σ = 1) but leaves
//! Euler-type samplers starting at unit noise; Pigment starts them where they expect.

use super::{imagenet, uses_cfg, Image};
use crate::gpu::Context;
use crate::models::dit::DiTTransformer2DModel;
use crate::models::vae::AutoencoderKL;
use crate::rng::TorchRng;
use crate::schedulers::{self, SamplerKind, SchedulerConfig, SigmaSchedule};
#[cfg(not(target_arch = "wasm32"))]
use crate::weights::{self, Component, ComponentKind, SafetensorsFile};
use crate::{DType, Error, Result, Tensor};
#[cfg(not(target_arch = "wasm32"))]
use std::path::Path;

/// What one DiT image needs.
#[derive(Clone, Debug)]
pub struct DitOptions {
    /// ImageNet class id (0..999; see [`imagenet::labels`]).
    pub class_label: u32,
    pub seed: u64,
    pub steps: usize,
    /// DiTPipeline's default is 4.0; <= 1 runs the conditional batch alone.
    pub guidance: f32,
    pub sampler: SamplerKind,
    pub schedule: SigmaSchedule,
}

impl Default for DitOptions {
    fn default() -> Self {
        DitOptions { class_label: 207, seed: 0, steps: 50, guidance: 4.0, sampler: SamplerKind::Ddim, schedule: SigmaSchedule::Normal }
    }
}

pub struct DitPipeline {
    pub transformer: DiTTransformer2DModel,
    pub vae: AutoencoderKL,
    pub scheduler_config: SchedulerConfig,
    /// The sampler of the folder's scheduler class (DiT-XL ships DDIMScheduler).
    pub default_sampler: SamplerKind,
    pub name: String,
}

#[cfg(not(target_arch = "wasm32"))]
/// Whether `dir` is a DiT folder (its `model_index.json` says `DiTPipeline`; other transformer
/// pipelines, PixArt, SD 3, ..., are not DiT's class-conditional model).
pub fn is_dit_folder(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("model_index.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .is_some_and(|v| v.get("_class_name").and_then(|c| c.as_str()) == Some("DiTPipeline"))
}

#[cfg(not(target_arch = "wasm32"))]
/// The sampler for a diffusers scheduler class name (None: not one Pigment maps).
fn sampler_of_class(class: &str) -> Option<SamplerKind> {
    Some(match class {
        "DDIMScheduler" => SamplerKind::Ddim,
        "DPMSolverMultistepScheduler" => SamplerKind::DpmPlusPlus2M,
        "EulerDiscreteScheduler" => SamplerKind::Euler,
        "EulerAncestralDiscreteScheduler" => SamplerKind::EulerAncestral,
        "PNDMScheduler" => SamplerKind::Pndm,
        "DDPMScheduler" => SamplerKind::Ddpm,
        "UniPCMultistepScheduler" => SamplerKind::UniPc,
        "LMSDiscreteScheduler" => SamplerKind::Lms,
        "HeunDiscreteScheduler" => SamplerKind::Heun,
        _ => return None,
    })
}

#[cfg(not(target_arch = "wasm32"))]
fn component(dir: &Path, sub: &str, kind: ComponentKind) -> Result<Component> {
    let d = dir.join(sub);
    let file = ["diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors"]
        .iter()
        .map(|f| d.join(f))
        .find(|p| p.exists())
        .ok_or_else(|| Error::Unsupported(format!("{}: no diffusion_pytorch_model.safetensors (a DiT folder needs {sub}/ with its weights and config.json)", d.display())))?;
    let config = std::fs::read_to_string(d.join("config.json"))
        .map_err(|e| Error::Unsupported(format!("{}: {e} (a DiT folder's {sub}/ needs config.json)", d.join("config.json").display())))?;
    let config = serde_json::from_str(&config).map_err(|e| Error::Unsupported(format!("{}: {e}", d.join("config.json").display())))?;
    Ok(Component::from_folder_file(kind, SafetensorsFile::open(&file)?, Some(config)))
}

impl DitPipeline {
    #[cfg(not(target_arch = "wasm32"))]
    /// Load a diffusers DiT folder (f16 storage where the device has it and `want_f16`).
    pub fn load(ctx: &Context, dir: &Path, want_f16: bool) -> Result<DitPipeline> {
        let dtype = weights::storage_dtype(ctx, want_f16);
        // The transformer fills the denoiser's slot (ComponentKind has no DiT kind of its own).
        let transformer = DiTTransformer2DModel::load(ctx, &component(dir, "transformer", ComponentKind::Unet)?, dtype)?;
        let vae = AutoencoderKL::load_decoder(ctx, &component(dir, "vae", ComponentKind::Vae)?, dtype)?;
        if vae.config.latent_channels != transformer.config.in_channels {
            return Err(Error::Unsupported(format!(
                "{}: the VAE has {} latent channels but the transformer takes {}",
                dir.display(),
                vae.config.latent_channels,
                transformer.config.in_channels
            )));
        }
        let sched_path = dir.join("scheduler").join("scheduler_config.json");
        let text = std::fs::read_to_string(&sched_path).map_err(|e| Error::Unsupported(format!("{}: {e}", sched_path.display())))?;
        let scheduler_config = SchedulerConfig::from_json(&text)?;
        let class = serde_json::from_str::<serde_json::Value>(&text).ok().and_then(|v| v.get("_class_name").and_then(|c| c.as_str()).map(str::to_string));
        let default_sampler = class.as_deref().and_then(sampler_of_class).unwrap_or(SamplerKind::Ddim);
        let name = dir.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        Ok(DitPipeline { transformer, vae, scheduler_config, default_sampler, name })
    }

    /// The image side in pixels: the transformer's fixed `sample_size` times the VAE's factor.
    pub fn image_size(&self) -> usize {
        self.transformer.config.sample_size * self.vae.config.scale_factor()
    }

    /// The final latents `[1, C, S, S]` (scaled as the sampler sees them).
    pub async fn sample_async(&self, ctx: &Context, o: &DitOptions, progress: &mut dyn FnMut(usize, usize)) -> Result<Vec<f32>> {
        let cfg = &self.transformer.config;
        if o.steps == 0 {
            return Err(Error::Unsupported("steps must be at least 1".into()));
        }
        if o.class_label as usize >= cfg.num_classes {
            return Err(Error::Unsupported(format!("class label {} is past this DiT's {} classes", o.class_label, cfg.num_classes)));
        }
        let mut sched = schedulers::build(o.sampler, o.schedule, &self.scheduler_config, o.steps)?;
        let (c, s) = (cfg.in_channels, cfg.sample_size);
        let n = c * s * s;
        let mut rng = TorchRng::new(o.seed);
        let sigma0 = sched.init_noise_sigma();
        let noise: Vec<f32> = rng.randn(n).into_iter().map(|v| v * sigma0).collect();
        let guided = uses_cfg(o.guidance);
        // [cond, uncond]: DiTPipeline's order (the SD pipelines put uncond first).
        let labels: Vec<u32> = if guided { vec![o.class_label, cfg.num_classes as u32] } else { vec![o.class_label] };
        let mut x = noise.repeat(labels.len());
        let total = sched.timesteps().len();
        let per = cfg.out_channels * s * s;
        for i in 0..total {
            let t = sched.timesteps()[i];
            let xin = sched.scale_model_input(&x, i);
            let out = self.transformer.forward_async(ctx, &xin, &vec![t; labels.len()], &labels).await?;
            // The first C channels are eps; the rest (learned sigma) the sampler never sees.
            let eps = |b: usize| &out[b * per..b * per + n];
            let e = if guided { schedulers::cfg_combine(eps(1), eps(0), o.guidance) } else { eps(0).to_vec() };
            x = sched.step(&e.repeat(labels.len()), i, &x, &mut rng);
            progress(i + 1, total);
        }
        x.truncate(n);
        Ok(x)
    }

    /// One image `image_size()` square.
    pub async fn generate_async(&self, ctx: &Context, o: &DitOptions, mut progress: impl FnMut(usize, usize)) -> Result<Image> {
        let x = self.sample_async(ctx, o, &mut progress).await?;
        let s = self.transformer.config.sample_size;
        let latents = Tensor::from_f32(ctx, &x, &[1, self.transformer.config.in_channels, s, s], DType::F32)?;
        let rgb = self.vae.latents_to_image_u8_async(ctx, &latents).await?;
        Ok(Image { width: self.image_size(), height: self.image_size(), rgb })
    }

    /// Blocking [`Self::generate_async`] (native).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn generate(&self, ctx: &Context, o: &DitOptions, progress: impl FnMut(usize, usize)) -> Result<Image> {
        pollster::block_on(self.generate_async(ctx, o, progress))
    }

    /// A1111-style `parameters` for the PNG.
    pub fn parameters(&self, o: &DitOptions) -> String {
        let label = imagenet::labels().name(o.class_label).unwrap_or("?");
        format!(
            "{label}\nSteps: {}, Sampler: {}, CFG scale: {}, Seed: {}, Size: {}x{}, Model: {}, Class label: {}",
            o.steps,
            o.sampler.a1111_name(),
            o.guidance,
            o.seed,
            self.image_size(),
            self.image_size(),
            self.name,
            o.class_label
        )
    }
}

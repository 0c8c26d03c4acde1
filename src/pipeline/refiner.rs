//! The SDXL refiner (stabilityai/stable-diffusion-xl-refiner-1.0) and the base + refiner
//! "ensemble of experts".
//!
//! The refiner is an SDXL img2img model with one text encoder, `text_encoder_2` (OpenCLIP bigG
//! with its projection; `model_index.json` has `text_encoder: null`), which Pigment loads as
//! [`StableDiffusion::clip`] with `tokenizer_2` as the tokenizer. Its conditioning is diffusers'
//! `StableDiffusionXLImg2ImgPipeline.encode_prompt` with only `text_encoder_2` (bigG's
//! penultimate hidden states alone, 1280 wide, and its pooled `text_embeds`) and
//! `_get_add_time_ids` with `requires_aesthetics_score`: (original size, crop top-left,
//! aesthetic score), 5 values, the negative batch entry taking the negative aesthetic score.
//! Whether a model is a refiner is read from its tensors (no `text_encoder`; a UNet whose
//! `add_embedding` takes pooled width + 5 time ids) and checked against `model_index.json`.
//!
//! The handoff ([`StableDiffusion::generate_refined`]) is diffusers' `denoising_end` /
//! `denoising_start`: with `discrete_timestep_cutoff = round(T − f·T)` (T =
//! `num_train_timesteps`), the base runs the steps whose timestep is ≥ the cutoff and returns
//! its latents undecoded; the refiner, over the same `num_inference_steps` schedule, runs those
//! below it (one more for a second-order sampler when their count is even), from those latents
//! with no noise added. Each pipeline starts its own generator from the seed.

use super::compose::{self, Composed};
use super::{Conditioning, GenerateOptions, Image, StableDiffusion};
use crate::gpu::Context;
use crate::models::unet::AddedCond;
use crate::prompt::{self, CHUNK_LEN};
use crate::schedulers::{Scheduler, SchedulerConfig};
use crate::{Error, Result, Tensor};
use std::path::Path;

/// Time ids per batch entry of a refiner UNet (base SDXL: 6).
const REFINER_TIME_IDS: usize = 5;

/// What makes a loaded model a refiner.
pub struct RefinerParts {
    /// `model_index.json`'s `force_zeros_for_empty_prompt` (the img2img pipeline's default,
    /// and the refiner's: false).
    pub force_zeros_for_empty_prompt: bool,
}

/// Whether the weights are a refiner's: `text_encoder_2` without `text_encoder`.
pub(super) fn is_refiner(w: &crate::weights::Weights) -> bool {
    w.text_encoder().is_err() && w.text_encoder_2().is_some()
}

impl RefinerParts {
    /// Checks that `sd` (loaded with text_encoder_2 as `clip`) has a refiner's UNet and text
    /// encoder, and that `model_index.json` (in `folder`, when there is one) agrees.
    pub(super) fn load(sd: &StableDiffusion, folder: Option<&Path>) -> Result<RefinerParts> {
        let name = &sd.name;
        let Some(proj) = sd.clip.text_projection.as_ref().map(|t| t.shape()[1]) else {
            return Err(Error::Unsupported(format!("{name}: the refiner's text_encoder_2 needs text_projection.weight (CLIPTextModelWithProjection)")));
        };
        let Some((time_dim, input_dim)) = sd.unet.config.text_time else {
            return Err(Error::Unsupported(format!(
                "{name} has text_encoder_2 but no text_encoder, and its UNet has no SDXL add_embedding: not an SDXL refiner (nor a model Pigment knows)"
            )));
        };
        let ids = input_dim.checked_sub(proj).filter(|r| r % time_dim == 0).map(|r| r / time_dim);
        if ids != Some(REFINER_TIME_IDS) {
            return Err(Error::Unsupported(format!(
                "{name} has text_encoder_2 but no text_encoder (an SDXL refiner's layout), yet its UNet's add_embedding takes {input_dim} values, not {proj} pooled + {REFINER_TIME_IDS} time ids x {time_dim} (original size, crop, aesthetic score); an SDXL base needs its text_encoder folder too"
            )));
        }
        let cross = sd.unet.config.cross_attention_dim;
        if cross != sd.clip.config.hidden {
            return Err(Error::Unsupported(format!(
                "{name}: the refiner's UNet attends to {cross}-wide text but text_encoder_2 is {} wide",
                sd.clip.config.hidden
            )));
        }
        let index = folder
            .and_then(|d| std::fs::read_to_string(d.join("model_index.json")).ok())
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok());
        let flag = |k: &str| index.as_ref().and_then(|v| v.get(k)).and_then(serde_json::Value::as_bool);
        if flag("requires_aesthetics_score") == Some(false) {
            return Err(Error::Unsupported(format!(
                "{name}: model_index.json says requires_aesthetics_score false, but the UNet takes {REFINER_TIME_IDS} time ids (an aesthetic score's worth): fix the file"
            )));
        }
        Ok(RefinerParts { force_zeros_for_empty_prompt: flag("force_zeros_for_empty_prompt").unwrap_or(false) })
    }

    /// `[batch, 77·chunks, D2]` text (emphasis per chunk) and added conditioning: the negative
    /// (when `guided`), then one entry per distinct `AND` sub-prompt.
    pub(super) async fn encode(&self, ctx: &Context, sd: &StableDiffusion, o: &GenerateOptions, c: &Composed, guided: bool) -> Result<Conditioning> {
        if o.prompt_2.is_some() || o.negative_prompt_2.is_some() {
            return Err(Error::Unsupported(format!(
                "{} is an SDXL refiner, whose one text encoder is text_encoder_2: give the prompt alone (no prompt_2 / negative_prompt_2)",
                sd.name
            )));
        }
        let tok = &sd.tokenizer;
        let zero_negative = o.negative_prompt.is_empty() && self.force_zeros_for_empty_prompt;
        let mut lists = Vec::new();
        if guided && !zero_negative {
            lists.push(prompt::tokenize_bounded(tok, "negative prompt", &o.negative_prompt).map_err(Error::Unsupported)?);
        }
        for (i, t) in c.texts.iter().enumerate() {
            lists.push(prompt::tokenize_bounded(tok, &compose::what(c, i), t).map_err(Error::Unsupported)?);
        }
        let n = lists.iter().map(Vec::len).max().unwrap_or(1);
        let d = sd.clip.config.hidden;
        let (mut text, mut text_embeds) = (Vec::new(), Vec::new());
        for mut l in lists {
            l.resize(n, prompt::empty_chunk(tok));
            let ids: Vec<u32> = l.iter().flat_map(|c| c.ids).collect();
            let (mut h, pooled) = sd.clip.encode_sdxl_async(ctx, &ids, CHUNK_LEN, o.clip_skip).await?;
            for (c, rows) in l.iter().zip(h.chunks_exact_mut(CHUNK_LEN * d)) {
                if c.weights.iter().any(|&w| w != 1.0) {
                    prompt::apply_weights(rows, CHUNK_LEN, d, &c.weights);
                }
            }
            let pooled = pooled.expect("the refiner's text_encoder_2 has a projection (checked at load)");
            text.extend(h);
            text_embeds.extend_from_slice(&pooled[..pooled.len() / n]);
        }
        if guided && zero_negative {
            let (t, p) = (text.len() / c.texts.len(), text_embeds.len() / c.texts.len());
            text.splice(0..0, std::iter::repeat_n(0.0, t));
            text_embeds.splice(0..0, std::iter::repeat_n(0.0, p));
        }
        let batch = c.batch(guided);
        let ids = |score: f32| time_ids(o, score);
        let mut time_ids = Vec::new();
        if guided {
            time_ids.extend(ids(o.negative_aesthetic_score));
        }
        for _ in &c.texts {
            time_ids.extend(ids(o.aesthetic_score));
        }
        let text = Tensor::from_f32(ctx, &text, &[batch, n * CHUNK_LEN, d], sd.clip.dtype)?;
        Ok(Conditioning { text, added: Some(AddedCond { text_embeds, time_ids }) })
    }
}

/// diffusers' `_get_add_time_ids` with `requires_aesthetics_score`: original size (default the
/// output size), crop top-left, aesthetic score.
pub fn time_ids(o: &GenerateOptions, aesthetic_score: f32) -> [f32; 5] {
    let (h, w) = o.original_size.unwrap_or((o.height, o.width));
    let (top, left) = o.crops_coords_top_left;
    [h as f32, w as f32, top as f32, left as f32, aesthetic_score]
}

/// `discrete_timestep_cutoff = int(round(T − f·T))`, `f` read as Python reads the f32's
/// shortest decimal (as [`crate::schedulers::begin_index`] reads the strength).
fn cutoff(cfg: &SchedulerConfig, f: f32) -> f32 {
    let f: f64 = format!("{f}").parse().unwrap_or(f as f64);
    let t = cfg.num_train_timesteps as f64;
    (t - f * t).round_ties_even() as f32
}

/// Where the base stops for `denoising_end`: `begin` plus the steps from `begin` whose
/// timestep is ≥ the cutoff (diffusers keeps `timesteps[:count]`).
pub(super) fn end_index(sched: &dyn Scheduler, cfg: &SchedulerConfig, begin: usize, end: f32) -> Result<usize> {
    let c = cutoff(cfg, end);
    let n = sched.timesteps()[begin..].iter().filter(|&&t| t >= c).count();
    if n == 0 {
        return Err(Error::Unsupported(format!(
            "denoising_end {end} leaves the base no step (its first timestep is below the cutoff {c}): raise the switch point, or the strength or steps"
        )));
    }
    Ok(begin + n)
}

/// Where the refiner starts for `denoising_start` (diffusers' `get_timesteps`): the last
/// `count(t < cutoff)` steps, one more for a second-order sampler when that count is even.
pub(super) fn start_index(sched: &dyn Scheduler, cfg: &SchedulerConfig, start: f32) -> Result<usize> {
    let c = cutoff(cfg, start);
    let ts = sched.timesteps();
    let mut n = ts.iter().filter(|&&t| t < c).count();
    if n == 0 {
        return Err(Error::Unsupported(format!(
            "denoising_start {start} leaves the refiner no step (no timestep below the cutoff {c}): lower the switch point or raise the steps"
        )));
    }
    if sched.order() == 2 && n % 2 == 0 {
        n += 1;
    }
    Ok(ts.len() - n.min(ts.len()))
}

/// Rejects what the handoff options and a refiner cannot do, before any model runs.
/// `latents`: whether start latents are handed over.
pub(super) fn check(sd: &StableDiffusion, o: &GenerateOptions, latents: bool) -> Result<()> {
    for (what, v) in [("denoising_start", o.denoising_start), ("denoising_end", o.denoising_end)] {
        if let Some(f) = v {
            if !(f > 0.0 && f < 1.0) {
                return Err(Error::Unsupported(format!("{what} {f} must be in (0, 1): the fraction of the schedule where the refiner takes over")));
            }
        }
    }
    if let (Some(s), Some(e)) = (o.denoising_start, o.denoising_end) {
        if s >= e {
            return Err(Error::Unsupported(format!("denoising_start {s} must be below denoising_end {e}")));
        }
    }
    if o.denoising_start.is_some() && !latents {
        return Err(Error::Unsupported(
            "denoising_start continues latents handed over by a base model (StableDiffusion::generate_refined, CLI --refiner); for an image use --init-image and --strength".into(),
        ));
    }
    if o.denoising_end.is_some() && o.hires.is_some() {
        return Err(Error::Unsupported("a refiner handoff (denoising_end) cannot be combined with the hires fix".into()));
    }
    if sd.refiner.is_some() && o.init_image.is_none() && !latents {
        return Err(Error::Unsupported(format!(
            "{} is an SDXL refiner: it refines an image, it does not start from noise. Use it with an SDXL base (--refiner {} --model BASE), or give an image (--init-image FILE --strength 0.3)",
            sd.name, sd.name
        )));
    }
    Ok(())
}

/// A1111's PNG parameters for a refiner pass.
pub fn a1111_parameters(name: &str, switch: f32) -> String {
    format!(", Refiner: {name}, Refiner switch at: {switch}")
}

impl StableDiffusion {
    /// Whether this model is an SDXL refiner.
    pub fn is_refiner(&self) -> bool {
        self.refiner.is_some()
    }

    /// Base + refiner in one generation (diffusers' ensemble of experts, A1111's refiner):
    /// this SDXL base runs `o` (txt2img, or img2img with `o.init_image`) up to `switch` of the
    /// schedule (`denoising_end`), and `refiner` continues those latents from there
    /// (`denoising_start`) over the same `o.steps` schedule and decodes them. `progress`
    /// counts both parts' evaluations.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn generate_refined(&self, ctx: &Context, refiner: &StableDiffusion, o: &GenerateOptions, switch: f32, progress: impl FnMut(usize, usize)) -> Result<Image> {
        pollster::block_on(self.generate_refined_async(ctx, refiner, o, switch, progress))
    }

    /// [`StableDiffusion::generate_refined`], async.
    pub async fn generate_refined_async(&self, ctx: &Context, refiner: &StableDiffusion, o: &GenerateOptions, switch: f32, mut progress: impl FnMut(usize, usize)) -> Result<Image> {
        if self.sdxl.is_none() {
            let what = if self.is_refiner() { "is a refiner itself" } else { "is not an SDXL model" };
            return Err(Error::Unsupported(format!("a refiner continues an SDXL base's latents; the base model {} {what}", self.name)));
        }
        if !refiner.is_refiner() {
            return Err(Error::Unsupported(format!(
                "{} is not an SDXL refiner (it has a text_encoder, or no SDXL time ids with an aesthetic score): give a stable-diffusion-xl-refiner model as the refiner",
                refiner.name
            )));
        }
        if !(switch > 0.0 && switch < 1.0) {
            return Err(Error::Unsupported(format!("refiner switch {switch} must be in (0, 1), e.g. 0.8 (the base runs the first 80% of the schedule)")));
        }
        let unsupported = [(o.mask.is_some(), "inpainting (--mask)"), (o.hires.is_some(), "the hires fix"), (o.control.is_some(), "ControlNet"), (o.instruct.is_some(), "InstructPix2Pix")];
        if let Some((_, what)) = unsupported.iter().find(|u| u.0) {
            return Err(Error::Unsupported(format!("the refiner handoff cannot be combined with {what} yet")));
        }
        if o.denoising_start.is_some() || o.denoising_end.is_some() {
            return Err(Error::Unsupported("generate_refined sets denoising_start / denoising_end from the switch: leave them unset".into()));
        }
        if refiner.vae.config.latent_channels != self.vae.config.latent_channels {
            return Err(Error::Unsupported(format!("{}'s latents have {} channels, the refiner's {}", self.name, self.vae.config.latent_channels, refiner.vae.config.latent_channels)));
        }
        let base_o = GenerateOptions { denoising_end: Some(switch), ..o.clone() };
        let ref_o = GenerateOptions { denoising_start: Some(switch), init_image: None, gligen: None, ..o.clone() };
        // Both step counts up front, so progress has one total.
        let counts = |sd: &StableDiffusion, start| -> Result<(usize, usize)> {
            let sched = crate::schedulers::build(o.sampler, o.schedule, &sd.scheduler_config, o.steps)?;
            let total = sched.timesteps().len();
            let begin = match (start, &o.init_image) {
                (true, _) => start_index(sched.as_ref(), &sd.scheduler_config, switch)?,
                (false, Some(_)) => crate::schedulers::begin_index(o.steps, o.strength, sched.order()).unwrap_or(total),
                (false, None) => 0,
            };
            let end = if start { total } else { end_index(sched.as_ref(), &sd.scheduler_config, begin.min(total), switch)? };
            Ok((begin, end))
        };
        let (b0, e0) = counts(self, false)?;
        let (b1, e1) = counts(refiner, true)?;
        let (first, total) = (e0 - b0, e0 - b0 + e1 - b1);
        let mut p = |i: usize, _: usize| {
            progress(i, total);
            std::ops::ControlFlow::Continue(())
        };
        let s = self.sample(ctx, &base_o, None, &mut None, &mut p).await?;
        let mut p = |i: usize, _: usize| {
            progress(first + i, total);
            std::ops::ControlFlow::Continue(())
        };
        let s = refiner.sample(ctx, &ref_o, Some(&s.latents), &mut None, &mut p).await?;
        refiner.decode_final(ctx, &s, o.width, o.height, o.decoder).await
    }
}

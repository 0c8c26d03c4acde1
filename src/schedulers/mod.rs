//! Samplers (diffusers schedulers) on the CPU. Latents are tiny (1×4×64×64 at 512²), so every
//! scheduler works on plain `&[f32]` and returns a fresh `Vec<f32>`.
//!
//! Each one reproduces the matching diffusers 0.39 class as `X.from_config(sd_config)` builds it
//! (including that class's own defaults for keys SD's `scheduler_config.json` lacks, e.g.
//! `timestep_spacing`), with the arithmetic done in f32 in torch's operation order so results
//! agree with diffusers on CPU to rounding.
//!
//! The pipeline loop is the same for every sampler, including the second-order Heun whose
//! [`Scheduler::timesteps`] has `2·steps − 1` entries (one per model evaluation):
//!
//! ```ignore
//! let mut rng = TorchRng::new(seed);
//! let mut s = schedulers::build(kind, SigmaSchedule::Normal, &config, steps)?;
//! let mut x: Vec<f32> = rng.randn(n).iter().map(|v| v * s.init_noise_sigma()).collect();
//! for i in 0..s.timesteps().len() {
//!     let t = s.timesteps()[i];
//!     let xin = s.scale_model_input(&x, i);
//!     let (uncond, cond) = unet(&xin, t); // batch [uncond, cond]
//!     let eps = cfg_combine(&uncond, &cond, guidance);
//!     x = s.step(&eps, i, &x, &mut rng);
//! }
//! ```

pub mod ddim;
pub mod ddim_inverse;
pub mod ddpm;
pub mod dpm;
pub mod dpm_sde;
pub mod euler;
pub mod heun;
mod kind;
pub mod lcm;
pub mod lms;
pub mod pndm;
pub mod unipc;

pub use kind::{SamplerKind, SigmaSchedule};

use crate::rng::TorchRng;
use crate::{Error, Result};

/// One sampler. `step` indexes [`Scheduler::timesteps`] (the model-evaluation index) and must be
/// called in order `0, 1, 2, …` once per evaluation; `scale_model_input(x, i)` is the input the
/// UNet gets at evaluation `i`.
pub trait Scheduler: Send {
    /// The timestep passed to the UNet at each model evaluation (fractional for Karras
    /// Euler/LMS/Heun; integers otherwise).
    fn timesteps(&self) -> &[f32];
    /// Factor applied to the initial `randn` noise: 1 for the samplers that work on unit-variance
    /// latents (DDIM, PNDM, DDPM, LCM, DPM++ 2M, UniPC); the sigma samplers override it.
    fn init_noise_sigma(&self) -> f32 {
        1.0
    }
    /// The UNet input for evaluation `step`: the latents as they are, except for the sigma
    /// samplers (Euler, Euler a, LMS, Heun, DPM++ SDE), which override it with `x / √(σ² + 1)`.
    fn scale_model_input(&self, sample: &[f32], _step: usize) -> Vec<f32> {
        sample.to_vec()
    }
    /// One scheduler step: given the (guided) model output at evaluation `step` and the current
    /// latents, returns the next latents. Ancestral samplers (and DDIM with eta > 0) draw their
    /// noise from `rng`, as diffusers draws `randn_tensor(shape, generator=generator)`.
    fn step(&mut self, model_output: &[f32], step: usize, sample: &[f32], rng: &mut TorchRng) -> Vec<f32>;
    /// The sigma schedule (`len(timesteps) + 1` values) for sigma-space samplers.
    fn sigmas(&self) -> Option<&[f32]> {
        None
    }
    /// Number of user-facing inference steps (Heun evaluates the model `2·steps − 1` times).
    fn num_inference_steps(&self) -> usize;
    /// Forgets multistep history so the same schedule can be run again.
    fn reset(&mut self);

    // --- Starting part-way (img2img, inpainting). Provided methods: override where the
    // diffusers class differs. A run that starts at evaluation `b` calls `step(_, b, …)`,
    // `step(_, b + 1, …)`, … on a fresh scheduler (diffusers' `set_begin_index(b)`).

    /// diffusers' `scheduler.order`: evaluations per user step (Heun 2). img2img starts at
    /// evaluation `t_start · order`.
    fn order(&self) -> usize {
        1
    }
    /// `alphas_cumprod` (training schedule) for DDPM-style `add_noise`; `None` for sigma samplers.
    fn alphas_cumprod(&self) -> Option<&[f32]> {
        None
    }
    /// diffusers' `scheduler.add_noise(original, noise, t)` for the timestep of evaluation
    /// `step` (with a begin index set, diffusers' sigma samplers use `sigmas[step_index]`).
    /// Default: `sqrt(ᾱ_t)·x + sqrt(1 − ᾱ_t)·n` when [`Scheduler::alphas_cumprod`] is given
    /// (DDIM, PNDM, DDPM, LCM), else `x + σ·n` from [`Scheduler::sigmas`] (Euler, LMS, Heun,
    /// DPM++ SDE). Schedulers whose latents live in VP form (DPM++ 2M, UniPC: `α_t·x + σ_t·n`)
    /// override it.
    fn add_noise(&self, original: &[f32], noise: &[f32], step: usize) -> Result<Vec<f32>> {
        check_len("add_noise", original, noise);
        if let Some(ac) = self.alphas_cumprod() {
            let a = ac[self.timesteps()[step] as usize];
            let (sa, sb) = (a.sqrt(), (1.0f32 - a).sqrt());
            return Ok(original.iter().zip(noise).map(|(&x, &n)| sa * x + sb * n).collect());
        }
        if let Some(s) = self.sigmas() {
            let sigma = s[step];
            return Ok(original.iter().zip(noise).map(|(&x, &n)| x + n * sigma).collect());
        }
        Err(Error::Unsupported("this sampler cannot start from an image (no add_noise)".into()))
    }
}

/// diffusers' img2img `get_timesteps`: with `steps` user steps and `strength` in (0, 1],
/// `init = min(int(steps · strength), steps)`, `t_start = steps − init`; returns the first
/// evaluation index `t_start · order`, or `None` when no step is left (`init = 0`, which
/// diffusers rejects too). `strength` is read back as the shortest decimal that gives the f32
/// (what the user typed) so that e.g. 0.7 · 10 is 7, as in Python's float64.
pub fn begin_index(steps: usize, strength: f32, order: usize) -> Option<usize> {
    let s: f64 = format!("{strength}").parse().unwrap_or(strength as f64);
    let init = ((steps as f64 * s) as usize).min(steps);
    (init > 0).then(|| (steps - init) * order)
}

/// Classifier-free guidance: `uncond + g · (cond − uncond)`, elementwise in f32 exactly as
/// diffusers computes `noise_pred_uncond + guidance_scale * (noise_pred_text - noise_pred_uncond)`.
pub fn cfg_combine(uncond: &[f32], cond: &[f32], guidance: f32) -> Vec<f32> {
    assert_eq!(uncond.len(), cond.len(), "cfg_combine: uncond and cond lengths differ");
    uncond.iter().zip(cond).map(|(&u, &c)| u + guidance * (c - u)).collect()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BetaSchedule {
    Linear,
    ScaledLinear,
    /// `squaredcos_cap_v2` (Glide cosine schedule, max beta 0.999).
    SquaredCosCapV2,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PredictionType {
    Epsilon,
    VPrediction,
    /// The model predicts x0 directly (`sample` in diffusers).
    Sample,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimestepSpacing {
    Linspace,
    Leading,
    Trailing,
}

/// The keys of a diffusers `scheduler_config.json` that the SD samplers use. `None` means the
/// key was absent and the scheduler class's own default applies (what `from_config` does).
#[derive(Clone, Debug, PartialEq)]
pub struct SchedulerConfig {
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    pub beta_schedule: BetaSchedule,
    pub trained_betas: Option<Vec<f64>>,
    pub prediction_type: PredictionType,
    pub steps_offset: usize,
    /// DDIM default true, PNDM default false.
    pub set_alpha_to_one: Option<bool>,
    /// DDIM default true, Heun default false (others have no such option).
    pub clip_sample: Option<bool>,
    pub clip_sample_range: f64,
    /// DDIM/PNDM default "leading"; Euler, Euler a, LMS, Heun, DPM++ default "linspace".
    pub timestep_spacing: Option<TimestepSpacing>,
    /// PNDM default false (SD configs set true; the PRK warm-up is not implemented).
    pub skip_prk_steps: Option<bool>,
    /// `use_karras_sigmas` from the file (used by `build` when asked for the normal schedule
    /// and the sampler supports Karras sigmas).
    pub use_karras_sigmas: bool,
    /// `use_exponential_sigmas` from the file (as `use_karras_sigmas`).
    pub use_exponential_sigmas: bool,
    /// DDIM/DPM++ option (default false): rescale betas to zero terminal SNR.
    pub rescale_betas_zero_snr: bool,
}

impl Default for SchedulerConfig {
    /// SD 1.x's scheduler config (PNDM keys) without `timestep_spacing`.
    fn default() -> Self {
        SchedulerConfig {
            num_train_timesteps: 1000,
            beta_start: 0.00085,
            beta_end: 0.012,
            beta_schedule: BetaSchedule::ScaledLinear,
            trained_betas: None,
            prediction_type: PredictionType::Epsilon,
            steps_offset: 1,
            set_alpha_to_one: Some(false),
            clip_sample: Some(false),
            clip_sample_range: 1.0,
            timestep_spacing: None,
            skip_prk_steps: Some(true),
            use_karras_sigmas: false,
            use_exponential_sigmas: false,
            rescale_betas_zero_snr: false,
        }
    }
}

fn bad(key: &str, v: &serde_json::Value) -> Error {
    Error::Unsupported(format!("scheduler config: unsupported {key} = {v}"))
}

impl SchedulerConfig {
    /// The config a single-file checkpoint implies (it carries none): SD 1.x's, or SD 2.x's
    /// v-prediction one (SD 2.x 768 models; the 512 "base" models are epsilon and need a
    /// diffusers folder or an explicit config).
    pub fn stable_diffusion_default(v_prediction: bool) -> Self {
        let mut c = SchedulerConfig::default();
        if v_prediction {
            c.prediction_type = PredictionType::VPrediction;
        }
        c
    }

    /// Parses a diffusers `scheduler_config.json` (any scheduler class's; unknown keys are
    /// ignored, absent keys take diffusers' `__init__` defaults).
    pub fn from_json(text: &str) -> Result<Self> {
        let v: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| Error::Unsupported(format!("scheduler config is not valid JSON: {e}")))?;
        Self::from_value(&v)
    }

    /// As [`SchedulerConfig::from_json`] from a parsed JSON object.
    pub fn from_value(v: &serde_json::Value) -> Result<Self> {
        let obj = v.as_object().ok_or_else(|| Error::Unsupported("scheduler config must be a JSON object".into()))?;
        // diffusers' __init__ defaults (shared by the classes we implement).
        let mut c = SchedulerConfig {
            num_train_timesteps: 1000,
            beta_start: 0.0001,
            beta_end: 0.02,
            beta_schedule: BetaSchedule::Linear,
            trained_betas: None,
            prediction_type: PredictionType::Epsilon,
            steps_offset: 0,
            set_alpha_to_one: None,
            clip_sample: None,
            clip_sample_range: 1.0,
            timestep_spacing: None,
            skip_prk_steps: None,
            use_karras_sigmas: false,
            use_exponential_sigmas: false,
            rescale_betas_zero_snr: false,
        };
        let get = |k: &str| obj.get(k).filter(|x| !x.is_null());
        if let Some(x) = get("num_train_timesteps") {
            c.num_train_timesteps =
                x.as_u64().filter(|&n| n >= 2).ok_or_else(|| bad("num_train_timesteps", x))? as usize;
        }
        if let Some(x) = get("beta_start") {
            c.beta_start = x.as_f64().ok_or_else(|| bad("beta_start", x))?;
        }
        if let Some(x) = get("beta_end") {
            c.beta_end = x.as_f64().ok_or_else(|| bad("beta_end", x))?;
        }
        if let Some(x) = get("beta_schedule") {
            c.beta_schedule = match x.as_str() {
                Some("linear") => BetaSchedule::Linear,
                Some("scaled_linear") => BetaSchedule::ScaledLinear,
                Some("squaredcos_cap_v2") => BetaSchedule::SquaredCosCapV2,
                _ => return Err(bad("beta_schedule", x)),
            };
        }
        if let Some(x) = get("trained_betas") {
            let arr = x.as_array().ok_or_else(|| bad("trained_betas", x))?;
            let b: Option<Vec<f64>> = arr.iter().map(|e| e.as_f64()).collect();
            c.trained_betas = Some(b.ok_or_else(|| bad("trained_betas", x))?);
        }
        if let Some(x) = get("prediction_type") {
            c.prediction_type = match x.as_str() {
                Some("epsilon") => PredictionType::Epsilon,
                Some("v_prediction") => PredictionType::VPrediction,
                Some("sample") => PredictionType::Sample,
                _ => return Err(bad("prediction_type", x)),
            };
        }
        if let Some(x) = get("steps_offset") {
            c.steps_offset = x.as_u64().ok_or_else(|| bad("steps_offset", x))? as usize;
        }
        if let Some(x) = get("set_alpha_to_one") {
            c.set_alpha_to_one = Some(x.as_bool().ok_or_else(|| bad("set_alpha_to_one", x))?);
        }
        if let Some(x) = get("clip_sample") {
            c.clip_sample = Some(x.as_bool().ok_or_else(|| bad("clip_sample", x))?);
        }
        if let Some(x) = get("clip_sample_range") {
            c.clip_sample_range = x.as_f64().ok_or_else(|| bad("clip_sample_range", x))?;
        }
        if let Some(x) = get("timestep_spacing") {
            c.timestep_spacing = Some(match x.as_str() {
                Some("linspace") => TimestepSpacing::Linspace,
                Some("leading") => TimestepSpacing::Leading,
                Some("trailing") => TimestepSpacing::Trailing,
                _ => return Err(bad("timestep_spacing", x)),
            });
        }
        if let Some(x) = get("skip_prk_steps") {
            c.skip_prk_steps = Some(x.as_bool().ok_or_else(|| bad("skip_prk_steps", x))?);
        }
        if let Some(x) = get("use_karras_sigmas") {
            c.use_karras_sigmas = x.as_bool().ok_or_else(|| bad("use_karras_sigmas", x))?;
        }
        if let Some(x) = get("use_exponential_sigmas") {
            c.use_exponential_sigmas = x.as_bool().ok_or_else(|| bad("use_exponential_sigmas", x))?;
        }
        if let Some(x) = get("rescale_betas_zero_snr") {
            c.rescale_betas_zero_snr = x.as_bool().ok_or_else(|| bad("rescale_betas_zero_snr", x))?;
        }
        for key in ["thresholding", "use_beta_sigmas", "use_lu_lambdas", "use_flow_sigmas"] {
            if get(key).and_then(|x| x.as_bool()) == Some(true) {
                return Err(Error::Unsupported(format!("scheduler config: {key} = true")));
            }
        }
        Ok(c)
    }

    pub(crate) fn spacing_or(&self, class_default: TimestepSpacing) -> TimestepSpacing {
        self.timestep_spacing.unwrap_or(class_default)
    }

    /// `clip_sample_range` when `clip_sample` is on (absent: the class's own default).
    pub(crate) fn clip_range_or(&self, class_default: bool) -> Option<f32> {
        self.clip_sample.unwrap_or(class_default).then_some(self.clip_sample_range as f32)
    }
}

/// Builds a sampler for `steps` inference steps from a config, applying the class defaults
/// diffusers' `X.from_config(config[, use_karras_sigmas=True | use_exponential_sigmas=True])`
/// would. `Normal` takes the file's `use_karras_sigmas` / `use_exponential_sigmas` where the
/// sampler supports them; an explicit Karras/Exponential the sampler lacks is an error.
pub fn build(kind: SamplerKind, schedule: SigmaSchedule, config: &SchedulerConfig, steps: usize) -> Result<Box<dyn Scheduler>> {
    if steps == 0 || steps > config.num_train_timesteps {
        return Err(Error::Unsupported(format!(
            "{steps} inference steps (must be 1..={})",
            config.num_train_timesteps
        )));
    }
    if !kind.supports_schedule(schedule) {
        let names: Vec<&str> = kind.supported_schedules().iter().map(|s| s.name()).collect();
        let with: Vec<&str> = SamplerKind::ALL
            .iter()
            .filter(|k| k.supports_schedule(schedule))
            .map(|k| k.name())
            .collect();
        return Err(Error::Unsupported(format!(
            "{} sigmas with sampler {} (it supports only: {}; {} sigmas work with {})",
            schedule.a1111_name(),
            kind.name(),
            names.join(", "),
            schedule.name(),
            with.join(", ")
        )));
    }
    let schedule = match schedule {
        SigmaSchedule::Normal if config.use_karras_sigmas && kind.supports_karras() => SigmaSchedule::Karras,
        SigmaSchedule::Normal if config.use_exponential_sigmas && kind.supports_schedule(SigmaSchedule::Exponential) => {
            SigmaSchedule::Exponential
        }
        s => s,
    };
    Ok(match kind {
        SamplerKind::Ddim => Box::new(ddim::Ddim::new(config, steps, 0.0)?),
        SamplerKind::Pndm => Box::new(pndm::Pndm::new(config, steps)?),
        SamplerKind::Lms => Box::new(lms::Lms::new(config, steps, schedule)?),
        SamplerKind::Euler => Box::new(euler::Euler::new(config, steps, schedule)?),
        SamplerKind::EulerAncestral => Box::new(euler::EulerAncestral::new(config, steps)?),
        SamplerKind::Heun => Box::new(heun::Heun::new(config, steps, schedule)?),
        SamplerKind::DpmPlusPlus2M => Box::new(dpm::DpmPlusPlus2M::new(config, steps, schedule)?),
        SamplerKind::DpmPlusPlus2MSde => Box::new(dpm::DpmPlusPlus2M::new_sde(config, steps, schedule)?),
        SamplerKind::DpmPlusPlusSde => Box::new(dpm_sde::DpmPlusPlusSde::new(config, steps, schedule)?),
        SamplerKind::UniPc => Box::new(unipc::UniPc::new(config, steps, schedule)?),
        SamplerKind::Lcm => Box::new(lcm::Lcm::new(config, steps)?),
        SamplerKind::Ddpm => Box::new(ddpm::Ddpm::new(config, steps)?),
    })
}

// ---------------------------------------------------------------------------------------------
// Shared schedule math.

/// `betas` and `alphas_cumprod` as diffusers holds them (torch float32; `cumprod` accumulates in
/// double on CPU and rounds each output).
pub(crate) struct NoiseSchedule {
    pub alphas_cumprod: Vec<f32>,
}

/// `torch.linspace(start, end, n, dtype=float32)` (scalar formula: the first half counts up from
/// `start`, the second half down from `end`).
fn torch_linspace_f32(start: f64, end: f64, n: usize) -> Vec<f32> {
    let (s, e) = (start as f32, end as f32);
    if n == 1 {
        return vec![s];
    }
    let step = (e - s) / (n - 1) as f32;
    let half = n / 2;
    (0..n).map(|i| if i < half { s + step * i as f32 } else { e - step * (n - i - 1) as f32 }).collect()
}

impl NoiseSchedule {
    pub fn new(c: &SchedulerConfig) -> Result<Self> {
        let n = c.num_train_timesteps;
        let betas: Vec<f32> = if let Some(tb) = &c.trained_betas {
            if tb.len() != n {
                return Err(Error::Unsupported(format!("trained_betas has {} entries, expected {n}", tb.len())));
            }
            tb.iter().map(|&b| b as f32).collect()
        } else {
            match c.beta_schedule {
                BetaSchedule::Linear => torch_linspace_f32(c.beta_start, c.beta_end, n),
                BetaSchedule::ScaledLinear => {
                    torch_linspace_f32(c.beta_start.sqrt(), c.beta_end.sqrt(), n).into_iter().map(|b| b * b).collect()
                }
                BetaSchedule::SquaredCosCapV2 => {
                    let ab = |t: f64| ((t + 0.008) / 1.008 * std::f64::consts::PI / 2.0).cos().powi(2);
                    (0..n)
                        .map(|i| {
                            let t1 = i as f64 / n as f64;
                            let t2 = (i + 1) as f64 / n as f64;
                            (1.0 - ab(t2) / ab(t1)).min(0.999) as f32
                        })
                        .collect()
                }
            }
        };
        let mut betas = betas;
        if c.rescale_betas_zero_snr {
            betas = rescale_zero_terminal_snr(&betas);
        }
        let mut acc = 1.0f64;
        let alphas_cumprod: Vec<f32> = betas
            .iter()
            .map(|&b| {
                acc *= (1.0f32 - b) as f64;
                acc as f32
            })
            .collect();
        Ok(NoiseSchedule { alphas_cumprod })
    }

    /// `((1 - ᾱ) / ᾱ) ** 0.5` over all training timesteps (torch f32). A zero terminal ᾱ
    /// (zero-SNR rescaling) becomes 2^-24 first, as the sigma-space schedulers do in diffusers.
    pub fn train_sigmas(&self) -> Vec<f32> {
        let n = self.alphas_cumprod.len();
        self.alphas_cumprod
            .iter()
            .enumerate()
            .map(|(i, &a)| {
                let a = if i == n - 1 && a == 0.0 { 2f32.powi(-24) } else { a };
                ((1.0f32 - a) / a).sqrt()
            })
            .collect()
    }
}

fn rescale_zero_terminal_snr(betas: &[f32]) -> Vec<f32> {
    let mut acc = 1.0f64;
    let mut sqrt_ab: Vec<f64> = betas
        .iter()
        .map(|&b| {
            acc *= 1.0 - b as f64;
            acc.sqrt()
        })
        .collect();
    let a0 = sqrt_ab[0];
    let at = *sqrt_ab.last().unwrap();
    for v in sqrt_ab.iter_mut() {
        *v = (*v - at) * a0 / (a0 - at);
    }
    let ab: Vec<f64> = sqrt_ab.iter().map(|v| v * v).collect();
    let mut out = Vec::with_capacity(ab.len());
    out.push(1.0 - ab[0]);
    for i in 1..ab.len() {
        out.push(1.0 - ab[i] / ab[i - 1]);
    }
    out.into_iter().map(|b| b as f32).collect()
}

/// numpy's round-half-to-even.
pub(crate) fn round_half_even(x: f64) -> f64 {
    let r = x.round();
    if (x - x.trunc()).abs() == 0.5 {
        2.0 * (x / 2.0).round()
    } else {
        r
    }
}

/// `np.linspace(start, stop, n)` in float64 (`i·step + start`, last = stop).
pub(crate) fn np_linspace(start: f64, stop: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![start];
    }
    let step = (stop - start) / (n - 1) as f64;
    let mut v: Vec<f64> = (0..n).map(|i| i as f64 * step + start).collect();
    v[n - 1] = stop;
    v
}

/// DDIM/PNDM-style integer timesteps, ascending (before PNDM's reordering / DDIM's reversal):
/// "leading": `arange(steps)·(N // steps) + offset`; "linspace": `round(linspace(0, N-1))`;
/// "trailing": `round(arange(N, 0, -N/steps)) - 1` (returned ascending).
pub(crate) fn integer_timesteps_ascending(
    spacing: TimestepSpacing,
    n_train: usize,
    steps: usize,
    offset: usize,
) -> Vec<i64> {
    match spacing {
        TimestepSpacing::Leading => {
            let ratio = (n_train / steps) as i64;
            (0..steps as i64).map(|i| i * ratio + offset as i64).collect()
        }
        TimestepSpacing::Linspace => {
            np_linspace(0.0, (n_train - 1) as f64, steps).into_iter().map(|t| round_half_even(t) as i64).collect()
        }
        TimestepSpacing::Trailing => {
            let ratio = n_train as f64 / steps as f64;
            let mut v: Vec<i64> =
                np_arange_down(n_train as f64, ratio).into_iter().map(|t| round_half_even(t) as i64 - 1).collect();
            v.reverse();
            v
        }
    }
}

/// `np.arange(start, 0, -step)` for a positive float step.
pub(crate) fn np_arange_down(start: f64, step: f64) -> Vec<f64> {
    let len = (start / step).ceil() as usize;
    (0..len).map(|i| start + i as f64 * -step).collect()
}

/// `np.interp(x, arange(len(fp)), fp)` in float64.
pub(crate) fn np_interp(x: f64, fp: &[f32]) -> f64 {
    let n = fp.len();
    if x <= 0.0 {
        return fp[0] as f64;
    }
    if x >= (n - 1) as f64 {
        return fp[n - 1] as f64;
    }
    let j = x.floor() as usize;
    let slope = (fp[j + 1] as f64 - fp[j] as f64) / 1.0;
    slope * (x - j as f64) + fp[j] as f64
}

/// `exp(linspace(ln σmax, ln σmin, n))` (float64), diffusers' `_convert_to_exponential`.
pub(crate) fn exponential_sigmas(sigma_min: f64, sigma_max: f64, n: usize) -> Vec<f64> {
    np_linspace(sigma_max.ln(), sigma_min.ln(), n).into_iter().map(f64::exp).collect()
}

/// Karras et al. (2022) sigmas, rho = 7, from `sigma_max` down to `sigma_min` (float64).
pub(crate) fn karras_sigmas(sigma_min: f64, sigma_max: f64, n: usize) -> Vec<f64> {
    let rho = 7.0f64;
    let min_inv = sigma_min.powf(1.0 / rho);
    let max_inv = sigma_max.powf(1.0 / rho);
    np_linspace(0.0, 1.0, n).into_iter().map(|r| (max_inv + r * (min_inv - max_inv)).powf(rho)).collect()
}

/// diffusers' `_sigma_to_t`: the (fractional) training timestep of `sigma` by linear
/// interpolation in log-sigma.
pub(crate) fn sigma_to_t(sigma: f64, log_sigmas: &[f32]) -> f64 {
    let log_sigma = sigma.max(1e-10).ln();
    let n = log_sigmas.len();
    // last index whose log-sigma is <= log_sigma (argmax of the cumulative count), clipped.
    let mut count = 0usize;
    let mut best = 0usize;
    let mut best_count = 0usize;
    for (i, &ls) in log_sigmas.iter().enumerate() {
        if log_sigma - ls as f64 >= 0.0 {
            count += 1;
        }
        if count > best_count {
            best_count = count;
            best = i;
        }
    }
    let low_idx = best.min(n - 2);
    let high_idx = low_idx + 1;
    let low = log_sigmas[low_idx] as f64;
    let high = log_sigmas[high_idx] as f64;
    let w = ((low - log_sigma) / (low - high)).clamp(0.0, 1.0);
    (1.0 - w) * low_idx as f64 + w * high_idx as f64
}

/// The sigma-space schedule shared by Euler, Euler a, LMS and Heun: per-step timesteps (f32)
/// and sigmas (`steps + 1`, f32, ending in 0).
///
/// `linspace_f32` mirrors the classes that build the "linspace" timesteps with
/// `dtype=np.float32` (Euler, Heun) rather than float64 (Euler a, LMS).
pub(crate) fn discrete_sigma_schedule(
    c: &SchedulerConfig,
    steps: usize,
    schedule: SigmaSchedule,
    linspace_f32: bool,
) -> Result<(Vec<f32>, Vec<f32>, TimestepSpacing)> {
    let (ts, sigmas, spacing) = discrete_sigma_schedule_f64(c, steps, schedule, linspace_f32)?;
    let mut sig32: Vec<f32> = sigmas.iter().map(|&s| s as f32).collect();
    sig32.push(0.0);
    Ok((ts.iter().map(|&t| t as f32).collect(), sig32, spacing))
}

/// As [`discrete_sigma_schedule`] before the f32 cast, without the final 0 (DPM++ SDE derives
/// its midpoint timesteps from these float64 sigmas).
pub(crate) fn discrete_sigma_schedule_f64(
    c: &SchedulerConfig,
    steps: usize,
    schedule: SigmaSchedule,
    linspace_f32: bool,
) -> Result<(Vec<f64>, Vec<f64>, TimestepSpacing)> {
    let sched = NoiseSchedule::new(c)?;
    let n = c.num_train_timesteps;
    let spacing = c.spacing_or(TimestepSpacing::Linspace);
    let ts: Vec<f64> = match spacing {
        TimestepSpacing::Linspace => {
            let mut v = np_linspace(0.0, (n - 1) as f64, steps);
            if linspace_f32 {
                v = v.into_iter().map(|t| t as f32 as f64).collect();
            }
            v.reverse();
            v
        }
        TimestepSpacing::Leading => {
            let ratio = (n / steps) as f64;
            let mut v: Vec<f64> =
                (0..steps).map(|i| (i as f64 * ratio).round() as f32 as f64 + c.steps_offset as f64).collect();
            v.reverse();
            v
        }
        TimestepSpacing::Trailing => {
            let ratio = n as f64 / steps as f64;
            np_arange_down(n as f64, ratio).into_iter().map(|t| round_half_even(t) as f32 as f64 - 1.0).collect()
        }
    };
    let train_sigmas = sched.train_sigmas();
    let log_sigmas: Vec<f32> = train_sigmas.iter().map(|s| s.ln()).collect();
    let mut sigmas: Vec<f64> = ts.iter().map(|&t| np_interp(t, &train_sigmas)).collect();
    let mut ts = ts;
    if schedule != SigmaSchedule::Normal {
        let (smin, smax) = (*sigmas.last().unwrap(), sigmas[0]);
        sigmas = match schedule {
            SigmaSchedule::Karras => karras_sigmas(smin, smax, steps),
            _ => exponential_sigmas(smin, smax, steps),
        };
        ts = sigmas.iter().map(|&s| sigma_to_t(s, &log_sigmas)).collect();
    }
    Ok((ts, sigmas, spacing))
}

/// Euler/LMS/Heun/Euler a initial noise scale: σmax for "linspace"/"trailing", else
/// `sqrt(σmax² + 1)`.
pub(crate) fn sigma_init_noise(sigmas: &[f32], spacing: TimestepSpacing) -> f32 {
    let max = sigmas.iter().cloned().fold(f32::MIN, f32::max);
    match spacing {
        TimestepSpacing::Linspace | TimestepSpacing::Trailing => max,
        TimestepSpacing::Leading => (max * max + 1.0).sqrt(),
    }
}

/// `sample / ((σ² + 1) ** 0.5)` (f32, torch order).
pub(crate) fn scale_by_sigma(sample: &[f32], sigma: f32) -> Vec<f32> {
    let d = (sigma * sigma + 1.0).sqrt();
    sample.iter().map(|&x| x / d).collect()
}

/// x0 prediction in sigma space (Euler/LMS/Heun/Euler a):
/// epsilon `x − σ·ε`; v `ε·(−σ/√(σ²+1)) + x/(σ²+1)`; sample: the output itself.
pub(crate) fn sigma_pred_x0(pred: PredictionType, model_output: &[f32], sample: &[f32], sigma: f32) -> Vec<f32> {
    match pred {
        PredictionType::Epsilon => sample.iter().zip(model_output).map(|(&x, &e)| x - sigma * e).collect(),
        PredictionType::VPrediction => {
            let s2p1 = sigma * sigma + 1.0;
            let c_out = -sigma / s2p1.sqrt();
            sample.iter().zip(model_output).map(|(&x, &v)| v * c_out + x / s2p1).collect()
        }
        PredictionType::Sample => model_output.to_vec(),
    }
}

pub(crate) fn check_len(what: &str, a: &[f32], b: &[f32]) {
    assert_eq!(a.len(), b.len(), "{what}: model_output and sample lengths differ");
}

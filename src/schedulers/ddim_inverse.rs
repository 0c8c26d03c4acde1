//! DDIM inversion (`DDIMInverseScheduler`): the deterministic DDIM step run backwards, from a
//! clean latent towards noise (DiffEdit's `invert`). Timesteps ascend (DDIM's, not reversed);
//! step `i` moves the sample from `timesteps[i] − N // steps` (the initial alpha below 0) to
//! `timesteps[i]`, with the model evaluated at `timesteps[i]`, the destination, as diffusers does.

use super::ddim::predict;
use super::{integer_timesteps_ascending, NoiseSchedule, PredictionType, SchedulerConfig, TimestepSpacing};
use crate::{Error, Result};

pub struct DdimInverse {
    ts: Vec<i64>,
    alphas_cumprod: Vec<f32>,
    initial_alpha_cumprod: f32,
    prediction: PredictionType,
    clip: Option<f32>,
    step_ratio: i64,
}

impl DdimInverse {
    /// As `DDIMInverseScheduler.from_config(config)` with `set_timesteps(steps)`: class defaults
    /// `timestep_spacing = "leading"`, `set_alpha_to_one = true`, `clip_sample = true`.
    pub fn new(c: &SchedulerConfig, steps: usize) -> Result<Self> {
        if steps == 0 || steps > c.num_train_timesteps {
            return Err(Error::Unsupported(format!("DDIM inversion: {steps} steps must be in 1..={}", c.num_train_timesteps)));
        }
        let spacing = c.spacing_or(TimestepSpacing::Leading);
        if spacing == TimestepSpacing::Linspace {
            return Err(Error::Unsupported("DDIM inversion supports leading or trailing timestep spacing (as diffusers' DDIMInverseScheduler), not linspace".into()));
        }
        let sched = NoiseSchedule::new(c)?;
        let offset = if spacing == TimestepSpacing::Leading { c.steps_offset } else { 0 };
        let initial_alpha_cumprod = if c.set_alpha_to_one.unwrap_or(true) { 1.0 } else { sched.alphas_cumprod[0] };
        Ok(DdimInverse {
            ts: integer_timesteps_ascending(spacing, c.num_train_timesteps, steps, offset),
            alphas_cumprod: sched.alphas_cumprod,
            initial_alpha_cumprod,
            prediction: c.prediction_type,
            clip: c.clip_range_or(true),
            step_ratio: (c.num_train_timesteps / steps) as i64,
        })
    }

    /// Ascending timesteps, one model evaluation each.
    pub fn timesteps(&self) -> &[i64] {
        &self.ts
    }

    /// The sample one step noisier: from `timesteps[step] − ratio` to `timesteps[step]`.
    pub fn step(&self, model_output: &[f32], step: usize, sample: &[f32]) -> Vec<f32> {
        super::check_len("ddim inverse", model_output, sample);
        let to = self.ts[step];
        let from = (to - self.step_ratio).min(self.alphas_cumprod.len() as i64 - 1);
        let a_t = if from >= 0 { self.alphas_cumprod[from as usize] } else { self.initial_alpha_cumprod };
        let a_next = self.alphas_cumprod[to as usize];
        let (x0, eps) = predict(self.prediction, self.clip, model_output, sample, a_t);
        let (sa, dir) = (a_next.sqrt(), (1.0f32 - a_next).sqrt());
        x0.iter().zip(&eps).map(|(&p, &e)| sa * p + dir * e).collect()
    }
}

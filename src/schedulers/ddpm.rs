//! DDPM (`DDPMScheduler` with its defaults: `variance_type "fixed_small"`, `timestep_spacing
//! "leading"`, `clip_sample` true unless the config says otherwise — SD's says false). Ancestral:
//! each step moves to the posterior mean and adds `√variance · z` with `z` from the generator
//! (whenever t > 0).

use super::{
    check_len, integer_timesteps_ascending, NoiseSchedule, PredictionType, Scheduler, SchedulerConfig, TimestepSpacing,
};
use crate::rng::TorchRng;
use crate::Result;

pub struct Ddpm {
    timesteps: Vec<f32>,
    ts: Vec<i64>,
    alphas_cumprod: Vec<f32>,
    prediction: PredictionType,
    clip: Option<f32>,
    steps: usize,
}

impl Ddpm {
    pub fn new(c: &SchedulerConfig, steps: usize) -> Result<Self> {
        let sched = NoiseSchedule::new(c)?;
        let spacing = c.spacing_or(TimestepSpacing::Leading);
        let offset = if spacing == TimestepSpacing::Leading { c.steps_offset } else { 0 };
        let mut ts = integer_timesteps_ascending(spacing, c.num_train_timesteps, steps, offset);
        ts.reverse();
        Ok(Ddpm {
            timesteps: ts.iter().map(|&t| t as f32).collect(),
            ts,
            alphas_cumprod: sched.alphas_cumprod,
            prediction: c.prediction_type,
            clip: c.clip_range_or(true),
            steps,
        })
    }
}

impl Scheduler for Ddpm {
    fn timesteps(&self) -> &[f32] {
        &self.timesteps
    }
    /// img2img noises with `sqrt(ᾱ_t)·x + sqrt(1 − ᾱ_t)·n` (the trait's default).
    fn alphas_cumprod(&self) -> Option<&[f32]> {
        Some(&self.alphas_cumprod)
    }
    fn step(&mut self, model_output: &[f32], step: usize, sample: &[f32], rng: &mut TorchRng) -> Vec<f32> {
        check_len("ddpm", model_output, sample);
        let t = self.ts[step];
        // previous_timestep: the next entry of the schedule, −1 (ᾱ = 1) after the last.
        let a_t = self.alphas_cumprod[t as usize];
        let a_prev = match self.ts.get(step + 1) {
            Some(&p) if p >= 0 => self.alphas_cumprod[p as usize],
            _ => 1.0,
        };
        let b_t = 1.0f32 - a_t;
        let b_prev = 1.0f32 - a_prev;
        let cur_alpha = a_t / a_prev;
        let cur_beta = 1.0f32 - cur_alpha;
        let (sa, sb) = (a_t.sqrt(), b_t.sqrt());
        let mut x0: Vec<f32> = match self.prediction {
            PredictionType::Epsilon => sample.iter().zip(model_output).map(|(&x, &e)| (x - sb * e) / sa).collect(),
            PredictionType::Sample => model_output.to_vec(),
            PredictionType::VPrediction => sample.iter().zip(model_output).map(|(&x, &v)| sa * x - sb * v).collect(),
        };
        if let Some(r) = self.clip {
            for v in x0.iter_mut() {
                *v = v.clamp(-r, r);
            }
        }
        let c_x0 = (a_prev.sqrt() * cur_beta) / b_t;
        let c_x = cur_alpha.sqrt() * b_prev / b_t;
        let mean: Vec<f32> = x0.iter().zip(sample).map(|(&p, &x)| c_x0 * p + c_x * x).collect();
        if t <= 0 {
            return mean;
        }
        let noise = rng.randn(sample.len());
        // fixed_small: variance = clamp((1 − ᾱ_prev)/(1 − ᾱ_t) · β_t, 1e-20), std = √variance
        let std = ((b_prev / b_t) * cur_beta).max(1e-20).sqrt();
        mean.iter().zip(&noise).map(|(&m, &z)| m + std * z).collect()
    }
    fn num_inference_steps(&self) -> usize {
        self.steps
    }
    fn reset(&mut self) {}
}

//! Euler (`EulerDiscreteScheduler`) and Euler ancestral (`EulerAncestralDiscreteScheduler`),
//! with `s_churn = 0` (diffusers' default: no stochastic churn).

use super::{
    check_len, discrete_sigma_schedule, scale_by_sigma, sigma_init_noise, sigma_pred_x0, PredictionType, Scheduler,
    SchedulerConfig, SigmaSchedule,
};
use crate::rng::TorchRng;
use crate::Result;

/// Euler method in sigma space: `x ← x + (x − x0)/σ · (σ_next − σ)`.
pub struct Euler {
    timesteps: Vec<f32>,
    sigmas: Vec<f32>,
    init_sigma: f32,
    prediction: PredictionType,
    steps: usize,
}

impl Euler {
    pub fn new(c: &SchedulerConfig, steps: usize, schedule: SigmaSchedule) -> Result<Self> {
        let (timesteps, sigmas, spacing) = discrete_sigma_schedule(c, steps, schedule, true)?;
        let init_sigma = sigma_init_noise(&sigmas, spacing);
        Ok(Euler { timesteps, sigmas, init_sigma, prediction: c.prediction_type, steps })
    }
}

impl Scheduler for Euler {
    fn timesteps(&self) -> &[f32] {
        &self.timesteps
    }
    fn init_noise_sigma(&self) -> f32 {
        self.init_sigma
    }
    fn scale_model_input(&self, sample: &[f32], step: usize) -> Vec<f32> {
        scale_by_sigma(sample, self.sigmas[step])
    }
    fn step(&mut self, model_output: &[f32], step: usize, sample: &[f32], _rng: &mut TorchRng) -> Vec<f32> {
        check_len("euler", model_output, sample);
        let sigma = self.sigmas[step];
        let sigma_hat = sigma; // gamma = 0 (s_churn = 0)
        let x0 = sigma_pred_x0(self.prediction, model_output, sample, sigma);
        let dt = self.sigmas[step + 1] - sigma_hat;
        sample
            .iter()
            .zip(&x0)
            .map(|(&x, &p)| {
                let d = (x - p) / sigma_hat;
                x + d * dt
            })
            .collect()
    }
    fn sigmas(&self) -> Option<&[f32]> {
        Some(&self.sigmas)
    }
    fn num_inference_steps(&self) -> usize {
        self.steps
    }
    fn reset(&mut self) {}
}

/// Euler ancestral: an Euler step to `σ_down` plus fresh noise of scale `σ_up`, drawn from the
/// generator at every step (including the last, where `σ_up = 0`), as diffusers does.
pub struct EulerAncestral {
    timesteps: Vec<f32>,
    sigmas: Vec<f32>,
    init_sigma: f32,
    prediction: PredictionType,
    steps: usize,
}

impl EulerAncestral {
    pub fn new(c: &SchedulerConfig, steps: usize) -> Result<Self> {
        let (timesteps, sigmas, spacing) = discrete_sigma_schedule(c, steps, SigmaSchedule::Normal, false)?;
        let init_sigma = sigma_init_noise(&sigmas, spacing);
        Ok(EulerAncestral { timesteps, sigmas, init_sigma, prediction: c.prediction_type, steps })
    }
}

impl Scheduler for EulerAncestral {
    fn timesteps(&self) -> &[f32] {
        &self.timesteps
    }
    fn init_noise_sigma(&self) -> f32 {
        self.init_sigma
    }
    fn scale_model_input(&self, sample: &[f32], step: usize) -> Vec<f32> {
        scale_by_sigma(sample, self.sigmas[step])
    }
    fn step(&mut self, model_output: &[f32], step: usize, sample: &[f32], rng: &mut TorchRng) -> Vec<f32> {
        check_len("euler-a", model_output, sample);
        let sigma = self.sigmas[step];
        let x0 = sigma_pred_x0(self.prediction, model_output, sample, sigma);
        let (from, to) = (sigma, self.sigmas[step + 1]);
        let sigma_up = (to * to * (from * from - to * to) / (from * from)).sqrt();
        let sigma_down = (to * to - sigma_up * sigma_up).sqrt();
        let dt = sigma_down - sigma;
        let noise = rng.randn(sample.len());
        sample
            .iter()
            .zip(&x0)
            .zip(&noise)
            .map(|((&x, &p), &n)| {
                let d = (x - p) / sigma;
                let prev = x + d * dt;
                prev + n * sigma_up
            })
            .collect()
    }
    fn sigmas(&self) -> Option<&[f32]> {
        Some(&self.sigmas)
    }
    fn num_inference_steps(&self) -> usize {
        self.steps
    }
    fn reset(&mut self) {}
}

//! Heun (`HeunDiscreteScheduler`): second order, two model evaluations per step except the
//! last. Its schedule repeats every interior sigma/timestep, so `timesteps()` has
//! `2·steps − 1` entries; evaluations alternate first-order (Euler predictor, state saved) and
//! second-order (trapezoid corrector from the saved state). The final evaluation (σ → 0) is a
//! plain Euler step.

use super::{
    check_len, discrete_sigma_schedule, scale_by_sigma, sigma_init_noise, sigma_pred_x0, PredictionType, Scheduler,
    SchedulerConfig, SigmaSchedule,
};
use crate::rng::TorchRng;
use crate::Result;

pub struct Heun {
    timesteps: Vec<f32>,
    sigmas: Vec<f32>,
    init_sigma: f32,
    prediction: PredictionType,
    clip: Option<f32>,
    steps: usize,
    /// (derivative, dt, sample) saved by the first-order half.
    saved: Option<(Vec<f32>, f32, Vec<f32>)>,
}

impl Heun {
    pub fn new(c: &SchedulerConfig, steps: usize, schedule: SigmaSchedule) -> Result<Self> {
        let (ts, sig, spacing) = discrete_sigma_schedule(c, steps, schedule, true)?;
        // sigmas: [s0, s1, s1, s2, s2, …, s_{n-1}, s_{n-1}, 0]; timesteps: [t0, t1, t1, …].
        let mut sigmas = vec![sig[0]];
        for &s in &sig[1..sig.len() - 1] {
            sigmas.push(s);
            sigmas.push(s);
        }
        sigmas.push(*sig.last().unwrap());
        let mut timesteps = vec![ts[0]];
        for &t in &ts[1..] {
            timesteps.push(t);
            timesteps.push(t);
        }
        let init_sigma = sigma_init_noise(&sigmas, spacing);
        let clip = c.clip_range_or(false);
        Ok(Heun { timesteps, sigmas, init_sigma, prediction: c.prediction_type, clip, steps, saved: None })
    }
}

impl Scheduler for Heun {
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
        check_len("heun", model_output, sample);
        let first_order = self.saved.is_none();
        let (sigma, sigma_next) = if first_order {
            (self.sigmas[step], self.sigmas[step + 1])
        } else {
            (self.sigmas[step - 1], self.sigmas[step])
        };
        let sigma_hat = sigma; // gamma = 0
        let sigma_input = if first_order { sigma_hat } else { sigma_next };
        let mut x0 = sigma_pred_x0(self.prediction, model_output, sample, sigma_input);
        if let Some(r) = self.clip {
            for v in x0.iter_mut() {
                *v = v.clamp(-r, r);
            }
        }
        if first_order {
            let derivative: Vec<f32> = sample.iter().zip(&x0).map(|(&x, &p)| (x - p) / sigma_hat).collect();
            let dt = sigma_next - sigma_hat;
            let out = sample.iter().zip(&derivative).map(|(&x, &d)| x + d * dt).collect();
            self.saved = Some((derivative, dt, sample.to_vec()));
            out
        } else {
            let (prev_d, dt, saved_sample) = self.saved.take().unwrap();
            saved_sample
                .iter()
                .zip(sample.iter().zip(&x0))
                .zip(&prev_d)
                .map(|((&xs, (&x, &p)), &pd)| {
                    let d = (x - p) / sigma_next;
                    let d = (pd + d) / 2.0;
                    xs + d * dt
                })
                .collect()
        }
    }
    fn sigmas(&self) -> Option<&[f32]> {
        Some(&self.sigmas)
    }
    fn num_inference_steps(&self) -> usize {
        self.steps
    }
    fn order(&self) -> usize {
        2
    }
    fn reset(&mut self) {
        self.saved = None;
    }
}

//! DPM-Solver++ 2M (`DPMSolverMultistepScheduler` with its defaults: `algorithm_type
//! "dpmsolver++"`, `solver_order 2`, `solver_type "midpoint"`, `lower_order_final`,
//! `final_sigmas_type "zero"`). Works on x0 predictions in log-SNR (λ) time: first order on the
//! first step and on the final step (to σ = 0), second-order multistep in between.
//!
//! Unlike Euler/LMS/Heun, diffusers rounds Karras timesteps to integers here.

use super::{
    check_len, karras_sigmas, np_interp, np_linspace, round_half_even, sigma_to_t, NoiseSchedule, PredictionType,
    Scheduler, SchedulerConfig, TimestepSpacing,
};
use crate::rng::TorchRng;
use crate::Result;

pub struct DpmPlusPlus2M {
    timesteps: Vec<f32>,
    sigmas: Vec<f32>,
    prediction: PredictionType,
    steps: usize,
    /// x0 predictions: [previous, latest].
    model_outputs: [Option<Vec<f32>>; 2],
    lower_order_nums: usize,
}

/// `(α_t, σ_t)` of a sigma: `α = 1/√(σ²+1)`, `σ_t = σ·α` (f32).
fn alpha_sigma(sigma: f32) -> (f32, f32) {
    let a = 1.0f32 / (sigma * sigma + 1.0).sqrt();
    (a, sigma * a)
}

/// `λ = ln α − ln σ_t` (+∞ at σ = 0).
fn lambda(a: f32, s: f32) -> f32 {
    a.ln() - s.ln()
}

impl DpmPlusPlus2M {
    pub fn new(c: &SchedulerConfig, steps: usize, karras: bool) -> Result<Self> {
        let sched = NoiseSchedule::new(c)?;
        let n = c.num_train_timesteps;
        // lambda_min_clipped = -inf → last_timestep = N.
        let last = n as f64;
        let spacing = c.spacing_or(TimestepSpacing::Linspace);
        let mut ts: Vec<f64> = match spacing {
            TimestepSpacing::Linspace => {
                let mut v: Vec<f64> =
                    np_linspace(0.0, last - 1.0, steps + 1).into_iter().map(round_half_even).collect();
                v.reverse();
                v.truncate(steps);
                v
            }
            TimestepSpacing::Leading => {
                let ratio = (last as usize / (steps + 1)) as f64;
                let mut v: Vec<f64> = (0..=steps).map(|i| (i as f64 * ratio).round()).collect();
                v.reverse();
                v.truncate(steps);
                v.into_iter().map(|t| t + c.steps_offset as f64).collect()
            }
            TimestepSpacing::Trailing => {
                let ratio = n as f64 / steps as f64;
                super::np_arange_down(last, ratio).into_iter().map(|t| round_half_even(t) - 1.0).collect()
            }
        };
        let train_sigmas = sched.train_sigmas();
        let log_sigmas: Vec<f32> = train_sigmas.iter().map(|s| s.ln()).collect();
        let mut sigmas: Vec<f32> = if karras {
            // in_sigmas = flip(train sigmas): σmax = σ(N−1), σmin = σ(0).
            let ks = karras_sigmas(train_sigmas[0] as f64, train_sigmas[n - 1] as f64, steps);
            ts = ks.iter().map(|&s| round_half_even(sigma_to_t(s, &log_sigmas))).collect();
            ks.iter().map(|&s| s as f32).collect()
        } else {
            ts.iter().map(|&t| np_interp(t, &train_sigmas) as f32).collect()
        };
        sigmas.push(0.0); // final_sigmas_type "zero"
        Ok(DpmPlusPlus2M {
            timesteps: ts.iter().map(|&t| t as f32).collect(),
            sigmas,
            prediction: c.prediction_type,
            steps,
            model_outputs: [None, None],
            lower_order_nums: 0,
        })
    }

    fn convert(&self, model_output: &[f32], sample: &[f32], step: usize) -> Vec<f32> {
        let (a, s) = alpha_sigma(self.sigmas[step]);
        match self.prediction {
            PredictionType::Epsilon => sample.iter().zip(model_output).map(|(&x, &e)| (x - s * e) / a).collect(),
            PredictionType::VPrediction => sample.iter().zip(model_output).map(|(&x, &v)| a * x - s * v).collect(),
            PredictionType::Sample => model_output.to_vec(),
        }
    }
}

impl Scheduler for DpmPlusPlus2M {
    fn timesteps(&self) -> &[f32] {
        &self.timesteps
    }
    fn init_noise_sigma(&self) -> f32 {
        1.0
    }
    fn scale_model_input(&self, sample: &[f32], _step: usize) -> Vec<f32> {
        sample.to_vec()
    }
    fn step(&mut self, model_output: &[f32], step: usize, sample: &[f32], _rng: &mut TorchRng) -> Vec<f32> {
        check_len("dpmpp-2m", model_output, sample);
        let n = self.timesteps.len();
        // final_sigmas_type "zero" makes the last step first order; lower_order_final (< 15
        // steps) makes the second-to-last one second order, which it is anyway at order 2.
        let lower_order_final = step == n - 1;
        let m0 = self.convert(model_output, sample, step);
        self.model_outputs[0] = self.model_outputs[1].take();
        self.model_outputs[1] = Some(m0);
        let m0 = self.model_outputs[1].as_ref().unwrap();

        let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[step + 1]);
        let (alpha_s0, sigma_s0) = alpha_sigma(self.sigmas[step]);
        let lambda_t = lambda(alpha_t, sigma_t);
        let lambda_s0 = lambda(alpha_s0, sigma_s0);
        let h = lambda_t - lambda_s0;
        let ratio = sigma_t / sigma_s0;
        let coef = alpha_t * ((-h).exp() - 1.0);
        let out = if self.lower_order_nums < 1 || lower_order_final {
            sample.iter().zip(m0).map(|(&x, &d0)| ratio * x - coef * d0).collect()
        } else {
            let m1 = self.model_outputs[0].as_ref().unwrap();
            let (alpha_s1, sigma_s1) = alpha_sigma(self.sigmas[step - 1]);
            let lambda_s1 = lambda(alpha_s1, sigma_s1);
            let h0 = lambda_s0 - lambda_s1;
            let r0 = h0 / h;
            let inv_r0 = 1.0f32 / r0;
            sample
                .iter()
                .zip(m0.iter().zip(m1))
                .map(|(&x, (&a, &b))| {
                    let d1 = inv_r0 * (a - b);
                    ratio * x - coef * a - 0.5 * coef * d1
                })
                .collect()
        };
        if self.lower_order_nums < 2 {
            self.lower_order_nums += 1;
        }
        out
    }
    fn sigmas(&self) -> Option<&[f32]> {
        Some(&self.sigmas)
    }
    fn num_inference_steps(&self) -> usize {
        self.steps
    }
    /// VP form: `α_t·x + σ_t·n` with `(α_t, σ_t)` of `sigmas[step]`.
    fn add_noise(&self, original: &[f32], noise: &[f32], step: usize) -> Result<Vec<f32>> {
        check_len("dpmpp-2m add_noise", original, noise);
        let (a, s) = alpha_sigma(self.sigmas[step]);
        Ok(original.iter().zip(noise).map(|(&x, &n)| a * x + s * n).collect())
    }
    fn reset(&mut self) {
        self.model_outputs = [None, None];
        self.lower_order_nums = 0;
    }
}

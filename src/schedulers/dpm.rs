//! DPM-Solver++ 2M (`DPMSolverMultistepScheduler` with its defaults: `algorithm_type
//! "dpmsolver++"`, `solver_order 2`, `solver_type "midpoint"`, `lower_order_final`,
//! `final_sigmas_type "zero"`). Works on x0 predictions in log-SNR (λ) time: first order on the
//! first step and on the final step (to σ = 0), second-order multistep in between.
//!
//! DPM++ 2M SDE (`algorithm_type "sde-dpmsolver++"`) is the same multistep solver with an
//! `e^{-h}`-damped sample term and fresh noise `σ_t·√(1 − e^{−2h})·z` drawn from the generator at
//! every step (including the last, where it is multiplied by σ = 0), as diffusers draws it.
//!
//! Unlike Euler/LMS/Heun, diffusers rounds Karras timesteps to integers here and truncates the
//! fractional exponential-schedule ones (`.to(int64)`).

use super::{
    check_len, exponential_sigmas, karras_sigmas, np_interp, np_linspace, round_half_even, sigma_to_t, BetaSchedule,
    NoiseSchedule, PredictionType, Scheduler, SchedulerConfig, SigmaSchedule, TimestepSpacing,
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
    sde: bool,
}

/// `(α_t, σ_t)` of a sigma: `α = 1/√(σ²+1)`, `σ_t = σ·α` (f32).
pub(crate) fn alpha_sigma(sigma: f32) -> (f32, f32) {
    let a = 1.0f32 / (sigma * sigma + 1.0).sqrt();
    (a, sigma * a)
}

/// `λ = ln α − ln σ_t` (+∞ at σ = 0).
pub(crate) fn lambda(a: f32, s: f32) -> f32 {
    a.ln() - s.ln()
}

/// The integer timesteps and `steps + 1` sigmas (ending in 0, `final_sigmas_type "zero"`) that
/// `DPMSolverMultistepScheduler` and `UniPCMultistepScheduler` share. `round_karras`: whether
/// Karras timesteps are rounded (DPM++ skips that for `squaredcos_cap_v2`, UniPC never does).
pub(crate) fn multistep_schedule(
    c: &SchedulerConfig,
    steps: usize,
    schedule: SigmaSchedule,
    round_karras: bool,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let sched = NoiseSchedule::new(c)?;
    let n = c.num_train_timesteps;
    // lambda_min_clipped = -inf → last_timestep = N.
    let last = n as f64;
    let spacing = c.spacing_or(TimestepSpacing::Linspace);
    let ts: Vec<f64> = match spacing {
        TimestepSpacing::Linspace => {
            let mut v: Vec<f64> = np_linspace(0.0, last - 1.0, steps + 1).into_iter().map(round_half_even).collect();
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
    // in_sigmas = flip(train sigmas): σmax = σ(N−1), σmin = σ(0).
    let (smin, smax) = (train_sigmas[0] as f64, train_sigmas[n - 1] as f64);
    let (ts, mut sigmas): (Vec<f64>, Vec<f32>) = match schedule {
        SigmaSchedule::Normal => {
            let sig = ts.iter().map(|&t| np_interp(t, &train_sigmas) as f32).collect();
            (ts, sig)
        }
        SigmaSchedule::Karras => {
            let ks = karras_sigmas(smin, smax, steps);
            let t = ks.iter().map(|&s| sigma_to_t(s, &log_sigmas)).map(|t| if round_karras { round_half_even(t) } else { t.trunc() });
            (t.collect(), ks.iter().map(|&s| s as f32).collect())
        }
        SigmaSchedule::Exponential => {
            let es = exponential_sigmas(smin, smax, steps);
            (es.iter().map(|&s| sigma_to_t(s, &log_sigmas).trunc()).collect(), es.iter().map(|&s| s as f32).collect())
        }
    };
    sigmas.push(0.0); // final_sigmas_type "zero"
    Ok((ts.iter().map(|&t| t as f32).collect(), sigmas))
}

impl DpmPlusPlus2M {
    /// DPM++ 2M (`algorithm_type "dpmsolver++"`).
    pub fn new(c: &SchedulerConfig, steps: usize, schedule: SigmaSchedule) -> Result<Self> {
        let round = c.beta_schedule != BetaSchedule::SquaredCosCapV2;
        let (timesteps, sigmas) = multistep_schedule(c, steps, schedule, round)?;
        Ok(DpmPlusPlus2M {
            timesteps,
            sigmas,
            prediction: c.prediction_type,
            steps,
            model_outputs: [None, None],
            lower_order_nums: 0,
            sde: false,
        })
    }

    /// DPM++ 2M SDE (`algorithm_type "sde-dpmsolver++"`).
    pub fn new_sde(c: &SchedulerConfig, steps: usize, schedule: SigmaSchedule) -> Result<Self> {
        Ok(DpmPlusPlus2M { sde: true, ..Self::new(c, steps, schedule)? })
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

impl DpmPlusPlus2M {
    /// The `sde-dpmsolver++` first-order / midpoint second-order update (torch's op order:
    /// scalar coefficients first, then `c1·x + c2·D0 [+ c3·D1] + c4·z` left to right).
    fn sde_update(
        &self,
        sample: &[f32],
        noise: &[f32],
        step: usize,
        lower_order_final: bool,
        (alpha_t, sigma_t, sigma_s0, lambda_s0, h): (f32, f32, f32, f32, f32),
    ) -> Vec<f32> {
        let m0 = self.model_outputs[1].as_ref().unwrap();
        let e = (-h).exp();
        let c_x = sigma_t / sigma_s0 * e;
        let c_d = alpha_t * (1.0f32 - (-2.0f32 * h).exp());
        let c_z = sigma_t * (1.0f32 - (-2.0f32 * h).exp()).sqrt();
        if self.lower_order_nums < 1 || lower_order_final {
            sample.iter().zip(m0).zip(noise).map(|((&x, &d0), &z)| c_x * x + c_d * d0 + c_z * z).collect()
        } else {
            let m1 = self.model_outputs[0].as_ref().unwrap();
            let (alpha_s1, sigma_s1) = alpha_sigma(self.sigmas[step - 1]);
            let h0 = lambda_s0 - lambda(alpha_s1, sigma_s1);
            let inv_r0 = 1.0f32 / (h0 / h);
            let c_d1 = 0.5f32 * c_d;
            sample
                .iter()
                .zip(m0.iter().zip(m1))
                .zip(noise)
                .map(|((&x, (&a, &b)), &z)| {
                    let d1 = inv_r0 * (a - b);
                    c_x * x + c_d * a + c_d1 * d1 + c_z * z
                })
                .collect()
        }
    }
}

impl Scheduler for DpmPlusPlus2M {
    fn timesteps(&self) -> &[f32] {
        &self.timesteps
    }
    fn step(&mut self, model_output: &[f32], step: usize, sample: &[f32], rng: &mut TorchRng) -> Vec<f32> {
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
        if self.sde {
            let noise = rng.randn(sample.len());
            let out = self.sde_update(sample, &noise, step, lower_order_final, (alpha_t, sigma_t, sigma_s0, lambda_s0, h));
            if self.lower_order_nums < 2 {
                self.lower_order_nums += 1;
            }
            return out;
        }
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

//! UniPC (`UniPCMultistepScheduler` with its defaults: `solver_order 2`, `solver_type "bh2"`,
//! `predict_x0`, `lower_order_final`, `final_sigmas_type "zero"`, no disabled corrector).
//! Deterministic. Each step first corrects the current sample with the new model output (UniC,
//! using the previous step's predictor order), then predicts the next one (UniP): order 1 on the
//! first and last steps, order 2 in between.
//!
//! The schedule is DPM++'s (integer timesteps, sigmas ending in 0), except that diffusers always
//! rounds Karras timesteps here.

use super::dpm::{alpha_sigma, lambda, multistep_schedule};
use super::{check_len, PredictionType, Scheduler, SchedulerConfig, SigmaSchedule};
use crate::rng::TorchRng;
use crate::Result;

pub struct UniPc {
    timesteps: Vec<f32>,
    sigmas: Vec<f32>,
    prediction: PredictionType,
    steps: usize,
    /// Converted (x0) model outputs: [previous, latest].
    model_outputs: [Option<Vec<f32>>; 2],
    lower_order_nums: usize,
    /// The sample the last predictor started from, and the order it used.
    last_sample: Option<Vec<f32>>,
    this_order: usize,
}

/// `torch.linalg.solve` of a 2×2 system as LAPACK's `sgesv` does it: LU with partial pivoting
/// (row of largest |a·0| first), multiplier by reciprocal, then back substitution.
fn solve2(a: [[f32; 2]; 2], b: [f32; 2]) -> [f32; 2] {
    let (mut a, mut b) = (a, b);
    if a[1][0].abs() > a[0][0].abs() {
        a.swap(0, 1);
        b.swap(0, 1);
    }
    let l = a[1][0] * (1.0f32 / a[0][0]);
    let u11 = a[1][1] - l * a[0][1];
    let y1 = b[1] - l * b[0];
    let x1 = y1 / u11;
    let x0 = (b[0] - x1 * a[0][1]) / a[0][0];
    [x0, x1]
}

impl UniPc {
    pub fn new(c: &SchedulerConfig, steps: usize, schedule: SigmaSchedule) -> Result<Self> {
        let (timesteps, sigmas) = multistep_schedule(c, steps, schedule, true)?;
        Ok(UniPc {
            timesteps,
            sigmas,
            prediction: c.prediction_type,
            steps,
            model_outputs: [None, None],
            lower_order_nums: 0,
            last_sample: None,
            this_order: 1,
        })
    }

    fn lambda_at(&self, i: usize) -> f32 {
        let (a, s) = alpha_sigma(self.sigmas[i]);
        lambda(a, s)
    }

    /// `(α_t, σ_t, σ_s0, h, hh = −h, h_phi_1 = expm1(−h))` for the step from sigma index `s0`
    /// to `t` (bh2: `B_h = h_phi_1`).
    fn coefficients(&self, t: usize, s0: usize) -> (f32, f32, f32, f32, f32, f32) {
        let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[t]);
        let (alpha_s0, sigma_s0) = alpha_sigma(self.sigmas[s0]);
        let h = lambda(alpha_t, sigma_t) - lambda(alpha_s0, sigma_s0);
        let hh = -h;
        let h_phi_1 = hh.exp_m1();
        (alpha_t, sigma_t, sigma_s0, h, hh, h_phi_1)
    }

    /// UniC: corrects `this_sample` (at sigma index `i`) given the converted output `model_t`
    /// there, from `last_sample` at `i − 1`.
    fn corrector(&self, model_t: &[f32], this_sample_len: usize, i: usize, order: usize) -> Vec<f32> {
        let x = self.last_sample.as_ref().unwrap();
        let m0 = self.model_outputs[1].as_ref().unwrap();
        debug_assert_eq!(x.len(), this_sample_len);
        let (alpha_t, sigma_t, sigma_s0, h, hh, h_phi_1) = self.coefficients(i, i - 1);
        let b_h = h_phi_1; // bh2
        let (rhos_c, d1): (Vec<f32>, Option<(f32, &Vec<f32>)>) = if order == 1 {
            (vec![0.5], None)
        } else {
            let lambda_s0 = self.lambda_at(i - 1);
            let rk = (self.lambda_at(i - 2) - lambda_s0) / h;
            // R = [[1, 1], [rk, 1]]; b_k = h_phi_k · k! / B_h
            let h_phi_k1 = h_phi_1 / hh - 1.0;
            let b0 = h_phi_k1 * 1.0 / b_h;
            let h_phi_k2 = h_phi_k1 / hh - 1.0 / 2.0;
            let b1 = h_phi_k2 * 2.0 / b_h;
            let r = solve2([[1.0, 1.0], [rk, 1.0]], [b0, b1]);
            (r.to_vec(), Some((rk, self.model_outputs[0].as_ref().unwrap())))
        };
        let c_x = sigma_t / sigma_s0;
        let c_m = alpha_t * h_phi_1;
        let c_b = alpha_t * b_h;
        let rho_t = *rhos_c.last().unwrap();
        match d1 {
            None => x
                .iter()
                .zip(m0)
                .zip(model_t)
                .map(|((&x, &m0), &mt)| {
                    let x_ = c_x * x - c_m * m0;
                    x_ - c_b * (rho_t * (mt - m0))
                })
                .collect(),
            Some((rk, m1)) => {
                let rho0 = rhos_c[0];
                x.iter()
                    .zip(m0)
                    .zip(model_t.iter().zip(m1))
                    .map(|((&x, &m0), (&mt, &m1))| {
                        let x_ = c_x * x - c_m * m0;
                        let corr = rho0 * ((m1 - m0) / rk);
                        x_ - c_b * (corr + rho_t * (mt - m0))
                    })
                    .collect()
            }
        }
    }

    /// UniP: predicts the sample at sigma index `i + 1` from `x` at `i`.
    fn predictor(&self, x: &[f32], i: usize, order: usize) -> Vec<f32> {
        let m0 = self.model_outputs[1].as_ref().unwrap();
        let (alpha_t, sigma_t, sigma_s0, h, _hh, h_phi_1) = self.coefficients(i + 1, i);
        let b_h = h_phi_1;
        let c_x = sigma_t / sigma_s0;
        let c_m = alpha_t * h_phi_1;
        if order == 1 {
            return x.iter().zip(m0).map(|(&x, &m0)| c_x * x - c_m * m0).collect();
        }
        let m1 = self.model_outputs[0].as_ref().unwrap();
        let rk = (self.lambda_at(i - 1) - self.lambda_at(i)) / h;
        let c_b = alpha_t * b_h;
        x.iter()
            .zip(m0)
            .zip(m1)
            .map(|((&x, &m0), &m1)| {
                let x_ = c_x * x - c_m * m0;
                let pred_res = 0.5f32 * ((m1 - m0) / rk);
                x_ - c_b * pred_res
            })
            .collect()
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

impl Scheduler for UniPc {
    fn timesteps(&self) -> &[f32] {
        &self.timesteps
    }
    fn step(&mut self, model_output: &[f32], step: usize, sample: &[f32], _rng: &mut TorchRng) -> Vec<f32> {
        check_len("unipc", model_output, sample);
        let converted = self.convert(model_output, sample, step);
        let sample = if step > 0 && self.last_sample.is_some() {
            self.corrector(&converted, sample.len(), step, self.this_order)
        } else {
            sample.to_vec()
        };
        self.model_outputs[0] = self.model_outputs[1].take();
        self.model_outputs[1] = Some(converted);
        // lower_order_final: order min(2, steps left), warmed up one order per step.
        let order = 2.min(self.timesteps.len() - step).min(self.lower_order_nums + 1);
        self.this_order = order;
        let out = self.predictor(&sample, step, order);
        self.last_sample = Some(sample);
        if self.lower_order_nums < 2 {
            self.lower_order_nums += 1;
        }
        out
    }
    fn sigmas(&self) -> Option<&[f32]> {
        Some(&self.sigmas)
    }
    /// VP form, as DPM++ 2M: `α_t·x + σ_t·n` with `(α_t, σ_t)` of `sigmas[step]`.
    fn add_noise(&self, original: &[f32], noise: &[f32], step: usize) -> Result<Vec<f32>> {
        check_len("unipc add_noise", original, noise);
        let (a, s) = alpha_sigma(self.sigmas[step]);
        Ok(original.iter().zip(noise).map(|(&x, &n)| a * x + s * n).collect())
    }
    fn num_inference_steps(&self) -> usize {
        self.steps
    }
    fn reset(&mut self) {
        self.model_outputs = [None, None];
        self.lower_order_nums = 0;
        self.last_sample = None;
        self.this_order = 1;
    }
}

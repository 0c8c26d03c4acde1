//! Linear multistep (`LMSDiscreteScheduler`, order 4 as the SD pipeline calls it): the step
//! integrates the Lagrange polynomial through the last ≤ 4 derivatives over `[σ_i, σ_{i+1}]`.
//!
//! diffusers integrates with `scipy.integrate.quad(epsrel=1e-4)`; the integrand is a polynomial
//! of degree ≤ 3 in τ, which quad's 21-point Gauss–Kronrod rule integrates exactly, so we use
//! 8-point Gauss–Legendre (exact to degree 15) in f64: same value to rounding.

use super::{
    check_len, discrete_sigma_schedule, scale_by_sigma, sigma_init_noise, sigma_pred_x0, PredictionType, Scheduler,
    SchedulerConfig, SigmaSchedule,
};
use crate::rng::TorchRng;
use crate::Result;

/// The order the Stable Diffusion pipeline uses (`step(..., order=4)` default).
pub const LMS_ORDER: usize = 4;

pub struct Lms {
    timesteps: Vec<f32>,
    sigmas: Vec<f32>,
    init_sigma: f32,
    prediction: PredictionType,
    steps: usize,
    order: usize,
    /// Most recent last.
    derivatives: Vec<Vec<f32>>,
}

impl Lms {
    pub fn new(c: &SchedulerConfig, steps: usize, schedule: SigmaSchedule) -> Result<Self> {
        let (timesteps, sigmas, spacing) = discrete_sigma_schedule(c, steps, schedule, false)?;
        let init_sigma = sigma_init_noise(&sigmas, spacing);
        Ok(Lms {
            timesteps,
            sigmas,
            init_sigma,
            prediction: c.prediction_type,
            steps,
            order: LMS_ORDER,
            derivatives: Vec::new(),
        })
    }

    /// Uses a different multistep order (1..=4; diffusers' `step(order=…)`).
    pub fn with_order(mut self, order: usize) -> Self {
        self.order = order.clamp(1, 4);
        self
    }

    /// `∫_{σ_t}^{σ_{t+1}} Π_{k≠j} (τ − σ_{t−k}) / (σ_{t−j} − σ_{t−k}) dτ`.
    pub fn lms_coefficient(sigmas: &[f32], order: usize, t: usize, current: usize) -> f64 {
        let s = |i: usize| sigmas[i] as f64;
        let f = |tau: f64| {
            let mut prod = 1.0f64;
            for k in 0..order {
                if k == current {
                    continue;
                }
                prod *= (tau - s(t - k)) / (s(t - current) - s(t - k));
            }
            prod
        };
        gauss_legendre(f, s(t), s(t + 1))
    }
}

fn gauss_legendre(f: impl Fn(f64) -> f64, a: f64, b: f64) -> f64 {
    const X: [f64; 4] =
        [0.183_434_642_495_649_8, 0.525_532_409_916_329, 0.796_666_477_413_626_7, 0.960_289_856_497_536_3];
    const W: [f64; 4] =
        [0.362_683_783_378_362, 0.313_706_645_877_887_3, 0.222_381_034_453_374_5, 0.101_228_536_290_376_3];
    let (m, h) = ((a + b) / 2.0, (b - a) / 2.0);
    let mut sum = 0.0;
    for i in 0..4 {
        sum += W[i] * (f(m - h * X[i]) + f(m + h * X[i]));
    }
    sum * h
}

impl Scheduler for Lms {
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
        check_len("lms", model_output, sample);
        let sigma = self.sigmas[step];
        let x0 = sigma_pred_x0(self.prediction, model_output, sample, sigma);
        let derivative: Vec<f32> = sample.iter().zip(&x0).map(|(&x, &p)| (x - p) / sigma).collect();
        self.derivatives.push(derivative);
        if self.derivatives.len() > self.order {
            self.derivatives.remove(0);
        }
        let order = (step + 1).min(self.order);
        let coeffs: Vec<f32> = (0..order).map(|j| Self::lms_coefficient(&self.sigmas, order, step, j) as f32).collect();
        // prev = sample + Σ_j coeff_j · d_{t−j} (newest derivative first), summed in that order;
        // `zip` with the stored derivatives as diffusers does: a run started part-way (img2img)
        // has fewer derivatives than the order its absolute step index allows.
        let mut acc: Vec<f32> = vec![0.0; sample.len()];
        for (j, &cf) in coeffs.iter().enumerate().take(self.derivatives.len()) {
            let d = &self.derivatives[self.derivatives.len() - 1 - j];
            if j == 0 {
                for (a, &v) in acc.iter_mut().zip(d) {
                    *a = cf * v;
                }
            } else {
                for (a, &v) in acc.iter_mut().zip(d) {
                    *a += cf * v;
                }
            }
        }
        sample.iter().zip(&acc).map(|(&x, &a)| x + a).collect()
    }
    fn sigmas(&self) -> Option<&[f32]> {
        Some(&self.sigmas)
    }
    fn num_inference_steps(&self) -> usize {
        self.steps
    }
    fn reset(&mut self) {
        self.derivatives.clear();
    }
}

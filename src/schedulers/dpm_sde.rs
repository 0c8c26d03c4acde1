//! DPM++ SDE (`DPMSolverSDEScheduler`, k-diffusion's `sample_dpmpp_sde`): a second-order
//! stochastic solver in `t = −ln σ` with two model evaluations per step (the second at the
//! midpoint `σ_mid = √(σ_i σ_{i+1})`), ancestral-style noise after each half, and a plain Euler
//! step to σ = 0 at the end. Evaluations: `2·steps − 1`, like Heun.
//!
//! Noise: diffusers draws it from torchsde's `BrownianInterval` (a Brownian motion over
//! [σmin, σmax] queried on the overlapping intervals [σ_mid, σ_i] and [σ_{i+1}, σ_i], so the two
//! halves' noises are correlated). Reproducing torchsde's tree bit for bit is not practical, so
//! [`DpmPlusPlusSde`] samples the same kind of process itself — a Brownian motion refined by
//! Brownian-bridge draws from the pipeline's generator — and images differ from diffusers' for the
//! same seed (diffusers' own default, `noise_sampler_seed=None`, is not reproducible either).
//! The step arithmetic matches diffusers exactly; tests replay it with diffusers' noise injected
//! through [`DpmPlusPlusSde::with_noise`].

use super::{
    check_len, discrete_sigma_schedule_f64, scale_by_sigma, sigma_init_noise, sigma_to_t, NoiseSchedule,
    PredictionType, Scheduler, SchedulerConfig, SigmaSchedule,
};
use crate::rng::TorchRng;
use crate::{Error, Result};
use std::collections::VecDeque;

pub struct DpmPlusPlusSde {
    timesteps: Vec<f32>,
    /// `[σ0, σ1, σ1, σ2, σ2, …, σ_{n−1}, σ_{n−1}, 0]` (one per evaluation, plus the final 0).
    sigmas: Vec<f32>,
    init_sigma: f32,
    prediction: PredictionType,
    steps: usize,
    /// The first half's starting sample and midpoint sigma while a step is half done.
    saved: Option<(Vec<f32>, f32)>,
    noise: NoiseSource,
}

enum NoiseSource {
    Brownian(Option<Brownian>),
    /// Noise tensors to return in order (tests: the noise diffusers drew).
    Given(VecDeque<Vec<f32>>),
}

/// A Brownian motion W on [t0, t1], W(t0) = 0, sampled lazily: each new query point gets a
/// Brownian-bridge draw between its known neighbours (so any set of queries is a consistent
/// sample of one path).
struct Brownian {
    /// Known (t, W(t)), sorted by t.
    points: Vec<(f64, Vec<f32>)>,
}

impl Brownian {
    fn new(t0: f64, t1: f64, n: usize, rng: &mut TorchRng) -> Self {
        let scale = (t1 - t0).sqrt() as f32;
        let w1 = rng.randn(n).into_iter().map(|z| z * scale).collect();
        Brownian { points: vec![(t0, vec![0.0; n]), (t1, w1)] }
    }

    fn at(&mut self, t: f64, rng: &mut TorchRng) -> Vec<f32> {
        let (lo, hi) = (self.points[0].0, self.points[self.points.len() - 1].0);
        let t = t.clamp(lo, hi);
        let j = self.points.partition_point(|p| p.0 < t);
        if self.points[j].0 == t {
            return self.points[j].1.clone();
        }
        let ((ta, wa), (tb, wb)) = (&self.points[j - 1], &self.points[j]);
        let frac = ((t - ta) / (tb - ta)) as f32;
        let std = ((t - ta) * (tb - t) / (tb - ta)).sqrt() as f32;
        let z = rng.randn(wa.len());
        let w: Vec<f32> = wa.iter().zip(wb).zip(z).map(|((&a, &b), z)| a + frac * (b - a) + std * z).collect();
        self.points.insert(j, (t, w.clone()));
        w
    }

    /// `(W(b) − W(a)) / √|b − a|`, a standard normal per element.
    fn noise(&mut self, a: f64, b: f64, rng: &mut TorchRng) -> Vec<f32> {
        let (a, b) = if a < b { (a, b) } else { (b, a) };
        let wa = self.at(a, rng);
        let wb = self.at(b, rng);
        let d = ((b - a).abs().sqrt() as f32).max(f32::MIN_POSITIVE);
        wa.iter().zip(&wb).map(|(&x, &y)| (y - x) / d).collect()
    }
}

impl DpmPlusPlusSde {
    pub fn new(c: &SchedulerConfig, steps: usize, schedule: SigmaSchedule) -> Result<Self> {
        if c.prediction_type == PredictionType::Sample {
            return Err(Error::Unsupported(
                "dpmpp-sde with prediction_type \"sample\" (diffusers implements epsilon and v_prediction only)".into(),
            ));
        }
        let (ts, sig, spacing) = discrete_sigma_schedule_f64(c, steps, schedule, false)?;
        let log_sigmas: Vec<f32> = NoiseSchedule::new(c)?.train_sigmas().iter().map(|s| s.ln()).collect();
        // Midpoint timesteps: σ at the mean of t = −ln σ of neighbouring steps (float64).
        let mids: Vec<f64> = sig
            .windows(2)
            .map(|w| {
                let (t0, t1) = (-w[0].ln(), -w[1].ln());
                sigma_to_t((-(t0 + (t1 - t0) * 0.5)).exp(), &log_sigmas)
            })
            .collect();
        let mut timesteps = vec![ts[0] as f32];
        for (i, &t) in ts.iter().enumerate().skip(1) {
            timesteps.push(mids[i - 1] as f32);
            timesteps.push(t as f32);
        }
        let sig32: Vec<f32> = sig.iter().map(|&s| s as f32).collect();
        let mut sigmas = vec![sig32[0]];
        for &s in &sig32[1..] {
            sigmas.push(s);
            sigmas.push(s);
        }
        sigmas.push(0.0);
        let init_sigma = sigma_init_noise(&sigmas, spacing);
        Ok(DpmPlusPlusSde {
            timesteps,
            sigmas,
            init_sigma,
            prediction: c.prediction_type,
            steps,
            saved: None,
            noise: NoiseSource::Brownian(None),
        })
    }

    /// Uses `noise` (one tensor per noise draw, in order: two per step except the last) instead
    /// of the Brownian sampler; for replaying diffusers' runs. Runs out → zeros.
    pub fn with_noise(mut self, noise: Vec<Vec<f32>>) -> Self {
        self.noise = NoiseSource::Given(noise.into());
        self
    }

    fn draw(&mut self, a: f32, b: f32, n: usize, rng: &mut TorchRng) -> Vec<f32> {
        match &mut self.noise {
            NoiseSource::Given(q) => q.pop_front().unwrap_or_else(|| vec![0.0; n]),
            NoiseSource::Brownian(tree) => {
                if tree.is_none() {
                    let min = self.sigmas.iter().cloned().filter(|&s| s > 0.0).fold(f32::MAX, f32::min);
                    let max = self.sigmas.iter().cloned().fold(f32::MIN, f32::max);
                    *tree = Some(Brownian::new(min as f64, max as f64, n, rng));
                }
                tree.as_mut().unwrap().noise(a as f64, b as f64, rng)
            }
        }
    }
}

impl Scheduler for DpmPlusPlusSde {
    fn timesteps(&self) -> &[f32] {
        &self.timesteps
    }
    /// Two evaluations per step (diffusers' `order = 2`): img2img starts at `t_start · 2`.
    fn order(&self) -> usize {
        2
    }
    fn init_noise_sigma(&self) -> f32 {
        self.init_sigma
    }
    fn scale_model_input(&self, sample: &[f32], step: usize) -> Vec<f32> {
        let sigma = match &self.saved {
            None => self.sigmas[step],
            Some((_, mid)) => *mid,
        };
        scale_by_sigma(sample, sigma)
    }
    fn step(&mut self, model_output: &[f32], step: usize, sample: &[f32], rng: &mut TorchRng) -> Vec<f32> {
        check_len("dpmpp-sde", model_output, sample);
        let first = self.saved.is_none();
        let (sigma, sigma_next) =
            if first { (self.sigmas[step], self.sigmas[step + 1]) } else { (self.sigmas[step - 1], self.sigmas[step]) };
        // f32 scalars in torch's order: t = −ln σ, midpoint t + Δt·½, σ = e^{−t}.
        let t = -sigma.ln();
        let t_next_full = -sigma_next.ln();
        let t_proposed = t + (t_next_full - t) * 0.5;
        let sigma_input = if first { sigma } else { (-t_proposed).exp() };
        let x0: Vec<f32> = match self.prediction {
            PredictionType::VPrediction => {
                let s2p1 = sigma_input * sigma_input + 1.0;
                let c_out = -sigma_input / s2p1.sqrt();
                sample.iter().zip(model_output).map(|(&x, &v)| v * c_out + x / s2p1).collect()
            }
            _ => sample.iter().zip(model_output).map(|(&x, &e)| x - sigma_input * e).collect(),
        };
        if sigma_next == 0.0 {
            let dt = sigma_next - sigma;
            return sample.iter().zip(&x0).map(|(&x, &p)| x + (x - p) / sigma * dt).collect();
        }
        let t_next = if first { t_proposed } else { t_next_full };
        let base = if first { sample.to_vec() } else { self.saved.take().unwrap().0 };
        let sigma_from = (-t).exp();
        let sigma_to = (-t_next).exp();
        let up = (sigma_to * sigma_to * (sigma_from * sigma_from - sigma_to * sigma_to) / (sigma_from * sigma_from)).sqrt();
        let sigma_up = if up < sigma_to { up } else { sigma_to };
        let sigma_down = (sigma_to * sigma_to - sigma_up * sigma_up).sqrt();
        let ancestral_t = -sigma_down.ln();
        let c_x = (-ancestral_t).exp() / (-t).exp();
        let c_p = (t - ancestral_t).exp_m1();
        let noise = self.draw(sigma_from, sigma_to, sample.len(), rng);
        let out = base
            .iter()
            .zip(&x0)
            .zip(&noise)
            .map(|((&x, &p), &z)| {
                let prev = c_x * x - c_p * p;
                prev + z * sigma_up
            })
            .collect();
        if first {
            self.saved = Some((base, sigma_to));
        }
        out
    }
    fn sigmas(&self) -> Option<&[f32]> {
        Some(&self.sigmas)
    }
    fn num_inference_steps(&self) -> usize {
        self.steps
    }
    fn reset(&mut self) {
        self.saved = None;
        if let NoiseSource::Brownian(tree) = &mut self.noise {
            *tree = None;
        }
    }
}

//! LCM (`LCMScheduler` with its defaults: `original_inference_steps 50`, `timestep_scaling 10`).
//! Each step maps the model output to a consistency-model "denoised" x0 through the boundary
//! condition scalings `c_skip`, `c_out`, then re-noises it to the next timestep with fresh noise
//! from the generator (not after the last step).
//!
//! With `timestep_scaling` 10, `c_skip ≈ 0` and `c_out ≈ 1` for all but the smallest timesteps,
//! so "denoised" is essentially the x0 prediction.
//!
//! Only LCM-distilled models (or an LCM LoRA) give good images with it, typically with 2–8 steps
//! and low guidance; with an ordinary SD checkpoint it runs but makes poor images.

use super::{check_len, NoiseSchedule, PredictionType, Scheduler, SchedulerConfig};
use crate::rng::TorchRng;
use crate::{Error, Result};

pub struct Lcm {
    timesteps: Vec<f32>,
    ts: Vec<usize>,
    alphas_cumprod: Vec<f32>,
    prediction: PredictionType,
    clip: Option<f32>,
    steps: usize,
}

/// diffusers' default `original_inference_steps` (the distillation schedule's length).
pub const ORIGINAL_INFERENCE_STEPS: usize = 50;
const TIMESTEP_SCALING: f32 = 10.0;

impl Lcm {
    pub fn new(c: &SchedulerConfig, steps: usize) -> Result<Self> {
        let sched = NoiseSchedule::new(c)?;
        let n = c.num_train_timesteps;
        let original = ORIGINAL_INFERENCE_STEPS;
        if original > n {
            return Err(Error::Unsupported(format!("LCM: {original} original steps > {n} training timesteps")));
        }
        if steps > original {
            return Err(Error::Unsupported(format!(
                "LCM takes at most {original} steps (its distillation schedule), not {steps}; LCM models want 2-8"
            )));
        }
        // lcm_origin_timesteps = [1..=50]·k − 1 reversed; pick floor(linspace(0, 50, steps, endpoint=False)).
        let k = n / original;
        let origin: Vec<usize> = (1..=original).rev().map(|i| i * k - 1).collect();
        let ts: Vec<usize> = (0..steps).map(|i| origin[(i as f64 * (original as f64 / steps as f64)).floor() as usize]).collect();
        Ok(Lcm {
            timesteps: ts.iter().map(|&t| t as f32).collect(),
            ts,
            alphas_cumprod: sched.alphas_cumprod,
            prediction: c.prediction_type,
            // LCMScheduler's default clip_sample is false.
            clip: c.clip_range_or(false),
            steps,
        })
    }
}

impl Scheduler for Lcm {
    fn timesteps(&self) -> &[f32] {
        &self.timesteps
    }
    /// img2img noises with `sqrt(ᾱ_t)·x + sqrt(1 − ᾱ_t)·n` (the trait's default).
    fn alphas_cumprod(&self) -> Option<&[f32]> {
        Some(&self.alphas_cumprod)
    }
    fn step(&mut self, model_output: &[f32], step: usize, sample: &[f32], rng: &mut TorchRng) -> Vec<f32> {
        check_len("lcm", model_output, sample);
        let t = self.ts[step];
        let last = step + 1 >= self.ts.len();
        // the last step's "previous" timestep is its own (no re-noising follows anyway).
        let prev_t = if last { t } else { self.ts[step + 1] };
        let a_t = self.alphas_cumprod[t];
        let a_prev = self.alphas_cumprod[prev_t];
        let b_t = 1.0f32 - a_t;
        let b_prev = 1.0f32 - a_prev;
        let scaled = t as f32 * TIMESTEP_SCALING;
        let c_skip = 0.25f32 / (scaled * scaled + 0.25);
        let c_out = scaled / (scaled * scaled + 0.25).sqrt();
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
        let denoised: Vec<f32> = x0.iter().zip(sample).map(|(&p, &x)| c_out * p + c_skip * x).collect();
        if last {
            return denoised;
        }
        let noise = rng.randn(sample.len());
        let (sap, sbp) = (a_prev.sqrt(), b_prev.sqrt());
        denoised.iter().zip(&noise).map(|(&d, &z)| sap * d + sbp * z).collect()
    }
    fn num_inference_steps(&self) -> usize {
        self.steps
    }
    fn reset(&mut self) {}
}

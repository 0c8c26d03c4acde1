//! DDIM (`DDIMScheduler`), deterministic for `eta = 0` (the SD pipeline's default); `eta > 0`
//! adds `eta·σ_t`-scaled noise drawn from the generator each step.

use super::{
    check_len, integer_timesteps_ascending, NoiseSchedule, PredictionType, Scheduler, SchedulerConfig, TimestepSpacing,
};
use crate::rng::TorchRng;
use crate::Result;

pub struct Ddim {
    timesteps: Vec<f32>,
    ts: Vec<i64>,
    alphas_cumprod: Vec<f32>,
    final_alpha_cumprod: f32,
    prediction: PredictionType,
    clip: Option<f32>,
    step_ratio: i64,
    eta: f32,
    steps: usize,
}

impl Ddim {
    /// DDIM with class defaults `timestep_spacing = "leading"`, `set_alpha_to_one = true`,
    /// `clip_sample = true` where the config lacks them.
    pub fn new(c: &SchedulerConfig, steps: usize, eta: f32) -> Result<Self> {
        let sched = NoiseSchedule::new(c)?;
        let spacing = c.spacing_or(TimestepSpacing::Leading);
        let offset = if spacing == TimestepSpacing::Leading { c.steps_offset } else { 0 };
        let mut ts = integer_timesteps_ascending(spacing, c.num_train_timesteps, steps, offset);
        ts.reverse();
        let final_alpha_cumprod = if c.set_alpha_to_one.unwrap_or(true) { 1.0 } else { sched.alphas_cumprod[0] };
        let clip = c.clip_range_or(true);
        Ok(Ddim {
            timesteps: ts.iter().map(|&t| t as f32).collect(),
            ts,
            alphas_cumprod: sched.alphas_cumprod,
            final_alpha_cumprod,
            prediction: c.prediction_type,
            clip,
            step_ratio: (c.num_train_timesteps / steps) as i64,
            eta,
            steps,
        })
    }

    /// Sets DDIM's eta (0 = deterministic DDIM, 1 ≈ DDPM).
    pub fn with_eta(mut self, eta: f32) -> Self {
        self.eta = eta;
        self
    }

    fn alpha(&self, t: i64) -> f32 {
        if t >= 0 {
            self.alphas_cumprod[t as usize]
        } else {
            self.final_alpha_cumprod
        }
    }
}

/// DDIM's `(pred_original_sample, pred_epsilon)` from the model output at a sample whose
/// `alphas_cumprod` is `a_t`, x0 clipped to `±clip` (DDIMScheduler and DDIMInverseScheduler).
pub(crate) fn predict(
    prediction: PredictionType,
    clip: Option<f32>,
    model_output: &[f32],
    sample: &[f32],
    a_t: f32,
) -> (Vec<f32>, Vec<f32>) {
    let (sa, sb) = (a_t.sqrt(), (1.0f32 - a_t).sqrt());
    let (mut x0, eps): (Vec<f32>, Vec<f32>) = match prediction {
        PredictionType::Epsilon => {
            (sample.iter().zip(model_output).map(|(&x, &e)| (x - sb * e) / sa).collect(), model_output.to_vec())
        }
        PredictionType::Sample => {
            (model_output.to_vec(), sample.iter().zip(model_output).map(|(&x, &p)| (x - sa * p) / sb).collect())
        }
        PredictionType::VPrediction => (
            sample.iter().zip(model_output).map(|(&x, &v)| sa * x - sb * v).collect(),
            sample.iter().zip(model_output).map(|(&x, &v)| sa * v + sb * x).collect(),
        ),
    };
    if let Some(r) = clip {
        for v in x0.iter_mut() {
            *v = v.clamp(-r, r);
        }
    }
    (x0, eps)
}

impl Scheduler for Ddim {
    fn timesteps(&self) -> &[f32] {
        &self.timesteps
    }
    fn step(&mut self, model_output: &[f32], step: usize, sample: &[f32], rng: &mut TorchRng) -> Vec<f32> {
        check_len("ddim", model_output, sample);
        let t = self.ts[step];
        let prev_t = t - self.step_ratio;
        let a_t = self.alpha(t);
        let a_prev = self.alpha(prev_t);
        let b_t = 1.0f32 - a_t;
        let (x0, eps) = predict(self.prediction, self.clip, model_output, sample, a_t);
        let b_prev = 1.0f32 - a_prev;
        let variance = (b_prev / b_t) * (1.0f32 - a_t / a_prev);
        let std_dev_t = self.eta * variance.sqrt();
        let dir_coeff = (1.0f32 - a_prev - std_dev_t * std_dev_t).sqrt();
        let sap = a_prev.sqrt();
        let mut prev: Vec<f32> = x0.iter().zip(&eps).map(|(&p, &e)| sap * p + dir_coeff * e).collect();
        if self.eta > 0.0 {
            let noise = rng.randn(sample.len());
            for (v, n) in prev.iter_mut().zip(noise) {
                *v += std_dev_t * n;
            }
        }
        prev
    }
    fn num_inference_steps(&self) -> usize {
        self.steps
    }
    fn alphas_cumprod(&self) -> Option<&[f32]> {
        Some(&self.alphas_cumprod)
    }
    fn reset(&mut self) {}
}

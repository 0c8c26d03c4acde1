//! PNDM (`PNDMScheduler`) with `skip_prk_steps` (PLMS: the SD configs set it): pseudo linear
//! multistep on the noise prediction. With skip_prk the schedule repeats the second timestep
//! (`[t0, t1, t1, t2, …]`, `steps + 1` evaluations): the second evaluation re-runs the first
//! step with the average of the two model outputs (a Heun-like warm-up), after which 2-, 3- and
//! 4-step Adams–Bashforth combinations of the stored outputs are used.

use super::{
    check_len, integer_timesteps_ascending, NoiseSchedule, PredictionType, Scheduler, SchedulerConfig, TimestepSpacing,
};
use crate::rng::TorchRng;
use crate::{Error, Result};

pub struct Pndm {
    timesteps: Vec<f32>,
    ts: Vec<i64>,
    alphas_cumprod: Vec<f32>,
    final_alpha_cumprod: f32,
    prediction: PredictionType,
    step_ratio: i64,
    steps: usize,
    ets: Vec<Vec<f32>>,
    counter: usize,
    cur_sample: Option<Vec<f32>>,
}

impl Pndm {
    pub fn new(c: &SchedulerConfig, steps: usize) -> Result<Self> {
        if !c.skip_prk_steps.unwrap_or(false) {
            return Err(Error::Unsupported(
                "PNDM without skip_prk_steps (Runge-Kutta warm-up); SD configs set skip_prk_steps: true".into(),
            ));
        }
        if c.prediction_type == PredictionType::Sample {
            return Err(Error::Unsupported("PNDM with prediction_type 'sample'".into()));
        }
        if steps < 2 {
            return Err(Error::Unsupported("PNDM needs at least 2 inference steps".into()));
        }
        let sched = NoiseSchedule::new(c)?;
        let spacing = c.spacing_or(TimestepSpacing::Leading);
        let offset = if spacing == TimestepSpacing::Leading { c.steps_offset } else { 0 };
        let asc = integer_timesteps_ascending(spacing, c.num_train_timesteps, steps, offset);
        // plms = concat(asc[:-1], asc[-2:-1], asc[-1:]) reversed.
        let n = asc.len();
        let mut plms: Vec<i64> = asc[..n - 1].to_vec();
        plms.push(asc[n - 2]);
        plms.push(asc[n - 1]);
        plms.reverse();
        let final_alpha_cumprod = if c.set_alpha_to_one.unwrap_or(false) { 1.0 } else { sched.alphas_cumprod[0] };
        Ok(Pndm {
            timesteps: plms.iter().map(|&t| t as f32).collect(),
            ts: plms,
            alphas_cumprod: sched.alphas_cumprod,
            final_alpha_cumprod,
            prediction: c.prediction_type,
            step_ratio: (c.num_train_timesteps / steps) as i64,
            steps,
            ets: Vec::new(),
            counter: 0,
            cur_sample: None,
        })
    }

    fn alpha(&self, t: i64) -> f32 {
        if t >= 0 {
            self.alphas_cumprod[t as usize]
        } else {
            self.final_alpha_cumprod
        }
    }

    /// Formula (9) of the PNDM paper: x_{t−δ} from x_t and the (combined) noise estimate.
    fn prev_sample(&self, sample: &[f32], t: i64, prev_t: i64, model_output: &[f32]) -> Vec<f32> {
        let a_t = self.alpha(t);
        let a_prev = self.alpha(prev_t);
        let b_t = 1.0f32 - a_t;
        let b_prev = 1.0f32 - a_prev;
        let eps: Vec<f32> = match self.prediction {
            PredictionType::VPrediction => {
                let (sa, sb) = (a_t.sqrt(), b_t.sqrt());
                model_output.iter().zip(sample).map(|(&v, &x)| sa * v + sb * x).collect()
            }
            _ => model_output.to_vec(),
        };
        let sample_coeff = (a_prev / a_t).sqrt();
        let denom = a_t * b_prev.sqrt() + (a_t * b_t * a_prev).sqrt();
        let diff = a_prev - a_t;
        sample.iter().zip(&eps).map(|(&x, &e)| sample_coeff * x - diff * e / denom).collect()
    }
}

impl Scheduler for Pndm {
    fn timesteps(&self) -> &[f32] {
        &self.timesteps
    }
    fn step(&mut self, model_output: &[f32], step: usize, sample: &[f32], _rng: &mut TorchRng) -> Vec<f32> {
        check_len("pndm", model_output, sample);
        let mut t = self.ts[step];
        let mut prev_t = t - self.step_ratio;
        if self.counter != 1 {
            if self.ets.len() > 3 {
                self.ets.remove(0);
            }
            self.ets.push(model_output.to_vec());
        } else {
            prev_t = t;
            t += self.step_ratio;
        }
        let n = self.ets.len();
        let mut cur = sample.to_vec();
        let combined: Vec<f32> = if n == 1 && self.counter == 0 {
            self.cur_sample = Some(sample.to_vec());
            model_output.to_vec()
        } else if n == 1 && self.counter == 1 {
            cur = self.cur_sample.take().expect("pndm: warm-up sample");
            model_output.iter().zip(&self.ets[0]).map(|(&m, &e)| (m + e) / 2.0).collect()
        } else if n == 2 {
            let (e1, e2) = (&self.ets[1], &self.ets[0]);
            e1.iter().zip(e2).map(|(&a, &b)| (3.0 * a - b) / 2.0).collect()
        } else if n == 3 {
            let (e1, e2, e3) = (&self.ets[2], &self.ets[1], &self.ets[0]);
            (0..e1.len()).map(|i| (23.0 * e1[i] - 16.0 * e2[i] + 5.0 * e3[i]) / 12.0).collect()
        } else {
            let (e1, e2, e3, e4) = (&self.ets[3], &self.ets[2], &self.ets[1], &self.ets[0]);
            let k = (1.0f64 / 24.0) as f32;
            (0..e1.len()).map(|i| k * (55.0 * e1[i] - 59.0 * e2[i] + 37.0 * e3[i] - 9.0 * e4[i])).collect()
        };
        let out = self.prev_sample(&cur, t, prev_t, &combined);
        self.counter += 1;
        out
    }
    fn num_inference_steps(&self) -> usize {
        self.steps
    }
    fn alphas_cumprod(&self) -> Option<&[f32]> {
        Some(&self.alphas_cumprod)
    }
    fn reset(&mut self) {
        self.ets.clear();
        self.counter = 0;
        self.cur_sample = None;
    }
}

//! Self-Attention Guidance (Hong et al. 2022, diffusers' `StableDiffusionSAGPipeline`): after
//! the usual guidance, the latents' predicted x0 is blurred where the mid block's self-attention
//! looks most, noised back to the step's level, and run through the UNet once more (batch 1, the
//! uncond text, or the text without CFG); the prediction moves away from that degraded one by
//! `sag_scale · (ε_branch − ε_degraded)`.
//!
//! All of it but the extra UNet call runs on the host: the mid block's map is tiny (H/8·W/8/4
//! tokens: 64 at 512x512) and the latents are on the host already.

use super::{GenerateOptions, StableDiffusion};
use crate::error::{Error, Result};
use crate::gpu::{Context, Tensor};
use crate::models::unet::{MidAttention, UNet2DConditionModel};
use crate::schedulers::{NoiseSchedule, PredictionType, SamplerKind, Scheduler};

/// diffusers' `gaussian_blur_2d(kernel_size=9, sigma=1.0)`.
const BLUR_TAPS: usize = 9;
const BLUR_SIGMA: f32 = 1.0;

/// Per-generation state: the scale, the training ᾱ (diffusers' `pred_x0` reads
/// `scheduler.alphas_cumprod[t]` whatever the sampler), the prediction type and the text of the
/// degraded call.
pub(crate) struct Sag {
    scale: f32,
    alphas_cumprod: Vec<f32>,
    prediction: PredictionType,
    /// `[1, L, D]`: the uncond text with CFG, the text without.
    text: Tensor,
}

/// The samplers diffusers' SAG pipeline accepts: those whose timesteps are integers.
const SAMPLERS: [SamplerKind; 7] = [
    SamplerKind::Ddim,
    SamplerKind::Pndm,
    SamplerKind::Ddpm,
    SamplerKind::DpmPlusPlus2M,
    SamplerKind::DpmPlusPlus2MSde,
    SamplerKind::UniPc,
    SamplerKind::Lcm,
];

impl Sag {
    /// `None` when `sag_scale` is 0. `text` is the UNet's `[B, L, D]` conditioning (uncond
    /// first with CFG).
    pub(crate) async fn new(sd: &StableDiffusion, ctx: &Context, o: &GenerateOptions, unet: &UNet2DConditionModel, text: &Tensor) -> Result<Option<Sag>> {
        if o.sag_scale == 0.0 {
            return Ok(None);
        }
        if !o.sag_scale.is_finite() || o.sag_scale < 0.0 {
            return Err(Error::Unsupported(format!("--sag-scale must be a number ≥ 0 (diffusers' default is 0.75), got {}", o.sag_scale)));
        }
        let refuse = |what: &str| Err(Error::Unsupported(format!("Self-Attention Guidance (--sag-scale) {what}")));
        if !SAMPLERS.contains(&o.sampler) {
            let names: Vec<&str> = SAMPLERS.iter().map(|s| s.a1111_name()).collect();
            return refuse(&format!(
                "needs a sampler with integer timesteps, as diffusers' StableDiffusionSAGPipeline: one of {}; not {}",
                names.join(", "),
                o.sampler.a1111_name()
            ));
        }
        if sd.is_sdxl() {
            return refuse("works on SD 1.x/2.x models; SDXL has no SAG pipeline to match");
        }
        if o.control.is_some() {
            return refuse("cannot be combined with a ControlNet");
        }
        if unet.in_channels() != sd.vae.config.latent_channels {
            return refuse("needs a UNet that takes the latents alone (not a 9-channel inpainting UNet)");
        }
        if unet.mid_block.attentions.is_empty() {
            return refuse("needs a UNet whose mid block has attention");
        }
        if o.height / 8 < BLUR_TAPS / 2 + 1 || o.width / 8 < BLUR_TAPS / 2 + 1 {
            return refuse(&format!("needs an image of at least {0}x{0} (its blur reflects 4 latent pixels)", (BLUR_TAPS / 2 + 1) * 8));
        }
        let host = text.to_f32(ctx).await?;
        let (b, l, d) = (text.dim(0), text.dim(1), text.dim(2));
        // b = 2 with CFG: [uncond, cond]; the degraded call uses uncond. b = 1: the text itself.
        debug_assert!(b == 1 || b == 2);
        let text = Tensor::from_f32(ctx, &host[..l * d], &[1, l, d], text.dtype())?;
        Ok(Some(Sag {
            scale: o.sag_scale,
            alphas_cumprod: NoiseSchedule::new(&sd.scheduler_config)?.alphas_cumprod,
            prediction: sd.scheduler_config.prediction_type,
            text,
        }))
    }

    /// Adds SAG's term to `guided` (the prediction after CFG) for evaluation `i` at timestep `t`.
    /// `x` are the latents before the step, `branch` the uncond prediction with CFG (the cond one
    /// without), `probe` the main call's mid-block attention.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn guide(
        &self,
        ctx: &Context,
        unet: &UNet2DConditionModel,
        sched: &dyn Scheduler,
        probe: &MidAttention,
        x: &[f32],
        branch: &[f32],
        guided: &mut [f32],
        i: usize,
        t: f32,
        latent_shape: [usize; 4],
    ) -> Result<()> {
        let [_, c, h, w] = latent_shape;
        let qkv = probe.qkv.to_f32(ctx).await?;
        let mask = attention_mask(&qkv, probe.qkv.dim(1), probe.qkv.dim(2), probe.heads, probe.map, (h, w));
        let a = self.alphas_cumprod[t as usize];
        let (pred_x0, eps) = x0_and_eps(self.prediction, a, x, branch);
        let blurred = gaussian_blur(&pred_x0, c, h, w);
        let degraded: Vec<f32> =
            pred_x0.iter().zip(&blurred).enumerate().map(|(k, (&p, &b))| if mask[k % (h * w)] { b } else { p }).collect();
        let degraded = sched.add_noise(&degraded, &eps, i)?;
        let sample = Tensor::from_f32(ctx, &degraded, &[1, c, h, w], self.text.dtype())?;
        let out = unet.forward_full(ctx, &sample, &[t], &self.text, None, None, None)?.to_f32(ctx).await?;
        for ((g, &e), &d) in guided.iter_mut().zip(branch).zip(&out) {
            *g += self.scale * (e - d);
        }
        Ok(())
    }
}

/// diffusers' `sag_masking` mask for batch entry 0 of the probe, `h·w` booleans: the softmax
/// attention `[heads, L, L]` (scale 1/√d) averaged over heads, summed over the queries, `> 1`
/// per key (a key attended more than the average), on the `map` grid, then nearest-resized to
/// the latents (`F.interpolate`'s default).
fn attention_mask(qkv: &[f32], tokens: usize, width3: usize, heads: usize, map: (usize, usize), (h, w): (usize, usize)) -> Vec<bool> {
    let c = width3 / 3;
    let d = c / heads;
    let scale = (d as f64).powf(-0.5);
    let mut scores = vec![0f64; tokens];
    let mut row = vec![0f64; tokens];
    for head in 0..heads {
        let col = |tok: usize, part: usize, k: usize| qkv[tok * width3 + part * c + head * d + k] as f64;
        for qi in 0..tokens {
            for (kj, r) in row.iter_mut().enumerate() {
                *r = (0..d).map(|k| col(qi, 0, k) * col(kj, 1, k)).sum::<f64>() * scale;
            }
            let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = row.iter().map(|&v| (v - max).exp()).sum();
            for (s, &v) in scores.iter_mut().zip(&row) {
                *s += (v - max).exp() / sum / heads as f64;
            }
        }
    }
    let (mh, mw) = map;
    (0..h * w).map(|k| scores[(k / w) * mh / h * mw + (k % w) * mw / w] > 1.0).collect()
}

/// diffusers' SAG `pred_x0` and `pred_epsilon` from the model output at ᾱ = `a` (DDIM's
/// formulas applied to the latents as they are, as the reference does for every sampler).
fn x0_and_eps(prediction: PredictionType, a: f32, x: &[f32], out: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let (sa, sb) = (a.sqrt(), (1.0 - a).sqrt());
    match prediction {
        PredictionType::Epsilon => (x.iter().zip(out).map(|(&x, &e)| (x - sb * e) / sa).collect(), out.to_vec()),
        PredictionType::VPrediction => (
            x.iter().zip(out).map(|(&x, &v)| sa * x - sb * v).collect(),
            x.iter().zip(out).map(|(&x, &v)| sb * x + sa * v).collect(),
        ),
        PredictionType::Sample => (out.to_vec(), x.iter().zip(out).map(|(&x, &x0)| (x - sa * x0) / sb).collect()),
    }
}

/// The 9-tap Gaussian (σ = 1) of every channel of `[1, c, h, w]`, reflect-padded by 4
/// (`F.pad(mode="reflect")`, needing h, w ≥ 5): diffusers' `gaussian_blur_2d`.
fn gaussian_blur(x: &[f32], c: usize, h: usize, w: usize) -> Vec<f32> {
    let half = (BLUR_TAPS / 2) as isize;
    // torch.linspace(-4, 4, 9) is exact integers here; pdf / pdf.sum() in f32.
    let pdf: Vec<f32> = (-half..=half).map(|v| (-0.5 * (v as f32 / BLUR_SIGMA).powi(2)).exp()).collect();
    let total: f32 = pdf.iter().sum();
    let k: Vec<f32> = pdf.iter().map(|p| p / total).collect();
    let reflect = |i: isize, n: usize| -> usize {
        let n = n as isize;
        (if i < 0 { -i } else if i >= n { 2 * (n - 1) - i } else { i }) as usize
    };
    let mut out = vec![0f32; x.len()];
    for ch in 0..c {
        let plane = &x[ch * h * w..(ch + 1) * h * w];
        for y in 0..h {
            for xx in 0..w {
                let mut acc = 0f32;
                for (dy, ky) in k.iter().enumerate() {
                    let sy = reflect(y as isize + dy as isize - half, h);
                    for (dx, kx) in k.iter().enumerate() {
                        let sx = reflect(xx as isize + dx as isize - half, w);
                        acc += ky * kx * plane[sy * w + sx];
                    }
                }
                out[ch * h * w + y * w + xx] = acc;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blur_keeps_a_constant_and_spreads_a_point() {
        let flat = vec![2.5f32; 2 * 6 * 7];
        for v in gaussian_blur(&flat, 2, 6, 7) {
            assert!((v - 2.5).abs() < 1e-5, "{v}");
        }
        // a point 8 pixels from every edge: no reflection reaches it, so its mass is kept
        let mut point = vec![0f32; 17 * 17];
        point[8 * 17 + 8] = 1.0;
        let b = gaussian_blur(&point, 1, 17, 17);
        // the centre keeps k0², k0 = 1/Σ exp(-v²/2), v = -4..4
        let k0 = 1.0 / (-4..=4).map(|v: i32| (-0.5 * (v * v) as f32).exp()).sum::<f32>();
        assert!((b[8 * 17 + 8] - k0 * k0).abs() < 1e-6);
        assert!((b.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        // next to an edge the reflection folds the kernel back: row 0 sees row 1 at offsets ±1
        let mut edge = vec![0f32; 9 * 9];
        edge[9 + 4] = 1.0;
        let e = gaussian_blur(&edge, 1, 9, 9);
        let k = |v: i32| k0 * (-0.5 * (v * v) as f32).exp();
        assert!((e[4] - 2.0 * k(1) * k(0)).abs() < 1e-6, "{} vs {}", e[4], 2.0 * k(1) * k(0));
    }

    #[test]
    fn uniform_attention_masks_nothing() {
        // q = 0: every softmax row is uniform, so each key gets exactly 1 (not > 1)
        let (tokens, c) = (4, 4);
        let qkv: Vec<f32> = (0..tokens * 3 * c).map(|k| if k % (3 * c) < c { 0.0 } else { k as f32 * 0.1 }).collect();
        assert!(attention_mask(&qkv, tokens, 3 * c, 2, (2, 2), (4, 4)).iter().all(|m| !m));
    }
}

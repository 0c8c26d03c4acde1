//! pix2pix-zero's inversion (diffusers' `StableDiffusionPix2PixZeroPipeline.invert`): the image's
//! latents (a VAE posterior sample, the seed's first draw) taken up every DDIM timestep by
//! `DDIMInverseScheduler` under a caption, each step's noise prediction first regularised towards
//! i.i.d. standard normal noise by `num_reg_steps` rounds of
//!
//! - `num_auto_corr_rolls` gradient steps on the auto-correlation loss (`auto_corr_loss`): per
//!   latent plane, `mean(x · roll(x, r))²` along each axis, with `r = randint(H // 2)` drawn from
//!   the same generator after the posterior sample, repeated on 2×2 average-pooled copies while
//!   the plane is taller than 8; each step `− λ_ac · ∇ / rolls`;
//! - one gradient step on the KL divergence to N(0, 1) (`kl_divergence`:
//!   `var + mean² − 1 − log(var + 1e-7)`, unbiased variance), `− λ_kl · ∇`.
//!
//! The losses act on `get_epsilon(noise_pred)`, an affine map of the prediction (identity for
//! epsilon models; v and sample predictions convert with the destination timestep's alpha), so
//! their gradients are written out here on the host (a few thousand values), not by autograd.
//! With guidance > 1 and a non-epsilon model diffusers converts against the CFG-batched input,
//! so epsilon is the same values twice (both losses see two copies, and twice the rolls are
//! drawn); that is reproduced. The result is x_T, `[1, C, H/8, W/8]` in f32, for pix2pix-zero's
//! edit (`__call__(latents=...)`).

use super::{GenerateOptions, Image, StableDiffusion};
use crate::gpu::Context;
use crate::rng::TorchRng;
use crate::schedulers::ddim_inverse::DdimInverse;
use crate::schedulers::{NoiseSchedule, PredictionType};
use crate::{DType, Error, Result, Tensor};

/// `invert`'s arguments (defaults: diffusers').
#[derive(Clone, Debug)]
pub struct InvertOptions {
    /// The caption of the image (diffusers can caption with BLIP; here it must be given).
    pub prompt: String,
    /// DDIM inverse steps (`num_inference_steps`, 50).
    pub steps: usize,
    /// Guidance (`guidance_scale`, 1: unguided; above 1 with an empty negative prompt).
    pub guidance: f32,
    /// `lambda_auto_corr` (20; <= 0 skips the auto-correlation steps).
    pub lambda_auto_corr: f32,
    /// `lambda_kl` (20; <= 0 skips the KL steps).
    pub lambda_kl: f32,
    /// `num_reg_steps` (5; 0: a plain DDIM inversion).
    pub num_reg_steps: usize,
    /// `num_auto_corr_rolls` (5).
    pub num_auto_corr_rolls: usize,
    pub seed: u64,
}

impl Default for InvertOptions {
    fn default() -> Self {
        InvertOptions {
            prompt: String::new(),
            steps: 50,
            guidance: 1.0,
            lambda_auto_corr: 20.0,
            lambda_kl: 20.0,
            num_reg_steps: 5,
            num_auto_corr_rolls: 5,
            seed: 0,
        }
    }
}

/// `get_epsilon` as `eps = a · model_output + b · sample` at `alpha_prod_t`.
fn epsilon_coefficients(p: PredictionType, alpha_prod_t: f32) -> (f32, f32) {
    let (sa, sb) = (alpha_prod_t.sqrt(), (1.0 - alpha_prod_t).sqrt());
    match p {
        PredictionType::Epsilon => (1.0, 0.0),
        PredictionType::Sample => (-sa / sb, 1.0 / sb),
        PredictionType::VPrediction => (sa, sb),
    }
}

/// The regularisation of one step's noise prediction, in place.
struct Regulariser<'a> {
    o: &'a InvertOptions,
    /// Latent channels, height, width.
    shape: [usize; 3],
    /// How many times diffusers' epsilon repeats the prediction (2: the CFG-batch broadcast).
    copies: usize,
    coef: (f32, f32),
}

impl Regulariser<'_> {
    fn epsilon(&self, noise: &[f32], sample: &[f32]) -> Vec<f64> {
        let (a, b) = self.coef;
        let one: Vec<f64> = noise.iter().zip(sample).map(|(&n, &s)| if b == 0.0 { n as f64 } else { (a * n + b * s) as f64 }).collect();
        one.repeat(self.copies)
    }

    /// `noise − λ · a · Σ_copies ∂L/∂eps / div`, in f32 as torch updates it.
    fn descend(&self, noise: &mut [f32], de: &[f64], lambda: f32, div: f32) {
        let n = noise.len();
        for (k, v) in noise.iter_mut().enumerate() {
            let g = (0..self.copies).map(|c| de[c * n + k]).sum::<f64>() as f32 * self.coef.0;
            *v -= lambda * (g / div);
        }
    }

    fn run(&self, noise: &mut [f32], sample: &[f32], rng: &mut TorchRng) {
        let o = self.o;
        for _ in 0..o.num_reg_steps {
            if o.lambda_auto_corr > 0.0 {
                for _ in 0..o.num_auto_corr_rolls {
                    let e = self.epsilon(noise, sample);
                    let g = auto_corr_grad(&e, self.shape[1], self.shape[2], rng);
                    self.descend(noise, &g, o.lambda_auto_corr, o.num_auto_corr_rolls as f32);
                }
            }
            if o.lambda_kl > 0.0 {
                let e = self.epsilon(noise, sample);
                self.descend(noise, &kl_grad(&e), o.lambda_kl, 1.0);
            }
        }
    }
}

/// The plane sizes `auto_corr_loss` visits: halved (floor, `avg_pool2d(2)`) while taller than 8.
fn pyramid(h: usize, w: usize) -> Vec<(usize, usize)> {
    let mut sizes = vec![(h, w)];
    while sizes.last().unwrap().0 > 8 {
        let (h, w) = *sizes.last().unwrap();
        sizes.push((h / 2, w / 2));
    }
    sizes
}

/// ∂/∂x of `auto_corr_loss` over planes of `h × w` (one roll draw per plane and level, in
/// diffusers' order: batch, channel, level). With `m = mean(x · roll(x, r))` along an axis,
/// `∂m²/∂x_p = 2m (x_{p−r} + x_{p+r}) / N`; pooled levels pass their gradient back a quarter to
/// each of the 2×2 pixels they averaged.
fn auto_corr_grad(e: &[f64], h: usize, w: usize, rng: &mut TorchRng) -> Vec<f64> {
    let sizes = pyramid(h, w);
    let mut out = vec![0f64; e.len()];
    for (plane, grad) in e.chunks(h * w).zip(out.chunks_mut(h * w)) {
        let mut level = plane.to_vec();
        let mut grads = Vec::with_capacity(sizes.len());
        for (li, &(lh, lw)) in sizes.iter().enumerate() {
            let r = rng.randint((lh / 2) as u64) as usize;
            let at = |y: usize, x: usize| level[(y % lh) * lw + x % lw];
            let (ry, rx) = (r % lh, r % lw);
            let n = (lh * lw) as f64;
            let (mut mh, mut mw) = (0f64, 0f64);
            for y in 0..lh {
                for x in 0..lw {
                    mh += at(y, x) * at(y + lh - ry, x);
                    mw += at(y, x) * at(y, x + lw - rx);
                }
            }
            let (mh, mw) = (mh / n, mw / n);
            let mut g = vec![0f64; lh * lw];
            for y in 0..lh {
                for x in 0..lw {
                    g[y * lw + x] = 2.0 * mh * (at(y + lh - ry, x) + at(y + ry, x)) / n + 2.0 * mw * (at(y, x + lw - rx) + at(y, x + rx)) / n;
                }
            }
            grads.push(g);
            if li + 1 < sizes.len() {
                let (ph, pw) = sizes[li + 1];
                level = (0..ph * pw)
                    .map(|i| {
                        let (y, x) = (2 * (i / pw), 2 * (i % pw));
                        (at(y, x) + at(y, x + 1) + at(y + 1, x) + at(y + 1, x + 1)) / 4.0
                    })
                    .collect();
            }
        }
        // back from the coarsest level: each pooled pixel's gradient a quarter to its 2×2 block
        let mut acc = grads.pop().unwrap();
        while let Some(mut g) = grads.pop() {
            let (fh, fw) = sizes[grads.len()];
            let (ph, pw) = sizes[grads.len() + 1];
            for y in 0..(2 * ph).min(fh) {
                for x in 0..(2 * pw).min(fw) {
                    g[y * fw + x] += acc[(y / 2) * pw + x / 2] / 4.0;
                }
            }
            acc = g;
        }
        grad.copy_from_slice(&acc);
    }
    out
}

/// ∂/∂x of `var + mean² − 1 − log(var + 1e-7)` (torch's unbiased `var()`).
fn kl_grad(e: &[f64]) -> Vec<f64> {
    let n = e.len() as f64;
    let mean = e.iter().sum::<f64>() / n;
    let var = e.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1.0);
    let dv = 1.0 - 1.0 / (var + 1e-7);
    e.iter().map(|x| 2.0 * (x - mean) / (n - 1.0) * dv + 2.0 * mean / n).collect()
}

fn check(sd: &StableDiffusion, image: &Image, o: &InvertOptions) -> Result<()> {
    super::check_size(image.width, image.height)?;
    if image.rgb.len() != image.width * image.height * 3 {
        return Err(Error::Unsupported(format!("pix2pix-zero image: {} bytes for {}x{} RGB", image.rgb.len(), image.width, image.height)));
    }
    if sd.is_sdxl() {
        return Err(Error::Unsupported(format!("pix2pix-zero supports SD 1.x/2.x models (diffusers' pix2pix-zero pipeline has no SDXL variant); {} is SDXL", sd.name)));
    }
    let (unet_in, lc) = (sd.unet.in_channels(), sd.vae.config.latent_channels);
    if unet_in != lc {
        return Err(Error::Unsupported(format!("pix2pix-zero needs a text-to-image model ({lc}-channel UNet); {} has a UNet with {unet_in} input channels", sd.name)));
    }
    if o.prompt.trim().is_empty() {
        return Err(Error::Unsupported("pix2pix-zero inversion: the caption (prompt) is empty; say what the image shows (no captioning model is run)".into()));
    }
    if !o.guidance.is_finite() || !o.lambda_auto_corr.is_finite() || !o.lambda_kl.is_finite() {
        return Err(Error::Unsupported("pix2pix-zero inversion: guidance and the lambdas must be finite numbers".into()));
    }
    let regularised = o.num_reg_steps > 0 && o.lambda_auto_corr > 0.0 && o.num_auto_corr_rolls > 0;
    if regularised && pyramid(image.height / 8, image.width / 8).iter().any(|&(h, w)| h < 2 || (h > 8 && w < 2)) {
        return Err(Error::Unsupported(format!(
            "pix2pix-zero inversion: {}x{} is too small for the auto-correlation regularisation (latents at least 2 high, and 2 wide once taller than 8); use a larger image or lambda_auto_corr 0",
            image.width, image.height
        )));
    }
    Ok(())
}

impl StableDiffusion {
    /// pix2pix-zero's inversion of `image` under `o.prompt`: x_T, `[1, C, H/8, W/8]` (f32).
    pub async fn pix2pix_zero_invert_async(&self, ctx: &Context, image: &Image, o: &InvertOptions) -> Result<Tensor> {
        check(self, image, o)?;
        let guided = super::uses_cfg(o.guidance);
        // `invert` passes no negative prompt: the empty one when guided
        let text = self.diffedit_text(ctx, &o.prompt, "", guided).await?;
        let inv = DdimInverse::new(&self.scheduler_config, o.steps)?;
        let alphas = NoiseSchedule::new(&self.scheduler_config)?.alphas_cumprod;
        let prediction = self.scheduler_config.prediction_type;
        let shape = self.diffedit_shape(image.width, image.height);
        let size = GenerateOptions { width: image.width, height: image.height, ..Default::default() };
        let mut rng = TorchRng::new(o.seed);
        let mut x = super::img2img::encode_sample(self, ctx, &super::img2img::image_to_tensor_data(image), &size, &mut rng).await?;
        super::phase(ctx, "unet");
        for (i, &t) in inv.timesteps().iter().enumerate() {
            let mut eps = self.diffedit_eps(ctx, &x, t as f32, &text, o.guidance, &shape).await?;
            let copies = if guided && prediction != PredictionType::Epsilon { 2 } else { 1 };
            let reg = Regulariser { o, shape: [shape[1], shape[2], shape[3]], copies, coef: epsilon_coefficients(prediction, alphas[t as usize]) };
            reg.run(&mut eps, &x, &mut rng);
            x = inv.step(&eps, i, &x);
        }
        Tensor::from_f32(ctx, &x, &shape, DType::F32)
    }

    /// [`StableDiffusion::pix2pix_zero_invert_async`], blocking (native).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn pix2pix_zero_invert(&self, ctx: &Context, image: &Image, o: &InvertOptions) -> Result<Tensor> {
        pollster::block_on(self.pix2pix_zero_invert_async(ctx, image, o))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The analytic gradients against central differences of the losses written directly.
    #[test]
    fn gradients_match_finite_differences() {
        let (h, w) = (18, 10); // two pooled levels (18 -> 9 -> 4), odd sizes on the way
        let mut seed = TorchRng::new(3);
        let e: Vec<f64> = seed.randn(2 * h * w).iter().map(|&v| v as f64).collect();
        let auto_corr = |x: &[f64], rng: &mut TorchRng| -> f64 {
            let mut loss = 0.0;
            for plane in x.chunks(h * w) {
                let mut level = plane.to_vec();
                for (li, &(lh, lw)) in pyramid(h, w).iter().enumerate() {
                    let r = rng.randint((lh / 2) as u64) as usize;
                    let at = |y: usize, x: usize| level[(y % lh) * lw + x % lw];
                    let n = (lh * lw) as f64;
                    let mh: f64 = (0..lh * lw).map(|i| at(i / lw, i % lw) * at(i / lw + lh - r % lh, i % lw)).sum::<f64>() / n;
                    let mw: f64 = (0..lh * lw).map(|i| at(i / lw, i % lw) * at(i / lw, i % lw + lw - r % lw)).sum::<f64>() / n;
                    loss += mh * mh + mw * mw;
                    if let Some(&(ph, pw)) = pyramid(h, w).get(li + 1) {
                        level = (0..ph * pw).map(|i| (at(2 * (i / pw), 2 * (i % pw)) + at(2 * (i / pw), 2 * (i % pw) + 1) + at(2 * (i / pw) + 1, 2 * (i % pw)) + at(2 * (i / pw) + 1, 2 * (i % pw) + 1)) / 4.0).collect();
                    }
                }
            }
            loss
        };
        let kl = |x: &[f64]| {
            let n = x.len() as f64;
            let m = x.iter().sum::<f64>() / n;
            let v = x.iter().map(|a| (a - m) * (a - m)).sum::<f64>() / (n - 1.0);
            v + m * m - 1.0 - (v + 1e-7).ln()
        };
        let ga = auto_corr_grad(&e, h, w, &mut TorchRng::new(9));
        let gk = kl_grad(&e);
        for k in (0..e.len()).step_by(7) {
            let (mut p, mut m) = (e.clone(), e.clone());
            p[k] += 1e-5;
            m[k] -= 1e-5;
            let fa = (auto_corr(&p, &mut TorchRng::new(9)) - auto_corr(&m, &mut TorchRng::new(9))) / 2e-5;
            let fk = (kl(&p) - kl(&m)) / 2e-5;
            assert!((fa - ga[k]).abs() <= 1e-6 * (1.0 + fa.abs()), "auto-corr {k}: {fa} vs {}", ga[k]);
            assert!((fk - gk[k]).abs() <= 1e-6 * (1.0 + fk.abs()), "kl {k}: {fk} vs {}", gk[k]);
        }
    }

    #[test]
    fn epsilon_coefficients_invert_the_predictions() {
        let (a, x, eps) = (0.3f32, 0.7f32, -1.2f32);
        let (sa, sb) = (a.sqrt(), (1.0 - a).sqrt());
        for (p, out) in [(PredictionType::Epsilon, eps), (PredictionType::Sample, (x - sb * eps) / sa), (PredictionType::VPrediction, sa * eps - sb * (x - sb * eps) / sa)] {
            let (ca, cb) = epsilon_coefficients(p, a);
            assert!((ca * out + cb * x - eps).abs() < 1e-5, "{p:?}");
        }
    }
}

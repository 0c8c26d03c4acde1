//! Every sampler against diffusers 0.39 (CPU, f32) goldens, for SD1.5-style (epsilon) and
//! SD2.1-style (v_prediction) configs: schedules (`timesteps`, `t`, `sigmas`,
//! `init_noise_sigma`), `scale_model_input`, the guidance combination and each `step`, replayed
//! from the golden initial noise with the golden guided model outputs.
//!
//! Tolerance for latents / UNet inputs: 1e-5 × max|golden| of the compared tensor. Both sides
//! are f32 and follow the same formulas in the same order, but some scalars differ in their
//! last bits (LMS coefficients by Gauss–Legendre instead of scipy's quad over an f32 integrand,
//! torch's vectorised `linspace` for the betas, numpy's f32 `log` for log-sigmas, f32 vs f64
//! temporaries), i.e. ~1e-7 relative per step; the x0 predictions multiply by σ up to 14.6 and
//! Heun/LMS/DPM++ reuse earlier terms, so a few 1e-7 can accumulate over 7 evaluations
//! (measured worst: 7.5e-7, sd21 Heun; DPM++ matches exactly; the samplers added later — DPM++
//! 2M SDE, DPM++ SDE, UniPC, LCM, DDPM, exponential schedules — are all ≤ 4.2e-7, worst
//! sd15 UniPC exponential). 1e-5 leaves >10× headroom over that, while real mistakes (wrong multistep order, spacing, sigmas, prediction type, noise)
//! move latents by ≥ 7e-4 (LMS order 2 instead of 4, the subtlest) and mostly by 1e-1 or more;
//! `wrong_variants_fail` checks that the comparison actually catches such mistakes.

use pigment::rng::TorchRng;
use pigment::schedulers::{
    self, cfg_combine, dpm_sde::DpmPlusPlusSde, lms::Lms, SamplerKind, Scheduler, SchedulerConfig, SigmaSchedule,
    TimestepSpacing,
};
use safetensors::SafeTensors;
use std::path::PathBuf;

const TOL: f32 = 1e-5;
const GUIDANCE: f32 = 7.5;
const N: SigmaSchedule = SigmaSchedule::Normal;
const K: SigmaSchedule = SigmaSchedule::Karras;
const E: SigmaSchedule = SigmaSchedule::Exponential;
/// Goldens from tools/make_fixtures.py and (from dpmpp_2m_sde on) tools/fixtures_samplers.py.
/// DPM++ SDE is replayed separately (`dpmpp_sde_step_math_matches_diffusers`): its noise is not
/// the generator's.
const SAMPLERS: [(&str, SamplerKind, SigmaSchedule); 22] = [
    ("ddim", SamplerKind::Ddim, N),
    ("pndm", SamplerKind::Pndm, N),
    ("lms", SamplerKind::Lms, N),
    ("euler", SamplerKind::Euler, N),
    ("euler_a", SamplerKind::EulerAncestral, N),
    ("heun", SamplerKind::Heun, N),
    ("dpmpp_2m", SamplerKind::DpmPlusPlus2M, N),
    ("lms_karras", SamplerKind::Lms, K),
    ("euler_karras", SamplerKind::Euler, K),
    ("heun_karras", SamplerKind::Heun, K),
    ("dpmpp_2m_karras", SamplerKind::DpmPlusPlus2M, K),
    ("dpmpp_2m_sde", SamplerKind::DpmPlusPlus2MSde, N),
    ("dpmpp_2m_sde_karras", SamplerKind::DpmPlusPlus2MSde, K),
    ("unipc", SamplerKind::UniPc, N),
    ("unipc_karras", SamplerKind::UniPc, K),
    ("lcm", SamplerKind::Lcm, N),
    ("ddpm", SamplerKind::Ddpm, N),
    ("euler_exponential", SamplerKind::Euler, E),
    ("lms_exponential", SamplerKind::Lms, E),
    ("heun_exponential", SamplerKind::Heun, E),
    ("dpmpp_2m_exponential", SamplerKind::DpmPlusPlus2M, E),
    ("unipc_exponential", SamplerKind::UniPc, E),
];
const SDE_SAMPLERS: [(&str, SigmaSchedule); 3] =
    [("dpmpp_sde", N), ("dpmpp_sde_karras", K), ("dpmpp_sde_exponential", E)];
const VARIANTS: [&str; 2] = ["sd15-tiny", "sd21-tiny"];

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn pipeline_config(variant: &str) -> SchedulerConfig {
    let p = fixtures().join(variant).join("scheduler/scheduler_config.json");
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    SchedulerConfig::from_json(&text).unwrap()
}

struct Golden {
    bytes: Vec<u8>,
}

impl Golden {
    fn load(variant: &str, sampler: &str) -> Self {
        let p = fixtures().join("golden").join(variant).join(format!("sampler_{sampler}.safetensors"));
        Golden { bytes: std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())) }
    }
    fn get(&self, name: &str) -> (Vec<usize>, Vec<f32>) {
        let st = SafeTensors::deserialize(&self.bytes).unwrap();
        let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(t.dtype(), safetensors::Dtype::F32, "{name}");
        let v = t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        (t.shape().to_vec(), v)
    }
    fn has(&self, name: &str) -> bool {
        SafeTensors::deserialize(&self.bytes).unwrap().tensor(name).is_ok()
    }
}

/// max |a − b| / max |b| (max |b| floored at 1e-6).
fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

/// Replays one golden run through `s`; returns the worst relative latent error, or panics with
/// a description on any schedule/input mismatch when `strict`.
fn replay(s: &mut dyn Scheduler, g: &Golden, what: &str, strict: bool) -> f32 {
    let (_, noise) = g.get("noise");
    let (_, init_sigma) = g.get("init_noise_sigma");
    let (tshape, golden_ts) = g.get("timesteps");
    let (_, golden_t) = g.get("t");
    let (_, unet_in) = g.get("unet_in");
    let (_, unet_out) = g.get("unet_out");
    let (_, noise_pred) = g.get("noise_pred");
    let (_, latents) = g.get("latents");
    let steps = tshape[0];
    let n = noise.len();

    if strict {
        assert_eq!(s.timesteps().len(), steps, "{what}: number of evaluations");
        for (i, (&ours, (&want, &t))) in s.timesteps().iter().zip(golden_ts.iter().zip(&golden_t)).enumerate() {
            assert_eq!(want, t, "{what}: golden timesteps[{i}] vs t[{i}]");
            if want.fract() == 0.0 {
                assert_eq!(ours, want, "{what}: timestep {i}");
            } else {
                assert!((ours - want).abs() <= 1e-3, "{what}: timestep {i}: {ours} vs {want}");
            }
        }
        let ins = s.init_noise_sigma();
        assert!(
            (ins - init_sigma[0]).abs() <= 1e-6 * init_sigma[0],
            "{what}: init_noise_sigma {ins} vs {}",
            init_sigma[0]
        );
        if g.has("sigmas") {
            let (_, sig) = g.get("sigmas");
            let ours = s.sigmas().unwrap_or_else(|| panic!("{what}: no sigmas"));
            assert_eq!(ours.len(), sig.len(), "{what}: sigmas length");
            for (i, (&a, &b)) in ours.iter().zip(&sig).enumerate() {
                assert!((a - b).abs() <= 1e-6 * b.abs().max(1e-3), "{what}: sigma {i}: {a} vs {b}");
            }
        } else {
            assert!(s.sigmas().is_none(), "{what}: unexpected sigmas");
        }
    }

    let mut rng = TorchRng::new(42);
    let first = rng.randn(n);
    assert_eq!(first, noise, "{what}: initial noise");
    let mut x: Vec<f32> = noise.iter().map(|&v| v * s.init_noise_sigma()).collect();
    let mut worst = 0f32;
    for i in 0..steps.min(s.timesteps().len()) {
        let xin = s.scale_model_input(&x, i);
        let base = i * 2 * n;
        if strict {
            let (u_in, c_in) = (&unet_in[base..base + n], &unet_in[base + n..base + 2 * n]);
            let e = rel_err(&xin, c_in).max(rel_err(&xin, u_in));
            assert!(e <= TOL, "{what}: unet_in[{i}] rel err {e:e}");
            // guidance combination, from the golden UNet outputs
            let (u, c) = (&unet_out[base..base + n], &unet_out[base + n..base + 2 * n]);
            let guided = cfg_combine(u, c, GUIDANCE);
            let e = rel_err(&guided, &noise_pred[i * n..(i + 1) * n]);
            assert!(e <= 1e-6, "{what}: cfg_combine at {i}: rel err {e:e}");
        }
        x = s.step(&noise_pred[i * n..(i + 1) * n], i, &x, &mut rng);
        let e = rel_err(&x, &latents[i * n..(i + 1) * n]);
        if strict {
            assert!(e <= TOL, "{what}: latents after evaluation {i}: rel err {e:e}");
        }
        worst = worst.max(e);
    }
    if strict {
        assert_eq!(s.timesteps().len(), steps, "{what}: evaluation count");
    }
    worst
}

#[test]
fn samplers_match_diffusers() {
    let mut report = Vec::new();
    for variant in VARIANTS {
        let cfg = pipeline_config(variant);
        for (name, kind, schedule) in SAMPLERS {
            let g = Golden::load(variant, name);
            let mut s = schedulers::build(kind, schedule, &cfg, 4).unwrap();
            let what = format!("{variant}/{name}");
            let e = replay(s.as_mut(), &g, &what, true);
            // reset() must make a second run identical
            s.reset();
            let e2 = replay(s.as_mut(), &g, &what, true);
            assert_eq!(e, e2, "{what}: reset");
            report.push(format!("{what}: {e:.2e}"));
        }
    }
    eprintln!("worst relative latent error per sampler:\n  {}", report.join("\n  "));
}

#[test]
fn default_scheduler_goldens() {
    // txt2img.safetensors: sd15 uses its PNDM config, sd21 its DDIM config.
    for (variant, kind) in [("sd15-tiny", SamplerKind::Pndm), ("sd21-tiny", SamplerKind::Ddim)] {
        let cfg = pipeline_config(variant);
        let p = fixtures().join("golden").join(variant).join("txt2img.safetensors");
        let g = Golden { bytes: std::fs::read(p).unwrap() };
        let mut s = schedulers::build(kind, N, &cfg, 4).unwrap();
        replay(s.as_mut(), &g, &format!("{variant}/txt2img"), true);
    }
}

/// The comparison must be able to fail: plausible-but-wrong samplers are well outside tolerance
/// (LMS order 2 vs 4 is the closest, ~7e-4 after 4 steps; the others are ~1e-1 or more).
#[test]
fn wrong_variants_fail() {
    let cfg = pipeline_config("sd15-tiny");
    // LMS of order 2 instead of 4.
    let g = Golden::load("sd15-tiny", "lms");
    let mut s = Lms::new(&cfg, 4, N).unwrap().with_order(2);
    let e = replay(&mut s, &g, "lms order 2", false);
    assert!(e > 10.0 * TOL, "LMS order 2 should not match: {e:e}");
    // Euler with DDIM-style "leading" spacing.
    let g = Golden::load("sd15-tiny", "euler");
    let mut c = cfg.clone();
    c.timestep_spacing = Some(TimestepSpacing::Leading);
    let mut s = schedulers::build(SamplerKind::Euler, N, &c, 4).unwrap();
    assert_ne!(s.timesteps(), &[999.0, 666.0, 333.0, 0.0]);
    let e = replay(s.as_mut(), &g, "euler leading", false);
    assert!(e > 100.0 * TOL, "Euler with leading spacing should not match: {e:e}");
    // v-prediction goldens with an epsilon config.
    let g = Golden::load("sd21-tiny", "dpmpp_2m");
    let mut s = schedulers::build(SamplerKind::DpmPlusPlus2M, N, &cfg, 4).unwrap();
    let e = replay(s.as_mut(), &g, "dpm eps on v", false);
    assert!(e > 100.0 * TOL, "epsilon config on v goldens should not match: {e:e}");
    // Euler a with noise drawn from another seed.
    let g = Golden::load("sd15-tiny", "euler_a");
    let (_, noise_pred) = g.get("noise_pred");
    let (_, latents) = g.get("latents");
    let (_, noise) = g.get("noise");
    let mut s = schedulers::build(SamplerKind::EulerAncestral, N, &cfg, 4).unwrap();
    let mut rng = TorchRng::new(43);
    let x: Vec<f32> = noise.iter().map(|&v| v * s.init_noise_sigma()).collect();
    let x = s.step(&noise_pred[..256], 0, &x, &mut rng);
    assert!(rel_err(&x, &latents[..256]) > 100.0 * TOL);
}

#[test]
fn config_parsing_and_class_defaults() {
    let cfg = pipeline_config("sd21-tiny");
    assert_eq!(cfg.prediction_type, schedulers::PredictionType::VPrediction);
    assert_eq!(cfg.timestep_spacing, None);
    assert_eq!(cfg.steps_offset, 1);
    // Class defaults when the config lacks timestep_spacing.
    let ddim = schedulers::build(SamplerKind::Ddim, N, &cfg, 4).unwrap();
    assert_eq!(ddim.timesteps(), &[751.0, 501.0, 251.0, 1.0]);
    let pndm = schedulers::build(SamplerKind::Pndm, N, &cfg, 4).unwrap();
    assert_eq!(pndm.timesteps(), &[751.0, 501.0, 501.0, 251.0, 1.0]);
    let heun = schedulers::build(SamplerKind::Heun, N, &cfg, 4).unwrap();
    assert_eq!(heun.timesteps().len(), 7);
    assert_eq!(heun.num_inference_steps(), 4);
    // Karras / exponential only where diffusers has them; the error names the sampler and
    // what it supports.
    for kind in [SamplerKind::Ddim, SamplerKind::Pndm, SamplerKind::EulerAncestral, SamplerKind::Lcm, SamplerKind::Ddpm] {
        for sched in [K, E] {
            let e = schedulers::build(kind, sched, &cfg, 4).err().unwrap().to_string();
            assert!(e.contains(kind.name()) && e.contains("normal") && e.contains(sched.name()), "{e}");
        }
    }
    for (_, kind, sched) in SAMPLERS {
        assert!(kind.supports_schedule(sched));
    }
    assert!(schedulers::build(SamplerKind::Euler, N, &cfg, 0).is_err());
    // LCM: at most original_inference_steps (50) steps; its schedule for 4 steps.
    assert!(schedulers::build(SamplerKind::Lcm, N, &cfg, 51).is_err());
    let lcm = schedulers::build(SamplerKind::Lcm, N, &cfg, 4).unwrap();
    assert_eq!(lcm.timesteps(), &[999.0, 759.0, 499.0, 259.0]);
    // A config's use_karras_sigmas / use_exponential_sigmas apply to the normal schedule.
    let mut kc = cfg.clone();
    kc.use_exponential_sigmas = true;
    let a = schedulers::build(SamplerKind::Euler, N, &kc, 4).unwrap();
    let b = schedulers::build(SamplerKind::Euler, E, &cfg, 4).unwrap();
    assert_eq!(a.sigmas(), b.sigmas());
    assert!(schedulers::build(SamplerKind::Ddim, N, &kc, 4).is_ok());
    assert!(SchedulerConfig::from_json(r#"{"use_exponential_sigmas":true}"#).unwrap().use_exponential_sigmas);
    for s in SigmaSchedule::ALL {
        assert_eq!(SigmaSchedule::parse(s.name()).unwrap(), s);
    }
    assert!(SigmaSchedule::parse("polyexponential").is_err());
    // Names.
    for k in SamplerKind::ALL {
        assert_eq!(SamplerKind::parse(k.name()).unwrap(), k);
    }
    assert_eq!(SamplerKind::parse("DPM++2M").unwrap(), SamplerKind::DpmPlusPlus2M);
    assert_eq!(SamplerKind::parse("euler_a").unwrap(), SamplerKind::EulerAncestral);
    assert_eq!(SamplerKind::parse("dpmpp_2m_sde").unwrap(), SamplerKind::DpmPlusPlus2MSde);
    assert_eq!(SamplerKind::parse("DPM++ SDE").unwrap(), SamplerKind::DpmPlusPlusSde);
    assert_eq!(SamplerKind::parse("UniPC").unwrap(), SamplerKind::UniPc);
    let e = SamplerKind::parse("dpm2").err().unwrap().to_string();
    assert!(e.contains("dpmpp-2m-sde") && e.contains("ddpm"), "{e}");
    // Explicit spacing in the file wins; bad values are errors.
    let c = SchedulerConfig::from_json(
        r#"{"beta_schedule":"scaled_linear","beta_start":0.00085,"beta_end":0.012,"timestep_spacing":"trailing"}"#,
    )
    .unwrap();
    let d = schedulers::build(SamplerKind::Ddim, N, &c, 4).unwrap();
    assert_eq!(d.timesteps(), &[999.0, 749.0, 499.0, 249.0]);
    let e = schedulers::build(SamplerKind::Euler, N, &c, 4).unwrap();
    assert_eq!(e.timesteps(), &[999.0, 749.0, 499.0, 249.0]);
    assert!(SchedulerConfig::from_json(r#"{"prediction_type":"flow"}"#).is_err());
    assert!(SchedulerConfig::from_json("[1]").is_err());
}

#[test]
fn ddim_eta_draws_noise() {
    let cfg = pipeline_config("sd15-tiny");
    let x: Vec<f32> = TorchRng::new(1).randn(64);
    let eps: Vec<f32> = TorchRng::new(2).randn(64);
    let mut a = schedulers::ddim::Ddim::new(&cfg, 4, 0.0).unwrap();
    let mut b = schedulers::ddim::Ddim::new(&cfg, 4, 0.0).unwrap().with_eta(1.0);
    let mut r1 = TorchRng::new(3);
    let mut r2 = TorchRng::new(3);
    let ya = a.step(&eps, 0, &x, &mut r1);
    let yb = b.step(&eps, 0, &x, &mut r2);
    assert_ne!(ya, yb);
    // eta = 0 leaves the generator untouched; eta > 0 consumed one draw.
    assert_eq!(r1.next_u32(), TorchRng::new(3).next_u32());
    assert_ne!(r2.next_u32(), TorchRng::new(3).next_u32());
    assert!(yb.iter().all(|v| v.is_finite()));
}

#[test]
fn other_step_counts_are_sane() {
    // No goldens for these: schedules must be monotone, finite, and run end to end.
    let cfg = pipeline_config("sd15-tiny");
    for steps in [1usize, 2, 7, 20, 50] {
        let sde = SDE_SAMPLERS.map(|(n, s)| (n, SamplerKind::DpmPlusPlusSde, s));
        for (_, kind, karras) in SAMPLERS.into_iter().chain(sde) {
            if kind == SamplerKind::Pndm && steps < 2 {
                continue;
            }
            let mut s = schedulers::build(kind, karras, &cfg, steps).unwrap();
            let ts = s.timesteps().to_vec();
            assert!(ts.windows(2).all(|w| w[0] >= w[1]), "{kind:?} {karras:?} {steps}: {ts:?}");
            assert!(ts.iter().all(|t| (0.0..1000.0).contains(t)));
            let mut rng = TorchRng::new(0);
            let mut x: Vec<f32> = rng.randn(64).iter().map(|v| v * s.init_noise_sigma()).collect();
            for i in 0..ts.len() {
                let xin = s.scale_model_input(&x, i);
                // a fake "model": predict the noise as a scaled copy of the input
                let eps: Vec<f32> = xin.iter().map(|v| 0.5 * v).collect();
                x = s.step(&eps, i, &x, &mut rng);
            }
            assert!(x.iter().all(|v| v.is_finite()), "{kind:?} {karras:?} {steps}");
        }
    }
}

/// DPM++ SDE: schedule, inputs and every step's latents against diffusers, with the noise
/// diffusers' (replaced, seeded-randn) noise sampler returned injected (`step_noise`, 6 draws for
/// 4 steps: two per step, none for the final Euler step to σ = 0).
#[test]
fn dpmpp_sde_step_math_matches_diffusers() {
    let mut report = Vec::new();
    for variant in VARIANTS {
        let cfg = pipeline_config(variant);
        for (name, schedule) in SDE_SAMPLERS {
            let g = Golden::load(variant, name);
            let (shape, flat) = g.get("step_noise");
            assert_eq!(shape[0], 6, "{name}");
            let n = flat.len() / shape[0];
            let noise: Vec<Vec<f32>> = flat.chunks(n).map(|c| c.to_vec()).collect();
            let mut s = DpmPlusPlusSde::new(&cfg, 4, schedule).unwrap().with_noise(noise.clone());
            let what = format!("{variant}/{name}");
            let e = replay(&mut s, &g, &what, true);
            report.push(format!("{what}: {e:.2e}"));
            // the own Brownian noise gives a different (but finite, similar-scale) result
            let mut b = schedulers::build(SamplerKind::DpmPlusPlusSde, schedule, &cfg, 4).unwrap();
            let e = replay(b.as_mut(), &g, &what, false);
            assert!(e > 100.0 * TOL && e < 10.0, "{what}: Brownian noise vs diffusers' {e:e}");
            // wrong noise (one draw shifted) must not match
            let mut shifted = noise.clone();
            shifted.rotate_left(1);
            let mut w = DpmPlusPlusSde::new(&cfg, 4, schedule).unwrap().with_noise(shifted);
            let e = replay(&mut w, &g, &what, false);
            assert!(e > 100.0 * TOL, "{what}: shifted noise should not match: {e:e}");
        }
    }
    eprintln!("DPM++ SDE worst relative latent error:\n  {}", report.join("\n  "));
}

/// The noise-drawing samplers draw exactly what diffusers drew: the generator continues after the
/// initial latents (one latent-sized draw per step; LCM none after the last step).
#[test]
fn generator_noise_matches_diffusers_draws() {
    let cfg = pipeline_config("sd15-tiny");
    for (name, kind, draws) in
        [("dpmpp_2m_sde", SamplerKind::DpmPlusPlus2MSde, 4), ("lcm", SamplerKind::Lcm, 3), ("ddpm", SamplerKind::Ddpm, 4)]
    {
        let g = Golden::load("sd15-tiny", name);
        let (shape, want) = g.get("step_noise");
        assert_eq!(shape[0], draws, "{name}");
        let (_, noise) = g.get("noise");
        let mut rng = TorchRng::new(42);
        rng.randn(noise.len());
        let got = rng.randn(want.len());
        assert_eq!(got, want, "{name}");
        assert!(schedulers::build(kind, N, &cfg, 4).is_ok());
    }
}

/// The DPM++ SDE Brownian noise: unit variance per draw, and the two halves of a step correlated
/// as Brownian increments over nested intervals are (corr = √(|Δ_mid| / |Δ_full|)).
#[test]
fn dpmpp_sde_brownian_noise_statistics() {
    let cfg = pipeline_config("sd15-tiny");
    let n = 20_000;
    let mut s = schedulers::build(SamplerKind::DpmPlusPlusSde, N, &cfg, 4).unwrap();
    let sig = s.sigmas().unwrap().to_vec();
    let mut rng = TorchRng::new(5);
    let x = vec![0f32; n];
    // epsilon = 0 and x = 0: x0 = 0, so each half's output is exactly z·σ_up.
    let zero = vec![0f32; n];
    let a = s.step(&zero, 0, &x, &mut rng);
    let b = s.step(&zero, 1, &x, &mut rng);
    let stats = |v: &[f32]| {
        let m = v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
        (m, (v.iter().map(|&x| (x as f64 - m).powi(2)).sum::<f64>() / v.len() as f64).sqrt())
    };
    let (ma, sa) = stats(&a);
    let (mb, sb) = stats(&b);
    assert!(ma.abs() < 0.05 * sa && mb.abs() < 0.05 * sb, "{ma} {mb}");
    let corr = a.iter().zip(&b).map(|(&x, &y)| (x as f64 - ma) * (y as f64 - mb)).sum::<f64>() / (n as f64 * sa * sb);
    let (s0, s1) = (sig[0] as f64, sig[1] as f64);
    let mid = (s0 * s1).sqrt();
    // unit-variance noise times σ_up = √(σ_to²(σ_from² − σ_to²)/σ_from²)
    let up = |from: f64, to: f64| (to * to * (from * from - to * to) / (from * from)).sqrt().min(to);
    assert!((sa / up(s0, mid) - 1.0).abs() < 0.03, "std {sa} vs {}", up(s0, mid));
    assert!((sb / up(s0, s1) - 1.0).abs() < 0.03, "std {sb} vs {}", up(s0, s1));
    let want = ((s0 - mid) / (s0 - s1)).sqrt();
    assert!((corr - want).abs() < 0.03, "corr {corr} vs {want}");
}

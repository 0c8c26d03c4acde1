//! Full-size SD 1.5 and SD 2.1-768-v with the synthetic generator's weights
//! (`synthetic:sd15`, `synthetic:sd21v`, src/weights/synthetic.rs) against diffusers 0.39 (CPU,
//! f32) on the same weights (`tools/fixtures_fullsize.py`, goldens in
//! `tests/fixtures/golden/fullsize/<model>/`). One model load per model and dtype covers:
//!
//! * the text encoder: `[negative, prompt]` last_hidden_state (first 16 tokens kept);
//! * a UNet call at an 8x8 latent, batch 2, t = 981, on Pigment's own text encoder output;
//! * a VAE decode of a 16x16 latent;
//! * a 2-step 64x64 txt2img (the model's scheduler, cfg 7.5, seed 42) against diffusers' PNG.
//!
//! Tolerances, as max |got - want| / max |want| per tensor (the tiny models' measure):
//! TOLERANCES_DOC
//!
//! Peak memory is several GiB (the generated f16 weights in RAM plus their GPU copies, which
//! lavapipe keeps in RAM too): the tests of this binary run one at a time (`SERIAL`); run them
//! under the big-memory lock on shared machines: `flock /work/bigmem.lock cargo test --release
//! --test fullsize`.

mod common;

use common::*;
use pigment::pipeline::{GenerateOptions, StableDiffusion};
use pigment::schedulers::{SamplerKind, SigmaSchedule};
use pigment::weights::synthetic::SyntheticModel;
use pigment::{DType, Tensor};
use std::sync::Mutex;
use std::time::Instant;

static SERIAL: Mutex<()> = Mutex::new(());

struct Tol {
    text: f32,
    unet: f32,
    vae: f32,
    /// txt2img PNG: mean and max absolute difference in levels.
    image: (f64, u8),
}

fn tol(dtype: DType) -> Tol {
    match dtype {
        DType::F32 => Tol { text: 1e-4, unet: 1e-4, vae: 1e-4, image: (1.0, 8) },
        DType::F16 => Tol { text: 1e-2, unet: 1e-2, vae: 2e-2, image: (2.0, 32) },
    }
}

fn golden(model: SyntheticModel, file: &str) -> Golden {
    Golden::load(&format!("fullsize/{}", model.name()), file)
}

fn check(got: &[f32], want: &[f32], tol: f32, what: &str) -> f32 {
    let e = rel_err(got, want);
    eprintln!("{what}: error {e:.2e} of the scale (tolerance {tol:.0e})");
    assert!(e <= tol, "{what}: max error {e:.3e} of the tensor's scale exceeds {tol:.1e}");
    e
}

fn run(model: SyntheticModel, dtype: DType) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let c = ctx();
    if dtype == DType::F16 && !c.f16 {
        eprintln!("skipped: adapter has no SHADER_F16");
        return;
    }
    let t = tol(dtype);
    let what = format!("{} {}", model.name(), dtype.name());
    let clock = Instant::now();
    let sd = StableDiffusion::load_synthetic(c, model, dtype == DType::F16).unwrap();
    eprintln!("{what}: generated and loaded in {:.1} s", clock.elapsed().as_secs_f64());

    // Text encoder, then the UNet on Pigment's own conditioning.
    let clock = Instant::now();
    let g = golden(model, "unet.safetensors");
    let (head, hs) = g.f32("ehs_head");
    let (n_tok, d) = (hs[1], hs[2]);
    let mut ehs = vec![];
    for text in ["blurry, low quality", "a photograph of an astronaut riding a horse"] {
        ehs.extend(sd.clip.encode_prompt(c, &sd.tokenizer, text, 1).unwrap().to_vec(c).unwrap());
    }
    let got_head: Vec<f32> = ehs.chunks_exact(77 * d).flat_map(|s| s[..n_tok * d].to_vec()).collect();
    check(&got_head, &head, t.text, &format!("{what} text encoder"));
    let ehs = Tensor::from_f32(c, &ehs, &[2, 77, d], dtype).unwrap();
    eprintln!("{what}: text encoder in {:.1} s", clock.elapsed().as_secs_f64());
    let clock = Instant::now();
    let (ts, _) = g.f32("timestep");
    let out = sd.unet.forward(c, &g.upload("sample", dtype), ts[0], &ehs).unwrap();
    check(&out.to_vec(c).unwrap(), &g.f32("out").0, t.unet, &format!("{what} unet 2x4x8x8"));
    eprintln!("{what}: unet call in {:.1} s", clock.elapsed().as_secs_f64());

    let clock = Instant::now();
    let g = golden(model, "vae.safetensors");
    let out = sd.vae.decode(c, &g.upload("decode_in", dtype)).unwrap();
    check(&out.to_vec(c).unwrap(), &g.f32("decode_out").0, t.vae, &format!("{what} vae decode 16x16"));
    eprintln!("{what}: vae decode in {:.1} s", clock.elapsed().as_secs_f64());

    let clock = Instant::now();
    let opts = GenerateOptions {
        prompt: "a photograph of an astronaut riding a horse".into(),
        negative_prompt: "blurry, low quality".into(),
        seed: 42,
        width: 64,
        height: 64,
        steps: 2,
        guidance: 7.5,
        sampler: if model == SyntheticModel::Sd15 { SamplerKind::Pndm } else { SamplerKind::Ddim },
        schedule: SigmaSchedule::Normal,
        clip_skip: 1,
        ..Default::default()
    };
    let image = sd.generate(c, &opts, |_, _| {}).unwrap();
    let (_, _, want) = read_png(&fixtures().join(format!("golden/fullsize/{}/txt2img.png", model.name())));
    let (mean, max) = image_diff(&image.rgb, &want);
    eprintln!("{what}: txt2img 2 steps 64x64: mean {mean:.3} max {max} levels off diffusers, in {:.1} s", clock.elapsed().as_secs_f64());
    assert!(mean <= t.image.0 && max <= t.image.1, "{what} txt2img: mean {mean:.3} max {max} levels off diffusers");
}

#[test]
fn sd15_f32_matches_diffusers() {
    run(SyntheticModel::Sd15, DType::F32);
}

#[test]
fn sd15_f16_close_to_diffusers() {
    run(SyntheticModel::Sd15, DType::F16);
}

#[test]
fn sd21v_f32_matches_diffusers() {
    run(SyntheticModel::Sd21v, DType::F32);
}

#[test]
fn sd21v_f16_close_to_diffusers() {
    run(SyntheticModel::Sd21v, DType::F16);
}

/// The generated tensors are exactly the ones the models load (names and shapes from the
/// diffusers classes), and an unknown name is a clear error.
#[test]
fn synthetic_specs() {
    assert!(SyntheticModel::from_spec("tests/fixtures/sd15-tiny").is_none());
    let err = SyntheticModel::from_spec("synthetic:sdxl").unwrap().unwrap_err().to_string();
    assert!(err.contains("synthetic:sd15"), "{err}");
    let unet = SyntheticModel::Sd15.tensors(pigment::weights::ComponentKind::Unet);
    let params: usize = unet.iter().map(|(_, s)| s.iter().product::<usize>()).sum();
    assert_eq!(params, 859_520_964, "SD 1.5's UNet has 859.52 M parameters");
}

//! GLIGEN against diffusers' `StableDiffusionGLIGENPipeline` (`tools/fixtures_gligen.py`):
//! sd15-tiny's text encoder, tokenizer, VAE and PNDM scheduler with the synthetic `gligen-tiny`
//! UNet (sd15-tiny's config, `attention_type="gated"`, rebuilt here from
//! `assets/synthetic/gligen-tiny/`), two phrases in boxes, 64x64, 4 steps, cfg 7.5, seed 42.
//! Goldens: the fusers on for every step (beta 1), for the first (beta 0.25) and never (beta 0).
//! Those differ from each other by 1.6-3.2 levels mean (`golden/gligen/cases.json`), so the f32
//! bound is mean ≤ 0.5 (measured 0.000), max ≤ 8; f16 mean ≤ 1.

mod common;
use common::*;
use pigment::gpu::DType;
use pigment::pipeline::{GenerateOptions, GligenOptions, GroundingBox, StableDiffusion};
use pigment::schedulers::SamplerKind;
use pigment::weights::synthetic::{safetensors_bytes, tensor_list};
use std::path::PathBuf;

/// sd15-tiny with the gligen-tiny UNet, written once per test binary.
fn gligen_tiny() -> PathBuf {
    static DONE: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
    let mut done = DONE.lock().unwrap_or_else(|e| e.into_inner());
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fixtures/gligen-tiny");
    if !*done {
        let src = fixtures().join("sd15-tiny");
        let assets = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/synthetic/gligen-tiny");
        let _ = std::fs::remove_dir_all(&dir);
        for sub in ["text_encoder", "tokenizer", "vae", "scheduler"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
            for f in std::fs::read_dir(src.join(sub)).unwrap() {
                let f = f.unwrap().path();
                std::fs::copy(&f, dir.join(sub).join(f.file_name().unwrap())).unwrap();
            }
        }
        std::fs::copy(src.join("model_index.json"), dir.join("model_index.json")).unwrap();
        std::fs::create_dir_all(dir.join("unet")).unwrap();
        let tensors = tensor_list(&std::fs::read(assets.join("tensors.txt.gz")).unwrap(), "unet").unwrap();
        assert!(tensors.iter().any(|(n, s)| n.ends_with("fuser.alpha_attn") && s.is_empty()), "the gates are scalars");
        std::fs::write(dir.join("unet/diffusion_pytorch_model.safetensors"), safetensors_bytes(&tensors)).unwrap();
        std::fs::copy(assets.join("unet.json"), dir.join("unet/config.json")).unwrap();
        *done = true;
    }
    dir
}

fn boxes() -> Vec<GroundingBox> {
    vec![
        GroundingBox { phrase: "a red ball".into(), bbox: [0.1, 0.2, 0.5, 0.8] },
        GroundingBox { phrase: "a cat".into(), bbox: [0.55, 0.1, 0.95, 0.6] },
    ]
}

fn options(beta: f32) -> GenerateOptions {
    GenerateOptions { gligen: Some(GligenOptions { boxes: boxes(), scheduled_sampling_beta: beta }), ..txt2img_options(SamplerKind::Pndm) }
}

#[test]
fn gligen_matches_diffusers() {
    let c = ctx();
    for dtype in dtypes() {
        let sd = StableDiffusion::load(c, &gligen_tiny(), dtype == DType::F16).unwrap();
        // f16 once: it shares every code path with f32
        let cases: &[(&str, f32)] = if dtype == DType::F16 { &[("boxes", 1.0)] } else { &[("boxes", 1.0), ("scheduled", 0.25), ("ungrounded", 0.0)] };
        for &(name, beta) in cases {
            let image = sd.generate(c, &options(beta), |_, _| {}).unwrap();
            let (w, h, want) = read_png(&fixtures().join("golden/gligen").join(format!("{name}.png")));
            assert_eq!((image.width, image.height), (w, h));
            let (mean, max) = image_diff(&image.rgb, &want);
            eprintln!("{name} {dtype:?}: mean {mean:.3} max {max}");
            let (m, x) = if dtype == DType::F16 { (1.0, 24) } else { (0.5, 8) };
            assert!(mean <= m && max <= x, "{name} {dtype:?}: mean {mean:.3} max {max} levels off diffusers");
        }
    }
    // without boxes the GLIGEN UNet is the plain model: the ungrounded image again
    let sd = StableDiffusion::load(c, &gligen_tiny(), false).unwrap();
    let plain = sd.generate(c, &GenerateOptions { gligen: None, ..options(0.0) }, |_, _| {}).unwrap();
    let (_, _, want) = read_png(&fixtures().join("golden/gligen/ungrounded.png"));
    assert!(image_diff(&plain.rgb, &want).0 <= 0.5);
}

/// The position net's tokens (phrase pooled embeddings + Fourier boxes through its MLP, null
/// features for the uncond half) against diffusers' `position_net` output: a wrong mask on the
/// uncond half moves the image by only ~0.16 levels, so it is checked here.
#[test]
fn grounding_tokens_match_diffusers() {
    let c = ctx();
    let golden = Golden::load("gligen", "objs.safetensors");
    let (want, shape) = golden.f32("objs");
    assert_eq!(shape, [2, 30, 32]);
    for dtype in dtypes() {
        let sd = StableDiffusion::load(c, &gligen_tiny(), dtype == DType::F16).unwrap();
        let got = sd.grounding_tokens(c, &options(1.0)).unwrap().unwrap();
        let (atol, rtol) = tol(dtype, 1e-5);
        assert_close(&got, &want, atol, rtol, &format!("gligen objs {dtype:?}"));
    }
}

#[test]
fn gligen_refuses_what_it_cannot_do() {
    let c = ctx();
    let plain = StableDiffusion::load(c, &fixtures().join("sd15-tiny"), false).unwrap();
    let e = plain.generate(c, &options(0.3), |_, _| {}).unwrap_err().to_string();
    assert!(e.contains("--box") && e.contains("GLIGEN checkpoint"), "{e}");
    let sd = StableDiffusion::load(c, &gligen_tiny(), false).unwrap();
    let many = GenerateOptions { gligen: Some(GligenOptions { boxes: vec![boxes()[0].clone(); 31], scheduled_sampling_beta: 0.3 }), ..options(0.3) };
    let e = sd.generate(c, &many, |_, _| {}).unwrap_err().to_string();
    assert!(e.contains("at most 30"), "{e}");
    let e = sd.generate(c, &options(1.5), |_, _| {}).unwrap_err().to_string();
    assert!(e.contains("beta in [0, 1]"), "{e}");
    let img2img = GenerateOptions { gligen: options(0.3).gligen, ..img2img_options(SamplerKind::Pndm, 0.5, false) };
    let e = sd.generate(c, &img2img, |_, _| {}).unwrap_err().to_string();
    assert!(e.contains("txt2img"), "{e}");
}

//! Hires fix against diffusers' pipelines composed as A1111 runs it (`tools/fixtures_hires.py`):
//! sd15-tiny, Euler, seed 42, 32x32 base (4 steps) → ×2 → 64x64 img2img (4 steps, denoise 0.5,
//! so 2 run), for each upscaler: bilinear and nearest latents, and PIL Lanczos on the decoded
//! base image. Tolerance as tests/pipeline.rs: mean ≤ 1 level, max ≤ 8 (f32; the two sides
//! differ only in summation order, a wrong upscale or seed moves the image by tens of levels).

mod common;
use common::*;
use pigment::pipeline::{a1111_parameters, GenerateOptions, HiresOptions, HiresUpscaler, Image, StableDiffusion};
use pigment::schedulers::SamplerKind;

fn options(upscaler: HiresUpscaler) -> GenerateOptions {
    GenerateOptions {
        width: 32,
        height: 32,
        hires: Some(HiresOptions { scale: 2.0, steps: 4, denoise: 0.5, upscaler }),
        ..txt2img_options(SamplerKind::Euler)
    }
}

fn golden(name: &str) -> (usize, usize, Vec<u8>) {
    read_png(&fixtures().join("golden/hires").join(format!("{name}.png")))
}

#[test]
fn every_upscaler_matches_diffusers() {
    let c = ctx();
    let sd = StableDiffusion::load(c, &fixtures().join("sd15-tiny"), false).unwrap();
    // The first pass alone is diffusers' base image.
    let base = sd.generate(c, &GenerateOptions { hires: None, ..options(HiresUpscaler::Latent) }, |_, _| {}).unwrap();
    let (mean, max) = image_diff(&base.rgb, &golden("base").2);
    eprintln!("base: mean {mean:.3} max {max}");
    assert!(mean <= 1.0 && max <= 8, "base: mean {mean:.3} max {max}");
    for (up, name) in [(HiresUpscaler::Latent, "latent"), (HiresUpscaler::LatentNearest, "latent_nearest"), (HiresUpscaler::Lanczos, "lanczos")] {
        let mut last = (0, 0);
        let image = sd.generate(c, &options(up), |i, total| last = (i, total)).unwrap();
        let (w, h, want) = golden(name);
        assert_eq!((image.width, image.height), (w, h), "{name}");
        assert_eq!(last, (6, 6), "{name}: progress counts both passes (4 + int(4 · 0.5))");
        let (mean, max) = image_diff(&image.rgb, &want);
        eprintln!("{name}: mean {mean:.3} max {max}");
        assert!(mean <= 1.0 && max <= 8, "{name}: mean {mean:.3} max {max} levels off diffusers");
    }
}

/// The lanczos run's upscale step alone: PIL's `Image.resize(LANCZOS)` of the base image, to
/// the bit (same fixed-point taps and pass order).
#[test]
fn lanczos_resize_matches_pil() {
    let (w, h, rgb) = golden("base");
    let up = pigment::pipeline::hires::resize_lanczos(&Image { width: w, height: h, rgb }, 2 * w, 2 * h);
    let (gw, gh, want) = golden("base_lanczos");
    assert_eq!((up.width, up.height), (gw, gh));
    let (mean, max) = image_diff(&up.rgb, &want);
    assert_eq!(max, 0, "mean {mean:.3} max {max} levels off PIL");
}

#[test]
fn parameters_as_a1111_writes_them() {
    let o = options(HiresUpscaler::LatentNearest);
    let p = a1111_parameters(&o, "sd15-tiny");
    assert!(
        p.ends_with("Size: 32x32, Model: sd15-tiny, Denoising strength: 0.5, Hires upscale: 2, Hires steps: 4, Hires upscaler: Latent (nearest)"),
        "{p}"
    );
    let o = GenerateOptions { hires: Some(HiresOptions { steps: 0, scale: 1.5, ..o.hires.clone().unwrap() }), ..o };
    assert!(a1111_parameters(&o, "m").ends_with("Denoising strength: 0.5, Hires upscale: 1.5, Hires upscaler: Latent (nearest)"));
}

#[test]
fn bad_hires_options_are_named() {
    let c = ctx();
    let sd = StableDiffusion::load(c, &fixtures().join("sd15-tiny"), false).unwrap();
    let err = |o: GenerateOptions| sd.generate(c, &o, |_, _| {}).unwrap_err().to_string();
    let base = options(HiresUpscaler::Latent);
    let h = base.hires.clone().unwrap();
    let e = err(GenerateOptions { hires: Some(HiresOptions { denoise: 0.1, ..h.clone() }), ..base.clone() });
    assert!(e.contains("--hires-denoise"), "{e}");
    let e = err(GenerateOptions { hires: Some(HiresOptions { denoise: 1.5, ..h.clone() }), ..base.clone() });
    assert!(e.contains("hires denoising strength 1.5"), "{e}");
    let e = err(GenerateOptions { init_image: Some(Image { width: 32, height: 32, rgb: vec![0; 32 * 32 * 3] }), ..base.clone() });
    assert!(e.contains("hires fix is a txt2img second pass"), "{e}");
    let e = err(GenerateOptions { decoder: pigment::pipeline::VaeDecoder::Taesd, ..base });
    assert!(e.contains("--taesd"), "{e}");
}

/// A model upscaler (a Real-ESRGAN file) in the second pass equals its steps composed by hand:
/// the base image, `pigment upscale`'s model pass (x4: 32 → 128, then PIL's Lanczos down to 64;
/// x2: 64 at once), then plain img2img at the target size with the hires steps and strength, to
/// the bit. The infotext names the file.
#[test]
fn model_upscaler_is_upscale_then_img2img() {
    use pigment::models::esrgan::{EsrganConfig, RealEsrgan};
    let c = ctx();
    let sd = StableDiffusion::load(c, &fixtures().join("sd15-tiny"), false).unwrap();
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("hires-esrgan-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let base_opts = GenerateOptions { hires: None, ..options(HiresUpscaler::Latent) };
    let base = sd.generate(c, &base_opts, |_, _| {}).unwrap();
    for scale in [4, 2] {
        let cfg = EsrganConfig { scale, num_feat: 16, num_grow_ch: 8, num_block: 2 };
        let path = dir.join(format!("tiny-x{scale}.safetensors"));
        std::fs::write(&path, pigment::weights::synthetic::safetensors_bytes(&cfg.tensors())).unwrap();
        let up = HiresUpscaler::parse(path.to_str().unwrap()).unwrap();
        assert_eq!(up, HiresUpscaler::Model { name: format!("tiny-x{scale}"), path: path.clone() });
        let o = options(up);
        let got = sd.generate(c, &o, |_, _| {}).unwrap();

        let model = RealEsrgan::open(c, &path, sd.vae.dtype).unwrap();
        let big = pigment::pipeline::upscale::upscale(c, &model, &base, pigment::pipeline::upscale::DEFAULT_TILE).unwrap();
        assert_eq!((big.width, big.height), (32 * scale, 32 * scale));
        let init = if scale == 2 { big } else { pigment::pipeline::hires::resize_lanczos(&big, 64, 64) };
        let second = GenerateOptions { width: 64, height: 64, strength: 0.5, init_image: Some(init), ..base_opts.clone() };
        let want = sd.generate(c, &second, |_, _| {}).unwrap();
        let (mean, max) = image_diff(&got.rgb, &want.rgb);
        eprintln!("x{scale} model upscaler vs by hand: mean {mean:.3} max {max}");
        assert_eq!(max, 0, "x{scale}: mean {mean:.3} max {max}");
        assert!(a1111_parameters(&o, "m").ends_with(&format!("Hires upscaler: tiny-x{scale}")));
    }
}

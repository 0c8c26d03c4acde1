//! The SDXL refiner against diffusers on `sdxl-refiner-tiny` (tools/fixtures_sdxl_refiner.py:
//! text_encoder_2 only, a UNet whose time ids end in an aesthetic score; goldens in
//! tests/fixtures/golden/sdxl-refiner-tiny/; the folder is rebuilt by tests/common/sdxl.rs):
//!
//! * `encode_prompt` with text_encoder_2 alone (bigG's penultimate states, 32 wide here) and the
//!   time ids the UNet got, `(64, 64, 0, 0, 2.5)` / `(64, 64, 0, 0, 6)` for [negative, prompt];
//! * the refiner alone as img2img (StableDiffusionXLImg2ImgPipeline, strength 0.6);
//! * base (sdxl-tiny) + refiner: the base to `denoising_end`, the refiner from `denoising_start`
//!   (switch 0.8 and 0.5), txt2img and img2img bases;
//!
//! all 64x64, 5 steps, cfg 5, seed 42, Euler and DPM++ 2M. PNGs within mean 1 / max 8 levels
//! in f32 and f16; tensors 1e-4 of the scale in f32, 1e-2 in f16.

mod common;

use common::sdxl::{sdxl_refiner_tiny, sdxl_tiny};
use common::*;
use pigment::pipeline::{GenerateOptions, Image, StableDiffusion};
use pigment::schedulers::SamplerKind;
use pigment::DType;

fn options(sampler: SamplerKind) -> GenerateOptions {
    GenerateOptions { steps: 5, guidance: 5.0, ..txt2img_options(sampler) }
}

fn init() -> Image {
    read_image(&fixtures().join("golden/img2img/init.png"))
}

fn load(path: &std::path::Path, dtype: DType) -> StableDiffusion {
    let sd = StableDiffusion::load(ctx(), path, dtype == DType::F16).unwrap();
    assert_eq!(sd.unet.dtype, dtype);
    sd
}

/// Images within mean 1 / max 8 levels of diffusers', f32 and f16 (f16 measured within mean
/// 0.09 / max 1).
fn png_check(image: &Image, golden: &str, dtype: DType, what: &str) -> (f64, u8) {
    let (w, h, want) = read_png(&fixtures().join("golden/sdxl-refiner-tiny").join(golden));
    assert_eq!((image.width, image.height), (w, h));
    let (mean, max) = image_diff(&image.rgb, &want);
    eprintln!("{dtype:?} {what}: mean {mean:.3} max {max}");
    assert!(mean <= 1.0 && max <= 8, "{dtype:?} {what}: mean {mean:.3} max {max} levels off diffusers");
    (mean, max)
}

#[test]
fn refiner_conditioning_matches_diffusers() {
    let g = Golden::load("sdxl-refiner-tiny", "text.safetensors");
    for dtype in dtypes() {
        let sd = load(&sdxl_refiner_tiny(), dtype);
        assert!(sd.is_refiner() && sd.is_sdxl() && sd.sdxl.is_none());
        assert_eq!(sd.clip.config.hidden, 32);
        let (text, added) = sd.conditioning(ctx(), &options(SamplerKind::Euler)).unwrap();
        assert_eq!(text.shape(), [2, 77, 32]);
        let text = text.to_vec(ctx()).unwrap();
        let first: Vec<f32> = text.chunks(77 * 32).flat_map(|e| e[..16 * 32].to_vec()).collect();
        let tol = if dtype == DType::F32 { 1e-4 } else { 1e-2 };
        let (e, ep) = (rel_err(&first, &g.f32("prompt_embeds").0), rel_err(&added.as_ref().unwrap().text_embeds, &g.f32("pooled").0));
        eprintln!("{dtype:?} refiner prompt_embeds (first 16 tokens): {e:.2e}, pooled: {ep:.2e}");
        assert!(e <= tol && ep <= tol, "{dtype:?}: prompt_embeds {e:.2e}, pooled {ep:.2e} (tolerance {tol:.0e})");
        assert_eq!(added.unwrap().time_ids, g.f32("time_ids").0);
    }
}

#[test]
fn refiner_img2img_matches_diffusers_png() {
    for dtype in dtypes() {
        let sd = load(&sdxl_refiner_tiny(), dtype);
        for (sampler, name) in [(SamplerKind::Euler, "euler"), (SamplerKind::DpmPlusPlus2M, "dpmpp_2m")] {
            let o = GenerateOptions { init_image: Some(init()), strength: 0.6, ..options(sampler) };
            png_check(&sd.generate(ctx(), &o, |_, _| {}).unwrap(), &format!("refine_{name}.png"), dtype, &format!("refiner img2img {name}"));
        }
    }
}

/// The aesthetic score reaches the UNet: the negative's 2.5 for the prompt too moves the image
/// well past the tolerance.
#[test]
fn refiner_aesthetic_score_matters() {
    let sd = load(&sdxl_refiner_tiny(), DType::F32);
    let o = GenerateOptions { init_image: Some(init()), strength: 0.6, aesthetic_score: 2.5, ..options(SamplerKind::Euler) };
    let (_, _, want) = read_png(&fixtures().join("golden/sdxl-refiner-tiny/refine_euler.png"));
    let (mean, max) = image_diff(&sd.generate(ctx(), &o, |_, _| {}).unwrap().rgb, &want);
    eprintln!("aesthetic score 2.5 instead of 6: mean {mean:.3} max {max}");
    assert!(mean > 1.5, "the aesthetic score moved the image by only {mean:.3} levels");
}

#[test]
fn base_plus_refiner_matches_diffusers_png() {
    for dtype in dtypes() {
        let base = load(&sdxl_tiny(), dtype);
        let refiner = load(&sdxl_refiner_tiny(), dtype);
        for (sampler, name, switch) in [(SamplerKind::Euler, "euler", 0.8), (SamplerKind::Euler, "euler", 0.5), (SamplerKind::DpmPlusPlus2M, "dpmpp_2m", 0.8)] {
            let mut calls = Vec::new();
            let image = base.generate_refined(ctx(), &refiner, &options(sampler), switch, |i, n| calls.push((i, n))).unwrap();
            let golden = format!("handoff{}_{name}.png", (switch * 10.0f32).round());
            png_check(&image, &golden, dtype, &format!("base + refiner at {switch}, {name}"));
            // Both parts' evaluations are counted as one run of 5 (Euler: the cutoff 200 of the
            // switch 0.8 gives the base 801, 601, 401, 201 and the refiner 1).
            assert_eq!(calls, (1..=5).map(|i| (i, 5)).collect::<Vec<_>>(), "{name} {switch}");
        }
        // A base img2img (strength 0.9: timesteps 601..1) handing over at 0.5.
        let o = GenerateOptions { init_image: Some(init()), strength: 0.9, ..options(SamplerKind::Euler) };
        png_check(&base.generate_refined(ctx(), &refiner, &o, 0.5, |_, _| {}).unwrap(), "img2img_handoff5_euler.png", dtype, "base img2img + refiner at 0.5");
    }
}

#[test]
fn refiner_misuse_is_an_error() {
    let base = load(&sdxl_tiny(), DType::F32);
    let refiner = load(&sdxl_refiner_tiny(), DType::F32);
    let sd15 = load(&fixtures().join("sd15-tiny"), DType::F32);
    let o = options(SamplerKind::Euler);
    let err = |r: pigment::Result<Image>| r.err().expect("an error").to_string();
    // The refiner alone from noise.
    let e = err(refiner.generate(ctx(), &o, |_, _| {}));
    assert!(e.contains("refiner") && e.contains("--refiner") && e.contains("--init-image"), "{e}");
    // An SD 1.5 base, a refiner as the base, a base as the refiner.
    let e = err(sd15.generate_refined(ctx(), &refiner, &o, 0.8, |_, _| {}));
    assert!(e.contains("not an SDXL model") && e.contains("sd15-tiny"), "{e}");
    let e = err(refiner.generate_refined(ctx(), &refiner, &o, 0.8, |_, _| {}));
    assert!(e.contains("refiner itself"), "{e}");
    let e = err(base.generate_refined(ctx(), &base, &o, 0.8, |_, _| {}));
    assert!(e.contains("not an SDXL refiner"), "{e}");
    for s in [1.5, 0.0, 1.0, f32::NAN] {
        let e = err(base.generate_refined(ctx(), &refiner, &o, s, |_, _| {}));
        assert!(e.contains("must be in (0, 1)"), "{s}: {e}");
    }
    // A switch that leaves one side no step: 0.1 (cutoff 900) is above Euler's first timestep 801.
    let e = err(base.generate_refined(ctx(), &refiner, &o, 0.1, |_, _| {}));
    assert!(e.contains("leaves the base no step"), "{e}");
    // prompt_2 has no encoder to go to.
    let e = err(refiner.generate(ctx(), &GenerateOptions { prompt_2: Some("x".into()), init_image: Some(init()), ..o.clone() }, |_, _| {}));
    assert!(e.contains("prompt_2"), "{e}");
    // denoising_start without handed-over latents.
    let e = err(refiner.generate(ctx(), &GenerateOptions { denoising_start: Some(0.8), init_image: Some(init()), ..o }, |_, _| {}));
    assert!(e.contains("denoising_start"), "{e}");
}

/// A folder with the refiner's layout whose UNet takes base SDXL's 6 time ids (add_embedding
/// 32 + 6 x 8 = 80 wide, tensors and config) is refused by name, not run with a guess.
#[test]
fn refiner_layout_with_base_time_ids_is_refused() {
    use pigment::weights::synthetic::{safetensors_bytes, tensor_list};
    let src = sdxl_refiner_tiny();
    let dir = src.parent().unwrap().join(format!("refiner-6-ids.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    for entry in std::fs::read_dir(&src).unwrap() {
        let p = entry.unwrap().path();
        let to = dir.join(p.file_name().unwrap());
        std::fs::create_dir_all(if p.is_dir() { &to } else { &dir }).unwrap();
        match p.is_dir() {
            true => std::fs::read_dir(&p).unwrap().for_each(|f| {
                let f = f.unwrap().path();
                std::fs::copy(&f, to.join(f.file_name().unwrap())).unwrap();
            }),
            false => drop(std::fs::copy(&p, &to).unwrap()),
        }
    }
    let gz = std::fs::read(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/synthetic/sdxl-refiner-tiny/tensors.txt.gz")).unwrap();
    let mut tensors = tensor_list(&gz, "unet").unwrap();
    tensors.iter_mut().find(|(n, _)| n == "add_embedding.linear_1.weight").unwrap().1[1] = 80;
    std::fs::write(dir.join("unet/diffusion_pytorch_model.safetensors"), safetensors_bytes(&tensors)).unwrap();
    let cfg_path = dir.join("unet/config.json");
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["projection_class_embeddings_input_dim"] = 80.into();
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let e = StableDiffusion::load(ctx(), &dir, false).err().expect("refused").to_string();
    eprintln!("{e}");
    assert!(e.contains("not 32 pooled + 5 time ids x 8") && e.contains("text_encoder"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The refiner's single-file layout (bigG alone at `conditioner.embedders.0.model.*`, with its
/// fused `in_proj`; manifest by tools/fixtures_sdxl_refiner.py, checked against diffusers'
/// `from_single_file`) with the folder's configs: the folder's image, i.e. diffusers'.
#[test]
fn refiner_single_file_matches_the_folder() {
    use std::io::Read;
    let folder = sdxl_refiner_tiny();
    let root = folder.parent().unwrap().to_path_buf();
    let mut text = String::new();
    let gz = std::fs::read(fixtures().join("sdxl-refiner-tiny.manifest.json.gz")).unwrap();
    flate2::read::GzDecoder::new(&gz[..]).read_to_string(&mut text).unwrap();
    let read = |p: &str| std::fs::read(root.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
    let path = root.join(format!("sdxl-refiner-tiny.{}.safetensors", std::process::id()));
    std::fs::write(&path, common::single_file::assemble(&text, &read).unwrap()).unwrap();
    assert!(pigment::weights::is_sdxl_path(&path));
    let sd = StableDiffusion::load_with_config(ctx(), &path, Some(&folder), false).unwrap();
    assert!(sd.is_refiner());
    let o = GenerateOptions { init_image: Some(init()), strength: 0.6, ..options(SamplerKind::Euler) };
    png_check(&sd.generate(ctx(), &o, |_, _| {}).unwrap(), "refine_euler.png", DType::F32, "refiner single file img2img");
    // Without configs the tiny widths (48, 96) have no 64-wide heads to count: named.
    let err = StableDiffusion::load(ctx(), &path, false).err().unwrap().to_string();
    assert!(err.contains("--config DIR"), "{err}");
    let _ = std::fs::remove_file(&path);
}

/// An SDXL embedding on a refiner: its `clip_g` rows go to the refiner's only encoder (bigG).
/// The tiny refiner's text_encoder_2 is the base's (same generated tensors), so its
/// conditioning of a prompt using the embedding must be the base's second-encoder columns for
/// that prompt, bit for bit; an embedding without `clip_g` is refused by name.
#[test]
fn sdxl_embedding_on_a_refiner_is_its_clip_g() {
    let emb = fixtures().join("sdxl-lora/sdxl-tiny-emb.safetensors");
    let (mut base, mut refiner) = (load(&sdxl_tiny(), DType::F32), load(&sdxl_refiner_tiny(), DType::F32));
    let o = GenerateOptions { prompt: "a photograph of an sdxlword riding a horse".into(), ..options(SamplerKind::Euler) };
    let plain = refiner.conditioning(ctx(), &o).unwrap().0.to_vec(ctx()).unwrap();
    assert_eq!(base.load_textual_inversion(&emb, "sdxlword").unwrap(), 2);
    assert_eq!(refiner.load_textual_inversion(&emb, "sdxlword").unwrap(), 2);
    let b = base.conditioning(ctx(), &o).unwrap().0.to_vec(ctx()).unwrap();
    let r = refiner.conditioning(ctx(), &o).unwrap().0.to_vec(ctx()).unwrap();
    let (d1, d2) = (base.clip.config.hidden, refiner.clip.config.hidden);
    let want: Vec<f32> = b.chunks(d1 + d2).flat_map(|row| row[d1..].to_vec()).collect();
    assert!(r == want, "the refiner's conditioning with the embedding is not the base's clip_g half ({:.2e} off)", rel_err(&r, &want));
    assert!(rel_err(&plain, &r) > 1e-3, "the embedding changed nothing");
    let sd15_lora = fixtures().join("lora/sd15-tiny-kohya.safetensors");
    let e = refiner.load_textual_inversion(&sd15_lora, "x").unwrap_err().to_string();
    assert!(e.contains("clip_g") && e.contains("refiner"), "{e}");
}

//! ControlNet-XL (`ControlNetModel` with `addition_embed_type: "text_time"` and
//! `StableDiffusionXLControlNetPipeline` / `StableDiffusionXLControlNetImg2ImgPipeline`) against
//! diffusers 0.39 goldens from `tools/fixtures_controlnet_xl.py`: a tiny ControlNet for sdxl-tiny
//! (synthetic weights, zero convolutions not zero), rebuilt by tests/common/sdxl.rs as a diffusers
//! folder and as one diffusers-layout `.safetensors` with no config (inferred from the tensors).
//!
//! Tolerances as tests/controlnet.rs and tests/sdxl.rs: tensors max |got - want| ≤ 1e-4 of the
//! tensor's scale in f32 (1e-2 in f16), images mean ≤ 1 / max ≤ 8 levels. The ControlNet moves
//! these images by 3.9-4.9 levels mean abs (max 39-55) from the same runs without it
//! (golden/sdxl-tiny/controlnet.json), and its added conditioning moves the mid residual by 0.16
//! of its scale, so a ControlNet that ignores text_embeds / time_ids fails the residual check.
//!
//! Measured on lavapipe: mid residual 8.1e-7 (folder and single file), the UNet fed with the
//! residuals 1.0e-6, f16 1.0e-3; images f32 mean 0.000 max ≤ 1 (txt2img, img2img, single file),
//! f16 mean ≤ 0.064 max 1. Tried: dropping the added conditioning in the ControlNet fails the
//! residual check (1.6e-1), while the images then move by only 0.18-0.42 mean / max 2-5 (within
//! the image tolerance: the residual check is the one that guards it).

mod common;
mod serve_common;
use common::sdxl::{sdxl_tiny, sdxl_tiny_controlnet};
use common::*;
use pigment::models::controlnet::{ControlNetConfig, ControlNetModel, ControlNetOutput};
use pigment::models::unet::AddedCond;
use pigment::pipeline::{ControlOptions, GenerateOptions, StableDiffusion};
use pigment::schedulers::SamplerKind;
use pigment::weights;
use pigment::DType;

fn control() -> ControlOptions {
    let mut c = ControlOptions::new(read_image(&fixtures().join("golden/sd15-tiny/controlnet_control.png")));
    c.scale = 0.7;
    c
}

fn options(sampler: SamplerKind, steps: usize) -> GenerateOptions {
    GenerateOptions { steps, guidance: 5.0, control: Some(control()), ..txt2img_options(sampler) }
}

fn png_check(image: &pigment::pipeline::Image, golden: &str, what: &str) {
    let (_, _, want) = read_png(&fixtures().join("golden/sdxl-tiny").join(golden));
    let (mean, max) = image_diff(&image.rgb, &want);
    eprintln!("{what}: mean {mean:.3} max {max}");
    assert!(mean <= 1.0 && max <= 8, "{what}: mean {mean:.3} max {max} levels off diffusers");
}

fn load(f16: bool, controlnet: &std::path::Path) -> StableDiffusion {
    let mut sd = StableDiffusion::load(ctx(), &sdxl_tiny(), f16).unwrap();
    sd.load_controlnet(ctx(), controlnet).unwrap();
    sd
}

/// The mid residual and the SDXL UNet fed with all residuals, folder and config-less single
/// file, against `controlnet_residuals.safetensors` (time ids 96x80, crop (8, 4)); the time ids
/// reach the ControlNet (swapping the crop moves the residual far past the tolerance) and an XL
/// ControlNet without them is an error.
#[test]
fn residuals_match_diffusers() {
    let c = ctx();
    let g = Golden::load("sdxl-tiny", "controlnet_residuals.safetensors");
    let text = Golden::load("sdxl-tiny", "text.safetensors");
    let sd = StableDiffusion::load(c, &sdxl_tiny(), false).unwrap();
    let added = AddedCond { text_embeds: text.f32("pooled").0, time_ids: g.f32("time_ids").0 };
    let (dir, file) = sdxl_tiny_controlnet();
    let mut cases = vec![("folder", &dir, DType::F32), ("single file", &file, DType::F32)];
    if c.f16 {
        cases.push(("folder f16", &dir, DType::F16));
    }
    let img = read_image(&fixtures().join("golden/sd15-tiny/controlnet_control.png"));
    let (mid_want, unet_want) = (g.f32("mid").0, g.f32("unet_out").0);
    for (what, path, dtype) in cases {
        let tol = if dtype == DType::F16 { 1e-2 } else { 1e-4 };
        let comp = weights::open_controlnet(path).unwrap();
        let cfg = ControlNetConfig::for_component(&comp, Some(&sd.unet.config)).unwrap();
        assert_eq!(cfg.unet.text_time, Some((8, 80)), "{what}: text_time");
        cfg.check_matches(&sd.unet.config, what).unwrap();
        let cn = ControlNetModel::load_with(c, &comp, cfg, dtype).unwrap();
        let (sample, ehs) = (g.upload("sample", dtype), text.upload("prompt_embeds", dtype));
        let cond = cn.prepare_cond(c, &img.rgb, 64, 64, 2).unwrap();
        let out = cn.forward(c, &sample, &[981.0], &ehs, Some(&added), &cond, 0.7).unwrap();
        assert_eq!(out.down.len(), 6, "{what}: conv_in + 2 resnets + downsampler + 2 resnets");
        let e = rel_err(&out.mid.to_vec(c).unwrap(), &mid_want);
        eprintln!("{what}: mid residual error {e:.2e}");
        assert!(e <= tol, "{what}: mid residual error {e:.3e} exceeds {tol:.0e}");
        if dtype == DType::F32 {
            let res = ControlNetOutput { down: out.down, mid: out.mid };
            let u = sd.unet.forward_full(c, &sample, &[981.0], &ehs, Some(&added), Some(&res), None).unwrap();
            let e = rel_err(&u.to_vec(c).unwrap(), &unet_want);
            eprintln!("{what}: unet with residuals error {e:.2e}");
            assert!(e <= tol, "{what}: UNet with ControlNet residuals: error {e:.3e}");
        }
        if what == "folder" {
            let mut swapped = added.clone();
            for b in 0..2 {
                swapped.time_ids.swap(6 * b + 2, 6 * b + 3);
            }
            let out = cn.forward(c, &sample, &[981.0], &ehs, Some(&swapped), &cond, 0.7).unwrap();
            let e = rel_err(&out.mid.to_vec(c).unwrap(), &mid_want);
            eprintln!("crop ids swapped: mid error {e:.2e}");
            assert!(e > 100.0 * tol, "swapping the crop ids moved the mid residual by only {e:.2e}");
            let err = cn.forward(c, &sample, &[981.0], &ehs, None, &cond, 0.7).err().unwrap().to_string();
            assert!(err.contains("text_embeds and time_ids"), "{err}");
        }
    }
}

/// txt2img through the library: Euler 3 steps and DPM++ 2M 4 steps at scale 0.7, and Euler 4
/// steps with control_guidance_end 0.5, in f32 (and f16 where the adapter has it); the single
/// file (config inferred) gives the folder's image.
#[test]
fn txt2img_matches_diffusers_png() {
    let (dir, file) = sdxl_tiny_controlnet();
    for dtype in dtypes() {
        let sd = load(dtype == DType::F16, &dir);
        let mut end = options(SamplerKind::Euler, 4);
        end.control.as_mut().unwrap().guidance_end = 0.5;
        for (o, png) in [(options(SamplerKind::Euler, 3), "controlnet_euler.png"), (options(SamplerKind::DpmPlusPlus2M, 4), "controlnet_dpm.png"), (end, "controlnet_end.png")] {
            png_check(&sd.generate(ctx(), &o, |_, _| {}).unwrap(), png, &format!("{dtype:?} {png}"));
        }
    }
    let sd = load(false, &file);
    png_check(&sd.generate(ctx(), &options(SamplerKind::Euler, 3), |_, _| {}).unwrap(), "controlnet_euler.png", "single file controlnet_euler.png");
}

/// StableDiffusionXLControlNetImg2ImgPipeline: Euler 5 steps at strength 0.6 (3 run),
/// control_guidance_end 0.7 (the ControlNet on 2 of them).
#[test]
fn img2img_matches_diffusers_png() {
    let (dir, _) = sdxl_tiny_controlnet();
    let sd = load(false, &dir);
    let mut o = options(SamplerKind::Euler, 5);
    o.init_image = Some(read_image(&fixtures().join("golden/img2img/init.png")));
    o.strength = 0.6;
    o.control.as_mut().unwrap().guidance_end = 0.7;
    png_check(&sd.generate(ctx(), &o, |_, _| {}).unwrap(), "controlnet_img2img.png", "sdxl controlnet img2img");
}

/// An SD 1.5 ControlNet with the SDXL model and the XL ControlNet with SD 1.5: errors naming
/// both sides of what differs (context width, added conditioning).
#[test]
fn family_mismatches_are_errors() {
    let c = ctx();
    let mut sd = StableDiffusion::load(c, &sdxl_tiny(), false).unwrap();
    let e = sd.load_controlnet(c, &fixtures().join("sd15-tiny-controlnet")).err().unwrap().to_string();
    eprintln!("{e}");
    assert!(e.contains("cross_attention_dim 32 (ControlNet) vs 64 (UNet)") && e.contains("addition_embed_type none (ControlNet) vs text_time"), "{e}");
    let mut sd = StableDiffusion::load(c, &fixtures().join("sd15-tiny"), false).unwrap();
    for p in [sdxl_tiny_controlnet().0, sdxl_tiny_controlnet().1] {
        let e = sd.load_controlnet(c, &p).err().unwrap().to_string();
        eprintln!("{e}");
        assert!(e.contains("cross_attention_dim 64 (ControlNet) vs 32 (UNet)") && e.contains("vs none (UNet)"), "{e}");
    }
}

/// `pigment serve` with the SDXL model: an `alwayson_scripts.controlnet` unit naming the XL
/// ControlNet under `--controlnet-dir` gives diffusers' image (the plumbing is the SD 1.5 one).
#[test]
fn serve_controlnet_unit_with_sdxl() {
    use serde_json::json;
    let (dir, _) = sdxl_tiny_controlnet();
    let (model, cn_dir) = (sdxl_tiny().to_string_lossy().into_owned(), dir.parent().unwrap().to_string_lossy().into_owned());
    let s = serve_common::Server::start("controlnet-xl", &["--model", &model, "--controlnet-dir", &cn_dir]);
    let control = serve_common::file_b64(&fixtures().join("golden/sd15-tiny/controlnet_control.png"));
    let body = json!({"prompt": serve_common::PROMPT, "negative_prompt": serve_common::NEGATIVE, "seed": 42, "width": 64, "height": 64,
        "steps": 3, "cfg_scale": 5.0, "sampler_name": "Euler", "alwayson_scripts": {"controlnet": {"args": [{"enabled": true,
        "image": control, "module": "none", "model": "sdxl-tiny-controlnet", "weight": 0.7}]}}});
    let (status, r) = s.post("/sdapi/v1/txt2img", &body);
    assert_eq!(status, 200, "{r}");
    let (_, _, want) = read_png(&fixtures().join("golden/sdxl-tiny/controlnet_euler.png"));
    serve_common::assert_image(&serve_common::rgb_of(&r["images"][0]), &want, "serve SDXL ControlNet unit");
}

//! ControlNet (`ControlNetModel` + `StableDiffusionControlNetPipeline`) against diffusers 0.39
//! goldens made by `tools/fixtures_controlnet.py`: a tiny random ControlNet for sd15-tiny with
//! every weight random, zero convolutions included (all-zero ones would make the residuals zero
//! and these tests unable to fail).
//!
//! Residuals (f32): max |got - want| ≤ 1e-4 · max |want| per tensor, as tests/unet.rs and for the
//! same reason: both sides compute the same formulas in f32 and differ only in summation order
//! (~1e-7 relative per op over the ~60 ops of the encoder half, GroupNorms renormalising).
//! Measured worst on lavapipe: 8.4e-7 (folder and A1111 file), the UNet fed with diffusers'
//! residuals 9.3e-7, so ~100x headroom. f16 storage (weights and every intermediate rounded to
//! 11 bits): measured 1.2e-3, tolerance 1e-2 as tests/unet.rs. Mistakes are far larger: a
//! missing conditioning scale is off by 0.3/0.7 = 43 %, a UNet that drops the mid residual by
//! 0.30 of its scale (tried), a missing hint embedding or a wrong channel order moves every
//! residual by O(1) of its scale.
//!
//! Images: mean absolute difference ≤ 1 level, max ≤ 8, as tests/pipeline.rs. Measured: library
//! f32 mean 0.000 max 1, CLI (f16 on lavapipe) mean 0.131 max 1. The ControlNet moves this image
//! by 20.9 levels mean abs from the same seed's txt2img.png (fixture metadata), and dropping the
//! mid residual moved it by 6.8 mean / 55 max (tried), so a ControlNet that is ignored or wired
//! wrongly fails by a wide margin.

mod common;
use common::*;
use pigment::models::controlnet::{ControlNetConfig, ControlNetModel};
use pigment::models::unet::UNet2DConditionModel;
use pigment::pipeline::{ControlOptions, Image, GenerateOptions, StableDiffusion};
use pigment::schedulers::SamplerKind;
use pigment::weights::{self, Weights};
use pigment::DType;
use std::path::PathBuf;

const TOL_F32: f32 = 1e-4;
const TOL_F16: f32 = 1e-2;

fn folder() -> PathBuf {
    fixtures().join("sd15-tiny-controlnet")
}
fn a1111_file() -> PathBuf {
    single_file("sd15-tiny-controlnet")
}



fn control_png() -> PathBuf {
    fixtures().join("golden/sd15-tiny/controlnet_control.png")
}

/// Every down residual, the mid residual and the hint embedding of the folder and the A1111
/// single file against diffusers; then the UNet fed with the golden residuals.
#[test]
fn residuals_match_diffusers() {
    let c = ctx();
    let g = Golden::load("sd15-tiny", "controlnet_residuals.safetensors");
    let unet_w = Weights::open(fixtures().join("sd15-tiny")).unwrap();
    let unet = UNet2DConditionModel::load(c, unet_w.unet().unwrap(), DType::F32).unwrap();
    let (t, _) = g.f32("timestep");
    let mut cases = vec![("folder", folder(), DType::F32), ("A1111 single file", a1111_file(), DType::F32)];
    if ctx().f16 {
        cases.push(("folder f16", folder(), DType::F16));
    }
    for (what, path, dtype) in cases {
        let tol = if dtype == DType::F16 { TOL_F16 } else { TOL_F32 };
        let sample = g.upload("sample", dtype);
        let ehs = g.upload("encoder_hidden_states", dtype);
        let cond = g.upload("controlnet_cond", dtype);
        let comp = weights::open_controlnet(&path).unwrap();
        assert_eq!(comp.is_single_file(), what.starts_with("A1111"));
        // The single file carries no config: heads come from the UNet it is for.
        let cfg = ControlNetConfig::for_component(&comp, Some(&unet.config)).unwrap();
        cfg.check_matches(&unet.config, what).unwrap();
        let cn = ControlNetModel::load_with(c, &comp, cfg, dtype).unwrap();
        let out = cn.forward(c, &sample, &t, &ehs, None, &cond, 0.7).unwrap();
        let mut worst = 0f32;
        let mut check = |got: &pigment::Tensor, name: &str| {
            let (want, shape) = g.f32(name);
            assert_eq!(got.shape(), shape.as_slice(), "{what} {name}: shape");
            let e = rel_err(&got.to_vec(c).unwrap(), &want);
            assert!(e <= tol, "{what} {name}: max error {e:.3e} of the tensor's scale exceeds {tol:.0e}");
            worst = worst.max(e);
        };
        check(&cn.cond_embedding(c, &cond).unwrap(), "dbg.controlnet_cond_embedding");
        assert_eq!(out.down.len(), 4, "{what}: conv_in + 1 resnet + downsampler + 1 resnet");
        for (i, d) in out.down.iter().enumerate() {
            check(d, &format!("down.{i}"));
        }
        check(&out.mid, "mid");
        eprintln!("{what}: worst residual error {worst:.2e} of scale");
    }
    // The UNet with diffusers' own residuals added (down_block_additional_residuals etc.).
    let sample = g.upload("sample", DType::F32);
    let ehs = g.upload("encoder_hidden_states", DType::F32);
    let res = pigment::models::controlnet::ControlNetOutput {
        down: (0..4).map(|i| g.upload(&format!("down.{i}"), DType::F32)).collect(),
        mid: g.upload("mid", DType::F32),
    };
    let out = unet.forward_controlled(c, &sample, &t, &ehs, Some(&res)).unwrap();
    let e = rel_err(&out.to_vec(c).unwrap(), &g.f32("unet_out").0);
    eprintln!("unet with residuals: {e:.2e}");
    assert!(e <= TOL_F32, "UNet with ControlNet residuals: error {e:.3e}");
}

fn control_options() -> GenerateOptions {
    let (w, h, rgb) = read_png(&control_png());
    let mut control = ControlOptions::new(Image { width: w, height: h, rgb });
    control.scale = 0.8;
    GenerateOptions { control: Some(control), ..txt2img_options(SamplerKind::Pndm) }
}

/// The whole pipeline through the library (f32, diffusers folder) against
/// StableDiffusionControlNetPipeline's PNG (PNDM, the model's default scheduler).
#[test]
fn pipeline_matches_diffusers_png() {
    let c = ctx();
    let mut sd = StableDiffusion::load(c, &fixtures().join("sd15-tiny"), false).unwrap();
    sd.load_controlnet(c, &folder()).unwrap();
    let image = sd.generate(c, &control_options(), |_, _| {}).unwrap();
    let (_, _, want) = read_png(&fixtures().join("golden/sd15-tiny/controlnet_txt2img.png"));
    let (mean, max) = image_diff(&image.rgb, &want);
    eprintln!("controlnet pipeline: mean {mean:.3} max {max}");
    assert!(mean <= 1.0 && max <= 8, "ControlNet image: mean {mean:.3} max {max} levels off diffusers");
    // The golden's latents decode to the golden PNG: nothing to add; a control window that
    // excludes every step must give plain txt2img (diffusers multiplies the residuals by 0).
    let mut o = control_options();
    o.control.as_mut().unwrap().guidance_start = 0.99;
    let image = sd.generate(c, &o, |_, _| {}).unwrap();
    let (_, _, plain) = read_png(&fixtures().join("golden/sd15-tiny/txt2img.png"));
    let (mean, max) = image_diff(&image.rgb, &plain);
    assert!(mean <= 1.0 && max <= 8, "ControlNet outside its window: mean {mean:.3} max {max} off txt2img.png");
    // Library errors: wrong-size control image, control without a ControlNet.
    let mut o = control_options();
    o.width = 128;
    let e = sd.generate(c, &o, |_, _| {}).err().unwrap().to_string();
    assert!(e.contains("64x64") && e.contains("128x64"), "{e}");
    sd.controlnet = None;
    let e = sd.generate(c, &control_options(), |_, _| {}).err().unwrap().to_string();
    assert!(e.contains("no ControlNet is loaded"), "{e}");
}

/// img2img with a ControlNet (StableDiffusionControlNetImg2ImgPipeline): DDIM, 5 steps at
/// strength 0.6 (3 run), guidance end 0.7, so the ControlNet acts on 2 of the 3 steps that run;
/// counting the window over the whole schedule instead would keep it for 1.
#[test]
fn img2img_with_controlnet_matches_diffusers_png() {
    let c = ctx();
    let mut sd = StableDiffusion::load(c, &fixtures().join("sd15-tiny"), false).unwrap();
    sd.load_controlnet(c, &folder()).unwrap();
    let (w, h, rgb) = read_png(&fixtures().join("golden/img2img/init.png"));
    let mut o = control_options();
    o.init_image = Some(Image { width: w, height: h, rgb });
    o.strength = 0.6;
    o.steps = 5;
    o.sampler = SamplerKind::Ddim;
    o.control.as_mut().unwrap().guidance_end = 0.7;
    let image = sd.generate(c, &o, |_, _| {}).unwrap();
    let (_, _, want) = read_png(&fixtures().join("golden/sd15-tiny/controlnet_img2img.png"));
    let (mean, max) = image_diff(&image.rgb, &want);
    eprintln!("controlnet img2img: mean {mean:.3} max {max}");
    assert!(mean <= 1.0 && max <= 8, "ControlNet img2img: mean {mean:.3} max {max} levels off diffusers");
}

fn pigment(args: &[&std::ffi::OsStr]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_pigment")).args(args).output().unwrap()
}

/// The CLI with the A1111 single-file ControlNet (f16 where the adapter has it) makes
/// diffusers' image and records the ControlNet in the PNG parameters.
#[test]
fn cli_generate_with_a1111_controlnet() {
    let tmp = std::env::temp_dir().join(format!("pigment-cn-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let out = tmp.join("cn.png");
    let model = fixtures().join("sd15-tiny");
    let (cn, img) = (a1111_file(), control_png());
    let run = pigment(&[
        "generate".as_ref(),
        "--model".as_ref(),
        model.as_os_str(),
        "a photograph of an astronaut riding a horse".as_ref(),
        "--negative-prompt".as_ref(),
        "blurry, low quality".as_ref(),
        "--seed=42".as_ref(),
        "--width=64".as_ref(),
        "--height=64".as_ref(),
        "--steps=4".as_ref(),
        "--sampler=pndm".as_ref(),
        "--controlnet".as_ref(),
        cn.as_os_str(),
        "--control-image".as_ref(),
        img.as_os_str(),
        "--control-scale=0.8".as_ref(),
        "--output".as_ref(),
        out.as_os_str(),
    ]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let (_, _, got) = read_png(&out);
    let (_, _, want) = read_png(&fixtures().join("golden/sd15-tiny/controlnet_txt2img.png"));
    let (mean, max) = image_diff(&got, &want);
    eprintln!("CLI controlnet: mean {mean:.3} max {max}");
    assert!(mean <= 1.0 && max <= 8, "CLI ControlNet image: mean {mean:.3} max {max}");
    let reader = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&out).unwrap())).read_info().unwrap();
    let text = &reader.info().uncompressed_latin1_text.iter().find(|t| t.keyword == "parameters").unwrap().text;
    assert!(text.contains("ControlNet 0: \"Module: none, Model: sd15-tiny-controlnet, Weight: 0.8"), "{text}");
    let _ = std::fs::remove_dir_all(&tmp);
}

/// Clear errors: a ControlNet for another architecture (both values named), a missing or
/// unreadable control image, a file that is no ControlNet.
#[test]
fn bad_controlnet_input_is_named() {
    let c = ctx();
    let mut sd21 = StableDiffusion::load(c, &fixtures().join("sd21-tiny"), false).unwrap();
    let e = sd21.load_controlnet(c, &folder()).unwrap_err().to_string();
    assert!(e.contains("cross_attention_dim 32 (ControlNet) vs 64 (UNet)") && e.contains("[32, 64] (ControlNet) vs [40, 80] (UNet)"), "{e}");
    let e = sd21.load_controlnet(c, &single_file("sd21-tiny")).unwrap_err().to_string();
    assert!(e.contains("not a ControlNet"), "{e}");

    let fail = |args: &[&std::ffi::OsStr]| {
        let o = pigment(args);
        assert!(!o.status.success(), "{args:?} should fail");
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let model = fixtures().join("sd15-tiny");
    let (cn, bad_image) = (folder(), fixtures().join("README.md"));
    let base = ["generate".as_ref(), "--model".as_ref(), model.as_os_str(), "a cat".as_ref(), "--width=64".as_ref(), "--height=64".as_ref()];
    let e = fail(&[&base[..], &["--controlnet".as_ref(), cn.as_os_str()]].concat());
    assert!(e.contains("--control-image"), "{e}");
    let e = fail(&[&base[..], &["--controlnet".as_ref(), cn.as_os_str(), "--control-image".as_ref(), bad_image.as_os_str()]].concat());
    assert!(e.contains("cannot read control image") && e.contains("README.md"), "{e}");
    let missing = fixtures().join("no-such.png");
    let e = fail(&[&base[..], &["--controlnet".as_ref(), cn.as_os_str(), "--control-image".as_ref(), missing.as_os_str()]].concat());
    assert!(e.contains("no-such.png"), "{e}");
    let img = control_png();
    let e = fail(&[&base[..], &["--controlnet".as_ref(), "/nonexistent/cn.safetensors".as_ref(), "--control-image".as_ref(), img.as_os_str()]].concat());
    assert!(e.contains("/nonexistent/cn.safetensors") && e.contains("not found"), "{e}");
    let e = fail(&[&base[..], &["--controlnet".as_ref(), cn.as_os_str(), "--control-image".as_ref(), img.as_os_str(), "--control-preprocess=canny".as_ref(), "--canny-low=300".as_ref()]].concat());
    assert!(e.contains("--canny-low (300)"), "{e}");
}

/// `--control-preprocess canny`: on a white square on black, edges (255 in all channels) lie on
/// the square's outline, all four sides, and nowhere else; bad thresholds are an error.
#[test]
fn canny_preprocessor_outlines_a_square() {
    let (w, h) = (64usize, 48usize);
    let inside = |x: usize, y: usize| (20..44).contains(&x) && (12..36).contains(&y);
    let rgb: Vec<u8> = (0..w * h).flat_map(|i| [if inside(i % w, i / w) { 255 } else { 0 }; 3]).collect();
    let img = Image { width: w, height: h, rgb };
    let edges = pigment::cli::canny_map(&img, 100.0, 200.0).unwrap();
    assert_eq!((edges.width, edges.height, edges.rgb.len()), (w, h, w * h * 3));
    let mut sides = [false; 4];
    for y in 0..h {
        for x in 0..w {
            let p = &edges.rgb[(y * w + x) * 3..][..3];
            assert!(p[0] == p[1] && p[1] == p[2] && (p[0] == 0 || p[0] == 255), "({x}, {y}): {p:?}");
            if p[0] == 255 {
                // Within 2 px of the outline (the boundary runs between pixels 19|20, 43|44, ...).
                let near = |v: usize, a: usize, b: usize| v + 2 >= a && v <= a + 1 || v + 2 >= b && v <= b + 1;
                let on_v = near(x, 20, 44) && (10..38).contains(&y);
                let on_h = near(y, 12, 36) && (18..46).contains(&x);
                assert!(on_v || on_h, "edge at ({x}, {y}) away from the square's outline");
                sides[0] |= x < 22 && on_v;
                sides[1] |= x > 40 && on_v;
                sides[2] |= y < 14 && on_h;
                sides[3] |= y > 32 && on_h;
            }
        }
    }
    assert_eq!(sides, [true; 4], "every side of the square has edges");
    assert!(pigment::cli::canny_map(&img, 200.0, 100.0).unwrap_err().to_string().contains("--canny-low"));
}

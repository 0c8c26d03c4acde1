//! DiT against diffusers' DiTTransformer2DModel / DiTPipeline on `dit-tiny`
//! (tools/fixtures_dit.py: sample_size 8, patch 2, 4 -> 8 channels (learned sigma), 2 layers,
//! 2 heads of 16, 1000 classes; weights from Pigment's synthetic generator, the VAE
//! tests/fixtures/sd15-tiny/vae; goldens in tests/fixtures/golden/dit-tiny/; the folder is
//! rebuilt here from assets/synthetic/dit-tiny/):
//!
//! * one transformer call (timesteps 981 / 500, labels 207 / the null class 1000);
//! * DiTPipeline 64x64, class 207, 4 steps, guidance 4, seed 42 with DDIM and DPM++ 2M;
//! * the ImageNet label lookup (id, name, synonym, unknown), and `pigment generate` by label name.
//!
//! Tolerances as the SD tests': max |got - want| / max |want| <= 1e-4 in f32, 1e-2 in f16; PNGs
//! within mean 1 / max 8 levels in both (lavapipe: f32 0 / 0, f16 0.07 / 1).

mod common;

use common::*;
use pigment::models::dit::{patchify, sincos_pos_embed, unpatchify};
use pigment::pipeline::dit::{is_dit_folder, DitOptions, DitPipeline};
use pigment::pipeline::imagenet;
use pigment::schedulers::SamplerKind;
use pigment::weights::synthetic::{safetensors_bytes, tensor_list};
use pigment::DType;
use std::path::{Path, PathBuf};

fn asset(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/synthetic/dit-tiny").join(name)
}

fn write_folder(dir: &Path) {
    let tensors = tensor_list(&std::fs::read(asset("tensors.txt.gz")).unwrap(), "transformer").unwrap();
    assert!(!tensors.is_empty());
    for sub in ["transformer", "vae", "scheduler"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    std::fs::write(dir.join("transformer/diffusion_pytorch_model.safetensors"), safetensors_bytes(&tensors)).unwrap();
    std::fs::copy(asset("transformer.json"), dir.join("transformer/config.json")).unwrap();
    let vae = fixtures().join("sd15-tiny/vae");
    for f in ["config.json", "diffusion_pytorch_model.safetensors"] {
        std::fs::copy(vae.join(f), dir.join("vae").join(f)).unwrap();
    }
    std::fs::copy(asset("scheduler.json"), dir.join("scheduler/scheduler_config.json")).unwrap();
    std::fs::copy(asset("model_index.json"), dir.join("model_index.json")).unwrap();
}

/// `<target tmp>/fixtures/dit-tiny`, written once per test binary (temporary name, renamed).
fn dit_tiny() -> PathBuf {
    static DONE: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
    let mut done = DONE.lock().unwrap_or_else(|e| e.into_inner());
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fixtures");
    let dir = root.join("dit-tiny");
    if !*done {
        let tmp = root.join(format!("dit-tiny.{}.part", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        write_folder(&tmp);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::rename(&tmp, &dir).unwrap();
        *done = true;
    }
    dir
}

fn load(dtype: DType) -> DitPipeline {
    let p = DitPipeline::load(ctx(), &dit_tiny(), dtype == DType::F16).unwrap();
    assert_eq!(p.transformer.dtype, dtype);
    p
}

fn i64s(file: &str, name: &str) -> Vec<u32> {
    let bytes = std::fs::read(fixtures().join("golden/dit-tiny").join(file)).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor(name).unwrap();
    assert_eq!(t.dtype(), safetensors::Dtype::I64);
    bytemuck::pod_collect_to_vec::<u8, i64>(t.data()).into_iter().map(|x| x as u32).collect()
}

#[test]
fn transformer_matches_diffusers() {
    let g = Golden::load("dit-tiny", "transformer.safetensors");
    let (sample, _) = g.f32("sample");
    let (t, _) = g.f32("timestep");
    let (want, shape) = g.f32("out");
    assert_eq!(shape, [2, 8, 8, 8]);
    let labels = i64s("transformer.safetensors", "class_labels");
    for dtype in dtypes() {
        let got = load(dtype).transformer.forward(ctx(), &sample, &t, &labels).unwrap();
        let e = rel_err(&got, &want);
        let tol = if dtype == DType::F32 { 1e-4 } else { 1e-2 };
        eprintln!("{dtype:?} transformer: error {e:.2e} of the scale (tolerance {tol:.0e})");
        assert!(e <= tol, "{dtype:?} transformer: {e:.3e} > {tol:.0e}");
    }
}

fn options(sampler: SamplerKind) -> DitOptions {
    DitOptions { class_label: 207, seed: 42, steps: 4, guidance: 4.0, sampler, ..Default::default() }
}

#[test]
fn pipeline_matches_diffusers() {
    assert!(is_dit_folder(&dit_tiny()));
    for dtype in dtypes() {
        let p = load(dtype);
        assert_eq!(p.default_sampler, SamplerKind::Ddim);
        assert_eq!(p.image_size(), 64);
        for (sampler, name) in [(SamplerKind::Ddim, "ddim"), (SamplerKind::DpmPlusPlus2M, "dpmpp")] {
            let img = p.generate(ctx(), &options(sampler), |_, _| {}).unwrap();
            let (w, h, want) = read_png(&fixtures().join("golden/dit-tiny").join(format!("{name}.png")));
            assert_eq!((img.width, img.height), (w, h));
            let (mean, max) = image_diff(&img.rgb, &want);
            let (tm, tx) = (1.0, 8);
            eprintln!("{dtype:?} {name}: mean {mean:.3} / max {max} levels (tolerance {tm} / {tx})");
            assert!(mean <= tm && max <= tx, "{dtype:?} {name}: mean {mean:.3} / max {max} vs diffusers");
        }
    }
}

#[test]
fn latents_match_diffusers_f32() {
    let p = load(DType::F32);
    for (sampler, name) in [(SamplerKind::Ddim, "ddim"), (SamplerKind::DpmPlusPlus2M, "dpmpp")] {
        let (want, _) = Golden::load("dit-tiny", &format!("{name}.safetensors")).f32("latents");
        let got = pollster::block_on(p.sample_async(ctx(), &options(sampler), &mut |_, _| {})).unwrap();
        let e = rel_err(&got, &want);
        eprintln!("f32 {name} latents: error {e:.2e} of the scale (tolerance 1e-4)");
        assert!(e <= 1e-4, "{name} latents: {e:.3e}");
    }
}

#[test]
fn refuses_bad_labels_and_sizes() {
    let p = load(DType::F32);
    let e = p.generate(ctx(), &DitOptions { class_label: 1000, ..options(SamplerKind::Ddim) }, |_, _| {}).unwrap_err().to_string();
    assert!(e.contains("1000"), "{e}");
    let e = p.transformer.forward(ctx(), &[0.0; 4 * 16 * 16], &[1.0], &[3]).unwrap_err().to_string();
    assert!(e.contains("sample_size"), "{e}");
}

#[test]
fn patchify_roundtrip_and_pos_embed() {
    let (c, s, p) = (3, 4, 2);
    let x: Vec<f32> = (0..c * s * s).map(|i| i as f32).collect();
    let t = patchify(&x, c, s, s, p);
    // token 1 = row 0, column 1: channel 0's [[2, 3], [6, 7]] first
    assert_eq!(&t[12..16], &[2.0, 3.0, 6.0, 7.0]);
    // unpatchify takes (py, px, c) features: reorder the (c, py, px) patches to check the trip
    let re: Vec<f32> = t.chunks(c * p * p).flat_map(|f| (0..p * p).flat_map(move |q| (0..c).map(move |ch| f[ch * p * p + q]))).collect();
    assert_eq!(unpatchify(&re, c, s, s, p), x);
    let pe = sincos_pos_embed(8, 2);
    // token (0, 1): the first half holds the column (1), the second the row (0)
    let want = [1f32.sin(), 0.01f32.sin(), 1f32.cos(), 0.01f32.cos(), 0.0, 0.0, 1.0, 1.0];
    assert!(pe[8..16].iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-6), "{:?}", &pe[8..16]);
}

#[test]
fn imagenet_labels() {
    let l = imagenet::labels();
    assert_eq!(l.len(), 1000);
    assert_eq!(l.name(0), Some("tench, Tinca tinca"));
    assert_eq!(l.name(207), Some("golden retriever"));
    assert_eq!(l.resolve("207").unwrap(), 207);
    assert_eq!(l.resolve("golden retriever").unwrap(), 207);
    assert_eq!(l.resolve("Golden Retriever").unwrap(), 207);
    // each synonym names the id; "crane" names two, the later wins as in DiTPipeline.labels
    assert_eq!(l.resolve("Tinca tinca").unwrap(), 0);
    assert_eq!(l.resolve("white shark").unwrap(), 2);
    assert_eq!(l.resolve("crane").unwrap(), 517);
    let e = l.resolve("golden retreiver").unwrap_err().to_string();
    assert!(e.contains("closest") && e.contains("'golden retriever' (207)"), "{e}");
    assert!(l.resolve("1000").unwrap_err().to_string().contains("0..999"));
}

#[test]
fn cli_generates_by_label_name() {
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dit-cli.png");
    let run = |args: &[&str]| std::process::Command::new(env!("CARGO_BIN_EXE_pigment")).args(args).output().unwrap();
    let model = dit_tiny();
    let m = model.to_str().unwrap();
    let r = run(&["--no-f16", "generate", "--model", m, "golden retriever", "--steps", "4", "--seed", "42", "--output", out.to_str().unwrap()]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let (_, _, got) = read_png(&out);
    let (_, _, want) = read_png(&fixtures().join("golden/dit-tiny/ddim.png"));
    assert_eq!(image_diff(&got, &want), (0.0, 0), "CLI (f32, DDIM from the folder, cfg 4) vs diffusers");
    let r = run(&["generate", "--model", m, "--class-label", "207", "--width", "128"]);
    assert!(String::from_utf8_lossy(&r.stderr).contains("64x64 images only"));
}

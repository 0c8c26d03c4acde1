//! TAESD (diffusers' `AutoencoderTiny`) against diffusers 0.39 (CPU, f32) goldens made by
//! `tools/fixtures_taesd.py` on random weights from the synthetic generator: the weights are
//! rebuilt here from the committed tensor list (`tests/fixtures/golden/taesd/tensors.txt`), as
//! a diffusers folder and as the original `taesd_encoder` / `taesd_decoder` files.
//!
//! Tolerance (f32): max |got - want| ≤ 1e-4 · max|want|, as tests/vae.rs (same formulas, only
//! the summation order differs; ~20 convolutions deep). f16 storage: 2e-2 (every activation
//! rounded to 11 bits, ~25 stores deep). The measured errors are printed.

mod common;

use common::*;
use pigment::models::taesd::{Taesd, TaesdWeights};
use pigment::models::vae::image_to_u8;
use pigment::weights::synthetic::safetensors_bytes;
use pigment::DType;
use std::path::PathBuf;

const TOL_F32: f32 = 1e-4;
const TOL_F16: f32 = 2e-2;

fn tensor_list() -> Vec<(String, Vec<usize>)> {
    let text = std::fs::read_to_string(fixtures().join("golden/taesd/tensors.txt")).unwrap();
    text.lines()
        .map(|l| {
            let (n, s) = l.split_once('\t').unwrap();
            (n.to_string(), s.split(',').map(|d| d.parse().unwrap()).collect())
        })
        .collect()
}

/// `(diffusers folder, folder with the original two files)`, written once per test binary.
fn model_dirs() -> (PathBuf, PathBuf) {
    static DIRS: std::sync::OnceLock<(PathBuf, PathBuf)> = std::sync::OnceLock::new();
    DIRS.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("taesd-{}", std::process::id()));
        let (diff, orig) = (root.join("diffusers"), root.join("original"));
        std::fs::create_dir_all(&diff).unwrap();
        std::fs::create_dir_all(&orig).unwrap();
        let bytes = safetensors_bytes(&tensor_list());
        std::fs::write(diff.join("diffusion_pytorch_model.safetensors"), &bytes).unwrap();
        std::fs::copy(fixtures().join("golden/taesd/config.json"), diff.join("config.json")).unwrap();
        // The original release's names: encoder as is, decoder shifted by its leading Clamp
        // (diffusers' convert_tiny_autoencoder_to_diffusers.py, inverted).
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        for (half, shift) in [("encoder", 0usize), ("decoder", 1)] {
            let prefix = format!("{half}.layers.");
            let views: Vec<(String, safetensors::tensor::TensorView)> = st
                .tensors()
                .into_iter()
                .filter_map(|(n, v)| {
                    let rest = n.strip_prefix(&prefix)?;
                    let (i, tail) = rest.split_once('.').unwrap();
                    Some((format!("{}.{tail}", i.parse::<usize>().unwrap() + shift), v))
                })
                .collect();
            let out = safetensors::serialize(views, None).unwrap();
            std::fs::write(orig.join(format!("taesd_{half}.safetensors")), out).unwrap();
        }
        (diff, orig)
    })
    .clone()
}

fn sources() -> Vec<(&'static str, PathBuf)> {
    let (diff, orig) = model_dirs();
    vec![
        ("diffusers folder", diff.clone()),
        ("diffusers file", diff.join("diffusion_pytorch_model.safetensors")),
        ("original folder", orig.clone()),
        ("original decoder file (+ sibling encoder)", orig.join("taesd_decoder.safetensors")),
    ]
}

/// `golden/img2img/init.png` as the fixture tool feeds it: `(v/255)·2 − 1`, `[1, 3, 64, 64]`.
fn init_image(dtype: DType) -> pigment::Tensor {
    let (w, h, rgb) = read_png(&fixtures().join("golden/img2img/init.png"));
    let mut v = vec![0f32; 3 * w * h];
    for p in 0..w * h {
        for c in 0..3 {
            v[c * w * h + p] = rgb[p * 3 + c] as f32 / 255.0 * 2.0 - 1.0;
        }
    }
    upload(&v, &[1, 3, h, w], dtype)
}

fn tol(dtype: DType) -> f32 {
    if dtype == DType::F32 { TOL_F32 } else { TOL_F16 }
}

#[test]
fn decode_matches_diffusers() {
    let g = Golden::load("taesd", "taesd.safetensors");
    let want = g.f32("decode_out");
    for (what, path) in sources() {
        for dtype in dtypes() {
            let m = Taesd::open(ctx(), &path, dtype).unwrap();
            let got = m.decode(ctx(), &g.upload("decode_in", dtype)).unwrap();
            assert_eq!(got.shape(), want.1.as_slice());
            let e = rel_err(&got.to_vec(ctx()).unwrap(), &want.0);
            eprintln!("decode {what} {dtype:?}: max error {e:.2e} of scale");
            assert!(e <= tol(dtype), "decode {what} {dtype:?}: {e:.3e} > {:.1e}", tol(dtype));
        }
    }
}

#[test]
fn encode_matches_diffusers() {
    let g = Golden::load("taesd", "taesd.safetensors");
    let want = g.f32("encode_out");
    for (what, path) in sources() {
        for dtype in dtypes() {
            let m = Taesd::open(ctx(), &path, dtype).unwrap();
            let got = m.encode(ctx(), &init_image(dtype)).unwrap();
            assert_eq!(got.shape(), want.1.as_slice());
            let e = rel_err(&got.to_vec(ctx()).unwrap(), &want.0);
            eprintln!("encode {what} {dtype:?}: max error {e:.2e} of scale");
            assert!(e <= tol(dtype), "encode {what} {dtype:?}: {e:.3e} > {:.1e}", tol(dtype));
        }
    }
}

/// The pipeline's path: sampler latents (f32) → uint8 RGB, as `VaeImageProcessor.postprocess`.
#[test]
fn latents_to_image_matches_the_golden_image() {
    let g = Golden::load("taesd", "taesd.safetensors");
    let (out, shape) = g.f32("decode_out");
    let want = image_to_u8(&out, shape[0], shape[1], shape[2], shape[3]);
    let m = Taesd::open(ctx(), &model_dirs().0, DType::F32).unwrap();
    let got = m.latents_to_image_u8(ctx(), &g.upload("decode_in", DType::F32)).unwrap();
    let (mean, max) = image_diff(&got, &want);
    eprintln!("image: mean {mean:.3} max {max} levels");
    assert!(mean <= 0.05 && max <= 1, "mean {mean} max {max}");
}

#[test]
fn config_and_halves() {
    let (diff, orig) = model_dirs();
    let w = TaesdWeights::open(&diff).unwrap();
    assert!(w.has_encoder() && w.has_decoder());
    assert_eq!(w.config.latent_channels, 4);
    // One original half alone: the other is refused by name when used.
    let lone = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("taesd-lone-{}", std::process::id()));
    std::fs::create_dir_all(&lone).unwrap();
    std::fs::copy(orig.join("taesd_decoder.safetensors"), lone.join("taesd_decoder.safetensors")).unwrap();
    let m = Taesd::open(ctx(), &lone.join("taesd_decoder.safetensors"), DType::F32).unwrap();
    assert!(m.has_decoder() && !m.has_encoder());
    let img = upload(&[0.0; 3 * 64 * 64], &[1, 3, 64, 64], DType::F32);
    let err = m.encode(ctx(), &img).unwrap_err().to_string();
    assert!(err.contains("no encoder") && err.contains("taesd_encoder"), "{err}");
}

#[test]
fn bad_paths_are_named() {
    let empty = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("taesd-empty-{}", std::process::id()));
    std::fs::create_dir_all(&empty).unwrap();
    let err = TaesdWeights::open(&empty).err().unwrap().to_string();
    assert!(err.contains("diffusion_pytorch_model.safetensors") && err.contains("taesd_decoder"), "{err}");
    // Not a TAESD: the SD VAE.
    let vae = fixtures().join("sd15-tiny/vae/diffusion_pytorch_model.safetensors");
    let err = TaesdWeights::open(&vae).err().unwrap().to_string();
    assert!(err.contains("not a TAESD file"), "{err}");
    let m = Taesd::open(ctx(), &model_dirs().0, DType::F32).unwrap();
    let bad = upload(&[0.0; 3 * 8 * 8], &[1, 3, 8, 8], DType::F32);
    let err = m.decode(ctx(), &bad).unwrap_err().to_string();
    assert!(err.contains("[B, 4, H, W]"), "{err}");
}

/// `--vae-encoder taesd --vae-decoder taesd` against diffusers' img2img and inpainting pipelines
/// with `vae=AutoencoderTiny` (golden/taesd/img2img_euler, inpaint4_euler_a; tools/fixtures_taesd.py):
/// TAESD encodes the init image with no generator draw, so the noise is the generator's first
/// draw (img2img) and the 4-channel inpainting's masked-image encode draws nothing either (Euler
/// a's later draws would shift if it did).
/// Tolerance as tests/img2img.rs (mean ≤ 1 level, max ≤ 8): a posterior draw taken as the full
/// VAE takes it moves the noise and the image by tens of levels.
#[test]
fn taesd_encoder_img2img_and_inpainting_match_diffusers() {
    use pigment::pipeline::{Autoencoder, GenerateOptions, StableDiffusion};
    use pigment::schedulers::SamplerKind;
    let mut sd = StableDiffusion::load(ctx(), &fixtures().join("sd15-tiny"), false).unwrap();
    let base = GenerateOptions { encoder: Autoencoder::Taesd, decoder: Autoencoder::Taesd, ..img2img_options(SamplerKind::Euler, 0.6, false) };
    // Without TAESD weights, or with a decoder-only TAESD, the encoder is refused by name.
    let full_decoder = GenerateOptions { decoder: Autoencoder::Full, ..base.clone() };
    let e = sd.generate(ctx(), &full_decoder, |_, _| {}).err().unwrap().to_string();
    assert!(e.contains("TAESD encoder needs TAESD weights"), "{e}");
    let lone = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("taesd-dec-{}", std::process::id()));
    std::fs::create_dir_all(&lone).unwrap();
    std::fs::copy(model_dirs().1.join("taesd_decoder.safetensors"), lone.join("taesd_decoder.safetensors")).unwrap();
    sd.set_taesd(Some(Taesd::open(ctx(), &lone.join("taesd_decoder.safetensors"), DType::F32).unwrap()));
    let e = sd.generate(ctx(), &base, |_, _| {}).err().unwrap().to_string();
    assert!(e.contains("no encoder") && e.contains("taesd_encoder.safetensors"), "{e}");

    sd.set_taesd(Some(Taesd::open(ctx(), &model_dirs().0, DType::F32).unwrap()));
    let inpaint = GenerateOptions { encoder: Autoencoder::Taesd, decoder: Autoencoder::Taesd, ..img2img_options(SamplerKind::EulerAncestral, 0.75, true) };
    for (o, golden) in [(base, "img2img_euler"), (inpaint, "inpaint4_euler_a")] {
        let got = sd.generate(ctx(), &o, |_, _| {}).unwrap();
        let want = read_image(&fixtures().join(format!("golden/taesd/{golden}.png")));
        let (mean, max) = image_diff(&got.rgb, &want.rgb);
        eprintln!("taesd {golden}: mean {mean:.3} max {max} levels");
        assert!(mean <= 1.0 && max <= 8, "taesd {golden}: mean {mean:.3} max {max} levels off diffusers");
    }
}

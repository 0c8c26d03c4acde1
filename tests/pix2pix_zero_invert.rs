//! pix2pix-zero's regularised DDIM inversion (issue #15 item 3) against diffusers'
//! `StableDiffusionPix2PixZeroPipeline.invert` on sd15-tiny (tools/fixtures_pix2pix_zero.py;
//! goldens in tests/fixtures/golden/pix2pix_zero/): `golden/img2img/init.png`, caption "a cat
//! sitting on the grass", 4 steps, guidance 1, lambdas 20, 5 rolls, seed 42; `reg` with 5
//! regularisation rounds, `plain` with none; `reg128` (16x16 latents, a pooled level), `v` /
//! `v_cfg` (sd21-tiny, v_prediction, guidance 1 / 3).
//!
//! x_T within 1e-4 of its max in f32 (one VAE encode, 4 UNet calls, 4 x 5 x 6 host gradient
//! steps); the regularised and plain goldens are 1.45 of reg's max apart, so the check sees the
//! regularisation. f16 is reported, bounded loosely (3e-2).
//!
//! Measured (lavapipe, f32): reg 4.7e-6, plain 3.9e-6, reg128 1.2e-5, v 3.5e-6, v_cfg 8.2e-6;
//! f16: reg 5.2e-3, plain 2.0e-3. Break-it: no KL term, reg 0.81; no auto-correlation term, reg 1.21
//! and v 0.54; rolls from a fresh generator, reg 1.59; one epsilon copy under CFG, v_cfg 0.36; no gradient
//! through the pooled level, reg128 0.14.

mod common;

use common::*;
use pigment::pipeline::pix2pix_zero_invert::InvertOptions;
use pigment::pipeline::{Image, StableDiffusion};
use pigment::rng::TorchRng;
use pigment::DType;

fn options(num_reg_steps: usize) -> InvertOptions {
    InvertOptions { prompt: "a cat sitting on the grass".into(), steps: 4, num_reg_steps, seed: 42, ..Default::default() }
}

/// The auto-correlation rolls are `torch.randint(4)` draws after the 256-value posterior
/// sample: all 400 of the `reg` run, as diffusers drew them.
#[test]
fn rolls_are_torch_randint() {
    let (want, _) = Golden::load("pix2pix_zero", "invert_reg.safetensors").f32("rolls");
    let mut rng = TorchRng::new(42);
    rng.randn(256);
    let got: Vec<f32> = (0..want.len()).map(|_| rng.randint(4) as f32).collect();
    assert_eq!(got, want);
}

#[test]
fn invert_matches_diffusers() {
    let image = read_image(&fixtures().join("golden/img2img/init.png"));
    let reg = Golden::load("pix2pix_zero", "invert_reg.safetensors").f32("latents").0;
    let plain = Golden::load("pix2pix_zero", "invert_plain.safetensors").f32("latents").0;
    let apart = rel_err(&plain, &reg);
    eprintln!("goldens: reg vs plain {apart:.3} of reg's max");
    assert!(apart > 0.1, "the regularisation barely moves x_T ({apart:.3e})");
    for dtype in dtypes() {
        let sd = StableDiffusion::load(ctx(), &fixtures().join("sd15-tiny"), dtype == DType::F16).unwrap();
        for (run, steps, want) in [("reg", 5, &reg), ("plain", 0, &plain)] {
            let x = sd.pix2pix_zero_invert(ctx(), &image, &options(steps)).unwrap();
            assert_eq!(x.shape(), &[1, 4, 8, 8]);
            let x = x.to_vec(ctx()).unwrap();
            let e = rel_err(&x, want);
            eprintln!("{dtype:?} {run}: x_T error {e:.2e} of its max");
            let tol = if dtype == DType::F32 { 1e-4 } else { 3e-2 };
            assert!(e <= tol, "{dtype:?} {run}: x_T error {e:.3e}");
        }
    }
}

/// 128x128 (16x16 latents, 2 steps): the auto-correlation loss on the 2x2-pooled copy too.
#[test]
fn invert_pooled_level_matches_diffusers() {
    let image = read_image(&fixtures().join("golden/img2img/init_128.png"));
    let sd = StableDiffusion::load(ctx(), &fixtures().join("sd15-tiny"), false).unwrap();
    let want = Golden::load("pix2pix_zero", "invert_reg128.safetensors").f32("latents").0;
    let x = sd.pix2pix_zero_invert(ctx(), &image, &InvertOptions { steps: 2, ..options(5) }).unwrap().to_vec(ctx()).unwrap();
    let e = rel_err(&x, &want);
    eprintln!("F32 reg128: x_T error {e:.2e} of its max");
    assert!(e <= 1e-4, "reg128: x_T error {e:.3e}");
}

/// sd21-tiny (v_prediction): `get_epsilon`'s conversion at guidance 1, and at guidance 3
/// diffusers' broadcast of it against the CFG batch (two copies in both losses).
#[test]
fn invert_v_prediction_matches_diffusers() {
    let image = read_image(&fixtures().join("golden/img2img/init.png"));
    let sd = StableDiffusion::load(ctx(), &fixtures().join("sd21-tiny"), false).unwrap();
    for (run, guidance) in [("v", 1.0), ("v_cfg", 3.0)] {
        let want = Golden::load("pix2pix_zero", &format!("invert_{run}.safetensors")).f32("latents").0;
        let x = sd.pix2pix_zero_invert(ctx(), &image, &InvertOptions { guidance, ..options(5) }).unwrap().to_vec(ctx()).unwrap();
        let e = rel_err(&x, &want);
        eprintln!("F32 {run}: x_T error {e:.2e} of its max");
        assert!(e <= 1e-4, "{run}: x_T error {e:.3e}");
    }
}

/// grad_step's embeddings are stored F16 (exact); the golden reader widens them.
#[test]
fn grad_step_golden_reads() {
    let g = Golden::load("pix2pix_zero", "grad_step.safetensors");
    assert_eq!(g.f32("prompt_embeds").1, [2, 77, 32]);
    assert_eq!(g.f32("prompt_embeds_edit_cond").1, [1, 77, 32]);
    assert_eq!(g.f32("grad").1, [2, 4, 8, 8]);
}

/// Image sizes that are not multiples of 8, SDXL, empty captions, latents too small for the
/// auto-correlation rolls: clear errors.
#[test]
fn bad_inversions_are_refused_clearly() {
    let sd = StableDiffusion::load(ctx(), &fixtures().join("sd15-tiny"), false).unwrap();
    let image = read_image(&fixtures().join("golden/img2img/init.png"));
    let err = |sd: &StableDiffusion, image: &Image, o: &InvertOptions| sd.pix2pix_zero_invert(ctx(), image, o).err().expect("an error").to_string();
    let odd = Image { width: 60, height: 64, rgb: vec![128; 60 * 64 * 3] };
    let e = err(&sd, &odd, &options(5));
    assert!(e.contains("width 60 is not a multiple of 8"), "{e}");
    let e = err(&sd, &image, &InvertOptions { prompt: "  ".into(), ..options(5) });
    assert!(e.contains("caption (prompt) is empty"), "{e}");
    let tiny = Image { width: 8, height: 8, rgb: vec![128; 8 * 8 * 3] };
    let e = err(&sd, &tiny, &options(5));
    assert!(e.contains("too small for the auto-correlation"), "{e}");
    let e = err(&sd, &image, &InvertOptions { steps: 0, ..options(5) });
    assert!(e.contains("0 steps"), "{e}");
    let xl = StableDiffusion::load(ctx(), &common::sdxl::sdxl_tiny(), false).unwrap();
    let e = err(&xl, &image, &options(5));
    assert!(e.contains("SD 1.x/2.x") && e.contains("is SDXL"), "{e}");
}

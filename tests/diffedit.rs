//! DiffEdit's mask estimation (issue #15) against diffusers'
//! `StableDiffusionDiffEditPipeline.generate_mask` on sd15-tiny with DDIM
//! (tools/fixtures_diffedit.py; goldens in tests/fixtures/golden/diffedit/): input
//! `golden/img2img/init.png`, source "a bowl of fruits", target "a bowl of pears", seed 42.
//!
//! The map is compared divided by its mean (the mask depends on nothing else, and diffusers'
//! swapped guidance scales it; see src/pipeline/diffedit.rs): max error <= 1e-4 of its max in f32
//! (a VAE encode, one UNet evaluation per map, both f32); the masks must be equal, which the
//! goldens' margins allow (the nearest value is 0.0027 from the threshold on a 0..1 scale).

mod common;

use common::*;
use pigment::pipeline::diffedit::MaskOptions;
use pigment::pipeline::StableDiffusion;

fn options(maps: usize, encode_strength: f32, threshold_ratio: f32) -> MaskOptions {
    MaskOptions {
        source_prompt: "a bowl of fruits".into(),
        target_prompt: "a bowl of pears".into(),
        negative_prompt: "blurry, low quality".into(),
        maps,
        encode_strength,
        threshold_ratio,
        steps: 10,
        guidance: 7.5,
        seed: 42,
    }
}

#[test]
fn mask_matches_diffusers_generate_mask() {
    let sd = StableDiffusion::load(ctx(), &fixtures().join("sd15-tiny"), false).unwrap();
    let image = read_image(&fixtures().join("golden/img2img/init.png"));
    for (run, o) in [("cfg", options(10, 0.5, 2.0)), ("maps3", options(3, 0.7, 1.8))] {
        let m = sd.diffedit_mask(ctx(), &image, &o).unwrap();
        let g = Golden::load("diffedit", &format!("mask_{run}.safetensors"));
        let mean = m.map.iter().sum::<f32>() / m.map.len() as f32;
        let map: Vec<f32> = m.map.iter().map(|v| v / mean).collect();
        let e = rel_err(&map, &g.f32("map").0);
        let want = g.f32("mask").0;
        let differ = m.mask.iter().zip(&want).filter(|(a, b)| a != b).count();
        eprintln!("{run}: map error {e:.2e} of its max, {differ} of {} mask values differ, {} set", want.len(), want.iter().sum::<f32>());
        assert!(e <= 1e-4, "{run}: normalised map error {e:.3e}");
        assert_eq!(differ, 0, "{run}: mask differs from diffusers'");
        let img = m.to_image(8);
        assert_eq!((img.width, img.height), (64, 64));
    }
    let e = sd.diffedit_mask(ctx(), &image, &MaskOptions { guidance: 1.0, ..options(10, 0.5, 2.0) }).err().unwrap().to_string();
    assert!(e.contains("above 1"), "{e}");
}

//! Hypernetworks (A1111 `HypernetworkModule`) by construction: random A1111-style modules
//! (`tools/fixtures_hypernetwork.py`, converted by `tools/convert_hypernetwork.py`) and, as the
//! independent reference, diffusers' sd15-tiny UNet with an attention processor that feeds every
//! cross-attention's `to_k` / `to_v` the torch modules' transformed context.
//!
//! Tolerances: the UNet output as tests/unet.rs (max error ≤ 1e-4 of the scale in f32, 1e-2
//! in f16: the same kernels, plus a few GEMMs and a LayerNorm for the modules); the image as
//! tests/pipeline.rs (mean ≤ 1 level, max ≤ 8). The hypernetworks move the UNet output by 0.63
//! (hn-a) and 0.27 more (hn-b) mean absolute (the fixture script prints it), far above both.

mod common;
use common::*;
use pigment::models::hypernetwork::{apply_all, Hypernetwork};
use pigment::models::unet::{CrossContext, UNet2DConditionModel};
use pigment::pipeline::hypernetwork::{hypernet_tags, uses_for_prompt, HypernetTag};
use pigment::pipeline::{GenerateOptions, StableDiffusion};
use pigment::schedulers::{SamplerKind, SigmaSchedule};
use pigment::weights::{SafetensorsFile, Weights};
use pigment::DType;
use std::sync::Arc;

fn net(name: &str) -> Arc<Hypernetwork> {
    Arc::new(Hypernetwork::open(&fixtures().join("hypernetwork").join(format!("{name}.safetensors")), name).unwrap())
}

fn unet_error(unet: &UNet2DConditionModel, nets: &[(Arc<Hypernetwork>, f32)], want: &str, dtype: DType) -> f32 {
    let c = ctx();
    let g = Golden::load("sd15-tiny", "hypernet_unet.safetensors");
    let (t, _) = g.f32("timestep");
    let context = g.upload("context", dtype);
    let (k, v) = apply_all(c, nets, &context).unwrap().unwrap();
    let out = unet.forward_with(c, &g.upload("sample", dtype), &t, CrossContext { k: &k, v: &v }, None, None, None, Default::default()).unwrap();
    rel_err(&out.to_vec(c).unwrap(), &g.f32(want).0)
}

#[test]
fn unet_with_hypernetworks_matches_diffusers_processor() {
    let w = Weights::open(fixtures().join("sd15-tiny")).unwrap();
    let (a, b) = (net("hn-a"), net("hn-b"));
    for (dtype, tol) in dtypes().into_iter().map(|d| (d, if d == DType::F32 { 1e-4 } else { 1e-2 })) {
        let unet = UNet2DConditionModel::load(ctx(), w.unet().unwrap(), dtype).unwrap();
        let ea = unet_error(&unet, &[(a.clone(), 0.8)], "out_a", dtype);
        let eab = unet_error(&unet, &[(a.clone(), 0.8), (b.clone(), 0.5)], "out_ab", dtype);
        eprintln!("{dtype:?}: hn-a {ea:.2e}, hn-a then hn-b {eab:.2e} of the scale");
        assert!(ea <= tol && eab <= tol, "{dtype:?}: hn-a {ea:.2e}, hn-a+hn-b {eab:.2e} > {tol:.0e}");
        // The order matters (each module reads what the previous left) and so does the multiplier.
        let swapped = unet_error(&unet, &[(b.clone(), 0.5), (a.clone(), 0.8)], "out_ab", dtype);
        let weaker = unet_error(&unet, &[(a.clone(), 0.4)], "out_a", dtype);
        assert!(swapped > 0.1 && weaker > 0.1, "order {swapped:.2e} / multiplier {weaker:.2e} unnoticed");
    }
}

#[test]
fn image_with_hypernetworks_matches_diffusers_png() {
    let c = ctx();
    let mut sd = StableDiffusion::load(c, &fixtures().join("sd15-tiny"), false).unwrap();
    let o = GenerateOptions { width: 32, height: 32, schedule: SigmaSchedule::Normal, ..txt2img_options(SamplerKind::Euler) };
    let (_, _, want) = read_png(&fixtures().join("golden/sd15-tiny/hypernet.png"));
    let plain = sd.generate(c, &o, |_, _| {}).unwrap();
    // As the CLI does: the tags resolved in the folder, then set on the model.
    let tagged = "a photograph <hypernet:hn-a:0.8> <hypernet:hn-b:0.5>";
    sd.set_hypernetworks(uses_for_prompt(tagged, Some(&fixtures().join("hypernetwork"))).unwrap()).unwrap();
    let img = sd.generate(c, &o, |_, _| {}).unwrap();
    let (mean, max) = image_diff(&img.rgb, &want);
    let (pm, px) = image_diff(&plain.rgb, &want);
    eprintln!("with hypernetworks: mean {mean:.3} max {max}; without: mean {pm:.3} max {px}");
    assert!(mean <= 1.0 && max <= 8, "mean {mean:.3} max {max} levels off diffusers");
    assert!(pm > 2.0, "the golden does not depend on the hypernetworks (mean {pm:.3})");
    sd.set_hypernetworks(Vec::new()).unwrap();
    assert!(sd.generate(c, &o, |_, _| {}).unwrap().rgb == plain.rgb, "removing the hypernetworks restores the model");
}

#[test]
fn tags_and_errors() {
    assert_eq!(
        hypernet_tags("x <hypernet:anime:0.6> <lora:l:1> <hypernet:b>").unwrap(),
        [HypernetTag { name: "anime".into(), multiplier: 0.6 }, HypernetTag { name: "b".into(), multiplier: 1.0 }]
    );
    assert!(hypernet_tags("<hypernet:a:lots>").unwrap_err().to_string().contains("not a number"));
    let e = uses_for_prompt("<hypernet:hn-a>", None).unwrap_err().to_string();
    assert!(e.contains("--hypernetwork-dir"), "{e}");
    let e = uses_for_prompt("<hypernet:nope>", Some(&fixtures().join("hypernetwork"))).unwrap_err().to_string();
    assert!(e.contains("nope.safetensors") && e.contains("hn-a"), "{e}");
    // An activation Pigment has no kernel for, and a width the model lacks, are refused by name.
    let bytes = std::fs::read(fixtures().join("hypernetwork/hn-b.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let tensors: Vec<(String, safetensors::tensor::TensorView)> = st.tensors();
    let mish = safetensors::serialize(tensors.clone(), Some(std::collections::HashMap::from([("activation_func".to_string(), "mish".to_string())]))).unwrap();
    let e = Hypernetwork::from_file(&SafetensorsFile::from_bytes("m", mish).unwrap(), "m").unwrap_err().to_string();
    assert!(e.contains("mish") && e.contains("not supported"), "{e}");
    // width 8 (one Linear per side), not sd15-tiny's 32
    let (w8, b8) = (vec![0u8; 8 * 8 * 4], vec![0u8; 8 * 4]);
    let mut narrow = Vec::new();
    for side in ["0", "1"] {
        narrow.push((format!("8.{side}.linear.0.weight"), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![8, 8], &w8).unwrap()));
        narrow.push((format!("8.{side}.linear.0.bias"), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![8], &b8).unwrap()));
    }
    let wide = Hypernetwork::from_file(&SafetensorsFile::from_bytes("w", safetensors::serialize(narrow, None).unwrap()).unwrap(), "w").unwrap();
    let mut sd = StableDiffusion::load(ctx(), &fixtures().join("sd15-tiny"), false).unwrap();
    let e = sd.set_hypernetworks(vec![(Arc::new(wide), 1.0)]).unwrap_err().to_string();
    assert!(e.contains("[8]") && e.contains("32"), "{e}");
}

//! SDXL against diffusers' StableDiffusionXLPipeline on `sdxl-tiny` (tools/fixtures_sdxl.py: the
//! real diffusers/transformers classes at small widths, weights from Pigment's synthetic
//! generator, goldens in tests/fixtures/golden/sdxl-tiny/; the folder is rebuilt by
//! tests/common/sdxl.rs):
//!
//! * both tokenizers' ids (tokenizer_2 pads with "!") and `encode_prompt`'s output: the two
//!   encoders' penultimate hidden states concatenated (64 wide) and the pooled `text_embeds`;
//! * a UNet call with `added_cond_kwargs` (text_embeds, time ids original 96x80, crop (8, 4),
//!   target 64x64);
//! * a 64x64 2-step txt2img (Euler, cfg 5, seed 42) and a Turbo-style 1-step (Euler a,
//!   trailing spacing, guidance 0: no unconditional batch) against diffusers' PNGs, and 4-step
//!   Euler a, DPM++ 2M Karras and DDIM (tools/fixtures_sdxl_samplers.py; f32 mean 0.000 / max
//!   ≤ 1, f16 ≤ 0.059 / 1; each 14-23 levels from the Euler image);
//! * emphasis and BREAK over both encoders, by construction against A1111's formula;
//! * sd15-tiny at guidance 1: diffusers' image, with one UNet batch of 1 per evaluation;
//! * img2img and inpainting (4- and 9-channel UNets) against StableDiffusionXLImg2ImgPipeline /
//!   StableDiffusionXLInpaintPipeline, and `prompt_2` / `negative_prompt_2` against
//!   `encode_prompt` (tools/fixtures_sdxl_img2img.py).
//!
//! Tolerances are the SD 1.5 tests' (tests/clip.rs, unet.rs, pipeline.rs): max |got - want| /
//! max |want| <= 1e-4 in f32, 1e-2 in f16; PNGs within mean 1 / max 8 levels.

mod common;

use common::sdxl::{sdxl_tiny, sdxl_tiny_inpaint};
use common::*;
use pigment::gpu::{AdapterChoice, Context};
use pigment::models::unet::AddedCond;
use pigment::pipeline::{GenerateOptions, StableDiffusion};
use pigment::schedulers::{SamplerKind, SchedulerConfig};
use pigment::{DType, Tensor};

const PROMPT: &str = "a photograph of an astronaut riding a horse";
const NEGATIVE: &str = "blurry, low quality";

fn tol(dtype: DType) -> f32 {
    match dtype {
        DType::F32 => 1e-4,
        DType::F16 => 1e-2,
    }
}

fn check(got: &[f32], want: &[f32], tol: f32, what: &str) {
    let e = rel_err(got, want);
    eprintln!("{what}: error {e:.2e} of the scale (tolerance {tol:.0e})");
    assert!(e <= tol, "{what}: max error {e:.3e} of the tensor's scale exceeds {tol:.1e}");
}

fn golden(file: &str) -> Golden {
    Golden::load("sdxl-tiny", file)
}

fn ids(file: &str, name: &str) -> Vec<u32> {
    let bytes = std::fs::read(fixtures().join("golden/sdxl-tiny").join(file)).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor(name).unwrap();
    assert_eq!(t.dtype(), safetensors::Dtype::I64);
    bytemuck::pod_collect_to_vec::<u8, i64>(t.data()).into_iter().map(|x| x as u32).collect()
}

fn options() -> GenerateOptions {
    GenerateOptions { steps: 2, guidance: 5.0, ..txt2img_options(SamplerKind::Euler) }
}

fn load(dtype: DType) -> StableDiffusion {
    let sd = StableDiffusion::load(ctx(), &sdxl_tiny(), dtype == DType::F16).unwrap();
    assert!(sd.is_sdxl());
    assert_eq!(sd.unet.dtype, dtype);
    sd
}

#[test]
fn tokenizers_and_text_encoders_match_diffusers() {
    let sd = load(DType::F32);
    let x = sd.sdxl.as_ref().unwrap();
    for (tok, name) in [(&sd.tokenizer, "input_ids"), (&x.tokenizer_2, "input_ids_2")] {
        let got: Vec<u32> = [NEGATIVE, PROMPT].iter().flat_map(|t| pigment::prompt::tokenize_prompt(tok, t).chunks[0].ids).collect();
        assert_eq!(got, ids("text.safetensors", name), "{name}");
    }
    for dtype in dtypes() {
        let sd = load(dtype);
        let (text, added) = sd.conditioning(ctx(), &options()).unwrap();
        let g = golden("text.safetensors");
        assert_eq!(text.shape(), [2, 77, 64]);
        check(&text.to_vec(ctx()).unwrap(), &g.f32("prompt_embeds").0, tol(dtype), &format!("{dtype:?} prompt_embeds"));
        let added = added.unwrap();
        check(&added.text_embeds, &g.f32("pooled").0, tol(dtype), &format!("{dtype:?} pooled text_embeds"));
        assert_eq!(added.time_ids, [64.0, 64.0, 0.0, 0.0, 64.0, 64.0].repeat(2));
    }
}

/// diffusers with no negative prompt and `force_zeros_for_empty_prompt` (A1111 with an empty
/// one): the unconditional half is zeros, text and pooled.
#[test]
fn empty_negative_prompt_is_zeros() {
    let sd = load(DType::F32);
    let (text, added) = sd.conditioning(ctx(), &GenerateOptions { negative_prompt: String::new(), ..options() }).unwrap();
    let text = text.to_vec(ctx()).unwrap();
    let (neg, pos) = text.split_at(text.len() / 2);
    assert!(neg.iter().all(|&v| v == 0.0) && pos.iter().any(|&v| v != 0.0));
    let pooled = added.unwrap().text_embeds;
    assert!(pooled[..32].iter().all(|&v| v == 0.0) && pooled[32..].iter().any(|&v| v != 0.0));
}

fn unet_inputs(g: &Golden, dtype: DType) -> (Tensor, Tensor, AddedCond) {
    let added = AddedCond { text_embeds: g.f32("text_embeds").0, time_ids: g.f32("time_ids").0 };
    (g.upload("sample", dtype), g.upload("encoder_hidden_states", dtype), added)
}

#[test]
fn unet_call_matches_diffusers() {
    let g = golden("unet.safetensors");
    let want = g.f32("out").0;
    for dtype in dtypes() {
        let sd = load(dtype);
        let (sample, ehs, added) = unet_inputs(&g, dtype);
        let out = sd.unet.forward_full(ctx(), &sample, &[981.0], &ehs, Some(&added), None, None).unwrap();
        check(&out.to_vec(ctx()).unwrap(), &want, tol(dtype), &format!("{dtype:?} unet"));
    }
}

/// The time ids reach the UNet in diffusers' order: the golden's crop (8, 4) read as (4, 8)
/// moves the output far past the tolerance; and an SDXL UNet without them is an error.
#[test]
fn unet_time_ids_matter_and_are_required() {
    let g = golden("unet.safetensors");
    let sd = load(DType::F32);
    let (sample, ehs, mut added) = unet_inputs(&g, DType::F32);
    for b in 0..2 {
        added.time_ids.swap(6 * b + 2, 6 * b + 3);
    }
    let out = sd.unet.forward_full(ctx(), &sample, &[981.0], &ehs, Some(&added), None, None).unwrap();
    let e = rel_err(&out.to_vec(ctx()).unwrap(), &g.f32("out").0);
    eprintln!("crop ids swapped: error {e:.2e}");
    assert!(e > 100.0 * tol(DType::F32), "swapping the crop ids changed the output by only {e:.2e}");
    let err = sd.unet.forward(ctx(), &sample, 981.0, &ehs).unwrap_err().to_string();
    assert!(err.contains("text_embeds and time_ids"), "{err}");
}

fn png_check(image: &pigment::pipeline::Image, golden_png: &str, what: &str) {
    let (w, h, want) = read_png(&fixtures().join("golden").join(golden_png));
    assert_eq!((image.width, image.height), (w, h));
    let (mean, max) = image_diff(&image.rgb, &want);
    eprintln!("{what}: mean {mean:.3} max {max}");
    assert!(mean <= 1.0 && max <= 8, "{what}: mean {mean:.3} max {max} levels off diffusers");
}

#[test]
fn txt2img_matches_diffusers_png() {
    for dtype in dtypes() {
        let sd = load(dtype);
        let image = sd.generate(ctx(), &options(), |_, _| {}).unwrap();
        png_check(&image, "sdxl-tiny/txt2img.png", &format!("{dtype:?} sdxl txt2img"));
    }
}

/// SDXL-Turbo's recipe: its scheduler config (Euler a, `timestep_spacing: "trailing"`), one
/// step, guidance 0.
#[test]
fn turbo_one_step_guidance_0_matches_diffusers_png() {
    let bytes = std::fs::read(fixtures().join("golden/sdxl-tiny/turbo.safetensors")).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta: serde_json::Value = serde_json::from_str(&meta.metadata().as_ref().unwrap()["pigment"]).unwrap();
    let sched = meta["scheduler_config"].as_str().unwrap();
    let mut sd = load(DType::F32);
    sd.scheduler_config = SchedulerConfig::from_json(sched).unwrap();
    let o = GenerateOptions { steps: 1, guidance: 0.0, sampler: SamplerKind::EulerAncestral, ..options() };
    png_check(&sd.generate(ctx(), &o, |_, _| {}).unwrap(), "sdxl-tiny/turbo.png", "sdxl turbo");
}

/// guidance 1 (as <= 1 generally): diffusers' image, and every UNet call is a batch of 1 (the
/// profiler's conv2d shapes on a context of its own).
#[test]
fn sd15_cfg1_runs_one_batch_and_matches_diffusers() {
    let c = Context::new_blocking(&AdapterChoice::from_env()).unwrap();
    let sd = StableDiffusion::load(&c, &fixtures().join("sd15-tiny"), false).unwrap();
    let o = GenerateOptions { steps: 4, guidance: 1.0, sampler: SamplerKind::Pndm, ..options() };
    c.set_profiling(true);
    let image = sd.generate(&c, &o, |_, _| {}).unwrap();
    let rows = c.profile_report().unwrap();
    c.set_profiling(false);
    let convs: Vec<&str> = rows.iter().filter(|r| r.family == "conv2d").map(|r| r.shape.as_str()).collect();
    assert!(convs.iter().any(|s| s.starts_with("1x4x8x8")), "no UNet conv_in at batch 1 in {convs:?}");
    assert!(convs.iter().all(|s| s.starts_with("1x")), "a batch-2 convolution ran at guidance 1: {convs:?}");
    png_check(&image, "sd15-tiny/cfg1.png", "sd15 cfg 1");
}

/// `sdxl-tiny` in SDXL's original single-file layout, assembled from the generated folder by
/// `tests/fixtures/sdxl-tiny.manifest.json.gz` (tools/fixtures_sdxl_single.py: the mapping was
/// checked against diffusers' `from_single_file` / `convert_open_clip_checkpoint`).
fn sdxl_single_file() -> std::path::PathBuf {
    use std::io::Read;
    let folder = sdxl_tiny();
    let root = folder.parent().unwrap().to_path_buf();
    let path = root.join("sdxl-tiny.safetensors");
    let mut text = String::new();
    let gz = std::fs::read(fixtures().join("sdxl-tiny.manifest.json.gz")).unwrap();
    flate2::read::GzDecoder::new(&gz[..]).read_to_string(&mut text).unwrap();
    let read = |p: &str| std::fs::read(root.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
    let bytes = common::single_file::assemble(&text, &read).unwrap();
    let tmp = root.join(format!("sdxl-tiny.{}.part.safetensors", std::process::id()));
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    path
}

/// An SDXL single file (with the folder's configs for the tiny head counts, as diffusers'
/// `from_single_file(path, config=folder)`) loads the folder's exact tensors: the same PNG as the
/// folder, i.e. diffusers'. Without configs the architecture is inferred from the tensors, and
/// the tiny widths' head counts are refused by name.
#[test]
fn sdxl_single_file_matches_the_folder() {
    let path = sdxl_single_file();
    assert!(pigment::weights::is_sdxl_path(&path) && pigment::weights::is_sdxl_path(&sdxl_tiny()));
    assert!(!pigment::weights::is_sdxl_path(&fixtures().join("sd15-tiny")));
    let sd = StableDiffusion::load_with_config(ctx(), &path, Some(&sdxl_tiny()), false).unwrap();
    assert!(sd.is_sdxl());
    assert_eq!(sd.vae.config.scaling_factor, 0.13025);
    let image = sd.generate(ctx(), &options(), |_, _| {}).unwrap();
    png_check(&image, "sdxl-tiny/txt2img.png", "sdxl single file txt2img");
    let (text, added) = sd.conditioning(ctx(), &options()).unwrap();
    let g = golden("text.safetensors");
    check(&text.to_vec(ctx()).unwrap(), &g.f32("prompt_embeds").0, tol(DType::F32), "single file prompt_embeds");
    check(&added.unwrap().text_embeds, &g.f32("pooled").0, tol(DType::F32), "single file pooled (transposed text_projection)");
    // Inferred without configs: the UNet's widths (32, 64) have no 64-wide heads to count.
    let err = StableDiffusion::load(ctx(), &path, false).err().unwrap().to_string();
    assert!(err.contains("--config DIR"), "{err}");
    // The refiner's bigG (embedders.0) beside the base's encoders is named, not half-loaded.
    let refiner = path.with_file_name("sdxl-refiner-keys.safetensors");
    let v = [0u8; 8];
    let t = || safetensors::tensor::TensorView::new(safetensors::Dtype::F16, vec![4], &v).unwrap();
    let keys = [("conditioner.embedders.0.model.ln_final.weight", t()), ("conditioner.embedders.1.model.ln_final.weight", t())];
    std::fs::write(&refiner, safetensors::serialize(keys, None).unwrap()).unwrap();
    let err = pigment::weights::Weights::open(&refiner).unwrap_err().to_string();
    assert!(err.contains("refiner"), "{err}");
}

/// diffusers' SDXL img2img and inpainting pipelines (tools/fixtures_sdxl_img2img.py): 5 steps,
/// cfg 5, init `golden/img2img/init.png`, mask `mask.png`.
#[test]
fn img2img_and_inpainting_match_diffusers_png() {
    let img = |name: &str| read_image(&fixtures().join("golden/img2img").join(name));
    let o = GenerateOptions { steps: 5, init_image: Some(img("init.png")), strength: 0.6, ..options() };
    let inpaint = GenerateOptions { mask: Some(img("mask.png")), strength: 0.75, ..o.clone() };
    let sd = load(DType::F32);
    png_check(&sd.generate(ctx(), &o, |_, _| {}).unwrap(), "sdxl-tiny/img2img.png", "sdxl img2img");
    png_check(&sd.generate(ctx(), &inpaint, |_, _| {}).unwrap(), "sdxl-tiny/inpaint4.png", "sdxl inpaint (4 channels)");
    let sd = StableDiffusion::load(ctx(), &sdxl_tiny_inpaint(), false).unwrap();
    assert!(sd.is_sdxl() && sd.unet.in_channels() == 9);
    let o9 = GenerateOptions { strength: 1.0, ..inpaint };
    png_check(&sd.generate(ctx(), &o9, |_, _| {}).unwrap(), "sdxl-tiny/inpaint9.png", "sdxl inpaint (9 channels)");
    let e = sd.generate(ctx(), &GenerateOptions { mask: None, ..o9 }, |_, _| {}).err().unwrap().to_string();
    assert!(e.contains("inpainting model") && e.contains("--mask"), "{e}");
}

/// `prompt_2` / `negative_prompt_2` go to text_encoder_2 (and its pooled output), the prompts to
/// text_encoder, as diffusers' `encode_prompt`.
#[test]
fn prompt_2_conditions_the_second_encoder() {
    let g = golden("prompt2.safetensors");
    let o = GenerateOptions {
        prompt_2: Some("a red cube on a wooden table".into()),
        negative_prompt_2: Some("dark, noisy".into()),
        ..options()
    };
    for dtype in dtypes() {
        let (text, added) = load(dtype).conditioning(ctx(), &o).unwrap();
        check(&text.to_vec(ctx()).unwrap(), &g.f32("prompt_embeds").0, tol(dtype), &format!("{dtype:?} prompt_embeds with prompt_2"));
        check(&added.unwrap().text_embeds, &g.f32("pooled").0, tol(dtype), &format!("{dtype:?} pooled with prompt_2"));
    }
    // SD 1.x has one encoder: prompt_2 is refused, not dropped.
    let sd = StableDiffusion::load(ctx(), &fixtures().join("sd15-tiny"), false).unwrap();
    let e = sd.conditioning(ctx(), &o).err().unwrap().to_string();
    assert!(e.contains("prompt_2") && e.contains("SDXL"), "{e}");
}

/// `--medvram` (`StableDiffusion::stream_text_encoders`): both encoders' layers uploaded as they
/// run give the same image, bit for bit, with none of them kept on the GPU.
#[test]
fn streamed_text_encoders_give_the_same_image() {
    let want = load(DType::F32).generate(ctx(), &options(), |_, _| {}).unwrap();
    let mut sd = load(DType::F32);
    sd.stream_text_encoders(ctx());
    assert!(sd.clip.layers.is_empty() && sd.sdxl.as_ref().unwrap().clip_2.layers.is_empty());
    let got = sd.generate(ctx(), &options(), |_, _| {}).unwrap();
    assert!(got.rgb == want.rgb, "streamed text encoders changed the image");
}

/// `synthetic:sdxl` (tools/fixtures_fullsize_sdxl.py): SDXL base 1.0's parameter counts and the
/// configs Pigment reads from it. Only the assets: generating its 3.5 G values is for `--plan`.
#[test]
fn synthetic_sdxl_is_sdxl_base_size() {
    use pigment::models::{clip::ClipConfig, unet::UNetConfig};
    use pigment::weights::{synthetic::SyntheticModel, ComponentKind as K};
    let m = SyntheticModel::Sdxl;
    let count = |k| m.tensors(k).iter().map(|(_, s)| s.iter().product::<usize>()).sum::<usize>();
    let counts = [K::TextEncoder, K::TextEncoder2, K::Unet, K::Vae].map(count);
    assert_eq!(counts, [123_060_480, 694_659_840, 2_567_463_684, 83_653_863]);
    let unet = UNetConfig::from_json(&m.config("unet")).unwrap();
    assert_eq!((unet.block_out_channels.clone(), unet.transformer_layers.clone(), unet.cross_attention_dim), (vec![320, 640, 1280], vec![1, 2, 10], 2048));
    let te2 = ClipConfig::from_json(&m.config("text_encoder_2")).unwrap();
    assert_eq!((te2.hidden, te2.layers), (1280, 32));
    assert!(SyntheticModel::from_spec("synthetic:sdxl").unwrap().is_ok());
}

// LoRA and textual inversion (tools/fixtures_sdxl_lora.py): kohya's SDXL file (`lora_te1_`,
// `lora_te2_`, LDM UNet names) × 0.8, kohya keys with diffusers paths × 0.7 and PEFT keys
// (`unet.`, `text_encoder.`, `text_encoder_2.`) × 0.5, against diffusers' load_lora_weights +
// set_adapters + fuse_lora; an SDXL embedding (`clip_l`, `clip_g`) against diffusers'
// load_textual_inversion into both encoders.

fn sdxl_lora(name: &str) -> std::sync::Arc<pigment::lora::Lora> {
    std::sync::Arc::new(pigment::lora::Lora::open(fixtures().join("sdxl-lora").join(format!("sdxl-tiny-{name}.safetensors"))).unwrap())
}

fn sdxl_loras() -> Vec<pigment::lora::LoraUse> {
    use pigment::lora::LoraUse;
    vec![LoraUse::new(sdxl_lora("kohya"), 0.8), LoraUse::new(sdxl_lora("flat"), 0.7), LoraUse::new(sdxl_lora("peft"), 0.5)]
}

/// Merged weights against diffusers' fused ones (whole for a few layers, the first values of
/// every other merged one), from the folder and the single file. Both merge in f32 from the same
/// f16 factors: rel 1e-6.
#[test]
fn sdxl_lora_merged_weights_match_diffusers_fuse_lora() {
    use pigment::weights::{OpenOptions, Weights};
    let bytes = std::fs::read(fixtures().join("golden/sdxl-tiny/lora.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta: serde_json::Value = serde_json::from_str(&meta.metadata().as_ref().unwrap()["pigment"]).unwrap();
    let uses = sdxl_loras();
    let folder = sdxl_tiny();
    let sources = [
        ("folder", Weights::open(&folder).unwrap()),
        ("single file", Weights::open_with(sdxl_single_file(), &OpenOptions { config_dir: Some(folder.clone()) }).unwrap()),
    ];
    for (source, w) in &sources {
        let m = pigment::lora::merge_sdxl(w.text_encoder().unwrap(), w.text_encoder_2(), w.unet().unwrap(), &uses).unwrap();
        assert!(m.warnings.is_empty(), "{source}: {:?}", m.warnings);
        let counts = &meta["counts"];
        assert_eq!(
            [m.text_encoder.len(), m.text_encoder_2.len(), m.unet.len()].map(|n| n as u64),
            [&counts["text_encoder"], &counts["text_encoder_2"], &counts["unet"]].map(|c| c.as_u64().unwrap()),
            "{source}: tensors merged per part (text_encoder, text_encoder_2, unet)"
        );
        let (mut worst, mut checked) = (0f32, 0);
        for (key, t) in st.tensors() {
            let rest = key.strip_prefix("fused.").unwrap();
            let (part, name) = rest.split_once('.').unwrap();
            let map = match part {
                "text_encoder" => &m.text_encoder,
                "text_encoder_2" => &m.text_encoder_2,
                _ => &m.unet,
            };
            let want: Vec<f32> = bytemuck::pod_collect_to_vec(t.data());
            let got = map.get(name).unwrap_or_else(|| panic!("{source}: {part} {name} not merged"));
            let e = rel_err(&got[..want.len()], &want);
            if want.len() > 24 {
                eprintln!("{source} {part} {name} (whole): rel err {e:.2e}");
                assert_eq!(got.len(), want.len());
            }
            assert!(e <= 1e-6, "{source} {part} {name}: rel err {e:.2e}");
            worst = worst.max(e);
            checked += 1;
        }
        eprintln!("{source}: {checked} merged tensors checked, worst rel err {worst:.2e}");
        assert_eq!(checked, m.text_encoder.len() + m.text_encoder_2.len() + m.unet.len());
    }
}

/// Through the pipeline (f32): diffusers' image with the three LoRAs, and the base image back
/// once they are removed (both text encoders and the UNet rebuilt from the base weights).
#[test]
fn sdxl_lora_generation_matches_diffusers() {
    let mut sd = load(DType::F32);
    assert!(sd.set_loras(ctx(), &sdxl_loras()).unwrap().is_empty());
    png_check(&sd.generate(ctx(), &options(), |_, _| {}).unwrap(), "sdxl-tiny/lora.png", "sdxl LoRAs");
    sd.set_loras(ctx(), &[]).unwrap();
    png_check(&sd.generate(ctx(), &options(), |_, _| {}).unwrap(), "sdxl-tiny/txt2img.png", "sdxl LoRAs removed");
}

/// An SDXL embedding: its `clip_l` rows in the first encoder, `clip_g` in the second, the name
/// in both tokenizers (diffusers' image); they survive a LoRA change.
#[test]
fn sdxl_textual_inversion_matches_diffusers() {
    let mut sd = load(DType::F32);
    assert_eq!(sd.load_textual_inversion(&fixtures().join("sdxl-lora/sdxl-tiny-emb.safetensors"), "sdxlword").unwrap(), 2);
    let o = GenerateOptions { prompt: PROMPT.replace("an astronaut", "an sdxlword"), ..options() };
    png_check(&sd.generate(ctx(), &o, |_, _| {}).unwrap(), "sdxl-tiny/embedding.png", "sdxl embedding");
    sd.set_loras(ctx(), &sdxl_loras()).unwrap();
    sd.set_loras(ctx(), &[]).unwrap();
    png_check(&sd.generate(ctx(), &o, |_, _| {}).unwrap(), "sdxl-tiny/embedding.png", "sdxl embedding after a LoRA change");
}

/// LoRAs and embeddings of the other family fail, naming the mismatch.
#[test]
fn sdxl_lora_and_embedding_family_mismatches_are_errors() {
    use pigment::lora::{merge, merge_sdxl, Lora, LoraUse};
    use pigment::weights::Weights;
    use std::sync::Arc;
    let xl = Weights::open(sdxl_tiny()).unwrap();
    let sd15 = Weights::open(fixtures().join("sd15-tiny")).unwrap();
    let one = |l: Arc<Lora>| vec![LoraUse::new(l, 1.0)];
    // An SDXL LoRA on SD 1.5: its keys are SDXL-only namings, nothing matches.
    for name in ["kohya", "peft"] {
        let e = merge(sd15.text_encoder().unwrap(), sd15.unet().unwrap(), &one(sdxl_lora(name))).err().unwrap().to_string();
        eprintln!("sdxl {name} on sd15: {e}");
        assert!(e.contains(&format!("sdxl-tiny-{name}.safetensors")), "{e}");
        assert!(e.contains("matches no layer") || e.contains("do not fit"), "{e}");
    }
    let e = merge(sd15.text_encoder().unwrap(), sd15.unet().unwrap(), &one(sdxl_lora("kohya"))).err().unwrap().to_string();
    assert!(e.contains("matches no layer") && e.contains("SDXL LoRA") && e.contains("lora_"), "{e}");
    // An SD 1.5 LoRA on SDXL: its text pairs fit the first encoder (the same CLIP layout), the
    // first cross-attention of another width fails, naming both tensors.
    let kohya15 = Arc::new(Lora::open(fixtures().join("lora/sd15-tiny-kohya.safetensors")).unwrap());
    let e = merge_sdxl(xl.text_encoder().unwrap(), xl.text_encoder_2(), xl.unet().unwrap(), &one(kohya15)).err().unwrap().to_string();
    eprintln!("sd15 kohya on sdxl: {e}");
    assert!(e.contains("sd15-tiny-kohya.safetensors") && e.contains("do not fit the model's"), "{e}");

    // Embeddings: a one-encoder file on SDXL, an SDXL file on SD 1.5.
    let mut sd = load(DType::F32);
    let dir = std::env::temp_dir().join(format!("pigment-sdxl-ti-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sd15_emb = dir.join("one.safetensors");
    let header = r#"{"emb_params":{"dtype":"F32","shape":[1,32],"data_offsets":[0,128]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend(header.as_bytes());
    bytes.extend([0u8; 128]);
    std::fs::write(&sd15_emb, bytes).unwrap();
    let e = sd.load_textual_inversion(&sd15_emb, "one").err().unwrap().to_string();
    assert!(e.contains("one.safetensors") && e.contains("clip_l") && e.contains("clip_g") && e.contains("emb_params"), "{e}");
    let mut sd15_model = StableDiffusion::load(ctx(), &fixtures().join("sd15-tiny"), false).unwrap();
    let e = sd15_model.load_textual_inversion(&fixtures().join("sdxl-lora/sdxl-tiny-emb.safetensors"), "x").err().unwrap().to_string();
    assert!(e.contains("an SDXL embedding") && e.contains("one text encoder"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A1111's "Original" emphasis written out again here (f64): `z *= w[token]`, then the mean of
/// `z` restored.
fn a1111_emphasis(z: &[f32], dim: usize, weights: &[f32]) -> Vec<f32> {
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let z64: Vec<f64> = z.iter().map(|&x| f64::from(x)).collect();
    let m0 = mean(&z64);
    let weighted: Vec<f64> = z64.chunks(dim).zip(weights).flat_map(|(row, &w)| row.iter().map(move |&x| x * f64::from(w))).collect();
    let m1 = mean(&weighted);
    weighted.iter().map(|&x| (x * m0 / m1) as f32).collect()
}

/// Emphasis and BREAK over both encoders, as A1111 does on SDXL: its hijack wraps each
/// embedder, so each encoder's `[77, D]` rows get the weights and their own mean restored,
/// and then the two are concatenated (one restore over the concatenated rows would scale both
/// by the same factor); the pooled `text_embeds` stay unweighted (A1111 takes them before the
/// emphasis). BREAK makes one 77-token chunk per part, each encoded alone, the pooled from the
/// first.
#[test]
fn emphasis_and_break_weight_each_encoder_as_a1111() {
    let sd = load(DType::F32);
    let x = sd.sdxl.as_ref().unwrap();
    let (d1, d2) = (sd.clip.config.hidden, x.clip_2.config.hidden);
    let cond = |prompt: &str| {
        let (text, added) = sd.conditioning(ctx(), &GenerateOptions { prompt: prompt.into(), ..options() }).unwrap();
        let v = text.to_vec(ctx()).unwrap();
        let (_, pos) = v.split_at(v.len() / 2);
        let pooled = added.unwrap().text_embeds;
        (pos.to_vec(), pooled[pooled.len() / 2..].to_vec())
    };
    let weighted = "a photograph of an (astronaut:1.3) riding a [horse]";
    let chunk = pigment::prompt::tokenize_prompt(&sd.tokenizer, weighted).chunks[0].clone();
    assert!(chunk.weights.iter().any(|&w| w > 1.2) && chunk.weights.iter().any(|&w| w < 0.95), "{:?}", chunk.weights);
    let (plain, plain_pooled) = cond(PROMPT);
    let (got, got_pooled) = cond(weighted);
    let split = |z: &[f32], first: bool| -> Vec<f32> {
        z.chunks(d1 + d2).flat_map(|row| if first { row[..d1].to_vec() } else { row[d1..].to_vec() }).collect()
    };
    let (w1, w2) = (a1111_emphasis(&split(&plain, true), d1, &chunk.weights), a1111_emphasis(&split(&plain, false), d2, &chunk.weights));
    let want: Vec<f32> = w1.chunks(d1).zip(w2.chunks(d2)).flat_map(|(a, b)| a.iter().chain(b).copied().collect::<Vec<_>>()).collect();
    check(&got, &want, 1e-5, "weighted prompt_embeds (per encoder)");
    assert_eq!(got_pooled, plain_pooled, "the pooled text_embeds are not weighted");
    // BREAK: two chunks, each the conditioning of its part alone.
    let (got, got_pooled) = cond("a photograph of an astronaut BREAK riding a horse");
    assert_eq!(got.len(), 2 * 77 * (d1 + d2));
    let (a, a_pooled) = cond("a photograph of an astronaut");
    let (b, _) = cond("riding a horse");
    check(&got[..a.len()], &a, 1e-5, "BREAK chunk 1");
    check(&got[a.len()..], &b, 1e-5, "BREAK chunk 2");
    assert_eq!(got_pooled, a_pooled, "BREAK: pooled from the first chunk");
}

/// More samplers on SDXL (tools/fixtures_sdxl_samplers.py: 4 steps, each scheduler from SDXL
/// base's config, leading spacing) against diffusers' PNGs, f32 and f16.
#[test]
fn samplers_match_diffusers_png() {
    use pigment::schedulers::SigmaSchedule;
    for dtype in dtypes() {
        let sd = load(dtype);
        for (name, sampler, schedule) in
            [("euler_a", SamplerKind::EulerAncestral, SigmaSchedule::Normal), ("dpmpp_2m_karras", SamplerKind::DpmPlusPlus2M, SigmaSchedule::Karras), ("ddim", SamplerKind::Ddim, SigmaSchedule::Normal)]
        {
            let o = GenerateOptions { steps: 4, sampler, schedule, ..options() };
            png_check(&sd.generate(ctx(), &o, |_, _| {}).unwrap(), &format!("sdxl-tiny/sampler_{name}.png"), &format!("{dtype:?} sdxl {name}"));
        }
    }
}

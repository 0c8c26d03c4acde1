//! LoRA against diffusers: `pipe.load_lora_weights(...)`, `set_adapters`, `fuse_lora(...)` on
//! random LoRAs of sd15-tiny in kohya and PEFT format (tools/fixtures_lora.py; goldens
//! `golden/sd15-tiny/lora_kohya.*` = kohya × 0.8, `lora_both.*` = kohya × 0.8 + PEFT × 0.5,
//! Euler, seed 42, 64x64, 4 steps, cfg 7.5).
//!
//! Tolerances: merged weights are computed on the host in f32 as diffusers does (base + s·B@A),
//! so they agree to rounding (rel 1e-5; measured 1.5e-7); text embeddings run on the GPU kernels
//! in f32 (rel 1e-5; measured 6e-7); images as tests/pipeline.rs (mean ≤ 1, max ≤ 8 levels), while the LoRAs move
//! the image by 29-37 levels mean (fixture script output), so a missing or wrongly scaled pair fails.

mod common;
use common::*;
use pigment::lora::{self, Lora, LoraUse};
use pigment::pipeline::{GenerateOptions, StableDiffusion};
use pigment::schedulers::SamplerKind;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const PROMPT: &str = "a photograph of an astronaut riding a horse";

fn lora_dir() -> PathBuf {
    fixtures().join("lora")
}

fn kohya() -> Arc<Lora> {
    Arc::new(Lora::open(lora_dir().join("sd15-tiny-kohya.safetensors")).unwrap())
}

fn peft() -> Arc<Lora> {
    Arc::new(Lora::open(lora_dir().join("sd15-tiny-peft.safetensors")).unwrap())
}

fn both() -> Vec<LoraUse> {
    vec![LoraUse::new(kohya(), 0.8), LoraUse::new(peft(), 0.5)]
}


fn assert_image(got: &[u8], golden_png: &str, what: &str) {
    let want = common::read_png(&fixtures().join("golden/sd15-tiny").join(golden_png)).2;
    assert_eq!(got.len(), want.len());
    let (mut sum, mut max) = (0u64, 0u8);
    for (a, b) in got.iter().zip(&want) {
        sum += a.abs_diff(*b) as u64;
        max = max.max(a.abs_diff(*b));
    }
    let mean = sum as f64 / got.len() as f64;
    eprintln!("{what}: mean {mean:.3} max {max} levels off {golden_png}");
    assert!(mean <= 1.0 && max <= 8, "{what}: mean {mean:.3} max {max} levels off {golden_png}");
}

/// A safetensors file of f32 tensors, written by hand (header + data).
fn write_safetensors(path: &Path, tensors: &[(&str, Vec<usize>, Vec<f32>)]) {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, shape, v) in tensors {
        let start = data.len();
        data.extend(v.iter().flat_map(|x| x.to_le_bytes()));
        header.insert(name.to_string(), serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [start, data.len()]}));
    }
    let h = serde_json::Value::Object(header).to_string();
    let mut bytes = (h.len() as u64).to_le_bytes().to_vec();
    bytes.extend(h.as_bytes());
    bytes.extend(data);
    std::fs::write(path, bytes).unwrap();
}

fn tmp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pigment-lora-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Merged weights equal diffusers' fused ones, from the folder and from the single file
/// (kohya names resolved against either).
#[test]
fn merged_weights_match_diffusers_fuse_lora() {
    for (case, uses) in [("lora_kohya", vec![LoraUse::new(kohya(), 0.8)]), ("lora_both", both())] {
        let g = Golden::load("sd15-tiny", &format!("{case}.safetensors"));
        for (source, w) in sources("sd15-tiny") {
            let merged = lora::merge(w.text_encoder().unwrap(), w.unet().unwrap(), &uses).unwrap();
            assert!(merged.warnings.is_empty(), "{:?}", merged.warnings);
            // Every Linear/Conv of the UNet but conv_in/conv_out, and all 24 text Linears.
            assert_eq!((merged.text_encoder.len(), merged.unet.len()), (24, 81), "{case} {source}: layers touched");
            for (part, name) in [
                ("text_encoder", "text_model.encoder.layers.0.self_attn.q_proj"),
                ("text_encoder", "text_model.encoder.layers.3.mlp.fc2"),
                ("unet", "down_blocks.0.attentions.0.proj_in"),
                ("unet", "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"),
                ("unet", "down_blocks.0.resnets.0.conv1"),
                ("unet", "up_blocks.1.resnets.1.conv_shortcut"),
                ("unet", "mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj"),
            ] {
                let (want, _) = g.f32(&format!("fused.{part}.{name}.weight"));
                let map = if part == "unet" { &merged.unet } else { &merged.text_encoder };
                let got = &map[&format!("{name}.weight")];
                let e = rel_err(got, &want);
                eprintln!("{case} {source} {name}: rel err {e:.2e}");
                assert!(e <= 1e-5, "{case} {source} {name}: rel err {e:.2e}");
            }
        }
    }
}

/// LyCORIS LoHa, LoKr (whole and factored halves, linear and conv) and DoRA (per output row
/// and per input channel) merge as the LyCORIS reference's functional code does
/// (tools/fixtures_lycoris.py, multiplier 0.7). Both sides compute in f32 with different
/// summation orders: rel 1e-5.
#[test]
fn lycoris_loha_lokr_dora_merge_as_the_lycoris_reference() {
    let l = Arc::new(Lora::open(lora_dir().join("sd15-tiny-lycoris.safetensors")).unwrap());
    let g = Golden::load("sd15-tiny", "lycoris.safetensors");
    for (source, w) in sources("sd15-tiny") {
        let merged = lora::merge(w.text_encoder().unwrap(), w.unet().unwrap(), &[LoraUse::new(l.clone(), 0.7)]).unwrap();
        assert!(merged.warnings.is_empty(), "{:?}", merged.warnings);
        assert_eq!(merged.text_encoder.len() + merged.unet.len(), 8, "{source}: modules merged");
        for (name, got) in merged.text_encoder.iter().chain(&merged.unet) {
            let (want, _) = g.f32(name);
            let e = rel_err(got, &want);
            eprintln!("lycoris {source} {name}: rel err {e:.2e}");
            assert!(e <= 1e-5, "lycoris {source} {name}: rel err {e:.2e}");
        }
    }
}

/// A diffusers-saved PEFT file with its `LoraConfig` in the metadata (lora_alpha 8 ≠ r 4, an
/// alpha_pattern entry, rsLoRA for the text encoder) merges as diffusers fuses it.
#[test]
fn peft_lora_config_metadata_scales_like_diffusers() {
    let g = Golden::load("sd15-tiny", "lora_peft_alpha.safetensors");
    let w = pigment::weights::Weights::open(fixtures().join("sd15-tiny")).unwrap();
    let lora = Arc::new(Lora::open(lora_dir().join("sd15-tiny-peft-alpha.safetensors")).unwrap());
    let merged = lora::merge(w.text_encoder().unwrap(), w.unet().unwrap(), &[LoraUse::new(lora, 1.0)]).unwrap();
    assert!(merged.warnings.is_empty(), "{:?}", merged.warnings);
    for (part, name) in [
        ("unet", "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"),
        ("unet", "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k"),
        ("unet", "up_blocks.1.resnets.0.conv1"),
        ("text_encoder", "text_model.encoder.layers.1.self_attn.v_proj"),
    ] {
        let (want, _) = g.f32(&format!("fused.{part}.{name}.weight"));
        let map = if part == "unet" { &merged.unet } else { &merged.text_encoder };
        let e = rel_err(&map[&format!("{name}.weight")], &want);
        eprintln!("peft alpha {name}: rel err {e:.2e}");
        assert!(e <= 1e-5, "{name}: rel err {e:.2e}");
    }
}

/// The older diffusers namings (`unet.X.lora.down.weight`, attention processors
/// `X.processor.to_q_lora.down.weight` without prefix, `to_out_lora`, text encoder
/// `X.lora_linear_layer.down.weight`) merge exactly as the PEFT file they were renamed from.
#[test]
fn older_diffusers_key_names_merge_like_peft() {
    let bytes = std::fs::read(lora_dir().join("sd15-tiny-peft.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut renamed = Vec::new();
    for (name, t) in st.tensors() {
        let (stem, ud) = if let Some(s) = name.strip_suffix(".lora_A.weight") { (s, "down") } else { (name.strip_suffix(".lora_B.weight").unwrap(), "up") };
        let new = if let Some(s) = stem.strip_prefix("text_encoder.") {
            format!("text_encoder.{s}.lora_linear_layer.{ud}.weight")
        } else if let Some((head, proj)) = stem.strip_prefix("unet.").unwrap().rsplit_once(".to_") {
            let proj = if proj == "out.0" { "out" } else { proj };
            format!("{head}.processor.to_{proj}_lora.{ud}.weight")
        } else {
            format!("{stem}.lora.{ud}.weight")
        };
        assert_eq!(t.dtype(), safetensors::Dtype::F16, "{name}: the fixture LoRAs are F16");
        let v: Vec<f32> = t.data().chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect();
        renamed.push((new, t.shape().to_vec(), v));
    }
    let dir = tmp_dir("old");
    let path = dir.join("old.safetensors");
    let refs: Vec<(&str, Vec<usize>, Vec<f32>)> = renamed.iter().map(|(n, s, v)| (n.as_str(), s.clone(), v.clone())).collect();
    write_safetensors(&path, &refs);
    let w = pigment::weights::Weights::open(fixtures().join("sd15-tiny")).unwrap();
    let (te, unet) = (w.text_encoder().unwrap(), w.unet().unwrap());
    let old = lora::merge(te, unet, &[LoraUse::new(Arc::new(Lora::open(&path).unwrap()), 0.5)]).unwrap();
    let new = lora::merge(te, unet, &[LoraUse::new(peft(), 0.5)]).unwrap();
    assert!(old.warnings.is_empty(), "{:?}", old.warnings);
    assert_eq!(old.unet, new.unet);
    assert_eq!(old.text_encoder, new.text_encoder);
    assert!(!new.unet.is_empty() && !new.text_encoder.is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Through the pipeline (f32): text embeddings and images match diffusers for one and for two
/// LoRAs, and removing them gives the base model's image back (re-merged from the base weights,
/// not subtracted).
#[test]
fn generation_with_loras_matches_diffusers() {
    let c = ctx();
    let mut sd = StableDiffusion::load(c, &fixtures().join("sd15-tiny"), false).unwrap();
    let opts = GenerateOptions { prompt: PROMPT.into(), clip_skip: 1, ..txt2img_options(SamplerKind::Euler) };
    for (case, uses) in [("lora_kohya", vec![LoraUse::new(kohya(), 0.8)]), ("lora_both", both())] {
        assert!(sd.set_loras(c, &uses).unwrap().is_empty());
        let g = Golden::load("sd15-tiny", &format!("{case}.safetensors"));
        for (tag, text) in [("prompt", PROMPT), ("negative", "blurry, low quality")] {
            let got = sd.clip.encode_prompt(c, &sd.tokenizer, text, 1).unwrap().to_vec(c).unwrap();
            let (want, _) = g.f32(&format!("{tag}.last_hidden_state"));
            let e = rel_err(&got, &want);
            eprintln!("{case} {tag} embeddings: rel err {e:.2e}");
            assert!(e <= 1e-5, "{case} {tag} embeddings: rel err {e:.2e}");
        }
        let image = sd.generate(c, &opts, |_, _| {}).unwrap();
        assert_image(&image.rgb, &format!("{case}.png"), case);
    }
    sd.set_loras(c, &[]).unwrap();
    assert!(sd.loras().files().is_empty());
    let image = sd.generate(c, &opts, |_, _| {}).unwrap();
    assert_image(&image.rgb, "sampler_euler.png", "LoRAs removed");
}

/// SD 2.x: the single file's text encoder is OpenCLIP (q/k/v are row slices of one
/// `in_proj_weight`) and its UNet projections are Linear. A kohya LoRA on those layers merges to
/// base + s·alpha/r·up@down (computed here) from the folder and from the single file alike, and
/// both pipelines then give the same text embeddings.
#[test]
fn sd21_single_file_and_folder_merge_alike() {
    let dir = tmp_dir("sd21");
    let path = dir.join("sd21.safetensors");
    let (r, d, c0) = (2usize, 64usize, 40usize);
    let mods = [
        ("lora_te_text_model_encoder_layers_1_self_attn_k_proj", "text_model.encoder.layers.1.self_attn.k_proj.weight", d, d),
        ("lora_te_text_model_encoder_layers_4_mlp_fc1", "text_model.encoder.layers.4.mlp.fc1.weight", 256, d),
        ("lora_unet_down_blocks_0_attentions_0_proj_in", "down_blocks.0.attentions.0.proj_in.weight", c0, c0),
    ];
    let mut tensors = Vec::new();
    for (i, (key, _, out, inp)) in mods.iter().enumerate() {
        tensors.push((format!("{key}.lora_down.weight"), vec![r, *inp], rand_vec(r * inp, 10 + i as u64)));
        tensors.push((format!("{key}.lora_up.weight"), vec![*out, r], rand_vec(out * r, 20 + i as u64)));
        tensors.push((format!("{key}.alpha"), vec![], vec![1.0]));
    }
    let refs: Vec<(&str, Vec<usize>, Vec<f32>)> = tensors.iter().map(|(n, s, v)| (n.as_str(), s.clone(), v.clone())).collect();
    write_safetensors(&path, &refs);
    let lora = Arc::new(Lora::open(&path).unwrap());
    let uses = [LoraUse { lora: lora.clone(), te_scale: 0.7, unet_scale: 0.4 }];
    for (source, w) in sources("sd21-tiny") {
        let (te, unet) = (w.text_encoder().unwrap(), w.unet().unwrap());
        let m = lora::merge(te, unet, &uses).unwrap();
        assert!(m.warnings.is_empty(), "{:?}", m.warnings);
        for (i, (_, target, out, inp)) in mods.iter().enumerate() {
            let (comp, map, mult) = if i < 2 { (te, &m.text_encoder, 0.7) } else { (unet, &m.unet, 0.4) };
            let mut want = comp.get(target).unwrap().to_f32().unwrap();
            let (down, up) = (&tensors[3 * i].2, &tensors[3 * i + 1].2);
            for o in 0..*out {
                for j in 0..*inp {
                    let dot: f32 = (0..r).map(|k| up[o * r + k] * down[k * inp + j]).sum();
                    want[o * inp + j] += mult * 0.5 * dot; // alpha 1 / rank 2
                }
            }
            let e = rel_err(&map[*target], &want);
            assert!(e <= 1e-6, "{source} {target}: rel err {e:.2e}");
        }
    }
    let c = ctx();
    let folder = fixtures().join("sd21-tiny");
    let mut a = StableDiffusion::load(c, &folder, false).unwrap();
    let mut b = StableDiffusion::load_with_config(c, &single_file("sd21-tiny"), Some(&folder), false).unwrap();
    let base = a.clip.encode_prompt(c, &a.tokenizer, PROMPT, 1).unwrap().to_vec(c).unwrap();
    a.set_loras(c, &uses).unwrap();
    b.set_loras(c, &uses).unwrap();
    let ea = a.clip.encode_prompt(c, &a.tokenizer, PROMPT, 1).unwrap().to_vec(c).unwrap();
    let eb = b.clip.encode_prompt(c, &b.tokenizer, PROMPT, 1).unwrap().to_vec(c).unwrap();
    assert!(rel_err(&ea, &base) > 1e-3, "the LoRA did not change the sd21 embeddings");
    assert!(rel_err(&eb, &ea) <= 1e-6, "single file vs folder: {:.2e}", rel_err(&eb, &ea));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Textual-inversion vectors survive the text encoder being rebuilt for LoRAs, and removing the
/// LoRAs gives bit-identical embeddings back (merged from the base, nothing subtracted).
#[test]
fn textual_inversion_survives_lora_changes() {
    let c = ctx();
    let mut sd = StableDiffusion::load(c, &fixtures().join("sd15-tiny"), false).unwrap();
    let dir = tmp_dir("ti");
    let ti = dir.join("tiword.safetensors");
    write_safetensors(&ti, &[("emb_params", vec![2, 32], rand_vec(64, 7))]);
    sd.clip.load_textual_inversion(&mut sd.tokenizer, &ti, "tiword").unwrap();
    let encode = |sd: &StableDiffusion| sd.clip.encode_prompt(c, &sd.tokenizer, "a tiword riding a horse", 1).unwrap().to_vec(c).unwrap();
    let base = encode(&sd);
    sd.set_loras(c, &[LoraUse::new(kohya(), 0.8)]).unwrap();
    let with = encode(&sd);
    assert!(rel_err(&with, &base) > 1e-2, "the LoRA did not change the embeddings");
    sd.set_loras(c, &[]).unwrap();
    assert_eq!(encode(&sd), base);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The CLI: `--lora FILE:SCALE` plus an A1111 `<lora:name:w>` tag from `--lora-dir`, in f16 where
/// the adapter has it; the PNG's parameters keep the tag in the prompt, as A1111 does.
#[test]
fn cli_lora_file_and_prompt_tag() {
    let dir = tmp_dir("cli");
    let out = dir.join("out.png");
    let prompt = format!("{PROMPT} <lora:sd15-tiny-kohya:0.8>");
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_pigment"))
        .args(["generate", "--model"])
        .arg(fixtures().join("sd15-tiny"))
        .args([prompt.as_str(), "--negative-prompt", "blurry, low quality"])
        .args(["--seed", "42", "--width", "64", "--height", "64", "--steps", "4", "--cfg", "7.5", "--sampler", "euler"])
        .arg("--lora-dir")
        .arg(lora_dir())
        .arg("--lora")
        .arg(format!("{}:0.5", lora_dir().join("sd15-tiny-peft.safetensors").display()))
        .arg("--output")
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert!(!stderr.contains("warning"), "{stderr}");
    assert_image(&read_png(&out).2, "lora_both.png", "CLI");
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&out).unwrap()));
    let reader = decoder.read_info().unwrap();
    let text = &reader.info().uncompressed_latin1_text.iter().find(|t| t.keyword == "parameters").unwrap().text;
    assert!(text.starts_with(&format!("{prompt}\nNegative prompt:")), "{text}");
    // A1111's `Lora hashes` (sha256 of the tensor data after the header, 12 hex digits: from
    // Python's hashlib), --lora files first, then tags.
    assert!(text.ends_with(r#", Lora hashes: "sd15-tiny-peft: b124f851cd6e, sd15-tiny-kohya: 807008a2f7ef""#), "{text}");
    // A tag that is not in the folder fails (before the model loads), listing what is there.
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_pigment"))
        .args(["generate", "--model"])
        .arg(fixtures().join("sd15-tiny"))
        .args(["a cat <lora:nope:0.5>", "--lora-dir"])
        .arg(lora_dir())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success() && stderr.contains("<lora:nope>") && stderr.contains("sd15-tiny-kohya"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Bad LoRAs and tags get errors naming the file, the keys, the shapes or what is available.
#[test]
fn lora_errors_are_clear() {
    let w = pigment::weights::Weights::open(fixtures().join("sd15-tiny")).unwrap();
    let (te, unet) = (w.text_encoder().unwrap(), w.unet().unwrap());
    let dir = tmp_dir("err");
    let merge_err = |file: &str, tensors: &[(&str, Vec<usize>, Vec<f32>)]| -> Result<String, String> {
        let path = dir.join(file);
        write_safetensors(&path, tensors);
        let lora = Lora::open(&path).map_err(|e| e.to_string())?;
        lora::merge(te, unet, &[LoraUse::new(Arc::new(lora), 1.0)]).map(|_| String::new()).map_err(|e| e.to_string())
    };
    let merge_err = |file: &str, t: &[(&str, Vec<usize>, Vec<f32>)]| merge_err(file, t).expect_err("should fail");

    // SDXL-style LDM names: nothing matches.
    let e = merge_err(
        "sdxl.safetensors",
        &[
            ("lora_unet_input_blocks_4_1_proj_in.lora_down.weight", vec![4, 640], vec![0.0; 2560]),
            ("lora_unet_input_blocks_4_1_proj_in.lora_up.weight", vec![640, 4], vec![0.0; 2560]),
        ],
    );
    assert!(e.contains("sdxl.safetensors") && e.contains("matches no layer") && e.contains("lora_unet_input_blocks_4_1_proj_in"), "{e}");

    // A name this model has, with another model's width (sd21-tiny is 40 wide, not 32).
    let e = merge_err(
        "wide.safetensors",
        &[
            ("lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight", vec![4, 40], vec![0.0; 160]),
            ("lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight", vec![40, 4], vec![0.0; 160]),
        ],
    );
    assert!(e.contains("wide.safetensors") && e.contains("proj_in.lora_down.weight") && e.contains("[4, 40]") && e.contains("[32, 32, 1, 1]"), "{e}");

    // Not a LoRA at all; LyCORIS LoHa; a down without its up.
    let e = Lora::open(single_file("sd15-tiny")).err().unwrap().to_string();
    assert!(e.contains("not a LoRA"), "{e}");
    let e = merge_err("loha.safetensors", &[("lora_unet_x.hada_w1_a", vec![1], vec![0.0])]);
    assert!(e.contains("hada_w1_b"), "{e}");
    let e = merge_err("tucker.safetensors", &[("lora_unet_x.hada_t1", vec![1], vec![0.0])]);
    assert!(e.contains("Tucker"), "{e}");
    let e = merge_err("half.safetensors", &[("lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight", vec![1, 32], vec![0.0; 32])]);
    assert!(e.contains("lora_up.weight"), "{e}");

    // Partly matching: merged, with a warning naming the unknown keys.
    let path = dir.join("partial.safetensors");
    write_safetensors(
        &path,
        &[
            ("lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight", vec![1, 32], vec![0.1; 32]),
            ("lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight", vec![64, 1], vec![0.1; 64]),
            ("lora_te_text_model_encoder_layers_23_mlp_fc1.lora_down.weight", vec![1, 32], vec![0.1; 32]),
            ("lora_te_text_model_encoder_layers_23_mlp_fc1.lora_up.weight", vec![64, 1], vec![0.1; 64]),
        ],
    );
    let m = lora::merge(te, unet, &[LoraUse::new(Arc::new(Lora::open(&path).unwrap()), 1.0)]).unwrap();
    assert_eq!(m.text_encoder.len(), 1);
    assert!(m.warnings.len() == 1 && m.warnings[0].contains("layers_23_mlp_fc1"), "{:?}", m.warnings);

    // Tags: unknown name lists the folder; no folder given.
    let e = lora::uses_for_prompt("a cat <lora:nope:0.7>", Some(&lora_dir())).err().unwrap().to_string();
    assert!(e.contains("nope") && e.contains("sd15-tiny-kohya") && e.contains("sd15-tiny-peft"), "{e}");
    let e = lora::uses_for_prompt("a cat <lora:nope:0.7>", None).err().unwrap().to_string();
    assert!(e.contains("--lora-dir"), "{e}");
    let uses = lora::uses_for_prompt("a cat <lora:sd15-tiny-kohya:0.7:0.3>", Some(&lora_dir())).unwrap();
    assert_eq!((uses.len(), uses[0].te_scale, uses[0].unet_scale), (1, 0.7, 0.3));
    assert_eq!(lora::parse_file_arg("a/b.safetensors:0.25"), (PathBuf::from("a/b.safetensors"), 0.25));
    assert_eq!(lora::parse_file_arg("C:/b.safetensors"), (PathBuf::from("C:/b.safetensors"), 1.0));
    let _ = std::fs::remove_dir_all(&dir);
}

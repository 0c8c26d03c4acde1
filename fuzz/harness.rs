//! What each fuzz target does with its input, shared by the targets (`fuzz/fuzz_targets/`, built
//! by cargo-fuzz on nightly) and by `tests/fuzz_regressions.rs` (stable, every `cargo test`), so
//! a regression input runs the same code in both. Each function takes arbitrary bytes and returns
//! `Ok` or the error Pigment reports (as text); a panic, hang or runaway allocation is the bug.
//! Nothing here needs a GPU: loaders are fuzzed up to the CPU-side result (parsed header, mapped
//! names, inferred configs, merged LoRA weights, embedding vectors).

#![allow(dead_code)]

use pigment::lora::{self, Lora, LoraUse};
use pigment::models::clip::{read_textual_inversion, ClipConfig};
use pigment::models::controlnet::ControlNetConfig;
use pigment::models::unet::UNetConfig;
use pigment::models::vae::VaeConfig;
use pigment::tokenizer::{ClipTokenizer, PadToken};
use pigment::weights::{self, Component, SafetensorsFile, Weights};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

pub type Outcome = Result<(), String>;

/// Names of the targets, as `fuzz/fuzz_targets/<name>.rs` and `tests/fixtures/fuzz/<name>/`.
pub const TARGETS: &[&str] = &["safetensors", "single_file", "loaders", "prompt", "tokenizer", "image", "serve_request"];

/// Run target `name` on `data`.
pub fn run(name: &str, data: &[u8]) -> Outcome {
    match name {
        "safetensors" => safetensors(data),
        "single_file" => single_file(data),
        "loaders" => loaders(data),
        "prompt" => prompt(data),
        "tokenizer" => tokenizer(data),
        "image" => image(data),
        "serve_request" => serve_request(data),
        _ => panic!("no fuzz target '{name}'"),
    }
}

fn fixtures() -> PathBuf {
    // The main crate's tests and the fuzz crate (one level down) both find `tests/fixtures`.
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    [here.join("tests/fixtures"), here.join("../tests/fixtures")]
        .into_iter()
        .find(|p| p.is_dir())
        .expect("tests/fixtures next to the pigment crate")
}

/// The tiny SD 1.5 fixture (text encoder + UNet), what LoRAs and ControlNets are checked against.
fn base() -> &'static (Component, Component, UNetConfig, usize) {
    static BASE: OnceLock<(Component, Component, UNetConfig, usize)> = OnceLock::new();
    BASE.get_or_init(|| {
        let w = Weights::open(fixtures().join("sd15-tiny")).expect("tests/fixtures/sd15-tiny opens");
        let (te, unet) = (w.text_encoder().unwrap().clone(), w.unet().unwrap().clone());
        let cfg = UNetConfig::for_component(&unet).unwrap();
        let hidden = ClipConfig::for_component(&te).unwrap().hidden;
        (te, unet, cfg, hidden)
    })
}

fn tok() -> &'static ClipTokenizer {
    static TOK: OnceLock<ClipTokenizer> = OnceLock::new();
    TOK.get_or_init(|| ClipTokenizer::embedded(PadToken::EndOfText))
}

fn open(data: &[u8]) -> Result<SafetensorsFile, String> {
    SafetensorsFile::from_bytes("fuzz.safetensors", data.to_vec()).map_err(|e| e.to_string())
}

/// Split off a selector byte (targets that fuzz several inputs kinds).
fn select(data: &[u8]) -> (u8, &[u8]) {
    match data.split_first() {
        Some((&b, rest)) => (b, rest),
        None => (0, &[]),
    }
}

/// Every tensor a component names, read in full (lengths are validated against the file, so this
/// allocates at most a few times the input).
fn read_all(c: &Component) -> Outcome {
    for name in c.names() {
        let shape = c.shape(&name);
        match c.get(&name) {
            Ok(v) => {
                if shape.as_deref().is_some_and(|s| s != v.shape.as_slice()) {
                    return Err(format!("'{name}': shape() says {shape:?} but get() gives {:?}", v.shape));
                }
                let _ = v.to_f32();
            }
            Err(e) => {
                let _ = e.to_string();
            }
        }
    }
    Ok(())
}

/// The safetensors header and tensor access: parse, then read every tensor as f32 and every
/// metadata string.
pub fn safetensors(data: &[u8]) -> Outcome {
    let f = open(data)?;
    let _ = f.metadata().len();
    let _ = f.data_section().len();
    for name in f.names() {
        let (_, shape) = f.info(name).expect("a listed name has info");
        let shape = shape.to_vec();
        let v = f.get(name).map_err(|e| e.to_string())?;
        assert_eq!(v.shape, shape);
        let _ = v.expect_shape(&shape);
        if let Ok(x) = v.to_f32() {
            assert_eq!(x.len(), v.numel());
        }
        let _ = v.transposed_f32();
        let _ = v.gather_rows(&[0, 1]);
    }
    Ok(())
}

/// Single-file key mapping and architecture inference (selector byte even), or the diffusers
/// `config.json` parsers that a folder uses instead (odd: the rest is the JSON).
pub fn single_file(data: &[u8]) -> Outcome {
    let (sel, rest) = select(data);
    if sel % 2 == 1 {
        let v: serde_json::Value = serde_json::from_slice(rest).map_err(|e| e.to_string())?;
        let r = [
            UNetConfig::from_json(&v).err(),
            ClipConfig::from_json(&v).err(),
            VaeConfig::from_json(&v).err(),
            ControlNetConfig::from_json(&v).err(),
        ];
        return match r.iter().flatten().next() {
            Some(e) if r.iter().all(Option::is_some) => Err(e.clone()),
            _ => Ok(()),
        };
    }
    let w = Weights::from_single_file(open(rest)?).map_err(|e| e.to_string())?;
    let mut errors = Vec::new();
    if let Ok(te) = w.text_encoder() {
        read_all(te)?;
        if let Err(e) = ClipConfig::for_component(te) {
            errors.push(e.to_string());
        }
    }
    if let Ok(unet) = w.unet() {
        read_all(unet)?;
        if let Err(e) = UNetConfig::for_component(unet) {
            errors.push(e.to_string());
        }
    }
    if let Ok(vae) = w.vae() {
        read_all(vae)?;
        if let Err(e) = VaeConfig::for_component(vae) {
            errors.push(e.to_string());
        }
    }
    match errors.into_iter().next() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// LoRA / LyCORIS (selector % 4 == 0: parsed, planned and merged into the tiny SD 1.5 fixture),
/// textual-inversion embeddings (1), ControlNet files (2: mapped, config inferred and checked
/// against the fixture's UNet) and ControlNet `config.json` (3).
pub fn loaders(data: &[u8]) -> Outcome {
    let (sel, rest) = select(data);
    let (te, unet, unet_cfg, hidden) = base();
    match sel % 4 {
        0 => {
            let lora = Arc::new(Lora::from_file("fuzz", open(rest)?).map_err(|e| e.to_string())?);
            let _ = lora.short_hash();
            // Both multipliers, as `<lora:NAME:TE:UNET>`, from the selector's high bits.
            let scale = (sel >> 2) as f32 / 16.0 - 1.0;
            let uses = [LoraUse { lora, te_scale: scale, unet_scale: 1.0 }];
            let m = lora::merge(te, unet, &uses).map_err(|e| e.to_string())?;
            for (part, merged) in [(te, &m.text_encoder), (unet, &m.unet)] {
                for (name, v) in merged {
                    let want: usize = part.shape(name).expect("merged names are the model's").iter().product();
                    assert_eq!(v.len(), want, "merged '{name}' has the wrong length");
                }
            }
            Ok(())
        }
        1 => {
            let (n, v) = read_textual_inversion(&open(rest)?, *hidden).map_err(|e| e.to_string())?;
            assert_eq!(v.len(), n * hidden);
            let mut t = tok().clone();
            let first = t.add_embedding("fuzz-embedding", n);
            let ids = t.encode("a fuzz-embedding here");
            assert!(ids.contains(&first));
            Ok(())
        }
        2 => {
            let c = weights::controlnet_from_file(open(rest)?, None).map_err(|e| e.to_string())?;
            read_all(&c)?;
            let cfg = ControlNetConfig::for_component(&c, Some(unet_cfg)).map_err(|e| e.to_string())?;
            cfg.check_matches(unet_cfg, "fuzz").map_err(|e| e.to_string())
        }
        _ => {
            let v: serde_json::Value = serde_json::from_slice(rest).map_err(|e| e.to_string())?;
            let cfg = ControlNetConfig::from_json(&v)?;
            cfg.check_matches(unet_cfg, "fuzz").map_err(|e| e.to_string())
        }
    }
}

/// The prompt parser: emphasis, BREAK, `<lora:...>` tags and AND, then the 75-token chunking.
pub fn prompt(data: &[u8]) -> Outcome {
    use pigment::prompt::*;
    let text = String::from_utf8_lossy(data);
    let segs = parse_prompt_attention(&text);
    for s in &segs {
        let _ = s.is_break();
    }
    let (_, tags) = extract_extra_networks(&text);
    for t in &tags {
        let _ = (t.weight, t.unet_weight, &t.name);
    }
    for opts in [ChunkOptions::default(), ChunkOptions { emphasis: false, comma_padding_backtrack: 0 }] {
        let p = tokenize_prompt_with(tok(), &text, opts);
        assert!(!p.chunks.is_empty(), "a prompt makes at least one chunk");
        let mut a = p.chunks.clone();
        let mut b = vec![empty_chunk(tok())];
        match_chunk_counts(tok(), &mut a, &mut b);
        assert_eq!(a.len(), b.len());
        let mut hidden = vec![1.0f32; a.len() * CHUNK_LEN * 2];
        let weights: Vec<f32> = a.iter().flat_map(|c| c.weights).collect();
        apply_weights(&mut hidden, a.len() * CHUNK_LEN, 2, &weights);
    }
    // `<lora:...>` tags resolved without a folder: an error naming the tag, never a panic.
    lora::uses_for_prompt(&text, None).map(|_| ()).map_err(|e| e.to_string())
}

/// The CLIP tokenizer (SD 1.x and SD 2.x padding), the text cleaning it does, and embeddings'
/// placeholder names taken from the input.
pub fn tokenizer(data: &[u8]) -> Outcome {
    use pigment::tokenizer::*;
    let text = String::from_utf8_lossy(data);
    let _ = (clean_text(&text), fix_text(&text), unescape_html(&text));
    let ids = tok().encode(&text);
    assert!(ids.iter().all(|&i| (i as usize) < tok().vocab_size()));
    assert_eq!(tok().tokenize(&text).len(), ids.len());
    assert_eq!(tok().encode_padded(&text, 77).len(), 77);
    // An embedding named by the input's first word, on a copy of the tokenizer (a copy costs far
    // more than an encode, so only for one input in eight).
    if data.len() % 8 == 0 {
        let mut t = tok().clone();
        let name: String = text.split_whitespace().next().unwrap_or("x").chars().take(40).collect();
        let first = t.add_embedding(&name, 2);
        let ids2 = t.encode(&text);
        assert!(ids2.iter().all(|&i| i < first + 2));
    }
    static SD2: OnceLock<ClipTokenizer> = OnceLock::new();
    let sd2 = SD2.get_or_init(|| ClipTokenizer::embedded(PadToken::Exclamation));
    assert_eq!(sd2.encode_padded(&text, 77).len(), 77);
    Ok(())
}

/// Init-image and mask decoding as `generate --init-image/--mask/--control-image` and the
/// server do it: decode, resize, grayscale, blur, Canny; and the PNG `parameters` reader.
pub fn image(data: &[u8]) -> Outcome {
    use pigment::imageio::*;
    let _ = png_text_chunks(data);
    let img = decode_image(data).map_err(|e| e.to_string())?;
    assert_eq!(img.rgb.len(), img.width * img.height * 3);
    let small = resize_rgb(&img, 16, 8);
    let l = pigment::pipeline::inpaint::luma(&small.rgb);
    let _ = pigment::pipeline::inpaint::gaussian_blur(&l, 16, 8, (data.len() % 7) as f32);
    let _ = canny_map(&small, 100.0, 200.0);
    Ok(())
}

/// The server's request JSON: `/sdapi/v1/txt2img` (selector even) or `img2img` (odd) bodies
/// through the same parser the routes use, and the infotext parser behind `/sdapi/v1/png-info`.
pub fn serve_request(data: &[u8]) -> Outcome {
    use pigment::serve::{catalog::ModelEntry, jobs::queue::Queue, ModelState, Options, Shared};
    use std::sync::atomic::{AtomicBool, AtomicUsize};
    use std::sync::{Mutex, RwLock};
    static SHARED: OnceLock<Shared> = OnceLock::new();
    let shared = SHARED.get_or_init(|| {
        let fx = fixtures();
        let opts = Options {
            listen: "127.0.0.1:0".parse().unwrap(),
            api_key: None,
            models_dir: None,
            model: Some(fx.join("sd15-tiny")),
            lora_dir: Some(fx.join("lora")),
            hypernetwork_dir: Some(fx.join("hypernetwork")),
            embeddings_dir: None,
            controlnet_dir: Some(fx.clone()),
            upscaler_dir: None,
            body_limit: 1 << 20,
            preview_every: 0,
            want_f16: false,
            taesd: None,
            cors_origins: Vec::new(),
        };
        Shared {
            queue: Queue::default(),
            running: Mutex::new(None),
            interrupt: AtomicBool::new(false),
            skip: AtomicBool::new(false),
            model: RwLock::new(ModelState {
                entry: ModelEntry::for_path(opts.model.as_ref().unwrap()),
                embeddings_loaded: Vec::new(),
                embeddings_skipped: Vec::new(),
                text_width: 0,
            }),
            clip_skip: AtomicUsize::new(1),
            started: std::time::SystemTime::now(),
            opts,
        }
    });
    let (sel, rest) = select(data);
    let _ = pigment::serve::routes::a1111::parse_infotext(&String::from_utf8_lossy(rest));
    let obj = match serde_json::from_slice::<serde_json::Value>(rest) {
        Ok(serde_json::Value::Object(m)) => m,
        Ok(_) => return Err("not a JSON object".into()),
        Err(e) => return Err(e.to_string()),
    };
    match pigment::serve::request::parse_a1111(shared, &obj, sel % 2 == 1) {
        Ok(p) => {
            assert!(!p.job.images.is_empty());
            Ok(())
        }
        Err(e) => Err(format!("{:?}", e.message)),
    }
}

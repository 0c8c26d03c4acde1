//! Models by Hugging Face hub id (`org/name`), downloaded into the hub cache (`HF_HOME`, default
//! `~/.cache/huggingface/hub`) with hf-hub, file by file: only what Pigment reads (configs,
//! tokenizer, scheduler, the three weight files), never the safety checker or pickles.
//!
//! The cache is looked at first, so a second run makes no request at all and works offline.

use anyhow::{anyhow, bail, Context as _, Result};
use hf_hub::api::sync::{ApiBuilder, ApiRepo};
use hf_hub::{Cache, Repo};
use std::path::{Path, PathBuf};

/// The model `pigment generate` uses without `--model`: SD 1.5, because nearly every LoRA,
/// embedding and ControlNet on model sites targets it, it is ungated (CreativeML OpenRAIL-M),
/// and its fp16 files are ~2 GB. (SD-Turbo, its fast alternative, needs CFG-free trailing
/// schedules and has a non-commercial licence.)
pub const DEFAULT_MODEL: &str = "stable-diffusion-v1-5/stable-diffusion-v1-5";
/// The default model's file variant: `*.fp16.safetensors`, half the download of the f32 files.
pub const DEFAULT_VARIANT: &str = "fp16";

/// Small files a diffusers SD folder needs besides its weights.
const FOLDER_FILES: &[&str] = &[
    "model_index.json",
    "scheduler/scheduler_config.json",
    "tokenizer/vocab.json",
    "tokenizer/merges.txt",
    "tokenizer/special_tokens_map.json",
    "tokenizer/tokenizer_config.json",
    "text_encoder/config.json",
    "unet/config.json",
    "vae/config.json",
];
/// Weight files by component, without the `.safetensors` / `.<variant>.safetensors` ending.
const FOLDER_WEIGHTS: &[&str] = &["text_encoder/model", "unet/diffusion_pytorch_model", "vae/diffusion_pytorch_model"];
const CONTROLNET_FILES: &[&str] = &["config.json"];
const CONTROLNET_WEIGHTS: &[&str] = &["diffusion_pytorch_model"];

/// Whether `spec` names a hub repository rather than a local path.
pub fn is_hub_id(spec: &str) -> bool {
    let lower = spec.to_lowercase();
    !(lower.ends_with(".ckpt") || lower.ends_with(".safetensors") || spec.starts_with('.') || spec.starts_with('/') || spec.contains('\\'))
        && spec.split('/').count() == 2
        && spec.split('/').all(|p| !p.is_empty())
}

/// A Stable Diffusion diffusers folder from the hub, as a local snapshot folder: the parts its
/// `model_index.json` lists (SDXL's `text_encoder_2` / `tokenizer_2`, a refiner without
/// `text_encoder`), or SD 1.x/2.x's when the index cannot be read (the fetch then says why).
pub fn model_folder(id: &str, variant: Option<&str>) -> Result<PathBuf> {
    let (files, weights) = model_index(id).as_ref().and_then(pipeline_files).unwrap_or_else(|| {
        (FOLDER_FILES.iter().map(|f| f.to_string()).collect(), FOLDER_WEIGHTS.iter().map(|w| w.to_string()).collect())
    });
    let (files, weights): (Vec<&str>, Vec<&str>) = (files.iter().map(String::as_str).collect(), weights.iter().map(String::as_str).collect());
    fetch(id, variant, &files, &weights, "model_index.json")
}

/// `model_index.json` of `id`, from the cache or the hub; `None` when neither has it.
fn model_index(id: &str) -> Option<serde_json::Value> {
    let cache = Cache::from_env();
    let path = match cache.repo(Repo::model(id.to_string())).get("model_index.json") {
        Some(p) => p,
        None => {
            let api = ApiBuilder::from_env().with_cache_dir(cache.path().clone()).with_progress(false).build().ok()?;
            let repo = api.model(id.to_string());
            let listing = repo.info().ok()?;
            if !listing.siblings.iter().any(|s| s.rfilename == "model_index.json") {
                return None;
            }
            download(&repo, "model_index.json").ok()?
        }
    };
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

/// The small files and weight stems of the parts a `model_index.json` lists (a part is listed
/// with a `[library, class]` pair; `[null, null]` or `null` = absent). `None` without a UNet (not
/// an SD pipeline).
pub fn pipeline_files(index: &serde_json::Value) -> Option<(Vec<String>, Vec<String>)> {
    let has = |k: &str| index.get(k).and_then(|v| v.as_array()).is_some_and(|a| a.first().is_some_and(|x| !x.is_null()));
    if !has("unet") {
        return None;
    }
    let (mut files, mut weights) = (vec!["model_index.json".to_string()], Vec::new());
    if has("scheduler") {
        files.push("scheduler/scheduler_config.json".into());
    }
    for t in ["tokenizer", "tokenizer_2"].into_iter().filter(|t| has(t)) {
        files.extend(["vocab.json", "merges.txt", "special_tokens_map.json", "tokenizer_config.json"].map(|f| format!("{t}/{f}")));
    }
    for (part, stem) in [("text_encoder", "model"), ("text_encoder_2", "model"), ("unet", "diffusion_pytorch_model"), ("vae", "diffusion_pytorch_model")] {
        if has(part) {
            files.push(format!("{part}/config.json"));
            weights.push(format!("{part}/{stem}"));
        }
    }
    Some((files, weights))
}

/// A diffusers ControlNet from the hub (its `config.json` and weights).
pub fn controlnet_folder(id: &str, variant: Option<&str>) -> Result<PathBuf> {
    fetch(id, variant, CONTROLNET_FILES, CONTROLNET_WEIGHTS, "config.json")
}

/// The weight file name for a variant.
fn weight_name(stem: &str, variant: Option<&str>) -> String {
    match variant {
        Some(v) => format!("{stem}.{v}.safetensors"),
        None => format!("{stem}.safetensors"),
    }
}

fn fetch(id: &str, variant: Option<&str>, files: &[&str], weights: &[&str], anchor: &str) -> Result<PathBuf> {
    let cache = Cache::from_env();
    let cached = cache.repo(Repo::model(id.to_string()));
    // 1. Everything already cached (this variant, or the plain files): no request at all.
    let mut candidates = vec![variant];
    if variant.is_some() {
        candidates.push(None);
    }
    for v in &candidates {
        let wanted: Vec<String> = files.iter().map(|f| f.to_string()).chain(weights.iter().map(|w| weight_name(w, *v))).collect();
        if wanted.iter().all(|f| cached.get(f).is_some()) {
            return snapshot_root(&cached.get(anchor).expect("checked above"), anchor);
        }
    }
    // 2. Ask the hub which files exist, then download the missing ones.
    let api = ApiBuilder::from_env().with_cache_dir(cache.path().clone()).with_progress(false).build()?;
    let repo = api.model(id.to_string());
    let listing = repo.info().map_err(|e| offline_error(id, variant, files, weights, &e.to_string()))?;
    let present: std::collections::HashSet<&str> = listing.siblings.iter().map(|s| s.rfilename.as_str()).collect();
    let mut wanted: Vec<String> = files.iter().map(|f| f.to_string()).collect();
    for w in weights {
        let preferred = weight_name(w, variant);
        let plain = weight_name(w, None);
        if present.contains(preferred.as_str()) {
            wanted.push(preferred);
        } else if present.contains(plain.as_str()) {
            if let Some(v) = variant {
                eprintln!("{id} has no {v} variant of {w}: downloading {plain}");
            }
            wanted.push(plain);
        } else if present.iter().any(|p| p.starts_with(&format!("{w}.")) && (p.ends_with(".bin") || p.ends_with(".ckpt"))) {
            bail!("{id}: {w} is only in pickle format (.bin/.ckpt), which Pigment does not load for safety; use a repository with .safetensors weights");
        } else {
            bail!("{id} has no {plain} (is it a Stable Diffusion 1.x/2.x diffusers repository? its files: {})", sample(&listing.siblings));
        }
    }
    for f in files {
        if !present.contains(f) {
            bail!("{id} has no {f} (is it a Stable Diffusion 1.x/2.x diffusers repository? its files: {})", sample(&listing.siblings));
        }
    }
    let mut anchor_path = None;
    for f in &wanted {
        let local = match cached.get(f) {
            Some(p) => p,
            None => download(&repo, f).with_context(|| format!("downloading {f} from {id} (hub endpoint: {})", endpoint()))?,
        };
        if f == anchor {
            anchor_path = Some(local);
        }
    }
    snapshot_root(&anchor_path.ok_or_else(|| anyhow!("{id}: {anchor} was not downloaded"))?, anchor)
}

fn download(repo: &ApiRepo, file: &str) -> Result<PathBuf> {
    Ok(repo.download_with_progress(file, Bar::new())?)
}

/// Hub files land in `<snapshot>/<file>`: the snapshot folder is the diffusers folder.
fn snapshot_root(local: &Path, anchor: &str) -> Result<PathBuf> {
    local
        .ancestors()
        .nth(anchor.split('/').count())
        .map(Path::to_path_buf)
        .ok_or_else(|| anyhow!("unexpected cache path {}", local.display()))
}

fn endpoint() -> String {
    std::env::var("HF_ENDPOINT").unwrap_or_else(|_| "https://huggingface.co".into())
}

fn sample(siblings: &[hf_hub::api::Siblings]) -> String {
    let mut names: Vec<&str> = siblings.iter().map(|s| s.rfilename.as_str()).take(12).collect();
    if siblings.len() > names.len() {
        names.push("...");
    }
    names.join(", ")
}

/// What to download by hand when the hub cannot be reached.
fn offline_error(id: &str, variant: Option<&str>, files: &[&str], weights: &[&str], why: &str) -> anyhow::Error {
    let list: Vec<String> = files.iter().map(|f| f.to_string()).chain(weights.iter().map(|w| weight_name(w, variant))).collect();
    anyhow!(
        "cannot reach the Hugging Face hub ({}) to download {id}: {why}\n\
         Either connect and run again (files go to the hub cache, {}), or download these files of \
         https://huggingface.co/{id} into a folder, keeping their subfolders, and pass it as --model FOLDER:\n  {}",
        endpoint(),
        Cache::from_env().path().display(),
        list.join("\n  ")
    )
}

/// hf-hub's progress callbacks on an indicatif bar (bytes, rate, ETA).
#[derive(Clone)]
struct Bar(indicatif::ProgressBar);

impl Bar {
    fn new() -> Bar {
        Bar(indicatif::ProgressBar::hidden())
    }
}

impl hf_hub::api::Progress for Bar {
    fn init(&mut self, size: usize, filename: &str) {
        // hf-hub calls init twice per file (before the temp file and before the transfer).
        if self.0.length() == Some(size as u64) {
            return;
        }
        let bar = indicatif::ProgressBar::new(size as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{msg} {bar:30} {bytes}/{total_bytes} {bytes_per_sec} {eta}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.set_message(filename.to_string());
        self.0 = bar;
    }
    fn update(&mut self, size: usize) {
        self.0.inc(size as u64);
    }
    fn finish(&mut self) {
        self.0.finish();
    }
}

//! What the server can load, found on disk each time it is asked (A1111's refresh buttons are
//! then no-ops): models under `--models-dir` (diffusers folders and single-file
//! `.safetensors`), LoRAs under `--lora-dir`, textual inversions under `--embeddings-dir`.

use std::path::{Path, PathBuf};

#[derive(Clone, Debug, PartialEq)]
pub struct ModelEntry {
    /// What `sd_model_checkpoint` holds and clients send back: the file or folder name.
    pub title: String,
    /// The name without extension.
    pub name: String,
    pub path: PathBuf,
}

impl ModelEntry {
    pub fn for_path(path: &Path) -> ModelEntry {
        let s = path.to_string_lossy();
        if s.starts_with("synthetic:") {
            return ModelEntry { title: s.to_string(), name: s.replace(':', "-"), path: path.to_path_buf() };
        }
        let title = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| s.to_string());
        let name = if path.is_dir() { title.clone() } else { path.file_stem().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default() };
        ModelEntry { title, name, path: path.to_path_buf() }
    }
}

/// A diffusers pipeline folder (a ControlNet folder has no `unet/`, so it is not listed).
fn is_pipeline_dir(p: &Path) -> bool {
    p.join("model_index.json").is_file() || p.join("unet").is_dir()
}

/// The models of `models_dir` (sorted by title), with `extra` (`--model`) first when it is not
/// among them.
pub fn models(models_dir: Option<&Path>, extra: Option<&Path>) -> Vec<ModelEntry> {
    let mut out = Vec::new();
    if let Some(dir) = models_dir {
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                let p = e.path();
                let file = p.extension().is_some_and(|x| x.eq_ignore_ascii_case("safetensors"));
                if (p.is_dir() && is_pipeline_dir(&p)) || (p.is_file() && file) {
                    out.push(ModelEntry::for_path(&p));
                }
            }
        }
    }
    out.sort_by(|a, b| a.title.cmp(&b.title));
    if let Some(extra) = extra {
        let same = |e: &ModelEntry| e.path == extra || std::fs::canonicalize(&e.path).ok() == std::fs::canonicalize(extra).ok();
        if !out.iter().any(same) {
            out.insert(0, ModelEntry::for_path(extra));
        }
    }
    out
}

/// The model a client names: by title (also as A1111 writes it, `title [hash]`), name, or
/// path.
pub fn find<'a>(list: &'a [ModelEntry], want: &str) -> Option<&'a ModelEntry> {
    let want = want.trim();
    // "name.safetensors [abcdef1234]": A1111's title with the short hash
    let bare = match want.rsplit_once(" [") {
        Some((t, h)) if h.ends_with(']') => t,
        _ => want,
    };
    list.iter().find(|e| e.title == bare || e.name == bare || e.path.to_string_lossy() == bare)
}

/// Every `.safetensors` under `dir` (recursively), by file stem; empty without a folder.
pub fn files(dir: Option<&Path>) -> Vec<(String, PathBuf)> {
    dir.and_then(|d| crate::lora::list_dir(d).ok()).unwrap_or_default()
}

/// ControlNets under `dir`: diffusers folders (`config.json` + weights) by folder name and
/// `.safetensors` files by stem.
pub fn controlnets(dir: Option<&Path>) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    if let Some(rd) = dir.and_then(|d| std::fs::read_dir(d).ok()) {
        for e in rd.flatten() {
            let p = e.path();
            let name = |q: &Path| q.file_stem().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            if p.is_dir() && p.join("config.json").is_file() && !is_pipeline_dir(&p) {
                out.push((p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(), p.clone()));
            } else if p.is_file() && p.extension().is_some_and(|x| x.eq_ignore_ascii_case("safetensors")) {
                out.push((name(&p), p.clone()));
            }
        }
    }
    out.sort();
    out
}

/// An upscaler under `--upscaler-dir`: a Real-ESRGAN / ESRGAN `.safetensors`.
#[derive(Clone, Debug, PartialEq)]
pub struct UpscalerEntry {
    /// The file stem (A1111's `name` and what `upscaler_1` sends).
    pub name: String,
    pub path: PathBuf,
    /// The native scale, read from the file's tensor shapes (header only).
    pub scale: usize,
}

/// The RRDBNet files under `dir` (recursively, by stem); other `.safetensors` are left out with
/// a note on stderr, so the listing only offers what the worker can run.
pub fn upscalers(dir: Option<&Path>) -> Vec<UpscalerEntry> {
    let mut out = Vec::new();
    for (name, path) in files(dir) {
        let scale = crate::weights::SafetensorsFile::open(&path).map_err(crate::Error::from).and_then(|f| crate::models::esrgan::RealEsrgan::inspect(&f));
        match scale {
            Ok(cfg) => out.push(UpscalerEntry { name, path, scale: cfg.scale }),
            Err(e) => eprintln!("upscalers: skipping {}: {e}", path.display()),
        }
    }
    out
}

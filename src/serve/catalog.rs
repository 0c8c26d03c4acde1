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

/// The listed model (`--models-dir` and `--model`) a client names, or the error to answer with:
/// what is listed, and where to look.
pub fn lookup(opts: &super::Options, title: &str) -> Result<ModelEntry, String> {
    let list = models(opts.models_dir.as_deref(), opts.model.as_deref());
    find(&list, title).cloned().ok_or_else(|| {
        let have: Vec<&str> = list.iter().map(|e| e.title.as_str()).collect();
        format!("no model '{title}' (have: {}; see /sdapi/v1/sd-models)", have.join(", "))
    })
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

/// Hashes already computed, by path, with the size and modification time they were taken at.
type HashCache = std::collections::HashMap<PathBuf, (u64, std::time::SystemTime, String)>;
static HASHES: std::sync::Mutex<Option<HashCache>> = std::sync::Mutex::new(None);
/// One hashing at a time: two listings at once wait for the first instead of reading twice.
static HASHING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The SHA-256 (lowercase hex) of a checkpoint file, as A1111's `sha256` (its `hash` and title
/// suffix are the first 10 digits). Computed once per file version and cached, as A1111 does:
/// hashing a 2 GB checkpoint takes seconds. `None` for folders (diffusers) and unreadable files.
pub fn sha256(path: &Path) -> Option<String> {
    use sha2::Digest;
    let meta = std::fs::metadata(path).ok().filter(|m| m.is_file())?;
    let key = (meta.len(), meta.modified().ok()?);
    let cached = || {
        let g = HASHES.lock().unwrap_or_else(|e| e.into_inner());
        g.as_ref()?.get(path).filter(|(n, t, _)| (*n, *t) == key).map(|(_, _, h)| h.clone())
    };
    if let Some(h) = cached() {
        return Some(h);
    }
    let _one = HASHING.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(h) = cached() {
        return Some(h);
    }
    let mut f = std::fs::File::open(path).ok()?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = std::io::Read::read(&mut f, &mut buf).ok()?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let hex: String = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
    HASHES.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert_with(Default::default).insert(path.to_path_buf(), (key.0, key.1, hex.clone()));
    Some(hex)
}

/// A1111's title: `file.safetensors [0123456789]` for a file, the bare name for a folder.
pub fn titled(e: &ModelEntry, sha: Option<&str>) -> String {
    match sha {
        Some(h) => format!("{} [{}]", e.title, &h[..10]),
        None => e.title.clone(),
    }
}

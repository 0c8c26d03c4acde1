//! Checkpoint loading: diffusers folders and single-file SD 1.x/2.x `.safetensors`, behind one
//! lookup layer that speaks diffusers tensor names whatever the file.
//!
//! * [`SafetensorsFile`]: one `.safetensors` file, memory-mapped on native targets (read into
//!   memory on wasm32, see [`SafetensorsFile::from_bytes`]). The header (its bytes only) is parsed
//!   and validated by the `safetensors` crate (dtypes, shape against offsets, overlaps, header
//!   size); the file length is checked here, so a truncated or corrupt file is reported with the
//!   name of the first tensor that does not fit.
//! * [`Weights`]: a whole model. [`Weights::open`] takes a diffusers folder (`model_index.json`,
//!   `text_encoder/model.safetensors`, `unet/diffusion_pytorch_model.safetensors`,
//!   `vae/diffusion_pytorch_model.safetensors`, each with its `config.json`) or a single-file
//!   checkpoint (original LDM keys `model.diffusion_model.*`, `first_stage_model.*`,
//!   `cond_stage_model.*`); [`single_file`] maps the original keys to diffusers names.
//! * [`Component`]: one model part (text encoder, UNet, VAE); [`Component::get`] returns a
//!   [`TensorView`] (dtype, shape, raw little-endian bytes) by diffusers name.
//!
//! Pickle checkpoints (`.ckpt`, `.pt`, `.pth`, `.bin`) are refused, never unpickled: unpickling
//! runs arbitrary code. Convert them to safetensors first.
//!
//! Weights may be stored as F32, F16 or BF16 (F64 is accepted too); they are uploaded as f16
//! when the caller asks for [`DType::F16`] (and the adapter has SHADER_F16), else f32
//! ([`TensorView::upload`]).

mod header;
#[cfg(feature = "cli")]
pub mod merge;
pub mod single_file;
pub mod synthetic;

use crate::gpu::{Context, DType, Tensor};
use header::{header_problem, MAX_HEADER_BYTES};
use half::{bf16, f16};
use serde_json::Value;
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Everything that can go wrong opening or reading a checkpoint. Every variant names the file
/// and, where there is one, the tensor.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error(
        "{path} is a PyTorch pickle checkpoint; Pigment never loads pickle files (unpickling can run \
         arbitrary code). Convert it to .safetensors first (e.g. with the safetensors `convert` tool, \
         or `safetensors.torch.save_file(torch.load(path, weights_only=True)[\"state_dict\"], out)`)"
    )]
    Pickle { path: String },
    #[error("{path}: not a valid safetensors file: {detail}")]
    Format { path: String, detail: String },
    #[error("{path} is truncated: {detail} (re-download or re-convert the file)")]
    Truncated { path: String, detail: String },
    #[error("{path}: missing tensor '{name}'{detail}")]
    Missing { path: String, name: String, detail: String },
    #[error("{path}: tensor '{name}' has shape {got:?}, expected {want}")]
    Shape { path: String, name: String, got: Vec<usize>, want: String },
    #[error("{path}: tensor '{name}' has dtype {dtype}; weights must be F32, F16 or BF16")]
    Dtype { path: String, name: String, dtype: String },
    #[error("{path}: {detail}")]
    Architecture { path: String, detail: String },
    #[error("{path}: bad config: {detail}")]
    Config { path: String, detail: String },
}

pub type Result<T, E = WeightsError> = std::result::Result<T, E>;

/// Model code works in [`crate::Result`]; weights errors keep their full message.
/// (`Unsupported` is the closest existing variant: the message says what is wrong and where.)
/// Element type of a stored tensor (the safetensors dtype names).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoredDtype {
    F64,
    F32,
    F16,
    BF16,
    /// Any other safetensors dtype (integers, bool, fp8...): readable header, not loadable as
    /// weights. Holds the dtype name and its element size in bytes (0 if unknown).
    Other(String, usize),
}

impl StoredDtype {
    fn parse(s: &str) -> StoredDtype {
        match s {
            "F64" => StoredDtype::F64,
            "F32" => StoredDtype::F32,
            "F16" => StoredDtype::F16,
            "BF16" => StoredDtype::BF16,
            other => {
                let size = match other {
                    "I64" | "U64" => 8,
                    "I32" | "U32" => 4,
                    "I16" | "U16" => 2,
                    "I8" | "U8" | "BOOL" | "F8_E4M3" | "F8_E5M2" | "F8_E8M0" => 1,
                    _ => 0,
                };
                StoredDtype::Other(other.to_string(), size)
            }
        }
    }
    pub fn size(&self) -> usize {
        match self {
            StoredDtype::F64 => 8,
            StoredDtype::F32 => 4,
            StoredDtype::F16 | StoredDtype::BF16 => 2,
            StoredDtype::Other(_, s) => *s,
        }
    }
    pub fn name(&self) -> &str {
        match self {
            StoredDtype::F64 => "F64",
            StoredDtype::F32 => "F32",
            StoredDtype::F16 => "F16",
            StoredDtype::BF16 => "BF16",
            StoredDtype::Other(n, _) => n,
        }
    }
    pub fn is_float(&self) -> bool {
        !matches!(self, StoredDtype::Other(..))
    }
}

/// Where a file's bytes live.
enum Storage {
    #[cfg(not(target_arch = "wasm32"))]
    Mmap(memmap2::Mmap),
    Owned(Vec<u8>),
    /// wasm32: a JS `Uint8Array`, outside wasm's linear memory (4 GiB at most, shared with
    /// everything else); each tensor is copied in only when it is asked for, then dropped.
    #[cfg(target_arch = "wasm32")]
    Js(js_sys::Uint8Array),
}

impl Storage {
    fn len(&self) -> usize {
        match self {
            #[cfg(not(target_arch = "wasm32"))]
            Storage::Mmap(m) => m.len(),
            Storage::Owned(v) => v.len(),
            #[cfg(target_arch = "wasm32")]
            Storage::Js(a) => a.length() as usize,
        }
    }
    /// Bytes `[start, end)`: borrowed where the file is in this process's memory, copied from JS.
    fn bytes(&self, start: usize, end: usize) -> Cow<'_, [u8]> {
        match self {
            #[cfg(not(target_arch = "wasm32"))]
            Storage::Mmap(m) => Cow::Borrowed(&m[start..end]),
            Storage::Owned(v) => Cow::Borrowed(&v[start..end]),
            #[cfg(target_arch = "wasm32")]
            Storage::Js(a) => Cow::Owned(a.subarray(start as u32, end as u32).to_vec()),
        }
    }
}

#[derive(Clone, Debug)]
struct Entry {
    dtype: StoredDtype,
    shape: Vec<usize>,
    /// Absolute byte range in the file.
    start: usize,
    end: usize,
}

/// One parsed `.safetensors` file.
pub struct SafetensorsFile {
    path: String,
    data: Storage,
    entries: HashMap<String, Entry>,
    metadata: BTreeMap<String, String>,
}

impl std::fmt::Debug for SafetensorsFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SafetensorsFile({}, {} tensors)", self.path, self.entries.len())
    }
}

/// File extensions of PyTorch pickle checkpoints.
const PICKLE_EXTS: &[&str] = &["ckpt", "pt", "pth", "bin", "pkl", "pickle"];

fn is_pickle_path(path: &Path) -> bool {
    path.extension().and_then(|e| e.to_str()).is_some_and(|e| PICKLE_EXTS.contains(&e.to_ascii_lowercase().as_str()))
}

/// A torch.save zip archive or a raw pickle stream (protocol 2..5).
fn looks_like_pickle(bytes: &[u8]) -> bool {
    bytes.starts_with(b"PK\x03\x04") || (bytes.len() >= 2 && bytes[0] == 0x80 && (2..=5).contains(&bytes[1]))
}

impl SafetensorsFile {
    /// Open and memory-map (native) a `.safetensors` file. Pickle checkpoints are refused by
    /// extension and by content.
    pub fn open(path: impl AsRef<Path>) -> Result<SafetensorsFile> {
        let path = path.as_ref();
        let shown = path.display().to_string();
        if is_pickle_path(path) {
            return Err(WeightsError::Pickle { path: shown });
        }
        let io = |source| WeightsError::Io { path: shown.clone(), source };
        let file = std::fs::File::open(path).map_err(io)?;
        #[cfg(not(target_arch = "wasm32"))]
        let data = {
            let len = file.metadata().map_err(io)?.len();
            if len == 0 {
                Storage::Owned(Vec::new())
            } else {
                // SAFETY: the map is read-only; as with every mmap-based loader, the file must not
                // be truncated or rewritten while it is open.
                Storage::Mmap(unsafe { memmap2::Mmap::map(&file) }.map_err(io)?)
            }
        };
        #[cfg(target_arch = "wasm32")]
        let data = {
            use std::io::Read;
            let mut v = Vec::new();
            let mut file = file;
            file.read_to_end(&mut v).map_err(io)?;
            Storage::Owned(v)
        };
        Self::parse(shown, data)
    }

    /// A file already in memory (wasm32, tests). `name` is used in error messages.
    pub fn from_bytes(name: impl Into<String>, bytes: Vec<u8>) -> Result<SafetensorsFile> {
        Self::parse(name.into(), Storage::Owned(bytes))
    }

    /// wasm32: a file held in a JS `Uint8Array` (see [`Storage::Js`]).
    #[cfg(target_arch = "wasm32")]
    pub fn from_js(name: impl Into<String>, bytes: js_sys::Uint8Array) -> Result<SafetensorsFile> {
        Self::parse(name.into(), Storage::Js(bytes))
    }

    fn parse(path: String, data: Storage) -> Result<SafetensorsFile> {
        let len = data.len();
        if looks_like_pickle(&data.bytes(0, len.min(8))) {
            return Err(WeightsError::Pickle { path });
        }
        if len < 8 {
            return Err(WeightsError::Truncated { path, detail: format!("{len} bytes, shorter than the 8-byte header length") });
        }
        let n = u64::from_le_bytes(data.bytes(0, 8)[..].try_into().unwrap());
        // The crate's own bound (100 MB); checked before the header is read, so a header that
        // claims gigabytes allocates nothing.
        if n > MAX_HEADER_BYTES {
            return Err(WeightsError::Format {
                path,
                detail: format!("header length {n} is implausible (the safetensors limit is {MAX_HEADER_BYTES} bytes)"),
            });
        }
        let n = n as usize;
        if 8 + n > len {
            return Err(WeightsError::Truncated {
                path,
                detail: format!("the header needs {} bytes but the file has {len}", 8 + n),
            });
        }
        // Only the header bytes go to the safetensors crate, which checks what the format
        // requires: JSON, known dtypes, shapes whose byte size (checked for overflow) equals
        // their offsets' span, offsets that tile the data without gaps or overlaps. The data
        // stays in Pigment's storage (mmap / JS bytes).
        let header = data.bytes(8, 8 + n);
        let meta: safetensors::tensor::Metadata = serde_json::from_slice(&header)
            .map_err(|e| WeightsError::Format { path: path.clone(), detail: header_problem(&header, &e.to_string()) })?;
        let base = 8 + n;
        let data_len = meta.data_len();
        let mut entries = HashMap::with_capacity(meta.tensors().len());
        for (name, info) in meta.tensors() {
            let (b, e) = info.data_offsets;
            let dtype = StoredDtype::parse(&format!("{:?}", info.dtype));
            entries.insert(name, Entry { dtype, shape: info.shape.clone(), start: base + b, end: base + e });
        }
        let metadata: BTreeMap<String, String> = meta.metadata().clone().unwrap_or_default().into_iter().collect();
        // Name the first tensor (in file order) that runs past the end.
        let cut = entries.iter().filter(|(_, e)| e.end > len).min_by_key(|(_, e)| e.start);
        if let Some((name, e)) = cut {
            let beyond = entries.values().filter(|x| x.end > len).count();
            return Err(WeightsError::Truncated {
                path,
                detail: format!(
                    "tensor '{name}' ends at byte {} but the file has only {} bytes ({beyond} of {} tensors incomplete)",
                    e.end,
                    len,
                    entries.len()
                ),
            });
        }
        if base + data_len != len {
            // The format requires the last tensor to end the file (the crate refuses the rest).
            return Err(WeightsError::Format {
                path,
                detail: format!("{} bytes after the end of the last tensor's data (byte {})", len - base - data_len, base + data_len),
            });
        }
        Ok(SafetensorsFile { path, data, entries, metadata })
    }

    pub fn path(&self) -> &str {
        &self.path
    }
    /// The `__metadata__` strings.
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }
    /// Everything after the header (the tensor data), as kohya's `addnet` hash and A1111's
    /// `Lora hashes` read it.
    pub fn data_section(&self) -> Cow<'_, [u8]> {
        let n = u64::from_le_bytes(self.data.bytes(0, 8).as_ref().try_into().unwrap()) as usize;
        self.data.bytes(8 + n, self.data.len())
    }
    /// All tensor names, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.entries.keys().map(String::as_str).collect();
        v.sort_unstable();
        v
    }
    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }
    /// Dtype and shape without touching the data.
    pub fn info(&self, name: &str) -> Option<(&StoredDtype, &[usize])> {
        self.entries.get(name).map(|e| (&e.dtype, e.shape.as_slice()))
    }

    pub fn get(&self, name: &str) -> Result<TensorView<'_>> {
        let e = self.entries.get(name).ok_or_else(|| WeightsError::Missing {
            path: self.path.clone(),
            name: name.to_string(),
            detail: String::new(),
        })?;
        Ok(TensorView {
            name: name.to_string(),
            path: &self.path,
            dtype: e.dtype.clone(),
            shape: e.shape.clone(),
            data: self.data.bytes(e.start, e.end),
        })
    }
}

/// A borrowed tensor: dtype, shape and little-endian element bytes (straight from the map).
#[derive(Clone, Debug)]
pub struct TensorView<'a> {
    /// The name it was asked by (diffusers naming); for a mapped single-file tensor the
    /// original key follows in parentheses.
    pub name: String,
    /// The file it lives in.
    pub path: &'a str,
    pub dtype: StoredDtype,
    pub shape: Vec<usize>,
    pub data: Cow<'a, [u8]>,
}

impl TensorView<'_> {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    fn shape_err(&self, want: String) -> WeightsError {
        WeightsError::Shape { path: self.path.to_string(), name: self.name.clone(), got: self.shape.clone(), want }
    }

    /// Error unless the shape is exactly `want`.
    pub fn expect_shape(&self, want: &[usize]) -> Result<&Self> {
        if self.shape != want {
            return Err(self.shape_err(format!("{want:?}")));
        }
        Ok(self)
    }

    fn check_float(&self) -> Result<()> {
        if !self.dtype.is_float() {
            return Err(WeightsError::Dtype {
                path: self.path.to_string(),
                name: self.name.clone(),
                dtype: self.dtype.name().to_string(),
            });
        }
        Ok(())
    }

    /// Elements `[start, start+len)` converted to f32.
    pub fn range_f32(&self, start: usize, len: usize) -> Result<Vec<f32>> {
        self.check_float()?;
        let s = self.dtype.size();
        let raw = &self.data[start * s..(start + len) * s];
        Ok(match self.dtype {
            StoredDtype::F32 => bytemuck::pod_collect_to_vec::<u8, f32>(raw),
            StoredDtype::F16 => raw.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            StoredDtype::BF16 => raw.chunks_exact(2).map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            StoredDtype::F64 => raw.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap()) as f32).collect(),
            StoredDtype::Other(..) => unreachable!(),
        })
    }

    /// All elements as f32.
    pub fn to_f32(&self) -> Result<Vec<f32>> {
        self.range_f32(0, self.numel())
    }

    /// Rows `ids` of a 2-D table `[rows, cols]` (an embedding gather), as f32 `[ids.len(), cols]`.
    pub fn gather_rows(&self, ids: &[u32]) -> Result<Vec<f32>> {
        if self.shape.len() != 2 {
            return Err(self.shape_err("a 2-D table".into()));
        }
        let (rows, cols) = (self.shape[0], self.shape[1]);
        let mut out = Vec::with_capacity(ids.len() * cols);
        for &id in ids {
            if id as usize >= rows {
                return Err(self.shape_err(format!("more than {id} rows (token id {id} is out of range)")));
            }
            out.extend(self.range_f32(id as usize * cols, cols)?);
        }
        Ok(out)
    }

    /// Upload as `dtype` (f16 data is copied as is when `dtype` is f16).
    pub fn upload(&self, ctx: &Context, dtype: DType) -> crate::Result<Tensor> {
        self.check_float()?;
        if dtype == DType::F16 && self.dtype == StoredDtype::F16 {
            return Tensor::from_bytes(ctx, &self.data, &self.shape, dtype);
        }
        Tensor::from_f32(ctx, &self.to_f32()?, &self.shape, dtype)
    }

    /// A 2-D `[r, c]` tensor (e.g. a PyTorch `Linear` weight `[out, in]`) transposed to `[c, r]`, as f32.
    pub fn transposed_f32(&self) -> Result<Vec<f32>> {
        if self.shape.len() != 2 {
            return Err(self.shape_err("a 2-D matrix".into()));
        }
        let (r, c) = (self.shape[0], self.shape[1]);
        let v = self.to_f32()?;
        let mut t = vec![0f32; r * c];
        for i in 0..r {
            for j in 0..c {
                t[j * r + i] = v[i * c + j];
            }
        }
        Ok(t)
    }
}

/// A single-file tensor as a diffusers tensor: the original key, optionally rows
/// `[r0, r1)` of its first dimension (a third of a fused QKV), optionally reshaped
/// (1×1 conv weights used as Linear weights), optionally a 2-D transpose (OpenCLIP's
/// `text_projection` is `[width, proj]`, the Linear weight `[proj, width]`).
#[derive(Clone, Debug, PartialEq)]
pub struct Mapped {
    pub source: String,
    pub rows: Option<(usize, usize)>,
    pub shape: Option<Vec<usize>>,
    pub transpose: bool,
}

impl Mapped {
    pub fn plain(source: impl Into<String>) -> Mapped {
        Mapped { source: source.into(), rows: None, shape: None, transpose: false }
    }
    pub fn transposed(source: impl Into<String>) -> Mapped {
        Mapped { transpose: true, ..Mapped::plain(source) }
    }
}

/// Which model part.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ComponentKind {
    TextEncoder,
    /// SDXL's second text encoder (OpenCLIP ViT-bigG as HF `CLIPTextModelWithProjection`).
    TextEncoder2,
    Unet,
    Vae,
    /// A ControlNet (its own file or folder, [`open_controlnet`]).
    ControlNet,
}

impl ComponentKind {
    /// The diffusers subfolder name.
    pub fn folder(self) -> &'static str {
        match self {
            ComponentKind::TextEncoder => "text_encoder",
            ComponentKind::TextEncoder2 => "text_encoder_2",
            ComponentKind::Unet => "unet",
            ComponentKind::Vae => "vae",
            ComponentKind::ControlNet => "controlnet",
        }
    }
    fn file_stems(self) -> &'static [&'static str] {
        match self {
            ComponentKind::TextEncoder | ComponentKind::TextEncoder2 => &["model"],
            _ => &["diffusion_pytorch_model"],
        }
    }
}

/// The text encoder family a checkpoint carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TextEncoderKind {
    /// SD 1.x: OpenAI CLIP ViT-L/14 in Hugging Face naming (`quick_gelu`).
    Clip,
    /// SD 2.x: OpenCLIP ViT-H/14 (single files: `cond_stage_model.model.*`; `gelu`).
    OpenClip,
}

/// One model part: its tensors by diffusers name, and its `config.json` if there is one.
#[derive(Clone)]
pub struct Component {
    pub kind: ComponentKind,
    file: Arc<SafetensorsFile>,
    /// `None`: the file already uses diffusers names (a folder).
    map: Option<Arc<HashMap<String, Mapped>>>,
    /// Parsed `config.json` (folders, or single files opened with a config folder).
    pub config: Option<Value>,
    /// For the text encoder: which family (from key prefixes, or the folder's config).
    pub text_kind: Option<TextEncoderKind>,
    /// Replacement values (f32, the base tensor's shape) by diffusers name: LoRA-merged weights
    /// ([`crate::lora`]). The file itself is never modified, so the base stays exact.
    overrides: Option<Arc<HashMap<String, Override>>>,
}

/// A replacement tensor for [`Component::with_overrides`]: values in F32 or F16 (the storage
/// dtype they will be uploaded in, so F16 halves the memory without changing the result).
#[derive(Clone, Debug)]
pub struct Override {
    dtype: StoredDtype,
    bytes: Vec<u8>,
}

impl Override {
    pub fn new(values: Vec<f32>, dtype: DType) -> Override {
        match dtype {
            DType::F32 => Override { dtype: StoredDtype::F32, bytes: bytemuck::cast_slice(&values).to_vec() },
            DType::F16 => Override {
                dtype: StoredDtype::F16,
                bytes: values.iter().flat_map(|&x| f16::from_f32(x).to_le_bytes()).collect(),
            },
        }
    }
}

impl std::fmt::Debug for Component {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Component({:?}, {}, {} tensors)", self.kind, self.file.path, self.names().len())
    }
}

impl Component {
    /// One part of a diffusers folder from its opened weights file and parsed `config.json`
    /// (the browser hands the files over as bytes, see [`SafetensorsFile::from_bytes`]).
    pub fn from_folder_file(kind: ComponentKind, file: SafetensorsFile, config: Option<Value>) -> Component {
        let text_kind = matches!(kind, ComponentKind::TextEncoder | ComponentKind::TextEncoder2).then(|| {
            // HF CLIPTextModel either way; SD2's is the OpenCLIP port (gelu).
            match config.as_ref().and_then(|c| c.get("hidden_act")).and_then(Value::as_str) {
                Some("quick_gelu") | None => TextEncoderKind::Clip,
                _ => TextEncoderKind::OpenClip,
            }
        });
        Component { kind, file: Arc::new(file), map: None, config, text_kind, overrides: None }
    }

    /// The file the tensors come from.
    pub fn path(&self) -> &str {
        &self.file.path
    }
    pub fn is_single_file(&self) -> bool {
        self.map.is_some()
    }
    /// Whether the file holds this key under its own (original) name: what single-file
    /// inference asks of the rest of the checkpoint.
    pub fn file_contains(&self, original_key: &str) -> bool {
        self.file.contains(original_key)
    }

    /// All diffusers names this component provides, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = match &self.map {
            Some(m) => m.keys().cloned().collect(),
            None => self.file.entries.keys().cloned().collect(),
        };
        v.sort_unstable();
        v
    }

    pub fn contains(&self, name: &str) -> bool {
        match &self.map {
            Some(m) => m.contains_key(name),
            None => self.file.contains(name),
        }
    }

    /// Shape without touching the data.
    pub fn shape(&self, name: &str) -> Option<Vec<usize>> {
        match &self.map {
            None => self.file.info(name).map(|(_, s)| s.to_vec()),
            Some(m) => {
                let mp = m.get(name)?;
                let (_, s) = self.file.info(&mp.source)?;
                if mp.transpose {
                    return Some(s.iter().rev().copied().collect());
                }
                Some(match (&mp.shape, mp.rows) {
                    (Some(sh), _) => sh.clone(),
                    (None, Some((a, b))) => {
                        // A scalar cannot be split in rows: `get` names the error.
                        let mut s = s.to_vec();
                        if let Some(d0) = s.first_mut() {
                            *d0 = b.saturating_sub(a);
                        }
                        s
                    }
                    (None, None) => s.to_vec(),
                })
            }
        }
    }

    /// This component with some tensors replaced (same names and shapes, f32 values): what
    /// [`crate::lora`] makes. Replaces any earlier overrides.
    pub fn with_overrides(&self, overrides: HashMap<String, Override>) -> Component {
        let mut c = self.clone();
        c.overrides = if overrides.is_empty() { None } else { Some(Arc::new(overrides)) };
        c
    }

    /// This component as stored in its file (no overrides).
    pub fn base(&self) -> Component {
        self.retain_overrides(|_| false)
    }

    /// This component keeping only the overrides whose name passes `keep`.
    pub fn retain_overrides(&self, keep: impl Fn(&str) -> bool) -> Component {
        let mut c = self.clone();
        c.overrides = self.overrides.as_ref().and_then(|o| {
            let kept: HashMap<String, Override> = o.iter().filter(|(k, _)| keep(k)).map(|(k, v)| (k.clone(), v.clone())).collect();
            (!kept.is_empty()).then(|| Arc::new(kept))
        });
        c
    }

    /// A tensor by diffusers name (e.g. `text_model.encoder.layers.0.self_attn.q_proj.weight`).
    pub fn get(&self, name: &str) -> Result<TensorView<'_>> {
        if let Some(v) = self.overrides.as_ref().and_then(|o| o.get(name)) {
            return Ok(TensorView {
                name: format!("{name} (LoRA-merged)"),
                path: &self.file.path,
                dtype: v.dtype.clone(),
                shape: self.shape(name).unwrap_or_else(|| vec![v.bytes.len() / v.dtype.size()]),
                data: Cow::Borrowed(&v.bytes),
            });
        }
        let Some(map) = &self.map else {
            return self.file.get(name).map_err(|e| match e {
                WeightsError::Missing { path, name, .. } => WeightsError::Missing {
                    path,
                    name,
                    detail: format!(" (needed by the {})", self.kind.folder()),
                },
                e => e,
            });
        };
        let mp = map.get(name).ok_or_else(|| WeightsError::Missing {
            path: self.file.path.clone(),
            name: name.to_string(),
            detail: format!(" (no original key maps to this {} tensor)", self.kind.folder()),
        })?;
        let mut v = self.file.get(&mp.source).map_err(|_| WeightsError::Missing {
            path: self.file.path.clone(),
            name: mp.source.clone(),
            detail: format!(" (the original key for diffusers '{name}')"),
        })?;
        v.name = format!("{name} ({})", mp.source);
        if let Some((r0, r1)) = mp.rows {
            if v.shape.is_empty() || r1 > v.shape[0] || r0 > r1 {
                return Err(v.shape_err(format!("at least {r1} rows")));
            }
            // Within the tensor's own bytes (validated against the file) unless the dtype's size
            // is unknown, where the sizes are not checked: then refuse products that overflow.
            let es = v.dtype.size();
            let row = v.shape.iter().skip(1).try_fold(es, |a, &d| a.checked_mul(d));
            let Some((b0, b1)) = row.and_then(|row| Some((r0.checked_mul(row)?, r1.checked_mul(row)?))).filter(|&(_, b1)| b1 <= v.data.len()) else {
                return Err(v.shape_err(format!("rows {r0}..{r1} within its {} bytes", v.data.len())));
            };
            v.data = match v.data {
                Cow::Borrowed(d) => Cow::Borrowed(&d[b0..b1]),
                Cow::Owned(d) => Cow::Owned(d[b0..b1].to_vec()),
            };
            v.shape[0] = r1 - r0;
        }
        if let Some(shape) = &mp.shape {
            if shape.iter().product::<usize>() != v.numel() {
                return Err(v.shape_err(format!("{} elements (to view as {shape:?})", shape.iter().product::<usize>())));
            }
            v.shape = shape.clone();
        }
        if mp.transpose {
            if v.shape.len() != 2 {
                return Err(v.shape_err("2 dimensions (to transpose)".into()));
            }
            let (r, c, es) = (v.shape[0], v.shape[1], v.dtype.size());
            if r.checked_mul(c).and_then(|n| n.checked_mul(es)) != Some(v.data.len()) || es == 0 {
                return Err(v.shape_err(format!("{r}x{c} elements of {es} bytes")));
            }
            let mut out = vec![0u8; v.data.len()];
            for i in 0..r {
                for j in 0..c {
                    out[(j * r + i) * es..][..es].copy_from_slice(&v.data[(i * c + j) * es..][..es]);
                }
            }
            v.data = Cow::Owned(out);
            v.shape = vec![c, r];
        }
        Ok(v)
    }

    /// `config.json` value by key.
    pub fn config_value(&self, key: &str) -> Option<&Value> {
        self.config.as_ref()?.get(key)
    }
}

/// Where a model came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Folder(PathBuf),
    SingleFile(PathBuf),
}

/// Options for [`Weights::open_with`].
#[derive(Clone, Debug, Default)]
pub struct OpenOptions {
    /// A diffusers folder whose `*/config.json` files describe a single-file checkpoint (as
    /// diffusers' `from_single_file(path, config=folder)`); its weights are not read.
    pub config_dir: Option<PathBuf>,
}

/// A whole model: text encoder(s), UNet and VAE (each may be absent; SDXL has two text
/// encoders).
#[derive(Clone, Debug)]
pub struct Weights {
    pub source: Source,
    text_encoder: Option<Component>,
    text_encoder_2: Option<Component>,
    unet: Option<Component>,
    vae: Option<Component>,
}

fn read_json(path: &Path) -> Result<Value> {
    let shown = path.display().to_string();
    let s = std::fs::read_to_string(path).map_err(|source| WeightsError::Io { path: shown.clone(), source })?;
    serde_json::from_str(&s).map_err(|e| WeightsError::Config { path: shown, detail: e.to_string() })
}

impl Weights {
    /// A diffusers folder or a single-file `.safetensors` checkpoint.
    pub fn open(path: impl AsRef<Path>) -> Result<Weights> {
        Self::open_with(path, &OpenOptions::default())
    }

    pub fn open_with(path: impl AsRef<Path>, opts: &OpenOptions) -> Result<Weights> {
        let path = path.as_ref();
        if path.is_dir() {
            Self::open_folder(path)
        } else {
            let file = SafetensorsFile::open(path)?;
            let mut w = Self::from_single_file(file)?;
            w.source = Source::SingleFile(path.to_path_buf());
            if let Some(dir) = &opts.config_dir {
                w.set_configs_from(dir)?;
            }
            Ok(w)
        }
    }

    /// A diffusers folder: `model_index.json` plus `text_encoder/`, `unet/`, `vae/`, each with
    /// `config.json` and a safetensors file. Parts without a folder are absent (an error only
    /// when asked for).
    pub fn open_folder(dir: &Path) -> Result<Weights> {
        let index = dir.join("model_index.json");
        if !index.exists() {
            return Err(WeightsError::Architecture {
                path: dir.display().to_string(),
                detail: "not a diffusers folder (no model_index.json)".into(),
            });
        }
        read_json(&index)?;
        let mut w = Weights { source: Source::Folder(dir.to_path_buf()), text_encoder: None, text_encoder_2: None, unet: None, vae: None };
        for kind in [ComponentKind::TextEncoder, ComponentKind::TextEncoder2, ComponentKind::Unet, ComponentKind::Vae] {
            let sub = dir.join(kind.folder());
            if !sub.is_dir() {
                continue;
            }
            let mut file = None;
            for stem in kind.file_stems() {
                for suffix in ["safetensors", "fp16.safetensors"] {
                    let p = sub.join(format!("{stem}.{suffix}"));
                    if file.is_none() && p.exists() {
                        file = Some(p);
                    }
                }
            }
            let Some(file) = file else {
                // Only pickle weights (pytorch_model.bin, ...) or nothing at all.
                if let Some(p) = std::fs::read_dir(&sub)
                    .ok()
                    .and_then(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).find(|p| is_pickle_path(p)))
                {
                    return Err(WeightsError::Pickle { path: p.display().to_string() });
                }
                if sub.join(format!("{}.safetensors.index.json", kind.file_stems()[0])).exists() {
                    return Err(WeightsError::Architecture {
                        path: sub.display().to_string(),
                        detail: "sharded safetensors (*.index.json) are not supported; merge the shards".into(),
                    });
                }
                return Err(WeightsError::Missing {
                    path: sub.display().to_string(),
                    name: format!("{}.safetensors", kind.file_stems()[0]),
                    detail: " (no weights file in this folder)".into(),
                });
            };
            let config_path = sub.join("config.json");
            let config = if config_path.exists() { Some(read_json(&config_path)?) } else { None };
            let comp = Component::from_folder_file(kind, SafetensorsFile::open(&file)?, config);
            match kind {
                ComponentKind::TextEncoder => w.text_encoder = Some(comp),
                ComponentKind::TextEncoder2 => w.text_encoder_2 = Some(comp),
                ComponentKind::Unet => w.unet = Some(comp),
                ComponentKind::Vae => w.vae = Some(comp),
                ComponentKind::ControlNet => {}
            }
        }
        Ok(w)
    }

    /// A single-file checkpoint already opened (e.g. [`SafetensorsFile::from_bytes`] on wasm32).
    pub fn from_single_file(file: SafetensorsFile) -> Result<Weights> {
        let file = Arc::new(file);
        let parts = single_file::map_checkpoint(&file)?;
        let make = |kind, map: Option<HashMap<String, Mapped>>, text_kind| {
            map.map(|m| Component { kind, file: file.clone(), map: Some(Arc::new(m)), config: None, text_kind, overrides: None })
        };
        Ok(Weights {
            source: Source::SingleFile(PathBuf::from(&file.path)),
            text_encoder: make(ComponentKind::TextEncoder, parts.text_encoder, parts.text_kind),
            text_encoder_2: make(ComponentKind::TextEncoder2, parts.text_encoder_2, Some(TextEncoderKind::OpenClip)),
            unet: make(ComponentKind::Unet, parts.unet, None),
            vae: make(ComponentKind::Vae, parts.vae, None),
        })
    }

    /// Attach `<dir>/<component>/config.json` to each present component.
    pub fn set_configs_from(&mut self, dir: &Path) -> Result<()> {
        for c in [&mut self.text_encoder, &mut self.text_encoder_2, &mut self.unet, &mut self.vae].into_iter().flatten() {
            let p = dir.join(c.kind.folder()).join("config.json");
            if p.exists() {
                c.config = Some(read_json(&p)?);
            }
        }
        Ok(())
    }

    fn part(&self, kind: ComponentKind) -> Result<&Component> {
        let c = match kind {
            ComponentKind::TextEncoder => &self.text_encoder,
            ComponentKind::TextEncoder2 => &self.text_encoder_2,
            ComponentKind::Unet => &self.unet,
            ComponentKind::Vae => &self.vae,
            ComponentKind::ControlNet => &None,
        };
        c.as_ref().ok_or_else(|| {
            let path = match &self.source {
                Source::Folder(p) | Source::SingleFile(p) => p.display().to_string(),
            };
            WeightsError::Missing {
                path,
                name: kind.folder().to_string(),
                detail: " (this checkpoint has no such component)".into(),
            }
        })
    }

    /// A model assembled from parts loaded elsewhere (the web loader uploads and drops each
    /// part as it arrives, so it has none to keep here).
    pub fn from_parts(source: Source, text_encoder: Option<Component>, unet: Option<Component>, vae: Option<Component>) -> Weights {
        Weights { source, text_encoder, text_encoder_2: None, unet, vae }
    }
    /// With SDXL's second text encoder.
    pub fn with_text_encoder_2(mut self, c: Option<Component>) -> Weights {
        self.text_encoder_2 = c;
        self
    }
    pub fn text_encoder(&self) -> Result<&Component> {
        self.part(ComponentKind::TextEncoder)
    }
    /// SDXL's `text_encoder_2`; `None` for SD 1.x/2.x.
    pub fn text_encoder_2(&self) -> Option<&Component> {
        self.text_encoder_2.as_ref()
    }
    pub fn unet(&self) -> Result<&Component> {
        self.part(ComponentKind::Unet)
    }
    pub fn vae(&self) -> Result<&Component> {
        self.part(ComponentKind::Vae)
    }
}

/// A ControlNet: a diffusers folder (`config.json` + `diffusion_pytorch_model.safetensors`),
/// a `.safetensors` file in diffusers naming, or an A1111 / original ControlNet file
/// (`control_model.*` keys, mapped by [`single_file::map_controlnet`]; no config: it is inferred).
pub fn open_controlnet(path: impl AsRef<Path>) -> Result<Component> {
    let path = path.as_ref();
    let (file, config) = if path.is_dir() {
        let file = ["diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors"]
            .iter()
            .map(|f| path.join(f))
            .find(|p| p.exists());
        let Some(file) = file else {
            if let Some(p) = std::fs::read_dir(path).ok().and_then(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).find(|p| is_pickle_path(p))) {
                return Err(WeightsError::Pickle { path: p.display().to_string() });
            }
            return Err(WeightsError::Missing {
                path: path.display().to_string(),
                name: "diffusion_pytorch_model.safetensors".into(),
                detail: " (a diffusers ControlNet folder holds it and config.json)".into(),
            });
        };
        let config_path = path.join("config.json");
        (SafetensorsFile::open(&file)?, if config_path.exists() { Some(read_json(&config_path)?) } else { None })
    } else {
        (SafetensorsFile::open(path)?, None)
    };
    controlnet_from_file(file, config)
}

/// A ControlNet from a file already opened and its parsed `config.json` if any: diffusers naming
/// is used as is, A1111 naming mapped. No GPU needed (the fuzz targets call it).
pub fn controlnet_from_file(file: SafetensorsFile, config: Option<Value>) -> Result<Component> {
    let map = if file.contains("controlnet_cond_embedding.conv_in.weight") {
        None
    } else {
        Some(Arc::new(single_file::map_controlnet(&file)?))
    };
    Ok(Component { kind: ComponentKind::ControlNet, file: Arc::new(file), map, config, text_kind: None, overrides: None })
}

/// Whether `path` holds an SDXL model, cheaply (before loading): a diffusers folder with
/// `text_encoder_2/`, or a single file with SDXL's `conditioner.embedders.1.model.*` keys (the
/// refiner's: `conditioner.embedders.0.model.*`).
pub fn is_sdxl_path(path: &Path) -> bool {
    if path.is_dir() {
        return path.join("text_encoder_2").is_dir();
    }
    // base: bigG at embedders.1; the refiner: bigG alone at embedders.0
    SafetensorsFile::open(path).is_ok_and(|f| f.names().iter().any(|n| n.starts_with("conditioner.embedders.1.model.") || n.starts_with("conditioner.embedders.0.model.")))
}

/// The image side a model generates at when no size is given, as diffusers' default
/// (`unet.config.sample_size × vae_scale_factor`): a diffusers folder's `unet/config.json`
/// decides (SDXL base 1024, SDXL-Turbo and SD-Turbo 512, SD 2.x 768-v 768); a single file
/// carries no config, so SDXL single files get 1024 and the others 512 (as A1111).
pub fn default_image_side(path: &Path) -> usize {
    // The generated full-size models are their real counterparts' shapes.
    match path.to_str() {
        Some("synthetic:sdxl") => return 1024,
        Some("synthetic:sd21v") => return 768,
        _ => {}
    }
    if path.is_dir() {
        let sample_size = std::fs::read_to_string(path.join("unet/config.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .and_then(|v| v.get("sample_size").and_then(Value::as_u64));
        // `sample_size` may also be a [h, w] list in some configs: fall through to the family.
        if let Some(s) = sample_size.filter(|&s| (1..=512).contains(&s)) {
            return s as usize * 8;
        }
    }
    if is_sdxl_path(path) {
        1024
    } else {
        512
    }
}

/// The storage dtype to upload weights in: f16 when asked for and the adapter can, else f32.
pub fn storage_dtype(ctx: &Context, want_f16: bool) -> DType {
    if want_f16 && ctx.f16 {
        DType::F16
    } else {
        DType::F32
    }
}

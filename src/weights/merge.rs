//! Checkpoint merging, as A1111's Checkpoint Merger does it (`pigment merge`).
//!
//! * weighted sum: `(1 - alpha) * A + alpha * B`;
//! * add difference: `A + alpha * (B - C)`.
//!
//! Every floating-point tensor of A's text encoder and UNet that B (and C) also hold is merged,
//! computed in f32 and stored in A's dtype (or F16 with `fp16`); everything else is copied from A:
//! the VAE (merging two copies of SD's VAE gains nothing, and a fine-tune's baked VAE is kept),
//! integer tensors such as `position_ids`, and tensors B lacks. An inpainting (9-channel) or
//! instruct-pix2pix (8-channel) A merged with a 4-channel B keeps its extra input channels, as
//! A1111 does; the other way round is refused.
//!
//! A is a diffusers folder or a single `.safetensors` file, and the output has the same form. B
//! and C may be either form when A is a folder (they are read through [`Component`]'s diffusers
//! names); with a single-file A they must be single files with the same key layout.
//!
//! Memory stays chunked: inputs are memory-mapped and each output tensor is computed only while
//! it is written (the `safetensors` writer pulls them one at a time), so at most one merged
//! tensor is in RAM, never a second model.

use super::{Component, SafetensorsFile, StoredDtype, TensorView, Weights, WeightsError};
use half::{bf16, f16};
use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

type Result<T, E = WeightsError> = std::result::Result<T, E>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `(1 - alpha) * A + alpha * B` (A1111 "Weighted sum").
    Weighted,
    /// `A + alpha * (B - C)` (A1111 "Add difference").
    AddDifference,
}

impl Mode {
    fn a1111_name(self) -> &'static str {
        match self {
            Mode::Weighted => "Weighted sum",
            Mode::AddDifference => "Add difference",
        }
    }
}

#[derive(Clone, Debug)]
pub struct MergeOptions {
    pub mode: Mode,
    pub alpha: f32,
    /// Store every floating-point tensor as F16 (A1111's "Save as float16").
    pub fp16: bool,
}

/// What a merge did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct MergeReport {
    /// Tensors computed from A and B (and C).
    pub merged: usize,
    /// Tensors copied from A (VAE, integer tensors, tensors B lacks).
    pub copied: usize,
    /// Of the copied: tensors B (or C) lacks.
    pub missing_in_other: usize,
    /// Tensors whose extra input channels (inpainting / instruct-pix2pix A) were kept from A.
    pub partial: usize,
}

fn err(path: &Path, detail: impl Into<String>) -> WeightsError {
    WeightsError::Architecture { path: path.display().to_string(), detail: detail.into() }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> WeightsError + '_ {
    move |source| WeightsError::Io { path: path.display().to_string(), source }
}

/// Merge `a` and `b` (and `c` for add-difference) into `out`.
pub fn merge(a: &Path, b: &Path, c: Option<&Path>, out: &Path, o: &MergeOptions) -> Result<MergeReport> {
    if !o.alpha.is_finite() {
        return Err(err(out, format!("--alpha {} is not a number", o.alpha)));
    }
    match (o.mode, c) {
        (Mode::AddDifference, None) => return Err(err(out, "add-difference needs a third model C: merge A B C --mode add-difference")),
        (Mode::Weighted, Some(c)) => return Err(err(c, "a third model is only used by --mode add-difference")),
        _ => {}
    }
    for p in [Some(a), Some(b), c].into_iter().flatten() {
        if !p.exists() {
            return Err(WeightsError::Io { path: p.display().to_string(), source: std::io::ErrorKind::NotFound.into() });
        }
        if same_file(p, out) {
            return Err(err(out, "the output would overwrite an input model; choose another --out"));
        }
    }
    if out.exists() && (out.is_file() || std::fs::read_dir(out).map_err(io(out))?.next().is_some()) {
        return Err(err(out, "already exists; remove it or choose another --out (a merge never overwrites)"));
    }
    let recipe = recipe_json(a, b, c, o);
    if a.is_dir() {
        merge_folder(a, b, c, out, o, &recipe)
    } else {
        let other = |p: &Path| -> Result<SafetensorsFile> {
            if p.is_dir() {
                return Err(err(p, "A is a single file, so B and C must be single files too (or put the diffusers folder first)"));
            }
            SafetensorsFile::open(p)
        };
        let (fa, fb) = (SafetensorsFile::open(a)?, other(b)?);
        let fc = c.map(other).transpose()?;
        let src = Sources { b: Source::File(&fb), c: fc.as_ref().map(Source::File) };
        let metadata = HashMap::from([("format".to_string(), "pt".to_string()), ("sd_merge_recipe".to_string(), recipe)]);
        // The VAE of a single-file checkpoint is `first_stage_model.*`: copied.
        merge_file(&fa, &src, |name| !name.starts_with("first_stage_model."), out, o, Some(metadata))
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

/// A1111's `sd_merge_recipe` metadata (its field names), with file names instead of hashes.
fn recipe_json(a: &Path, b: &Path, c: Option<&Path>, o: &MergeOptions) -> String {
    let name = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned());
    serde_json::json!({
        "type": "pigment",
        "primary_model": name(a),
        "secondary_model": name(b),
        "tertiary_model": c.and_then(name),
        "interp_method": o.mode.a1111_name(),
        "multiplier": o.alpha,
        "save_as_half": o.fp16,
        "vae": "copied from the primary model",
    })
    .to_string()
}

/// Where B's (or C's) tensors are looked up.
#[derive(Clone, Copy)]
enum Source<'a> {
    /// A single file, by A's key names.
    File(&'a SafetensorsFile),
    /// A model component, by diffusers names (folder or mapped single file).
    Component(&'a Component),
}

impl Source<'_> {
    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        match self {
            Source::File(f) => f.info(name).filter(|(d, _)| d.is_float()).map(|(_, s)| s.to_vec()),
            Source::Component(c) => c.shape(name),
        }
    }
    fn get(&self, name: &str) -> Result<TensorView<'_>> {
        match self {
            Source::File(f) => f.get(name),
            Source::Component(c) => c.get(name),
        }
    }
}

struct Sources<'a> {
    b: Source<'a>,
    c: Option<Source<'a>>,
}

fn merge_folder(a: &Path, b: &Path, c: Option<&Path>, out: &Path, o: &MergeOptions, recipe: &str) -> Result<MergeReport> {
    let wb = Weights::open(b)?;
    let wc = c.map(Weights::open).transpose()?;
    std::fs::create_dir_all(out).map_err(io(out))?;
    let mut report = MergeReport::default();
    let mut written = vec![];
    for (sub, pick) in [("text_encoder", Weights::text_encoder as fn(&Weights) -> Result<&Component>), ("unet", Weights::unet)] {
        let Some(file) = folder_weights_file(&a.join(sub)) else {
            continue;
        };
        let fa = SafetensorsFile::open(&file)?;
        let cb = pick(&wb).map_err(|e| err(b, format!("has no {sub} to merge with A's ({e})")))?;
        let cc = wc.as_ref().map(|w| pick(w).map_err(|e| err(c.unwrap(), format!("has no {sub} ({e})")))).transpose()?;
        let src = Sources { b: Source::Component(cb), c: cc.map(Source::Component) };
        let dst = out.join(sub).join(file.file_name().unwrap());
        std::fs::create_dir_all(dst.parent().unwrap()).map_err(io(&dst))?;
        let meta = HashMap::from([("format".to_string(), "pt".to_string()), ("sd_merge_recipe".to_string(), recipe.to_string())]);
        let r = merge_file(&fa, &src, |_| true, &dst, o, Some(meta))?;
        report.merged += r.merged;
        report.copied += r.copied;
        report.missing_in_other += r.missing_in_other;
        report.partial += r.partial;
        written.push(file);
    }
    if report.merged == 0 {
        return Err(err(a, "has no text_encoder or unet weights to merge"));
    }
    // Everything else (configs, tokenizer, scheduler, the VAE) is A's, byte for byte.
    copy_tree(a, out, &written)?;
    Ok(report)
}

/// The weights file of a diffusers component folder, as [`Weights::open_folder`] picks it.
fn folder_weights_file(dir: &Path) -> Option<PathBuf> {
    ["model", "diffusion_pytorch_model"]
        .iter()
        .flat_map(|stem| ["safetensors", "fp16.safetensors"].map(|s| dir.join(format!("{stem}.{s}"))))
        .find(|p| p.exists())
}

fn copy_tree(from: &Path, to: &Path, skip: &[PathBuf]) -> Result<()> {
    for entry in std::fs::read_dir(from).map_err(io(from))? {
        let p = entry.map_err(io(from))?.path();
        let dst = to.join(p.file_name().unwrap());
        if skip.contains(&p) || (dst.exists() && p.is_file()) {
            continue;
        }
        if p.is_dir() {
            std::fs::create_dir_all(&dst).map_err(io(&dst))?;
            copy_tree(&p, &dst, skip)?;
        } else {
            std::fs::copy(&p, &dst).map_err(io(&p))?;
        }
    }
    Ok(())
}

/// How one output tensor is made.
enum Plan {
    Copy,
    /// Merged; `channels` = Some(k): only input channels `..k` (dim 1) are merged.
    Merge { channels: Option<usize> },
}

/// Merge A's file `fa` with `src` tensor by tensor into `dst`; `mergeable(name)` is false for
/// tensors always copied (the single-file VAE).
fn merge_file(fa: &SafetensorsFile, src: &Sources, mergeable: impl Fn(&str) -> bool, dst: &Path, o: &MergeOptions, metadata: Option<HashMap<String, String>>) -> Result<MergeReport> {
    let mut report = MergeReport::default();
    let mut plans = vec![];
    // Validate everything before writing a byte.
    for name in fa.names() {
        let (dtype, shape) = fa.info(name).unwrap();
        if st_dtype(dtype).is_none() {
            return Err(WeightsError::Dtype { path: fa.path().to_string(), name: name.to_string(), dtype: dtype.name().to_string() });
        }
        let plan = if !dtype.is_float() || !mergeable(name) {
            Plan::Copy
        } else {
            match plan_for(name, shape, src, fa.path())? {
                Some(p) => p,
                None => {
                    report.missing_in_other += 1;
                    Plan::Copy
                }
            }
        };
        match plan {
            Plan::Copy => report.copied += 1,
            Plan::Merge { channels } => {
                report.merged += 1;
                report.partial += channels.is_some() as usize;
            }
        }
        plans.push((name.to_string(), plan));
    }
    if report.merged == 0 {
        return Err(err(Path::new(fa.path()), "shares no tensor with the other model (a different architecture?)"));
    }
    let failure = RefCell::new(None);
    let views: Vec<(String, Lazy)> = plans
        .into_iter()
        .map(|(name, plan)| {
            let (dtype, shape) = fa.info(&name).unwrap();
            let out_dtype = if o.fp16 && dtype.is_float() { StoredDtype::F16 } else { dtype.clone() };
            let lazy = Lazy { name: name.clone(), dtype: out_dtype, shape: shape.to_vec(), plan, fa, src, o, failure: &failure };
            (name, lazy)
        })
        .collect();
    let written = safetensors::serialize_to_file(views, metadata, dst).map_err(|e| err(dst, format!("writing: {e}")));
    if let Some(e) = failure.into_inner() {
        let _ = std::fs::remove_file(dst);
        return Err(e);
    }
    written?;
    Ok(report)
}

/// Whether and how tensor `name` of A (shape `shape`) is merged with B (and C).
fn plan_for(name: &str, shape: &[usize], src: &Sources, a_path: &str) -> Result<Option<Plan>> {
    let mut channels = None;
    for s in [Some(&src.b), src.c.as_ref()].into_iter().flatten() {
        let Some(other) = s.shape(name) else {
            return Ok(None);
        };
        if other == shape {
            continue;
        }
        // Input channels of a convolution (conv_in of inpainting / instruct-pix2pix UNets).
        let same_but_channels = other.len() == 4 && shape.len() == 4 && other[0] == shape[0] && other[2..] == shape[2..];
        if same_but_channels && other[1] < shape[1] {
            channels = Some(other[1]);
        } else if same_but_channels {
            return Err(WeightsError::Shape {
                path: a_path.to_string(),
                name: name.to_string(),
                got: shape.to_vec(),
                want: format!("{other:?} as in the other model: when merging an inpainting or instruct-pix2pix model with a normal one, the inpainting model must be A (first)"),
            });
        } else {
            return Err(WeightsError::Shape {
                path: a_path.to_string(),
                name: name.to_string(),
                got: shape.to_vec(),
                want: format!("{other:?} as in the other model (models of different architectures cannot be merged)"),
            });
        }
    }
    Ok(Some(Plan::Merge { channels }))
}

/// One output tensor, computed when the writer asks for its bytes.
struct Lazy<'a> {
    name: String,
    dtype: StoredDtype,
    shape: Vec<usize>,
    plan: Plan,
    fa: &'a SafetensorsFile,
    src: &'a Sources<'a>,
    o: &'a MergeOptions,
    failure: &'a RefCell<Option<WeightsError>>,
}

impl Lazy<'_> {
    fn compute(&self) -> Result<Vec<u8>> {
        let a = self.fa.get(&self.name)?;
        let channels = match self.plan {
            Plan::Copy if a.dtype == self.dtype => return Ok(a.data.into_owned()),
            Plan::Copy => return Ok(encode(&a.to_f32()?, &self.dtype)),
            Plan::Merge { channels } => channels,
        };
        let mut v = a.to_f32()?;
        let b = self.src.b.get(&self.name)?.to_f32()?;
        let c = self.src.c.as_ref().map(|s| s.get(&self.name).and_then(|t| t.to_f32())).transpose()?;
        let alpha = self.o.alpha;
        // Element i of A maps to element j of B/C: the same, or with fewer input channels.
        let (ca, inner) = match channels {
            Some(_) => (self.shape[1], self.shape[2..].iter().product::<usize>()),
            None => (1, 1),
        };
        let cb = channels.unwrap_or(ca);
        for (i, x) in v.iter_mut().enumerate() {
            let (o, rest) = (i / (ca * inner), i % (ca * inner));
            if rest / inner >= cb {
                continue;
            }
            let j = o * cb * inner + rest;
            *x = match (self.o.mode, &c) {
                (Mode::Weighted, _) => (1.0 - alpha) * *x + alpha * b[j],
                (Mode::AddDifference, Some(c)) => *x + alpha * (b[j] - c[j]),
                (Mode::AddDifference, None) => unreachable!("checked in merge()"),
            };
        }
        Ok(encode(&v, &self.dtype))
    }
}

/// Little-endian bytes of `v` in a float dtype.
fn encode(v: &[f32], dtype: &StoredDtype) -> Vec<u8> {
    match dtype {
        StoredDtype::F32 => bytemuck::cast_slice(v).to_vec(),
        StoredDtype::F16 => v.iter().flat_map(|x| f16::from_f32(*x).to_le_bytes()).collect(),
        StoredDtype::BF16 => v.iter().flat_map(|x| bf16::from_f32(*x).to_le_bytes()).collect(),
        StoredDtype::F64 => v.iter().flat_map(|x| (*x as f64).to_le_bytes()).collect(),
        StoredDtype::Other(..) => unreachable!("only float tensors are converted"),
    }
}

/// The writer's dtype; `None` for a dtype it does not know (refused before writing).
fn st_dtype(d: &StoredDtype) -> Option<safetensors::Dtype> {
    use safetensors::Dtype as D;
    Some(match d {
        StoredDtype::F64 => D::F64,
        StoredDtype::F32 => D::F32,
        StoredDtype::F16 => D::F16,
        StoredDtype::BF16 => D::BF16,
        StoredDtype::Other(n, _) => match n.as_str() {
            "I64" => D::I64,
            "U64" => D::U64,
            "I32" => D::I32,
            "U32" => D::U32,
            "I16" => D::I16,
            "U16" => D::U16,
            "I8" => D::I8,
            "U8" => D::U8,
            "BOOL" => D::BOOL,
            "F8_E4M3" => D::F8_E4M3,
            "F8_E5M2" => D::F8_E5M2,
            _ => return None,
        },
    })
}

impl safetensors::View for Lazy<'_> {
    fn dtype(&self) -> safetensors::Dtype {
        st_dtype(&self.dtype).expect("checked in merge_file")
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        match self.compute() {
            Ok(bytes) => Cow::Owned(bytes),
            Err(e) => {
                // The writer cannot fail from here: fill with zeros, report after, delete the file.
                self.failure.borrow_mut().get_or_insert(e);
                Cow::Owned(vec![0; self.data_len()])
            }
        }
    }
    fn data_len(&self) -> usize {
        self.shape.iter().product::<usize>() * self.dtype.size()
    }
}

//! LoRA: low-rank weight deltas merged into the text encoder and UNet,
//! `W += multiplier · alpha/rank · up @ down` for every Linear and Conv layer the file covers.
//!
//! Key formats read ([`Lora::from_file`]):
//! * kohya / A1111: `lora_unet_<module with . as _>` and `lora_te_<module>` (SDXL: `lora_te1_`,
//!   `lora_te2_`, and LDM UNet module names, see `lora/sdxl.rs`), each with
//!   `.lora_down.weight`, `.lora_up.weight` and an optional `.alpha` (scale alpha/rank; 1 without
//!   it). LoCon conv layers: `lora_down` `[r, in, k, k]`, `lora_up` `[out, r, 1, 1]`;
//! * diffusers / PEFT: `unet.<module>.lora_A.weight` / `lora_B.weight`, `text_encoder.<module>…`
//!   (SDXL: `text_encoder_2.<module>…` too);
//!   scale from the `LoraConfig` diffusers saves in the metadata (`lora_adapter_metadata`:
//!   `lora_alpha / r`, `alpha_pattern` by literal module name, rsLoRA `alpha / sqrt(r)`), else 1;
//! * older diffusers: `….lora.down.weight` / `….lora.up.weight`, attention processors
//!   (`attn1.processor.to_q_lora.down.weight`, `to_out_lora` = `to_out.0`, with or without the
//!   `unet.` prefix), and the text encoder's `….lora_linear_layer.down.weight`.
//!
//! kohya names are matched against the model's own diffusers names with `.` replaced by `_`
//! (unambiguous, unlike turning `_` back into `.`), so they work on diffusers folders and single
//! files alike. Module paths in the UNet are diffusers' (what kohya's sd-scripts uses for SD 1.x/2.x)
//! or, on SDXL only, LDM ones (`lora_unet_input_blocks_…`, what it writes for SDXL).
//!
//! LyCORIS ([`lycoris`]), in the same namings: LoHa (`hada_w1_a/b`, `hada_w2_a/b`), LoKr
//! (`lokr_w1` or `lokr_w1_a/b`, `lokr_w2` or `lokr_w2_a/b`) and DoRA (`dora_scale` beside any of
//! them). Scale `alpha / rank` with the rank of the first factored pair (LoKr with none: 1), as
//! A1111 does; DoRA merges as LyCORIS's `weight_decompose(W + scale·ΔW, dora_scale, multiplier)`.
//! Tucker-decomposed convs (`hada_t1`, `lokr_t2`, `lora_mid`) are refused by name.
//!
//! Matching rules: a file whose pairs match no layer is an error (naming the file and a few keys:
//! it is for another model family or naming); a file where only some pairs match is merged with a
//! warning listing the rest (real files carry keys for layers a model lacks, e.g. SD 2.x's 24th text
//! layer, which A1111 and diffusers skip too); a pair that matches a layer by name but not by shape is
//! an error naming both tensors and shapes (a LoRA for another architecture would otherwise give a
//! wrong image).
//!
//! Merging happens on the host in f32, from the base weights in the checkpoint (memory-mapped,
//! never modified): the merged tensors override the file's in a [`Component`]
//! ([`Component::with_overrides`]) from which the affected models are rebuilt. Changing the set
//! (e.g. `<lora:name:w>` tags that differ per prompt) merges again from the base instead of
//! subtracting the old deltas: with f16 weights `(W + d) - d != W`, and the drift would build up
//! with every change; from the base, each merged weight is rounded to the storage dtype once, as
//! diffusers' `fuse_lora` does.

mod lycoris;
mod sdxl;
pub use sdxl::merge_sdxl;

use crate::error::Result;
use crate::DType;
use crate::gpu::Context;
use crate::models::unet::UNet2DConditionModel;
use crate::pipeline::StableDiffusion;
use crate::weights::{Component, Override, SafetensorsFile, TensorView, WeightsError};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Which model part a LoRA pair targets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Part {
    TextEncoder,
    /// SDXL's `text_encoder_2`.
    TextEncoder2,
    Unet,
}

#[derive(Clone, Debug)]
enum Module {
    /// kohya: the diffusers module path with `.` as `_`.
    Flat(String),
    /// diffusers: the module path itself.
    Dotted(String),
    /// kohya's SDXL text encoders (`lora_te1_`, `lora_te2_`): as `Flat`, on SDXL only.
    Sdxl(String),
}

/// One module's tensors in a file: a down/up pair, or a LyCORIS factorisation.
#[derive(Clone, Debug)]
struct Pair {
    part: Part,
    module: Module,
    kind: Kind,
    alpha: Option<String>,
    /// DoRA's magnitude vector (`<stem>.dora_scale`).
    dora: Option<String>,
}

#[derive(Clone, Debug)]
enum Kind {
    /// `up @ down`.
    Lora { down: String, up: String },
    /// `(w1a @ w1b) ⊙ (w2a @ w2b)`.
    LoHa { w1a: String, w1b: String, w2a: String, w2b: String },
    /// `kron(w1, w2)`, each stored whole or as a factor pair.
    LoKr { w1: Factor, w2: Factor },
}

#[derive(Clone, Debug)]
enum Factor {
    Full(String),
    Pair(String, String),
}

impl Factor {
    fn names(&self) -> Vec<&String> {
        match self {
            Factor::Full(a) => vec![a],
            Factor::Pair(a, b) => vec![a, b],
        }
    }
}

impl Pair {
    /// Its first tensor (named in messages).
    fn key(&self) -> &str {
        match &self.kind {
            Kind::Lora { down, .. } => down,
            Kind::LoHa { w1a, .. } => w1a,
            Kind::LoKr { w1, .. } => w1.names()[0],
        }
    }
    fn tensors(&self) -> Vec<&String> {
        let mut v = match &self.kind {
            Kind::Lora { down, up } => vec![down, up],
            Kind::LoHa { w1a, w1b, w2a, w2b } => vec![w1a, w1b, w2a, w2b],
            Kind::LoKr { w1, w2 } => [w1.names(), w2.names()].concat(),
        };
        v.extend(self.alpha.iter().chain(&self.dora));
        v
    }
}

/// A LoRA file, parsed (tensor data stays in the file until merged).
pub struct Lora {
    /// The file stem: what `<lora:NAME:w>` refers to.
    pub name: String,
    file: SafetensorsFile,
    pairs: Vec<Pair>,
    /// Keys that are not part of any recognised pair (reported with the unmatched ones).
    unrecognized: Vec<String>,
    /// PEFT `LoraConfig`s from the metadata, by part.
    peft: HashMap<Part, PeftConfig>,
}

/// What a diffusers-saved PEFT file's `LoraConfig` (safetensors metadata
/// `lora_adapter_metadata`: `unet.lora_alpha`, `unet.alpha_pattern`, `unet.use_rslora`, ...)
/// says about scaling: `alpha / r`, or `alpha / sqrt(r)` with rsLoRA.
#[derive(Clone, Debug, Default)]
struct PeftConfig {
    alpha: Option<f32>,
    /// Module name (or dotted suffix) → alpha, as PEFT's `alpha_pattern` (literal names only).
    alpha_pattern: Vec<(String, f32)>,
    rslora: bool,
}

impl PeftConfig {
    fn from_metadata(file: &SafetensorsFile) -> HashMap<Part, PeftConfig> {
        let mut out = HashMap::new();
        let Some(v) = file.metadata().get("lora_adapter_metadata").and_then(|s| serde_json::from_str::<serde_json::Value>(s).ok()) else {
            return out;
        };
        for (part, prefix) in [(Part::Unet, "unet"), (Part::TextEncoder, "text_encoder"), (Part::TextEncoder2, "text_encoder_2")] {
            let get = |k: &str| v.get(format!("{prefix}.{k}"));
            let cfg = PeftConfig {
                alpha: get("lora_alpha").and_then(serde_json::Value::as_f64).map(|a| a as f32),
                alpha_pattern: get("alpha_pattern")
                    .and_then(serde_json::Value::as_object)
                    .map(|m| m.iter().filter_map(|(k, a)| Some((k.clone(), a.as_f64()? as f32))).collect())
                    .unwrap_or_default(),
                rslora: get("use_rslora").and_then(serde_json::Value::as_bool).unwrap_or(false),
            };
            if cfg.alpha.is_some() || !cfg.alpha_pattern.is_empty() || cfg.rslora {
                out.insert(part, cfg);
            }
        }
        out
    }

    /// The scale of a pair of rank `r` on `module`.
    fn scale(&self, module: &str, r: usize) -> f32 {
        let pattern = self.alpha_pattern.iter().find(|(p, _)| module == p || module.ends_with(&format!(".{p}")));
        let alpha = pattern.map(|(_, a)| *a).or(self.alpha).unwrap_or(r as f32);
        alpha / if self.rslora { (r as f32).sqrt() } else { r as f32 }
    }
}

/// (down suffix, up suffix) of each pair naming, longest first where one ends another.
const PAIR_SUFFIXES: &[(&str, &str)] = &[
    (".lora_down.weight", ".lora_up.weight"),
    (".lora_A.weight", ".lora_B.weight"),
    (".lora_linear_layer.down.weight", ".lora_linear_layer.up.weight"),
    ("_lora.down.weight", "_lora.up.weight"),
    (".lora.down.weight", ".lora.up.weight"),
];

/// LyCORIS variants not supported: Tucker-decomposed convolutions.
const UNSUPPORTED: &[(&str, &str)] = &[
    ("hada_t1", "LoHa with Tucker-decomposed convolutions"),
    ("lokr_t2", "LoKr with a Tucker-decomposed convolution"),
    ("lora_mid.weight", "LoCon with a Tucker mid weight"),
];

fn err(path: &str, detail: String) -> WeightsError {
    WeightsError::Architecture { path: path.to_string(), detail }
}

/// Part and module of a pair's key stem.
fn classify(stem: &str) -> (Part, Module) {
    let dotted = |s: &str| {
        let mut m = s.replace(".processor.", ".");
        if m.ends_with(".to_out") {
            m.push_str(".0"); // `to_out_lora` is the Linear `to_out.0`
        }
        Module::Dotted(m)
    };
    if let Some(r) = stem.strip_prefix("lora_unet_") {
        (Part::Unet, Module::Flat(r.to_string()))
    } else if let Some(r) = stem.strip_prefix("lora_te_") {
        (Part::TextEncoder, Module::Flat(r.to_string()))
    } else if let Some(r) = stem.strip_prefix("lora_te1_") {
        (Part::TextEncoder, Module::Sdxl(r.to_string()))
    } else if let Some(r) = stem.strip_prefix("lora_te2_") {
        (Part::TextEncoder2, Module::Sdxl(r.to_string()))
    } else if let Some(r) = stem.strip_prefix("text_encoder_2.") {
        (Part::TextEncoder2, dotted(r))
    } else if let Some(r) = stem.strip_prefix("unet.") {
        (Part::Unet, dotted(r))
    } else if let Some(r) = stem.strip_prefix("text_encoder.") {
        (Part::TextEncoder, dotted(r))
    } else {
        // Old diffusers attention-processor files have bare UNet module paths.
        (Part::Unet, dotted(stem))
    }
}

impl Lora {
    /// Open a `.safetensors` LoRA (memory-mapped on native targets).
    pub fn open(path: impl AsRef<Path>) -> Result<Lora> {
        let path = path.as_ref();
        let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        Self::from_file(name, SafetensorsFile::open(path)?)
    }

    /// A LoRA already opened (e.g. [`SafetensorsFile::from_bytes`] on wasm32); `name` is what
    /// prompt tags call it.
    pub fn from_file(name: impl Into<String>, file: SafetensorsFile) -> Result<Lora> {
        let path = file.path().to_string();
        let names = file.names();
        let mut pairs = Vec::new();
        let mut used = std::collections::HashSet::new();
        for key in &names {
            if let Some((_, what)) = UNSUPPORTED.iter().find(|(s, _)| key.contains(s)) {
                return Err(err(&path, format!("'{key}' is a LyCORIS {what} weight, which Pigment does not merge (plain LoRA/LoCon, LoHa, LoKr and DoRA are supported)")).into());
            }
            let need = |name: String| -> Result<String> {
                if file.contains(&name) {
                    Ok(name)
                } else {
                    Err(err(&path, format!("'{key}' has no matching '{name}' (a truncated or malformed LoRA)")).into())
                }
            };
            let (stem, kind) = if let Some(stem) = key.strip_suffix(".hada_w1_a") {
                let k = |n: &str| need(format!("{stem}.{n}"));
                (stem, Kind::LoHa { w1a: key.to_string(), w1b: k("hada_w1_b")?, w2a: k("hada_w2_a")?, w2b: k("hada_w2_b")? })
            } else if let Some(stem) = key.strip_suffix(".lokr_w1").or_else(|| key.strip_suffix(".lokr_w1_a")) {
                let factor = |n: &str| -> Result<Factor> {
                    let full = format!("{stem}.{n}");
                    if file.contains(&full) {
                        Ok(Factor::Full(full))
                    } else {
                        Ok(Factor::Pair(need(format!("{full}_a"))?, need(format!("{full}_b"))?))
                    }
                };
                (stem, Kind::LoKr { w1: factor("lokr_w1")?, w2: factor("lokr_w2")? })
            } else if let Some((down_sfx, up_sfx)) = PAIR_SUFFIXES.iter().find(|(d, _)| key.ends_with(d)) {
                let stem = &key[..key.len() - down_sfx.len()];
                (stem, Kind::Lora { down: key.to_string(), up: need(format!("{stem}{up_sfx}"))? })
            } else {
                continue;
            };
            let alpha = [format!("{stem}.alpha"), format!("{stem}.lora.alpha")].into_iter().find(|a| file.contains(a));
            let dora = Some(format!("{stem}.dora_scale")).filter(|d| file.contains(d));
            let (part, module) = classify(stem);
            let pair = Pair { part, module, kind, alpha, dora };
            used.extend(pair.tensors().into_iter().cloned());
            pairs.push(pair);
        }
        let unrecognized: Vec<String> = names.iter().filter(|k| !used.contains(**k)).map(|k| k.to_string()).collect();
        if pairs.is_empty() {
            let sample: Vec<&String> = unrecognized.iter().take(5).collect();
            return Err(err(
                &path,
                format!(
                    "not a LoRA: no `.lora_down/.lora_up`, `.lora_A/.lora_B`, `.lora.down/.lora.up`, LoHa `.hada_w1_a` or LoKr `.lokr_w1` weights among its {} tensors, e.g. {sample:?}",
                    names.len()
                ),
            )
            .into());
        }
        let peft = PeftConfig::from_metadata(&file);
        Ok(Lora { name: name.into(), file, pairs, unrecognized, peft })
    }

    /// The file it came from.
    pub fn path(&self) -> &str {
        self.file.path()
    }

    /// A1111's short hash of a LoRA (`Lora hashes` in the PNG parameters): the first 12 hex
    /// digits of the SHA-256 of the file's tensor data (kohya's `addnet` hash, header excluded).
    pub fn short_hash(&self) -> String {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(self.file.data_section());
        digest.iter().take(6).map(|b| format!("{b:02x}")).collect()
    }

    /// Number of down/up pairs.
    pub fn len(&self) -> usize {
        self.pairs.len()
    }
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }
}

/// One LoRA in use with A1111's two multipliers (`<lora:name:te[:unet]>`).
#[derive(Clone)]
pub struct LoraUse {
    pub lora: Arc<Lora>,
    pub te_scale: f32,
    pub unet_scale: f32,
}

impl LoraUse {
    /// The same multiplier for text encoder and UNet.
    pub fn new(lora: Arc<Lora>, scale: f32) -> LoraUse {
        LoraUse { lora, te_scale: scale, unet_scale: scale }
    }
}

/// Merged weights for each part, and warnings about keys that matched nothing.
#[derive(Default)]
pub struct Merged {
    pub text_encoder: HashMap<String, Vec<f32>>,
    pub text_encoder_2: HashMap<String, Vec<f32>>,
    pub unet: HashMap<String, Vec<f32>>,
    pub warnings: Vec<String>,
}

/// Weight names of a component, and the same with `.` as `_` (kohya) → the real name.
struct Table<'a> {
    c: &'a Component,
    flat: HashMap<String, String>,
    /// Part of an SDXL model: [`Module::Sdxl`] names resolve.
    sdxl: bool,
}

impl<'a> Table<'a> {
    fn new(c: &'a Component, sdxl: bool) -> Table<'a> {
        let flat = c
            .names()
            .into_iter()
            .filter_map(|n| Some((n.strip_suffix(".weight")?.replace('.', "_"), n.clone())))
            .collect();
        Table { c, flat, sdxl }
    }
    fn resolve(&self, m: &Module) -> Option<String> {
        match m {
            Module::Flat(f) => self.flat.get(f).cloned(),
            Module::Sdxl(f) => self.flat.get(f).filter(|_| self.sdxl).cloned(),
            Module::Dotted(d) => Some(format!("{d}.weight")).filter(|n| self.c.contains(n)),
        }
    }
}

/// Error unless `up [out, r, (1, 1)] @ down [r, …]` has the target's shape `[out, …]`.
fn check_fit(path: &str, down: (&str, &[usize]), up: (&str, &[usize]), target: &str, wshape: &[usize]) -> Result<()> {
    let (out, numel) = (wshape.first().copied().unwrap_or(0), wshape.iter().product::<usize>());
    let r = down.1.first().copied().unwrap_or(0);
    // Checked: a non-float tensor's dims are not bounded by the file, and may overflow.
    let down_numel = down.1.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    let fits = r > 0
        && out > 0
        && down.1.len() >= 2
        && up.1.len() >= 2
        && up.1[0] == out
        && up.1[1] == r
        && up.1[2..].iter().all(|&d| d == 1)
        && down_numel.and_then(|n| n.checked_mul(out)).is_some_and(|n| Some(n) == r.checked_mul(numel));
    if !fits {
        return Err(err(
            path,
            format!(
                "LoRA tensors '{}' {:?} and '{}' {:?} do not fit the model's '{target}' {wshape:?} (a LoRA for another model architecture?)",
                down.0, down.1, up.0, up.1
            ),
        )
        .into());
    }
    Ok(())
}

/// `w [out, inner] += s · up [out, r] @ down [r, inner]` (shapes checked by [`check_fit`]).
fn add_delta(w: &mut [f32], down: &TensorView, up: &TensorView, s: f32) -> Result<()> {
    let (r, out) = (down.shape[0], up.shape[0]);
    let inner = w.len() / out;
    let (d, u) = (down.to_f32()?, up.to_f32()?);
    for o in 0..out {
        let row = &mut w[o * inner..(o + 1) * inner];
        for k in 0..r {
            let a = s * u[o * r + k];
            if a != 0.0 {
                for (x, &y) in row.iter_mut().zip(&d[k * inner..(k + 1) * inner]) {
                    *x += a * y;
                }
            }
        }
    }
    Ok(())
}

/// One pair to merge on a target weight: (LoRA, pair, multiplier, alpha / rank).
type Item<'a> = (&'a Lora, &'a Pair, f32, f32);

/// Every pair of every LoRA resolved to a target and checked against its shape (no tensor data
/// read, so errors come before anything is rebuilt), grouped by part and target.
struct Plan<'a> {
    text_encoder: BTreeMap<String, Vec<Item<'a>>>,
    text_encoder_2: BTreeMap<String, Vec<Item<'a>>>,
    unet: BTreeMap<String, Vec<Item<'a>>>,
    warnings: Vec<String>,
}

/// `text_encoder_2`: SDXL's (`None`: its pairs match nothing).
fn plan<'a>(text_encoder: &Component, text_encoder_2: Option<&Component>, unet: &Component, uses: &'a [LoraUse]) -> Result<Plan<'a>> {
    let is_sdxl = sdxl::is_sdxl_unet(unet);
    let te_table = Table::new(text_encoder, is_sdxl);
    let te2_table = text_encoder_2.map(|c| Table::new(c, is_sdxl));
    let mut unet_table = Table::new(unet, is_sdxl);
    if is_sdxl {
        unet_table.flat.extend(sdxl::ldm_aliases(unet));
    }
    let mut plan = Plan { text_encoder: BTreeMap::new(), text_encoder_2: BTreeMap::new(), unet: BTreeMap::new(), warnings: Vec::new() };
    for u in uses {
        let lora: &Lora = &u.lora;
        let path = lora.path();
        let mut matched = 0;
        let mut unmatched: Vec<&str> = lora.unrecognized.iter().map(String::as_str).collect();
        for p in &lora.pairs {
            let (table, comp, group, mult) = match (p.part, &te2_table, text_encoder_2) {
                (Part::TextEncoder, ..) => (&te_table, text_encoder, &mut plan.text_encoder, u.te_scale),
                (Part::TextEncoder2, Some(t), Some(c)) => (t, c, &mut plan.text_encoder_2, u.te_scale),
                (Part::TextEncoder2, ..) => {
                    unmatched.push(p.key());
                    continue;
                }
                (Part::Unet, ..) => (&unet_table, unet, &mut plan.unet, u.unet_scale),
            };
            let Some(target) = table.resolve(&p.module) else {
                unmatched.push(p.key());
                continue;
            };
            matched += 1;
            let rank = lycoris::check_pair(lora, p, &target, &comp.shape(&target).unwrap_or_default())?;
            let alpha = match (&p.alpha, rank) {
                (Some(a), rank) => {
                    let v = lora.file.get(a)?.to_f32()?;
                    let [alpha] = v[..] else { return Err(err(path, format!("'{a}' has {} values, expected one", v.len())).into()) };
                    rank.map_or(1.0, |r| alpha / r as f32)
                }
                (None, Some(r)) if matches!(p.kind, Kind::Lora { .. }) => match (lora.peft.get(&p.part), &p.module) {
                    (Some(cfg), Module::Dotted(m)) => cfg.scale(m, r),
                    _ => 1.0,
                },
                (None, _) => 1.0,
            };
            // A zero multiplier is still checked above (an error should not depend on it), and
            // leaves the weight as it is (LyCORIS's own DoRA merge would still add ΔW).
            if mult != 0.0 {
                group.entry(target).or_default().push((lora, p, mult, alpha));
            }
        }
        if matched == 0 {
            let sample: Vec<&&str> = unmatched.iter().take(5).collect();
            let sdxl_keys = lora.pairs.iter().any(|p| p.part == Part::TextEncoder2 || matches!(p.module, Module::Sdxl(_)));
            let family = match (is_sdxl, sdxl_keys) {
                (false, true) => "it is an SDXL LoRA (lora_te1_/lora_te2_/text_encoder_2 keys) and this model is not SDXL",
                (false, false) => "it is for another model family (SDXL?)",
                (true, _) => "it is for another model family (SD 1.x/2.x?)",
            };
            return Err(err(
                path,
                format!("this LoRA matches no layer of the model ({} pairs), e.g. {sample:?}; {family} or uses a key naming Pigment does not know", lora.pairs.len()),
            )
            .into());
        }
        if !unmatched.is_empty() {
            let sample: Vec<&&str> = unmatched.iter().take(5).collect();
            plan.warnings.push(format!(
                "{path}: {} LoRA keys match no layer of this model and are ignored ({matched} pairs merged), e.g. {sample:?}",
                unmatched.len()
            ));
        }
    }
    Ok(plan)
}

/// Merge one part's planned pairs, handing each merged tensor (f32) to `sink` as it is done.
fn merge_part(comp: &Component, group: &BTreeMap<String, Vec<Item>>, mut sink: impl FnMut(String, Vec<f32>)) -> Result<()> {
    for (target, items) in group {
        let wv = comp.get(target)?;
        let (out, in_ch) = (wv.shape[0], wv.shape.get(1).copied().unwrap_or(1));
        let mut w = wv.to_f32()?;
        drop(wv);
        let inner = w.len() / out;
        for (lora, p, mult, scale) in items {
            let get = |k: &str| lora.file.get(k);
            if let (Kind::Lora { down, up }, None) = (&p.kind, &p.dora) {
                add_delta(&mut w, &get(down)?, &get(up)?, mult * scale)?;
                continue;
            }
            let delta = lycoris::dense_delta(lora, p, out, inner)?;
            match &p.dora {
                None => w.iter_mut().zip(delta).for_each(|(x, d)| *x += mult * scale * d),
                Some(name) => {
                    w.iter_mut().zip(delta).for_each(|(x, d)| *x += scale * d);
                    let m = get(name)?;
                    let per_out = m.shape[0] == out && m.numel() == out;
                    lycoris::weight_decompose(&mut w, out, in_ch, &m.to_f32()?, per_out, *mult);
                }
            }
        }
        sink(target.clone(), w);
    }
    Ok(())
}

/// Merge `uses` into copies of the text encoder's and UNet's weights (see the module docs for
/// what is an error and what a warning). Only touched tensors are returned. SDXL:
/// [`merge_sdxl`].
pub fn merge(text_encoder: &Component, unet: &Component, uses: &[LoraUse]) -> Result<Merged> {
    merge_sdxl(text_encoder, None, unet, uses)
}

/// Which LoRAs a [`StableDiffusion`] has merged (kept in the pipeline by [`StableDiffusion::set_loras`]).
#[derive(Clone, Default)]
pub struct Applied {
    /// (file, te multiplier, unet multiplier) in order.
    set: Vec<(String, f32, f32)>,
    /// The LoRAs themselves, to merge again into an f32 UNet when f16 overflows (see `guard`).
    uses: Vec<LoraUse>,
    te_merged: bool,
    unet_merged: bool,
}

impl Applied {
    /// The LoRAs in use: (file, text-encoder multiplier, UNet multiplier).
    pub fn files(&self) -> &[(String, f32, f32)] {
        &self.set
    }
}

impl StableDiffusion {
    /// Use exactly these LoRAs from now on (an empty list restores the base model). The text
    /// encoder(s) (SDXL: both, together) and/or UNet are rebuilt from the base weights with the
    /// LoRAs merged (see the [module docs](crate::lora)); nothing is done when the set is
    /// unchanged. Returns warnings (keys that matched no layer) for the caller to show.
    pub fn set_loras(&mut self, ctx: &Context, uses: &[LoraUse]) -> Result<Vec<String>> {
        let set: Vec<(String, f32, f32)> = uses.iter().map(|u| (u.lora.path().to_string(), u.te_scale, u.unet_scale)).collect();
        if set == self.loras.set {
            return Ok(Vec::new());
        }
        if self.is_refiner() {
            return Err(crate::Error::Unsupported(format!("{}: LoRAs on an SDXL refiner are not supported (its one text encoder is text_encoder_2)", self.name)));
        }
        let te = self.weights.text_encoder()?.base();
        let te2 = self.weights.text_encoder_2().map(Component::base);
        let unet = self.weights.unet()?.base();
        let plan = plan(&te, te2.as_ref(), &unet, uses)?;
        // Until both rebuilds succeed, the state is unknown: force a rebuild next time.
        let (te_was, unet_was) = (self.loras.te_merged, self.loras.unet_merged);
        self.loras = Applied { set: Vec::new(), uses: Vec::new(), te_merged: true, unet_merged: true };
        *self.unet_f32.get_mut().unwrap() = None;
        // `te_merged` covers SDXL's two encoders: either one changing rebuilds both (cheap).
        let (te_now, unet_now) = (!plan.text_encoder.is_empty() || !plan.text_encoder_2.is_empty(), !plan.unet.is_empty());
        // One part at a time, each merged tensor kept in the storage dtype (what the upload would
        // round it to anyway), so at most one f32 copy of a tensor is alive at once.
        if te_now || te_was {
            let mut o = HashMap::new();
            merge_part(&te, &plan.text_encoder, |k, v| {
                o.insert(k, Override::new(v, self.clip.dtype));
            })?;
            self.clip.reload_weights(ctx, &te.with_overrides(o))?;
            if let (Some(te2), Some(x)) = (&te2, self.sdxl.as_mut()) {
                let mut o = HashMap::new();
                merge_part(te2, &plan.text_encoder_2, |k, v| {
                    o.insert(k, Override::new(v, x.clip_2.dtype));
                })?;
                x.clip_2.reload_weights(ctx, &te2.with_overrides(o))?;
            }
        }
        if unet_now || unet_was {
            let mut o = HashMap::new();
            merge_part(&unet, &plan.unet, |k, v| {
                o.insert(k, Override::new(v, self.unet.dtype));
            })?;
            let (config, dtype) = (self.unet.config.clone(), self.unet.dtype);
            self.unet = UNet2DConditionModel::load_with(ctx, &unet.with_overrides(o), config, dtype)?;
        }
        self.loras = Applied { set, uses: uses.to_vec(), te_merged: te_now, unet_merged: unet_now };
        // The replaced models' buffers went back to the pool's free list: release them. (While a
        // model is rebuilt, the old and new weights are both on the GPU for a moment.)
        ctx.trim_pool();
        Ok(plan.warnings)
    }

    /// The LoRAs currently merged.
    pub fn loras(&self) -> &Applied {
        &self.loras
    }

    /// The UNet again, from the base weights with the current LoRAs merged, in `dtype` (the f32
    /// re-run of an f16 UNet that overflowed).
    pub(crate) fn unet_in(&self, ctx: &Context, dtype: DType) -> Result<UNet2DConditionModel> {
        let unet = self.weights.unet()?.base();
        let config = self.unet.config.clone();
        if self.loras.uses.is_empty() || !self.loras.unet_merged {
            return UNet2DConditionModel::load_with(ctx, &unet, config, dtype);
        }
        let te = self.weights.text_encoder()?.base();
        let te2 = self.weights.text_encoder_2().map(Component::base);
        let plan = plan(&te, te2.as_ref(), &unet, &self.loras.uses)?;
        let mut o = HashMap::new();
        merge_part(&unet, &plan.unet, |k, v| {
            o.insert(k, Override::new(v, dtype));
        })?;
        UNet2DConditionModel::load_with(ctx, &unet.with_overrides(o), config, dtype)
    }
}

/// The PNG parameters' `Lora hashes: "name: hash, ..."` for these LoRAs, as A1111 writes it
/// (empty when there are none).
pub fn a1111_hashes(uses: &[LoraUse]) -> String {
    if uses.is_empty() {
        return String::new();
    }
    let list: Vec<String> = uses.iter().map(|u| format!("{}: {}", u.lora.name, u.lora.short_hash())).collect();
    format!(", Lora hashes: \"{}\"", list.join(", "))
}

/// `FILE[:SCALE]` (scale 1 when absent; a suffix that is not a number is part of the path).
pub fn parse_file_arg(s: &str) -> (PathBuf, f32) {
    if let Some((p, sc)) = s.rsplit_once(':') {
        if let Ok(v) = sc.trim().parse::<f32>() {
            return (PathBuf::from(p), v);
        }
    }
    (PathBuf::from(s), 1.0)
}

/// The command line's LoRAs: `--lora FILE[:SCALE]` files first, then the prompt's tags from
/// `--lora-dir`.
#[cfg(not(target_arch = "wasm32"))]
pub fn uses_for_cli(files: &[String], dir: Option<&Path>, prompt: &str) -> Result<Vec<LoraUse>> {
    let mut uses = Vec::new();
    for f in files {
        let (path, scale) = parse_file_arg(f);
        uses.push(LoraUse::new(Arc::new(Lora::open(&path)?), scale));
    }
    uses.extend(uses_for_prompt(prompt, dir)?);
    Ok(uses)
}

/// Every `.safetensors` under `dir` (recursively, as A1111's Lora folder), by file stem.
#[cfg(not(target_arch = "wasm32"))]
pub fn list_dir(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    fn walk(d: &Path, depth: usize, out: &mut Vec<(String, PathBuf)>) -> std::io::Result<()> {
        for e in std::fs::read_dir(d)? {
            let p = e?.path();
            if p.is_dir() && depth < 8 {
                walk(&p, depth + 1, out)?;
            } else if p.extension().is_some_and(|x| x.eq_ignore_ascii_case("safetensors")) {
                if let Some(stem) = p.file_stem() {
                    out.push((stem.to_string_lossy().into_owned(), p.clone()));
                }
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, 0, &mut out).map_err(|source| WeightsError::Io { path: dir.display().to_string(), source })?;
    out.sort();
    Ok(out)
}

/// The LoRAs a prompt's `<lora:name:te[:unet]>` tags ask for, found by file stem under
/// `dir` (`--lora-dir`). A tag with no such file is an error listing what the folder has.
#[cfg(not(target_arch = "wasm32"))]
pub fn uses_for_prompt(prompt: &str, dir: Option<&Path>) -> Result<Vec<LoraUse>> {
    let (_, tags) = crate::prompt::extract_extra_networks(prompt);
    if tags.is_empty() {
        return Ok(Vec::new());
    }
    let Some(dir) = dir else {
        return Err(crate::Error::Unsupported(format!(
            "the prompt asks for <lora:{}>, but no LoRA folder was given (--lora-dir DIR)",
            tags[0].name
        )));
    };
    let files = list_dir(dir)?;
    let mut uses = Vec::new();
    for t in tags {
        let Some((_, path)) = files.iter().find(|(stem, _)| *stem == t.name) else {
            let have: Vec<&str> = files.iter().map(|(s, _)| s.as_str()).take(30).collect();
            return Err(err(
                &dir.display().to_string(),
                format!(
                    "<lora:{}> in the prompt: no {}.safetensors in this LoRA folder (it has {}: {})",
                    t.name,
                    t.name,
                    files.len(),
                    if have.is_empty() { "none".to_string() } else { have.join(", ") }
                ),
            )
            .into());
        };
        uses.push(LoraUse { lora: Arc::new(Lora::open(path)?), te_scale: t.weight, unet_scale: t.unet_weight });
    }
    Ok(uses)
}

//! Full-size random-weight models from a documented deterministic generator: SD 1.5 and
//! SD 2.1-768-v with every tensor of the real diffusers folders, built in memory (no file), the
//! same values `tools/fixtures_fullsize.py` puts into diffusers' models for the goldens.
//!
//! The generator, per tensor (diffusers name `name`) and flat element index `i`:
//!
//! ```text
//! h     = FNV-1a 64 of name (UTF-8)
//! z     = splitmix64 finaliser of (h + i * 0x9E3779B97F4A7C15) mod 2^64
//! u     = (z >> 40) * 2^-23 - 1                   in [-1, 1), exact in f32
//! value = f16(base + scale * u)                   f32 arithmetic, rounded to f16 (nearest even)
//! ```
//!
//! `(base, scale)` comes from the tensor's role, read from its name and shape: a 1-D `.weight`
//! (GroupNorm/LayerNorm) `(1, 0.1)`; its `.bias` `(0, 0.1)`; a `_embedding.weight` (CLIP token
//! and position tables) `(0, 1)`; any other weight (Linear/Conv) `(0, gain / sqrt(fan_in))` with
//! `fan_in = prod(shape[1..])`; its bias `(0, 1 / sqrt(fan_in))`. With gain 1 this is PyTorch's
//! default init (uniform, bound 1/sqrt(fan_in)), which diffusers keeps; [`GAINS`] lists the
//! exceptions. Values are f16 so f32 and f16 runs see the same weights.
//!
//! The tensor list and configs are the diffusers classes' own (`assets/synthetic/<model>/`,
//! written by the fixture tool): nothing is hand-written here, so names and shapes cannot drift.

use super::{Component, ComponentKind, Result, SafetensorsFile, Source, Weights, WeightsError};
use half::f16;
use serde_json::Value;
use std::io::Read;

/// Name suffix → gain on a Linear/Conv weight's scale (the same table as the fixture tool's).
/// TAESD's blocks (`AutoencoderTinyBlock.conv.{0,2,4}`, no SD name ends so) get √6, the
/// He-uniform bound for ReLU: with gain 1 its 20 ReLU layers shrink the signal to a near-flat
/// output (decode std 0.04), a weak golden. GLIGEN's scalar gates (`fuser.alpha_attn/dense`,
/// zero-initialised in diffusers, so a fuser would do nothing) get 3: tanh(3u) spans ±0.995.
pub const GAINS: &[(&str, f32)] = &[
    (".conv.0.weight", 2.449_489_7),
    (".conv.2.weight", 2.449_489_7),
    (".conv.4.weight", 2.449_489_7),
    (".alpha_attn", 3.0),
    (".alpha_dense", 3.0),
];
/// Scale of the CLIP token and position embeddings.
pub const EMBED_SCALE: f32 = 1.0;

/// One of the synthetic models (`--model synthetic:sd15` / `synthetic:sd21v`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyntheticModel {
    /// SD 1.5: UNet (320, 640, 1280, 1280), CLIP ViT-L/14 text encoder, VAE (128..512), PNDM.
    Sd15,
    /// SD 2.1-768-v: UNet with heads (5, 10, 20, 20), linear projections, cross-attention 1024;
    /// OpenCLIP ViT-H text encoder (1024 wide, 23 layers); VAE; DDIM with v-prediction.
    Sd21v,
    /// SDXL base 1.0: UNet (320, 640, 1280) with 1/2/10 transformer layers and text_time added
    /// conditioning, CLIP ViT-L + OpenCLIP ViT-bigG (with projection), VAE with scaling 0.13025,
    /// Euler. Text encoders and a UNet call checked against diffusers (tests/fullsize.rs, goldens
    /// from tools/fixtures_fullsize_sdxl.py --goldens); its VAE's tensors are SD 1.5's.
    Sdxl,
}

struct Assets {
    tensors_gz: &'static [u8],
    text_encoder: &'static str,
    unet: &'static str,
    vae: &'static str,
    scheduler: &'static str,
    /// SDXL's second text encoder (`None` for one-encoder models).
    text_encoder_2: Option<&'static str>,
}

macro_rules! assets {
    ($m:literal) => {
        Assets {
            tensors_gz: include_bytes!(concat!("../../assets/synthetic/", $m, "/tensors.txt.gz")),
            text_encoder: include_str!(concat!("../../assets/synthetic/", $m, "/text_encoder.json")),
            unet: include_str!(concat!("../../assets/synthetic/", $m, "/unet.json")),
            vae: include_str!(concat!("../../assets/synthetic/", $m, "/vae.json")),
            scheduler: include_str!(concat!("../../assets/synthetic/", $m, "/scheduler.json")),
            text_encoder_2: None,
        }
    };
    ($m:literal, two_encoders) => {
        Assets { text_encoder_2: Some(include_str!(concat!("../../assets/synthetic/", $m, "/text_encoder_2.json"))), ..assets!($m) }
    };
}

impl SyntheticModel {
    pub const ALL: [SyntheticModel; 3] = [SyntheticModel::Sd15, SyntheticModel::Sd21v, SyntheticModel::Sdxl];

    pub fn name(self) -> &'static str {
        match self {
            SyntheticModel::Sd15 => "sd15",
            SyntheticModel::Sd21v => "sd21v",
            SyntheticModel::Sdxl => "sdxl",
        }
    }

    /// `synthetic:NAME` → the model; `None` for anything not starting with `synthetic:`; an
    /// unknown name is an error listing the known ones.
    pub fn from_spec(spec: &str) -> Option<Result<SyntheticModel>> {
        let name = spec.strip_prefix("synthetic:")?;
        Some(Self::ALL.into_iter().find(|m| m.name() == name).ok_or_else(|| WeightsError::Architecture {
            path: spec.to_string(),
            detail: format!("unknown synthetic model '{name}'; use synthetic:sd15, synthetic:sd21v or synthetic:sdxl"),
        }))
    }

    fn assets(self) -> Assets {
        match self {
            SyntheticModel::Sd15 => assets!("sd15"),
            SyntheticModel::Sd21v => assets!("sd21v"),
            SyntheticModel::Sdxl => assets!("sdxl", two_encoders),
        }
    }

    fn spec(self) -> String {
        format!("synthetic:{}", self.name())
    }

    /// A component's `config.json` (for the scheduler: `scheduler_config.json`).
    pub fn config(self, part: &str) -> Value {
        let a = self.assets();
        let text = match part {
            "text_encoder" => a.text_encoder,
            "text_encoder_2" => a.text_encoder_2.expect("text_encoder_2 asked of a one-encoder synthetic model"),
            "unet" => a.unet,
            "vae" => a.vae,
            _ => a.scheduler,
        };
        serde_json::from_str(text).expect("embedded synthetic config is valid JSON")
    }

    /// The scheduler config as JSON text (for `SchedulerConfig::from_json`).
    pub fn scheduler_json(self) -> &'static str {
        self.assets().scheduler
    }

    /// Names and shapes of one component's tensors, in file order (sorted by name).
    pub fn tensors(self, kind: ComponentKind) -> Vec<(String, Vec<usize>)> {
        tensor_list(self.assets().tensors_gz, kind.folder()).expect("embedded synthetic tensor list is valid")
    }

    /// One component with its values generated in memory (f16 safetensors bytes).
    pub fn component(self, kind: ComponentKind) -> Result<Component> {
        let tensors = self.tensors(kind);
        let bytes = safetensors_bytes(&tensors);
        let file = SafetensorsFile::from_bytes(format!("{}/{}", self.spec(), kind.folder()), bytes)?;
        Ok(Component::from_folder_file(kind, file, Some(self.config(kind.folder()))))
    }

    /// The whole model (text encoder(s), UNet, VAE), ~2 GiB of f16 for SD 1.5, ~6.5 GiB for SDXL.
    pub fn weights(self) -> Result<Weights> {
        let mut kinds = vec![ComponentKind::TextEncoder, ComponentKind::Unet, ComponentKind::Vae];
        if self.assets().text_encoder_2.is_some() {
            kinds.push(ComponentKind::TextEncoder2);
        }
        self.weights_of(&kinds)
    }

    /// Only the listed components (the others are absent).
    pub fn weights_of(self, kinds: &[ComponentKind]) -> Result<Weights> {
        let get = |k| if kinds.contains(&k) { self.component(k).map(Some) } else { Ok(None) };
        Ok(Weights::from_parts(
            Source::Folder(self.spec().into()),
            get(ComponentKind::TextEncoder)?,
            get(ComponentKind::Unet)?,
            get(ComponentKind::Vae)?,
        )
        .with_text_encoder_2(get(ComponentKind::TextEncoder2)?))
    }
}

/// FNV-1a, 64 bit.
pub fn fnv1a64(s: &str) -> u64 {
    s.bytes().fold(0xCBF2_9CE4_8422_2325, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01B3))
}

/// The generator's `u` for element `i` of the tensor whose name hashes to `h`: in [-1, 1).
#[inline]
pub fn uniform(h: u64, i: u64) -> f32 {
    let mut z = h.wrapping_add(i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 40) as f32 * (1.0 / (1u32 << 23) as f32) - 1.0
}

/// `(base, scale)` of a tensor from its name and shape (and its weight's shape, for a bias).
pub fn role(name: &str, shape: &[usize], weight_shape: Option<&[usize]>) -> (f32, f32) {
    let inv_sqrt_fan_in = |s: &[usize]| 1.0 / (s.iter().skip(1).product::<usize>() as f32).sqrt();
    if shape.len() == 1 && name.ends_with(".weight") {
        return (1.0, 0.1);
    }
    if name.ends_with(".bias") {
        return match weight_shape {
            Some(w) if w.len() > 1 => (0.0, inv_sqrt_fan_in(w)),
            _ => (0.0, 0.1),
        };
    }
    if name.ends_with("_embedding.weight") {
        return (0.0, EMBED_SCALE);
    }
    let gain = GAINS.iter().find(|(s, _)| name.ends_with(s)).map_or(1.0, |g| g.1);
    (0.0, gain * inv_sqrt_fan_in(shape))
}

/// A tensor's values as f16, written into `out` (2 bytes per element).
pub fn fill(name: &str, shape: &[usize], weight_shape: Option<&[usize]>, out: &mut [u8]) {
    let (base, scale) = role(name, shape, weight_shape);
    let h = fnv1a64(name);
    for (i, o) in out.chunks_exact_mut(2).enumerate() {
        let mut v = uniform(h, i as u64) * scale;
        if base != 0.0 {
            v += base;
        }
        o.copy_from_slice(&f16::from_f32(v).to_le_bytes());
    }
}

/// The `(name, shape)` entries of `component` in a gzipped tensor list
/// (`component<TAB>name<TAB>d0,d1,..` per line, as `assets/synthetic/*/tensors.txt.gz`).
pub fn tensor_list(gz: &[u8], component: &str) -> std::result::Result<Vec<(String, Vec<usize>)>, String> {
    let mut text = String::new();
    flate2::read::GzDecoder::new(gz).read_to_string(&mut text).map_err(|e| format!("tensor list: {e}"))?;
    let mut out = Vec::new();
    for l in text.lines() {
        let f: Vec<&str> = l.split('\t').collect();
        let [c, n, s] = f[..] else { return Err(format!("tensor list line '{l}' is not component<TAB>name<TAB>dims")) };
        if c == component {
            // an empty list is a scalar (GLIGEN's gates)
            let dims = s.split(',').filter(|d| !d.is_empty()).map(|d| d.parse().map_err(|_| format!("tensor list: bad dimension in '{l}'"))).collect::<std::result::Result<_, _>>()?;
            out.push((n.to_string(), dims));
        }
    }
    Ok(out)
}

/// A safetensors file (F16, in `tensors` order) holding the generated values; tensors are
/// filled on all cores (natively), largest first. Public for models built from a tensor list
/// outside [`SyntheticModel`] (TAESD's test, `models::esrgan`'s synthetic upscalers).
pub fn safetensors_bytes(tensors: &[(String, Vec<usize>)]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (name, shape) in tensors {
        let n = shape.iter().product::<usize>() * 2;
        header.insert(name.clone(), serde_json::json!({"dtype": "F16", "shape": shape, "data_offsets": [offset, offset + n]}));
        offset += n;
    }
    let mut head = Value::Object(header).to_string().into_bytes();
    head.resize(head.len().next_multiple_of(8), b' ');
    let mut bytes = vec![0u8; 8 + head.len() + offset];
    bytes[..8].copy_from_slice(&(head.len() as u64).to_le_bytes());
    bytes[8..8 + head.len()].copy_from_slice(&head);
    let shapes: std::collections::HashMap<&str, &[usize]> = tensors.iter().map(|(n, s)| (n.as_str(), s.as_slice())).collect();
    let mut jobs = Vec::with_capacity(tensors.len());
    let mut rest = &mut bytes[8 + head.len()..];
    for (name, shape) in tensors {
        let (mine, tail) = rest.split_at_mut(shape.iter().product::<usize>() * 2);
        let weight = name.strip_suffix(".bias").and_then(|p| shapes.get(format!("{p}.weight").as_str()).copied());
        jobs.push((name.as_str(), shape.as_slice(), weight, mine));
        rest = tail;
    }
    jobs.sort_by_key(|j| std::cmp::Reverse(j.3.len()));
    run_jobs(jobs);
    bytes
}

type Job<'a> = (&'a str, &'a [usize], Option<&'a [usize]>, &'a mut [u8]);

#[cfg(not(target_arch = "wasm32"))]
fn run_jobs(jobs: Vec<Job<'_>>) {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let queue = std::sync::Mutex::new(jobs.into_iter());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let Some((name, shape, w, out)) = queue.lock().unwrap().next() else { break };
                fill(name, shape, w, out);
            });
        }
    });
}

#[cfg(target_arch = "wasm32")]
fn run_jobs(jobs: Vec<Job<'_>>) {
    for (name, shape, w, out) in jobs {
        fill(name, shape, w, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values printed by tools/fixtures_fullsize.py's numpy generator (`uniform`, `values`).
    #[test]
    fn matches_the_python_generator() {
        assert_eq!(fnv1a64("a"), 0xaf63dc4c8601ec8c);
        let h = fnv1a64("conv_in.weight");
        let want = [-0.39869225f32, 0.14250004, 0.7665291, -0.819942];
        for (i, w) in want.iter().enumerate() {
            assert_eq!(uniform(h, i as u64), *w, "element {i}");
        }
    }
}

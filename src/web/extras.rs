//! What a loaded [`Model`] takes besides the checkpoint: LoRA files, textual-inversion
//! embeddings and TAESD weights, each handed over as [`Bytes`].
//!
//! LoRAs: the page drops each model part once it is on the GPU, so there are no base weights to
//! merge into. `apply_loras` therefore takes the UNet's file again (the page re-reads it from the
//! Cache API or the picked File: a JS `Uint8Array`, copied into wasm one tensor at a time), merges
//! through [`StableDiffusion::set_loras`] and drops it. The text encoder's file is still held by
//! the model (CPU token-embedding lookups), so it is merged from that.

use super::{js_err, Bytes, Model};
use crate::lora::{Lora, LoraUse};
use crate::models::taesd::{Taesd, TaesdWeights};
use crate::pipeline::StableDiffusion;
use crate::weights::{Component, ComponentKind, SafetensorsFile, Source, Weights};
use serde_json::Value;
use std::sync::Arc;
use wasm_bindgen::prelude::*;

pub(super) fn busy() -> JsError {
    JsError::new("the model is busy with a generation: wait for it to finish")
}

/// No base weights (see the module docs): what the model keeps between merges.
pub(super) fn no_weights(name: &str) -> Weights {
    Weights::from_parts(Source::Folder(name.into()), None, None, None)
}

/// The LoRAs `options` asks for: its `loras: [{name, weight, unetWeight?}]` list, then the
/// prompt's `<lora:name:w>` tags (as the CLI's `--lora` files, then `--lora-dir` tags), each by
/// the name it was added under.
pub(super) fn lora_uses(registry: &[Arc<Lora>], options: &str) -> Result<Vec<LoraUse>, crate::Error> {
    let bad = |m: String| crate::Error::Unsupported(m);
    let v: Value = serde_json::from_str(options).map_err(|e| bad(format!("options are not valid JSON: {e}")))?;
    let find = |name: &str| {
        registry.iter().find(|l| l.name == name).cloned().ok_or_else(|| {
            let have: Vec<&str> = registry.iter().map(|l| l.name.as_str()).collect();
            bad(format!(
                "LoRA '{name}' is not loaded (loaded: {}); add its file first",
                if have.is_empty() { "none".to_string() } else { have.join(", ") }
            ))
        })
    };
    let mut uses = Vec::new();
    if let Some(list) = v.get("loras").filter(|x| !x.is_null()) {
        let list = list.as_array().ok_or_else(|| bad(format!("option 'loras' must be a list of {{name, weight}}, got {list}")))?;
        for item in list {
            let name = item.get("name").and_then(Value::as_str).ok_or_else(|| bad(format!("a 'loras' entry has no name: {item}")))?;
            let num = |k: &str, default: f32| -> Result<f32, crate::Error> {
                match item.get(k).filter(|x| !x.is_null()) {
                    None => Ok(default),
                    Some(x) => x.as_f64().map(|f| f as f32).ok_or_else(|| bad(format!("LoRA '{name}': '{k}' must be a number, got {x}"))),
                }
            };
            let weight = num("weight", 1.0)?;
            uses.push(LoraUse { lora: find(name)?, te_scale: weight, unet_scale: num("unetWeight", weight)? });
        }
    }
    let prompt = v.get("prompt").and_then(Value::as_str).unwrap_or("");
    for t in crate::prompt::extract_extra_networks(prompt).1 {
        uses.push(LoraUse { lora: find(&t.name)?, te_scale: t.weight, unet_scale: t.unet_weight });
    }
    Ok(uses)
}

/// Whether `uses` differs from what `sd` has merged.
pub(super) fn pending(sd: &StableDiffusion, uses: &[LoraUse]) -> bool {
    let want: Vec<(String, f32, f32)> = uses.iter().map(|u| (u.lora.path().to_string(), u.te_scale, u.unet_scale)).collect();
    want != sd.loras().files()
}

#[wasm_bindgen]
impl Model {
    /// Add a LoRA / LyCORIS `.safetensors` (A1111, kohya, diffusers/PEFT namings) under `name`
    /// (what `loras: [{name}]` and `<lora:name:w>` refer to; the same name again replaces it).
    /// Nothing is merged yet (see `apply_loras`). Returns its number of layer pairs.
    pub fn add_lora(&mut self, name: &str, bytes: Bytes) -> Result<u32, JsError> {
        // A replaced file gets another path, so the merged set counts as changed.
        self.lora_serial += 1;
        let replaced = self.loras.iter().any(|l| l.name == name);
        let path = if replaced { format!("{name}.safetensors (#{})", self.lora_serial) } else { format!("{name}.safetensors") };
        let file = SafetensorsFile::from_js(path, bytes.0).map_err(js_err)?;
        let lora = Lora::from_file(name, file).map_err(js_err)?;
        let pairs = lora.len() as u32;
        self.loras.retain(|l| l.name != name);
        self.loras.push(Arc::new(lora));
        Ok(pairs)
    }

    /// Forget a LoRA (it stays merged until the next `apply_loras`).
    pub fn remove_lora(&mut self, name: &str) -> bool {
        let n = self.loras.len();
        self.loras.retain(|l| l.name != name);
        n != self.loras.len()
    }

    /// Whether the LoRAs `options` asks for differ from those merged, i.e. whether
    /// `apply_loras` must run (with the UNet's file) before `generate`.
    pub fn loras_pending(&self, options: &str) -> Result<bool, JsError> {
        let uses = lora_uses(&self.loras, options).map_err(js_err)?;
        let sd = self.sd.try_borrow().map_err(|_| busy())?;
        Ok(pending(&sd, &uses))
    }

    /// Merge the LoRAs `options` asks for (none: back to the base model). `unet`: the UNet's
    /// weights file again, as given to the loader (`single_file`: the checkpoint's UNet tensors,
    /// as the page hands them to `add_single_file`); only needed when `loras_pending`. Returns
    /// warnings (keys that matched no layer) as a JSON list.
    pub fn apply_loras(&mut self, options: &str, unet: Option<Bytes>, unet_name: Option<String>, single_file: Option<bool>) -> Result<String, JsError> {
        let uses = lora_uses(&self.loras, options).map_err(js_err)?;
        let mut sd = self.sd.try_borrow_mut().map_err(|_| busy())?;
        if !pending(&sd, &uses) {
            return Ok("[]".into());
        }
        let unet = unet.ok_or_else(|| js_err("the LoRAs changed: merging them needs the UNet's weights file again (apply_loras(options, unetBytes))"))?;
        let name = unet_name.unwrap_or_else(|| "unet/diffusion_pytorch_model.safetensors".into());
        let file = SafetensorsFile::from_js(name.clone(), unet.0).map_err(js_err)?;
        let unet = if single_file.unwrap_or(false) {
            let w = Weights::from_single_file(file).map_err(js_err)?;
            w.unet().map_err(js_err)?.clone()
        } else {
            Component::from_folder_file(ComponentKind::Unet, file, None)
        };
        let te = sd.clip.component().base();
        sd.weights = Weights::from_parts(Source::Folder(name.as_str().into()), Some(te), Some(unet), None);
        let result = sd.set_loras(&self.ctx, &uses);
        // Drop the UNet's file (the text encoder's stays with the model anyway).
        sd.weights = no_weights(&sd.name);
        let warnings = result.map_err(js_err)?;
        for w in &warnings {
            web_sys::console::warn_1(&format!("pigment: {w}").into());
        }
        Ok(serde_json::to_string(&warnings).unwrap_or_default())
    }

    /// Add a textual-inversion embedding (`.safetensors`: A1111's `emb_params`, or a single
    /// `[n, hidden]` / `[hidden]` tensor) used where the prompt has the word `name`. Returns its
    /// number of vectors.
    pub fn add_embedding(&mut self, name: &str, bytes: Bytes) -> Result<u32, JsError> {
        let word_char = |c: char| c.is_alphanumeric() || c == '_' || c == '-';
        if name.is_empty() || !name.chars().all(word_char) {
            return Err(js_err(format!("embedding name '{name}': use letters, digits, '_' or '-' (it is the word the prompt uses)")));
        }
        let file = SafetensorsFile::from_js(format!("{name}.safetensors"), bytes.0).map_err(js_err)?;
        let mut sd = self.sd.try_borrow_mut().map_err(|_| busy())?;
        let (n, vectors) = crate::models::clip::read_textual_inversion(&file, sd.clip.config.hidden).map_err(js_err)?;
        sd.clip.add_embedding_vectors(&vectors).map_err(js_err)?;
        sd.tokenizer.add_embedding(name, n);
        Ok(n as u32)
    }

    /// TAESD for `preview: "taesd"` (`None` removes it): a diffusers AutoencoderTiny
    /// `diffusion_pytorch_model.safetensors` with its `config.json` text, or the original
    /// `taesd_decoder.safetensors` (no config).
    pub fn set_taesd(&mut self, bytes: Option<Bytes>, config_json: Option<String>) -> Result<(), JsError> {
        let mut sd = self.sd.try_borrow_mut().map_err(|_| busy())?;
        let Some(bytes) = bytes else {
            sd.set_taesd(None);
            return Ok(());
        };
        let config = config_json
            .map(|t| serde_json::from_str::<Value>(&t).map_err(|e| js_err(format!("TAESD config.json: {e}"))))
            .transpose()?;
        let file = SafetensorsFile::from_js("taesd/diffusion_pytorch_model.safetensors", bytes.0).map_err(js_err)?;
        let w = TaesdWeights::from_files(vec![file], config.as_ref()).map_err(js_err)?;
        let taesd = Taesd::load(&self.ctx, &w, sd.vae.dtype).map_err(js_err)?;
        if !taesd.has_decoder() {
            return Err(js_err("this TAESD file has no decoder, which previews need (give taesd_decoder.safetensors or a diffusers AutoencoderTiny file)"));
        }
        sd.set_taesd(Some(taesd));
        self.ctx.flush();
        Ok(())
    }

    /// `[width, height]` of the image `generate` makes with these options (the hires fix's
    /// target size when `hires` is set).
    pub fn output_size(&self, options: &str) -> Result<Vec<u32>, JsError> {
        let o = super::parse_options(options).map_err(js_err)?;
        let (w, h) = o.hires.as_ref().map_or((o.width, o.height), |h| h.target(o.width, o.height));
        Ok(vec![w as u32, h as u32])
    }
}

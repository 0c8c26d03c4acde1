//! Browser bindings (wasm32 + WebGPU): open the GPU, load a model from bytes, generate.
//!
//! JavaScript sees four classes (see `web/pigment-app.js` for a complete use):
//!
//! * [`Pigment`]: `await Pigment.open(f16)` opens WebGPU (a clear error when the browser has none);
//!   `adapter()` describes it (JSON); `loader()` starts loading a model.
//! * [`Bytes`]: a file's bytes in a JS `Uint8Array`, written in chunks (`new Bytes(len)`,
//!   `write(offset, chunk)`); tensors are copied into wasm memory one at a time while loading.
//! * [`ModelLoader`]: hand over the parts in any order: `add_component("unet", bytes)` for a
//!   diffusers folder's `*/…safetensors` (each with `set_config(part, json)`; SDXL adds
//!   `text_encoder_2`, `tokenizer_2` and `model_index`), or
//!   `add_single_file(bytes)` for an original-layout checkpoint (or any subset of its tensors:
//!   the page splits a single file per component, see below), then `finish()`.
//! * [`Model`]: `generate(optionsJson, onProgress)` → a Promise of RGBA bytes; LoRAs,
//!   embeddings and TAESD are added to it ([`extras`]).
//!
//! Memory: each part is uploaded to GPU buffers tensor by tensor as soon as it arrives and its
//! bytes are freed, so wasm memory (4 GiB at most) holds one tensor of it at a time; the part's
//! file sits in the JS heap meanwhile. The text encoder keeps its file for CPU-side
//! token-embedding lookups, which is why the page hands a single-file checkpoint over one
//! component at a time (only the text encoder's tensors stay).

use crate::gpu::{AdapterChoice, Context};
use crate::models::clip::ClipTextModel;
use crate::models::unet::UNet2DConditionModel;
use crate::models::vae::AutoencoderKL;
use crate::pipeline::{GenerateOptions, Image, SdxlParts, StableDiffusion};
use crate::schedulers::{SamplerKind, SchedulerConfig, SigmaSchedule};
use crate::tokenizer::{ClipTokenizer, PadToken};
use crate::weights::{self, Component, ComponentKind, SafetensorsFile, TextEncoderKind, Weights};
use serde_json::Value;
use std::cell::RefCell;
use std::rc::Rc;
use wasm_bindgen::prelude::*;

mod extras;

fn js_err(e: impl std::fmt::Display) -> JsError {
    JsError::new(&e.to_string())
}

/// `navigator.gpu`, if the browser exposes WebGPU (window or worker).
fn navigator_gpu() -> Option<JsValue> {
    let nav = js_sys::Reflect::get(&js_sys::global(), &"navigator".into()).ok()?;
    let gpu = js_sys::Reflect::get(&nav, &"gpu".into()).ok()?;
    (!gpu.is_undefined() && !gpu.is_null()).then_some(gpu)
}

/// What a page shows when WebGPU is missing.
pub const NO_WEBGPU: &str = "This browser has no WebGPU (navigator.gpu is undefined). Use Chrome or Edge 113+ \
     (on Linux start it with --enable-unsafe-webgpu, or enable chrome://flags/#enable-unsafe-webgpu), \
     Safari 26+, or Firefox 141+ on Windows; pages must be served over https or from localhost.";

/// [`NO_WEBGPU`], for pages that check `navigator.gpu` themselves.
#[wasm_bindgen]
pub fn no_webgpu_message() -> String {
    NO_WEBGPU.to_string()
}

/// The GPU: a WebGPU device with Pigment's pipeline cache and buffer pool.
#[wasm_bindgen]
pub struct Pigment {
    ctx: Rc<Context>,
}

#[wasm_bindgen]
impl Pigment {
    /// Open the browser's WebGPU adapter. `f16`: use f16 storage when the adapter offers
    /// shader-f16 (f32 kernels otherwise, e.g. on SwiftShader).
    pub async fn open(f16: bool) -> Result<Pigment, JsError> {
        if navigator_gpu().is_none() {
            return Err(JsError::new(NO_WEBGPU));
        }
        let choice = AdapterChoice { name: None, disable_f16: !f16 };
        let ctx = Context::new(&choice).await.map_err(|e| {
            JsError::new(&format!("{e}. WebGPU is present but gave no usable adapter: check chrome://gpu, or start Chrome with --enable-unsafe-webgpu"))
        })?;
        Ok(Pigment { ctx: Rc::new(ctx) })
    }

    /// The adapter as JSON: name, backend, device type, f16, maxBufferSize,
    /// maxStorageBufferBindingSize.
    pub fn adapter(&self) -> String {
        let c = &self.ctx;
        serde_json::json!({
            "name": c.info.name,
            "backend": format!("{:?}", c.info.backend),
            "deviceType": format!("{:?}", c.info.device_type),
            "driver": c.info.driver,
            "f16": c.f16,
            "maxBufferSize": c.limits.max_buffer_size,
            "maxStorageBufferBindingSize": c.limits.max_storage_buffer_binding_size,
        })
        .to_string()
    }

    /// Start loading a model onto this GPU.
    pub fn loader(&self) -> ModelLoader {
        ModelLoader {
            ctx: self.ctx.clone(),
            configs: Default::default(),
            scheduler: None,
            pad: None,
            pad_2: None,
            force_zeros_for_empty_prompt: None,
            text_kind: None,
            clip: None,
            clip_2: None,
            unet: None,
            vae: None,
            vae_inferred: false,
        }
    }
}

/// A file's bytes, filled chunk by chunk from JS. They live in a JS `Uint8Array`, not in wasm
/// memory: loading copies one tensor at a time into wasm (and frees it after its upload), so
/// wasm memory (4 GiB at most) never holds a whole part, only its biggest tensor.
#[wasm_bindgen]
pub struct Bytes(js_sys::Uint8Array);

#[wasm_bindgen]
impl Bytes {
    /// `len` zero bytes; fails clearly when the browser cannot allocate them.
    #[wasm_bindgen(constructor)]
    pub fn new(len: usize) -> Result<Bytes, JsError> {
        let too_big = || JsError::new(&format!("cannot allocate {} MiB for a model file in the browser", len >> 20));
        let len = u32::try_from(len).map_err(|_| too_big())?;
        // Through Reflect so that a RangeError (out of memory) becomes an Err, not a trap.
        let ctor: js_sys::Function = js_sys::Uint8Array::new_with_length(0).constructor();
        let array = js_sys::Reflect::construct(&ctor, &js_sys::Array::of1(&len.into())).map_err(|_| too_big())?;
        Ok(Bytes(array.unchecked_into()))
    }

    /// Copy `chunk` to `offset`.
    pub fn write(&mut self, offset: usize, chunk: &js_sys::Uint8Array) -> Result<(), JsError> {
        if offset.checked_add(chunk.length() as usize).is_none_or(|end| end > self.0.length() as usize) {
            return Err(JsError::new(&format!("write of {} bytes at {offset} past the end ({})", chunk.length(), self.0.length())));
        }
        self.0.set(chunk, offset as u32);
        Ok(())
    }
}

fn parse_kind(part: &str) -> Result<ComponentKind, JsError> {
    match part {
        "text_encoder" => Ok(ComponentKind::TextEncoder),
        "text_encoder_2" => Ok(ComponentKind::TextEncoder2),
        "unet" => Ok(ComponentKind::Unet),
        "vae" => Ok(ComponentKind::Vae),
        _ => Err(JsError::new(&format!("unknown model part '{part}' (text_encoder, text_encoder_2, unet or vae)"))),
    }
}

/// Collects a model part by part; each part goes to the GPU as it arrives.
#[wasm_bindgen]
pub struct ModelLoader {
    ctx: Rc<Context>,
    configs: std::collections::HashMap<ComponentKind, Value>,
    scheduler: Option<SchedulerConfig>,
    pad: Option<PadToken>,
    /// SDXL: `tokenizer_2`'s pad token and `model_index.json`'s `force_zeros_for_empty_prompt`.
    pad_2: Option<PadToken>,
    force_zeros_for_empty_prompt: Option<bool>,
    text_kind: Option<TextEncoderKind>,
    clip: Option<ClipTextModel>,
    clip_2: Option<ClipTextModel>,
    unet: Option<UNet2DConditionModel>,
    vae: Option<AutoencoderKL>,
    /// The VAE's config was inferred from single-file tensors (see `finish`).
    vae_inferred: bool,
}

/// A `tokenizer_config.json`'s pad token ("!" as SD 2.x's and SDXL's tokenizer_2, else EOS).
fn pad_token(part: &str, json: &str) -> Result<Option<PadToken>, JsError> {
    let v: Value = serde_json::from_str(json).map_err(|e| js_err(format!("{part}/tokenizer_config.json: {e}")))?;
    let pad = v.get("pad_token").and_then(|p| p.as_str().or_else(|| p.get("content")?.as_str()));
    Ok(pad.map(|p| if p == "!" { PadToken::Exclamation } else { PadToken::EndOfText }))
}

#[wasm_bindgen]
impl ModelLoader {
    /// A diffusers `config.json` for `part` (text_encoder, text_encoder_2, unet, vae),
    /// `scheduler` for `scheduler/scheduler_config.json`, `tokenizer` for
    /// `tokenizer/tokenizer_config.json` (its pad token; `tokenizer_2` likewise), or
    /// `model_index` for `model_index.json` (SDXL's `force_zeros_for_empty_prompt`). Give
    /// configs before the part's weights.
    pub fn set_config(&mut self, part: &str, json: &str) -> Result<(), JsError> {
        match part {
            "scheduler" => self.scheduler = Some(SchedulerConfig::from_json(json).map_err(js_err)?),
            "tokenizer" => self.pad = pad_token(part, json)?,
            "tokenizer_2" => self.pad_2 = pad_token(part, json)?,
            "model_index" => {
                let v: Value = serde_json::from_str(json).map_err(|e| js_err(format!("model_index.json: {e}")))?;
                self.force_zeros_for_empty_prompt = v.get("force_zeros_for_empty_prompt").and_then(Value::as_bool);
            }
            _ => {
                let kind = parse_kind(part)?;
                let v = serde_json::from_str(json).map_err(|e| js_err(format!("{part}/config.json: {e}")))?;
                self.configs.insert(kind, v);
            }
        }
        Ok(())
    }

    /// One diffusers-folder weights file (`text_encoder/model.safetensors`,
    /// `text_encoder_2/model.safetensors`, `unet/diffusion_pytorch_model.safetensors`, `vae/diffusion_pytorch_model.safetensors`).
    pub fn add_component(&mut self, part: &str, name: &str, bytes: Bytes, f16: bool) -> Result<(), JsError> {
        let kind = parse_kind(part)?;
        let file = SafetensorsFile::from_js(name, bytes.0).map_err(js_err)?;
        let comp = Component::from_folder_file(kind, file, self.configs.get(&kind).cloned());
        self.load(&comp, f16)
    }

    /// A single-file checkpoint (original LDM keys), whole or any subset of its tensors; every
    /// part it holds is loaded. Configs given with `set_config` describe its parts (as the
    /// CLI's `--config`); otherwise they are inferred from the tensors.
    pub fn add_single_file(&mut self, name: &str, bytes: Bytes, f16: bool) -> Result<(), JsError> {
        let file = SafetensorsFile::from_js(name, bytes.0).map_err(js_err)?;
        let w = Weights::from_single_file(file).map_err(js_err)?;
        let mut any = false;
        let parts = [w.text_encoder().ok(), w.text_encoder_2(), w.unet().ok(), w.vae().ok()];
        for comp in parts.into_iter().flatten() {
            let mut comp = comp.clone();
            if let Some(c) = self.configs.get(&comp.kind) {
                comp.config = Some(c.clone());
            }
            self.load(&comp, f16)?;
            if comp.kind == ComponentKind::Vae {
                self.vae_inferred = comp.config.is_none();
            }
            any = true;
        }
        if !any {
            return Err(js_err(format!("{name}: no Stable Diffusion tensors (model.diffusion_model.*, first_stage_model.*, cond_stage_model.*, conditioner.embedders.*)")));
        }
        Ok(())
    }

    fn load(&mut self, comp: &Component, f16: bool) -> Result<(), JsError> {
        let ctx = &self.ctx;
        let dtype = weights::storage_dtype(ctx, f16);
        match comp.kind {
            ComponentKind::TextEncoder => {
                self.text_kind = comp.text_kind;
                self.clip = Some(ClipTextModel::load(ctx, comp, dtype).map_err(js_err)?);
            }
            ComponentKind::Unet => self.unet = Some(UNet2DConditionModel::load(ctx, comp, dtype).map_err(js_err)?),
            // With its encoder (when the file has one): the page's img2img and inpainting need
            // it, and the part's bytes are gone once loaded (~70 MB more for SD 1.5 in f16).
            ComponentKind::Vae => self.vae = Some(AutoencoderKL::load(ctx, comp, dtype).map_err(js_err)?),
            ComponentKind::ControlNet => return Err(js_err("ControlNets are not offered on the page")),
            ComponentKind::TextEncoder2 => {
                let clip_2 = ClipTextModel::load(ctx, comp, dtype).map_err(js_err)?;
                if clip_2.text_projection.is_none() {
                    return Err(js_err(format!("{}: SDXL's text_encoder_2 needs text_projection.weight (CLIPTextModelWithProjection)", comp.path())));
                }
                self.clip_2 = Some(clip_2);
            }
        }
        // Submit the uploads now so the staging copies are released before the next part.
        ctx.flush();
        Ok(())
    }

    /// The model, once text encoder, UNet and VAE are all loaded (and text_encoder_2 for
    /// SDXL). `name` shows in metadata.
    pub fn finish(mut self, name: &str) -> Result<Model, JsError> {
        let missing = |what: &str| js_err(format!("the model has no {what} yet: add its weights first"));
        let open_clip = self.text_kind == Some(TextEncoderKind::OpenClip);
        let pad = self.pad.unwrap_or(if open_clip { PadToken::Exclamation } else { PadToken::EndOfText });
        // In the parts' order, so the first missing one is named.
        let clip = self.clip.ok_or_else(|| missing("text encoder"))?;
        let unet = self.unet.ok_or_else(|| missing("UNet"))?;
        let mut vae = self.vae.ok_or_else(|| missing("VAE"))?;
        if unet.config.text_time.is_some() && self.clip_2.is_none() {
            return Err(missing("text_encoder_2 (this UNet is SDXL's)"));
        }
        // As the native loader without a tokenizer_2 folder: the embedded BPE padded with "!".
        let sdxl = self.clip_2.take().map(|clip_2| SdxlParts {
            tokenizer_2: ClipTokenizer::embedded(self.pad_2.unwrap_or(PadToken::Exclamation)),
            clip_2,
            force_zeros_for_empty_prompt: self.force_zeros_for_empty_prompt.unwrap_or(true),
        });
        // A VAE split from an SDXL single file cannot see the checkpoint's other keys, which is
        // how inference tells SDXL's latent scale (see VaeConfig::infer).
        if sdxl.is_some() && self.vae_inferred {
            vae.config.scaling_factor = 0.13025;
        }
        let vae_encoder = vae.encoder.is_some().then(|| std::sync::Arc::new(vae.clone()));
        let sd = StableDiffusion {
            // The real CLIP BPE is compiled in; SD folders ship that same vocabulary.
            tokenizer: ClipTokenizer::embedded(pad),
            clip,
            unet,
            vae,
            vae_encoder: std::sync::Mutex::new(vae_encoder),
            controlnet: None,
            sdxl,
            refiner: None,
            scheduler_config: self.scheduler.unwrap_or_else(|| SchedulerConfig::stable_diffusion_default(open_clip)),
            name: name.to_string(),
            // The parts were uploaded and dropped as they arrived: `apply_loras` is handed the
            // UNet's file again to merge from (see extras).
            weights: extras::no_weights(name),
            loras: Default::default(),
            vae_f32: Default::default(),
            unet_f32: Default::default(),
            warnings: Default::default(),
            taesd: None,
            hypernetworks: Vec::new(),
        };
        Ok(Model { ctx: self.ctx, sd: Rc::new(RefCell::new(sd)), loras: Vec::new(), lora_serial: 0 })
    }
}

/// A loaded model.
#[wasm_bindgen]
pub struct Model {
    ctx: Rc<Context>,
    /// Mutable for LoRA merges, embeddings and TAESD; borrowed by a generation while it runs.
    sd: Rc<RefCell<StableDiffusion>>,
    /// LoRA files added (`add_lora`), by name.
    loras: Vec<std::sync::Arc<crate::lora::Lora>>,
    lora_serial: u64,
}

fn rgba(image: &Image) -> js_sys::Uint8Array {
    let mut out = Vec::with_capacity(image.width * image.height * 4);
    for px in image.rgb.chunks_exact(3) {
        out.extend_from_slice(&[px[0], px[1], px[2], 255]);
    }
    js_sys::Uint8Array::from(&out[..])
}

/// RGB from the page's RGBA bytes (alpha dropped), checked against the output size.
fn from_rgba(what: &str, b: &js_sys::Uint8Array, width: usize, height: usize) -> Result<Image, crate::Error> {
    let bytes = b.to_vec();
    if bytes.len() != width * height * 4 {
        return Err(crate::Error::Unsupported(format!(
            "{what}: {} bytes, but {width}x{height} RGBA is {} (draw it at the output size first)",
            bytes.len(),
            width * height * 4
        )));
    }
    let rgb = bytes.chunks_exact(4).flat_map(|p| [p[0], p[1], p[2]]).collect();
    Ok(Image { width, height, rgb })
}

/// `previewEvery` from the options JSON (0 or absent, or `preview: "off"`: no previews).
fn preview_every(json: &str) -> Result<usize, crate::Error> {
    let v: Value = serde_json::from_str(json).map_err(|e| crate::Error::Unsupported(format!("options are not valid JSON: {e}")))?;
    if v.get("preview").and_then(Value::as_str) == Some("off") {
        return Ok(0);
    }
    match v.get("previewEvery").filter(|x| !x.is_null()) {
        None => Ok(0),
        Some(x) => x
            .as_u64()
            .map(|n| n as usize)
            .ok_or_else(|| crate::Error::Unsupported(format!("option 'previewEvery' must be a non-negative integer, got {x}"))),
    }
}

/// Generation options from the page's JSON (the CLI's flags; absent keys take its defaults).
pub fn parse_options(json: &str) -> Result<GenerateOptions, crate::Error> {
    let bad = |m: String| crate::Error::Unsupported(m);
    let v: Value = serde_json::from_str(json).map_err(|e| bad(format!("options are not valid JSON: {e}")))?;
    let mut o = GenerateOptions::default();
    let s = |k: &str| v.get(k).and_then(Value::as_str);
    let n = |k: &str| v.get(k).filter(|x| !x.is_null());
    let uint = |k: &str| -> Result<Option<u64>, crate::Error> {
        n(k).map(|x| x.as_u64().ok_or_else(|| bad(format!("option '{k}' must be a non-negative integer, got {x}")))).transpose()
    };
    if let Some(p) = s("prompt") {
        o.prompt = p.to_string();
    }
    if let Some(p) = s("negativePrompt") {
        o.negative_prompt = p.to_string();
    }
    if let Some(x) = uint("seed")? {
        o.seed = x;
    }
    if let Some(x) = uint("width")? {
        o.width = x as usize;
    }
    if let Some(x) = uint("height")? {
        o.height = x as usize;
    }
    if let Some(x) = uint("steps")? {
        o.steps = x as usize;
    }
    if let Some(x) = uint("clipSkip")? {
        o.clip_skip = (x as usize).max(1);
    }
    if let Some(x) = n("guidance") {
        o.guidance = x.as_f64().ok_or_else(|| bad(format!("option 'guidance' must be a number, got {x}")))? as f32;
    }
    if let Some(x) = n("strength") {
        o.strength = x.as_f64().ok_or_else(|| bad(format!("option 'strength' must be a number in (0, 1], got {x}")))? as f32;
    }
    if let Some(x) = uint("maskBlur")? {
        o.mask_blur = x as usize;
    }
    if let Some(x) = s("sampler") {
        o.sampler = SamplerKind::parse(x)?;
    }
    // `schedule` (A1111's schedule type: normal | karras | exponential); `karras: true` is
    // the older spelling of `schedule: "karras"`.
    if let Some(x) = s("schedule") {
        o.schedule = SigmaSchedule::parse(x)?;
    }
    if n("karras").and_then(Value::as_bool).unwrap_or(false) {
        o.schedule = SigmaSchedule::Karras;
    }
    if !o.sampler.supports_schedule(o.schedule) {
        return Err(bad(format!("the {} schedule is not available for {}", o.schedule.name(), o.sampler.name())));
    }
    // `preview`: the previews' decoder, as the CLI's --preview (off: see preview_every).
    match s("preview") {
        None | Some("full") | Some("off") => {}
        Some("taesd") => o.preview_decoder = crate::pipeline::VaeDecoder::Taesd,
        Some(x) => return Err(bad(format!("option 'preview' must be full, taesd or off, got '{x}'"))),
    }
    if let Some(h) = n("hires") {
        o.hires = Some(parse_hires(h)?);
    }
    Ok(o)
}

/// `hires: {scale, steps, denoise, upscaler}` as the CLI's --hires-* (absent keys: its defaults).
fn parse_hires(h: &Value) -> Result<crate::pipeline::HiresOptions, crate::Error> {
    use crate::pipeline::{HiresOptions, HiresUpscaler};
    let bad = |m: String| crate::Error::Unsupported(m);
    if !h.is_object() {
        return Err(bad(format!("option 'hires' must be {{scale, steps, denoise, upscaler}}, got {h}")));
    }
    let mut o = HiresOptions::default();
    let num = |k: &str| -> Result<Option<f64>, crate::Error> {
        h.get(k).filter(|x| !x.is_null()).map(|x| x.as_f64().ok_or_else(|| bad(format!("hires '{k}' must be a number, got {x}")))).transpose()
    };
    if let Some(x) = num("scale")? {
        o.scale = x as f32;
    }
    if let Some(x) = num("steps")? {
        if x < 0.0 || x.fract() != 0.0 {
            return Err(bad(format!("hires 'steps' must be a non-negative integer, got {x}")));
        }
        o.steps = x as usize;
    }
    if let Some(x) = num("denoise")? {
        o.denoise = x as f32;
    }
    if let Some(u) = h.get("upscaler").filter(|x| !x.is_null()) {
        let name = u.as_str().ok_or_else(|| bad(format!("hires 'upscaler' must be a string, got {u}")))?;
        // No files in the browser: ESRGAN upscalers are for the CLI and the server.
        o.upscaler = HiresUpscaler::builtin(name).ok_or_else(|| {
            bad(format!("hires upscaler '{name}': the page offers latent, latent-nearest and lanczos (ESRGAN models need the CLI or a server)"))
        })?;
    }
    Ok(o)
}

#[wasm_bindgen]
impl Model {
    /// Whether the model is SDXL (two text encoders; false while a generation runs).
    pub fn is_sdxl(&self) -> bool {
        self.sd.try_borrow().is_ok_and(|sd| sd.is_sdxl())
    }

    /// Run txt2img, or img2img with `init_rgba`, or inpainting with `init_rgba` and `mask_rgba`
    /// (both width × height × 4 bytes; the mask white where to repaint). `options`: JSON
    /// `{prompt, negativePrompt, seed, steps, guidance, sampler, schedule, width, height,
    /// clipSkip, previewEvery, preview, strength, maskBlur, hires, loras}` (see README.md);
    /// `on_progress(step, total)` after each model evaluation; with `previewEvery: N` (> 0) and
    /// `on_preview`, `on_preview(step, rgba, width, height)` gets the decode (`preview`: full
    /// VAE or taesd) of the current latents every N evaluations. Resolves to the image as RGBA
    /// bytes (`output_size` × 4: larger than width × height with `hires`). Changed LoRAs must
    /// be merged first (`apply_loras`).
    // The model stays borrowed for the whole generation on purpose: apply_loras, add_embedding
    // and set_taesd then answer "busy" (try_borrow_mut) instead of changing it mid-run.
    #[allow(clippy::await_holding_refcell_ref)]
    pub fn generate(
        &self,
        options: &str,
        on_progress: Option<js_sys::Function>,
        on_preview: Option<js_sys::Function>,
        init_rgba: Option<js_sys::Uint8Array>,
        mask_rgba: Option<js_sys::Uint8Array>,
    ) -> js_sys::Promise {
        let (ctx, sd) = (self.ctx.clone(), self.sd.clone());
        let options = options.to_string();
        let uses = extras::lora_uses(&self.loras, &options);
        wasm_bindgen_futures::future_to_promise(async move {
            let sd = sd.try_borrow().map_err(|_| extras::busy())?;
            if extras::pending(&sd, &uses.map_err(js_err)?) {
                return Err(js_err("the LoRAs changed since the last merge: call apply_loras(options, unetBytes) before generate").into());
            }
            let mut o = parse_options(&options).map_err(js_err)?;
            // No previews: their decoder is not needed (the pipeline would ask for TAESD anyway).
            if preview_every(&options).map_err(js_err)? == 0 || on_preview.is_none() {
                o.preview_decoder = crate::pipeline::VaeDecoder::Full;
            } else if o.preview_decoder == crate::pipeline::VaeDecoder::Taesd && sd.taesd.is_none() {
                return Err(js_err("preview 'taesd' needs TAESD weights: load them first (set_taesd), or choose the full VAE").into());
            }
            o.init_image = init_rgba.map(|b| from_rgba("init image", &b, o.width, o.height)).transpose().map_err(js_err)?;
            o.mask = mask_rgba.map(|b| from_rgba("mask", &b, o.width, o.height)).transpose().map_err(js_err)?;
            let every = preview_every(&options).map_err(js_err)?;
            let progress = |step: usize, total: usize| {
                if let Some(f) = &on_progress {
                    let _ = f.call2(&JsValue::NULL, &(step as u32).into(), &(total as u32).into());
                }
            };
            let mut show = |step: usize, image: &Image| {
                if let Some(f) = &on_preview {
                    // The size too: hires previews are at the base size, then the target's.
                    let args = [JsValue::from(step as u32), rgba(image).into(), (image.width as u32).into(), (image.height as u32).into()];
                    let _ = f.apply(&JsValue::NULL, &args.into_iter().collect::<js_sys::Array>());
                }
            };
            let preview = match (every, &on_preview) {
                (n, Some(_)) if n > 0 => Some((n, &mut show as &mut dyn FnMut(usize, &Image))),
                _ => None,
            };
            let image = sd.generate_with_previews_async(&ctx, &o, preview, progress).await.map_err(js_err)?;
            // The NaN / constant-image guards' warnings (see pipeline::guard) go to the console.
            for w in sd.take_warnings() {
                web_sys::console::warn_1(&format!("pigment: {w}").into());
            }
            Ok(rgba(&image).into())
        })
    }

    /// A1111's `parameters` text for these options (for the PNG the page saves); `img2img` and
    /// `inpaint` add the denoising strength and mask blur as A1111 writes them; the LoRAs'
    /// hashes follow as the CLI writes them.
    pub fn parameters(&self, options: &str, img2img: Option<bool>, inpaint: Option<bool>) -> Result<String, JsError> {
        let mut o = parse_options(options).map_err(js_err)?;
        let blank = || Image { width: 0, height: 0, rgb: Vec::new() };
        o.init_image = img2img.unwrap_or(false).then(blank);
        o.mask = inpaint.unwrap_or(false).then(blank);
        let uses = extras::lora_uses(&self.loras, options).map_err(js_err)?;
        let sd = self.sd.try_borrow().map_err(|_| extras::busy())?;
        Ok(crate::pipeline::a1111_parameters(&o, &sd.name) + &crate::lora::a1111_hashes(&uses))
    }
}

//! A1111 request bodies → jobs, with A1111's field names and defaults (its API models'
//! `StableDiffusionTxt2ImgProcessingAPI` / `...Img2Img...`). Unknown fields are ignored, as
//! A1111 does; known fields Pigment cannot honour (hires fix, face restoration, tiling, scripts,
//! variation seeds, ...) are a 422 naming them; a wrong type or value is a 422 naming the field.

use super::errors::{ApiError, ApiResult};
use super::jobs::GenJob;
use super::Shared;
use crate::pipeline::{ControlOptions, GenerateOptions, Image};
use crate::schedulers::{SamplerKind, SigmaSchedule};
use base64::Engine;
use serde_json::{Map, Value};

/// The most images one request may ask for (batch_size × n_iter).
pub const MAX_IMAGES: usize = 100;
pub const MAX_SIDE: usize = 4096;
pub const MAX_STEPS: usize = 1000;

/// Typed access to a JSON object's fields: missing and `null` mean the default; a wrong type is
/// a 422 naming the field (`prefix` + key).
pub struct Fields<'a> {
    pub obj: &'a Map<String, Value>,
    pub prefix: String,
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

impl<'a> Fields<'a> {
    pub fn new(obj: &'a Map<String, Value>) -> Fields<'a> {
        Fields { obj, prefix: String::new() }
    }

    pub fn name(&self, k: &str) -> String {
        format!("{}{k}", self.prefix)
    }

    pub fn get(&self, k: &str) -> Option<&'a Value> {
        self.obj.get(k).filter(|v| !v.is_null())
    }

    fn wrong(&self, k: &str, want: &str, v: &Value) -> ApiError {
        let shown = v.to_string();
        let shown = if shown.chars().count() > 60 { format!("{}…", shown.chars().take(60).collect::<String>()) } else { shown };
        ApiError::field(&self.name(k), format!("expected {want}, got {} {shown}", kind_of(v)))
    }

    pub fn string(&self, k: &str, default: &str) -> ApiResult<String> {
        match self.get(k) {
            None => Ok(default.to_string()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(v) => Err(self.wrong(k, "a string", v)),
        }
    }

    /// An integer; numbers with no fraction and numeric strings are accepted, as pydantic does.
    pub fn int(&self, k: &str, default: i64) -> ApiResult<i64> {
        match self.get(k) {
            None => Ok(default),
            Some(v) => {
                let n = match v {
                    Value::Number(n) => n.as_i64().or_else(|| n.as_f64().filter(|f| f.fract() == 0.0 && f.abs() < 9e15).map(|f| f as i64)),
                    Value::String(s) => s.trim().parse::<i64>().ok(),
                    _ => None,
                };
                n.ok_or_else(|| self.wrong(k, "an integer", v))
            }
        }
    }

    pub fn float(&self, k: &str, default: f64) -> ApiResult<f64> {
        match self.get(k) {
            None => Ok(default),
            Some(v) => {
                let n = match v {
                    Value::Number(n) => n.as_f64(),
                    Value::String(s) => s.trim().parse::<f64>().ok(),
                    _ => None,
                };
                n.filter(|f| f.is_finite()).ok_or_else(|| self.wrong(k, "a number", v))
            }
        }
    }

    pub fn boolean(&self, k: &str, default: bool) -> ApiResult<bool> {
        match self.get(k) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => Err(self.wrong(k, "true or false", v)),
        }
    }

    pub fn object(&self, k: &str) -> ApiResult<Option<&'a Map<String, Value>>> {
        match self.get(k) {
            None => Ok(None),
            Some(Value::Object(o)) => Ok(Some(o)),
            Some(v) => Err(self.wrong(k, "an object", v)),
        }
    }

    pub fn array(&self, k: &str) -> ApiResult<Option<&'a Vec<Value>>> {
        match self.get(k) {
            None => Ok(None),
            Some(Value::Array(a)) => Ok(Some(a)),
            Some(v) => Err(self.wrong(k, "an array", v)),
        }
    }

    /// An integer in `lo..=hi`.
    pub fn ranged(&self, k: &str, default: i64, lo: i64, hi: i64) -> ApiResult<i64> {
        let v = self.int(k, default)?;
        if v < lo || v > hi {
            return Err(ApiError::field(&self.name(k), format!("{v} is out of range; use {lo} to {hi}")));
        }
        Ok(v)
    }
}

/// A1111's sampler names (also its old `DPM++ 2M Karras` style, its `k_*` aliases and
/// Pigment's CLI names) → sampler and, for the old style, schedule.
pub fn parse_sampler(name: &str) -> Option<(SamplerKind, Option<SigmaSchedule>)> {
    let n = name.trim();
    for k in SamplerKind::ALL {
        if k.a1111_name().eq_ignore_ascii_case(n) {
            return Some((k, None));
        }
    }
    for (suffix, s) in [(" karras", SigmaSchedule::Karras), (" exponential", SigmaSchedule::Exponential)] {
        if n.to_ascii_lowercase().ends_with(suffix) {
            let base = &n[..n.len() - suffix.len()];
            if let Some((k, None)) = parse_sampler(base) {
                return Some((k, Some(s)));
            }
        }
    }
    let alias = match n.to_ascii_lowercase().as_str() {
        "k_euler_a" | "k_euler_ancestral" => Some(SamplerKind::EulerAncestral),
        "k_euler" => Some(SamplerKind::Euler),
        "k_lms" => Some(SamplerKind::Lms),
        "k_heun" => Some(SamplerKind::Heun),
        "k_dpmpp_2m" => Some(SamplerKind::DpmPlusPlus2M),
        "k_dpmpp_sde" => Some(SamplerKind::DpmPlusPlusSde),
        "k_dpmpp_2m_sde" => Some(SamplerKind::DpmPlusPlus2MSde),
        "k_lcm" => Some(SamplerKind::Lcm),
        _ => None,
    };
    alias.or_else(|| SamplerKind::parse(n).ok()).map(|k| (k, None))
}

/// A1111's "Automatic" schedule type: the sampler's own default there (Karras for DPM++ 2M and
/// DPM++ SDE, Exponential for DPM++ 2M SDE, the model's spacing otherwise).
pub fn automatic_schedule(k: SamplerKind) -> SigmaSchedule {
    match k {
        SamplerKind::DpmPlusPlus2M | SamplerKind::DpmPlusPlusSde => SigmaSchedule::Karras,
        SamplerKind::DpmPlusPlus2MSde => SigmaSchedule::Exponential,
        _ => SigmaSchedule::Normal,
    }
}

/// `/sdapi/v1/schedulers` entries Pigment runs: (name, label).
pub const SCHEDULERS: [(&str, &str); 4] = [("automatic", "Automatic"), ("uniform", "Uniform"), ("karras", "Karras"), ("exponential", "Exponential")];

fn parse_schedule(s: &str) -> Option<Option<SigmaSchedule>> {
    Some(match s.trim().to_ascii_lowercase().as_str() {
        "" | "automatic" => None,
        "uniform" | "normal" => Some(SigmaSchedule::Normal),
        "karras" => Some(SigmaSchedule::Karras),
        "exponential" => Some(SigmaSchedule::Exponential),
        _ => return None,
    })
}

/// A base64 image (optionally a `data:image/...;base64,` URL, as A1111 accepts) decoded to RGB.
pub fn decode_b64_image(field: &str, s: &str) -> ApiResult<Image> {
    let data = match s.split_once(";base64,") {
        Some((head, rest)) if head.starts_with("data:") => rest,
        _ => s,
    };
    let clean: String = data.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(clean.trim_end_matches('='))
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(clean.trim_end_matches('=')))
        .map_err(|e| ApiError::field(field, format!("not base64: {e}")))?;
    crate::imageio::decode_image(&bytes).map_err(|e| ApiError::field(field, format!("not a readable image: {e}")))
}

/// A seed as A1111 takes it: -1 (or absent) = random.
fn seed(f: &Fields, k: &str) -> ApiResult<u64> {
    let s = f.int(k, -1)?;
    if s == -1 {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        // spread consecutive calls (A1111 draws from 0..2^32)
        return Ok(((nanos as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) % 4_294_967_296);
    }
    u64::try_from(s).map_err(|_| ApiError::field(&f.name(k), format!("{s} is not a seed; use -1 (random) or 0 to 2^64-1")))
}

/// Fail with a 422 when a known field asks for something Pigment does not do.
fn refuse_if(cond: bool, field: &str, why: &str) -> ApiResult<()> {
    if cond {
        return Err(ApiError::field(field, format!("Pigment cannot honour this: {why}")));
    }
    Ok(())
}

/// A parsed A1111 generation request.
pub struct Parsed {
    pub job: GenJob,
    pub batch_size: usize,
    /// A1111's labels for the info JSON.
    pub sampler_name: String,
    pub scheduler: String,
    pub requested_seed: i64,
}

/// `POST /sdapi/v1/txt2img` (`img2img` = false) or `img2img` bodies.
pub fn parse_a1111(shared: &Shared, obj: &Map<String, Value>, img2img: bool) -> ApiResult<Parsed> {
    let f = Fields::new(obj);
    let prompt = f.string("prompt", "")?;
    let negative_prompt = f.string("negative_prompt", "")?;
    // Fields with no counterpart: refused when they ask for something.
    refuse_if(img2img && f.boolean("enable_hr", false)?, "enable_hr", "hires fix is a txt2img second pass; send it to /sdapi/v1/txt2img")?;
    refuse_if(f.boolean("restore_faces", false)?, "restore_faces", "Pigment has no face restoration model")?;
    refuse_if(f.boolean("tiling", false)?, "tiling", "Pigment has no seamless-tiling mode")?;
    refuse_if(f.float("subseed_strength", 0.0)? != 0.0, "subseed_strength", "variation seeds are not implemented; leave it 0")?;
    refuse_if(f.int("seed_resize_from_w", -1)? > 0 || f.int("seed_resize_from_h", -1)? > 0, "seed_resize_from_w", "resizing the seed is not implemented; leave it -1")?;
    refuse_if(!f.string("script_name", "")?.is_empty(), "script_name", "Pigment runs no A1111 scripts")?;
    refuse_if(f.array("styles")?.is_some_and(|a| !a.is_empty()), "styles", "Pigment has no saved prompt styles; put the text in the prompt")?;
    let (sampler, schedule_from_name) = {
        let name = match (f.get("sampler_name"), f.get("sampler_index")) {
            (Some(_), _) => f.string("sampler_name", "")?,
            (None, Some(_)) => f.string("sampler_index", "")?,
            (None, None) => "Euler".to_string(),
        };
        let field = if f.get("sampler_name").is_some() { "sampler_name" } else { "sampler_index" };
        parse_sampler(&name).ok_or_else(|| {
            let have: Vec<&str> = SamplerKind::ALL.iter().map(|k| k.a1111_name()).collect();
            ApiError::field(field, format!("no sampler '{name}'; Pigment has {} (see /sdapi/v1/samplers)", have.join(", ")))
        })?
    };
    let scheduler_label = f.string("scheduler", "Automatic")?;
    let schedule = match parse_schedule(&scheduler_label) {
        Some(Some(s)) => s,
        Some(None) => schedule_from_name.unwrap_or_else(|| automatic_schedule(sampler)),
        None => {
            let have: Vec<&str> = SCHEDULERS.iter().map(|s| s.1).collect();
            return Err(ApiError::field("scheduler", format!("no schedule type '{scheduler_label}'; Pigment has {} (see /sdapi/v1/schedulers)", have.join(", "))));
        }
    };
    if !sampler.supports_schedule(schedule) {
        return Err(ApiError::field(
            "scheduler",
            format!("{} has a fixed schedule; use Automatic or Uniform (Karras and Exponential work with LMS, Euler, Heun, DPM++ 2M, DPM++ 2M SDE, DPM++ SDE, UniPC)", sampler.a1111_name()),
        ));
    }
    let steps = f.ranged("steps", 50, 1, MAX_STEPS as i64)? as usize;
    let guidance = f.float("cfg_scale", 7.0)? as f32;
    let batch_size = f.ranged("batch_size", 1, 1, MAX_IMAGES as i64)? as usize;
    let n_iter = f.ranged("n_iter", 1, 1, MAX_IMAGES as i64)? as usize;
    if batch_size * n_iter > MAX_IMAGES {
        return Err(ApiError::field("batch_size", format!("batch_size × n_iter = {} images; at most {MAX_IMAGES} per request", batch_size * n_iter)));
    }
    let requested_seed = f.int("seed", -1)?;
    let seed = seed(&f, "seed")?;
    let mut clip_skip = shared.clip_skip.load(std::sync::atomic::Ordering::Relaxed);
    if f.get("clip_skip").is_some() {
        clip_skip = f.ranged("clip_skip", 1, 1, 12)? as usize;
    }
    let (mut model, restore_model) = (None, f.boolean("override_settings_restore_afterwards", true)?);
    if let Some(o) = f.object("override_settings")? {
        let of = Fields { obj: o, prefix: "override_settings.".into() };
        if of.get("sd_model_checkpoint").is_some() {
            model = Some(of.string("sd_model_checkpoint", "")?);
        }
        if of.get("CLIP_stop_at_last_layers").is_some() {
            clip_skip = of.ranged("CLIP_stop_at_last_layers", 1, 1, 12)? as usize;
        }
        let vae = of.string("sd_vae", "Automatic")?;
        refuse_if(!matches!(vae.as_str(), "Automatic" | "None" | ""), "override_settings.sd_vae", "Pigment uses the model's own VAE; use \"Automatic\"")?;
        refuse_if(of.int("eta_noise_seed_delta", 0)? != 0, "override_settings.eta_noise_seed_delta", "the ancestral noise comes from the seed alone; use 0")?;
    }
    // A missing width/height is the size of the model the job runs on (SDXL 1024, SD 1.x 512),
    // not A1111's fixed 512: SDXL at 512 makes broken images.
    let side = default_side(shared, model.as_deref()) as i64;
    let (width, height) = (f.ranged("width", side, 8, MAX_SIDE as i64)? as usize, f.ranged("height", side, 8, MAX_SIDE as i64)? as usize);
    for (k, v) in [("width", width), ("height", height)] {
        if v % 8 != 0 {
            return Err(ApiError::field(k, format!("{v} is not a multiple of 8; use {} or {}", (v / 8 * 8).max(8), v / 8 * 8 + 8)));
        }
    }
    let mut o = GenerateOptions { prompt, negative_prompt, seed, width, height, steps, guidance, sampler, schedule, clip_skip, ..Default::default() };
    if img2img {
        img2img_fields(&f, &mut o)?;
    }
    let (controlnet, extra_parameters) = match f.object("alwayson_scripts")? {
        Some(scripts) => alwayson_scripts(shared, scripts, &mut o)?,
        None => (None, String::new()),
    };
    if !img2img && f.boolean("enable_hr", false)? {
        super::hires::fields(shared, &f, &mut o)?;
    }
    let refiner = refiner_fields(shared, &f)?;
    let images = (0..batch_size * n_iter).map(|k| GenerateOptions { seed: seed.wrapping_add(k as u64), ..o.clone() }).collect();
    Ok(Parsed {
        job: GenJob { images, model, restore_model, controlnet, extra_parameters, refiner },
        batch_size,
        sampler_name: sampler.a1111_name().to_string(),
        scheduler: scheduler_label,
        requested_seed,
    })
}

/// A1111's `refiner_checkpoint` (a model from `/sdapi/v1/sd-models`; empty or "None" = no
/// refiner) and `refiner_switch_at` (default 0.8, in (0, 1)). That it is a refiner, and the base
/// an SDXL one, is checked when the job runs (the models are loaded then).
fn refiner_fields(shared: &Shared, f: &Fields) -> ApiResult<Option<(std::path::PathBuf, f32)>> {
    let name = f.string("refiner_checkpoint", "")?;
    if name.is_empty() || name == "None" {
        return Ok(None);
    }
    let switch = f.float("refiner_switch_at", 0.8)? as f32;
    if !(switch > 0.0 && switch < 1.0) {
        return Err(ApiError::field("refiner_switch_at", format!("{switch} must be in (0, 1): the fraction of the schedule the base runs, e.g. 0.8")));
    }
    let e = super::catalog::lookup(&shared.opts, &name).map_err(|e| ApiError::field("refiner_checkpoint", e))?;
    Ok(Some((e.path, switch)))
}

/// The image side of the model a request runs on: `override_settings.sd_model_checkpoint`'s
/// when it names a listed model, else the loaded one's ([`crate::weights::default_image_side`]).
fn default_side(shared: &Shared, model: Option<&str>) -> usize {
    let path = model.and_then(|name| super::catalog::lookup(&shared.opts, name).ok()).map(|e| e.path);
    let path = path.unwrap_or_else(|| shared.model.read().unwrap_or_else(|e| e.into_inner()).entry.path.clone());
    crate::weights::default_image_side(&path)
}

/// img2img's `init_images` (the first is used, at `width`×`height`, "Just resize"), `mask`
/// (white = repaint), `mask_blur`, `denoising_strength`, `inpainting_mask_invert`.
fn img2img_fields(f: &Fields, o: &mut GenerateOptions) -> ApiResult<()> {
    let init = f.array("init_images")?.filter(|a| !a.is_empty()).ok_or_else(|| ApiError::field("init_images", "img2img needs a base64 image in init_images"))?;
    let Value::String(b64) = &init[0] else {
        return Err(f.wrong("init_images", "an array of base64 strings", &init[0]));
    };
    refuse_if(init.len() > 1, "init_images", "one init image per request (A1111 cycles several over the batch); send one")?;
    let mut image = decode_b64_image("init_images[0]", b64)?;
    refuse_if(f.int("resize_mode", 0)? != 0, "resize_mode", "only 0 (Just resize) is implemented")?;
    let strength = f.float("denoising_strength", 0.75)?;
    if !(strength > 0.0 && strength <= 1.0) {
        return Err(ApiError::field("denoising_strength", format!("{strength} is outside (0, 1]")));
    }
    let fill = f.int("inpainting_fill", 0)?;
    refuse_if(fill > 1 || fill < 0, "inpainting_fill", "the masked area starts from the init image (\"original\", 1; 0 is taken as the same); latent noise/nothing are not implemented")?;
    let mut mask = match f.get("mask") {
        None => None,
        Some(Value::String(m)) => Some(decode_b64_image("mask", m)?),
        Some(v) => return Err(f.wrong("mask", "a base64 image", v)),
    };
    if let Some(m) = &mut mask {
        if (m.width, m.height) != (image.width, image.height) {
            return Err(ApiError::field("mask", format!("the mask is {}x{} but the init image is {}x{}: make them the same size", m.width, m.height, image.width, image.height)));
        }
        if f.int("inpainting_mask_invert", 0)? == 1 {
            m.rgb.iter_mut().for_each(|v| *v = 255 - *v);
        }
    }
    for img in [Some(&mut image), mask.as_mut()].into_iter().flatten() {
        if (img.width, img.height) != (o.width, o.height) {
            *img = crate::imageio::resize_rgb(img, o.width, o.height);
        }
    }
    if mask.is_some() {
        o.mask_blur = f.ranged("mask_blur", 4, 0, 64)? as usize;
    }
    o.strength = strength as f32;
    o.init_image = Some(image);
    o.mask = mask;
    Ok(())
}

/// `alwayson_scripts`: `controlnet` (one enabled unit, module none or canny, a model under
/// `--controlnet-dir`); any other script with arguments is refused.
fn alwayson_scripts(shared: &Shared, scripts: &Map<String, Value>, o: &mut GenerateOptions) -> ApiResult<(Option<std::path::PathBuf>, String)> {
    let mut out = (None, String::new());
    for (name, v) in scripts {
        let field = format!("alwayson_scripts.{name}");
        let args = match v {
            Value::Object(m) => match m.get("args") {
                Some(Value::Array(a)) => a.clone(),
                None | Some(Value::Null) => Vec::new(),
                Some(other) => return Err(ApiError::field(&format!("{field}.args"), format!("expected an array, got {}", kind_of(other)))),
            },
            Value::Null => Vec::new(),
            other => return Err(ApiError::field(&field, format!("expected an object with \"args\", got {}", kind_of(other)))),
        };
        if name.eq_ignore_ascii_case("controlnet") {
            let units: Vec<(usize, &Map<String, Value>)> = args
                .iter()
                .enumerate()
                .filter_map(|(i, a)| a.as_object().map(|m| (i, m)))
                .filter(|(_, m)| m.get("enabled").and_then(Value::as_bool).unwrap_or(true))
                .collect();
            refuse_if(units.len() > 1, &field, "one ControlNet unit at a time")?;
            if let Some((i, unit)) = units.first() {
                out = controlnet_unit(shared, &Fields { obj: unit, prefix: format!("{field}.args[{i}].") }, o)?;
            }
        } else if !args.is_empty() {
            return Err(ApiError::field(&field, format!("Pigment has no '{name}' script (it runs controlnet only)")));
        }
    }
    Ok(out)
}

fn controlnet_unit(shared: &Shared, f: &Fields, o: &mut GenerateOptions) -> ApiResult<(Option<std::path::PathBuf>, String)> {
    let model_name = f.string("model", "")?;
    let list = super::catalog::controlnets(shared.opts.controlnet_dir.as_deref());
    let bare = model_name.rsplit_once(" [").map(|(t, _)| t).unwrap_or(&model_name).trim().to_string();
    let Some((_, path)) = list.iter().find(|(n, p)| *n == bare || p.file_name().is_some_and(|f| f.to_string_lossy() == bare)) else {
        let have: Vec<&str> = list.iter().map(|(n, _)| n.as_str()).collect();
        return Err(ApiError::field(&f.name("model"), format!("no ControlNet '{model_name}' under --controlnet-dir (have: {})", if have.is_empty() { "none".into() } else { have.join(", ") })));
    };
    let key = if f.get("image").is_some() { "image" } else { "input_image" };
    let b64 = match f.get(key) {
        Some(Value::String(s)) => s.clone(),
        // sd-webui-controlnet also takes {"image": b64, "mask": b64}
        Some(Value::Object(m)) => m.get("image").and_then(Value::as_str).map(str::to_string).ok_or_else(|| ApiError::field(&f.name(key), "expected a base64 image"))?,
        Some(v) => return Err(f.wrong(key, "a base64 image", v)),
        None => match &o.init_image {
            // As sd-webui-controlnet: without its own image a unit uses the img2img image.
            Some(_) => String::new(),
            None => return Err(ApiError::field(&f.name("image"), "the ControlNet unit needs a base64 hint image")),
        },
    };
    let mut image = if b64.is_empty() { o.init_image.clone().expect("checked above") } else { decode_b64_image(&f.name(key), &b64)? };
    if (image.width, image.height) != (o.width, o.height) {
        image = crate::imageio::resize_rgb(&image, o.width, o.height);
    }
    let module = f.string("module", "none")?;
    match module.as_str() {
        "none" | "None" | "" => {}
        "canny" => {
            let (low, high) = (f.float("threshold_a", 100.0)? as f32, f.float("threshold_b", 200.0)? as f32);
            image = crate::imageio::canny_map(&image, low, high).map_err(|e| ApiError::field(&f.name("threshold_a"), e))?;
        }
        other => return Err(ApiError::field(&f.name("module"), format!("no preprocessor '{other}'; Pigment has none and canny (send a preprocessed hint with none)"))),
    }
    let balanced = match f.get("control_mode") {
        None => true,
        Some(Value::String(s)) => s == "Balanced",
        Some(_) => f.int("control_mode", 0)? == 0,
    };
    refuse_if(!balanced, &f.name("control_mode"), "only Balanced (0) is implemented")?;
    let mut c = ControlOptions::new(image);
    c.scale = f.float("weight", 1.0)? as f32;
    c.guidance_start = f.float("guidance_start", 0.0)? as f32;
    c.guidance_end = f.float("guidance_end", 1.0)? as f32;
    if !(0.0..=1.0).contains(&c.guidance_start) || !(c.guidance_start..=1.0).contains(&c.guidance_end) {
        return Err(ApiError::field(&f.name("guidance_start"), "need 0 <= guidance_start <= guidance_end <= 1"));
    }
    let extra = crate::pipeline::controlnet::a1111_parameters(&c, &bare, if module == "canny" { "canny" } else { "none" });
    o.control = Some(c);
    Ok((Some(path.clone()), extra))
}

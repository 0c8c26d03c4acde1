//! AUTOMATIC1111's `/sdapi/v1/*` routes, with its response shapes.

use super::{blocking, body_object, encode_images, timestamp};
use crate::serve::catalog;
use crate::serve::errors::{ApiError, ApiResult};
use crate::serve::jobs::queue::State as JobState;
use crate::serve::jobs::{Output, Work};
use crate::serve::request::{self, Fields, Parsed};
use crate::serve::Shared;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;

type Body = Result<Bytes, BytesRejection>;

pub async fn txt2img(State(shared): State<Arc<Shared>>, body: Body) -> ApiResult<Response> {
    generate(shared, body, false).await
}

pub async fn img2img(State(shared): State<Arc<Shared>>, body: Body) -> ApiResult<Response> {
    generate(shared, body, true).await
}

/// Parse (off the async threads: base64 images are decoded and resized there), queue, wait.
async fn generate(shared: Arc<Shared>, body: Body, img2img: bool) -> ApiResult<Response> {
    let obj = body_object(&shared, body)?;
    let (sh, parsed_obj) = (shared.clone(), obj.clone());
    let parsed = blocking(move || request::parse_a1111(&sh, &parsed_obj, img2img)).await?;
    let (id, out, parsed_meta) = run_parsed(&shared, parsed, if img2img { "img2img" } else { "txt2img" }).await?;
    let Output::Images(g) = &*out else { return Err(ApiError::internal("the worker answered a generation with no images")) };
    let meta = parsed_meta;
    let images = {
        let out = out.clone();
        blocking(move || match &*out {
            Output::Images(g) => encode_images(g),
            Output::Switched | Output::Upscaled(_) => Ok(Vec::new()),
        })
        .await?
    };
    let info = info_json(&meta, g, img2img);
    let mut echo = defaults(img2img);
    for (k, v) in obj {
        echo.insert(k, v);
    }
    if img2img {
        // as A1111 without include_init_images
        echo.insert("init_images".into(), Value::Null);
        echo.insert("mask".into(), Value::Null);
    }
    let body = json!({"images": images, "parameters": echo, "info": info.to_string()});
    Ok(with_job_header(Json(body).into_response(), id))
}

/// What the info JSON needs from the request once the job has taken the options.
pub struct Meta {
    pub first: crate::pipeline::GenerateOptions,
    pub batch_size: usize,
    pub sampler_name: String,
    pub scheduler: String,
    pub requested_seed: i64,
    pub has_mask: bool,
}

/// Queue a parsed request and wait for the worker's answer.
pub async fn run_parsed(shared: &Shared, parsed: Parsed, kind: &'static str) -> ApiResult<(u64, Arc<Output>, Meta)> {
    let Parsed { job, batch_size, sampler_name, scheduler, requested_seed } = parsed;
    let mut first = job.images[0].clone();
    // the images stay with the job; the info needs only the settings
    let has_mask = first.mask.is_some();
    (first.init_image, first.mask, first.control) = (None, None, None);
    let images = job.images.len();
    let (info, rx) = shared.queue.push(kind, images, Work::Generate(job))?;
    let out = rx.await.map_err(|_| ApiError::internal("the GPU worker stopped before answering"))??;
    Ok((info.id, out, Meta { first, batch_size, sampler_name, scheduler, requested_seed, has_mask }))
}

pub fn with_job_header(mut r: Response, id: u64) -> Response {
    if let Ok(v) = axum::http::HeaderValue::from_str(&id.to_string()) {
        r.headers_mut().insert("x-pigment-job", v);
    }
    r
}

/// A1111's processing defaults, echoed in `parameters` under the request's own fields.
fn defaults(img2img: bool) -> Map<String, Value> {
    let mut m = json!({
        "prompt": "", "negative_prompt": "", "styles": null, "seed": -1, "subseed": -1, "subseed_strength": 0,
        "seed_resize_from_h": -1, "seed_resize_from_w": -1, "sampler_name": null, "scheduler": null,
        "batch_size": 1, "n_iter": 1, "steps": 50, "cfg_scale": 7.0, "width": 512, "height": 512,
        "restore_faces": null, "tiling": null, "do_not_save_samples": false, "do_not_save_grid": false,
        "eta": null, "override_settings": null, "override_settings_restore_afterwards": true,
        "sampler_index": "Euler", "script_name": null, "send_images": true, "save_images": false,
        "alwayson_scripts": {}
    });
    let o = m.as_object_mut().expect("an object literal");
    if img2img {
        for (k, v) in [("denoising_strength", json!(0.75)), ("resize_mode", json!(0)), ("mask_blur", json!(4)), ("inpainting_fill", json!(0)), ("inpaint_full_res", json!(true)), ("inpainting_mask_invert", json!(0)), ("include_init_images", json!(false))] {
            o.insert(k.into(), v);
        }
    } else {
        o.insert("enable_hr".into(), json!(false));
        o.insert("denoising_strength".into(), Value::Null);
    }
    o.clone()
}

/// An f32 as the decimal it was typed as (0.6, not 0.6000000238).
fn short(x: f32) -> f64 {
    x.to_string().parse().unwrap_or(x as f64)
}

/// The `info` A1111 returns (as a JSON string) for a generation.
pub fn info_json(m: &Meta, g: &crate::serve::jobs::Generated, img2img: bool) -> Value {
    let o = &m.first;
    let n = g.images.len();
    let seeds: Vec<u64> = g.images.iter().map(|i| i.seed).collect();
    let first_seed = seeds.first().copied().unwrap_or(o.seed);
    let mut extra = Map::new();
    if o.sampler.supports_karras() {
        extra.insert("Schedule type".into(), json!(o.schedule.a1111_name()));
    }
    json!({
        "prompt": o.prompt,
        "all_prompts": vec![&o.prompt; n],
        "negative_prompt": o.negative_prompt,
        "all_negative_prompts": vec![&o.negative_prompt; n],
        "seed": first_seed,
        "all_seeds": seeds,
        "subseed": first_seed,
        "all_subseeds": seeds,
        "subseed_strength": 0,
        "width": o.width,
        "height": o.height,
        "sampler_name": m.sampler_name,
        "scheduler": m.scheduler,
        "cfg_scale": short(o.guidance),
        "steps": o.steps,
        "batch_size": m.batch_size,
        "restore_faces": false,
        "face_restoration_model": null,
        "sd_model_name": g.model,
        "sd_model_hash": null,
        "sd_vae_name": null,
        "sd_vae_hash": null,
        "seed_resize_from_w": -1,
        "seed_resize_from_h": -1,
        "denoising_strength": match &o.hires {
            Some(h) => json!(short(h.denoise)),
            None if img2img => json!(short(o.strength)),
            None => Value::Null,
        },
        "extra_generation_params": extra,
        "index_of_first_image": 0,
        "infotexts": g.images.iter().map(|i| i.parameters.clone()).collect::<Vec<_>>(),
        "styles": [],
        "job_timestamp": timestamp(std::time::SystemTime::now()),
        "clip_skip": o.clip_skip,
        "is_using_inpainting_conditioning": img2img && m.has_mask,
        "requested_seed": m.requested_seed,
        "interrupted": g.interrupted,
        "warnings": g.warnings,
        "version": concat!("pigment ", env!("CARGO_PKG_VERSION")),
    })
}

/// `GET /sdapi/v1/progress[?skip_current_image=true]`: the running job (A1111 has one global
/// state), plus `queue_length`.
pub async fn progress(State(shared): State<Arc<Shared>>, RawQuery(q): RawQuery) -> Json<Value> {
    let skip_image = q.as_deref().is_some_and(|q| q.split('&').any(|kv| kv == "skip_current_image=true" || kv == "skip_current_image=1"));
    let running = shared.running.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let queue_length = shared.queue.len();
    let Some(job) = running else {
        return Json(json!({
            "progress": 0.0, "eta_relative": 0.0,
            "state": {"skipped": false, "interrupted": false, "stopping_generation": false, "job": "", "job_count": 0,
                      "job_timestamp": timestamp(shared.started), "job_no": 0, "sampling_step": 0, "sampling_steps": 0},
            "current_image": null, "textinfo": null, "current_task": null, "queue_length": queue_length,
        }));
    };
    let s = job.snapshot();
    let preview = if skip_image { None } else { s.preview.as_deref().cloned() };
    Json(json!({
        "progress": s.progress(),
        "eta_relative": s.eta(),
        "state": {
            "skipped": shared.skip.load(Ordering::Relaxed),
            "interrupted": shared.interrupt.load(Ordering::Relaxed),
            "stopping_generation": false,
            "job": format!("task({})", job.id),
            "job_count": s.images,
            "job_timestamp": timestamp(job.created),
            "job_no": s.image,
            "sampling_step": s.step,
            "sampling_steps": s.steps,
        },
        "current_image": preview,
        "textinfo": if s.state == JobState::Running { Value::from(format!("image {}/{}, step {}/{}", s.image + 1, s.images, s.step, s.steps)) } else { Value::Null },
        "current_task": format!("task({})", job.id),
        "queue_length": queue_length,
    }))
}

/// Stop the running job: its current image is the latents so far, decoded; the rest of its
/// batch is not made. Queued jobs are not touched.
pub async fn interrupt(State(shared): State<Arc<Shared>>) -> Json<Value> {
    if shared.running.lock().unwrap_or_else(|e| e.into_inner()).is_some() {
        shared.interrupt.store(true, Ordering::SeqCst);
    }
    Json(json!({}))
}

/// Finish the running job's current image now and go on with the next of its batch.
pub async fn skip(State(shared): State<Arc<Shared>>) -> Json<Value> {
    if shared.running.lock().unwrap_or_else(|e| e.into_inner()).is_some() {
        shared.skip.store(true, Ordering::SeqCst);
    }
    Json(json!({}))
}

pub async fn get_options(State(shared): State<Arc<Shared>>) -> ApiResult<Json<Value>> {
    let m = shared.model.read().unwrap_or_else(|e| e.into_inner()).clone();
    let path = m.entry.path.clone();
    let sha = blocking(move || Ok(catalog::sha256(&path))).await?;
    Ok(Json(json!({
        "sd_model_checkpoint": catalog::titled(&m.entry, sha.as_deref()),
        "sd_checkpoint_hash": sha,
        "sd_vae": "Automatic",
        "CLIP_stop_at_last_layers": shared.clip_skip.load(Ordering::Relaxed),
        "samples_format": "png",
        "live_previews_enable": shared.opts.preview_every > 0,
        "show_progress_every_n_steps": shared.opts.preview_every,
        "show_progress_type": "Full",
        "eta_noise_seed_delta": 0,
        "sd_lora": "None",
    })))
}

/// `sd_model_checkpoint` switches the model (queued behind the jobs before it, answered once
/// loaded); `CLIP_stop_at_last_layers` sets the default clip skip. Other options are ignored.
pub async fn set_options(State(shared): State<Arc<Shared>>, body: Body) -> ApiResult<Json<Value>> {
    let obj = body_object(&shared, body)?;
    let f = Fields::new(&obj);
    let clip = if f.get("CLIP_stop_at_last_layers").is_some() { Some(f.ranged("CLIP_stop_at_last_layers", 1, 1, 12)? as usize) } else { None };
    if f.get("sd_model_checkpoint").is_some() {
        let title = f.string("sd_model_checkpoint", "")?;
        catalog::lookup(&shared.opts, &title).map_err(|e| ApiError::field("sd_model_checkpoint", e))?;
        let (_, rx) = shared.queue.push("options", 0, Work::SwitchModel(title))?;
        rx.await.map_err(|_| ApiError::internal("the GPU worker stopped before answering"))??;
    }
    if let Some(c) = clip {
        shared.clip_skip.store(c, Ordering::Relaxed);
    }
    Ok(Json(Value::Null))
}

/// A1111's listing with real hashes (computed on the first listing, off the async threads).
pub async fn sd_models(State(shared): State<Arc<Shared>>) -> ApiResult<Json<Value>> {
    let list = catalog::models(shared.opts.models_dir.as_deref(), shared.opts.model.as_deref());
    let rows: Vec<Value> = blocking(move || {
        Ok(list
            .iter()
            .map(|e| {
                let sha = catalog::sha256(&e.path);
                let short = sha.as_deref().map(|h| &h[..10]);
                json!({"title": catalog::titled(e, sha.as_deref()), "model_name": e.name, "hash": short, "sha256": sha, "filename": e.path.to_string_lossy(), "config": null})
            })
            .collect())
    })
    .await?;
    Ok(Json(Value::Array(rows)))
}

/// The latent upscalers `hr_upscaler` takes (pixel ones are in `/sdapi/v1/upscalers`).
pub async fn latent_upscale_modes() -> Json<Value> {
    Json(json!([{"name": "Latent"}, {"name": "Latent (nearest)"}]))
}

pub async fn samplers() -> Json<Value> {
    Json(Value::Array(
        crate::schedulers::SamplerKind::ALL
            .iter()
            .map(|k| {
                let mut options = Map::new();
                let auto = request::automatic_schedule(*k);
                if auto != crate::schedulers::SigmaSchedule::Normal {
                    options.insert("scheduler".into(), json!(auto.name()));
                }
                json!({"name": k.a1111_name(), "aliases": [k.name()], "options": options})
            })
            .collect(),
    ))
}

pub async fn schedulers() -> Json<Value> {
    Json(Value::Array(
        request::SCHEDULERS
            .iter()
            .map(|(name, label)| json!({"name": name, "label": label, "aliases": null, "default_rho": if *name == "karras" { 7.0 } else { -1.0 }, "need_inner_model": false}))
            .collect(),
    ))
}

pub async fn loras(State(shared): State<Arc<Shared>>) -> Json<Value> {
    Json(Value::Array(
        catalog::files(shared.opts.lora_dir.as_deref())
            .iter()
            .map(|(name, path)| json!({"name": name, "alias": name, "path": path.to_string_lossy(), "metadata": {}}))
            .collect(),
    ))
}

/// A1111's `/sdapi/v1/hypernetworks`: `[{name, path}]` from `--hypernetwork-dir`.
pub async fn hypernetworks(State(shared): State<Arc<Shared>>) -> Json<Value> {
    Json(Value::Array(
        catalog::files(shared.opts.hypernetwork_dir.as_deref()).iter().map(|(name, path)| json!({"name": name, "path": path.to_string_lossy()})).collect(),
    ))
}

pub async fn embeddings(State(shared): State<Arc<Shared>>) -> Json<Value> {
    let m = shared.model.read().unwrap_or_else(|e| e.into_inner()).clone();
    let entry = |vectors: usize| json!({"step": null, "sd_checkpoint": null, "sd_checkpoint_name": null, "shape": m.text_width, "vectors": vectors});
    let loaded: Map<String, Value> = m.embeddings_loaded.iter().map(|(n, v)| (n.clone(), entry(*v))).collect();
    let skipped: Map<String, Value> = m.embeddings_skipped.iter().map(|(n, why)| (n.clone(), json!({"step": null, "sd_checkpoint": null, "sd_checkpoint_name": null, "shape": null, "vectors": 0, "error": why}))).collect();
    Json(json!({"loaded": loaded, "skipped": skipped}))
}

pub async fn empty_list() -> Json<Value> {
    Json(json!([]))
}

pub async fn refresh() -> Json<Value> {
    // the lists are read from disk on every request
    Json(Value::Null)
}

pub async fn ping() -> Json<Value> {
    Json(json!({}))
}

pub async fn controlnet_models(State(shared): State<Arc<Shared>>) -> Json<Value> {
    let names: Vec<String> = catalog::controlnets(shared.opts.controlnet_dir.as_deref()).into_iter().map(|(n, _)| n).collect();
    Json(json!({"model_list": names}))
}

pub async fn controlnet_modules() -> Json<Value> {
    Json(json!({"module_list": ["none", "canny"]}))
}

/// `POST /sdapi/v1/png-info {"image": base64}`: the PNG's `parameters` text, its other text
/// chunks, and the parameters parsed as A1111's infotext.
pub async fn png_info(State(shared): State<Arc<Shared>>, body: Body) -> ApiResult<Json<Value>> {
    let obj = body_object(&shared, body)?;
    let b64 = Fields::new(&obj).string("image", "")?;
    if b64.is_empty() {
        return Err(ApiError::field("image", "send the image as base64"));
    }
    let chunks = blocking(move || {
        let data = b64.split_once(";base64,").map(|(_, d)| d).unwrap_or(&b64);
        let bytes = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, data.trim()).map_err(|e| ApiError::field("image", format!("not base64: {e}")))?;
        crate::imageio::png_text_chunks(&bytes).map_err(|e| ApiError::field("image", format!("not a readable image: {e}")))
    })
    .await?;
    let info = chunks.iter().find(|(k, _)| k == "parameters").map(|(_, v)| v.clone()).unwrap_or_default();
    let items: Map<String, Value> = chunks.iter().filter(|(k, _)| k != "parameters").map(|(k, v)| (k.clone(), json!(v))).collect();
    Ok(Json(json!({"info": info, "items": items, "parameters": parse_infotext(&info)})))
}

/// A1111's infotext → {"Prompt", "Negative prompt", "Steps", ...} (values as text, as
/// `parse_generation_parameters` reads them, without its type conversions).
pub fn parse_infotext(text: &str) -> Map<String, Value> {
    let mut out = Map::new();
    if text.is_empty() {
        return out;
    }
    let mut lines: Vec<&str> = text.lines().collect();
    let last = lines.last().copied().unwrap_or("");
    let params = if last.contains("Steps: ") {
        lines.pop();
        last
    } else {
        ""
    };
    let (mut prompt, mut negative, mut in_negative) = (Vec::new(), Vec::new(), false);
    for l in lines {
        if let Some(rest) = l.strip_prefix("Negative prompt:") {
            in_negative = true;
            negative.push(rest.trim_start());
        } else if in_negative {
            negative.push(l);
        } else {
            prompt.push(l);
        }
    }
    out.insert("Prompt".into(), json!(prompt.join("\n")));
    out.insert("Negative prompt".into(), json!(negative.join("\n")));
    let chars: Vec<char> = params.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        while i < chars.len() && (chars[i] == ' ' || chars[i] == ',') {
            i += 1;
        }
        let start = i;
        while i < chars.len() && chars[i] != ':' {
            i += 1;
        }
        let key: String = chars[start..i].iter().collect();
        i += 1;
        while i < chars.len() && chars[i] == ' ' {
            i += 1;
        }
        let mut value = String::new();
        if i < chars.len() && chars[i] == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' && i + 1 < chars.len() {
                    i += 1;
                }
                value.push(chars[i]);
                i += 1;
            }
            i += 1;
        } else {
            while i < chars.len() && chars[i] != ',' {
                value.push(chars[i]);
                i += 1;
            }
        }
        if !key.trim().is_empty() {
            out.insert(key.trim().to_string(), json!(value.trim()));
        }
    }
    out
}

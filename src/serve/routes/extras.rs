//! A1111's upscaler routes: `GET /sdapi/v1/upscalers` (the built-ins and the Real-ESRGAN files
//! under `--upscaler-dir`) and `POST /sdapi/v1/extra-single-image` (upscaling only).

use super::{b64, blocking, body_object};
use crate::serve::catalog;
use crate::serve::errors::{ApiError, ApiResult};
use crate::serve::jobs::{Output, UpscaleJob, Upscaler, Work};
use crate::serve::request::{decode_b64_image, Fields};
use crate::serve::Shared;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use std::sync::Arc;

/// A1111's built-in upscalers (their `scale` is A1111's placeholder 4).
const BUILT_IN: [&str; 3] = ["None", "Lanczos", "Nearest"];

pub async fn upscalers(State(shared): State<Arc<Shared>>) -> Json<Value> {
    let mut list: Vec<Value> = BUILT_IN.iter().map(|n| json!({"name": n, "model_name": null, "model_path": null, "model_url": null, "scale": 4})).collect();
    for u in catalog::upscalers(shared.opts.upscaler_dir.as_deref()) {
        list.push(json!({"name": u.name, "model_name": "RRDBNet", "model_path": u.path.to_string_lossy(), "model_url": null, "scale": u.scale}));
    }
    Json(Value::Array(list))
}

/// The upscaler a request names: a built-in or a file stem under `--upscaler-dir`.
fn find_upscaler(shared: &Shared, field: &str, name: &str) -> ApiResult<Upscaler> {
    match name.trim().to_ascii_lowercase().as_str() {
        "" | "none" => return Ok(Upscaler::None),
        "lanczos" => return Ok(Upscaler::Lanczos),
        "nearest" => return Ok(Upscaler::Nearest),
        _ => {}
    }
    let list = catalog::upscalers(shared.opts.upscaler_dir.as_deref());
    if let Some(u) = list.iter().find(|u| u.name == name.trim() || u.path.file_name().is_some_and(|f| f.to_string_lossy() == name.trim())) {
        return Ok(Upscaler::Model(u.path.clone()));
    }
    let have: Vec<String> = BUILT_IN.iter().map(|s| s.to_string()).chain(list.iter().map(|u| u.name.clone())).collect();
    let hint = if shared.opts.upscaler_dir.is_none() { " (start the server with --upscaler-dir DIR for model upscalers)" } else { "" };
    Err(ApiError::field(field, format!("no upscaler '{name}' (have: {}; see /sdapi/v1/upscalers){hint}", have.join(", "))))
}

fn parse(shared: &Shared, obj: &serde_json::Map<String, Value>) -> ApiResult<UpscaleJob> {
    let f = Fields::new(obj);
    let refuse = |cond: bool, field: &str, why: &str| if cond { Err(ApiError::field(field, format!("Pigment cannot honour this: {why}"))) } else { Ok(()) };
    refuse(f.int("resize_mode", 0)? != 0, "resize_mode", "only 0 (scale by upscaling_resize) is implemented")?;
    refuse(f.float("gfpgan_visibility", 0.0)? != 0.0, "gfpgan_visibility", "Pigment has no face restoration model")?;
    refuse(f.float("codeformer_visibility", 0.0)? != 0.0, "codeformer_visibility", "Pigment has no face restoration model")?;
    let second = f.string("upscaler_2", "None")?;
    refuse(f.float("extras_upscaler_2_visibility", 0.0)? != 0.0 && !second.eq_ignore_ascii_case("none"), "upscaler_2", "blending a second upscaler is not implemented")?;
    let by = f.float("upscaling_resize", 2.0)?;
    if !(by > 0.0 && by <= 16.0) {
        return Err(ApiError::field("upscaling_resize", format!("{by}: give a factor in (0, 16]")));
    }
    let upscaler = find_upscaler(shared, "upscaler_1", &f.string("upscaler_1", "None")?)?;
    let image = match f.get("image") {
        Some(Value::String(s)) if !s.is_empty() => decode_b64_image("image", s)?,
        _ => return Err(ApiError::field("image", "required: the image as base64 (PNG or JPEG)")),
    };
    let (w, h) = ((image.width as f64 * by).round(), (image.height as f64 * by).round());
    if w * h > 8192.0 * 8192.0 {
        return Err(ApiError::field("upscaling_resize", format!("{}x{} by {by} would be {w}x{h}; at most 8192x8192 pixels", image.width, image.height)));
    }
    Ok(UpscaleJob { image, upscaler, by: by as f32 })
}

pub async fn extra_single_image(State(shared): State<Arc<Shared>>, body: Result<Bytes, BytesRejection>) -> ApiResult<Response> {
    let obj = body_object(&shared, body)?;
    let sh = shared.clone();
    let job = blocking(move || parse(&sh, &obj)).await?;
    let (info, rx) = shared.queue.push("extras", 1, Work::Upscale(job))?;
    let out = rx.await.map_err(|_| ApiError::internal("the GPU worker stopped before answering"))??;
    let image = blocking(move || match &*out {
        Output::Upscaled(img) => crate::imageio::encode_png(img, "").map(|p| b64(&p)).map_err(|e| ApiError::internal(format!("PNG encoding: {e}"))),
        _ => Err(ApiError::internal("the worker answered an upscale with no image")),
    })
    .await?;
    Ok(super::a1111::with_job_header(Json(json!({"html_info": "", "image": image})).into_response(), info.id))
}

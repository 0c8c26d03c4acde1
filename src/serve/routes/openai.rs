//! OpenAI's `POST /v1/images/generations` (`prompt`, `n`, `size`, `response_format`
//! b64_json), errors in OpenAI's shape. `model` switches to a model of `/sdapi/v1/sd-models`
//! when it names one (otherwise, e.g. `dall-e-3`, it is ignored); Pigment extras: `negative_prompt`,
//! `seed`, `steps` (default 20), `cfg_scale`, `sampler_name`, `scheduler`.

use super::a1111::run_parsed;
use super::{blocking, body_object, encode_images};
use crate::serve::catalog;
use crate::serve::errors::{ApiError, ApiResult};
use crate::serve::jobs::Output;
use crate::serve::request::{self, Fields};
use crate::serve::Shared;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};
use std::sync::Arc;

pub async fn generations(State(shared): State<Arc<Shared>>, body: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    run(shared, body).await.map_err(ApiError::openai)
}

async fn run(shared: Arc<Shared>, body: Result<Bytes, BytesRejection>) -> ApiResult<Response> {
    let obj = body_object(&shared, body)?;
    let f = Fields::new(&obj);
    let prompt = f.string("prompt", "")?;
    if prompt.trim().is_empty() {
        return Err(ApiError::field("prompt", "required: describe the image"));
    }
    let n = f.ranged("n", 1, 1, 10)?;
    // No size: the model's own (parse_a1111's default), as with A1111's fields.
    let size = match f.get("size") {
        Some(_) => {
            let size = f.string("size", "")?;
            let wh = size.split_once('x').and_then(|(w, h)| Some((w.trim().parse::<i64>().ok()?, h.trim().parse::<i64>().ok()?)));
            Some(wh.ok_or_else(|| ApiError::field("size", format!("'{size}' is not WIDTHxHEIGHT (e.g. 512x512)")))?)
        }
        None => None,
    };
    let format = f.string("response_format", "b64_json")?;
    if format != "b64_json" {
        return Err(ApiError::field("response_format", format!("'{format}' is not offered: Pigment keeps no image files to link to; use b64_json")));
    }
    // An A1111 request with the same meaning, so both paths check and generate alike.
    let mut a = Map::new();
    a.insert("prompt".into(), json!(prompt));
    a.insert("batch_size".into(), json!(n));
    if let Some((w, h)) = size {
        a.insert("width".into(), json!(w));
        a.insert("height".into(), json!(h));
    }
    a.insert("steps".into(), json!(20));
    for k in ["negative_prompt", "seed", "steps", "cfg_scale", "sampler_name", "scheduler"] {
        if let Some(v) = f.get(k) {
            a.insert(k.into(), v.clone());
        }
    }
    if let Some(model) = f.get("model").and_then(Value::as_str) {
        let list = catalog::models(shared.opts.models_dir.as_deref(), shared.opts.model.as_deref());
        if catalog::find(&list, model).is_some() {
            a.insert("override_settings".into(), json!({"sd_model_checkpoint": model}));
        }
    }
    let sh = shared.clone();
    let parsed = blocking(move || request::parse_a1111(&sh, &a, false))
        .await
        .map_err(|mut e| {
            // name the OpenAI field the A1111 one came from
            if matches!(e.field.as_deref(), Some("width" | "height")) {
                e.message = format!("size: {}", e.message);
                e.field = Some("size".into());
            } else if e.field.as_deref() == Some("batch_size") {
                e.field = Some("n".into());
            }
            e
        })?;
    let (id, out, _) = run_parsed(&shared, parsed, "openai").await?;
    let images = blocking(move || match &*out {
        Output::Images(g) => encode_images(g),
        Output::Switched | Output::Upscaled(_) => Ok(Vec::new()),
    })
    .await?;
    let created = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let data: Vec<Value> = images.into_iter().map(|b| json!({"b64_json": b, "revised_prompt": prompt})).collect();
    Ok(super::a1111::with_job_header(Json(json!({"created": created, "data": data})).into_response(), id))
}

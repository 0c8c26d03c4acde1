//! The routes, and what they share: reading a JSON body, encoding images.

pub mod a1111;
pub mod extras;
pub mod openai;
pub mod pigment;

use super::errors::{ApiError, ApiResult};
use super::{auth, oversize, Shared};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::{middleware, Router};
use base64::Engine;
use serde_json::{Map, Value};
use std::sync::Arc;

/// `--cors-origin`: answers preflights (before `--api-key` is checked: browsers send them
/// without the key) and lets pages from those origins read the answers, 401s included.
pub fn cors_layer(origins: &[String]) -> anyhow::Result<Option<tower_http::cors::CorsLayer>> {
    use axum::http::{header, HeaderValue, Method};
    use tower_http::cors::{AllowOrigin, CorsLayer};
    if origins.is_empty() {
        return Ok(None);
    }
    let allow = if origins.iter().any(|o| o.trim() == "*") {
        AllowOrigin::any()
    } else {
        let list = origins
            .iter()
            .map(|o| {
                let o = o.trim().trim_end_matches('/');
                let host = o.strip_prefix("http://").or_else(|| o.strip_prefix("https://"));
                if host.is_none_or(|h| h.is_empty() || h.contains('/')) {
                    anyhow::bail!("--cors-origin {o}: give an origin as a browser sends it (scheme://host[:port], e.g. http://192.168.1.5:8080), or *");
                }
                HeaderValue::from_str(o).map_err(|_| anyhow::anyhow!("--cors-origin {o}: not a valid origin"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        AllowOrigin::list(list)
    };
    Ok(Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
            .expose_headers([header::HeaderName::from_static("x-pigment-job")])
            .max_age(std::time::Duration::from_secs(600)),
    ))
}

pub fn router(shared: Arc<Shared>) -> Router {
    let limit = shared.opts.body_limit;
    let cors = cors_layer(&shared.opts.cors_origins).ok().flatten();
    let router = Router::new()
        .route("/sdapi/v1/txt2img", post(a1111::txt2img))
        .route("/sdapi/v1/img2img", post(a1111::img2img))
        .route("/sdapi/v1/progress", get(a1111::progress))
        .route("/sdapi/v1/interrupt", post(a1111::interrupt))
        .route("/sdapi/v1/skip", post(a1111::skip))
        .route("/sdapi/v1/options", get(a1111::get_options).post(a1111::set_options))
        .route("/sdapi/v1/sd-models", get(a1111::sd_models))
        .route("/sdapi/v1/samplers", get(a1111::samplers))
        .route("/sdapi/v1/schedulers", get(a1111::schedulers))
        .route("/sdapi/v1/loras", get(a1111::loras))
        .route("/sdapi/v1/hypernetworks", get(a1111::hypernetworks))
        .route("/sdapi/v1/embeddings", get(a1111::embeddings))
        .route("/sdapi/v1/upscalers", get(extras::upscalers))
        .route("/sdapi/v1/extra-single-image", post(extras::extra_single_image))
        .route("/sdapi/v1/latent-upscale-modes", get(a1111::latent_upscale_modes))
        .route("/sdapi/v1/sd-vae", get(a1111::empty_list))
        .route("/sdapi/v1/prompt-styles", get(a1111::empty_list))
        .route("/sdapi/v1/refresh-checkpoints", post(a1111::refresh))
        .route("/sdapi/v1/refresh-loras", post(a1111::refresh))
        .route("/sdapi/v1/png-info", post(a1111::png_info))
        .route("/controlnet/model_list", get(a1111::controlnet_models))
        .route("/controlnet/module_list", get(a1111::controlnet_modules))
        .route("/internal/ping", get(a1111::ping))
        .route("/v1/images/generations", post(openai::generations))
        .route("/pigment/v1/jobs", get(pigment::list).post(pigment::submit))
        .route("/pigment/v1/jobs/{id}", get(pigment::job))
        .route("/pigment/v1/jobs/{id}/events", get(pigment::events))
        .route("/", get(pigment::root))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(shared.clone(), auth::require_key))
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn_with_state(shared.clone(), oversize::refuse_oversized));
    // outermost: a preflight is answered before the key check and the body limits
    match cors {
        Some(c) => router.layer(c).with_state(shared),
        None => router.with_state(shared),
    }
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("no route {} (A1111 routes are under /sdapi/v1/, OpenAI's at /v1/images/generations, Pigment's under /pigment/v1/)", uri.path()))
}

/// The request body as a JSON object: 413 over the limit, 400 when it is not JSON, 422 when it
/// is not an object.
pub fn body_object(shared: &Shared, body: Result<Bytes, BytesRejection>) -> ApiResult<Map<String, Value>> {
    let bytes = body.map_err(|r| {
        if r.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            oversize::too_large(shared)
        } else {
            ApiError::new(r.status(), format!("cannot read the request body: {}", r.body_text()))
        }
    })?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request("empty request body: send a JSON object"));
    }
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(other) => Err(ApiError::field("body", format!("expected a JSON object, got {}", match other {
            Value::Array(_) => "an array",
            Value::String(_) => "a string",
            Value::Number(_) => "a number",
            Value::Bool(_) => "a boolean",
            _ => "null",
        }))),
        Err(e) => Err(ApiError::bad_request(format!("the request body is not valid JSON: {e}"))),
    }
}

pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Run CPU work (image decoding, PNG encoding) off the async threads.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> ApiResult<T> + Send + 'static) -> ApiResult<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ApiError::internal(format!("a request task failed: {e}")))?
}

/// The generated images as base64 PNGs carrying their infotexts.
pub fn encode_images(g: &super::jobs::Generated) -> ApiResult<Vec<String>> {
    g.images
        .iter()
        .map(|i| crate::imageio::encode_png(&i.image, &i.parameters).map(|p| b64(&p)).map_err(|e| ApiError::internal(format!("PNG encoding: {e}"))))
        .collect()
}

/// `YYYYMMDDhhmmss` in UTC (A1111's `job_timestamp`).
pub fn timestamp(t: std::time::SystemTime) -> String {
    let secs = t.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0) as i64;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // Howard Hinnant's civil_from_days
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    format!("{y:04}{m:02}{d:02}{:02}{:02}{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

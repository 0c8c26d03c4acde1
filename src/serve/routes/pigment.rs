//! Pigment's own routes: submit a job without waiting (`POST /pigment/v1/jobs`, an A1111
//! txt2img/img2img body), its state and images (`GET /pigment/v1/jobs/{id}`), the queue
//! (`GET /pigment/v1/jobs`) and a Server-Sent Events stream of its progress and previews
//! (`GET /pigment/v1/jobs/{id}/events`).

use super::{blocking, body_object, encode_images};
use crate::serve::errors::{ApiError, ApiResult};
use crate::serve::jobs::queue::{JobInfo, Status};
use crate::serve::jobs::{Output, Work};
use crate::serve::request;
use crate::serve::Shared;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::IntoResponse;
use axum::Json;
use serde_json::{json, Value};
use std::convert::Infallible;
use std::sync::Arc;

pub async fn root() -> Json<Value> {
    Json(json!({
        "pigment": env!("CARGO_PKG_VERSION"),
        "a1111": "/sdapi/v1/ (txt2img, img2img, progress, interrupt, skip, options, sd-models, samplers, schedulers, loras, hypernetworks, embeddings, upscalers, extra-single-image, png-info)",
        "openai": "/v1/images/generations",
        "jobs": "/pigment/v1/jobs, /pigment/v1/jobs/{id}, /pigment/v1/jobs/{id}/events",
    }))
}

fn status_json(info: &JobInfo, s: &Status, position: Option<usize>) -> Value {
    json!({
        "id": info.id,
        "kind": info.kind,
        "state": s.state.name(),
        "position": position,
        "progress": s.progress(),
        "eta_relative": s.eta(),
        "image": s.image,
        "images": s.images,
        "step": s.step,
        "steps": s.steps,
        "interrupted": s.interrupted,
        "error": s.error,
    })
}

/// Place in the queue (0 = next), for queued jobs.
fn position(shared: &Shared, id: u64) -> Option<usize> {
    shared.queue.waiting().iter().position(|&w| w == id)
}

fn parse_id(id: &str) -> ApiResult<u64> {
    id.parse().map_err(|_| ApiError::not_found(format!("job id '{id}' is not a number (ids come from POST /pigment/v1/jobs or the x-pigment-job header)")))
}

fn find(shared: &Shared, id: &str) -> ApiResult<Arc<JobInfo>> {
    let n = parse_id(id)?;
    shared.queue.job(n).ok_or_else(|| ApiError::not_found(format!("no job {n} (finished jobs are kept for the last 64)")))
}

/// `POST /pigment/v1/jobs`: an A1111 body (img2img when it has `init_images`); 202 with the id.
pub async fn submit(State(shared): State<Arc<Shared>>, body: Result<Bytes, BytesRejection>) -> ApiResult<impl IntoResponse> {
    let obj = body_object(&shared, body)?;
    let img2img = obj.get("init_images").is_some_and(|v| !v.is_null());
    let sh = shared.clone();
    let parsed = blocking(move || request::parse_a1111(&sh, &obj, img2img)).await?;
    let images = parsed.job.images.len();
    let (info, _rx) = shared.queue.push(if img2img { "img2img" } else { "txt2img" }, images, Work::Generate(parsed.job))?;
    let s = info.snapshot();
    Ok((StatusCode::ACCEPTED, Json(status_json(&info, &s, position(&shared, info.id)))))
}

pub async fn list(State(shared): State<Arc<Shared>>) -> Json<Value> {
    let running = shared.running.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(|j| j.id);
    let waiting = shared.queue.waiting();
    let jobs: Vec<Value> = shared
        .queue
        .jobs()
        .iter()
        .map(|j| {
            let s = j.snapshot();
            json!({"id": j.id, "kind": j.kind, "state": s.state.name(), "position": waiting.iter().position(|&w| w == j.id)})
        })
        .collect();
    Json(json!({"queue_length": waiting.len(), "running": running, "jobs": jobs}))
}

/// A job's state; once done also its images (base64 PNG with infotexts), infotexts and seeds.
pub async fn job(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let info = find(&shared, &id)?;
    let s = info.snapshot();
    let mut v = status_json(&info, &s, position(&shared, info.id));
    if let Some(out) = s.result.clone() {
        if let Output::Images(g) = &*out {
            let (infotexts, seeds): (Vec<String>, Vec<u64>) = g.images.iter().map(|i| (i.parameters.clone(), i.seed)).unzip();
            let images = blocking(move || match &*out {
                Output::Images(g) => encode_images(g),
                Output::Switched | Output::Upscaled(_) => Ok(Vec::new()),
            })
            .await?;
            let o = v.as_object_mut().expect("an object");
            o.insert("images".into(), json!(images));
            o.insert("infotexts".into(), json!(infotexts));
            o.insert("seeds".into(), json!(seeds));
        }
    }
    Ok(Json(v))
}

/// SSE: a `progress` event whenever the job's state changes (with `current_image`, a base64 PNG
/// preview, when a new one exists), then one `done` or `failed` event, and the stream ends.
pub async fn events(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> ApiResult<impl IntoResponse> {
    let info = find(&shared, &id)?;
    let rx = info.status.subscribe();
    struct St {
        rx: tokio::sync::watch::Receiver<Status>,
        info: Arc<JobInfo>,
        shared: Arc<Shared>,
        first: bool,
        done: bool,
        preview_sent: Option<usize>,
    }
    let st = St { rx, info, shared, first: true, done: false, preview_sent: None };
    let stream = futures_util::stream::unfold(st, |mut st| async move {
        if st.done {
            return None;
        }
        if !st.first && st.rx.changed().await.is_err() {
            return None;
        }
        st.first = false;
        let s = st.rx.borrow_and_update().clone();
        let mut v = status_json(&st.info, &s, position(&st.shared, st.info.id));
        if let Some(p) = &s.preview {
            if st.preview_sent != Some(s.preview_step) {
                st.preview_sent = Some(s.preview_step);
                v.as_object_mut().expect("an object").insert("current_image".into(), json!(p.as_str()));
            }
        }
        st.done = s.state.finished();
        let name = if st.done { s.state.name() } else { "progress" };
        Some((Ok::<_, Infallible>(Event::default().event(name).data(v.to_string())), st))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

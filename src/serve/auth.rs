//! `--api-key`: every route needs `Authorization: Bearer KEY` (or HTTP Basic with KEY as the
//! password, which A1111 clients such as SillyTavern send for `--api-auth user:KEY`).

use super::errors::ApiError;
use super::Shared;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use std::sync::Arc;

/// Equal-time comparison, so the key cannot be guessed byte by byte from response times.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

fn authorized(header: Option<&str>, key: &str) -> bool {
    let Some(h) = header.map(str::trim) else { return false };
    if let Some(token) = h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")) {
        return same(token.trim().as_bytes(), key.as_bytes());
    }
    if let Some(b64) = h.strip_prefix("Basic ").or_else(|| h.strip_prefix("basic ")) {
        if let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(b64.trim()) {
            let pass = raw.iter().position(|&c| c == b':').map(|i| &raw[i + 1..]).unwrap_or(&raw[..]);
            return same(pass, key.as_bytes());
        }
    }
    false
}

pub async fn require_key(State(shared): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let Some(key) = shared.opts.api_key.as_deref().filter(|k| !k.is_empty()) else {
        return next.run(req).await;
    };
    let header = req.headers().get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    if authorized(header, key) {
        return next.run(req).await;
    }
    let mut r = ApiError::new(StatusCode::UNAUTHORIZED, "this server needs its API key: send `Authorization: Bearer KEY` (the key given to `pigment serve --api-key`)").into_response();
    r.headers_mut().insert(axum::http::header::WWW_AUTHENTICATE, axum::http::HeaderValue::from_static("Bearer"));
    r
}

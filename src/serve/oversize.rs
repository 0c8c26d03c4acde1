//! Bodies over `--body-limit-mb` get a 413 that the client can read. A server that answers
//! while the client is still uploading and then closes the connection makes the client see a
//! broken pipe instead of the error, so a declared-oversized body is read to its end and thrown
//! away first (up to [`DRAIN_CAP`]; beyond that the connection is closed, as before).

use super::errors::ApiError;
use super::Shared;
use axum::extract::{Request, State};
use axum::http::{header::CONTENT_LENGTH, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use std::sync::Arc;

/// Larger declared bodies are refused without reading them.
pub const DRAIN_CAP: u64 = 1 << 30;

pub fn too_large(shared: &Shared) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the request body is over this server's limit of {} MiB (`pigment serve --body-limit-mb N`)", shared.opts.body_limit >> 20),
    )
}

pub async fn refuse_oversized(State(shared): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let declared = req.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|s| s.trim().parse::<u64>().ok());
    match declared {
        Some(n) if n > shared.opts.body_limit as u64 => {
            if n <= DRAIN_CAP {
                let mut body = req.into_body().into_data_stream();
                while let Some(Ok(_)) = body.next().await {}
            }
            too_large(&shared).into_response()
        }
        _ => next.run(req).await,
    }
}

//! Errors as HTTP answers: a status, a message naming the field (or thing) and the fix, and the
//! field itself. A1111 routes answer `{"error", "detail", "field"}` (`detail` as FastAPI does);
//! OpenAI routes answer OpenAI's `{"error": {"message", "type", "param", "code"}}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// The request field at fault, when there is one.
    pub field: Option<String>,
    /// Answer in OpenAI's error shape.
    pub openai: bool,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into(), field: None, openai: false }
    }

    /// 422: the field's value cannot be used; `message` says why and what would work.
    pub fn field(field: &str, message: impl std::fmt::Display) -> ApiError {
        ApiError { status: StatusCode::UNPROCESSABLE_ENTITY, message: format!("{field}: {message}"), field: Some(field.to_string()), openai: false }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }

    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }

    pub fn openai(mut self) -> ApiError {
        self.openai = true;
        self
    }

    /// A library error from a job: what the request asked for (a LoRA tag with no file, a size
    /// over the adapter's limits, too few steps for the strength) is 422; the rest is the
    /// server's or the GPU's fault, 500.
    pub fn from_library(e: &crate::Error) -> ApiError {
        use crate::Error as E;
        let status = match e {
            E::Unsupported(_) | E::Weights(_) | E::BindingTooLarge { .. } | E::BufferTooLarge { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status.as_u16(), self.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = if self.openai {
            let kind = if self.status.is_client_error() { "invalid_request_error" } else { "server_error" };
            json!({"error": {"message": self.message, "type": kind, "param": self.field, "code": null}})
        } else {
            let reason = self.status.canonical_reason().unwrap_or("Error");
            json!({"error": reason, "detail": self.message, "field": self.field})
        };
        (self.status, axum::Json(body)).into_response()
    }
}

pub type ApiResult<T> = std::result::Result<T, ApiError>;

//! The one place where errors become HTTP statuses and `{"error", "reason"}` bodies.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use cooper_actors::BarrelError;
use cooper_protocols::document::DocumentError;
use cooper_protocols::ids::IdError;
use cooper_protocols::path::PathError;
use cooper_protocols::topic::FilterError;
use serde_json::json;

use super::JsonLine;

/// An error answered to an HTTP client: a status, a stable kind and a human reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The stable kind (`bad_request`, `not_found`, `conflict`, …).
    pub kind: &'static str,
    /// What went wrong, for people.
    pub reason: String,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, reason: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            reason: reason.into(),
        }
    }

    /// 400: input the node refuses.
    pub fn bad_request(reason: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", reason)
    }

    /// 401: no or bad credentials.
    pub fn unauthorized(reason: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", reason)
    }

    /// 403: credentials without the right.
    pub fn forbidden(reason: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", reason)
    }

    /// 404.
    pub fn not_found(reason: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", reason)
    }

    /// 405: the path exists, the method does not.
    pub fn method_not_allowed(reason: impl Into<String>) -> Self {
        Self::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", reason)
    }

    /// 409: a stale or missing revision.
    pub fn conflict(reason: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", reason)
    }

    /// 413.
    pub fn too_large(reason: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", reason)
    }

    /// 415.
    pub fn unsupported_media_type(reason: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            reason,
        )
    }

    /// 500: a failure of the node itself (logged at error).
    pub fn internal(reason: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", reason)
    }

    /// 503.
    pub fn unavailable(reason: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", reason)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind, self.reason)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        if self.status.is_server_error() {
            tracing::error!(kind = self.kind, reason = %self.reason, "request failed");
        } else {
            tracing::debug!(kind = self.kind, reason = %self.reason, "request refused");
        }
        let mut res = HttpResponse::build(self.status);
        if self.status == StatusCode::UNAUTHORIZED {
            res.insert_header(("WWW-Authenticate", "Bearer"));
        }
        res.json_line(json!({ "error": self.kind, "reason": self.reason }))
    }
}

impl From<BarrelError> for ApiError {
    fn from(e: BarrelError) -> Self {
        let reason = match &e {
            BarrelError::NotFound(r) => r.clone(),
            other => other.to_string(),
        };
        let status = match &e {
            BarrelError::NotFound(_) => StatusCode::NOT_FOUND,
            BarrelError::Conflict(_) => StatusCode::CONFLICT,
            BarrelError::BadRequest(_) => StatusCode::BAD_REQUEST,
            BarrelError::AlreadyExists(_) => StatusCode::PRECONDITION_FAILED,
            BarrelError::Closed => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self::new(status, e.kind(), reason)
    }
}

impl From<crate::node::NodeError> for ApiError {
    fn from(e: crate::node::NodeError) -> Self {
        match e {
            crate::node::NodeError::Barrel(b) => b.into(),
            other => Self::unavailable(other.to_string()),
        }
    }
}

macro_rules! bad_request_from {
    ($($t:ty),*) => {$(
        impl From<$t> for ApiError {
            fn from(e: $t) -> Self {
                Self::bad_request(e.to_string())
            }
        }
    )*};
}

bad_request_from!(IdError, DocumentError, PathError, FilterError);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn barrel_errors_map_to_statuses() {
        let cases = [
            (BarrelError::not_found("missing"), 404, "not_found"),
            (BarrelError::Conflict("x".into()), 409, "conflict"),
            (BarrelError::BadRequest("x".into()), 400, "bad_request"),
            (BarrelError::AlreadyExists("b".into()), 412, "file_exists"),
            (BarrelError::Closed, 503, "unavailable"),
            (BarrelError::Storage("disk".into()), 500, "internal"),
        ];
        for (e, status, kind) in cases {
            let api = ApiError::from(e);
            assert_eq!((api.status.as_u16(), api.kind), (status, kind));
        }
    }
}

//! RFC 7807 problem details (`application/problem+json`): `type`, `title`, `status`, `detail`, and `parameter`
//! naming the offending query parameter or body field of a 400.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

pub const CONTENT_TYPE: &str = "application/problem+json";
const TYPE_BASE: &str = "https://datastorage.kubernaut.ai/problems/";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub type_: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameter: Option<String>,
}

impl Problem {
    fn new(status: StatusCode, slug: &str, title: &str, detail: impl Into<String>) -> Self {
        Self {
            type_: format!("{TYPE_BASE}{slug}"),
            title: title.to_string(),
            status: status.as_u16(),
            detail: detail.into(),
            parameter: None,
        }
    }

    /// 400 naming the parameter (query parameter, path segment or body field).
    pub fn bad_parameter(parameter: &str, detail: impl Into<String>) -> Self {
        let mut p = Self::new(
            StatusCode::BAD_REQUEST,
            "invalid-parameter",
            "Invalid parameter",
            detail,
        );
        p.parameter = Some(parameter.to_string());
        p
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "bad-request",
            "Bad request",
            detail,
        )
    }

    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Unauthorized",
            detail,
        )
    }

    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden", detail)
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", "Not found", detail)
    }

    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "Service unavailable",
            detail,
        )
    }

    /// 429: this caller has too many requests in progress.
    pub fn too_many_requests(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too-many-requests",
            "Too many requests",
            detail,
        )
    }

    /// 413: the request body is larger than the endpoint accepts.
    pub fn too_large(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload-too-large",
            "Payload too large",
            detail,
        )
    }

    /// 408: the request (body) did not arrive in time.
    pub fn request_timeout(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "request-timeout",
            "Request timeout",
            detail,
        )
    }

    /// The problem for an error status produced outside the handlers (routing, limits, timeouts).
    pub fn from_status(status: StatusCode) -> Self {
        match status.as_u16() {
            404 => Self::not_found("no such endpoint"),
            405 => Self::new(
                status,
                "method-not-allowed",
                "Method not allowed",
                "this endpoint does not accept this method (see the Allow header and /openapi.json)",
            ),
            408 => Self::request_timeout("the request did not arrive in time"),
            413 => Self::too_large("the request body is too large"),
            431 => Self::new(
                status,
                "headers-too-large",
                "Request header fields too large",
                "the request headers are too large",
            ),
            503 => Self::unavailable("the request was not answered in time; retry shortly"),
            _ => Self::new(
                status,
                "error",
                status.canonical_reason().unwrap_or("Error"),
                status.canonical_reason().unwrap_or("error").to_string(),
            ),
        }
    }

    pub fn internal(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal server error",
            detail,
        )
    }

    pub fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// Bounded label of `datastorage_query_total{status}`.
    pub fn metric_status(&self) -> &'static str {
        match self.status {
            401 => "unauthorized",
            403 => "forbidden",
            429 => "throttled",
            400..=499 => "client_error",
            _ => "server_error",
        }
    }
}

impl From<crate::store::StoreError> for Problem {
    fn from(e: crate::store::StoreError) -> Self {
        tracing::warn!(error = %e, "query failed in the store");
        match e.kind() {
            "pool_timeout" | "connection" => {
                Problem::unavailable(format!("the database is not reachable ({})", e.kind()))
            }
            _ => Problem::internal("the query failed in the database; see the operator's log"),
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = self.status_code();
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut resp = (status, body).into_response();
        let headers = resp.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"datastorage\""),
            );
        }
        resp
    }
}

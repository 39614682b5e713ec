//! Token authentication: `Authorization: Bearer TOKEN`, or HTTP Basic with any user name and
//! the token as the password, for tools that can only put credentials in the URL (promtool:
//! `http://fleetwatch:TOKEN@host:4741`).

use super::ApiError;
use crate::state::AppState;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

/// Compares without an early exit, so timing does not reveal the token.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Lets the request through with a valid admin or viewer token (all routes so far read only).
pub(super) async fn require_token(
    State(state): State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Response {
    let header = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let Some(token) = header.and_then(presented_token) else {
        return ApiError::unauthorized(
            "missing token: send Authorization: Bearer <token> (or Basic auth with the token as password)",
        )
        .into_response();
    };
    let ok = [&state.tokens.admin, &state.tokens.viewer]
        .into_iter()
        .flatten()
        .any(|t| same(t.as_bytes(), token.as_bytes()));
    if ok {
        next.run(req).await
    } else {
        ApiError::unauthorized("invalid token").into_response()
    }
}

/// The token in an `Authorization` header value: a bearer token, or a Basic password.
fn presented_token(header: &str) -> Option<String> {
    if let Some(t) = header.strip_prefix("Bearer ") {
        return Some(t.trim().to_string());
    }
    let encoded = header.strip_prefix("Basic ")?;
    let decoded =
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, encoded.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    text.split_once(':')
        .map(|(_, password)| password.to_string())
}

#[cfg(test)]
mod tests {
    use super::presented_token;

    #[test]
    fn bearer_and_basic_tokens() {
        assert_eq!(presented_token("Bearer abc ").as_deref(), Some("abc"));
        // "fleetwatch:s3cret"
        assert_eq!(
            presented_token("Basic ZmxlZXR3YXRjaDpzM2NyZXQ=").as_deref(),
            Some("s3cret")
        );
        assert_eq!(presented_token("Basic !!!"), None);
        assert_eq!(presented_token("Digest x"), None);
    }
}

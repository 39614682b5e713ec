//! Token authentication: `Authorization: Bearer TOKEN`, or HTTP Basic with any user name and
//! the token as the password, for tools that can only put credentials in the URL (promtool:
//! `http://fleetwatch:TOKEN@host:4741`). A WebSocket upgrade may carry the token as the
//! `access_token` query parameter instead, since browsers cannot set headers on WebSockets.

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

/// Lets the request through with a valid admin or viewer token, noting which ([`Role`]).
pub(super) async fn require_token(
    State(state): State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Response {
    let header = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let token = header
        .and_then(presented_token)
        .or_else(|| websocket_query_token(&req));
    let Some(token) = token else {
        return ApiError::unauthorized(
            "missing token: send Authorization: Bearer <token> (or Basic auth with the token as password)",
        )
        .into_response();
    };
    let matches = |t: &Option<String>| {
        t.as_ref()
            .is_some_and(|t| same(t.as_bytes(), token.as_bytes()))
    };
    let role = if matches(&state.tokens.admin) {
        Role::Admin
    } else if matches(&state.tokens.viewer) {
        Role::Viewer
    } else {
        return ApiError::unauthorized("invalid token").into_response();
    };
    let mut req = req;
    req.extensions_mut().insert(role);
    next.run(req).await
}

/// Who is asking: set by [`require_token`] on every authenticated request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// The admin token: may change things.
    Admin,
    /// The viewer token: read only.
    Viewer,
}

impl Role {
    /// Refuses a viewer.
    pub(crate) fn require_admin(self) -> Result<(), ApiError> {
        match self {
            Role::Admin => Ok(()),
            Role::Viewer => Err(ApiError::forbidden("this action needs the admin token")),
        }
    }
}

/// `GET /api/whoami`: the role of the presented token, so the dashboard shows a viewer no
/// buttons that would be refused.
pub(super) async fn whoami(
    axum::Extension(role): axum::Extension<Role>,
) -> axum::Json<serde_json::Value> {
    let role = match role {
        Role::Admin => "admin",
        Role::Viewer => "viewer",
    };
    axum::Json(serde_json::json!({ "status": "success", "data": { "role": role } }))
}

/// The `access_token` query parameter of a WebSocket upgrade request.
fn websocket_query_token(req: &Request) -> Option<String> {
    let upgrade = req
        .headers()
        .get(axum::http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())?;
    if !upgrade.eq_ignore_ascii_case("websocket") {
        return None;
    }
    let axum::extract::Query(pairs) =
        axum::extract::Query::<Vec<(String, String)>>::try_from_uri(req.uri()).ok()?;
    pairs
        .into_iter()
        .find_map(|(k, v)| (k == "access_token").then_some(v))
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

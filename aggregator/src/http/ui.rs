//! The dashboard: its bundle (built from `aggregator/web` by `build.rs`) embedded in the binary
//! and served without a token — the page holds no data; it signs in to the API with one.
//! `/` is the page, `/assets/NAME` its script and styles.

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

include!(concat!(env!("OUT_DIR"), "/web_assets.rs"));

/// Only this origin: no script, style, image or connection goes anywhere else.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
                   img-src 'self' data: blob:; connect-src 'self'; frame-ancestors 'none'; \
                   base-uri 'none'; form-action 'self'";

fn asset(name: &str, headers: &HeaderMap) -> Response {
    let Some((_, content_type, etag, body)) = ASSETS.iter().find(|(n, ..)| *n == name) else {
        return (
            StatusCode::NOT_FOUND,
            format!("no dashboard file named {name:?}\n"),
        )
            .into_response();
    };
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == etag.as_bytes());
    let common = [
        (header::ETAG, HeaderValue::from_static(etag)),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
    ];
    if fresh {
        return (StatusCode::NOT_MODIFIED, common).into_response();
    }
    (
        common,
        [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
        *body,
    )
        .into_response()
}

/// `GET /`: the page.
pub(super) async fn index(headers: HeaderMap) -> Response {
    asset("index.html", &headers)
}

/// `GET /assets/{name}`.
pub(super) async fn file(Path(name): Path<String>, headers: HeaderMap) -> Response {
    asset(&name, &headers)
}

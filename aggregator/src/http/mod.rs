//! The HTTP API: the Prometheus-compatible query API and federation, the fleet API, the log
//! API, health, the aggregator's own metrics and the dashboard. Bearer tokens on everything but
//! `/healthz`, `/readyz`, the dashboard's files and (if configured) `/metrics`.

mod auth;
mod dashboards_api;
mod error;
mod federate;
mod fleet_api;
mod live;
mod logs_api;
mod query;
mod rules_api;
mod ui;

pub use error::ApiError;

use crate::state::AppState;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::sync::Arc;

/// The whole HTTP application.
pub fn app(state: Arc<AppState>) -> Router {
    let protected = Router::new()
        .route(
            "/api/v1/query",
            get(query::instant).post(query::instant_form),
        )
        .route(
            "/api/v1/query_range",
            get(query::range).post(query::range_form),
        )
        .route(
            "/api/v1/series",
            get(query::series).post(query::series_form),
        )
        .route(
            "/api/v1/labels",
            get(query::labels).post(query::labels_form),
        )
        .route("/api/v1/label/{name}/values", get(query::label_values))
        .route("/api/v1/metadata", get(query::metadata))
        .route("/api/v1/status/buildinfo", get(query::buildinfo))
        .route("/api/whoami", get(auth::whoami))
        .route("/api/v1/rules", get(rules_api::rules))
        .route("/api/v1/alerts", get(rules_api::alerts))
        .route("/api/fleet/alerts", get(rules_api::fleet_alerts))
        .route("/api/fleet/alerts/history", get(rules_api::history))
        .route(
            "/api/fleet/alerts/{fingerprint}/ack",
            axum::routing::post(rules_api::acknowledge),
        )
        .route(
            "/api/fleet/silences",
            get(rules_api::silences).post(rules_api::create_silence),
        )
        .route(
            "/api/fleet/silences/{id}",
            axum::routing::delete(rules_api::expire_silence),
        )
        .route("/api/fleet/notifications", get(rules_api::notifications))
        .route(
            "/api/admin/rules/reload",
            axum::routing::post(rules_api::reload),
        )
        .route("/federate", get(federate::federate))
        .route("/api/fleet/hosts", get(fleet_api::list))
        .route("/api/fleet/hosts/{host}", get(fleet_api::one))
        .route("/api/fleet/hosts/{host}/checks", get(fleet_api::checks))
        .route("/api/fleet/live", get(live::live))
        .route("/api/logs/query", get(logs_api::query))
        .route("/api/logs/counts", get(logs_api::counts))
        .route("/api/logs/labels", get(logs_api::labels))
        .route("/api/logs/label/{name}/values", get(logs_api::label_values))
        .route("/api/dashboards", get(dashboards_api::list))
        .route("/api/dashboards/{id}", get(dashboards_api::one));
    let protected = if state.config.http.metrics_public {
        protected
    } else {
        protected.route("/metrics", get(own_metrics))
    }
    .route_layer(middleware::from_fn_with_state(
        state.clone(),
        auth::require_token,
    ));
    let public = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/", get(ui::index))
        .route("/assets/{name}", get(ui::file));
    let public = if state.config.http.metrics_public {
        public.route("/metrics", get(own_metrics))
    } else {
        public
    };
    protected
        .merge(public)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            count_requests,
        ))
        .with_state(state)
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if state.is_ready() {
        "ready\n".into_response()
    } else {
        (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "starting: replaying the store\n",
        )
            .into_response()
    }
}

async fn own_metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

async fn count_requests(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let resp = next.run(req).await;
    state
        .metrics
        .http_requests
        .with_label_values(&[route.as_str(), resp.status().as_str()])
        .inc();
    resp
}

//! The fleet API: hosts with status, health, facts and last seen, and each host's health checks.

use super::ApiError;
use crate::fleet::summary::{report_failures, summarize, summarized_hosts, SummarizedHost};
use crate::state::AppState;
use axum::extract::{Path, State};
use axum::Json;
use fleetwatch_common::model::now_ms;
use std::sync::Arc;

/// `GET /api/fleet/hosts`: every host ever seen, with its status, health and summary.
pub(super) async fn list(
    State(state): State<Arc<AppState>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    // the summary's queries read the store: off the async threads
    let hosts = tokio::task::spawn_blocking(move || {
        summarized_hosts(
            &state.fleet,
            &*state.store,
            &state.rules.alerts(),
            &state.metrics,
            now_ms(),
        )
    })
    .await
    .map_err(|e| ApiError::internal(format!("host summary task failed: {e}")))?;
    Ok(Json(
        serde_json::json!({ "status": "success", "data": hosts }),
    ))
}

fn unknown_host(host: &str) -> ApiError {
    ApiError::not_found(format!("no host named {host:?} has ever connected"))
}

/// `GET /api/fleet/hosts/{host}`: one host with its summary, its series count and its checks'
/// latest results (transitions are at `/checks`).
pub(super) async fn one(
    State(state): State<Arc<AppState>>,
    Path(host): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let now = now_ms();
    let view = state
        .fleet
        .get(&host, now)
        .ok_or_else(|| unknown_host(&host))?;
    let st = state.clone();
    let name = host.clone();
    let summaries = tokio::task::spawn_blocking(move || {
        let summaries = summarize(&*st.store, &st.rules.alerts(), Some(&name), now);
        report_failures(&summaries, &st.metrics);
        summaries
    })
    .await
    .map_err(|e| ApiError::internal(format!("host summary task failed: {e}")))?;
    let view = SummarizedHost {
        summary: summaries.of(&host),
        view,
    };
    let series = state.store.series_for_host(&host);
    let checks: Vec<serde_json::Value> = state
        .fleet
        .checks(&host, now)
        .unwrap_or_default()
        .into_iter()
        .map(|c| {
            serde_json::json!({
                "name": c.state.name,
                "status": c.state.status,
                "timestamp_ms": c.state.timestamp_ms,
                "since_ms": c.state.since_ms,
                "detail": c.state.detail,
                "stale": c.stale,
            })
        })
        .collect();
    Ok(Json(serde_json::json!({
        "status": "success",
        "data": { "host": view, "series": series, "checks": checks }
    })))
}

/// `GET /api/fleet/hosts/{host}/checks`: the host's health, and every check's latest result
/// (status, detail, duration, since when) with its recent status changes.
pub(super) async fn checks(
    State(state): State<Arc<AppState>>,
    Path(host): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let now = now_ms();
    let view = state
        .fleet
        .get(&host, now)
        .ok_or_else(|| unknown_host(&host))?;
    let checks = state.fleet.checks(&host, now).unwrap_or_default();
    Ok(Json(serde_json::json!({
        "status": "success",
        "data": { "host": host, "health": view.health, "checks": checks }
    })))
}

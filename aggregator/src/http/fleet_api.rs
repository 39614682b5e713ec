//! The fleet API: hosts with status, facts and last seen.

use super::ApiError;
use crate::state::AppState;
use axum::extract::{Path, State};
use axum::Json;
use fleetwatch_common::model::now_ms;
use std::sync::Arc;

/// `GET /api/fleet/hosts`: every host ever seen.
pub(super) async fn list(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let hosts = state.fleet.list(now_ms());
    Json(serde_json::json!({ "status": "success", "data": hosts }))
}

/// `GET /api/fleet/hosts/{host}`: one host, with its series count.
pub(super) async fn one(
    State(state): State<Arc<AppState>>,
    Path(host): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let view = state
        .fleet
        .get(&host, now_ms())
        .ok_or_else(|| ApiError::not_found(format!("no host named {host:?} has ever connected")))?;
    let series = state.store.series_for_host(&host);
    Ok(Json(
        serde_json::json!({ "status": "success", "data": { "host": view, "series": series } }),
    ))
}

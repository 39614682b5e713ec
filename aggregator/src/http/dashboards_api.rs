//! The dashboards defined in configuration (`crate::dashboards`): `GET /api/dashboards` lists
//! them with their panels and the files refused; `GET /api/dashboards/{id}` is one of them.

use super::ApiError;
use crate::state::AppState;
use axum::extract::{Path, State};
use axum::Json;
use serde_json::{json, Value};
use std::sync::Arc;

/// `GET /api/dashboards`: `{"dashboards": [...], "errors": [{"file", "error"}]}`.
pub(super) async fn list(State(state): State<Arc<AppState>>) -> Json<Value> {
    let set = state.dashboards.current();
    Json(json!({ "status": "success", "data": &*set }))
}

/// `GET /api/dashboards/{id}`: one dashboard; 404 naming the known ids otherwise.
pub(super) async fn one(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let set = state.dashboards.current();
    match set.get(&id) {
        Some(d) => Ok(Json(json!({ "status": "success", "data": d }))),
        None => {
            let ids: Vec<&str> = set.dashboards.iter().map(|d| d.id.as_str()).collect();
            Err(ApiError::not_found(format!(
                "no dashboard with id {id:?}; the dashboards are: {}",
                if ids.is_empty() {
                    "none".to_string()
                } else {
                    ids.join(", ")
                }
            )))
        }
    }
}

//! Rules and alerts: Prometheus' `/api/v1/rules` and `/api/v1/alerts`, the fleet's filtered
//! alert list, and the admin reload.

use super::auth::Role;
use super::ApiError;
use crate::rules::file::RuleKind;
use crate::rules::lifecycle::{Alert, AlertState};
use crate::rules::{rfc3339, GroupState, RuleHealth};
use crate::state::AppState;
use axum::extract::{Query, State};
use axum::{Extension, Json};
use serde_json::{json, Value};
use std::sync::Arc;

fn alert_json(a: &Alert) -> Value {
    json!({
        "labels": a.labels,
        "annotations": a.annotations,
        "state": a.state.as_str(),
        "activeAt": rfc3339(a.active_at_ms),
        "value": super::query::format_value(a.value),
    })
}

fn last_eval(ms: i64) -> String {
    if ms == 0 {
        "0001-01-01T00:00:00Z".into()
    } else {
        rfc3339(ms)
    }
}

fn rule_json(g: &GroupState, i: usize) -> Value {
    let rule = &g.group.rules[i];
    let h: &RuleHealth = &g.health[i];
    let labels: serde_json::Map<String, Value> = rule
        .labels
        .iter()
        .map(|(k, t)| (k.clone(), Value::String(t.source().to_string())))
        .collect();
    let mut v = json!({
        "name": rule.name(),
        "query": rule.expr,
        "labels": labels,
        "health": h.health,
        "lastError": h.last_error,
        "evaluationTime": h.eval_seconds,
        "lastEvaluation": last_eval(h.last_eval_ms),
    });
    match &rule.kind {
        RuleKind::Record(_) => {
            v["type"] = "recording".into();
        }
        RuleKind::Alert {
            for_ms,
            keep_firing_for_ms,
            ..
        } => {
            let alerts: Vec<&Alert> = g.alerts[i]
                .values()
                .filter(|a| a.state != AlertState::Inactive)
                .collect();
            let state = if alerts.iter().any(|a| a.state == AlertState::Firing) {
                "firing"
            } else if alerts.is_empty() {
                "inactive"
            } else {
                "pending"
            };
            v["type"] = "alerting".into();
            v["state"] = state.into();
            v["duration"] = (*for_ms as f64 / 1000.0).into();
            v["keepFiringFor"] = (*keep_firing_for_ms as f64 / 1000.0).into();
            v["annotations"] = match &rule.kind {
                RuleKind::Alert { annotations, .. } => annotations
                    .iter()
                    .map(|(k, t)| (k.clone(), Value::String(t.source().to_string())))
                    .collect::<serde_json::Map<_, _>>()
                    .into(),
                RuleKind::Record(_) => Value::Null,
            };
            v["alerts"] = alerts
                .into_iter()
                .map(alert_json)
                .collect::<Vec<_>>()
                .into();
        }
    }
    v
}

/// `GET /api/v1/rules?type=alert|record`.
pub(super) async fn rules(
    State(state): State<Arc<AppState>>,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Json<Value>, ApiError> {
    let kind = params
        .iter()
        .find(|(k, _)| k == "type")
        .map(|(_, v)| v.as_str());
    if let Some(k) = kind {
        if k != "alert" && k != "record" {
            return Err(ApiError::bad_data(format!(
                "invalid parameter \"type\": {k:?} is neither alert nor record"
            )));
        }
    }
    let groups: Vec<Value> = state
        .rules
        .groups()
        .iter()
        .map(|g| {
            let rules: Vec<Value> = (0..g.group.rules.len())
                .filter(|&i| {
                    !matches!(
                        (kind, &g.group.rules[i].kind),
                        (Some("alert"), RuleKind::Record(_))
                            | (Some("record"), RuleKind::Alert { .. })
                    )
                })
                .map(|i| rule_json(g, i))
                .collect();
            json!({
                "name": g.group.name,
                "file": g.group.file.display().to_string(),
                "interval": g.group.interval_ms as f64 / 1000.0,
                "limit": g.group.limit,
                "rules": rules,
                "evaluationTime": g.eval_seconds,
                "lastEvaluation": last_eval(g.last_eval_ms),
            })
        })
        .collect();
    Ok(Json(
        json!({ "status": "success", "data": { "groups": groups } }),
    ))
}

/// `GET /api/v1/alerts`: pending and firing alerts, as Prometheus lists them.
pub(super) async fn alerts(State(state): State<Arc<AppState>>) -> Json<Value> {
    let alerts: Vec<Value> = state
        .rules
        .alerts()
        .iter()
        .filter(|a| a.state != AlertState::Inactive)
        .map(alert_json)
        .collect();
    Json(json!({ "status": "success", "data": { "alerts": alerts } }))
}

/// `GET /api/fleet/alerts?state=&severity=&host=`: alerts including recently resolved ones,
/// filtered, with their firing and resolution times.
pub(super) async fn fleet_alerts(
    State(state): State<Arc<AppState>>,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Json<Value>, ApiError> {
    let get = |name: &str| {
        params
            .iter()
            .find(|(k, v)| k == name && !v.is_empty())
            .map(|(_, v)| v.clone())
    };
    let want_state = get("state");
    if let Some(s) = &want_state {
        if !["pending", "firing", "inactive", "resolved"].contains(&s.as_str()) {
            return Err(ApiError::bad_data(format!(
                "invalid parameter \"state\": {s:?} (pending, firing or resolved)"
            )));
        }
    }
    let severity = get("severity");
    let host = get("host");
    let alerts: Vec<Value> = state
        .rules
        .alerts()
        .iter()
        .filter(|a| {
            want_state.as_deref().is_none_or(|s| {
                a.state.as_str() == s || (s == "resolved" && a.state == AlertState::Inactive)
            }) && severity
                .as_ref()
                .is_none_or(|s| a.labels.get("severity") == Some(s))
                && host
                    .as_ref()
                    .is_none_or(|h| a.labels.get("host") == Some(h))
        })
        .map(|a| {
            let mut v = alert_json(a);
            if a.state == AlertState::Inactive {
                v["state"] = "resolved".into();
            }
            v["firedAt"] = a.fired_at_ms.map(rfc3339).into();
            v["resolvedAt"] = a.resolved_at_ms.map(rfc3339).into();
            v
        })
        .collect();
    Ok(Json(
        json!({ "status": "success", "data": { "alerts": alerts } }),
    ))
}

/// `POST /api/admin/rules/reload` (admin): re-reads the rule files; refused files keep the
/// running rules and the answer lists every problem.
pub(super) async fn reload(
    State(state): State<Arc<AppState>>,
    Extension(role): Extension<Role>,
) -> Result<Json<Value>, ApiError> {
    role.require_admin()?;
    let rules = state.rules.clone();
    match tokio::task::spawn_blocking(move || rules.reload()).await {
        Ok(Ok(n)) => Ok(Json(json!({ "status": "success", "data": { "rules": n } }))),
        Ok(Err(errors)) => Err(ApiError::bad_data(format!(
            "rule files refused, the running rules are kept: {}",
            errors
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        ))),
        Err(e) => Err(ApiError::internal(format!("reload task failed: {e}"))),
    }
}

//! Rules and alerts: Prometheus' `/api/v1/rules` and `/api/v1/alerts`, the fleet's filtered
//! alert list, and the admin reload.

use super::auth::Role;
use super::ApiError;
use crate::notify::receivers::fingerprint;
use crate::notify::Silence;
use crate::rules::file::RuleKind;
use crate::rules::lifecycle::{Alert, AlertState};
use crate::rules::{alert_json, rfc3339, GroupState, RuleHealth};
use crate::state::AppState;
use axum::extract::{Path, Query, State};
use axum::{Extension, Json};
use fleetwatch_common::model::now_ms;
use serde_json::{json, Value};
use std::sync::Arc;

/// The fleet view of an alert: Prometheus' fields plus fingerprint, acknowledgement, muting,
/// firing and resolution times.
fn fleet_alert_json(state: &AppState, a: &Alert, muted: Option<String>) -> Value {
    let mut v = alert_json(a);
    if a.state == AlertState::Inactive {
        v["state"] = "resolved".into();
    }
    let fp = fingerprint(&a.labels);
    v["fingerprint"] = fp.clone().into();
    v["firedAt"] = a.fired_at_ms.map(rfc3339).into();
    v["resolvedAt"] = a.resolved_at_ms.map(rfc3339).into();
    v["acknowledged"] = match state.notifier.ack_of(&fp) {
        Some(ack) => json!({ "by": ack.by, "at": rfc3339(ack.at_ms), "comment": ack.comment }),
        None => Value::Null,
    };
    v["muted"] = muted.into();
    v
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
/// filtered, with fingerprint, acknowledgement, muting, firing and resolution times.
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
        if !["pending", "firing", "resolved"].contains(&s.as_str()) {
            return Err(ApiError::bad_data(format!(
                "invalid parameter \"state\": {s:?} (pending, firing or resolved)"
            )));
        }
    }
    let severity = get("severity");
    let host = get("host");
    let all = state.rules.alerts();
    let now = now_ms();
    let chosen: Vec<&Alert> = all
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
        .collect();
    let muted = state.notifier.muted_reasons(&chosen, &all, now);
    let alerts: Vec<Value> = chosen
        .iter()
        .zip(muted)
        .map(|(a, m)| fleet_alert_json(&state, a, m))
        .collect();
    Ok(Json(
        json!({ "status": "success", "data": { "alerts": alerts } }),
    ))
}

/// Body of an acknowledgement.
#[derive(Debug, serde::Deserialize)]
pub(super) struct AckBody {
    by: String,
    #[serde(default)]
    comment: String,
}

/// `POST /api/fleet/alerts/{fingerprint}/ack` (admin): no repeat notifications for this firing
/// alert until it resolves.
pub(super) async fn acknowledge(
    State(state): State<Arc<AppState>>,
    Extension(role): Extension<Role>,
    Path(fp): Path<String>,
    Json(body): Json<AckBody>,
) -> Result<Json<Value>, ApiError> {
    role.require_admin()?;
    if body.by.trim().is_empty() {
        return Err(ApiError::bad_data("\"by\" must name who acknowledges"));
    }
    let alert = state
        .rules
        .alerts()
        .into_iter()
        .find(|a| a.state == AlertState::Firing && fingerprint(&a.labels) == fp)
        .ok_or_else(|| ApiError::not_found(format!("no firing alert with fingerprint {fp}")))?;
    let now = now_ms();
    state
        .notifier
        .acknowledge(&fp, &alert.labels, body.by.trim(), &body.comment, now);
    state
        .live
        .alert_action("acknowledged", &alert, body.by.trim(), now);
    Ok(Json(
        json!({ "status": "success", "data": { "fingerprint": fp } }),
    ))
}

/// Body of a new silence.
#[derive(Debug, serde::Deserialize)]
pub(super) struct SilenceBody {
    matchers: Vec<String>,
    #[serde(default, rename = "startsAt")]
    starts_at: Option<String>,
    #[serde(default, rename = "endsAt")]
    ends_at: Option<String>,
    #[serde(default, rename = "durationSeconds")]
    duration_seconds: Option<f64>,
    #[serde(rename = "createdBy")]
    created_by: String,
    #[serde(default)]
    comment: String,
}

fn silence_json(s: &Silence, now: i64) -> Value {
    let status = if s.active(now) {
        "active"
    } else if now < s.starts_at_ms {
        "pending"
    } else {
        "expired"
    };
    json!({
        "id": s.id,
        "matchers": s.matchers,
        "startsAt": rfc3339(s.starts_at_ms),
        "endsAt": rfc3339(s.ends_at_ms),
        "createdBy": s.created_by,
        "comment": s.comment,
        "status": status,
    })
}

/// `GET /api/fleet/silences`.
pub(super) async fn silences(State(state): State<Arc<AppState>>) -> Json<Value> {
    let now = now_ms();
    let list: Vec<Value> = state
        .notifier
        .silences()
        .iter()
        .map(|s| silence_json(s, now))
        .collect();
    Json(json!({ "status": "success", "data": list }))
}

/// `POST /api/fleet/silences` (admin): `{"matchers": ["host=\"web-1\""], "durationSeconds":
/// 3600, "createdBy": "ana", "comment": "maintenance"}` (or `startsAt`/`endsAt`, RFC 3339).
pub(super) async fn create_silence(
    State(state): State<Arc<AppState>>,
    Extension(role): Extension<Role>,
    Json(body): Json<SilenceBody>,
) -> Result<Json<Value>, ApiError> {
    role.require_admin()?;
    let now = now_ms();
    let starts = match &body.starts_at {
        Some(t) => super::query::parse_time(t)?,
        None => now,
    };
    let ends = match (&body.ends_at, body.duration_seconds) {
        (Some(t), _) => super::query::parse_time(t)?,
        (None, Some(d)) if d.is_finite() && d > 0.0 => starts + (d * 1000.0) as i64,
        _ => {
            return Err(ApiError::bad_data(
                "give endsAt or a positive durationSeconds",
            ))
        }
    };
    if body.created_by.trim().is_empty() {
        return Err(ApiError::bad_data("\"createdBy\" must name who silences"));
    }
    let matchers = body.matchers;
    let id = state
        .notifier
        .silence(Silence {
            id: String::new(),
            matchers: matchers.clone(),
            starts_at_ms: starts,
            ends_at_ms: ends,
            created_by: body.created_by.trim().to_string(),
            comment: body.comment,
        })
        .map_err(ApiError::bad_data)?;
    state
        .live
        .silence_event("silence_created", &id, &matchers, now);
    Ok(Json(
        json!({ "status": "success", "data": { "silenceID": id } }),
    ))
}

/// `DELETE /api/fleet/silences/{id}` (admin): expires the silence now.
pub(super) async fn expire_silence(
    State(state): State<Arc<AppState>>,
    Extension(role): Extension<Role>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    role.require_admin()?;
    let now = now_ms();
    if state.notifier.expire(&id, now) {
        let matchers = state
            .notifier
            .silences()
            .into_iter()
            .find(|s| s.id == id)
            .map(|s| s.matchers)
            .unwrap_or_default();
        state
            .live
            .silence_event("silence_expired", &id, &matchers, now);
        Ok(Json(json!({ "status": "success" })))
    } else {
        Err(ApiError::not_found(format!("no silence {id}")))
    }
}

/// `GET /api/fleet/alerts/history`: state changes, acknowledgements and notifications.
pub(super) async fn history(State(state): State<Arc<AppState>>) -> Json<Value> {
    let list: Vec<Value> = state
        .notifier
        .history()
        .into_iter()
        .map(|h| json!({ "at": rfc3339(h.at_ms), "fingerprint": h.fingerprint, "labels": h.labels, "event": h.event, "detail": h.detail }))
        .collect();
    Json(json!({ "status": "success", "data": list }))
}

/// `GET /api/fleet/notifications`: the notification log (sent and failed deliveries).
pub(super) async fn notifications(State(state): State<Arc<AppState>>) -> Json<Value> {
    let list: Vec<Value> = state
        .notifier
        .deliveries()
        .into_iter()
        .map(|d| json!({ "receiver": d.receiver, "groupKey": d.group_key, "alerts": d.alerts, "at": rfc3339(d.at_ms), "result": d.result, "attempts": d.attempts, "error": d.error }))
        .collect();
    Json(json!({ "status": "success", "data": list }))
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

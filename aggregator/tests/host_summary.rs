//! The host summary with a real agent: the figures in `GET /api/fleet/hosts`,
//! `GET /api/fleet/hosts/{host}` and the live feed's `hosts` message are exactly what the
//! Prometheus query API gives for the same PromQL at the summary's instant (`at_ms`), and
//! firing alerts are counted per host.

mod support;

use fleetwatch_aggregator::fleet::summary::Figure;
use serde_json::Value;
use std::time::Duration;
use support::live::{connect, Feed};
use support::{urlencode, Fleet, TOKEN};

const LONG: Duration = Duration::from_secs(60);

const RULES: &str = r#"groups:
  - name: summary
    interval: 1s
    rules:
      - alert: LoadSeen
        expr: node_load1 >= 0
      - alert: MemorySeen
        expr: node_memory_MemTotal_bytes > 0
"#;

/// Every figure of `host` from `/api/v1/query` at `time` (now when empty), by field name:
/// the value, or null when the query gives nothing for the host.
fn promql_figures(fleet: &Fleet, host: &str, time: &str) -> Vec<(&'static str, Value)> {
    Figure::ALL
        .iter()
        .map(|f| {
            let mut path = format!("/api/v1/query?query={}", urlencode(&f.query(None)));
            if !time.is_empty() {
                path.push_str(&format!("&time={}", urlencode(time)));
            }
            let (code, body) = fleet.http_get(&path).unwrap();
            assert_eq!(code, 200, "{}: {body}", f.field());
            let v: Value = serde_json::from_str(&body).unwrap();
            let value = v["data"]["result"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["metric"]["host"] == host)
                .map(|r| {
                    let text = r["value"][1].as_str().unwrap();
                    let x: f64 = text.parse().unwrap();
                    if x.is_finite() {
                        Value::from(x)
                    } else {
                        Value::Null
                    }
                })
                .unwrap_or(Value::Null);
            (f.field(), value)
        })
        .collect()
}

/// Whether two figure lists agree: the same nulls, and numbers equal up to the last bit that
/// serde_json's float parsing (not correctly rounded without its `float_roundtrip` feature) may
/// change.
fn same(a: &[(&'static str, Value)], b: &[(&'static str, Value)]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|((ka, va), (kb, vb))| {
            ka == kb
                && match (va.as_f64(), vb.as_f64()) {
                    (Some(x), Some(y)) => {
                        x == y || (x - y).abs() <= 4.0 * f64::EPSILON * x.abs().max(y.abs())
                    }
                    _ => va.is_null() && vb.is_null(),
                }
        })
}

fn summary_figures(summary: &Value) -> Vec<(&'static str, Value)> {
    Figure::ALL
        .iter()
        .map(|f| (f.field(), summary[f.field()].clone()))
        .collect()
}

fn host_of<'a>(hosts: &'a Value, name: &str) -> Option<&'a Value> {
    hosts.as_array()?.iter().find(|h| h["host"] == name)
}

/// The host's summary in the host list (null before the host is listed).
fn listed_summary(fleet: &Fleet, host: &str) -> Value {
    let (code, body) = fleet.http_get("/api/fleet/hosts").unwrap();
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    host_of(&v["data"], host).map_or(Value::Null, |h| h["summary"].clone())
}

fn one_summary(fleet: &Fleet, host: &str) -> Value {
    let (code, body) = fleet.http_get(&format!("/api/fleet/hosts/{host}")).unwrap();
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    v["data"]["host"]["summary"].clone()
}

/// `get`'s summary equals PromQL's figures at the summary's own instant (`at_ms`). A pass
/// taken while a sample for an earlier instant was still on its way may differ; the next
/// pass (at most `FLEET_PASS_MAX_AGE_MS` later) must agree.
fn assert_matches_promql(fleet: &Fleet, host: &str, what: &str, get: impl Fn() -> Value) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let summary = get();
        let at_ms = summary["at_ms"]
            .as_i64()
            .expect("the summary says its instant");
        let at = format!("{}.{:03}", at_ms / 1000, at_ms % 1000);
        let (got, want) = (summary_figures(&summary), promql_figures(fleet, host, &at));
        if same(&got, &want) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what} at {at}: {got:?} but PromQL: {want:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn host_summary_figures_are_what_promql_gives() {
    let fleet = Fleet::new();
    fleet.use_rules(RULES);
    fleet.agent_config("web-1", 1.0, "");
    let _agg = fleet.start_aggregator();
    let agent = fleet.start_agent("web-1");

    // rates need two samples in the last minute; both rules fire for the host
    fleet.wait_for("a full summary", LONG, || {
        let s = listed_summary(&fleet, "web-1");
        !s["cpu_ratio"].is_null()
            && !s["net_rx_bytes_per_second"].is_null()
            && s["alerts_firing"] == 2
    });
    let s = listed_summary(&fleet, "web-1");
    for key in [
        "memory_ratio",
        "disk_ratio",
        "load1",
        "net_tx_bytes_per_second",
    ] {
        assert!(s[key].is_number(), "{key}: {s}");
    }
    let cpu = s["cpu_ratio"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&cpu), "{s}");

    // the live feed: its summary at its own instant
    let socket = connect(
        fleet.http_port,
        &format!("?access_token={TOKEN}&topics=hosts"),
        None,
    )
    .unwrap();
    let mut feed = Feed::new(socket);
    let snapshot = feed.get("the snapshot", |v| v["type"] == "snapshot");
    assert!(
        host_of(&snapshot["hosts"], "web-1").unwrap()["summary"]["cpu_ratio"].is_number(),
        "{snapshot}"
    );

    // Data stops so that an instant's answer no longer changes as samples arrive late.
    agent.stop();
    std::thread::sleep(Duration::from_millis(500));
    let stopped = fleetwatch_common::model::now_ms();
    let message = feed.get(
        "a hosts message with a pass from after the agent stopped",
        |v| {
            v["type"] == "hosts"
                && host_of(&v["hosts"], "web-1")
                    .and_then(|h| h["summary"]["at_ms"].as_i64())
                    .is_some_and(|at| at > stopped)
        },
    );
    let live = host_of(&message["hosts"], "web-1").unwrap()["summary"].clone();
    let at_ms = live["at_ms"].as_i64().unwrap();
    let at = format!("{}.{:03}", at_ms / 1000, at_ms % 1000);
    let (got, want) = (summary_figures(&live), promql_figures(&fleet, "web-1", &at));
    assert!(
        same(&got, &want),
        "live feed at {at}: {got:?} but PromQL: {want:?}"
    );
    assert_eq!(live["alerts_firing"], 2, "{live}");

    assert_matches_promql(&fleet, "web-1", "GET /api/fleet/hosts", || {
        listed_summary(&fleet, "web-1")
    });
    assert_matches_promql(&fleet, "web-1", "GET /api/fleet/hosts/web-1", || {
        one_summary(&fleet, "web-1")
    });
    assert_eq!(one_summary(&fleet, "web-1")["alerts_firing"], 2);
}

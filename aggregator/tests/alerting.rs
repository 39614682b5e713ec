//! Alerting rules end to end: rule files that promtool accepts load unchanged, `check-rules`
//! names file, line and reason, and a real agent going away fires HostDown after its `for`,
//! survives an aggregator restart with its state, and resolves when the agent is back.

mod support;

use std::process::Command;
use std::time::Duration;
use support::{peer_binary, Fleet};

const RULES: &str = r#"groups:
  - name: test
    interval: 1s
    rules:
      - alert: HostDown
        expr: up{host!=""} == 0
        for: 3s
        labels:
          severity: critical
        annotations:
          summary: "{{ $labels.host }} sends no data"
      - record: host:up:count
        expr: count(up == 1)
"#;

fn alerts(fleet: &Fleet, query: &str) -> Vec<serde_json::Value> {
    let (code, body) = fleet.http_get(query).unwrap();
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["data"]["alerts"].as_array().cloned().unwrap_or_default()
}

#[test]
fn shipped_rules_load_in_promtool_and_in_fleetwatch() {
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/../configs/rules/fleet.yml");
    let ours = Command::new(env!("CARGO_BIN_EXE_fleetwatch-aggregator"))
        .args(["check-rules", shipped])
        .output()
        .unwrap();
    assert!(
        ours.status.success(),
        "{}",
        String::from_utf8_lossy(&ours.stderr)
    );
    if peer_binary("promtool", "prometheus").is_some() {
        let theirs = Command::new("promtool")
            .args(["check", "rules", shipped])
            .output()
            .unwrap();
        assert!(
            theirs.status.success(),
            "promtool: {}",
            String::from_utf8_lossy(&theirs.stdout)
        );
    }
    // a broken file: every problem with its file and line, exit 1
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yml");
    std::fs::write(&bad, "groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: up == 0\n      - alert: B\n        expr: rate(x[5m]\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_fleetwatch-aggregator"))
        .arg("check-rules")
        .arg(&bad)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        err.contains("bad.yml:6:") && err.contains("B: could not parse expression"),
        "{err}"
    );
}

#[test]
fn host_down_fires_survives_a_restart_and_resolves() {
    let fleet = Fleet::new();
    std::fs::write(fleet.path("rules.yml"), RULES).unwrap();
    fleet.add_aggregator_config(&format!(
        "[rules]\nfiles = [\"{}\"]\nevaluation_interval_seconds = 1.0\n",
        fleet.path("rules.yml").display()
    ));
    // a host is stale after 1 s without data and down after 2 s
    let toml = std::fs::read_to_string(fleet.path("aggregator.toml")).unwrap();
    std::fs::write(
        fleet.path("aggregator.toml"),
        toml.replacen(
            "[http]",
            "[fleet]\nstale_after_seconds = 1\ndown_after_seconds = 2\n[http]",
            1,
        ),
    )
    .unwrap();
    fleet.agent_config("web-1", 0.2, "");
    let agg = fleet.start_aggregator();
    let agent = fleet.start_agent("web-1");
    fleet.wait_for(
        "the recording rule's series",
        Duration::from_secs(30),
        || !fleet.query("host:up:count == 1").is_empty(),
    );
    assert!(alerts(&fleet, "/api/v1/alerts").is_empty());

    agent.stop();
    fleet.wait_for("HostDown firing", Duration::from_secs(60), || {
        alerts(&fleet, "/api/v1/alerts")
            .iter()
            .any(|a| a["state"] == "firing" && a["labels"]["host"] == "web-1")
    });
    let firing = alerts(
        &fleet,
        "/api/fleet/alerts?state=firing&severity=critical&host=web-1",
    );
    assert_eq!(firing.len(), 1, "{firing:?}");
    assert_eq!(firing[0]["labels"]["alertname"], "HostDown");
    assert_eq!(firing[0]["annotations"]["summary"], "web-1 sends no data");
    let active_at = firing[0]["activeAt"].clone();
    assert!(!fleet
        .query("ALERTS{alertname=\"HostDown\",alertstate=\"firing\",host=\"web-1\"}")
        .is_empty());
    let (_, rules) = fleet.http_get("/api/v1/rules").unwrap();
    assert!(
        rules.contains("\"health\":\"ok\"") && rules.contains("\"state\":\"firing\""),
        "{rules}"
    );

    // a restart keeps the alert and when it became active
    agg.stop();
    let agg = fleet.start_aggregator();
    let after = alerts(&fleet, "/api/fleet/alerts?host=web-1");
    assert_eq!(after.len(), 1, "{after:?}");
    assert_eq!(after[0]["state"], "firing");
    assert_eq!(after[0]["activeAt"], active_at);

    // the host comes back: resolved
    let agent = fleet.start_agent("web-1");
    fleet.wait_for("HostDown resolved", Duration::from_secs(90), || {
        alerts(&fleet, "/api/fleet/alerts?state=resolved&host=web-1").len() == 1
    });
    assert!(alerts(&fleet, "/api/v1/alerts").is_empty());
    agent.stop();
    agg.stop();
}

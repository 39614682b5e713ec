//! The live feed over a real WebSocket: a snapshot on connect, the hosts every two seconds, and
//! alert events as a real agent's data makes an alert pending, firing and resolved, with the
//! operator's acknowledgement and silence in between; token checks and topic choice.

mod support;

use serde_json::{json, Value};
use support::live::{connect, Feed};
use support::{http_request, Fleet, TOKEN};

const RULES: &str = r#"groups:
  - name: live
    interval: 1s
    rules:
      - alert: HostUp
        expr: up{host!=""} == 1
        for: 2s
        labels:
          severity: info
        annotations:
          summary: "{{ $labels.host }} is up"
"#;

fn alert_event(event: &'static str) -> impl Fn(&Value) -> bool {
    move |v| {
        v["type"] == "alert"
            && v["event"] == event
            && v["labels"]["alertname"] == "HostUp"
            && v["labels"]["host"] == "web-1"
    }
}

#[test]
fn live_feed_sends_hosts_and_alert_events() {
    let fleet = Fleet::new();
    fleet.use_rules(RULES);
    fleet.fast_host_status();
    fleet.agent_config("web-1", 0.2, "");
    let agg = fleet.start_aggregator();

    // no token, a wrong token, an unknown topic: refused before the upgrade, with the reason
    for (query, code) in [
        ("", 401),
        ("?access_token=nope", 401),
        (
            &format!("?access_token={TOKEN}&topics=hosts,weather") as &str,
            400,
        ),
    ] {
        match connect(fleet.http_port, query, None) {
            Err(tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status().as_u16(), code, "{query}");
                let body =
                    String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default()).to_string();
                let expected = if code == 400 {
                    "unknown topic"
                } else {
                    "token"
                };
                assert!(body.contains(expected), "{query}: {body}");
            }
            other => panic!("{query}: expected a refusal, got {:?}", other.map(|_| ())),
        }
    }

    // a browser-style client (token in the query) and a tool-style one (header)
    let mut browser =
        Feed::new(connect(fleet.http_port, &format!("?access_token={TOKEN}"), None).unwrap());
    let mut tool = Feed::new(connect(fleet.http_port, "", Some(TOKEN)).unwrap());
    let snapshot = browser.get("the snapshot", |v| v["type"] == "snapshot");
    assert_eq!(snapshot["hosts"], json!([]));
    assert_eq!(snapshot["alerts"], json!([]));
    tool.get("the snapshot", |v| v["type"] == "snapshot");
    tool.send(r#"{"subscribe":["alerts"]}"#);
    let subscribed = tool.wait("the subscription's reply", |v| v["type"] == "subscribed");
    assert_eq!(tool.log[subscribed]["topics"], json!(["alerts"]));
    tool.send(r#"{"subscribe":["weather","alerts"]}"#);
    let error = tool.get("the refusal", |v| v["type"] == "error");
    assert!(
        error["error"].as_str().unwrap().contains("weather"),
        "{error}"
    );
    assert_eq!(
        fleet.own_metric("fleetwatch_live_refused_messages_total"),
        1.0
    );

    // the agent connects: the host appears in the hosts message; the alert goes pending,
    // then firing (after its `for`)
    let agent = fleet.start_agent("web-1");
    let hosts = browser.get("web-1 up in the hosts", |v| {
        v["type"] == "hosts"
            && v["hosts"].as_array().is_some_and(|h| {
                h.iter()
                    .any(|h| h["host"] == "web-1" && h["status"] == "up")
            })
    });
    assert!(hosts["at"].is_string());
    let pending = browser.wait("HostUp pending", alert_event("pending"));
    let firing = browser.wait("HostUp firing", alert_event("firing"));
    assert!(pending < firing);
    let (pending, firing) = (browser.log[pending].clone(), browser.log[firing].clone());
    assert_eq!(pending["state"], "pending");
    assert_eq!(pending["annotations"]["summary"], "web-1 is up");
    let fingerprint = pending["fingerprint"].as_str().unwrap().to_string();
    assert_eq!(firing["fingerprint"], fingerprint.as_str());
    assert_eq!(firing["state"], "firing");
    tool.get("HostUp firing", alert_event("firing"));

    // the operator acknowledges it and silences the host: both clients hear of it
    let (code, body) = http_request(
        fleet.http_port,
        "POST",
        &format!("/api/fleet/alerts/{fingerprint}/ack"),
        r#"{"by":"alice","comment":"looking"}"#,
        TOKEN,
    )
    .unwrap();
    assert_eq!(code, 200, "{body}");
    let ack = browser.get("the acknowledgement", alert_event("acknowledged"));
    assert_eq!(ack["detail"], "alice");
    tool.get("the acknowledgement", alert_event("acknowledged"));
    let (code, body) = http_request(
        fleet.http_port,
        "POST",
        "/api/fleet/silences",
        r#"{"matchers":["host=\"web-1\""],"durationSeconds":600,"createdBy":"alice","comment":"maintenance"}"#,
        TOKEN,
    )
    .unwrap();
    assert_eq!(code, 200, "{body}");
    let silence = tool.get("the silence", |v| {
        v["type"] == "silence" && v["event"] == "silence_created"
    });
    assert_eq!(silence["matchers"], json!(["host=\"web-1\""]));

    // the agent goes away: the alert resolves; the alerts-only client got no hosts message
    agent.stop();
    let resolved = browser.get("HostUp resolved", alert_event("resolved"));
    assert_eq!(resolved["state"], "resolved");
    let resolved = tool.wait("HostUp resolved", alert_event("resolved"));
    assert!(
        tool.log[subscribed..=resolved]
            .iter()
            .all(|v| v["type"] != "hosts"),
        "an alerts-only client got hosts: {:#?}",
        tool.log
    );

    assert_eq!(fleet.own_metric("fleetwatch_live_clients"), 2.0);
    assert!(fleet.own_metric("fleetwatch_live_messages_total{topic=\"alerts\"}") >= 4.0);
    let _ = browser.socket.close(None);
    let _ = tool.socket.close(None);
    agg.stop();
}

//! The live feed over a real WebSocket: a snapshot on connect, the hosts every two seconds, and
//! alert events as a real agent's data makes an alert pending, firing and resolved, with the
//! operator's acknowledgement and silence in between; token checks and topic choice.

mod support;

use serde_json::{json, Value};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use support::{http_request, Fleet, TOKEN};
use tungstenite::client::IntoClientRequest;
use tungstenite::{Message, WebSocket};

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

type Socket = WebSocket<TcpStream>;

/// Connects to the live feed; the token goes in the query (as a browser must) unless `header`.
fn connect(fleet: &Fleet, query: &str, header: bool) -> Result<Socket, tungstenite::Error> {
    let url = format!("ws://127.0.0.1:{}/api/fleet/live{query}", fleet.http_port);
    let mut request = url.into_client_request()?;
    if header {
        request.headers_mut().insert(
            "authorization",
            format!("Bearer {TOKEN}").parse().expect("valid header"),
        );
    }
    let stream = TcpStream::connect(("127.0.0.1", fleet.http_port))?;
    stream.set_read_timeout(Some(Duration::from_millis(500)))?;
    tungstenite::client(request, stream)
        .map(|(socket, _)| socket)
        .map_err(|e| match e {
            tungstenite::HandshakeError::Failure(e) => e,
            tungstenite::HandshakeError::Interrupted(_) => {
                tungstenite::Error::Io(std::io::ErrorKind::WouldBlock.into())
            }
        })
}

/// A client's view of the feed: every message received so far, in order.
struct Feed {
    socket: Socket,
    log: Vec<Value>,
}

impl Feed {
    fn new(socket: Socket) -> Feed {
        Feed {
            socket,
            log: Vec::new(),
        }
    }

    /// The position of the first message (received or yet to come) that satisfies `want`.
    fn wait(&mut self, what: &str, want: impl Fn(&Value) -> bool) -> usize {
        if let Some(i) = self.log.iter().position(&want) {
            return i;
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            match self.socket.read() {
                Ok(Message::Text(text)) => {
                    let v: Value = serde_json::from_str(&text).expect("the feed sends JSON");
                    self.log.push(v);
                    if want(&self.log[self.log.len() - 1]) {
                        return self.log.len() - 1;
                    }
                }
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => panic!("live feed failed while waiting for {what}: {e}"),
            }
        }
        panic!("no {what} within 60 s; got {:#?}", self.log);
    }

    /// The first message that satisfies `want`.
    fn get(&mut self, what: &str, want: impl Fn(&Value) -> bool) -> Value {
        let i = self.wait(what, want);
        self.log[i].clone()
    }

    fn send(&mut self, text: &str) {
        self.socket.send(Message::Text(text.into())).unwrap();
    }
}

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
    std::fs::write(fleet.path("rules.yml"), RULES).unwrap();
    fleet.add_aggregator_config(&format!(
        "[rules]\nfiles = [\"{}\"]\nevaluation_interval_seconds = 1.0\n",
        fleet.path("rules.yml").display()
    ));
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

    // no token, a wrong token, an unknown topic: refused before the upgrade, with the reason
    for (query, code) in [
        ("", 401),
        ("?access_token=nope", 401),
        (
            &format!("?access_token={TOKEN}&topics=hosts,weather") as &str,
            400,
        ),
    ] {
        match connect(&fleet, query, false) {
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
    let mut browser = Feed::new(connect(&fleet, &format!("?access_token={TOKEN}"), false).unwrap());
    let mut tool = Feed::new(connect(&fleet, "", true).unwrap());
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

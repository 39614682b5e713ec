//! Health checks end to end: a real agent process runs checks against servers started here (an
//! HTTP server and Debian's `redis-server` with a 600-item queue) and ships the results; the
//! aggregator shows them at `/api/fleet/hosts/{host}/checks`, in the host's health and as series.
//! Stopping a server turns its check, and the host, unhealthy at the aggregator. Check results
//! that break the limits are refused with a reason and counted, and the state survives a restart.

mod support;

use fleetwatch_common::model::{now_ms, Batch, CheckResult, CheckStatus, Lane};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::*;

const WAIT: Duration = Duration::from_secs(90);

/// A tiny HTTP server on a thread answering `200 ok` to everything, until stopped.
struct HttpServer {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HttpServer {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((mut sock, _)) => {
                        let _ = sock.set_nonblocking(false);
                        let _ = sock.set_read_timeout(Some(Duration::from_secs(5)));
                        let mut req = Vec::new();
                        let mut buf = [0u8; 1024];
                        while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                            match sock.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => req.extend_from_slice(&buf[..n]),
                            }
                        }
                        let _ = sock.write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                        );
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Self {
            port,
            stop,
            thread: Some(thread),
        }
    }

    fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// `RPUSH key` with `n` items over the Redis protocol; returns the list's length.
fn rpush(port: u16, key: &str, n: usize) -> String {
    let mut args = vec!["RPUSH".to_string(), key.to_string()];
    args.extend((0..n).map(|i| format!("vote-{i}")));
    let mut cmd = format!("*{}\r\n", args.len());
    for a in &args {
        cmd.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    let mut sock = TcpStream::connect(("127.0.0.1", port)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    sock.write_all(cmd.as_bytes()).unwrap();
    let mut reply = [0u8; 64];
    let n = sock.read(&mut reply).unwrap();
    String::from_utf8_lossy(&reply[..n]).trim().to_string()
}

fn checks_of(fleet: &Fleet, host: &str) -> Option<Value> {
    let (code, body) = fleet
        .http_get(&format!("/api/fleet/hosts/{host}/checks"))
        .ok()?;
    (code == 200).then(|| serde_json::from_str::<Value>(&body).ok())??["data"]
        .clone()
        .into()
}

fn check<'a>(data: &'a Value, name: &str) -> Option<&'a Value> {
    data["checks"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == name)
}

fn status_of(fleet: &Fleet, host: &str, name: &str) -> Option<String> {
    let data = checks_of(fleet, host)?;
    Some(check(&data, name)?["status"].as_str()?.to_string())
}

fn host_health(fleet: &Fleet, host: &str) -> Option<String> {
    let (_, body) = fleet.http_get("/api/fleet/hosts").ok()?;
    let v: Value = serde_json::from_str(&body).ok()?;
    v["data"].as_array()?.iter().find(|h| h["host"] == host)?["health"]
        .as_str()
        .map(str::to_string)
}

fn scalar(fleet: &Fleet, q: &str) -> Option<f64> {
    let r = fleet.query(q);
    r.first()?["value"][1].as_str()?.parse().ok()
}

#[test]
fn agent_checks_reach_the_aggregator_and_follow_stopped_servers() {
    let Some(redis_bin) = peer_binary("redis-server", "redis-server") else {
        return;
    };
    let fleet = Fleet::new();
    let agg = fleet.start_aggregator();
    let http = HttpServer::start();
    let redis_port = free_tcp_port();
    let redis = Proc::spawn(
        "redis-server",
        Command::new(redis_bin)
            .args(["--port", &redis_port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(fleet.dir.path())
            .stdout(Stdio::null()),
    );
    fleet.wait_for("redis-server to answer", WAIT, || {
        TcpStream::connect(("127.0.0.1", redis_port)).is_ok()
    });
    assert_eq!(rpush(redis_port, "votes", 600), ":600");

    fleet.agent_config(
        "web-1",
        1.0,
        &format!(
            r#"
[[checks]]
name = "api"
interval_seconds = 1
timeout_seconds = 1
[checks.http]
url = "http://127.0.0.1:{http}/health"
body_contains = "ok"

[[checks]]
name = "queue"
interval_seconds = 1
timeout_seconds = 1
[checks.redis]
url = "redis://127.0.0.1:{redis_port}/0"
lists = [{{ key = "votes", warn = 500, critical = 1000 }}]
"#,
            http = http.port
        ),
    );
    let agent = fleet.start_agent("web-1");

    // Both checks at the aggregator: the API healthy, the queue's 600 items over 500 degraded.
    fleet.wait_for("both checks at the aggregator", WAIT, || {
        status_of(&fleet, "web-1", "api").as_deref() == Some("healthy")
            && status_of(&fleet, "web-1", "queue").as_deref() == Some("degraded")
    });
    let data = checks_of(&fleet, "web-1").unwrap();
    assert_eq!(data["health"], "degraded");
    let queue = check(&data, "queue").unwrap();
    assert!(
        queue["detail"]
            .as_str()
            .unwrap()
            .starts_with("list \"votes\" has 600 items (above 500)"),
        "{queue}"
    );
    assert_eq!(queue["stale"], false);
    assert_eq!(queue["transitions"][0]["to"], "degraded");
    assert_eq!(host_health(&fleet, "web-1").as_deref(), Some("degraded"));
    let (code, body) = fleet.http_get("/api/fleet/hosts/web-1").unwrap();
    assert_eq!(code, 200);
    let one: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(one["data"]["host"]["health"], "degraded");
    assert_eq!(one["data"]["checks"].as_array().unwrap().len(), 2);

    // The series, queryable with the host label from the agent's certificate.
    fleet.wait_for("check series", WAIT, || {
        scalar(
            &fleet,
            r#"fleetwatch_check_redis_list_length{host="web-1",check="queue",key="votes"}"#,
        ) == Some(600.0)
    });
    assert_eq!(
        scalar(
            &fleet,
            r#"fleetwatch_check_status{host="web-1",check="queue",kind="redis"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        scalar(
            &fleet,
            r#"fleetwatch_check_status{host="web-1",check="api",kind="http"}"#
        ),
        Some(0.0)
    );
    assert_eq!(
        scalar(
            &fleet,
            r#"fleetwatch_check_http_status_code{host="web-1",check="api"}"#
        ),
        Some(200.0)
    );
    assert_eq!(
        scalar(&fleet, r#"fleetwatch_host_health_status{host="web-1"}"#),
        Some(1.0)
    );
    assert!(scalar(
        &fleet,
        r#"fleetwatch_check_duration_seconds{host="web-1",check="api"}"#
    )
    .is_some());
    // An alert rule's view: checks that are not healthy.
    let bad = fleet.query(r#"fleetwatch_check_status{host="web-1"} > 0"#);
    assert_eq!(bad.len(), 1, "{bad:?}");
    assert_eq!(bad[0]["metric"]["check"], "queue");

    // Stop the HTTP server: the API check, and with it the host, turns unhealthy.
    http.stop();
    fleet.wait_for("the api check to turn unhealthy", WAIT, || {
        status_of(&fleet, "web-1", "api").as_deref() == Some("unhealthy")
    });
    assert_eq!(host_health(&fleet, "web-1").as_deref(), Some("unhealthy"));
    let data = checks_of(&fleet, "web-1").unwrap();
    let api = check(&data, "api").unwrap();
    let last = api["transitions"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(
        (last["from"].as_str(), last["to"].as_str()),
        (Some("healthy"), Some("unhealthy"))
    );
    assert!(api["detail"].as_str().unwrap().contains("/health"), "{api}");
    fleet.wait_for("host health series at 2", WAIT, || {
        scalar(&fleet, r#"fleetwatch_host_health_status{host="web-1"}"#) == Some(2.0)
    });

    // Stop Redis: the queue check is unhealthy too, with the reason.
    redis.kill_hard();
    fleet.wait_for("the queue check to turn unhealthy", WAIT, || {
        status_of(&fleet, "web-1", "queue").as_deref() == Some("unhealthy")
    });
    let data = checks_of(&fleet, "web-1").unwrap();
    let queue = check(&data, "queue").unwrap();
    assert!(
        queue["detail"]
            .as_str()
            .unwrap()
            .starts_with("connecting to redis://"),
        "{queue}"
    );
    assert!(fleet.own_metric("fleetwatch_ingest_check_results_total") >= 4.0);

    // The check state survives an aggregator restart.
    agent.stop();
    agg.stop();
    let agg = fleet.start_aggregator();
    let data = checks_of(&fleet, "web-1").unwrap();
    assert_eq!(check(&data, "api").unwrap()["status"], "unhealthy");
    assert_eq!(check(&data, "queue").unwrap()["status"], "unhealthy");
    assert!(
        check(&data, "queue").unwrap()["transitions"]
            .as_array()
            .unwrap()
            .len()
            >= 2
    );
    agg.stop();
}

#[test]
fn bad_check_results_are_refused_with_a_reason_and_counted() {
    let fleet = Fleet::new();
    let agg = fleet.start_aggregator();
    let now = now_ms();
    let good = |ts: i64, status: CheckStatus, detail: &str| CheckResult {
        name: "db".into(),
        timestamp_ms: ts,
        status,
        duration_seconds: 0.01,
        detail: detail.into(),
    };
    let mut first = Batch::new(Lane::Metrics, now);
    first.checks = vec![
        good(
            now - 2_000,
            CheckStatus::Healthy,
            "1 of 100 connections in use",
        ),
        CheckResult {
            name: "bad\nname".into(),
            ..good(now, CheckStatus::Healthy, "")
        },
        CheckResult {
            name: "huge".into(),
            ..good(now, CheckStatus::Healthy, &"x".repeat(10_000))
        },
    ];
    let mut second = Batch::new(Lane::Metrics, now);
    second.checks = vec![
        good(now - 1_000, CheckStatus::Unhealthy, "connection refused"),
        CheckResult {
            duration_seconds: -1.0,
            ..good(now, CheckStatus::Healthy, "")
        },
    ];
    ship_in_order(&fleet, "db-1", vec![first, second]);

    let data = checks_of(&fleet, "db-1").unwrap();
    let checks = data["checks"].as_array().unwrap();
    assert_eq!(checks.len(), 1, "{data}");
    assert_eq!(checks[0]["name"], "db");
    assert_eq!(checks[0]["status"], "unhealthy");
    assert_eq!(checks[0]["detail"], "connection refused");
    assert_eq!(checks[0]["transitions"].as_array().unwrap().len(), 2);
    assert_eq!(data["health"], "unhealthy");
    let refused = |reason: &str| {
        fleet.own_metric(&format!(
            "fleetwatch_ingest_items_refused_total{{reason=\"{reason}\"}}"
        ))
    };
    assert_eq!(refused("check_name"), 1.0);
    assert_eq!(refused("check_detail_too_long"), 1.0);
    assert_eq!(refused("check_duration"), 1.0);
    assert_eq!(
        fleet.own_metric("fleetwatch_ingest_check_results_total{status=\"unhealthy\"}"),
        1.0
    );
    assert_eq!(
        fleet.own_metric("fleetwatch_ingest_check_results_total{status=\"healthy\"}"),
        1.0
    );
    let (code, body) = fleet.http_get("/api/fleet/hosts/nobody/checks").unwrap();
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("nobody"), "{body}");
    agg.stop();
}

//! The agent's sources end to end, real processes over loopback: Prometheus scrape targets (a
//! real node_exporter and a real Prometheus), the push listener, SIGHUP reloads under load, and
//! certificate rotation.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::*;

const LONG: Duration = Duration::from_secs(90);

/// Every `(timestamp ms, value)` of a selector over the last hour.
fn samples(fleet: &Fleet, selector: &str) -> Vec<(i64, f64)> {
    let mut out = Vec::new();
    for series in fleet.query(&format!("{selector}[1h]")) {
        for v in series["values"].as_array().unwrap() {
            let t = (v[0].as_f64().unwrap() * 1000.0).round() as i64;
            let value: f64 = v[1].as_str().unwrap().parse().unwrap();
            out.push((t, value));
        }
    }
    out.sort_by_key(|s| s.0);
    out
}

/// The value of a one-series instant query, if there is one.
fn value(fleet: &Fleet, q: &str) -> Option<f64> {
    let r = fleet.query(q);
    r.first()
        .and_then(|s| s["value"][1].as_str()?.parse::<f64>().ok())
}

/// A Prometheus endpoint served by the test: a counter that is `n` at the n-th request.
struct CounterTarget {
    port: u16,
    served: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl CounterTarget {
    fn start(metric: &'static str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let served = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (served.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(mut conn) = conn else { continue };
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                    line.clear();
                }
                let n = s.fetch_add(1, Ordering::SeqCst) + 1;
                let body = format!("# TYPE {metric} counter\n{metric} {n}\n");
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        Self { port, served, stop }
    }
}

impl Drop for CounterTarget {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn scrape_table(job: &str, port: u16, interval: f64) -> String {
    format!(
        "[[scrape]]\njob = \"{job}\"\nurl = \"http://127.0.0.1:{port}/metrics\"\ninterval_seconds = {interval}\n"
    )
}

fn push_table(port: u16) -> String {
    format!("[push]\nlisten = \"127.0.0.1:{port}\"\n")
}

#[test]
fn node_exporter_and_prometheus_scraped_with_host_and_target_labels() {
    let Some(node_exporter) = peer_binary("prometheus-node-exporter", "prometheus-node-exporter")
    else {
        return;
    };
    let Some(prometheus) = peer_binary("prometheus", "prometheus") else {
        return;
    };
    let fleet = Fleet::new();
    let node_port = free_tcp_port();
    let node = Proc::spawn(
        "node_exporter",
        Command::new(node_exporter)
            .arg(format!("--web.listen-address=127.0.0.1:{node_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let prom_port = free_tcp_port();
    std::fs::write(
        fleet.path("prometheus.yml"),
        "global:\n  scrape_interval: 1m\nscrape_configs: []\n",
    )
    .unwrap();
    let _prom = Proc::spawn(
        "prometheus",
        Command::new(prometheus)
            .arg(format!(
                "--config.file={}",
                fleet.path("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                fleet.path("prom-data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let extra = format!(
        "{}{}labels = {{ team = \"ops\" }}\n{}",
        push_table(free_tcp_port()),
        scrape_table("node", node_port, 1.0),
        scrape_table("prometheus", prom_port, 1.0),
    );
    fleet.agent_config("src-1", 1.0, &extra);
    let agg = fleet.start_aggregator();
    let agent = fleet.start_agent("src-1");

    let node_instance = format!("127.0.0.1:{node_port}");
    let mem = format!(
        "node_memory_MemTotal_bytes{{host=\"src-1\",job=\"node\",instance=\"{node_instance}\",team=\"ops\"}}"
    );
    fleet.wait_for("node_exporter's series", LONG, || {
        !fleet.query(&mem).is_empty()
    });
    let prom_info = format!(
        "prometheus_build_info{{host=\"src-1\",job=\"prometheus\",instance=\"127.0.0.1:{prom_port}\"}}"
    );
    fleet.wait_for("Prometheus' own series", LONG, || {
        !fleet.query(&prom_info).is_empty()
    });
    // a histogram from Prometheus' /metrics arrives whole (buckets, sum, count)
    fleet.wait_for("a scraped histogram", LONG, || {
        !fleet
            .query("prometheus_http_request_duration_seconds_bucket{host=\"src-1\",le=\"+Inf\"}")
            .is_empty()
    });
    assert_eq!(value(&fleet, "up{host=\"src-1\",job=\"node\"}"), Some(1.0));
    let scraped = value(
        &fleet,
        "scrape_samples_scraped{host=\"src-1\",job=\"node\"}",
    )
    .unwrap();
    assert!(
        scraped > 100.0,
        "node_exporter exposes hundreds of samples, got {scraped}"
    );
    assert!(value(
        &fleet,
        "scrape_duration_seconds{host=\"src-1\",job=\"prometheus\"}"
    )
    .is_some());

    // node_exporter goes away: up turns 0, its series go stale, the failure is counted
    node.kill_hard();
    fleet.wait_for("up 0 for the stopped target", LONG, || {
        value(&fleet, "up{host=\"src-1\",job=\"node\"}") == Some(0.0)
    });
    fleet.wait_for("node_exporter's series to go stale", LONG, || {
        fleet.query(&mem).is_empty()
    });
    fleet.wait_for("the failed scrapes counted", LONG, || {
        value(
            &fleet,
            "fleetwatch_agent_scrape_failures_total{host=\"src-1\",target=\"node\",reason=\"connect\"}",
        )
        .is_some_and(|v| v >= 1.0)
    });
    // Prometheus is still scraped
    assert_eq!(
        value(&fleet, "up{host=\"src-1\",job=\"prometheus\"}"),
        Some(1.0)
    );
    agent.stop();
    agg.stop();
}

#[test]
fn push_accepts_json_and_text_and_refuses_each_invalid_kind_without_losing_buffered_data() {
    let fleet = Fleet::new();
    let port = free_tcp_port();
    fleet.agent_config(
        "push-1",
        0.5,
        &format!("{}max_body_bytes = 4096\n", push_table(port)),
    );
    let agg = fleet.start_aggregator();
    let agent = fleet.start_agent("push-1");
    let post = |ct: &str, body: &str| http_post(port, "/v1/metrics", ct, body.as_bytes()).unwrap();
    fleet.wait_for("the push listener", LONG, || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });

    let (code, body) = post(
        "application/json",
        r#"{"name":"active_subscriptions","value":42,"labels":{"plan":"pro"}}"#,
    );
    assert_eq!(code, 200, "{body}");
    let (code, body) = post(
        "application/json",
        r#"[{"name":"daily_revenue","value":1234.5},{"name":"jobs_done_total","value":7,"type":"counter","labels":{"queue":"mail"}}]"#,
    );
    assert_eq!(code, 200, "{body}");
    let (code, body) = post(
        "text/plain; version=0.0.4",
        "# TYPE queue_length gauge\nqueue_length{queue=\"votes\"} 600\n",
    );
    assert_eq!(code, 200, "{body}");
    for (q, want) in [
        ("active_subscriptions{host=\"push-1\",plan=\"pro\"}", 42.0),
        ("daily_revenue{host=\"push-1\"}", 1234.5),
        ("jobs_done_total{host=\"push-1\",queue=\"mail\"}", 7.0),
        ("queue_length{host=\"push-1\",queue=\"votes\"}", 600.0),
    ] {
        fleet.wait_for(q, LONG, || value(&fleet, q) == Some(want));
    }

    // The aggregator goes away: what is pushed now waits in the agent's buffer.
    agg.kill_hard();
    for i in 1..=5 {
        let (code, body) = post(
            "application/json",
            &format!(
                r#"{{"name":"buffered_total","value":{i},"type":"counter","timestamp":{}}}"#,
                now_ms() - 10_000 + i
            ),
        );
        assert_eq!(code, 200, "{body}");
    }
    let big = format!(
        r#"{{"name":"x","value":1,"labels":{{"a":"{}"}}}}"#,
        "v".repeat(5000)
    );
    let many_labels: Vec<String> = (0..40).map(|i| format!("\"l{i}\":\"v\"")).collect();
    let many_labels = format!(
        r#"{{"name":"x","value":1,"labels":{{{}}}}}"#,
        many_labels.join(",")
    );
    let invalid: Vec<(&str, String, u16, &str)> = vec![
        (
            "application/json",
            r#"{"name":"x","value":"#.into(),
            400,
            "json",
        ),
        (
            "application/json",
            r#"{"name":"bad name","value":1}"#.into(),
            400,
            "metric_name",
        ),
        (
            "application/json",
            r#"{"name":"x","value":1,"labels":{"bad-label":"v"}}"#.into(),
            400,
            "label_name",
        ),
        (
            "application/json",
            r#"{"name":"x","value":"NaN"}"#.into(),
            400,
            "value",
        ),
        (
            "application/json",
            r#"{"name":"x_total","value":-1,"type":"counter"}"#.into(),
            400,
            "value",
        ),
        (
            "application/json",
            r#"{"name":"x","value":1,"type":"histogram"}"#.into(),
            400,
            "type",
        ),
        ("application/json", many_labels, 400, "too_many_labels"),
        ("application/json", big, 413, "body_too_large"),
        (
            "text/plain",
            "# TYPE c counter\nc NaN\n".into(),
            400,
            "value",
        ),
        ("text/plain", "x{a=\"1\" 2\n".into(), 400, "text"),
        ("application/xml", "<x/>".into(), 415, "content_type"),
        // a valid item does not get in with an invalid one
        (
            "application/json",
            r#"[{"name":"must_not_exist","value":1},{"name":"x","value":1,"labels":{"__y":"v"}}]"#
                .into(),
            400,
            "label_name",
        ),
    ];
    for (ct, body, want_code, want_reason) in &invalid {
        let (code, answer) = post(ct, body);
        assert_eq!(code, *want_code, "{ct} {body}: {answer}");
        let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(answer["reason"], *want_reason, "{answer}");
        assert!(!answer["error"].as_str().unwrap().is_empty());
    }
    let agg = fleet.start_aggregator();
    fleet.wait_for("the buffered pushes", LONG, || {
        samples(&fleet, "buffered_total{host=\"push-1\"}").len() == 5
    });
    let values: Vec<f64> = samples(&fleet, "buffered_total{host=\"push-1\"}")
        .iter()
        .map(|s| s.1)
        .collect();
    assert_eq!(values, vec![1.0, 2.0, 3.0, 4.0, 5.0]);
    let rejected = invalid.len() as f64;
    fleet.wait_for("the rejections counted", LONG, || {
        value(
            &fleet,
            "sum(fleetwatch_agent_push_rejected_total{host=\"push-1\"})",
        ) == Some(rejected)
    });
    assert!(fleet.query("must_not_exist").is_empty());
    agent.stop();
    agg.stop();
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Pushes `pushed_total` = 1, 2, 3 ... every 20 ms until stopped; returns the last value.
fn pusher(port: u16, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut i = 0u64;
        let mut last_ts = 0i64;
        while !stop.load(Ordering::SeqCst) {
            i += 1;
            let ts = now_ms().max(last_ts + 1);
            last_ts = ts;
            let body = format!(
                r#"{{"name":"pushed_total","value":{i},"type":"counter","timestamp":{ts}}}"#
            );
            let (code, answer) =
                http_post(port, "/v1/metrics", "application/json", body.as_bytes()).unwrap();
            assert_eq!(code, 200, "push {i}: {answer}");
            std::thread::sleep(Duration::from_millis(20));
        }
        i
    })
}

#[test]
fn sighup_changes_interval_adds_target_and_check_and_refuses_invalid_config_losing_nothing() {
    let fleet = Fleet::new();
    let app = CounterTarget::start("app_requests_total");
    let worker = CounterTarget::start("worker_jobs_total");
    let port = free_tcp_port();
    let base = push_table(port);
    let cfg = fleet.agent_config(
        "reload-1",
        0.4,
        &format!("{base}{}", scrape_table("app", app.port, 1.0)),
    );
    let agg = fleet.start_aggregator();
    let agent = fleet.start_agent("reload-1");
    let app_q = "app_requests_total{host=\"reload-1\",job=\"app\"}";
    fleet.wait_for("first scrapes", LONG, || samples(&fleet, app_q).len() >= 3);
    let stop = Arc::new(AtomicBool::new(false));
    let load = pusher(port, stop.clone());
    std::thread::sleep(Duration::from_secs(2));
    let reload_at = now_ms();

    // faster app scrapes, a second target and a health check, while pushes keep coming
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        &scrape_table("app", app.port, 1.0),
        &format!(
            "{}{}[[checks]]\nname = \"aggregator-http\"\ninterval_seconds = 1.0\ntimeout_seconds = 1.0\n[checks.tcp]\naddress = \"127.0.0.1:{}\"\n",
            scrape_table("app", app.port, 0.5),
            scrape_table("worker", worker.port, 1.0),
            fleet.http_port
        ),
    );
    std::fs::write(&cfg, &text).unwrap();
    sighup(agent.pid());
    let worker_q = "worker_jobs_total{host=\"reload-1\",job=\"worker\"}";
    fleet.wait_for("the added target", LONG, || {
        !samples(&fleet, worker_q).is_empty()
    });
    fleet.wait_for("the added check", LONG, || {
        !fleet
            .query("fleetwatch_check_status{host=\"reload-1\",check=\"aggregator-http\"}")
            .is_empty()
    });

    // an invalid file is refused and the running configuration kept
    std::fs::write(
        &cfg,
        text.replace("interval_seconds = 0.5", "interval_seconds = -1"),
    )
    .unwrap();
    sighup(agent.pid());
    fleet.wait_for("the refused reload counted", LONG, || {
        value(
            &fleet,
            "fleetwatch_agent_config_reloads_total{host=\"reload-1\",result=\"invalid\"}",
        ) == Some(1.0)
    });
    let log = std::fs::read_to_string(fleet.path("agent-reload-1.log")).unwrap();
    assert!(log.contains("configuration reload refused"), "{log}");
    assert!(
        log.contains("interval_seconds must be a positive number"),
        "{log}"
    );
    let before = app.served.load(Ordering::SeqCst);
    fleet.wait_for("scrapes to go on", LONG, || {
        app.served.load(Ordering::SeqCst) >= before + 4
    });

    fleet.wait_for("scrapes at the new interval", LONG, || {
        samples(&fleet, app_q)
            .iter()
            .filter(|s| s.0 > reload_at + 2000)
            .count()
            >= 6
    });
    stop.store(true, Ordering::SeqCst);
    let pushed = load.join().unwrap();
    assert!(pushed > 50, "the pushes ran through the reloads");
    // Every response the app served and every push is stored, exactly once.
    let served = app.served.load(Ordering::SeqCst);
    fleet.wait_for("every push stored", LONG, || {
        samples(&fleet, "pushed_total{host=\"reload-1\"}").len() as u64 >= pushed
    });
    let pushed_values: Vec<f64> = samples(&fleet, "pushed_total{host=\"reload-1\"}")
        .iter()
        .map(|s| s.1)
        .collect();
    assert_eq!(
        pushed_values,
        (1..=pushed).map(|v| v as f64).collect::<Vec<_>>()
    );
    fleet.wait_for("every app scrape stored", LONG, || {
        samples(&fleet, app_q).len() as u64 >= served
    });
    let app_samples = samples(&fleet, app_q);
    let app_values: Vec<f64> = app_samples
        .iter()
        .map(|s| s.1)
        .take(served as usize)
        .collect();
    assert_eq!(
        app_values,
        (1..=served).map(|v| v as f64).collect::<Vec<_>>()
    );
    // the new interval is in force: scrapes before the reload are a second apart, after it
    // half a second
    let gaps = |from: i64, to: i64| -> Vec<i64> {
        let times: Vec<i64> = app_samples
            .iter()
            .map(|s| s.0)
            .filter(|t| *t >= from && *t < to)
            .collect();
        times.windows(2).map(|w| w[1] - w[0]).collect()
    };
    let before_gaps = gaps(0, reload_at);
    assert!(before_gaps.iter().all(|g| *g >= 800), "{before_gaps:?}");
    let after_gaps = gaps(reload_at + 2000, i64::MAX);
    assert!(after_gaps.iter().any(|g| *g < 800), "{after_gaps:?}");
    assert_eq!(
        value(
            &fleet,
            "fleetwatch_agent_config_reloads_total{host=\"reload-1\",result=\"applied\"}"
        ),
        Some(1.0)
    );
    agent.stop();
    agg.stop();
}

#[test]
fn rotated_certificate_is_used_by_the_next_connection_without_a_restart() {
    let fleet = Fleet::new();
    fleet.agent_config("rot-1", 0.5, &push_table(free_tcp_port()));
    // the agent reads copies, as an operator's deployment tool would write them
    let cfg = fleet.path("agent-rot-1.toml");
    let certs = fleet.path("agent-rot-1-certs");
    std::fs::create_dir_all(&certs).unwrap();
    let install = |name: &str| {
        for ext in ["pem", "key"] {
            let tmp = certs.join(format!("agent.{ext}.tmp"));
            std::fs::copy(fleet.pki().join(format!("agents/{name}.{ext}")), &tmp).unwrap();
            std::fs::rename(&tmp, certs.join(format!("agent.{ext}"))).unwrap();
        }
    };
    install("rot-1");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let text = text
        .replace(
            &fleet.pki().join("agents/rot-1.pem").display().to_string(),
            &certs.join("agent.pem").display().to_string(),
        )
        .replace(
            &fleet.pki().join("agents/rot-1.key").display().to_string(),
            &certs.join("agent.key").display().to_string(),
        );
    std::fs::write(&cfg, text).unwrap();
    let agg = fleet.start_aggregator();
    let agent = fleet.start_agent("rot-1");
    let q = |host: &str| format!("node_time_seconds{{host=\"{host}\"}}");
    fleet.wait_for("data under the first certificate", LONG, || {
        !samples(&fleet, &q("rot-1")).is_empty()
    });

    // A new certificate (its name, and so the host label, tells them apart) replaces the
    // files; SIGHUP makes the agent reconnect with it.
    let out = Command::new(env!("CARGO_BIN_EXE_fleetwatch-aggregator"))
        .args(["pki", "issue", "--dir"])
        .arg(fleet.pki())
        .args(["--agent", "rot-2"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    install("rot-2");
    sighup(agent.pid());
    fleet.wait_for("data under the new certificate", LONG, || {
        !samples(&fleet, &q("rot-2")).is_empty()
    });

    // Revoking the old certificate does not stop the agent: it no longer uses it.
    let out = Command::new(env!("CARGO_BIN_EXE_fleetwatch-aggregator"))
        .args(["pki", "revoke", "--dir"])
        .arg(fleet.pki())
        .arg("rot-1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    fleet.wait_for("the aggregator to load the revocation", LONG, || {
        fleet.own_metric("fleetwatch_pki_crl_reloads_total{result=\"ok\"}") >= 1.0
    });
    let after_revocation = samples(&fleet, &q("rot-2")).len();
    fleet.wait_for("data after the revocation", LONG, || {
        samples(&fleet, &q("rot-2")).len() >= after_revocation + 5
    });
    agent.stop();
    agg.stop();
}

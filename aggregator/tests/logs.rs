//! Logs at the aggregator over real QUIC and HTTP: records of two hosts searched by trace id,
//! each filter kind, pagination without gaps or repeats, counts by level, the log-derived
//! counter in PromQL, the live tail, bad parameters named; a kill -9 after acknowledgement loses
//! and repeats nothing; retention by time removes old records.

mod support;

use fleetwatch_common::model::{Batch, Lane, LogLevel, LogRecord};
use serde_json::Value;
use std::collections::HashSet;
use std::time::{Duration, Instant};
use support::live::{connect, Feed};
use support::{ship_in_order, urlencode, Fleet, TOKEN};

const NS: i64 = 1_000_000_000;

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

fn record(ts: i64, level: LogLevel, message: String, fields: &[(&str, &str)]) -> LogRecord {
    LogRecord {
        timestamp_ns: ts,
        source: "/var/log/app.log".into(),
        level,
        message,
        fields: fields
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

fn batch(logs: Vec<LogRecord>) -> Batch {
    let mut b = Batch::new(Lane::Logs, 0);
    b.logs = logs;
    b
}

/// `GET` a log route: status and JSON body.
fn get(fleet: &Fleet, path: &str, params: &[(&str, &str)]) -> (u16, Value) {
    let query: Vec<String> = params
        .iter()
        .map(|(k, v)| format!("{k}={}", urlencode(v)))
        .collect();
    let (code, body) = fleet
        .http_get(&format!("{path}?{}", query.join("&")))
        .unwrap();
    let v = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"));
    (code, v)
}

/// Messages of every record matching `params` (all pages of 5,000).
fn messages(fleet: &Fleet, params: &[(&str, &str)]) -> Vec<String> {
    let (code, v) = get(fleet, "/api/logs/query", params);
    assert_eq!(code, 200, "{params:?}: {v}");
    v["data"]["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["message"].as_str().unwrap().to_string())
        .collect()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[test]
fn logs_of_two_hosts_are_searched_paged_counted_and_tailed() {
    let fleet = Fleet::new();
    // small buffers: some records in segments, the newest still buffered
    fleet.add_aggregator_config("[logs]\nbuffer_bytes = 3000\n");
    let _agg = fleet.start_aggregator();
    let t0 = now_ns() - 600 * NS;
    let start = (t0 / NS - 1).to_string();
    let levels = [LogLevel::Info, LogLevel::Warn, LogLevel::Error];
    for (h, host) in ["web-1", "web-2"].into_iter().enumerate() {
        let mut batches = Vec::new();
        for b in 0..5i64 {
            let logs = (0..10i64)
                .map(|i| {
                    let n = b * 10 + i;
                    let trace = format!("trace-{h}-{n}");
                    let mut fields = vec![("trace_id", trace.as_str())];
                    if n == 7 {
                        fields[0].1 = "shared-trace";
                    }
                    if n % 5 == 0 {
                        fields.push(("service", "billing"));
                    }
                    record(
                        t0 + n * NS + h as i64,
                        levels[(n % 3) as usize],
                        format!("{host} request {n} took {} ms", n * 10),
                        &fields,
                    )
                })
                .collect();
            batches.push(batch(logs));
        }
        ship_in_order(&fleet, host, batches);
    }
    let q = |extra: &[(&str, &str)]| {
        let mut p = vec![("start", start.as_str()), ("limit", "5000")];
        p.extend_from_slice(extra);
        messages(&fleet, &p)
    };

    // a trace across hosts
    assert_eq!(
        sorted(q(&[("field", "trace_id=shared-trace")])),
        vec!["web-1 request 7 took 70 ms", "web-2 request 7 took 70 ms"]
    );
    // each filter kind
    assert_eq!(q(&[]).len(), 100);
    assert_eq!(q(&[("selector", r#"{host="web-2"}"#)]).len(), 50);
    assert_eq!(
        q(&[("selector", r#"{host="web-1",level=~"error|critical"}"#)]).len(),
        16
    );
    assert_eq!(q(&[("min_level", "warn")]).len(), 66);
    assert_eq!(q(&[("selector", r#"{service="billing"}"#)]).len(), 20);
    assert_eq!(
        q(&[
            ("field", "service=billing"),
            ("selector", r#"{host="web-1"}"#)
        ])
        .len(),
        10
    );
    assert_eq!(
        q(&[("contains", "request 4"), ("selector", r#"{host="web-1"}"#)]),
        // newest first
        (40..50)
            .rev()
            .map(|n| format!("web-1 request {n} took {} ms", n * 10))
            .chain(["web-1 request 4 took 40 ms".to_string()])
            .collect::<Vec<_>>()
    );
    assert_eq!(
        q(&[
            ("contains", "request 4"),
            ("not_contains", "took 40 ms"),
            ("selector", r#"{host="web-1"}"#)
        ])
        .len(),
        10
    );
    assert_eq!(q(&[("regex", r"took \d{3} ms$")]).len(), 80);
    assert_eq!(q(&[("not_regex", r"request [0-9] ")]).len(), 80);
    let (_, first) = get(
        &fleet,
        "/api/logs/query",
        &[("start", &start), ("limit", "1")],
    );
    let r = &first["data"]["records"][0];
    assert_eq!(r["host"], "web-2");
    assert_eq!(r["level"], "warn");
    assert_eq!(r["source"], "/var/log/app.log");
    assert_eq!(r["fields"]["trace_id"], "trace-1-49");
    assert!(r["time"].as_str().unwrap().ends_with('Z'));

    // pages of 7, both directions: every record once, in order
    for direction in ["newest", "oldest"] {
        let mut seen: Vec<String> = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut p = vec![
                ("start", start.as_str()),
                ("limit", "7"),
                ("direction", direction),
            ];
            if let Some(c) = &cursor {
                p.push(("cursor", c));
            }
            let (code, v) = get(&fleet, "/api/logs/query", &p);
            assert_eq!(code, 200, "{v}");
            for r in v["data"]["records"].as_array().unwrap() {
                seen.push(format!(
                    "{} {}",
                    r["timestamp_ns"].as_str().unwrap(),
                    r["host"]
                ));
            }
            match v["data"]["cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => break,
            }
            // a record arriving between pages shifts nothing: it comes last, once
            if seen.len() == 14 && direction == "oldest" {
                ship_in_order(
                    &fleet,
                    "web-3",
                    vec![batch(vec![record(
                        now_ns(),
                        LogLevel::Info,
                        "late".into(),
                        &[],
                    )])],
                );
            }
        }
        let unique: HashSet<&String> = seen.iter().collect();
        assert_eq!(unique.len(), seen.len(), "{direction}: a record repeated");
        let mut order: Vec<i64> = seen
            .iter()
            .map(|s| s.split(' ').next().unwrap().parse().unwrap())
            .collect();
        if direction == "newest" {
            order.reverse();
        }
        assert!(
            order.windows(2).all(|w| w[0] <= w[1]),
            "{direction}: out of order"
        );
        assert!(seen.len() >= 100, "{direction}: {} records", seen.len());
    }

    // counts by level, in one bucket and in buckets of 10 s
    let (code, v) = get(
        &fleet,
        "/api/logs/counts",
        &[
            ("start", &start),
            ("step", "3600"),
            ("selector", r#"{host=~"web-1|web-2"}"#),
        ],
    );
    assert_eq!(code, 200, "{v}");
    let total = |level: &str| -> u64 {
        v["data"]["series"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["level"] == level)
            .map_or(0, |s| s["total"].as_u64().unwrap())
    };
    assert_eq!((total("info"), total("warn"), total("error")), (34, 34, 32));
    let (_, v) = get(
        &fleet,
        "/api/logs/counts",
        &[("start", &start), ("step", "10s"), ("contains", "web-1")],
    );
    let sum: u64 = v["data"]["series"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["values"].as_array().unwrap().iter())
        .map(|p| p[1].as_u64().unwrap())
        .sum();
    assert_eq!(sum, 50);
    let (_, v) = get(&fleet, "/api/logs/label/host/values", &[]);
    assert_eq!(v["data"], serde_json::json!(["web-1", "web-2", "web-3"]));

    // bad parameters: 400 naming the parameter
    for (params, name) in [
        (vec![("start", "yesterday")], "start"),
        (vec![("limit", "0")], "limit"),
        (vec![("direction", "sideways")], "direction"),
        (vec![("cursor", "bm90IGEgY3Vyc29y")], "cursor"),
        (vec![("selector", "{zone=\"eu\"}")], "selector"),
        (vec![("regex", "(unclosed")], "regex"),
        (vec![("min_level", "loud")], "min_level"),
        (vec![("field", "trace_id")], "field"),
        (vec![("trace_id", "x")], "trace_id"),
    ] {
        let (code, v) = get(&fleet, "/api/logs/query", &params);
        assert_eq!(code, 400, "{params:?}: {v}");
        assert_eq!(v["errorType"], "bad_data");
        assert!(
            v["error"]
                .as_str()
                .unwrap()
                .contains(&format!("\"{name}\"")),
            "{params:?}: {v}"
        );
    }
    let (code, v) = get(&fleet, "/api/logs/counts", &[("step", "0.000001")]);
    assert_eq!(code, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("\"step\""), "{v}");

    // the log-derived counter, in PromQL
    fleet.wait_for(
        "fleetwatch_log_records_total",
        Duration::from_secs(60),
        || {
            let r = fleet.query(r#"sum by (host) (fleetwatch_log_records_total{level="error"})"#);
            r.iter()
                .any(|s| s["metric"]["host"] == "web-1" && s["value"][1] == "16")
        },
    );

    // the live tail: a new matching record arrives; others are filtered out
    let mut feed = Feed::new(
        connect(
            fleet.http_port,
            &format!(
                "?access_token={TOKEN}&topics=logs&selector={}&contains=tail-me",
                urlencode(r#"{host="web-2"}"#)
            ),
            None,
        )
        .unwrap(),
    );
    ship_in_order(
        &fleet,
        "web-1",
        vec![batch(vec![record(
            now_ns(),
            LogLevel::Info,
            "tail-me from web-1".into(),
            &[],
        )])],
    );
    ship_in_order(
        &fleet,
        "web-2",
        vec![batch(vec![
            record(now_ns(), LogLevel::Info, "not this one".into(), &[]),
            record(now_ns(), LogLevel::Error, "tail-me from web-2".into(), &[]),
        ])],
    );
    let acknowledged = Instant::now();
    let first = feed.get("the tailed record", |v| v["type"] == "logs");
    let got: Vec<Value> = first["records"].as_array().unwrap().clone();
    eprintln!(
        "live tail: record received {:?} after its acknowledgement",
        acknowledged.elapsed()
    );
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["message"], "tail-me from web-2");
    assert_eq!(got[0]["level"], "error");
    let _ = feed.socket.close(None);
    assert!(fleet.own_metric("fleetwatch_live_messages_total{topic=\"logs\"}") >= 1.0);
}

#[test]
fn acknowledged_records_survive_kill_9_and_are_stored_once() {
    let fleet = Fleet::new();
    // segments written as records arrive, and head flushes (which remove the log) every 3 s
    fleet.add_aggregator_config("[logs]\nbuffer_bytes = 4000\n");
    let toml = std::fs::read_to_string(fleet.path("aggregator.toml")).unwrap();
    std::fs::write(
        fleet.path("aggregator.toml"),
        toml.replacen("[http]", "[store]\nflush_minutes = 0.05\n[http]", 1),
    )
    .unwrap();
    let t0 = now_ns() - 3600 * NS;
    let start = (t0 / NS - 1).to_string();
    let mut n = 0i64;
    let mut expected: Vec<String> = Vec::new();
    let mut agg = Some(fleet.start_aggregator());
    for round in 0..2 {
        let mut batches = Vec::new();
        for _ in 0..20 {
            let logs = (0..25)
                .map(|_| {
                    n += 1;
                    expected.push(format!("record {n}"));
                    record(t0 + n * 1000, LogLevel::Info, format!("record {n}"), &[])
                })
                .collect();
            batches.push(batch(logs));
        }
        // round 1 ships across a flush: some records in segments, some only in the log
        ship_in_order(&fleet, "web-1", batches[..10].to_vec());
        if round == 1 {
            std::thread::sleep(Duration::from_secs(4));
        }
        ship_in_order(&fleet, "web-1", batches[10..].to_vec());
        agg.take().unwrap().kill_hard();
        agg = Some(fleet.start_aggregator());
        let got = messages(&fleet, &[("start", &start), ("limit", "5000")]);
        assert_eq!(
            got.len(),
            expected.len(),
            "round {round}: every record, none twice"
        );
        assert_eq!(sorted(got), sorted(expected.clone()));
    }
    // the counter after restarts counts each record once
    let total = expected.len().to_string();
    fleet.wait_for("the log-derived counter", Duration::from_secs(60), || {
        let r = fleet.query("sum(fleetwatch_log_records_total)");
        r.first().is_some_and(|s| s["value"][1] == total.as_str())
    });
}

#[test]
fn retention_removes_records_older_than_it() {
    let fleet = Fleet::new();
    fleet.add_aggregator_config("[logs]\nretention_hours = 1.0\nbuffer_bytes = 1\n");
    let toml = std::fs::read_to_string(fleet.path("aggregator.toml")).unwrap();
    std::fs::write(
        fleet.path("aggregator.toml"),
        toml.replacen("[http]", "[store]\nflush_minutes = 0.05\n[http]", 1),
    )
    .unwrap();
    let _agg = fleet.start_aggregator();
    let old = now_ns() - 3 * 3600 * NS;
    ship_in_order(
        &fleet,
        "web-1",
        vec![
            batch(vec![record(old, LogLevel::Info, "old".into(), &[])]),
            batch(vec![record(now_ns(), LogLevel::Info, "new".into(), &[])]),
        ],
    );
    let start = (old / NS - 60).to_string();
    assert_eq!(messages(&fleet, &[("start", &start)]).len(), 2);
    fleet.wait_for("the old record removed", Duration::from_secs(90), || {
        messages(&fleet, &[("start", &start)]) == vec!["new".to_string()]
    });
    assert!(fleet.own_metric("fleetwatch_logstore_removed_segments_total{reason=\"time\"}") >= 1.0);
    // the counter still counts both
    fleet.wait_for("the counter", Duration::from_secs(60), || {
        let r = fleet.query("sum(fleetwatch_log_records_total)");
        r.first().is_some_and(|s| s["value"][1] == "2")
    });
}

//! Logs end to end: real agent processes tail files and take pushed records, ship them over
//! QUIC to a real aggregator, and the records are read back through `/api/logs/query` and the
//! live tail. The agent is killed hard while tailing and the aggregator is down for a while:
//! every line arrives once, in order; hostile lines are stored as documented and counted.

mod support;

use serde_json::Value;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};
use support::live::{connect, Feed};
use support::{http_post, urlencode, Fleet, TOKEN};

fn logs_config(file: &Path, push_port: u16) -> String {
    format!(
        r#"[push]
listen = "127.0.0.1:{push_port}"
[logs]
scan_interval_seconds = 0.2
read_interval_seconds = 0.05
[[logs.files]]
name = "app"
paths = ["{}"]
start_at = "beginning"
"#,
        file.display()
    )
}

/// Every record matching `params`, oldest first (following cursors).
fn query(fleet: &Fleet, params: &[(&str, &str)]) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut q: Vec<String> = params
            .iter()
            .map(|(k, v)| format!("{k}={}", urlencode(v)))
            .collect();
        q.push("direction=oldest".into());
        q.push("limit=5000".into());
        q.push("start=0".into());
        if let Some(c) = &cursor {
            q.push(format!("cursor={}", urlencode(c)));
        }
        let (code, body) = fleet
            .http_get(&format!("/api/logs/query?{}", q.join("&")))
            .unwrap();
        assert_eq!(code, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        out.extend(v["data"]["records"].as_array().unwrap().iter().cloned());
        match v["data"]["cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return out,
        }
    }
}

fn line(n: usize) -> String {
    format!("line {n:06} {}\n", "p".repeat(60))
}

fn append(path: &Path, bytes: &[u8]) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    f.write_all(bytes).unwrap();
}

#[test]
fn file_lines_arrive_once_in_order_through_agent_kills_and_an_aggregator_outage() {
    let fleet = Fleet::new();
    let agg = fleet.start_aggregator();
    let file = fleet.path("app.log");
    std::fs::write(&file, "").unwrap();
    fleet.agent_config("web-1", 1.0, &logs_config(&file, support::free_tcp_port()));
    let mut agent = fleet.start_agent("web-1");
    const N: usize = 3000;
    let writer = {
        let file = file.clone();
        std::thread::spawn(move || {
            for i in 0..N {
                append(&file, line(i).as_bytes());
                if i % 4 == 0 {
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        })
    };
    // killed hard twice while the writer writes
    for _ in 0..2 {
        std::thread::sleep(Duration::from_millis(600));
        agent.kill_hard();
        std::thread::sleep(Duration::from_millis(200));
        agent = fleet.start_agent("web-1");
    }
    // the aggregator goes away while lines are still being written
    agg.kill_hard();
    writer.join().unwrap();
    // hostile lines, written while the aggregator is down
    let mut hostile = Vec::new();
    hostile.extend(vec![b'x'; 10 * 1024 * 1024]);
    hostile.extend(b"\nbad utf8 \xff\xfe ERROR\nnul \x00 byte\n");
    let wide: Vec<String> = (0..10_000).map(|i| format!("\"f{i}\":{i}")).collect();
    hostile.extend(
        format!(
            "{{\"msg\":\"wide\",\"level\":\"warn\",\"trace_id\":\"wide-1\",{}}}\nthe end\n",
            wide.join(",")
        )
        .into_bytes(),
    );
    append(&file, &hostile);
    std::thread::sleep(Duration::from_secs(2));
    assert!(agent.is_running(), "the agent survives the hostile lines");
    let _agg = fleet.start_aggregator();

    let selector = format!(r#"{{host="web-1",source="{}"}}"#, file.display());
    // The last line may be stored before the backlog has drained (live first): wait for both.
    fleet.wait_for("every line stored", Duration::from_secs(90), || {
        query(&fleet, &[("selector", &selector), ("contains", "the end")]).len() == 1
            && query(&fleet, &[("selector", &selector), ("contains", "line ")]).len() >= N
    });
    let records = query(&fleet, &[("selector", &selector), ("contains", "line ")]);
    let seqs: Vec<usize> = records
        .iter()
        .filter_map(|r| r["message"].as_str()?.get(5..11)?.parse().ok())
        .collect();
    assert_eq!(seqs.len(), N, "every line once");
    assert!(
        seqs.iter().enumerate().all(|(i, &s)| i == s),
        "in order, without repeats"
    );

    let one = |field: &str| {
        let r = query(&fleet, &[("selector", &selector), ("field", field)]);
        assert_eq!(r.len(), 1, "{field}: {r:?}");
        r.into_iter().next().unwrap()
    };
    let long = one("fleetwatch.truncated=true");
    assert_eq!(long["message"].as_str().unwrap().len(), 256 * 1024);
    assert_eq!(long["fields"]["fleetwatch.original_bytes"], "10485760");
    let bad = one("fleetwatch.invalid_utf8=true");
    assert_eq!(bad["message"], "bad utf8 \u{fffd}\u{fffd} ERROR");
    assert_eq!(bad["level"], "error");
    let nul = one("fleetwatch.binary=true");
    assert_eq!(nul["message"], "nul \u{0} byte");
    let wide = one("trace_id=wide-1");
    assert_eq!(wide["level"], "warn");
    assert_eq!(wide["message"], "wide");
    assert!(wide["fields"]["fleetwatch.fields_dropped"]
        .as_str()
        .is_some());

    // the agent's counters say what happened
    fleet.wait_for("the agent's log counters", Duration::from_secs(30), || {
        let v = |q: &str| {
            fleet
                .query(q)
                .first()
                .and_then(|s| s["value"][1].as_str()?.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        v(r#"sum(fleetwatch_agent_log_truncated_total{host="web-1",reason="line"})"#) >= 1.0
            && v(r#"sum(fleetwatch_agent_log_truncated_total{host="web-1",reason="fields"})"#)
                >= 1.0
            && v(r#"sum(fleetwatch_agent_log_invalid_utf8_total{host="web-1"})"#) >= 1.0
    });
    agent.stop();
}

#[test]
fn trace_id_search_across_two_agents_and_the_live_tail() {
    let fleet = Fleet::new();
    let _agg = fleet.start_aggregator();
    let push_port = support::free_tcp_port();
    let mut agents = Vec::new();
    for (name, port) in [("web-1", support::free_tcp_port()), ("web-2", push_port)] {
        let file = fleet.path(&format!("{name}.log"));
        append(
            &file,
            format!(
                "{{\"level\":\"error\",\"service\":\"billing\",\"msg\":\"charge failed on {name}\",\"traceId\":\"t-42\"}}\n{{\"level\":\"info\",\"msg\":\"other\",\"trace_id\":\"t-7\"}}\n"
            )
            .as_bytes(),
        );
        fleet.agent_config(name, 1.0, &logs_config(&file, port));
        agents.push(fleet.start_agent(name));
    }
    // a record pushed by an application through web-2's listener
    let body = br#"{"message":"pushed by the app","level":"warn","trace_id":"t-42","source":"billing-api"}"#;
    fleet.wait_for("web-2's push listener", Duration::from_secs(30), || {
        http_post(push_port, "/v1/logs", "application/json", body).is_ok_and(|(c, _)| c == 200)
    });
    fleet.wait_for("t-42 from both hosts", Duration::from_secs(60), || {
        query(&fleet, &[("field", "trace_id=t-42")]).len() == 3
    });
    let found = query(&fleet, &[("field", "trace_id=t-42")]);
    let mut hosts: Vec<&str> = found.iter().map(|r| r["host"].as_str().unwrap()).collect();
    hosts.sort();
    assert_eq!(hosts, ["web-1", "web-2", "web-2"]);
    assert!(found
        .iter()
        .any(|r| r["source"] == "billing-api" && r["level"] == "warn"));
    assert!(found
        .iter()
        .filter(|r| r["source"] != "billing-api")
        .all(|r| r["service"] == "billing" && r["level"] == "error"));
    let (code, reply) = http_post(
        push_port,
        "/v1/logs",
        "application/json",
        b"[{\"level\":1}]",
    )
    .unwrap();
    assert_eq!(code, 400, "{reply}");
    assert!(reply.contains("message"), "{reply}");

    // the live tail shows a line appended to web-1's file
    let mut feed = Feed::new(
        connect(
            fleet.http_port,
            &format!("?access_token={TOKEN}&topics=logs&contains=tail-new"),
            None,
        )
        .unwrap(),
    );
    append(&fleet.path("web-1.log"), b"2024-05-01 INFO tail-new line\n");
    let written = Instant::now();
    let first = feed.get("the appended line", |v| v["type"] == "logs");
    let got: Vec<Value> = first["records"].as_array().unwrap().clone();
    eprintln!(
        "live tail: the appended line arrived {:?} after it was written",
        written.elapsed()
    );
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["message"], "2024-05-01 INFO tail-new line");
    assert_eq!(got[0]["host"], "web-1");
    assert_eq!(got[0]["level"], "info");
    let _ = feed.socket.close(None);
    for a in agents {
        a.stop();
    }
}

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
    fleet.use_rules(RULES);
    fleet.fast_host_status();
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

/// An HTTP server that records every request (path, JSON body) and answers 200.
struct Receiver {
    port: u16,
    got: std::sync::Arc<std::sync::Mutex<Vec<(String, serde_json::Value)>>>,
}

impl Receiver {
    fn start() -> Receiver {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = got.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let sink = sink.clone();
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
                        let mut len = 0;
                        loop {
                            let mut h = String::new();
                            reader.read_line(&mut h).unwrap();
                            if h.trim().is_empty() {
                                break;
                            }
                            if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:")
                            {
                                len = v.trim().parse().unwrap_or(0);
                            }
                        }
                        let mut body = vec![0; len];
                        reader.read_exact(&mut body).unwrap();
                        let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
                        sink.lock().unwrap().push((path, json));
                        let mut w = stream.try_clone().unwrap();
                        let _ = w.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}");
                    }
                });
            }
        });
        Receiver { port, got }
    }

    fn count(&self, path: &str, status: &str) -> usize {
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, b)| p == path && (b["status"] == status || b["event_action"] == status))
            .count()
    }

    fn last(&self, path: &str) -> serde_json::Value {
        let got = self.got.lock().unwrap();
        got.iter()
            .rev()
            .find(|(p, _)| p == path)
            .map(|(_, b)| b.clone())
            .unwrap_or_default()
    }
}

const NOTIFY_RULES: &str = r#"groups:
  - name: test
    interval: 1s
    rules:
      - alert: HostDown
        expr: up{host!=""} == 0
        for: 1s
        labels:
          severity: critical
        annotations:
          summary: "{{ $labels.host }} sends no data"
"#;

fn post(fleet: &Fleet, path: &str, body: &str) -> (u16, String) {
    support::http_request(fleet.http_port, "POST", path, body, support::TOKEN).unwrap()
}

#[test]
fn notifications_reach_every_receiver_once_and_ack_silence_and_restart_behave() {
    let am_bin = peer_binary("prometheus-alertmanager", "prometheus-alertmanager");
    let amtool = peer_binary("amtool", "prometheus-alertmanager");
    let (Some(am_bin), Some(_)) = (am_bin, amtool) else {
        return;
    };
    let fleet = Fleet::new();
    // a real Alertmanager
    let am_port = support::free_tcp_port();
    std::fs::write(
        fleet.path("am.yml"),
        "route:\n  receiver: blackhole\nreceivers:\n  - name: blackhole\n",
    )
    .unwrap();
    let _am = support::Proc::spawn(
        "alertmanager",
        Command::new(am_bin)
            .arg(format!("--config.file={}", fleet.path("am.yml").display()))
            .arg(format!(
                "--storage.path={}",
                fleet.path("am-data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{am_port}"))
            .arg("--cluster.listen-address=")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(fleet.path("alertmanager.log")).unwrap()),
    );
    let rx = Receiver::start();
    std::fs::write(fleet.path("rules.yml"), NOTIFY_RULES).unwrap();
    fleet.add_aggregator_config(&format!(
        r#"[rules]
files = ["{rules}"]
evaluation_interval_seconds = 1.0
[alerting]
group_wait_seconds = 1.0
group_interval_seconds = 1.0
repeat_interval_seconds = 8.0
[[alerting.receivers]]
name = "hook"
kind = "webhook"
url = "http://127.0.0.1:{p}/hook"
[[alerting.receivers]]
name = "slack"
kind = "slack"
url = "http://127.0.0.1:{p}/slack"
[[alerting.receivers]]
name = "pd"
kind = "pagerduty"
url = "http://127.0.0.1:{p}/pd"
routing_key = "key-1"
[[alerting.receivers]]
name = "am"
kind = "alertmanager"
url = "http://127.0.0.1:{am_port}"
[[alerting.routes]]
receiver = "hook"
matchers = ['alertname="HostDown"']
continue = true
[[alerting.routes]]
receiver = "slack"
matchers = ['severity="critical"']
continue = true
[[alerting.routes]]
receiver = "pd"
matchers = ['host=~".+"']
continue = true
[[alerting.routes]]
receiver = "am"
"#,
        rules = fleet.path("rules.yml").display(),
        p = rx.port
    ));
    fleet.fast_host_status();
    fleet.agent_config("web-1", 0.2, "");
    let agg = fleet.start_aggregator();
    let agent = fleet.start_agent("web-1");
    fleet.wait_for("the host up", Duration::from_secs(30), || {
        !fleet.query("up{host=\"web-1\"} == 1").is_empty()
    });

    agent.stop();
    fleet.wait_for(
        "a firing notification at each receiver",
        Duration::from_secs(60),
        || {
            rx.count("/hook", "firing") >= 1
                && rx.count("/pd", "trigger") >= 1
                && rx.got.lock().unwrap().iter().any(|(p, _)| p == "/slack")
        },
    );
    let hook = rx.last("/hook");
    assert_eq!(hook["version"], "4");
    assert_eq!(hook["alerts"][0]["labels"]["host"], "web-1");
    assert_eq!(
        hook["alerts"][0]["annotations"]["summary"],
        "web-1 sends no data"
    );
    assert!(rx.last("/slack")["text"]
        .as_str()
        .unwrap()
        .starts_with("[FIRING:1] HostDown"));
    assert_eq!(rx.last("/pd")["routing_key"], "key-1");
    let dedup = rx.last("/pd")["dedup_key"].clone();
    // the real Alertmanager has it
    fleet.wait_for("amtool showing HostDown", Duration::from_secs(30), || {
        let out = Command::new("amtool")
            .args([
                "alert",
                "query",
                "--alertmanager.url",
                &format!("http://127.0.0.1:{am_port}"),
                "alertname=HostDown",
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).contains("HostDown")
    });

    // a restart while firing sends nothing again before the repeat interval
    let firing_before = rx.count("/hook", "firing");
    agg.stop();
    let agg = fleet.start_aggregator();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        rx.count("/hook", "firing"),
        firing_before,
        "no duplicate after a restart"
    );

    // repeats come every 8 s while firing, until acknowledged
    fleet.wait_for("a repeat", Duration::from_secs(30), || {
        rx.count("/hook", "firing") > firing_before
    });
    let (_, body) = fleet
        .http_get("/api/fleet/alerts?state=firing&host=web-1")
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let fp = v["data"]["alerts"][0]["fingerprint"]
        .as_str()
        .unwrap()
        .to_string();
    let (code, body) = post(
        &fleet,
        &format!("/api/fleet/alerts/{fp}/ack"),
        r#"{"by":"ana","comment":"on it"}"#,
    );
    assert_eq!(code, 200, "{body}");
    let acked = rx.count("/hook", "firing");
    std::thread::sleep(Duration::from_secs(10));
    assert_eq!(
        rx.count("/hook", "firing"),
        acked,
        "no repeat after the acknowledgement"
    );
    let (_, body) = fleet.http_get("/api/fleet/alerts?host=web-1").unwrap();
    assert!(body.contains("\"by\":\"ana\""), "{body}");

    // the host comes back: one resolution per receiver, the PagerDuty incident resolved by its key
    let agent = fleet.start_agent("web-1");
    fleet.wait_for("resolved notifications", Duration::from_secs(90), || {
        rx.count("/hook", "resolved") == 1 && rx.count("/pd", "resolve") == 1
    });
    assert_eq!(rx.last("/pd")["dedup_key"], dedup);
    let (_, hist) = fleet.http_get("/api/fleet/alerts/history").unwrap();
    assert!(
        hist.contains("acknowledged")
            && hist.contains("notified:hook")
            && hist.contains("resolved"),
        "{hist}"
    );
    let (_, log) = fleet.http_get("/api/fleet/notifications").unwrap();
    assert!(log.contains("\"result\":\"sent\""), "{log}");
    // since the restart: a repeat and the resolution
    assert!(
        fleet.own_metric("fleetwatch_notifications_total{receiver=\"hook\",result=\"sent\"}")
            >= 2.0
    );
    agent.stop();
    agg.stop();
}

#[test]
fn a_silence_stops_notifications_and_its_expiry_resumes_them() {
    let fleet = Fleet::new();
    let rx = Receiver::start();
    std::fs::write(
        fleet.path("rules.yml"),
        "groups:\n  - name: t\n    interval: 1s\n    rules:\n      - alert: Always\n        expr: vector(1)\n        labels:\n          team: db\n",
    )
    .unwrap();
    fleet.add_aggregator_config(&format!(
        "[rules]\nfiles = [\"{}\"]\n[alerting]\ndefault_receiver = \"hook\"\ngroup_wait_seconds = 0.5\ngroup_interval_seconds = 0.5\nrepeat_interval_seconds = 2.0\n[[alerting.receivers]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"http://127.0.0.1:{}/hook\"\n",
        fleet.path("rules.yml").display(),
        rx.port
    ));
    let _agg = fleet.start_aggregator();
    fleet.wait_for("repeated notifications", Duration::from_secs(30), || {
        rx.count("/hook", "firing") >= 2
    });
    // viewers may not silence; the admin may
    let (code, body) = post(
        &fleet,
        "/api/fleet/silences",
        r#"{"matchers":["team=\"db\""],"durationSeconds":3600,"createdBy":"ana","comment":"maintenance"}"#,
    );
    assert_eq!(code, 200, "{body}");
    let id = serde_json::from_str::<serde_json::Value>(&body).unwrap()["data"]["silenceID"]
        .as_str()
        .unwrap()
        .to_string();
    std::thread::sleep(Duration::from_millis(1500));
    let silenced = rx.count("/hook", "firing");
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        rx.count("/hook", "firing"),
        silenced,
        "nothing sent while silenced"
    );
    let (_, list) = fleet.http_get("/api/fleet/silences").unwrap();
    assert!(
        list.contains("\"status\":\"active\"") && list.contains("maintenance"),
        "{list}"
    );
    // expire it: notifications resume
    let (code, out) = support::http_request(
        fleet.http_port,
        "DELETE",
        &format!("/api/fleet/silences/{id}"),
        "",
        support::TOKEN,
    )
    .unwrap();
    assert_eq!(code, 200, "{out}");
    fleet.wait_for("notifications again", Duration::from_secs(30), || {
        rx.count("/hook", "firing") > silenced
    });
}

#[test]
fn rules_reload_on_sighup_and_through_the_api_keeping_alert_state() {
    let fleet = Fleet::new();
    let rules = "groups:\n  - name: t\n    interval: 1s\n    rules:\n      - alert: Always\n        expr: vector(1)\n";
    std::fs::write(fleet.path("rules.yml"), rules).unwrap();
    fleet.add_aggregator_config(&format!(
        "[rules]\nfiles = [\"{}\"]\n",
        fleet.path("rules.yml").display()
    ));
    let agg = fleet.start_aggregator();
    let active_at = || {
        alerts(&fleet, "/api/v1/alerts")
            .first()
            .map(|a| a["activeAt"].as_str().unwrap_or("").to_string())
    };
    fleet.wait_for("the alert firing", Duration::from_secs(30), || {
        active_at().is_some()
    });
    let first = active_at();
    let rule_count = || {
        let (_, body) = fleet.http_get("/api/v1/rules").unwrap();
        body.matches("\"type\":").count()
    };
    // SIGHUP: a new recording rule appears, the alert keeps its activeAt
    std::fs::write(
        fleet.path("rules.yml"),
        format!("{rules}      - record: one\n        expr: vector(1)\n"),
    )
    .unwrap();
    unsafe {
        libc::kill(agg.pid() as i32, libc::SIGHUP);
    }
    fleet.wait_for("the reloaded rules", Duration::from_secs(30), || {
        rule_count() == 2
    });
    assert_eq!(active_at(), first, "alert state kept across the reload");
    // a broken file through the admin API: refused with the reason, the running rules kept
    std::fs::write(
        fleet.path("rules.yml"),
        "groups:\n  - name: t\n    rules:\n      - alert: X\n        expr: sum(\n",
    )
    .unwrap();
    let (code, body) = post(&fleet, "/api/admin/rules/reload", "");
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("could not parse expression"), "{body}");
    assert_eq!(rule_count(), 2);
    // and a good one through the API
    std::fs::write(fleet.path("rules.yml"), rules).unwrap();
    let (code, body) = post(&fleet, "/api/admin/rules/reload", "");
    assert_eq!(code, 200, "{body}");
    assert_eq!(rule_count(), 1);
    assert_eq!(active_at(), first);
    // reloads are counted by result
    assert_eq!(
        fleet.own_metric("fleetwatch_rule_reloads_total{result=\"ok\"}"),
        2.0
    );
    assert_eq!(
        fleet.own_metric("fleetwatch_rule_reloads_total{result=\"refused\"}"),
        1.0
    );
}

/// An SMTP server (Debian's aiosmtpd) that requires STARTTLS and a login, and writes every
/// message it accepts as JSON: envelope, whether TLS was on, the login, subject and text.
const SMTP_SERVER: &str = r#"
import json, os, ssl, sys, threading, time
from email import message_from_bytes, policy
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

port, cert, key, user, password, outdir = sys.argv[1:7]

class Handler:
    async def handle_DATA(self, server, session, envelope):
        msg = message_from_bytes(envelope.original_content or envelope.content, policy=policy.default)
        rec = {
            "mail_from": envelope.mail_from,
            "rcpt_to": envelope.rcpt_tos,
            "tls": session.ssl is not None,
            "login": session.auth_data.login.decode() if session.auth_data else None,
            "subject": str(msg["subject"]),
            "from": str(msg["from"]),
            "to": str(msg["to"]),
            "body": msg.get_body(("plain",)).get_content().replace("\r\n", "\n"),
        }
        name = "%d" % time.time_ns()
        tmp = os.path.join(outdir, "." + name)
        with open(tmp, "w") as f:
            json.dump(rec, f)
        os.rename(tmp, os.path.join(outdir, name + ".json"))
        return "250 OK"

def authenticator(server, session, envelope, mechanism, auth_data):
    ok = (isinstance(auth_data, LoginPassword)
          and auth_data.login == user.encode() and auth_data.password == password.encode())
    # handled=False: aiosmtpd answers a refused login with 535 itself
    return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)

ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
ctx.load_cert_chain(cert, key)
controller = Controller(Handler(), hostname="127.0.0.1", port=int(port), tls_context=ctx,
                        require_starttls=True, auth_required=True, auth_require_tls=True,
                        authenticator=authenticator)
controller.start()
print("ready", flush=True)
threading.Event().wait()
"#;

/// Debian's python3 with aiosmtpd, or None (a failure under FLEETWATCH_REQUIRE_PEERS=1).
fn aiosmtpd_python() -> Option<std::path::PathBuf> {
    let python = std::path::PathBuf::from("/usr/bin/python3");
    let ok = Command::new(&python)
        .args(["-c", "import aiosmtpd"])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        return Some(python);
    }
    let msg = "/usr/bin/python3 -c 'import aiosmtpd' failed: apt-get install -y python3-aiosmtpd";
    if std::env::var("FLEETWATCH_REQUIRE_PEERS").is_ok_and(|v| v == "1") {
        panic!("{msg}");
    }
    eprintln!("SKIPPED: {msg}");
    None
}

/// The messages the SMTP server wrote, oldest first.
fn mails(dir: &std::path::Path) -> Vec<serde_json::Value> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    names.sort();
    names
        .iter()
        .map(|p| serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap())
        .collect()
}

/// The aggregator with extra environment variables (the SMTP password).
fn start_aggregator_with_env(fleet: &Fleet, env: &[(&str, &str)]) -> support::Proc {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(fleet.path("aggregator.log"))
        .unwrap();
    let agg = support::Proc::spawn(
        "aggregator",
        Command::new(env!("CARGO_BIN_EXE_fleetwatch-aggregator"))
            .args(["run", "-c"])
            .arg(fleet.path("aggregator.toml"))
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .stdout(log.try_clone().unwrap())
            .stderr(log),
    );
    fleet.wait_for("the aggregator ready", Duration::from_secs(30), || {
        fleet.http_get("/readyz").is_ok_and(|(code, _)| code == 200)
    });
    agg
}

fn queue_length(value: f64) -> fleetwatch_common::model::Batch {
    use fleetwatch_common::model::*;
    let now = now_ms();
    let mut b = Batch::new(Lane::Metrics, now);
    b.metrics.push(SeriesSamples {
        series: Series::new("queue_length", [Label::new("queue", "jobs")]),
        kind: MetricKind::Gauge,
        samples: vec![Sample {
            timestamp_ms: now,
            value,
        }],
    });
    b
}

fn rules_last_evaluation(fleet: &Fleet) -> String {
    let (_, body) = fleet.http_get("/api/v1/rules").unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["data"]["groups"][0]["lastEvaluation"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn email_goes_over_starttls_with_a_login_and_a_wrong_password_fails_without_stopping_rules() {
    let Some(python) = aiosmtpd_python() else {
        return;
    };
    let fleet = Fleet::new();
    let smtp_port = support::free_tcp_port();
    let outdir = fleet.path("mail");
    std::fs::create_dir_all(&outdir).unwrap();
    std::fs::write(fleet.path("smtp.py"), SMTP_SERVER).unwrap();
    // the server's certificate comes from the fleet's own (private) CA
    let server_cert = fleet.pki().join("servers/localhost.pem");
    let server_key = fleet.pki().join("servers/localhost.key");
    let mut smtp = support::Proc::spawn(
        "aiosmtpd",
        Command::new(&python)
            .arg(fleet.path("smtp.py"))
            .arg(smtp_port.to_string())
            .arg(&server_cert)
            .arg(&server_key)
            .args(["alerts", "s3cret"])
            .arg(&outdir)
            .stdout(std::fs::File::create(fleet.path("smtp.log")).unwrap())
            .stderr(std::fs::File::create(fleet.path("smtp-err.log")).unwrap()),
    );
    fleet.wait_for("the SMTP server", Duration::from_secs(30), || {
        assert!(smtp.is_running(), "aiosmtpd exited: see smtp-err.log");
        std::fs::read_to_string(fleet.path("smtp.log")).is_ok_and(|s| s.contains("ready"))
    });

    std::fs::write(
        fleet.path("rules.yml"),
        r#"groups:
  - name: queues
    interval: 1s
    rules:
      - alert: QueueBacklog
        expr: queue_length > 500
        labels:
          severity: critical
        annotations:
          summary: "queue {{ $labels.queue }} holds {{ $value }} items"
          runbook: "https://runbooks.example/queues"
"#,
    )
    .unwrap();
    fleet.add_aggregator_config(&format!(
        r#"[rules]
files = ["{rules}"]
[alerting]
group_wait_seconds = 0.5
group_interval_seconds = 1.0
repeat_interval_seconds = 3600.0
external_url = "http://fleet.example:4741"
[[alerting.receivers]]
name = "mail"
kind = "email"
smtp_host = "localhost"
smtp_port = {smtp_port}
starttls = "required"
tls_ca_file = "{ca}"
username = "alerts"
password_env = "FLEETWATCH_TEST_SMTP_PASSWORD"
from = "Fleet alerts <alerts@fleet.example>"
to = ["ops@example.com", "Oncall <oncall@example.com>"]
[[alerting.receivers]]
name = "badmail"
kind = "email"
smtp_host = "localhost"
smtp_port = {smtp_port}
tls_ca_file = "{ca}"
username = "alerts"
password = "wrong"
from = "alerts@fleet.example"
to = ["ops@example.com"]
max_attempts = 3
[[alerting.routes]]
receiver = "mail"
continue = true
[[alerting.routes]]
receiver = "badmail"
"#,
        rules = fleet.path("rules.yml").display(),
        ca = fleet.pki().join("ca.pem").display(),
    ));
    let agg = start_aggregator_with_env(&fleet, &[("FLEETWATCH_TEST_SMTP_PASSWORD", "s3cret")]);

    // the condition holds: one mail, to both recipients, over STARTTLS, logged in
    support::ship_in_order(&fleet, "app-1", vec![queue_length(900.0)]);
    fleet.wait_for("the firing mail", Duration::from_secs(60), || {
        !mails(&outdir).is_empty()
    });
    let evaluated_at_firing = rules_last_evaluation(&fleet);
    let firing = &mails(&outdir)[0];
    assert_eq!(firing["tls"], true, "{firing}");
    assert_eq!(firing["login"], "alerts");
    assert_eq!(firing["mail_from"], "alerts@fleet.example");
    assert_eq!(
        firing["rcpt_to"],
        serde_json::json!(["ops@example.com", "oncall@example.com"])
    );
    assert_eq!(firing["from"], "Fleet alerts <alerts@fleet.example>");
    assert_eq!(
        firing["subject"],
        "[FIRING:1] QueueBacklog app-1 (jobs critical)"
    );
    let body = firing["body"].as_str().unwrap();
    for line in [
        "Firing (1):",
        "* QueueBacklog: queue jobs holds 900 items",
        "  Labels: alertname=QueueBacklog, host=app-1, queue=jobs, severity=critical",
        "  runbook: https://runbooks.example/queues",
        "Open fleetwatch: http://fleet.example:4741",
    ] {
        assert!(body.contains(line), "{line:?} not in:\n{body}");
    }

    // the wrong password: every attempt refused, counted, the delivery logged as failed...
    std::thread::sleep(Duration::from_secs(20));
    eprintln!("DEBUG {:?}", fleet.http_get("/api/fleet/notifications"));
    eprintln!(
        "DEBUG {}",
        fleet
            .http_get("/metrics")
            .unwrap()
            .1
            .lines()
            .filter(|l| l.contains("notif"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    fleet.wait_for(
        "the wrong password's failure",
        Duration::from_secs(60),
        || {
            fleet.own_metric(
                "fleetwatch_notifications_total{receiver=\"badmail\",result=\"failed\"}",
            ) == 1.0
        },
    );
    assert_eq!(
        fleet.own_metric("fleetwatch_notification_attempts_total{receiver=\"badmail\"}"),
        3.0
    );
    let (_, log) = fleet.http_get("/api/fleet/notifications").unwrap();
    assert!(
        log.contains("\"receiver\":\"badmail\"") && log.contains("535"),
        "{log}"
    );
    // ...while the rules went on being evaluated
    let (_, rules) = fleet.http_get("/api/v1/rules").unwrap();
    assert!(rules.contains("\"health\":\"ok\""), "{rules}");
    assert!(rules_last_evaluation(&fleet) > evaluated_at_firing);
    assert_eq!(
        fleet.own_metric("fleetwatch_rule_evaluation_failures_total"),
        0.0
    );

    // the condition clears: one resolved mail, and nothing else
    support::ship_in_order(&fleet, "app-1", vec![queue_length(10.0)]);
    fleet.wait_for("the resolved mail", Duration::from_secs(60), || {
        mails(&outdir).len() >= 2
    });
    let resolved = &mails(&outdir)[1];
    assert_eq!(
        resolved["subject"],
        "[RESOLVED] QueueBacklog app-1 (jobs critical)"
    );
    let body = resolved["body"].as_str().unwrap();
    assert!(body.contains("Resolved (1):\n* QueueBacklog"), "{body}");
    assert!(body.contains("  Resolved: "), "{body}");
    fleet.wait_for(
        "the resolution's failure at badmail",
        Duration::from_secs(60),
        || {
            fleet.own_metric(
                "fleetwatch_notifications_total{receiver=\"badmail\",result=\"failed\"}",
            ) == 2.0
        },
    );
    assert_eq!(mails(&outdir).len(), 2, "one mail per change");
    assert_eq!(
        fleet.own_metric("fleetwatch_notifications_total{receiver=\"mail\",result=\"sent\"}"),
        2.0
    );
    agg.stop();
}

//! Test harness: a fleet CA, an aggregator process and agent processes on loopback, and an
//! HTTP client for the aggregator's API.

#![allow(dead_code, unreachable_pub, missing_docs)]

pub mod live;

use fleetwatch_common::pki;
use std::net::{TcpListener, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const TOKEN: &str = "test-admin-token-0123456789";

pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The fleetwatch-agent binary, built beside this test's crate.
pub fn agent_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let bin = dir.join("fleetwatch-agent");
    if !bin.exists() {
        let status = Command::new(env!("CARGO"))
            .args([
                "build",
                "-p",
                "fleetwatch-agent",
                "--bin",
                "fleetwatch-agent",
            ])
            .status()
            .unwrap();
        assert!(status.success(), "building fleetwatch-agent failed");
    }
    bin
}

pub struct Fleet {
    pub dir: tempfile::TempDir,
    pub quic_port: u16,
    pub http_port: u16,
}

impl Fleet {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let pki_dir = dir.path().join("pki");
        pki::init(&pki_dir, "test CA").unwrap();
        pki::issue_server(&pki_dir, "localhost", pki::Validity::days(30)).unwrap();
        std::fs::write(dir.path().join("admin.token"), TOKEN).unwrap();
        let fleet = Self {
            dir,
            quic_port: free_udp_port(),
            http_port: free_tcp_port(),
        };
        std::fs::write(fleet.path("aggregator.toml"), fleet.aggregator_toml()).unwrap();
        fleet
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn pki(&self) -> PathBuf {
        self.path("pki")
    }

    fn aggregator_toml(&self) -> String {
        let p = self.pki();
        format!(
            r#"data_dir = "{data}"
[quic]
listen = "127.0.0.1:{quic}"
ca = "{p}/ca.pem"
cert = "{p}/servers/localhost.pem"
key = "{p}/servers/localhost.key"
crl = "{p}/crl.pem"
[http]
listen = "127.0.0.1:{http}"
admin_token_file = "{token}"
metrics_public = true
"#,
            data = self.path("aggregator").display(),
            quic = self.quic_port,
            http = self.http_port,
            p = p.display(),
            token = self.path("admin.token").display(),
        )
    }

    /// Appends TOML (for example `[[remote_write]]` tables) to the aggregator's config.
    pub fn add_aggregator_config(&self, extra: &str) {
        let mut text = std::fs::read_to_string(self.path("aggregator.toml")).unwrap();
        text.push('\n');
        text.push_str(extra);
        std::fs::write(self.path("aggregator.toml"), text).unwrap();
    }

    /// Loads `rules` (a rule file's YAML) evaluated every second.
    pub fn use_rules(&self, rules: &str) {
        std::fs::write(self.path("rules.yml"), rules).unwrap();
        self.add_aggregator_config(&format!(
            "[rules]\nfiles = [\"{}\"]\nevaluation_interval_seconds = 1.0\n",
            self.path("rules.yml").display()
        ));
    }

    /// A host is stale after 1 s without data and down after 2 s.
    pub fn fast_host_status(&self) {
        let toml = std::fs::read_to_string(self.path("aggregator.toml")).unwrap();
        std::fs::write(
            self.path("aggregator.toml"),
            toml.replacen(
                "[http]",
                "[fleet]\nstale_after_seconds = 1\ndown_after_seconds = 2\n[http]",
                1,
            ),
        )
        .unwrap();
    }

    pub fn start_aggregator(&self) -> Proc {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("aggregator.log"))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_fleetwatch-aggregator"))
            .args(["run", "-c"])
            .arg(self.path("aggregator.toml"))
            .env("RUST_LOG", "info")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let proc = Proc {
            child: Some(child),
            name: "aggregator",
        };
        self.wait_ready();
        proc
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(r) = self.http_get("/readyz") {
                if r.0 == 200 {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "aggregator not ready; log:\n{}",
            std::fs::read_to_string(self.path("aggregator.log")).unwrap_or_default()
        );
    }

    /// Issues a certificate for agent `name` and writes its config; extra TOML is appended
    /// to the sections given.
    pub fn agent_config(&self, name: &str, host_interval: f64, extra: &str) -> PathBuf {
        let issued = pki::issue_agent(&self.pki(), name, pki::Validity::days(30)).unwrap();
        let cfg = format!(
            r#"data_dir = "{data}"
[aggregator]
addresses = ["127.0.0.1:{quic}"]
server_name = "localhost"
ca = "{ca}"
cert = "{cert}"
key = "{key}"
backoff_min_seconds = 0.1
backoff_max_seconds = 1.0
ack_timeout_seconds = 5.0
[host]
interval_seconds = {host_interval}
[batch]
max_wait_seconds = 0.05
{extra}
"#,
            data = self.path(&format!("agent-{name}")).display(),
            quic = self.quic_port,
            ca = self.pki().join("ca.pem").display(),
            cert = issued.cert.display(),
            key = issued.key.display(),
        );
        let path = self.path(&format!("agent-{name}.toml"));
        std::fs::write(&path, cfg).unwrap();
        path
    }

    pub fn start_agent(&self, name: &str) -> Proc {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path(&format!("agent-{name}.log")))
            .unwrap();
        let child = Command::new(agent_bin())
            .args(["run", "-c"])
            .arg(self.path(&format!("agent-{name}.toml")))
            .env("RUST_LOG", "info")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        Proc {
            child: Some(child),
            name: "agent",
        }
    }

    pub fn http_get(&self, path_and_query: &str) -> std::io::Result<(u16, String)> {
        http_get(self.http_port, path_and_query)
    }

    /// `/api/v1/query` result array.
    pub fn query(&self, q: &str) -> Vec<serde_json::Value> {
        let (code, body) = self
            .http_get(&format!("/api/v1/query?query={}", urlencode(q)))
            .unwrap();
        assert_eq!(code, 200, "{q}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// Timestamps (ms) of every sample of an instant selector over the last `range`.
    pub fn sample_times(&self, selector: &str, range: &str) -> Vec<i64> {
        let mut out = Vec::new();
        for series in self.query(&format!("{selector}[{range}]")) {
            for v in series["values"].as_array().unwrap() {
                out.push((v[0].as_f64().unwrap() * 1000.0).round() as i64);
            }
        }
        out.sort_unstable();
        out
    }

    /// A metric value from the aggregator's own /metrics (sum over label sets matching `prefix`).
    pub fn own_metric(&self, prefix: &str) -> f64 {
        let (_, body) = self.http_get("/metrics").unwrap();
        body.lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    pub fn wait_for(&self, what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if f() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let mut logs = String::new();
        for entry in std::fs::read_dir(self.dir.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let p = entry.path();
            if p.extension().is_some_and(|e| e == "log") {
                logs.push_str(&format!(
                    "--- {}\n{}\n",
                    p.display(),
                    tail(&std::fs::read_to_string(&p).unwrap_or_default())
                ));
            }
        }
        panic!("timed out waiting for {what}\n{logs}");
    }
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub fn http_get(port: u16, path_and_query: &str) -> std::io::Result<(u16, String)> {
    http_get_with(port, path_and_query, TOKEN)
}

pub fn http_get_with(
    port: u16,
    path_and_query: &str,
    token: &str,
) -> std::io::Result<(u16, String)> {
    http_request(port, "GET", path_and_query, "", token)
}

/// One HTTP/1.1 request with a bearer token (and a JSON body when not empty): status and body.
pub fn http_request(
    port: u16,
    method: &str,
    path_and_query: &str,
    body: &str,
    token: &str,
) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let content = if body.is_empty() {
        String::new()
    } else {
        format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        )
    };
    write!(s, "{method} {path_and_query} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n{content}Connection: close\r\n\r\n{body}")?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf).to_string();
    let code = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = match text.split_once("\r\n\r\n") {
        Some((head, body))
            if head
                .to_ascii_lowercase()
                .contains("transfer-encoding: chunked") =>
        {
            dechunk(body)
        }
        Some((_, body)) => body.to_string(),
        None => String::new(),
    };
    Ok((code, body))
}

/// The body of a `Transfer-Encoding: chunked` response, joined.
pub fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// A program from Debian's packages that a test talks to (prometheus, promtool...). Missing, it
/// fails the test when `FLEETWATCH_REQUIRE_PEERS=1` (as `.ci/run` sets, after installing it)
/// and otherwise skips it with a note saying what to install.
pub fn peer_binary(name: &str, package: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        let msg = format!("{name} not found: apt-get install -y {package}");
        if std::env::var("FLEETWATCH_REQUIRE_PEERS").is_ok_and(|v| v == "1") {
            panic!("{msg}");
        }
        eprintln!("SKIPPED: {msg}");
    }
    found
}

/// Ships `batches` as agent `name` (certificate issued here) through a real shipper over
/// QUIC, one at a time and in order: each is acknowledged before the next is buffered.
pub fn ship_in_order(fleet: &Fleet, name: &str, batches: Vec<fleetwatch_common::model::Batch>) {
    use fleetwatch_agent::buffer::{Buffer, BufferConfig};
    use fleetwatch_agent::config::AggregatorLink;
    use fleetwatch_agent::metrics::AgentMetrics;
    use fleetwatch_agent::shipper::Shipper;
    use fleetwatch_common::model::{HostFacts, Lane};
    use fleetwatch_common::protocol::Message;
    use std::sync::Arc;

    let issued = pki::issue_agent(&fleet.pki(), name, pki::Validity::days(30)).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let buffer = Arc::new(
            Buffer::open(
                &fleet.path(&format!("{name}-buffer")),
                BufferConfig::default(),
            )
            .unwrap(),
        );
        let link = AggregatorLink {
            addresses: vec![format!("127.0.0.1:{}", fleet.quic_port)],
            server_name: "localhost".into(),
            ca: fleet.pki().join("ca.pem"),
            cert: issued.cert,
            key: issued.key,
            ..Default::default()
        };
        let (tx, rx) = tokio::sync::watch::channel(false);
        let wake = Arc::new(tokio::sync::Notify::new());
        let shipper = Shipper {
            link,
            buffer: buffer.clone(),
            metrics: AgentMetrics::new(),
            facts: HostFacts::default(),
            wake: wake.clone(),
        };
        let task = tokio::spawn(shipper.run(rx));
        for mut batch in batches {
            let created = batch.created_ms;
            buffer
                .push(Lane::Metrics, created, |seq| {
                    batch.seq = seq;
                    fleetwatch_common::codec::encode(&Message::Batch(batch))
                })
                .unwrap();
            wake.notify_one();
            let deadline = Instant::now() + Duration::from_secs(60);
            while !buffer.is_empty() {
                assert!(
                    Instant::now() < deadline,
                    "batch not acknowledged within 60 s"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        let _ = tx.send(true);
        let _ = task.await;
    });
}

/// A child process, killed hard when dropped.
pub struct Proc {
    child: Option<Child>,
    name: &'static str,
}

impl Proc {
    /// Starts `cmd` as a process killed when the handle drops.
    pub fn spawn(name: &'static str, cmd: &mut Command) -> Proc {
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc {
            child: Some(child),
            name,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// SIGKILL and reap.
    pub fn kill_hard(mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
            panic!("{} did not stop on SIGTERM", self.name);
        }
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Asserts that consecutive timestamps are never further apart than `max_gap_ms`.
pub fn assert_no_gap(times: &[i64], max_gap_ms: i64, what: &str) {
    for w in times.windows(2) {
        assert!(
            w[1] - w[0] <= max_gap_ms,
            "{what}: gap of {} ms between {} and {}",
            w[1] - w[0],
            w[0],
            w[1]
        );
    }
}

pub fn assert_unique(times: &[i64], what: &str) {
    for w in times.windows(2) {
        assert!(w[0] != w[1], "{what}: timestamp {} stored twice", w[0]);
    }
}

/// One HTTP/1.1 POST with a given Content-Type (none when empty), no token: status and body.
pub fn http_post(
    port: u16,
    path: &str,
    content_type: &str,
    body: &[u8],
) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let ct = if content_type.is_empty() {
        String::new()
    } else {
        format!("Content-Type: {content_type}\r\n")
    };
    write!(s, "POST {path} HTTP/1.1\r\nHost: localhost\r\n{ct}Content-Length: {}\r\nConnection: close\r\n\r\n", body.len())?;
    // a server may answer (413) before it read the whole body
    let _ = s.write_all(body);
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).to_string();
    let code = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

/// Sends SIGHUP to a process (configuration reload).
pub fn sighup(pid: u32) {
    unsafe {
        libc::kill(pid as i32, libc::SIGHUP);
    }
}

//! Health checks against real servers started here: an HTTP server (axum, in-process), an HTTPS
//! server with a certificate of known expiry, commands, Redis (Debian's `redis-server`) and
//! PostgreSQL (Debian's `postgresql`, run as the `postgres` user when the test is root). Each
//! server is then stopped and the check must turn unhealthy.
//!
//! Programs from Debian packages are skipped when missing, unless `FLEETWATCH_REQUIRE_PEERS=1`
//! (as `.ci/run` sets), which makes a missing one a failure.

use fleetwatch_agent::sources::checks::{self, CheckConfig, CheckOutput};
use fleetwatch_common::model::{CheckResult, CheckStatus, SeriesSamples};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Parses `[[checks]]` tables through the `config` crate, as the agent loads them, and
/// validates them.
fn checks_from(toml_text: &str) -> Vec<CheckConfig> {
    #[derive(serde::Deserialize)]
    struct File {
        checks: Vec<CheckConfig>,
    }
    let file: File = config::Config::builder()
        .add_source(config::File::from_str(toml_text, config::FileFormat::Toml))
        .build()
        .and_then(|c| c.try_deserialize())
        .unwrap_or_else(|e| panic!("{e}\n{toml_text}"));
    checks::validate(&file.checks).unwrap();
    file.checks
}

fn one(toml_text: &str) -> CheckConfig {
    checks_from(toml_text).remove(0)
}

fn value(series: &[SeriesSamples], name: &str, label: Option<(&str, &str)>) -> Option<f64> {
    series
        .iter()
        .find(|s| s.series.name == name && label.is_none_or(|(k, v)| s.series.label(k) == Some(v)))
        .map(|s| s.samples[0].value)
}

async fn run(config: &CheckConfig) -> (CheckResult, Vec<SeriesSamples>) {
    checks::run_once(config).await
}

fn assert_status(result: &CheckResult, want: CheckStatus) {
    assert_eq!(
        result.status, want,
        "check {} detail: {}",
        result.name, result.detail
    );
}

/// A program from Debian's packages, or `None` (skip) when missing and peers are not required.
fn peer(found: Option<PathBuf>, name: &str, package: &str) -> Option<PathBuf> {
    if found.is_none() {
        let msg = format!("{name} not found: apt-get install -y {package}");
        if std::env::var("FLEETWATCH_REQUIRE_PEERS").is_ok_and(|v| v == "1") {
            panic!("{msg}");
        }
        eprintln!("SKIPPED: {msg}");
    }
    found
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A server process, killed on drop.
struct Server {
    name: &'static str,
    child: Child,
}

impl Server {
    fn spawn(name: &'static str, cmd: &mut Command) -> Self {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Self { name, child }
    }

    /// Asks the server to stop (`signal`) and waits until it has exited.
    fn stop(mut self, signal: i32) {
        // SAFETY: signals our own child by its pid; it has not been reaped yet.
        unsafe {
            libc::kill(self.child.id() as i32, signal);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("{} did not stop within 60 s", self.name);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `check` until `pred` holds for its result, with a generous deadline.
async fn wait_for_result(
    what: &str,
    config: &CheckConfig,
    pred: impl Fn(&CheckResult, &[SeriesSamples]) -> bool,
) -> (CheckResult, Vec<SeriesSamples>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (r, s) = run(config).await;
        if pred(&r, &s) {
            return (r, s);
        }
        if Instant::now() > deadline {
            panic!("{what}: last result {:?}: {}", r.status, r.detail);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP

async fn http_server() -> (String, tokio::task::JoinHandle<()>) {
    use axum::http::StatusCode;
    use axum::routing::get;
    let app = axum::Router::new()
        .route("/health", get(|| async { "{\"status\": \"ok\"}" }))
        .route(
            "/fail",
            get(|| async { (StatusCode::SERVICE_UNAVAILABLE, "down") }),
        )
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(600)).await;
                "ok"
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (base, task)
}

#[tokio::test]
async fn http_check_judges_status_body_and_latency() {
    let (base, server) = http_server().await;
    let (r, s) = run(&one(&format!(
        "[[checks]]\nname = \"api\"\n[checks.http]\nurl = \"{base}/health\"\n\
         body_contains = \"ok\"\nbody_regex = '\"status\":\\s*\"ok\"'\n"
    )))
    .await;
    assert_status(&r, CheckStatus::Healthy);
    assert!(r.detail.starts_with("HTTP 200 in "), "{}", r.detail);
    assert_eq!(value(&s, "fleetwatch_check_status", None), Some(0.0));
    assert_eq!(
        value(&s, "fleetwatch_check_http_status_code", None),
        Some(200.0)
    );
    assert!(value(&s, "fleetwatch_check_duration_seconds", None).unwrap() > 0.0);
    assert_eq!(
        value(&s, "fleetwatch_check_tls_cert_expiry_seconds", None),
        None
    );

    let (r, s) = run(&one(&format!(
        "[[checks]]\nname = \"fail\"\n[checks.http]\nurl = \"{base}/fail\"\n"
    )))
    .await;
    assert_status(&r, CheckStatus::Unhealthy);
    assert!(
        r.detail.contains("status 503, expected 2xx"),
        "{}",
        r.detail
    );
    assert_eq!(value(&s, "fleetwatch_check_status", None), Some(2.0));
    assert_eq!(
        value(&s, "fleetwatch_check_http_status_code", None),
        Some(503.0)
    );

    let (r, _) = run(&one(&format!(
        "[[checks]]\nname = \"fail-expected\"\n[checks.http]\nurl = \"{base}/fail\"\n\
         expect_status = [503]\nbody_contains = \"down\"\n"
    )))
    .await;
    assert_status(&r, CheckStatus::Healthy);

    let (r, _) = run(&one(&format!(
        "[[checks]]\nname = \"body\"\n[checks.http]\nurl = \"{base}/health\"\nbody_regex = \"^healthy$\"\n"
    )))
    .await;
    assert_status(&r, CheckStatus::Unhealthy);
    assert!(
        r.detail.contains("body does not match /^healthy$/"),
        "{}",
        r.detail
    );

    // The handler sleeps 0.6 s, so the request takes longer than the 0.3 s warning.
    let (r, s) = run(&one(&format!(
        "[[checks]]\nname = \"slow\"\n[checks.http]\nurl = \"{base}/slow\"\n\
         latency_seconds = {{ warn = 0.3, critical = 60 }}\n"
    )))
    .await;
    assert_status(&r, CheckStatus::Degraded);
    assert!(r.detail.starts_with("took "), "{}", r.detail);
    assert_eq!(value(&s, "fleetwatch_check_status", None), Some(1.0));

    // A timeout shorter than the handler: unhealthy, named as a timeout.
    let (r, _) = run(&one(&format!(
        "[[checks]]\nname = \"timeout\"\ninterval_seconds = 1\ntimeout_seconds = 0.2\n\
         [checks.http]\nurl = \"{base}/slow\"\n"
    )))
    .await;
    assert_status(&r, CheckStatus::Unhealthy);
    assert_eq!(r.detail, "timed out after 0.2 s");
    server.abort();
}

async fn next(rx: &mut tokio::sync::mpsc::Receiver<CheckOutput>) -> CheckOutput {
    tokio::time::timeout(Duration::from_secs(60), rx.recv())
        .await
        .expect("a result within 60 s")
        .expect("the runner is running")
}

#[tokio::test]
async fn running_checks_see_the_http_server_stop() {
    let (base, server) = http_server().await;
    let configs = checks_from(&format!(
        "[[checks]]\nname = \"api\"\ninterval_seconds = 0.5\ntimeout_seconds = 0.5\n\
         [checks.http]\nurl = \"{base}/health\"\n"
    ));
    let (tx, mut rx) = tokio::sync::mpsc::channel::<CheckOutput>(16);
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let runner = tokio::spawn(checks::run(configs, tx, shutdown));
    let out = next(&mut rx).await;
    assert_status(&out.results[0], CheckStatus::Healthy);
    assert_eq!(
        value(&out.series, "fleetwatch_host_health_status", None),
        Some(0.0)
    );
    server.abort();
    let _ = server.await;
    let out = loop {
        let out = next(&mut rx).await;
        if out.results[0].status != CheckStatus::Healthy {
            break out;
        }
    };
    assert_status(&out.results[0], CheckStatus::Unhealthy);
    assert!(
        out.results[0].detail.contains(&base),
        "{}",
        out.results[0].detail
    );
    assert_eq!(
        value(&out.series, "fleetwatch_host_health_status", None),
        Some(2.0)
    );
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(30), runner)
        .await
        .expect("the runner stops on shutdown")
        .unwrap();
}

// ---------------------------------------------------------------------------------------------
// HTTPS with a certificate of known expiry

/// A one-response-per-connection HTTPS server on a thread, stopped by its flag.
struct TlsServer {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TlsServer {
    fn start(cert: &Path, key: &Path) -> Self {
        let certs = fleetwatch_common::pki::load_certs(cert).unwrap();
        let key = fleetwatch_common::pki::load_key(key).unwrap();
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let config = Arc::new(config);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((sock, _)) => {
                        let _ = sock.set_nonblocking(false);
                        let _ = sock.set_read_timeout(Some(Duration::from_secs(10)));
                        serve_tls(config.clone(), sock);
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

impl Drop for TlsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn serve_tls(config: Arc<rustls::ServerConfig>, sock: std::net::TcpStream) {
    use std::io::{Read, Write};
    let Ok(conn) = rustls::ServerConnection::new(config) else {
        return;
    };
    let mut tls = rustls::StreamOwned::new(conn, sock);
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match tls.read(&mut buf) {
            Ok(0) | Err(_) => return, // handshake refused by the client, or it went away
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let _ = tls.write_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
    );
    tls.conn.send_close_notify();
    let _ = tls.flush();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_check_reports_certificate_days_left() {
    let dir = tempfile::tempdir().unwrap();
    let pki_dir = dir.path().join("pki");
    fleetwatch_common::pki::init(&pki_dir, "checks test CA").unwrap();
    // Valid from a minute ago for 10 days.
    let issued = fleetwatch_common::pki::issue_server(
        &pki_dir,
        "127.0.0.1",
        fleetwatch_common::pki::Validity::days(10),
    )
    .unwrap();
    let server = TlsServer::start(&issued.cert, &issued.key);
    let url = format!("https://127.0.0.1:{}/health", server.port);
    let ca = pki_dir.join("ca.pem");

    // Default thresholds: warn below 14 days, so 10 days left is degraded.
    let (r, s) = run(&one(&format!(
        "[[checks]]\nname = \"tls\"\n[checks.http]\nurl = \"{url}\"\nca_file = \"{}\"\nbody_contains = \"ok\"\n",
        ca.display()
    )))
    .await;
    assert_status(&r, CheckStatus::Degraded);
    assert!(
        r.detail.starts_with("certificate expires in 10.0 days"),
        "{}",
        r.detail
    );
    let left = value(&s, "fleetwatch_check_tls_cert_expiry_seconds", None).unwrap();
    assert!(left > 9.0 * 86_400.0 && left <= 10.0 * 86_400.0, "{left}");
    assert_eq!(
        value(&s, "fleetwatch_check_http_status_code", None),
        Some(200.0)
    );

    let (r, _) = run(&one(&format!(
        "[[checks]]\nname = \"tls-critical\"\n[checks.http]\nurl = \"{url}\"\nca_file = \"{}\"\n\
         cert_days = {{ warn = 30, critical = 11 }}\n",
        ca.display()
    )))
    .await;
    assert_status(&r, CheckStatus::Unhealthy);

    let (r, _) = run(&one(&format!(
        "[[checks]]\nname = \"tls-ok\"\n[checks.http]\nurl = \"{url}\"\nca_file = \"{}\"\n\
         cert_days = {{ warn = 7, critical = 1 }}\n",
        ca.display()
    )))
    .await;
    assert_status(&r, CheckStatus::Healthy);
    assert!(
        r.detail.contains("certificate expires in 10.0 days"),
        "{}",
        r.detail
    );

    // Without the private CA the certificate is not trusted ...
    let untrusted = one(&format!(
        "[[checks]]\nname = \"tls-untrusted\"\n[checks.http]\nurl = \"{url}\"\n"
    ));
    let (r, _) = run(&untrusted).await;
    assert_status(&r, CheckStatus::Unhealthy);
    // ... unless verification is off, and its days are still reported.
    let (r, s) = run(&one(&format!(
        "[[checks]]\nname = \"tls-insecure\"\n[checks.http]\nurl = \"{url}\"\ninsecure_skip_verify = true\n"
    )))
    .await;
    assert_status(&r, CheckStatus::Degraded);
    assert!(value(&s, "fleetwatch_check_tls_cert_expiry_seconds", None).is_some());

    server.stop();
    let (r, s) = run(&one(&format!(
        "[[checks]]\nname = \"tls\"\n[checks.http]\nurl = \"{url}\"\nca_file = \"{}\"\n",
        ca.display()
    )))
    .await;
    assert_status(&r, CheckStatus::Unhealthy);
    assert_eq!(
        value(&s, "fleetwatch_check_tls_cert_expiry_seconds", None),
        None
    );
}

// ---------------------------------------------------------------------------------------------
// TCP

#[tokio::test]
async fn tcp_check_sees_the_listener_close() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = one(&format!(
        "[[checks]]\nname = \"port\"\n[checks.tcp]\naddress = \"{addr}\"\n"
    ));
    let (r, s) = run(&config).await;
    assert_status(&r, CheckStatus::Healthy);
    assert_eq!(
        r.detail.split(" in ").next(),
        Some(&*format!("connected to {addr}"))
    );
    assert_eq!(
        value(&s, "fleetwatch_check_status", Some(("kind", "tcp"))),
        Some(0.0)
    );
    drop(listener);
    let (r, _) = run(&config).await;
    assert_status(&r, CheckStatus::Unhealthy);
    assert!(r.detail.contains("refused"), "{}", r.detail);
}

// ---------------------------------------------------------------------------------------------
// Commands

fn command_check(name: &str, argv: &[&str], extra: &str) -> CheckConfig {
    let argv: Vec<String> = argv.iter().map(|a| format!("{a:?}")).collect();
    one(&format!(
        "[[checks]]\nname = \"{name}\"\ninterval_seconds = 2\ntimeout_seconds = 2\n\
         [checks.command]\nargv = [{}]\n{extra}",
        argv.join(", ")
    ))
}

#[tokio::test]
async fn command_check_exit_codes_and_output() {
    let (r, s) = run(&command_check(
        "ok",
        &["/bin/sh", "-c", "echo '  DISK OK - 40% used'; echo more"],
        "",
    ))
    .await;
    assert_status(&r, CheckStatus::Healthy);
    assert_eq!(r.detail, "exit 0: DISK OK - 40% used");
    assert_eq!(
        value(&s, "fleetwatch_check_command_exit_code", None),
        Some(0.0)
    );

    let (r, s) = run(&command_check(
        "warn",
        &["/bin/sh", "-c", "echo 'DISK WARNING' >&2; exit 1"],
        "degraded_exit_codes = [1]\n",
    ))
    .await;
    assert_status(&r, CheckStatus::Degraded);
    assert_eq!(r.detail, "exit 1: DISK WARNING");
    assert_eq!(
        value(&s, "fleetwatch_check_status", Some(("kind", "command"))),
        Some(1.0)
    );

    let (r, s) = run(&command_check(
        "crit",
        &["/bin/sh", "-c", "exit 2"],
        "degraded_exit_codes = [1]\n",
    ))
    .await;
    assert_status(&r, CheckStatus::Unhealthy);
    assert_eq!(r.detail, "exit 2");
    assert_eq!(
        value(&s, "fleetwatch_check_command_exit_code", None),
        Some(2.0)
    );

    // No shell: metacharacters in arguments are passed as they are.
    let (r, _) = run(&command_check(
        "literal",
        &["/bin/echo", "$(id); `id` | rm -rf /nonexistent"],
        "",
    ))
    .await;
    assert_status(&r, CheckStatus::Healthy);
    assert_eq!(r.detail, "exit 0: $(id); `id` | rm -rf /nonexistent");

    let (r, _) = run(&command_check("missing", &["/nonexistent/check_thing"], "")).await;
    assert_status(&r, CheckStatus::Unhealthy);
    assert!(
        r.detail
            .starts_with("starting \"/nonexistent/check_thing\""),
        "{}",
        r.detail
    );

    // Megabytes of output: read to the end, kept bounded.
    let (r, _) = run(&command_check(
        "chatty",
        &["/bin/sh", "-c", "head -c 5000000 /dev/zero | tr '\\0' 'a'"],
        "",
    ))
    .await;
    assert_status(&r, CheckStatus::Healthy);
    assert!(r.detail.len() < 300, "{}", r.detail.len());
}

fn process_alive(pid: i32) -> bool {
    // Gone, or a zombie waiting for a reaper, counts as dead.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

#[tokio::test]
async fn command_timeout_kills_the_whole_process_group() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("child.pid");
    let script = format!("sleep 300 & echo $! > {}; wait", pidfile.display());
    let config = one(&format!(
        "[[checks]]\nname = \"hang\"\ninterval_seconds = 5\ntimeout_seconds = 1\n\
         [checks.command]\nargv = [\"/bin/sh\", \"-c\", {script:?}]\n"
    ));
    let (r, s) = run(&config).await;
    assert_status(&r, CheckStatus::Unhealthy);
    assert_eq!(r.detail, "timed out after 1 s");
    assert_eq!(value(&s, "fleetwatch_check_command_exit_code", None), None);
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while process_alive(pid) {
        assert!(
            Instant::now() < deadline,
            "the command's child {pid} (sleep 300) survived the timeout"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Redis

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_check_reads_info_and_queue_backlog() {
    let Some(bin) = peer(on_path("redis-server"), "redis-server", "redis-server") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let server = Server::spawn(
        "redis-server",
        Command::new(bin)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path()),
    );
    let url = format!("redis://127.0.0.1:{port}/0");
    // Fill the queue to 600 items once the server answers.
    let client = redis::Client::open(url.as_str()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut con = loop {
        match client.get_multiplexed_async_connection().await {
            Ok(c) => break c,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("redis-server on {port} never answered: {e}"),
        }
    };
    let items: Vec<String> = (0..600).map(|i| format!("vote-{i}")).collect();
    let len: i64 = redis::cmd("RPUSH")
        .arg("votes")
        .arg(&items)
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(len, 600);

    let config = one(&format!(
        "[[checks]]\nname = \"queue\"\n[checks.redis]\nurl = \"{url}\"\n\
         lists = [{{ key = \"votes\", warn = 500, critical = 1000 }}, {{ key = \"empty\", warn = 1 }}]\n"
    ));
    let (r, s) = run(&config).await;
    assert_status(&r, CheckStatus::Degraded);
    assert!(
        r.detail
            .starts_with("list \"votes\" has 600 items (above 500); redis "),
        "{}",
        r.detail
    );
    assert_eq!(
        value(
            &s,
            "fleetwatch_check_redis_list_length",
            Some(("key", "votes"))
        ),
        Some(600.0)
    );
    assert_eq!(
        value(
            &s,
            "fleetwatch_check_redis_list_length",
            Some(("key", "empty"))
        ),
        Some(0.0)
    );
    assert!(value(&s, "fleetwatch_check_redis_memory_used_bytes", None).unwrap() > 0.0);
    assert!(value(&s, "fleetwatch_check_redis_uptime_seconds", None).is_some());
    assert_eq!(
        value(&s, "fleetwatch_check_status", Some(("kind", "redis"))),
        Some(1.0)
    );

    let (r, _) = run(&one(&format!(
        "[[checks]]\nname = \"queue-crit\"\n[checks.redis]\nurl = \"{url}\"\n\
         lists = [{{ key = \"votes\", critical = 500 }}]\n"
    )))
    .await;
    assert_status(&r, CheckStatus::Unhealthy);

    // The worker drains the queue: healthy.
    let _: () = redis::cmd("LTRIM")
        .arg("votes")
        .arg(0)
        .arg(99)
        .query_async(&mut con)
        .await
        .unwrap();
    let (r, _) = run(&config).await;
    assert_status(&r, CheckStatus::Healthy);

    // A key of the wrong type is named.
    let _: () = redis::cmd("SET")
        .arg("empty")
        .arg("x")
        .query_async(&mut con)
        .await
        .unwrap();
    let (r, _) = run(&config).await;
    assert_status(&r, CheckStatus::Unhealthy);
    assert!(r.detail.starts_with("LLEN \"empty\": "), "{}", r.detail);

    drop(con);
    server.stop(libc::SIGTERM);
    let (r, s) = run(&config).await;
    assert_status(&r, CheckStatus::Unhealthy);
    assert!(
        r.detail.starts_with("connecting to redis://127.0.0.1"),
        "{}",
        r.detail
    );
    assert_eq!(value(&s, "fleetwatch_check_redis_list_length", None), None);
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL

fn postgres_bin_dir() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|d| d.join("initdb").is_file() && d.join("postgres").is_file())
        .collect();
    dirs.sort();
    dirs.pop()
}

/// Runs `program` as the `postgres` user when we are root (postgres refuses root).
fn as_postgres(program: &Path) -> Command {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let mut cmd = Command::new("setpriv");
        cmd.args([
            "--reuid=postgres",
            "--regid=postgres",
            "--init-groups",
            "--",
        ])
        .arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

fn chown_to_postgres(path: &Path) {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return;
    }
    let id = |flag: &str| -> u32 {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    };
    std::os::unix::fs::chown(path, Some(id("-u")), Some(id("-g"))).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_check_reads_connections_and_sees_the_server_stop() {
    let Some(bin) = peer(
        postgres_bin_dir(),
        "/usr/lib/postgresql/*/bin/postgres",
        "postgresql",
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    chown_to_postgres(dir.path());
    let data = dir.path().join("data");
    let status = as_postgres(&bin.join("initdb"))
        .arg("-D")
        .arg(&data)
        .args(["-U", "postgres", "-A", "trust", "--no-sync"])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "initdb failed");
    let port = free_port();
    let server = Server::spawn(
        "postgres",
        as_postgres(&bin.join("postgres"))
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-k"])
            .arg(dir.path())
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "max_connections=10",
            ])
            .args(["-c", "fsync=off"]),
    );
    let connection = format!("host=127.0.0.1 port={port} user=postgres dbname=postgres");
    let config = one(&format!(
        "[[checks]]\nname = \"db\"\n[checks.postgres]\nconnection = \"{connection}\"\n\
         query = \"SELECT count(*) FROM pg_class\"\n"
    ));
    let (r, s) = wait_for_result("postgres starts", &config, |r, _| {
        r.status == CheckStatus::Healthy
    })
    .await;
    assert!(
        r.detail.contains("1 of 10 connections in use"),
        "{}",
        r.detail
    );
    assert_eq!(
        value(&s, "fleetwatch_check_postgres_max_connections", None),
        Some(10.0)
    );
    assert_eq!(
        value(
            &s,
            "fleetwatch_check_postgres_connections",
            Some(("state", "active"))
        ),
        Some(1.0)
    );
    assert!(value(&s, "fleetwatch_check_postgres_query_duration_seconds", None).unwrap() > 0.0);

    // Eight more client connections: 9 of 10 in use, above the default warning of 0.8.
    let mut held = Vec::new();
    for _ in 0..8 {
        let (client, conn) = tokio_postgres::connect(&connection, tokio_postgres::NoTls)
            .await
            .unwrap();
        held.push((client, tokio::spawn(conn)));
    }
    let (r, s) = wait_for_result("9 connections in use", &config, |r, _| {
        r.detail.contains("9 of 10")
    })
    .await;
    assert_status(&r, CheckStatus::Degraded);
    assert!(
        r.detail.starts_with("9 of 10 connections in use (90%)"),
        "{}",
        r.detail
    );
    assert_eq!(
        value(
            &s,
            "fleetwatch_check_postgres_connections",
            Some(("state", "idle"))
        ),
        Some(8.0)
    );
    drop(held);
    wait_for_result("connections closed", &config, |r, _| {
        r.status == CheckStatus::Healthy
    })
    .await;

    // A failing probe query is named.
    let bad = one(&format!(
        "[[checks]]\nname = \"db-bad\"\n[checks.postgres]\nconnection = \"{connection}\"\n\
         query = \"SELECT * FROM no_such_table\"\n"
    ));
    let (r, _) = run(&bad).await;
    assert_status(&r, CheckStatus::Unhealthy);
    assert!(r.detail.contains("no_such_table"), "{}", r.detail);

    // Fast shutdown; then the check is unhealthy.
    server.stop(libc::SIGINT);
    let (r, s) = run(&config).await;
    assert_status(&r, CheckStatus::Unhealthy);
    assert!(
        r.detail
            .starts_with(&format!("connecting to postgres 127.0.0.1:{port}/postgres")),
        "{}",
        r.detail
    );
    assert_eq!(
        value(&s, "fleetwatch_check_postgres_max_connections", None),
        None
    );
}

//! `fleetwatch-aggregator demo`: with no configuration, this host is up and its metrics are
//! queryable within 20 seconds, the admin token is written to DIR/admin.token, and (where the
//! test may write to /var/log) a line appended to a new `/var/log/*.log` file is searchable.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

#[test]
fn demo_shows_this_host_within_20_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let (http, quic) = (free_tcp_port(), free_udp_port());
    let log = std::fs::File::create(dir.path().join("demo.log")).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_fleetwatch-aggregator"))
        .arg("demo")
        .arg("--data-dir")
        .arg(dir.path().join("demo"))
        .args([
            "--http",
            &format!("127.0.0.1:{http}"),
            "--quic",
            &format!("127.0.0.1:{quic}"),
        ])
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let _guard = KillOnDrop(child);
    let started = Instant::now();
    let host = fleetwatch_aggregator::demo::local_hostname();
    let token_path = dir.path().join("demo/admin.token");
    let mut up = false;
    let mut load = false;
    while started.elapsed() < Duration::from_secs(20) && !(up && load) {
        std::thread::sleep(Duration::from_millis(250));
        let Ok(token) = std::fs::read_to_string(&token_path) else {
            continue;
        };
        let q = |expr: &str| -> Option<String> {
            let (code, body) = http_get_with(
                http,
                &format!("/api/v1/query?query={}", urlencode(expr)),
                token.trim(),
            )
            .ok()?;
            (code == 200).then_some(body)
        };
        up = q(&format!("up{{host=\"{host}\"}}")).is_some_and(|b| b.contains("\"1\""));
        load = q(&format!("node_memory_MemTotal_bytes{{host=\"{host}\"}}"))
            .is_some_and(|b| b.contains("\"value\""));
    }
    let printed = std::fs::read_to_string(dir.path().join("demo.log")).unwrap();
    assert!(
        up && load,
        "after {:?}: up={up} metrics={load}\n{printed}",
        started.elapsed()
    );
    let token = std::fs::read_to_string(&token_path).unwrap();
    assert!(
        printed.contains(token.trim()),
        "the demo prints the admin token"
    );
    assert!(
        printed.contains(&format!("http://127.0.0.1:{http}")),
        "the demo prints the URL"
    );
    // The dashboard link signs in with the admin token, and the page it opens is served.
    assert!(
        printed.contains(&format!(
            "http://127.0.0.1:{http}/#/login?token={}",
            token.trim()
        )),
        "the demo prints the signed-in dashboard link\n{printed}"
    );
    let (code, page) = http_get_with(http, "/", "").unwrap();
    assert_eq!(code, 200, "{page}");
    assert!(page.contains("/assets/app.js"), "{page}");
    let (code, script) = http_get_with(http, "/assets/app.js", "").unwrap();
    assert!(
        code == 200 && script.len() > 10_000,
        "{code}: {} bytes",
        script.len()
    );
    // The token file is private.
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&token_path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(
        printed.contains("/v1/metrics"),
        "the demo prints the push listener"
    );
    // Without the token the API refuses.
    let (code, _) = http_get_with(http, "/api/v1/query?query=up", "wrong-token-000000").unwrap();
    assert_eq!(code, 401);

    // The demo tails /var/log/*.log with no configuration: a new file's line is found.
    let marker = format!("fleetwatch-demo-test-{}", std::process::id());
    let path = std::path::PathBuf::from(format!("/var/log/{marker}.log"));
    if std::fs::write(&path, format!("ERROR {marker} appended by the demo test\n")).is_err() {
        eprintln!("SKIPPED the demo's log check: /var/log is not writable here");
        return;
    }
    struct RemoveOnDrop(std::path::PathBuf);
    impl Drop for RemoveOnDrop {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let _remove = RemoveOnDrop(path);
    let deadline = Instant::now() + Duration::from_secs(30);
    let found = loop {
        let (code, body) = http_get_with(
            http,
            &format!("/api/logs/query?contains={}", urlencode(&marker)),
            token.trim(),
        )
        .unwrap();
        if code == 200 && body.contains(&format!("{marker} appended")) {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "the line in /var/log/{marker}.log never reached the log store: {code} {body}"
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    assert!(found.contains("\"error\""), "level detected: {found}");
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        unsafe {
            libc::kill(self.0.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

//! A full disk under the agent's buffer, on a real tmpfs of 8 MiB filled with a ballast file.
//! sled refuses every write after its first I/O error, so the buffer must close and reopen it by
//! itself once space is back; meanwhile new batches are dropped and counted, log sources keep
//! their saved positions (the lines are read again later), and SIGTERM still stops the agent.
//!
//! One test drives the buffer alone; the other a real `fleetwatch-agent` process tailing a log
//! file and shipping over mutual-TLS QUIC to a test aggregator on loopback that speaks the real
//! protocol (`ServerConn`) and records what arrives.
//!
//! Mounting needs root: without it the tests print SKIPPED and pass, unless
//! `FLEETWATCH_REQUIRE_PEERS=1` (as CI sets; CI runs as root) makes that a failure.

mod support;

use fleetwatch_agent::buffer::{Buffer, BufferConfig};
use fleetwatch_agent::transport::read_frame;
use fleetwatch_common::codec::FrameLimits;
use fleetwatch_common::model::{Lane, LogRecord};
use fleetwatch_common::pki::{self, Validity};
use fleetwatch_common::protocol::PendingBatches;
use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (for example "8m") on `dir`; `None` (after printing SKIPPED)
    /// when not root, unless `FLEETWATCH_REQUIRE_PEERS=1`.
    fn mount(dir: &Path, size: &str, test: &str) -> Option<Tmpfs> {
        // SAFETY: geteuid has no preconditions and can not fail.
        let root = unsafe { libc::geteuid() } == 0;
        if !root {
            if std::env::var("FLEETWATCH_REQUIRE_PEERS").is_ok_and(|v| v == "1") {
                panic!("{test}: mounting a tmpfs needs root (FLEETWATCH_REQUIRE_PEERS=1)");
            }
            println!("SKIPPED {test}: mounting a tmpfs needs root");
            return None;
        }
        std::fs::create_dir_all(dir).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("running mount");
        assert!(
            status.success(),
            "mount -t tmpfs on {} failed",
            dir.display()
        );
        Some(Tmpfs {
            dir: dir.to_path_buf(),
        })
    }

    /// Writes a ballast file until the file system is full; its path.
    fn fill(&self) -> PathBuf {
        let path = self.dir.join("ballast");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap();
        let block = vec![0x5au8; 64 * 1024];
        loop {
            match f.write(&block) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("writing the ballast: {e}"),
            }
        }
        // the last few bytes too
        while let Ok(n) = f.write(&block[..512]) {
            if n == 0 {
                break;
            }
        }
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a process still holding a file there (a failed test) does not keep it mounted.
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

fn cfg() -> BufferConfig {
    BufferConfig {
        max_bytes: 64 << 20,
        max_age: Duration::from_secs(3600),
        cache_bytes: 1 << 20,
    }
}

fn frame(n: u64) -> Vec<u8> {
    (0..4096u64)
        .map(|i| ((i * 31 + n * 7) % 251) as u8)
        .collect()
}

/// The buffer alone: a write on a full disk fails with `disk_full` and closes the buffer (later
/// writes fail at once); once the ballast is gone it reopens by itself, with every batch
/// committed before still there, and hands out the next sequence number without reusing the
/// one given to the failed write. The position written with the failed batch is not saved.
#[test]
fn buffer_reopens_by_itself_after_the_disk_was_full() {
    let dir = tempfile::tempdir().unwrap();
    let Some(fs) = Tmpfs::mount(
        &dir.path().join("fs"),
        "8m",
        "buffer_reopens_by_itself_after_the_disk_was_full",
    ) else {
        return;
    };
    let b = Buffer::open(&fs.dir.join("buffer"), cfg()).unwrap();
    let pos = |n: u64| vec![(b"f".to_vec(), Some(n.to_be_bytes().to_vec()))];
    let mut kept = BTreeMap::new();
    for n in 0..20 {
        let (seq, _) = b
            .push_with_checkpoints(Lane::Logs, 0, &pos(n), |_| Ok::<_, String>(frame(n)))
            .unwrap();
        kept.insert(seq, frame(n));
    }
    let last_ok = *kept.keys().last().unwrap();

    let ballast = fs.fill();
    // The disk is full to the last byte: a batch can not be written (sled may still take a few
    // small writes into space it already holds; 200 batches of 4 KiB are far beyond that).
    let mut failed = None;
    for n in 20..220 {
        match b.push_with_checkpoints(Lane::Logs, 0, &pos(n), |_| Ok::<_, String>(frame(n))) {
            Ok((seq, _)) => {
                kept.insert(seq, frame(n));
            }
            Err(e) => {
                failed = Some((n, e));
                break;
            }
        }
    }
    let (failed_n, error) = failed.expect("a write on a full disk failed");
    println!("write {failed_n} failed: {error}");
    assert_eq!(error.reason(), "disk_full", "{error}");
    let last_ok = kept.keys().last().copied().unwrap_or(last_ok);
    assert_eq!(b.failures(), 1);
    // Closed: the next writes fail at once, without touching sled.
    let again = b
        .push(Lane::Metrics, 0, |_| Ok::<_, String>(vec![1]))
        .unwrap_err();
    assert!(again.is_unavailable(), "{again}");
    assert_eq!(again.reason(), "disk_full");
    assert!(!b.is_available());

    std::fs::remove_file(&ballast).unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !b.is_available() {
        assert!(
            Instant::now() < deadline,
            "the buffer did not reopen after space came back"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(b.reopens(), 1);
    // Everything committed before the error is there, in order, whole.
    let mut seq = 0;
    let mut seen = Vec::new();
    while let Some(next) = b.first_after(seq) {
        seq = next;
        seen.push((seq, b.get(seq).unwrap().unwrap().frame));
    }
    let want: Vec<_> = kept.into_iter().collect();
    assert_eq!(
        seen.len(),
        want.len(),
        "batches lost or added by the reopen"
    );
    assert!(seen == want, "a batch changed across the reopen");
    // The position went with the failed batch: not saved.
    let saved = b.checkpoint(b"f").unwrap().unwrap();
    assert_eq!(
        u64::from_be_bytes(saved.try_into().unwrap()),
        failed_n - 1,
        "the saved position is the last one written with a stored batch"
    );
    // The failed write's number is not handed out again.
    let (seq, _) = b
        .push(Lane::Metrics, 0, |_| Ok::<_, String>(vec![2]))
        .unwrap();
    assert_eq!(seq, last_ok + 2);
    assert_eq!(b.get(seq).unwrap().unwrap().frame, vec![2]);
}

/// What the test aggregator received.
#[derive(Default)]
struct Received {
    /// Log messages by batch sequence number (a batch sent twice is kept once, as the real
    /// aggregator does).
    logs: BTreeMap<u64, Vec<String>>,
    /// Highest value seen of `fleetwatch_agent_buffer_dropped_batches_total`, by reason.
    dropped: BTreeMap<String, f64>,
    /// Highest batch sequence number.
    newest_seq: u64,
    /// While set, acknowledgements wait (a slow aggregator: the agent's buffer grows).
    hold: bool,
}

/// A QUIC server with mutual TLS that accepts agents one after the other and acknowledges
/// every batch at once.
async fn aggregator(pki_dir: &Path) -> (SocketAddr, Arc<Mutex<Received>>, quinn::Endpoint) {
    let endpoint = support::quic::endpoint(pki_dir);
    let addr = endpoint.local_addr().unwrap();
    let received = Arc::new(Mutex::new(Received::default()));
    let (ep, rx) = (endpoint.clone(), received.clone());
    tokio::spawn(async move {
        while let Some(incoming) = ep.accept().await {
            let Ok(conn) = incoming.await else { continue };
            tokio::spawn(serve(conn, rx.clone()));
        }
    });
    (addr, received, endpoint)
}

async fn serve(conn: quinn::Connection, received: Arc<Mutex<Received>>) {
    let Some(server) = support::quic::handshake(&conn, 16).await else {
        return;
    };
    let limits = FrameLimits::default();
    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
        let (server, received) = (server.clone(), received.clone());
        tokio::spawn(async move {
            let Ok(message) = read_frame(&mut recv, &limits).await else {
                return;
            };
            let Ok(batch) = server.lock().unwrap().on_batch_stream(message) else {
                return;
            };
            {
                let mut r = received.lock().unwrap();
                r.newest_seq = r.newest_seq.max(batch.seq);
                if batch.lane == Lane::Logs {
                    r.logs
                        .entry(batch.seq)
                        .or_insert_with(|| batch.logs.iter().map(message_of).collect());
                }
                for ss in &batch.metrics {
                    if ss.series.name != "fleetwatch_agent_buffer_dropped_batches_total" {
                        continue;
                    }
                    let reason = ss.series.label("reason").unwrap_or("").to_string();
                    for s in &ss.samples {
                        let v = r.dropped.entry(reason.clone()).or_insert(0.0);
                        *v = v.max(s.value);
                    }
                }
            }
            while received.lock().unwrap().hold {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            support::quic::acknowledge(&server, &mut send, batch.seq).await;
        });
    }
}

fn message_of(r: &LogRecord) -> String {
    r.message.clone()
}

/// Line `n` of the log file.
fn line(n: usize) -> String {
    format!("line {n:06} {}\n", "q".repeat(100))
}

fn number(message: &str) -> Option<usize> {
    message.strip_prefix("line ")?.get(..6)?.parse().ok()
}

/// Appends lines `from..to` to the log file.
fn write_lines(path: &Path, from: usize, to: usize) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    let text: String = (from..to).map(line).collect();
    f.write_all(text.as_bytes()).unwrap();
}

/// How many times each line number arrived.
fn arrivals(received: &Mutex<Received>) -> BTreeMap<usize, usize> {
    let mut count = BTreeMap::new();
    for m in received.lock().unwrap().logs.values().flatten() {
        let n = number(m).unwrap_or_else(|| panic!("unexpected record {m:?}"));
        *count.entry(n).or_insert(0) += 1;
    }
    count
}

/// Line numbers that arrived more than once.
fn twice(received: &Mutex<Received>) -> Vec<usize> {
    arrivals(received)
        .into_iter()
        .filter(|&(_, c)| c > 1)
        .map(|(n, _)| n)
        .collect()
}

/// Prints the lines that arrived more than once, with the batches (sequence number, first and
/// last line) that held them.
fn report_twice(received: &Mutex<Received>) {
    let dups = twice(received);
    println!("lines delivered twice: {dups:?}");
    let r = received.lock().unwrap();
    for n in dups {
        let batches: Vec<(u64, Option<usize>, Option<usize>)> = r
            .logs
            .iter()
            .filter(|(_, v)| v.iter().any(|m| number(m) == Some(n)))
            .map(|(seq, v)| {
                let first = v.first().and_then(|m| number(m));
                (*seq, first, v.last().and_then(|m| number(m)))
            })
            .collect();
        println!("  line {n} in batches (seq, first line, last line) {batches:?}");
    }
}

async fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Appends lines from `from` on, 200 every 100 ms, until the agent's log reports `failures`
/// failed buffer writes in all (sled reuses the space of acknowledged batches, so a write fails
/// only once the buffer has to grow); the next line number.
async fn write_until_failure(app: &Path, from: usize, log: &Path, failures: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut next = from;
    while in_log(log, "buffer write failed") < failures {
        assert!(
            Instant::now() < deadline,
            "no buffer write failed on a full disk ({} lines written)",
            next - from
        );
        write_lines(app, next, next + 200);
        next += 200;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    next
}

/// Occurrences of `text` in the agent's log.
fn in_log(log: &Path, text: &str) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .matches(text)
        .count()
}

fn start_agent(config: &Path, log: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Command::new(env!("CARGO_BIN_EXE_fleetwatch-agent"))
        .args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        // tracing writes to stdout
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("starting fleetwatch-agent")
}

/// Kills the agent if a failed assertion leaves it running, and then shows the end of its log.
struct Reap(Option<Child>, PathBuf);

impl Drop for Reap {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.1).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!("--- end of the agent's log ---");
            for l in &lines[lines.len().saturating_sub(40)..] {
                eprintln!("{l}");
            }
        }
    }
}

/// A real agent process tailing a log file, its buffer on an 8 MiB tmpfs: filling the disk
/// does not stop it; batches it can not write are counted (`reason="disk_full"`, reported to
/// the aggregator once it ships again); the lines written meanwhile stay in the file and
/// arrive after the ballast is deleted; SIGTERM on a full disk stops it; and a
/// restart after that delivers the lines written before the stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_survives_a_full_disk_and_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let Some(fs) = Tmpfs::mount(
        &d.join("data"),
        "8m",
        "agent_survives_a_full_disk_and_catches_up",
    ) else {
        return;
    };
    let pki_dir = d.join("pki");
    pki::init(&pki_dir, "test CA").unwrap();
    let cert = pki::issue_agent(&pki_dir, "test-host", Validity::days(1)).unwrap();
    let (addr, received, endpoint) = aggregator(&pki_dir).await;
    let logs = d.join("logs");
    std::fs::create_dir(&logs).unwrap();
    let app = logs.join("app.log");
    let config = d.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            r#"data_dir = "{data}"
[aggregator]
addresses = ["{addr}"]
server_name = "localhost"
ca = "{ca}"
cert = "{cert}"
key = "{key}"
backoff_min_seconds = 0.1
backoff_max_seconds = 1.0
[host]
enabled = false
interval_seconds = 0.25
[batch]
max_items = 200
max_wait_seconds = 0.1
[push]
enabled = false
[logs]
scan_interval_seconds = 0.2
read_interval_seconds = 0.05
[[logs.files]]
name = "app"
paths = ["{logs}/*.log"]
start_at = "beginning"
"#,
            data = fs.dir.display(),
            ca = pki_dir.join("ca.pem").display(),
            cert = cert.cert.display(),
            key = cert.key.display(),
            logs = logs.display(),
        ),
    )
    .unwrap();
    let agent_log = d.join("agent.log");
    let mut agent = Reap(Some(start_agent(&config, &agent_log)), agent_log.clone());
    let alive = |agent: &mut Reap| agent.0.as_mut().unwrap().try_wait().unwrap().is_none();

    // 1. Normal operation.
    write_lines(&app, 0, 500);
    wait_until("the first 500 lines", Duration::from_secs(60), || {
        arrivals(&received).len() == 500
    })
    .await;

    // 2. The aggregator stops acknowledging, so the buffer has to grow (sled reuses the
    // space of acknowledged batches), and the disk fills up; lines keep coming.
    received.lock().unwrap().hold = true;
    let ballast = fs.fill();
    let mut written = write_until_failure(&app, 500, &agent_log, 1).await;
    write_lines(&app, written, written + 500);
    written += 500;
    // A few seconds on a full disk: reopen attempts fail, batches of the agent's own metrics
    // (every 0.25 s) are dropped, the log source waits.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(alive(&mut agent), "the agent exited on a full disk");
    let during = arrivals(&received).len();
    println!("lines delivered before the disk came back: {during} of {written}");

    // 3. Space comes back: the buffer reopens, the source reads on from its saved position.
    std::fs::remove_file(&ballast).unwrap();
    received.lock().unwrap().hold = false;
    wait_until(
        "every line after space came back",
        Duration::from_secs(120),
        || arrivals(&received).len() == written,
    )
    .await;
    wait_until(
        "the drops to be reported with reason disk_full",
        Duration::from_secs(60),
        || {
            received
                .lock()
                .unwrap()
                .dropped
                .get("disk_full")
                .is_some_and(|&v| v >= 1.0)
        },
    )
    .await;
    // Every line arrived (checked above), and none twice: a source's chunk of records is never
    // split over two log batches (LogBatcher), so a failed write re-reads only its own lines.
    report_twice(&received);
    assert!(twice(&received).is_empty(), "lines arrived twice");
    assert!(in_log(&agent_log, "buffer reopened") >= 1);
    let dropped = received.lock().unwrap().dropped.clone();
    println!("drops reported by the agent: {dropped:?}");

    // 4. Full again, lines written while full, then SIGTERM: the agent stops by itself.
    received.lock().unwrap().hold = true;
    let ballast = fs.fill();
    let failures_before = in_log(&agent_log, "buffer write failed");
    written = write_until_failure(&app, written, &agent_log, failures_before + 1).await;
    write_lines(&app, written, written + 300);
    written += 300;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let seq_before_stop = received.lock().unwrap().newest_seq;
    let pid = agent.0.as_ref().unwrap().id() as libc::pid_t;
    // SAFETY: signalling our own child process by its pid.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let asked = Instant::now();
    let status = loop {
        if let Some(status) = agent.0.as_mut().unwrap().try_wait().unwrap() {
            break status;
        }
        assert!(
            asked.elapsed() < Duration::from_secs(30),
            "the agent did not stop within 30 s of SIGTERM on a full disk"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    println!("stopped {:?} after SIGTERM on a full disk", asked.elapsed());
    assert!(status.success(), "the agent exited with {status}");
    agent.0 = None;

    // 5. Restart with space back: the lines written while full arrive, the sequence goes on.
    std::fs::remove_file(&ballast).unwrap();
    received.lock().unwrap().hold = false;
    let mut agent = Reap(Some(start_agent(&config, &agent_log)), agent_log.clone());
    wait_until(
        "the lines written before the stop, after the restart",
        Duration::from_secs(120),
        || arrivals(&received).len() == written,
    )
    .await;
    assert!(alive(&mut agent));
    report_twice(&received);
    assert!(twice(&received).is_empty(), "lines arrived twice");
    let r = received.lock().unwrap();
    assert!(r.newest_seq > seq_before_stop);
    drop(r);
    let pid = agent.0.as_ref().unwrap().id() as libc::pid_t;
    // SAFETY: signalling our own child process by its pid.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let _ = agent.0.as_mut().unwrap().wait();
    agent.0 = None;
    endpoint.close(0u32.into(), b"done");
}

//! File tailing inside one agent, against real files: rotation by rename, by copy-truncate and
//! by delete-and-recreate while a writer appends continuously (every line once, in order per
//! file, rotated files released), a restart in the middle of writing, and hostile input (a
//! 10 MB line, invalid UTF-8, a NUL byte, a 10,000-field JSON line, a stack trace). The agent
//! has no aggregator: records are read back from its buffer.

use fleetwatch_agent::buffer::Buffer;
use fleetwatch_agent::config::AgentConfig;
use fleetwatch_agent::run::{self, RunningAgent};
use fleetwatch_agent::sources::logs::config::{FileSource, StartAt};
use fleetwatch_common::codec::{self, FrameLimits};
use fleetwatch_common::model::{LogLevel, LogRecord};
use fleetwatch_common::protocol::{Message, PendingBatches};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn config(dir: &Path, paths: &[String]) -> AgentConfig {
    let mut c = AgentConfig {
        data_dir: dir.join("agent"),
        ..Default::default()
    };
    // nothing listens there: batches stay in the buffer
    c.aggregator.addresses = vec!["127.0.0.1:9".into()];
    c.push.enabled = false;
    c.host.enabled = false;
    c.host.interval_seconds = 60.0;
    c.batch.max_wait_seconds = 0.05;
    c.logs.scan_interval_seconds = 0.2;
    c.logs.read_interval_seconds = 0.05;
    c.logs.release_after_seconds = 0.5;
    c.logs.files = vec![FileSource {
        name: "app".into(),
        paths: paths.to_vec(),
        exclude: Vec::new(),
        start_at: StartAt::Beginning,
        multiline_start: None,
        labels: BTreeMap::new(),
        max_line_bytes: 256 * 1024,
        rate_limit_lines_per_second: 0,
    }];
    c
}

/// Every log record in the buffer, in buffer order.
fn records(buffer: &Buffer) -> Vec<LogRecord> {
    let mut out = Vec::new();
    let mut seq = 0;
    while let Some(next) = buffer.first_after(seq) {
        seq = next;
        if let Ok(Some(e)) = buffer.get(seq) {
            if let Ok(Message::Batch(b)) = codec::decode(&e.frame, &FrameLimits::default()) {
                out.extend(b.logs);
            }
        }
    }
    out
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for {what}");
}

/// The line the writer writes as number `n`.
fn line(n: usize) -> String {
    format!("line {n:06} {}\n", "p".repeat(60))
}

fn seq_of(message: &str) -> Option<usize> {
    message.strip_prefix("line ")?.get(..6)?.parse().ok()
}

/// Checks that lines 0..n arrived exactly once each, and in order within each source.
fn assert_exactly_once_in_order(recs: &[LogRecord], n: usize) {
    let mut count = vec![0usize; n];
    let mut by_source: BTreeMap<&str, Vec<(i64, usize)>> = BTreeMap::new();
    for r in recs {
        let s = seq_of(&r.message).unwrap_or_else(|| panic!("unexpected record {:?}", r.message));
        count[s] += 1;
        by_source
            .entry(&r.source)
            .or_default()
            .push((r.timestamp_ns, s));
    }
    let missing: Vec<usize> = (0..n).filter(|&i| count[i] == 0).collect();
    let twice: Vec<usize> = (0..n).filter(|&i| count[i] > 1).collect();
    assert!(
        missing.is_empty(),
        "{} lines missing: {:?}",
        missing.len(),
        &missing[..missing.len().min(20)]
    );
    assert!(
        twice.is_empty(),
        "{} lines repeated: {:?}",
        twice.len(),
        &twice[..twice.len().min(20)]
    );
    for (source, mut v) in by_source {
        v.sort();
        for w in v.windows(2) {
            assert!(
                w[0].1 < w[1].1,
                "{source}: line {} stored after line {}",
                w[1].1,
                w[0].1
            );
        }
    }
}

/// Descriptors of this process open on files under `dir`.
fn open_fds_under(dir: &Path) -> Vec<String> {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .map(|p| p.display().to_string())
        .filter(|p| p.starts_with(&dir.display().to_string()))
        .collect()
}

const LINES: usize = 3000;
const ROTATE_EVERY: usize = 700;

/// Writes LINES lines to `path` with `rotate(k)` called (under the writer's lock) every
/// ROTATE_EVERY lines; the writer opens `path` in append mode again after each rotation.
fn write_with_rotation(
    path: PathBuf,
    rotate: impl Fn(usize) + Send + 'static,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let open = |p: &Path| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .unwrap()
        };
        let mut f = open(&path);
        for i in 0..LINES {
            if i > 0 && i % ROTATE_EVERY == 0 {
                rotate(i / ROTATE_EVERY);
                f = open(&path);
            }
            f.write_all(line(i).as_bytes()).unwrap();
            // each file lives for several scans of the glob: a file created and rotated away
            // between two scans is never seen (polling), unless the glob matches its rotated
            // name too
            if i % 5 == 0 {
                std::thread::sleep(Duration::from_millis(3));
            }
        }
    })
}

async fn run_rotation_case(
    rotate: impl Fn(&Path, usize) + Send + Sync + 'static,
    glob: &str,
) -> (RunningAgent, Arc<Buffer>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let path = logs.join("app.log");
    std::fs::write(&path, "").unwrap();
    let agent = run::start(config(dir.path(), &[format!("{}/{glob}", logs.display())])).unwrap();
    let buffer = agent.buffer.clone();
    let p2 = path.clone();
    let writer = write_with_rotation(path, move |k| rotate(&p2, k));
    tokio::task::spawn_blocking(move || writer.join().unwrap())
        .await
        .unwrap();
    let b = buffer.clone();
    // no panic here: the caller's checks say which lines are missing
    tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        while records(&b).len() < LINES && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .await
    .unwrap();
    (agent, buffer, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rename_rotation_while_writing_keeps_every_line_once_in_order() {
    let (agent, buffer, dir) = run_rotation_case(
        |p, k| std::fs::rename(p, p.with_extension(format!("log.{k}"))).unwrap(),
        "app.log",
    )
    .await;
    // let a little more time pass: nothing more may arrive
    tokio::time::sleep(Duration::from_millis(700)).await;
    let recs = records(&buffer);
    assert_exactly_once_in_order(&recs, LINES);
    assert!(
        recs.iter().all(|r| r.source.ends_with("/app.log")),
        "records keep the path they were found under"
    );
    let rotations = agent
        .metrics
        .log_rotations
        .with_label_values(&["app", "rename"])
        .get();
    assert_eq!(rotations, (LINES / ROTATE_EVERY) as u64);
    let logs = dir.path().join("logs");
    wait_for("renamed files released", Duration::from_secs(20), || {
        open_fds_under(&logs).len() == 1
    });
    assert_eq!(
        agent
            .metrics
            .log_files_watched
            .with_label_values(&["app"])
            .get(),
        1
    );
    assert_eq!(
        agent
            .metrics
            .log_lines_read
            .with_label_values(&["app"])
            .get(),
        LINES as u64
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_truncate_rotation_while_writing_keeps_every_line_once_in_order() {
    // logrotate's copytruncate loses what is written between the copy and the truncation;
    // this writer writes nothing then (the rotation runs under its lock), so every line
    // written is in the original or in a copy exactly once
    let (agent, buffer, _dir) = run_rotation_case(
        |p, k| {
            std::fs::copy(p, p.with_extension(format!("log.{k}"))).unwrap();
            std::fs::OpenOptions::new()
                .write(true)
                .open(p)
                .unwrap()
                .set_len(0)
                .unwrap();
        },
        "app.log*",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let recs = records(&buffer);
    assert_exactly_once_in_order(&recs, LINES);
    let m = &agent.metrics.log_rotations;
    assert_eq!(
        m.with_label_values(&["app", "truncate"]).get(),
        (LINES / ROTATE_EVERY) as u64
    );
    assert_eq!(
        m.with_label_values(&["app", "copytruncate"]).get(),
        (LINES / ROTATE_EVERY) as u64
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_and_recreated_file_is_read_to_its_end_and_released() {
    let (agent, buffer, dir) =
        run_rotation_case(|p, _| std::fs::remove_file(p).unwrap(), "app.log").await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_exactly_once_in_order(&records(&buffer), LINES);
    assert_eq!(
        agent
            .metrics
            .log_rotations
            .with_label_values(&["app", "delete"])
            .get(),
        (LINES / ROTATE_EVERY) as u64
    );
    let logs = dir.path().join("logs");
    wait_for("deleted files released", Duration::from_secs(20), || {
        let fds = open_fds_under(&logs);
        fds.len() == 1 && !fds[0].contains("(deleted)")
    });
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_in_the_middle_of_writing_neither_loses_nor_repeats() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.log");
    std::fs::write(&path, "").unwrap();
    let cfg = config(dir.path(), &[path.display().to_string()]);
    let writer = {
        let path = path.clone();
        std::thread::spawn(move || {
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .unwrap();
            for i in 0..LINES {
                f.write_all(line(i).as_bytes()).unwrap();
                if i % 25 == 0 {
                    std::thread::sleep(Duration::from_millis(3));
                }
            }
        })
    };
    for _ in 0..3 {
        let agent = run::start(cfg.clone()).unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        agent.stop().await;
    }
    tokio::task::spawn_blocking(move || writer.join().unwrap())
        .await
        .unwrap();
    let agent = run::start(cfg.clone()).unwrap();
    let b = agent.buffer.clone();
    tokio::task::spawn_blocking(move || {
        wait_for("every line", Duration::from_secs(60), || {
            records(&b).len() >= LINES
        })
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_exactly_once_in_order(&records(&agent.buffer), LINES);
    agent.stop().await;
}

fn field<'a>(r: &'a LogRecord, k: &str) -> Option<&'a str> {
    r.fields
        .iter()
        .find(|(n, _)| n == k)
        .map(|(_, v)| v.as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_lines_are_kept_marked_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.log");
    let mut f = std::fs::File::create(&path).unwrap();
    f.write_all(b"first INFO line\n").unwrap();
    f.write_all(&vec![b'x'; 10 * 1024 * 1024]).unwrap();
    f.write_all(b"\n").unwrap();
    f.write_all(b"bad utf8 \xff\xfe here ERROR\n").unwrap();
    f.write_all(b"nul \x00 byte\n").unwrap();
    let wide: Vec<String> = (0..10_000).map(|i| format!("\"f{i}\":{i}")).collect();
    writeln!(
        f,
        r#"{{"msg":"wide","level":"warn","trace_id":"abc",{}}}"#,
        wide.join(",")
    )
    .unwrap();
    f.write_all(b"2024-05-01 ERROR boom\njava.lang.IllegalStateException: x\n\tat a.b(C.java:1)\nCaused by: y\n\tat d.e(F.java:2)\n").unwrap();
    f.write_all(b"last line\n").unwrap();
    drop(f);
    let agent = run::start(config(dir.path(), &[path.display().to_string()])).unwrap();
    let b = agent.buffer.clone();
    tokio::task::spawn_blocking(move || {
        wait_for("every record", Duration::from_secs(60), || {
            records(&b).iter().any(|r| r.message == "last line")
        })
    })
    .await
    .unwrap();
    let recs = records(&agent.buffer);
    let msgs: Vec<&str> = recs
        .iter()
        .map(|r| &r.message[..r.message.len().min(20)])
        .collect();
    assert_eq!(recs.len(), 8, "{msgs:?}");
    assert_eq!(recs[0].level, LogLevel::Info);
    let long = &recs[1];
    assert_eq!(long.message.len(), 256 * 1024);
    assert_eq!(field(long, "fleetwatch.truncated"), Some("true"));
    assert_eq!(field(long, "fleetwatch.original_bytes"), Some("10485760"));
    assert_eq!(recs[2].message, "bad utf8 \u{fffd}\u{fffd} here ERROR");
    assert_eq!(recs[2].level, LogLevel::Error);
    assert_eq!(field(&recs[2], "fleetwatch.invalid_utf8"), Some("true"));
    assert_eq!(recs[3].message, "nul \0 byte");
    assert_eq!(field(&recs[3], "fleetwatch.binary"), Some("true"));
    let wide = &recs[4];
    assert_eq!(wide.message, "wide");
    assert_eq!(wide.level, LogLevel::Warn);
    assert_eq!(field(wide, "trace_id"), Some("abc"));
    assert!(wide.fields.len() <= fleetwatch_common::validate::Limits::default().max_log_fields);
    assert_eq!(field(wide, "fleetwatch.fields_dropped"), Some("9873"));
    // the default rule: lines starting with whitespace or "Caused by" continue a record
    assert_eq!(recs[5].message, "2024-05-01 ERROR boom");
    assert_eq!(
        recs[6].message,
        "java.lang.IllegalStateException: x\n\tat a.b(C.java:1)\nCaused by: y\n\tat d.e(F.java:2)"
    );
    let m = &agent.metrics;
    assert_eq!(m.log_truncated.with_label_values(&["app", "line"]).get(), 1);
    assert_eq!(
        m.log_truncated.with_label_values(&["app", "fields"]).get(),
        1
    );
    assert_eq!(m.log_invalid_utf8.with_label_values(&["app"]).get(), 1);
    assert_eq!(m.log_records.with_label_values(&["app"]).get(), 8);
    // every record passes the aggregator's checks
    let mut batch = fleetwatch_common::model::Batch::new(fleetwatch_common::model::Lane::Logs, 0);
    batch.logs = recs;
    let report = fleetwatch_common::validate::validate_batch(
        &mut batch,
        "h",
        &fleetwatch_common::validate::Limits::default(),
        fleetwatch_common::model::now_ms(),
    )
    .unwrap();
    assert_eq!(report.dropped_items, 0, "{:?}", report.breaches);
    agent.stop().await;
}

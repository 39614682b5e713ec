//! The log store with the real store around it: durability across reopen, no duplicate after
//! replay, retention by time and size, pagination, counts.

use super::query::{self, CountQuery, Literal, LogFilter, LogQuery};
use super::*;
use crate::store::{Storage, StoreConfig};
use fleetwatch_common::model::{Batch, Lane};

const NS: i64 = 1_000_000_000;
const T0: i64 = 1_700_000_000 * NS;

fn rec(ts: i64, level: LogLevel, msg: &str, fields: &[(&str, &str)]) -> LogRecord {
    LogRecord {
        timestamp_ns: ts,
        source: "/var/log/app.log".into(),
        level,
        message: msg.into(),
        fields: fields
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

fn batch(seq: u64, logs: Vec<LogRecord>) -> Batch {
    let mut b = Batch::new(Lane::Logs, 0);
    b.seq = seq;
    b.logs = logs;
    b
}

fn open(dir: &Path, config: LogStoreConfig) -> (Arc<LogStore>, Storage) {
    let logs = Arc::new(LogStore::open(&dir.join("logs"), config, Metrics::new()).unwrap());
    let sink: Arc<dyn crate::store::LogSink> = logs.clone();
    let (store, _) =
        Storage::open_with_logs(&dir.join("store"), StoreConfig::default(), Some(sink)).unwrap();
    (logs, store)
}

fn all(logs: &LogStore) -> Vec<(String, i64, String)> {
    let q = LogQuery {
        filter: LogFilter::default(),
        start_ns: 0,
        end_ns: i64::MAX,
        newest_first: false,
        limit: 100_000,
        after: None,
    };
    let snap = logs.snapshot(&q.filter, q.start_ns, q.end_ns);
    query::page(&snap, &q)
        .records
        .into_iter()
        .map(|f| {
            (
                f.stream.host.clone(),
                f.record.timestamp_ns,
                f.record.message,
            )
        })
        .collect()
}

fn small() -> LogStoreConfig {
    LogStoreConfig {
        buffer_bytes: 1, // every batch its own segment
        ..Default::default()
    }
}

#[test]
fn records_survive_reopen_whether_buffered_or_in_segments_and_come_back_once() {
    for config in [LogStoreConfig::default(), small()] {
        let dir = tempfile::tempdir().unwrap();
        {
            let (_logs, store) = open(dir.path(), config.clone());
            for seq in 1..=5 {
                let logs = vec![rec(
                    T0 + seq as i64,
                    LogLevel::Info,
                    &format!("line {seq}"),
                    &[],
                )];
                store.apply("web-1", batch(seq, logs), 0).unwrap();
            }
            // a resend is a duplicate: not stored again
            let again = vec![rec(T0 + 1, LogLevel::Info, "line 1", &[])];
            assert_eq!(
                store.apply("web-1", batch(1, again), 0).unwrap(),
                crate::store::ApplyOutcome::Duplicate
            );
        } // dropped without any flush: a crash as far as the log store knows
        let (logs, _store) = open(dir.path(), config.clone());
        let got = all(&logs);
        assert_eq!(got.len(), 5, "{config:?}: {got:?}");
        assert_eq!(got[4].2, "line 5");
        let series = logs.records_series(0);
        assert_eq!(series.len(), 1);
        assert_eq!(series[0].samples[0].value, 5.0, "counted once");
    }
}

#[test]
fn a_flush_persists_buffered_records_before_the_log_goes() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (logs, store) = open(dir.path(), LogStoreConfig::default());
        let mut b = batch(1, vec![rec(T0, LogLevel::Error, "boom", &[])]);
        b.metrics.push(fleetwatch_common::model::SeriesSamples {
            series: Series::new("x", []),
            kind: MetricKind::Gauge,
            samples: vec![Sample {
                timestamp_ms: 1,
                value: 1.0,
            }],
        });
        store.apply("web-1", b, 0).unwrap();
        store.flush().unwrap();
        assert_eq!(logs.stats().segments, 1);
        assert_eq!(logs.stats().buffered_records, 0);
        // the flushed log is gone: the segment is free for retention
        assert_eq!(logs.inner.read().unwrap().wal_free_upto, 1);
        store
            .apply(
                "web-1",
                batch(2, vec![rec(T0 + 1, LogLevel::Info, "after", &[])]),
                0,
            )
            .unwrap();
    }
    let (logs, _store) = open(dir.path(), LogStoreConfig::default());
    let got: Vec<String> = all(&logs).into_iter().map(|r| r.2).collect();
    assert_eq!(got, vec!["boom", "after"]);
}

#[test]
fn retention_removes_old_segments_by_time_and_size_and_the_counter_keeps_counting() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogStoreConfig {
        retention_hours: 1.0,
        ..small()
    };
    let (logs, store) = open(dir.path(), config);
    let now = T0 + 10 * 3600 * NS;
    let old = vec![rec(T0, LogLevel::Info, "old", &[])];
    store.apply("web-1", batch(1, old), 0).unwrap();
    let new = vec![rec(now, LogLevel::Info, "new", &[])];
    store.apply("web-1", batch(2, new), 0).unwrap();
    // still covered by the write-ahead log: kept until a flush removed that
    assert_eq!(logs.retention(now).unwrap(), 0);
    store.flush().unwrap();
    assert_eq!(logs.retention(now).unwrap(), 1);
    let got: Vec<String> = all(&logs).into_iter().map(|r| r.2).collect();
    assert_eq!(got, vec!["new"]);
    assert_eq!(logs.records_series(0)[0].samples[0].value, 2.0);
    drop(logs);
    drop(store);
    // the counter stays after a restart; the removed segment does not come back
    let (logs, _store) = open(dir.path(), LogStoreConfig::default());
    assert_eq!(logs.records_series(0)[0].samples[0].value, 2.0);
    assert_eq!(all(&logs).len(), 1);

    // size: the oldest go first
    let dir = tempfile::tempdir().unwrap();
    let (logs, store) = open(
        dir.path(),
        LogStoreConfig {
            max_bytes: 1,
            ..small()
        },
    );
    for seq in 1..=3 {
        let l = vec![rec(now + seq as i64, LogLevel::Info, "x", &[])];
        store.apply("web-1", batch(seq, l), 0).unwrap();
    }
    store.flush().unwrap();
    assert_eq!(logs.retention(now).unwrap(), 3);
    assert_eq!(
        logs.metrics
            .logstore_removed_segments
            .with_label_values(&["size"])
            .get(),
        3
    );
}

#[test]
fn pages_cover_every_record_once_in_order_while_records_arrive() {
    let dir = tempfile::tempdir().unwrap();
    let (logs, store) = open(
        dir.path(),
        LogStoreConfig {
            buffer_bytes: 2_000,
            ..Default::default()
        },
    );
    let mut seq = 0;
    let mut put = |host: &str, n: i64, base: i64| {
        seq += 1;
        // equal timestamps across hosts and within a batch
        let l = (0..n)
            .map(|i| rec(base + i / 2, LogLevel::Info, &format!("{host} {i}"), &[]))
            .collect();
        store.apply(host, batch(seq, l), 0).unwrap();
    };
    put("a", 40, T0);
    put("b", 40, T0);
    for newest_first in [true, false] {
        let mut q = LogQuery {
            filter: LogFilter::default(),
            start_ns: 0,
            end_ns: T0 + 1_000,
            newest_first,
            limit: 7,
            after: None,
        };
        let mut seen = Vec::new();
        let mut pages = 0;
        loop {
            let snap = logs.snapshot(&q.filter, q.start_ns, q.end_ns);
            let page = query::page(&snap, &q);
            seen.extend(page.records.iter().map(|f| f.key()));
            pages += 1;
            if pages == 3 {
                // newer and older records arrive between pages (outside the range: the end)
                put("c", 10, T0 + 5_000);
            }
            match page.next {
                Some(k) => q.after = Some(k),
                None => break,
            }
        }
        let mut sorted = seen.clone();
        sorted.sort();
        if newest_first {
            sorted.reverse();
        }
        assert_eq!(seen, sorted, "in order");
        sorted.dedup();
        assert_eq!(sorted.len(), 80, "no repeat, no gap");
    }
}

#[test]
fn filters_and_counts_agree() {
    let dir = tempfile::tempdir().unwrap();
    let (logs, store) = open(dir.path(), small());
    let l = vec![
        rec(T0, LogLevel::Info, "GET /a 200", &[("trace_id", "t1")]),
        rec(
            T0 + NS,
            LogLevel::Warn,
            "GET /b slow",
            &[("trace_id", "t2")],
        ),
        rec(
            T0 + 2 * NS,
            LogLevel::Error,
            "POST /c failed: timeout",
            &[("trace_id", "t1"), ("service", "billing")],
        ),
    ];
    store.apply("web-1", batch(1, l), 0).unwrap();
    store
        .apply(
            "web-2",
            batch(1, vec![rec(T0 + 3 * NS, LogLevel::Error, "timeout", &[])]),
            0,
        )
        .unwrap();
    let find = |filter: LogFilter| -> Vec<String> {
        let q = LogQuery {
            filter,
            start_ns: T0,
            end_ns: T0 + 10 * NS,
            newest_first: false,
            limit: 100,
            after: None,
        };
        let snap = logs.snapshot(&q.filter, q.start_ns, q.end_ns);
        query::page(&snap, &q)
            .records
            .into_iter()
            .map(|f| f.record.message)
            .collect()
    };
    let trace = LogFilter {
        fields: vec![("trace_id".into(), "t1".into())],
        ..Default::default()
    };
    assert_eq!(find(trace), vec!["GET /a 200", "POST /c failed: timeout"]);
    let warn = LogFilter {
        min_level: Some(LogLevel::Warn),
        not_contains: vec![Literal::new("slow")],
        ..Default::default()
    };
    assert_eq!(find(warn), vec!["POST /c failed: timeout", "timeout"]);
    let service = LogFilter {
        fields: vec![("service".into(), "billing".into())],
        contains: vec![Literal::new("timeout")],
        ..Default::default()
    };
    assert_eq!(find(service), vec!["POST /c failed: timeout"]);
    assert_eq!(
        logs.label_values("host", 0, i64::MAX),
        vec!["web-1", "web-2"]
    );
    assert_eq!(logs.label_values("service", 0, i64::MAX), vec!["billing"]);

    let cq = CountQuery {
        filter: LogFilter::default(),
        start_ns: T0,
        end_ns: T0 + 4 * NS - 1,
        step_ns: 2 * NS,
    };
    let snap = logs.snapshot(&cq.filter, cq.start_ns, cq.end_ns);
    let c = query::counts(&snap, &cq);
    assert_eq!(c[&LogLevel::Info], vec![1, 0]);
    assert_eq!(c[&LogLevel::Warn], vec![1, 0]);
    assert_eq!(c[&LogLevel::Error], vec![0, 2]);
    let cq = CountQuery {
        filter: LogFilter {
            contains: vec![Literal::new("timeout")],
            ..Default::default()
        },
        ..cq
    };
    let snap = logs.snapshot(&cq.filter, cq.start_ns, cq.end_ns);
    assert_eq!(query::counts(&snap, &cq)[&LogLevel::Error], vec![0, 2]);
}

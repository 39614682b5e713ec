//! The time-series store end to end, through real QUIC links and the HTTP API, with the head
//! flushed into blocks every few seconds:
//!
//! - a day of backlog shipped after live data is queryable, in order, with nothing twice,
//!   also after a hard kill of the aggregator;
//! - kill -9 during ingest: after a restart every acknowledged sample is there.

mod support;

use fleetwatch_common::model::{
    now_ms, Batch, Label, Lane, MetricKind, Sample, Series, SeriesSamples,
};
use std::time::Duration;
use support::{assert_unique, Fleet};

const FLUSH_OFTEN: &str = "[store]\nflush_minutes = 0.05\nblock_hours = 1.0\n";

fn batch(name: &str, times: impl Iterator<Item = i64>) -> Batch {
    let samples: Vec<Sample> = times
        .map(|t| Sample {
            timestamp_ms: t,
            value: (t / 1000) as f64,
        })
        .collect();
    let mut b = Batch::new(Lane::Metrics, samples.last().map_or(0, |s| s.timestamp_ms));
    b.metrics.push(SeriesSamples {
        series: Series::new(name, [Label::new("job", "backfill")]),
        kind: MetricKind::Gauge,
        samples,
    });
    b
}

#[test]
fn a_day_of_backlog_after_live_data_reads_back_in_order() {
    let fleet = Fleet::new();
    fleet.add_aggregator_config(FLUSH_OFTEN);
    let agg = fleet.start_aggregator();
    let now = now_ms() / 60_000 * 60_000;
    let minute = 60_000;
    // live data for the last ten minutes first
    support::ship_in_order(
        &fleet,
        "backfill",
        vec![batch("bf_value", (0..10).map(|i| now - (9 - i) * minute))],
    );
    fleet.wait_for("the live data in a block", Duration::from_secs(30), || {
        fleet.own_metric("fleetwatch_store_blocks") >= 1.0
    });
    // then the day before it, oldest first, an hour per batch, as an agent replays a backlog
    let day_start = now - 24 * 60 * minute - 10 * minute;
    let backlog: Vec<Batch> = (0..24)
        .map(|h| {
            batch(
                "bf_value",
                (0..60).map(move |m| day_start + (h * 60 + m) * minute),
            )
        })
        .collect();
    support::ship_in_order(&fleet, "backfill", backlog);
    let expected: Vec<i64> = (0..24 * 60)
        .map(|i| day_start + i * minute)
        .chain((0..10).map(|i| now - (9 - i) * minute))
        .collect();
    let read = |fleet: &Fleet| {
        let mut times = Vec::new();
        for series in fleet.query(&format!("bf_value[2d] @ {}", now / 1000)) {
            for v in series["values"].as_array().unwrap() {
                times.push((v[0].as_f64().unwrap() * 1000.0).round() as i64);
            }
        }
        times
    };
    fleet.wait_for(
        "the backlog flushed into blocks",
        Duration::from_secs(30),
        || {
            fleet.own_metric("fleetwatch_store_samples") >= expected.len() as f64
                && fleet
                    .http_get("/metrics")
                    .unwrap()
                    .1
                    .contains("fleetwatch_store_blocks")
                && read(&fleet).len() == expected.len()
        },
    );
    let times = read(&fleet);
    assert_eq!(times, expected, "a day of backlog plus live data, in order");
    assert_unique(&times, "bf_value");
    // range queries over the day: at a 10-minute step from raw samples, at an hourly step
    // from the 5-minute rollups of the complete windows (a rollup point carries the time of its
    // bucket's last sample, so the very first step, at the first sample, may have none)
    for (step, at_least) in [(600, 146), (3600, 24)] {
        let (code, body) = fleet
            .http_get(&format!(
                "/api/v1/query_range?query=bf_value&start={}&end={}&step={step}",
                day_start / 1000,
                now / 1000
            ))
            .unwrap();
        assert_eq!(code, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let points = v["data"]["result"][0]["values"].as_array().unwrap();
        assert!(
            points.len() >= at_least,
            "step {step}: {} points",
            points.len()
        );
        let times: Vec<f64> = points.iter().map(|p| p[0].as_f64().unwrap()).collect();
        assert!(
            times.windows(2).all(|w| w[0] < w[1]),
            "step {step}: points in order"
        );
    }
    // and all of it survives a hard kill
    agg.kill_hard();
    let _agg = fleet.start_aggregator();
    assert_eq!(read(&fleet), expected, "after kill -9 and restart");
    assert_eq!(fleet.own_metric("fleetwatch_store_replaced_samples"), 0.0);
}

#[test]
fn every_acknowledged_sample_survives_kill_9_during_ingest_and_flushes() {
    let fleet = Fleet::new();
    fleet.add_aggregator_config(FLUSH_OFTEN);
    fleet.agent_config("crash-host", 0.2, "");
    let agg = fleet.start_aggregator();
    let agent = fleet.start_agent("crash-host");
    let count = |fleet: &Fleet| {
        fleet
            .sample_times("node_load1{host=\"crash-host\"}", "1h")
            .len()
    };
    fleet.wait_for("some samples and a flush", Duration::from_secs(60), || {
        count(&fleet) > 20 && fleet.own_metric("fleetwatch_store_blocks") >= 1.0
    });
    // the kill lands while the agent ships every 200 ms and the head flushes every 3 s
    std::thread::sleep(Duration::from_millis(1700));
    let before = fleet.sample_times("node_load1{host=\"crash-host\"}", "1h");
    agg.kill_hard();
    let agg = fleet.start_aggregator();
    let after = fleet.sample_times("node_load1{host=\"crash-host\"}", "1h");
    // a sample is visible only once its batch is in the fsynced log: all of them must be back
    let missing: Vec<&i64> = before
        .iter()
        .filter(|t| after.binary_search(t).is_err())
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} samples lost by kill -9: {missing:?}",
        missing.len(),
        before.len()
    );
    assert_unique(&after, "node_load1 after restart");
    let before = before.len();
    // and ingest goes on
    // (the agent notices the dead connection by its idle timeout, up to 30 s)
    fleet.wait_for(
        "more samples after the restart",
        Duration::from_secs(90),
        || count(&fleet) > before + 10,
    );
    agent.stop();
    agg.stop();
}

//! Codec throughput: encoding and decoding a realistic host batch (≈300 series).
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fleetwatch_common::codec::{self, FrameLimits};
use fleetwatch_common::model::{Batch, Label, Lane, MetricKind, Sample, Series, SeriesSamples};
use fleetwatch_common::protocol::Message;

fn host_batch() -> Batch {
    let mut b = Batch::new(Lane::Metrics, 1_700_000_000_000);
    b.seq = 42;
    for cpu in 0..16 {
        for mode in [
            "user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal",
        ] {
            b.metrics.push(SeriesSamples {
                series: Series::new(
                    "node_cpu_seconds_total",
                    [Label::new("cpu", cpu.to_string()), Label::new("mode", mode)],
                ),
                kind: MetricKind::Counter,
                samples: vec![Sample {
                    timestamp_ms: 1_700_000_000_000,
                    value: 12345.67 + cpu as f64,
                }],
            });
        }
    }
    for dev in 0..20 {
        for m in [
            "receive_bytes",
            "transmit_bytes",
            "receive_packets",
            "transmit_packets",
            "receive_errs",
            "transmit_errs",
            "receive_drop",
            "transmit_drop",
        ] {
            b.metrics.push(SeriesSamples {
                series: Series::new(
                    format!("node_network_{m}_total"),
                    [Label::new("device", format!("eth{dev}"))],
                ),
                kind: MetricKind::Counter,
                samples: vec![Sample {
                    timestamp_ms: 1_700_000_000_000,
                    value: 9.87e9,
                }],
            });
        }
    }
    b
}

fn bench(c: &mut Criterion) {
    let msg = Message::Batch(host_batch());
    let samples = host_batch().item_count() as u64;
    let frame = codec::encode(&msg).expect("encodes");
    let mut g = c.benchmark_group("codec");
    g.throughput(Throughput::Elements(samples));
    g.bench_function("encode_host_batch", |b| {
        b.iter(|| codec::encode(&msg).expect("encodes"))
    });
    g.bench_function("decode_host_batch", |b| {
        b.iter(|| codec::decode(&frame, &FrameLimits::default()).expect("decodes"))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

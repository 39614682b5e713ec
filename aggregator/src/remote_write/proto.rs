//! Prometheus' remote-write 1.0 messages (`prometheus.WriteRequest`), declared with prost so
//! no protoc is needed, and the snappy block encoding the protocol uses.

use crate::promql::labels_of;
use fleetwatch_common::model::SeriesSamples;

/// `prometheus.WriteRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WriteRequest {
    /// The series.
    #[prost(message, repeated, tag = "1")]
    pub timeseries: Vec<TimeSeries>,
}

/// `prometheus.TimeSeries`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TimeSeries {
    /// Labels, sorted by name, `__name__` included.
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<Label>,
    /// Samples in timestamp order.
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<Sample>,
}

/// `prometheus.Label`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Label {
    /// Name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Value.
    #[prost(string, tag = "2")]
    pub value: String,
}

/// `prometheus.Sample`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Sample {
    /// Value.
    #[prost(double, tag = "1")]
    pub value: f64,
    /// Milliseconds since the epoch.
    #[prost(int64, tag = "2")]
    pub timestamp: i64,
}

/// A write request for `series`, one time series per distinct label set, samples in order.
pub fn write_request(series: &[SeriesSamples]) -> WriteRequest {
    let mut by_labels: std::collections::BTreeMap<crate::promql::Labels, Vec<Sample>> =
        std::collections::BTreeMap::new();
    for ss in series {
        let samples = by_labels.entry(labels_of(&ss.series)).or_default();
        samples.extend(ss.samples.iter().map(|s| Sample {
            value: s.value,
            timestamp: s.timestamp_ms,
        }));
    }
    WriteRequest {
        timeseries: by_labels
            .into_iter()
            .map(|(labels, mut samples)| {
                samples.sort_by_key(|s| s.timestamp);
                TimeSeries {
                    labels: labels
                        .iter()
                        .map(|l| Label {
                            name: l.name.clone(),
                            value: l.value.clone(),
                        })
                        .collect(),
                    samples,
                }
            })
            .collect(),
    }
}

/// The protobuf encoding, snappy block-compressed, as the request body.
pub fn encode(req: &WriteRequest) -> Vec<u8> {
    let raw = prost::Message::encode_to_vec(req);
    snap::raw::Encoder::new()
        .compress_vec(&raw)
        .expect("snappy accepts any input under 4 GiB")
}

/// Decodes a request body (for tests and for receivers).
pub fn decode(body: &[u8]) -> Result<WriteRequest, String> {
    let raw = snap::raw::Decoder::new()
        .decompress_vec(body)
        .map_err(|e| format!("snappy: {e}"))?;
    <WriteRequest as prost::Message>::decode(raw.as_slice()).map_err(|e| format!("protobuf: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetwatch_common::model::{Label as L, MetricKind, Sample as S, Series};

    #[test]
    fn round_trips_with_sorted_labels_and_samples() {
        let ss = |t: i64| SeriesSamples {
            series: Series::new("m", [L::new("zone", "b"), L::new("host", "a")]),
            kind: MetricKind::Gauge,
            samples: vec![S {
                timestamp_ms: t,
                value: t as f64,
            }],
        };
        let req = write_request(&[ss(2), ss(1)]);
        let back = decode(&encode(&req)).unwrap();
        assert_eq!(back, req);
        assert_eq!(back.timeseries.len(), 1);
        let names: Vec<&str> = back.timeseries[0]
            .labels
            .iter()
            .map(|l| l.name.as_str())
            .collect();
        assert_eq!(names, ["__name__", "host", "zone"]);
        let times: Vec<i64> = back.timeseries[0]
            .samples
            .iter()
            .map(|s| s.timestamp)
            .collect();
        assert_eq!(times, [1, 2]);
    }
}

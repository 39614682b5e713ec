//! The wire codec: versioned, length-limited frames around bincode-encoded [`Message`]s,
//! optionally zstd-compressed.
//!
//! This is the only module that knows about bincode or zstd; replacing the encoding means
//! bumping [`FRAME_VERSION`] here and keeping a decoder for the old one.
//!
//! Frame layout (big-endian):
//!
//! ```text
//! 0      2        3       4            8                12
//! | "FW" | version | flags | payload len | decoded len | payload ...
//! ```
//!
//! `flags` bit 0 says the payload is zstd-compressed; `decoded len` is the payload's size after
//! decompression (equal to `payload len` when not compressed). Both lengths are checked against
//! [`FrameLimits`] before anything is allocated.

use crate::protocol::Message;
use serde::{de::DeserializeOwned, Serialize};
use thiserror::Error;

/// First two bytes of every frame.
pub const FRAME_MAGIC: [u8; 2] = *b"FW";
/// The frame format version this build writes and reads.
pub const FRAME_VERSION: u8 = 1;
/// Size of the fixed frame header in bytes.
pub const HEADER_LEN: usize = 12;
const FLAG_ZSTD: u8 = 0b0000_0001;
const KNOWN_FLAGS: u8 = FLAG_ZSTD;
/// Payloads smaller than this are not worth compressing.
const COMPRESS_MIN: usize = 512;
/// zstd level: fast, still a good ratio on label-heavy batches.
const ZSTD_LEVEL: i32 = 3;
/// Hard ceiling for any decoded payload, whatever the configured limit.
const BINCODE_LIMIT: usize = 256 * 1024 * 1024;

fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard()
        .with_big_endian()
        .with_limit::<BINCODE_LIMIT>()
}

/// Size limits applied when decoding frames from the network or disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameLimits {
    /// Largest payload accepted on the wire (compressed size).
    pub max_payload_bytes: u32,
    /// Largest payload accepted after decompression.
    pub max_decoded_bytes: u32,
}

impl Default for FrameLimits {
    fn default() -> Self {
        Self {
            max_payload_bytes: 16 * 1024 * 1024,
            max_decoded_bytes: 64 * 1024 * 1024,
        }
    }
}

/// Why a frame could not be encoded or decoded.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum CodecError {
    /// The first two bytes were not `FW`.
    #[error("bad frame magic {0:02x?}: not a fleetwatch frame")]
    BadMagic([u8; 2]),
    /// A frame version this build does not speak.
    #[error("unsupported frame version {0} (this build speaks {FRAME_VERSION})")]
    UnsupportedVersion(u8),
    /// Flag bits this build does not know.
    #[error("unknown frame flags {0:#010b}")]
    UnknownFlags(u8),
    /// The payload is larger than allowed.
    #[error("frame payload of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Size announced or produced.
        size: u64,
        /// The limit in force.
        limit: u64,
    },
    /// Fewer bytes than the header announces.
    #[error("truncated frame: need {need} bytes, have {have}")]
    Truncated {
        /// Bytes needed.
        need: usize,
        /// Bytes available.
        have: usize,
    },
    /// The compressed payload did not decompress to the announced size.
    #[error("bad compressed payload: {0}")]
    Decompress(String),
    /// The payload is not a valid message.
    #[error("bad message encoding: {0}")]
    Decode(String),
    /// The message could not be encoded.
    #[error("message encoding failed: {0}")]
    Encode(String),
    /// Bytes left over after the message.
    #[error("{0} trailing bytes after message")]
    Trailing(usize),
}

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Payload bytes that follow the header.
    pub payload_len: u32,
    /// Payload size after decompression.
    pub decoded_len: u32,
    /// Whether the payload is zstd-compressed.
    pub compressed: bool,
}

impl FrameHeader {
    /// Total frame size: header plus payload.
    pub fn frame_len(&self) -> usize {
        HEADER_LEN + self.payload_len as usize
    }
}

/// Parses and checks a frame header. Reads exactly [`HEADER_LEN`] bytes.
pub fn decode_header(bytes: &[u8], limits: &FrameLimits) -> Result<FrameHeader, CodecError> {
    if bytes.len() < HEADER_LEN {
        return Err(CodecError::Truncated {
            need: HEADER_LEN,
            have: bytes.len(),
        });
    }
    let magic = [bytes[0], bytes[1]];
    if magic != FRAME_MAGIC {
        return Err(CodecError::BadMagic(magic));
    }
    if bytes[2] != FRAME_VERSION {
        return Err(CodecError::UnsupportedVersion(bytes[2]));
    }
    let flags = bytes[3];
    if flags & !KNOWN_FLAGS != 0 {
        return Err(CodecError::UnknownFlags(flags));
    }
    let payload_len = u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    let decoded_len = u32::from_be_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    let compressed = flags & FLAG_ZSTD != 0;
    if payload_len > limits.max_payload_bytes {
        return Err(CodecError::TooLarge {
            size: payload_len.into(),
            limit: limits.max_payload_bytes.into(),
        });
    }
    if decoded_len > limits.max_decoded_bytes {
        return Err(CodecError::TooLarge {
            size: decoded_len.into(),
            limit: limits.max_decoded_bytes.into(),
        });
    }
    if !compressed && decoded_len != payload_len {
        return Err(CodecError::Decode(format!(
            "uncompressed frame announces {decoded_len} decoded bytes but carries {payload_len}"
        )));
    }
    Ok(FrameHeader {
        payload_len,
        decoded_len,
        compressed,
    })
}

/// Encodes a message into one frame, compressing it when that pays off.
pub fn encode(message: &Message) -> Result<Vec<u8>, CodecError> {
    encode_value(message)
}

/// Encodes any serde value into one frame: the same framing, versioning and compression as
/// wire messages, for records kept on disk (the aggregator's write-ahead log, say).
pub fn encode_value<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    let raw = bincode::serde::encode_to_vec(value, bincode_config())
        .map_err(|e| CodecError::Encode(e.to_string()))?;
    let decoded_len = u32::try_from(raw.len()).map_err(|_| CodecError::TooLarge {
        size: raw.len() as u64,
        limit: u32::MAX.into(),
    })?;
    let (flags, payload) = if raw.len() >= COMPRESS_MIN {
        let packed = zstd::bulk::compress(&raw, ZSTD_LEVEL)
            .map_err(|e| CodecError::Encode(format!("zstd: {e}")))?;
        if packed.len() < raw.len() {
            (FLAG_ZSTD, packed)
        } else {
            (0, raw)
        }
    } else {
        (0, raw)
    };
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&FRAME_MAGIC);
    out.push(FRAME_VERSION);
    out.push(flags);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(&decoded_len.to_be_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

/// Decodes the payload that follows `header`.
pub fn decode_payload(header: &FrameHeader, payload: &[u8]) -> Result<Message, CodecError> {
    decode_payload_value(header, payload)
}

/// Decodes the payload that follows `header` as any serde value.
pub fn decode_payload_value<T: DeserializeOwned>(
    header: &FrameHeader,
    payload: &[u8],
) -> Result<T, CodecError> {
    if payload.len() != header.payload_len as usize {
        return Err(CodecError::Truncated {
            need: header.payload_len as usize,
            have: payload.len(),
        });
    }
    let decompressed;
    let raw: &[u8] = if header.compressed {
        decompressed = zstd::bulk::decompress(payload, header.decoded_len as usize)
            .map_err(|e| CodecError::Decompress(e.to_string()))?;
        if decompressed.len() != header.decoded_len as usize {
            return Err(CodecError::Decompress(format!(
                "decompressed to {} bytes, header announced {}",
                decompressed.len(),
                header.decoded_len
            )));
        }
        &decompressed
    } else {
        payload
    };
    let (message, used) = bincode::serde::decode_from_slice::<T, _>(raw, bincode_config())
        .map_err(|e| CodecError::Decode(e.to_string()))?;
    if used != raw.len() {
        return Err(CodecError::Trailing(raw.len() - used));
    }
    Ok(message)
}

/// Decodes exactly one whole frame holding a message.
pub fn decode(frame: &[u8], limits: &FrameLimits) -> Result<Message, CodecError> {
    decode_value(frame, limits)
}

/// Decodes exactly one whole frame holding any serde value (see [`encode_value`]).
pub fn decode_value<T: DeserializeOwned>(
    frame: &[u8],
    limits: &FrameLimits,
) -> Result<T, CodecError> {
    let header = decode_header(frame, limits)?;
    let end = header.frame_len();
    if frame.len() < end {
        return Err(CodecError::Truncated {
            need: end,
            have: frame.len(),
        });
    }
    if frame.len() > end {
        return Err(CodecError::Trailing(frame.len() - end));
    }
    decode_payload_value(&header, &frame[HEADER_LEN..end])
}

/// Splits a byte stream into frames: feed bytes as they arrive, take messages out.
///
/// After an error the decoder is poisoned: a stream with one bad frame can not be resynchronised,
/// and the connection should be closed.
#[derive(Debug)]
pub struct FrameDecoder {
    limits: FrameLimits,
    buf: Vec<u8>,
    poisoned: bool,
}

impl FrameDecoder {
    /// A decoder enforcing `limits`.
    pub fn new(limits: FrameLimits) -> Self {
        Self {
            limits,
            buf: Vec::new(),
            poisoned: false,
        }
    }

    /// Appends received bytes.
    pub fn extend(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete message, `Ok(None)` if more bytes are needed.
    pub fn next_message(&mut self) -> Result<Option<Message>, CodecError> {
        if self.poisoned {
            return Err(CodecError::Decode(
                "decoder stopped after an earlier error".into(),
            ));
        }
        if self.buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let result = decode_header(&self.buf, &self.limits).and_then(|header| {
            let end = header.frame_len();
            if self.buf.len() < end {
                return Ok(None);
            }
            let message = decode_payload(&header, &self.buf[HEADER_LEN..end]);
            self.buf.drain(..end);
            message.map(Some)
        });
        if result.is_err() {
            self.poisoned = true;
            self.buf.clear();
        }
        result
    }

    /// Bytes held that do not yet form a whole frame.
    pub fn pending_bytes(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::*;
    use crate::protocol::{Ack, AckStatus};
    use proptest::prelude::*;

    fn arb_label() -> impl Strategy<Value = Label> {
        ("[a-z_]{1,12}", "\\PC{0,24}").prop_map(|(n, v)| Label::new(n, v))
    }

    fn arb_series_samples() -> impl Strategy<Value = SeriesSamples> {
        (
            "[a-z_:]{1,20}",
            prop::collection::vec(arb_label(), 0..6),
            prop::collection::vec((any::<i64>(), any::<f64>()), 0..20),
            prop_oneof![
                Just(MetricKind::Gauge),
                Just(MetricKind::Counter),
                Just(MetricKind::Untyped)
            ],
        )
            .prop_map(|(name, labels, samples, kind)| SeriesSamples {
                series: Series::new(name, labels),
                kind,
                samples: samples
                    .into_iter()
                    .map(|(timestamp_ms, value)| Sample {
                        timestamp_ms,
                        value,
                    })
                    .collect(),
            })
    }

    fn arb_log() -> impl Strategy<Value = LogRecord> {
        (
            any::<i64>(),
            "\\PC{0,16}",
            "\\PC{0,64}",
            prop::collection::vec(("[a-z]{1,8}", "\\PC{0,8}"), 0..4),
        )
            .prop_map(|(ts, source, message, fields)| LogRecord {
                timestamp_ns: ts,
                source,
                level: LogLevel::Warn,
                message,
                fields,
            })
    }

    fn arb_batch() -> impl Strategy<Value = Batch> {
        (
            any::<u64>(),
            any::<i64>(),
            prop::collection::vec(arb_series_samples(), 0..8),
            prop::collection::vec(arb_log(), 0..8),
        )
            .prop_map(|(seq, created_ms, metrics, logs)| Batch {
                seq,
                lane: Lane::Metrics,
                created_ms,
                metrics,
                logs,
                checks: vec![CheckResult {
                    name: "db".into(),
                    timestamp_ms: created_ms,
                    status: CheckStatus::Degraded,
                    duration_seconds: 0.25,
                    detail: "slow".into(),
                }],
            })
    }

    /// Compares with NaN == NaN, as bit patterns survive the codec.
    fn same_bits(a: &Message, b: &Message) -> bool {
        format!("{a:?}") == format!("{b:?}")
    }

    proptest! {
        #[test]
        fn batch_round_trips(batch in arb_batch()) {
            let msg = Message::Batch(batch);
            let frame = encode(&msg).unwrap();
            let back = decode(&frame, &FrameLimits::default()).unwrap();
            prop_assert!(same_bits(&msg, &back));
        }

        #[test]
        fn stream_decoder_reassembles_split_frames(
            batches in prop::collection::vec(arb_batch(), 1..4),
            chunk in 1usize..97,
        ) {
            let msgs: Vec<Message> = batches.into_iter().map(Message::Batch).collect();
            let mut bytes = Vec::new();
            for m in &msgs {
                bytes.extend(encode(m).unwrap());
            }
            let mut dec = FrameDecoder::new(FrameLimits::default());
            let mut out = Vec::new();
            for piece in bytes.chunks(chunk) {
                dec.extend(piece);
                while let Some(m) = dec.next_message().unwrap() {
                    out.push(m);
                }
            }
            prop_assert_eq!(out.len(), msgs.len());
            for (a, b) in msgs.iter().zip(&out) {
                prop_assert!(same_bits(a, b));
            }
            prop_assert_eq!(dec.pending_bytes(), 0);
        }

        #[test]
        fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode(&bytes, &FrameLimits::default());
            let mut dec = FrameDecoder::new(FrameLimits::default());
            dec.extend(&bytes);
            let _ = dec.next_message();
        }
    }

    #[test]
    fn large_batches_are_compressed() {
        let mut b = Batch::new(Lane::Metrics, 1);
        for i in 0..200 {
            b.metrics.push(SeriesSamples {
                series: Series::new(
                    "node_network_receive_bytes_total",
                    [Label::new("device", format!("eth{i}"))],
                ),
                kind: MetricKind::Counter,
                samples: vec![Sample {
                    timestamp_ms: 1_700_000_000_000,
                    value: i as f64,
                }],
            });
        }
        let frame = encode(&Message::Batch(b.clone())).unwrap();
        assert_eq!(frame[3] & FLAG_ZSTD, FLAG_ZSTD);
        let header = decode_header(&frame, &FrameLimits::default()).unwrap();
        assert!(header.payload_len < header.decoded_len / 2, "{header:?}");
        assert_eq!(
            decode(&frame, &FrameLimits::default()).unwrap(),
            Message::Batch(b)
        );
    }

    #[test]
    fn oversized_frame_is_refused_before_reading_payload() {
        let limits = FrameLimits {
            max_payload_bytes: 1024,
            max_decoded_bytes: 4096,
        };
        let mut header = Vec::from(FRAME_MAGIC);
        header.extend([FRAME_VERSION, 0]);
        header.extend(1_000_000u32.to_be_bytes());
        header.extend(1_000_000u32.to_be_bytes());
        assert_eq!(
            decode_header(&header, &limits),
            Err(CodecError::TooLarge {
                size: 1_000_000,
                limit: 1024
            })
        );
    }

    #[test]
    fn decompression_bomb_is_refused() {
        // 10 MB of zeros compresses to a few hundred bytes; announce a small decoded size.
        let raw = vec![0u8; 10_000_000];
        let packed = zstd::bulk::compress(&raw, 3).unwrap();
        let mut frame = Vec::from(FRAME_MAGIC);
        frame.extend([FRAME_VERSION, FLAG_ZSTD]);
        frame.extend((packed.len() as u32).to_be_bytes());
        frame.extend(1000u32.to_be_bytes());
        frame.extend(&packed);
        assert!(matches!(
            decode(&frame, &FrameLimits::default()),
            Err(CodecError::Decompress(_))
        ));
    }

    #[test]
    fn wrong_version_and_magic_are_named() {
        let mut frame = encode(&Message::Ack(Ack {
            seq: 1,
            status: AckStatus::Applied,
        }))
        .unwrap();
        frame[2] = 9;
        assert_eq!(
            decode(&frame, &FrameLimits::default()),
            Err(CodecError::UnsupportedVersion(9))
        );
        frame[0] = b'X';
        assert!(matches!(
            decode(&frame, &FrameLimits::default()),
            Err(CodecError::BadMagic(_))
        ));
    }

    #[test]
    fn poisoned_decoder_stays_closed() {
        let mut dec = FrameDecoder::new(FrameLimits::default());
        dec.extend(b"GARBAGE-GARBAGE");
        assert!(dec.next_message().is_err());
        dec.extend(
            &encode(&Message::Ack(Ack {
                seq: 1,
                status: AckStatus::Applied,
            }))
            .unwrap(),
        );
        assert!(dec.next_message().is_err());
    }
}

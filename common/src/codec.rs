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
///
/// The bincode output and the zstd context come from a small pool kept between frames (see
/// [`Scratch`]); the frame itself is the only allocation that leaves this function.
pub fn encode_value<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut scratch = ENCODERS.take();
    let result = scratch.encode(value);
    if result.is_ok() {
        ENCODERS.give(scratch);
    }
    result
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
    if !header.compressed {
        return decode_raw(payload);
    }
    let mut scratch = DECODERS.take();
    let result = scratch.decode(header, payload);
    if result.is_ok() {
        DECODERS.give(scratch);
    }
    result
}

fn decode_raw<T: DeserializeOwned>(raw: &[u8]) -> Result<T, CodecError> {
    let (message, used) = bincode::serde::decode_from_slice::<T, _>(raw, bincode_config())
        .map_err(|e| CodecError::Decode(e.to_string()))?;
    if used != raw.len() {
        return Err(CodecError::Trailing(raw.len() - used));
    }
    Ok(message)
}

/// Bytes of working buffer a pooled [`Scratch`] keeps between frames at most; a larger one (a
/// rare huge frame) is freed after use.
const RETAIN_MAX_BYTES: usize = 4 * 1024 * 1024;
/// Frames in a row that used under a quarter of a working buffer before it is shrunk to the
/// last frame's size (a burst of large frames does not pin its buffer forever).
const SHRINK_AFTER_SMALL_FRAMES: u32 = 64;
/// Idle [`Scratch`]es kept per direction; callers beyond that at the same moment get fresh ones.
const POOL_IDLE_MAX: usize = 2;

static ENCODERS: Pool<Scratch<zstd::bulk::Compressor<'static>>> = Pool::new();
static DECODERS: Pool<Scratch<zstd::bulk::Decompressor<'static>>> = Pool::new();

/// A working buffer and a zstd context, reused from frame to frame: making them afresh for
/// every frame cost the agent a third of its CPU in page faults once its allocator maps large
/// blocks on their own (`agent/src/memory.rs`): a log batch's ~1 MiB of bincode and zstd's
/// tables are new memory every time.
struct Scratch<Z> {
    /// bincode output (encoding) or the decompressed payload (decoding).
    buf: Vec<u8>,
    /// Made on first use: a context that never compresses costs nothing.
    zstd: Option<Z>,
    /// Frames in a row that used under a quarter of `buf`'s capacity.
    small_frames: u32,
}

impl<Z> Scratch<Z> {
    fn new() -> Self {
        Self {
            buf: Vec::new(),
            zstd: None,
            small_frames: 0,
        }
    }

    /// Keeps `buf`'s capacity for the next frame unless it is over [`RETAIN_MAX_BYTES`] or has
    /// been mostly unused for [`SHRINK_AFTER_SMALL_FRAMES`] frames; then empties it.
    fn recycle_buf(&mut self) {
        let (used, capacity) = (self.buf.len(), self.buf.capacity());
        self.buf.clear();
        if capacity > RETAIN_MAX_BYTES {
            self.buf = Vec::new();
            self.small_frames = 0;
        } else if used < capacity / 4 {
            self.small_frames += 1;
            if self.small_frames >= SHRINK_AFTER_SMALL_FRAMES {
                self.buf.shrink_to(used);
                self.small_frames = 0;
            }
        } else {
            self.small_frames = 0;
        }
    }
}

impl Scratch<zstd::bulk::Compressor<'static>> {
    fn encode<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<Vec<u8>, CodecError> {
        self.buf.clear();
        bincode::serde::encode_into_writer(value, AppendTo(&mut self.buf), bincode_config())
            .map_err(|e| CodecError::Encode(e.to_string()))?;
        let raw = &self.buf;
        let decoded_len = u32::try_from(raw.len()).map_err(|_| CodecError::TooLarge {
            size: raw.len() as u64,
            limit: u32::MAX.into(),
        })?;
        let mut frame;
        let mut flags = 0;
        if raw.len() >= COMPRESS_MIN {
            // Compressed straight into the frame, after its header; zstd touches only the
            // pages it writes of the bound's worth of room.
            frame = Vec::with_capacity(HEADER_LEN + zstd::zstd_safe::compress_bound(raw.len()));
            frame.resize(HEADER_LEN, 0);
            let compressor = match &mut self.zstd {
                Some(c) => c,
                None => self.zstd.insert(
                    zstd::bulk::Compressor::new(ZSTD_LEVEL)
                        .map_err(|e| CodecError::Encode(format!("zstd: {e}")))?,
                ),
            };
            let mut after_header = std::io::Cursor::new(&mut frame);
            after_header.set_position(HEADER_LEN as u64);
            compressor
                .compress_to_buffer(raw, &mut after_header)
                .map_err(|e| CodecError::Encode(format!("zstd: {e}")))?;
            if frame.len() - HEADER_LEN < raw.len() {
                flags = FLAG_ZSTD;
            } else {
                frame.truncate(HEADER_LEN);
                frame.extend_from_slice(raw);
            }
            frame.shrink_to_fit();
        } else {
            frame = Vec::with_capacity(HEADER_LEN + raw.len());
            frame.resize(HEADER_LEN, 0);
            frame.extend_from_slice(raw);
        }
        let payload_len = (frame.len() - HEADER_LEN) as u32;
        frame[..2].copy_from_slice(&FRAME_MAGIC);
        frame[2] = FRAME_VERSION;
        frame[3] = flags;
        frame[4..8].copy_from_slice(&payload_len.to_be_bytes());
        frame[8..12].copy_from_slice(&decoded_len.to_be_bytes());
        self.recycle_buf();
        Ok(frame)
    }
}

impl Scratch<zstd::bulk::Decompressor<'static>> {
    fn decode<T: DeserializeOwned>(
        &mut self,
        header: &FrameHeader,
        payload: &[u8],
    ) -> Result<T, CodecError> {
        let decompressor = match &mut self.zstd {
            Some(d) => d,
            None => self.zstd.insert(
                zstd::bulk::Decompressor::new()
                    .map_err(|e| CodecError::Decompress(e.to_string()))?,
            ),
        };
        let announced = header.decoded_len as usize;
        self.buf.clear();
        self.buf.reserve_exact(announced);
        // The room zstd gets is the announced size, or a kept buffer's capacity (at most
        // RETAIN_MAX_BYTES) if larger: a payload that inflates past the announced size fails
        // here or at the length check below, without allocating more.
        decompressor
            .decompress_to_buffer(payload, &mut self.buf)
            .map_err(|e| CodecError::Decompress(e.to_string()))?;
        if self.buf.len() != announced {
            return Err(CodecError::Decompress(format!(
                "decompressed to {} bytes, header announced {}",
                self.buf.len(),
                header.decoded_len
            )));
        }
        let value = decode_raw(&self.buf)?;
        self.recycle_buf();
        Ok(value)
    }
}

/// bincode's writer appending to a kept `Vec` (its own `VecWriter` starts a new one).
struct AppendTo<'a>(&'a mut Vec<u8>);

impl bincode::enc::write::Writer for AppendTo<'_> {
    fn write(&mut self, bytes: &[u8]) -> Result<(), bincode::error::EncodeError> {
        self.0.extend_from_slice(bytes);
        Ok(())
    }
}

/// Idle [`Scratch`]es shared by all threads, at most [`POOL_IDLE_MAX`]: a thread-local one
/// would be kept by every thread that ever encoded (tokio's blocking pool hands each task to
/// whichever of its threads is free), a pool only by as many as run at once.
struct Pool<S> {
    idle: std::sync::Mutex<Vec<S>>,
}

impl<Z> Pool<Scratch<Z>> {
    const fn new() -> Self {
        Self {
            idle: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// The most recently used idle scratch (its memory is the likeliest to be warm), or a new one.
    fn take(&self) -> Scratch<Z> {
        self.lock().pop().unwrap_or_else(Scratch::new)
    }

    /// Keeps `scratch` for the next caller unless enough are idle already. A scratch whose
    /// frame failed is not given back: its zstd context may be mid-frame.
    fn give(&self, scratch: Scratch<Z>) {
        let mut idle = self.lock();
        if idle.len() < POOL_IDLE_MAX {
            idle.push(scratch);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Scratch<Z>>> {
        // Nothing is left half-done under this lock: a panic elsewhere does not spoil the pool.
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }
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

    /// The encoder as it was before frames reused their buffers and zstd context (one fresh
    /// `Vec` from bincode and one fresh zstd context per frame): the reference the wire format
    /// is held to.
    fn reference_encode<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
        let raw = bincode::serde::encode_to_vec(value, bincode_config()).unwrap();
        let decoded_len = u32::try_from(raw.len()).unwrap();
        let (flags, payload) = if raw.len() >= COMPRESS_MIN {
            let packed = zstd::bulk::compress(&raw, ZSTD_LEVEL).unwrap();
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
        out
    }

    /// Deterministic bytes that zstd can not shrink (xorshift64).
    fn random_bytes(len: usize, mut state: u64) -> Vec<u8> {
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 32) as u8
            })
            .collect()
    }

    /// Random printable text (zstd shrinks it a little: 94 symbols in 8 bits).
    fn noise(len: usize, seed: u64) -> String {
        random_bytes(len, seed)
            .into_iter()
            .map(|b| char::from(b'!' + b % 94))
            .collect()
    }

    /// A log batch of `lines` lines of about `line_bytes`, as the agent's file source makes
    /// them (`noisy`: random text that does not compress).
    fn log_batch(seq: u64, lines: usize, line_bytes: usize, noisy: bool) -> Message {
        let mut b = Batch::new(Lane::Logs, 1_700_000_000_000 + seq as i64);
        b.seq = seq;
        for i in 0..lines {
            let message = if noisy {
                noise(line_bytes, seq * 1_000_003 + i as u64 + 1)
            } else {
                format!(
                    "2024-05-01T12:00:{:02}Z INFO request {i} served in {} ms {}",
                    i % 60,
                    i % 997,
                    "x".repeat(line_bytes.saturating_sub(60))
                )
            };
            b.logs.push(LogRecord {
                timestamp_ns: 1_700_000_000_000_000_000 + i as i64,
                source: "/var/log/app.log".into(),
                level: LogLevel::Info,
                message,
                fields: if i % 3 == 0 {
                    vec![("service".into(), format!("svc{}", i % 7))]
                } else {
                    Vec::new()
                },
            });
        }
        Message::Batch(b)
    }

    /// Frames of every shape, in an order that makes each reuse a buffer and a context left by
    /// a different one: tiny and uncompressed, just over the compression threshold, a host
    /// batch, ~1 MiB log batches, random text, one larger than the pool keeps (about
    /// 7 MiB), then small again.
    fn varied_messages() -> Vec<Message> {
        let ack = Message::Ack(Ack {
            seq: 7,
            status: AckStatus::Applied,
        });
        let mut host = Batch::new(Lane::Metrics, 1_700_000_000_000);
        for i in 0..300 {
            host.metrics.push(SeriesSamples {
                series: Series::new(
                    "node_cpu_seconds_total",
                    [
                        Label::new("cpu", (i / 8).to_string()),
                        Label::new("mode", ["user", "idle", "system"][i % 3]),
                    ],
                ),
                kind: MetricKind::Counter,
                samples: vec![Sample {
                    timestamp_ms: 1_700_000_000_000,
                    value: 1234.5 + i as f64,
                }],
            });
        }
        vec![
            ack.clone(),
            log_batch(1, 4, 120, false),
            log_batch(2, 3_500, 200, false),
            Message::Batch(host),
            log_batch(3, 2, 300, true),
            log_batch(4, 3_000, 300, true),
            ack.clone(),
            log_batch(5, 3_700, 200, false),
            log_batch(6, 30_000, 200, false),
            log_batch(7, 1, 10, false),
            log_batch(8, 3_500, 200, false),
            ack,
        ]
    }

    #[test]
    fn frames_match_the_reference_encoder_byte_for_byte() {
        let messages = varied_messages();
        // Twice over: the second round reuses what the first left in the pool.
        for round in 0..2 {
            for (i, m) in messages.iter().enumerate() {
                let frame = encode(m).unwrap();
                assert!(
                    frame == reference_encode(m),
                    "round {round}, message {i}: frame differs from the reference encoder"
                );
                let back = decode(&frame, &FrameLimits::default()).unwrap();
                assert!(same_bits(m, &back), "round {round}, message {i}");
            }
        }
        // Values other than messages (the aggregator's on-disk records) go through the same
        // path: random bytes zstd can not shrink (sent raw although over COMPRESS_MIN), text
        // it can.
        let mut flags_seen = Vec::new();
        for value in [random_bytes(300_000, 9), vec![b'a'; 100_000]] {
            let frame = encode_value(&value).unwrap();
            assert!(frame == reference_encode(&value));
            flags_seen.push(frame[3]);
            let back: Vec<u8> = decode_value(&frame, &FrameLimits::default()).unwrap();
            assert_eq!(back, value);
        }
        assert_eq!(flags_seen, [0, FLAG_ZSTD], "one raw, one compressed frame");
    }

    #[test]
    fn frames_match_the_reference_encoder_from_many_threads() {
        let messages = std::sync::Arc::new(varied_messages());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let messages = messages.clone();
                std::thread::spawn(move || {
                    for i in 0..messages.len() {
                        // Each thread walks the list from a different start.
                        let m = &messages[(i + t * 3) % messages.len()];
                        let frame = encode(m).unwrap();
                        assert!(frame == reference_encode(m), "thread {t}, message {i}");
                        assert!(same_bits(
                            m,
                            &decode(&frame, &FrameLimits::default()).unwrap()
                        ));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    }

    #[test]
    fn frame_header_bytes_are_unchanged() {
        // An uncompressed frame pinned byte for byte: magic, version 1, flags, payload length,
        // decoded length (big-endian), then bincode's big-endian varint encoding.
        let frame = encode(&Message::Ack(Ack {
            seq: 300,
            status: AckStatus::Applied,
        }))
        .unwrap();
        assert_eq!(
            frame,
            [b'F', b'W', 1, 0, 0, 0, 0, 5, 0, 0, 0, 5, 3, 251, 1, 44, 0]
        );
        // A compressed one: flag set, lengths those of the zstd frame and of the bincode bytes.
        let big = log_batch(2, 3_500, 200, false);
        let frame = encode(&big).unwrap();
        let raw = bincode::serde::encode_to_vec(&big, bincode_config()).unwrap();
        assert_eq!(&frame[..4], &[b'F', b'W', FRAME_VERSION, FLAG_ZSTD]);
        assert_eq!(
            u32::from_be_bytes(frame[4..8].try_into().unwrap()) as usize,
            frame.len() - HEADER_LEN
        );
        assert_eq!(
            u32::from_be_bytes(frame[8..12].try_into().unwrap()) as usize,
            raw.len()
        );
        assert_eq!(
            zstd::bulk::decompress(&frame[HEADER_LEN..], raw.len()).unwrap(),
            raw
        );
    }

    #[test]
    fn decompression_bomb_is_refused_after_a_large_frame() {
        // A large frame first leaves a kept decompression buffer of about 1 MiB behind.
        let big = log_batch(2, 3_500, 200, false);
        let frame = encode(&big).unwrap();
        assert!(same_bits(
            &big,
            &decode(&frame, &FrameLimits::default()).unwrap()
        ));
        for inflated in [10_000_000, 200_000] {
            // Announces 1,000 decoded bytes, inflates to more than the kept buffer holds, or
            // to less (it fits in the room but not in the announced size).
            let packed = zstd::bulk::compress(&vec![0u8; inflated], 3).unwrap();
            let mut bomb = Vec::from(FRAME_MAGIC);
            bomb.extend([FRAME_VERSION, FLAG_ZSTD]);
            bomb.extend((packed.len() as u32).to_be_bytes());
            bomb.extend(1000u32.to_be_bytes());
            bomb.extend(&packed);
            assert!(
                matches!(
                    decode(&bomb, &FrameLimits::default()),
                    Err(CodecError::Decompress(_))
                ),
                "{inflated} bytes announced as 1000"
            );
        }
        // And the pool still decodes good frames afterwards.
        assert!(same_bits(
            &big,
            &decode(&frame, &FrameLimits::default()).unwrap()
        ));
    }

    #[test]
    fn scratch_keeps_usual_frames_and_frees_huge_or_stale_ones() {
        let mut scratch = Scratch::<zstd::bulk::Compressor<'static>>::new();
        let usual = log_batch(1, 3_500, 200, false);
        scratch.encode(&usual).unwrap();
        let kept = scratch.buf.capacity();
        assert!(kept >= 700_000, "{kept}");
        // The next usual frame grows nothing.
        scratch.encode(&usual).unwrap();
        assert_eq!(scratch.buf.capacity(), kept);
        // A frame larger than RETAIN_MAX_BYTES is not kept.
        let huge = log_batch(2, 30_000, 200, false);
        assert_eq!(encode(&huge).unwrap(), scratch.encode(&huge).unwrap());
        assert_eq!(scratch.buf.capacity(), 0);
        // Kept again, then small frames only: shrunk to their size after a while.
        scratch.encode(&usual).unwrap();
        let small = log_batch(3, 10, 100, false);
        for _ in 0..SHRINK_AFTER_SMALL_FRAMES - 1 {
            scratch.encode(&small).unwrap();
        }
        assert!(scratch.buf.capacity() >= 700_000);
        scratch.encode(&small).unwrap();
        assert!(
            scratch.buf.capacity() < 10_000,
            "{}",
            scratch.buf.capacity()
        );
    }

    proptest! {
        #[test]
        fn batch_round_trips(batch in arb_batch()) {
            let msg = Message::Batch(batch);
            let frame = encode(&msg).unwrap();
            prop_assert!(frame == reference_encode(&msg), "frame differs from the reference encoder");
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

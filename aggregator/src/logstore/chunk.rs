//! Compressed chunks: the records of one stream, column by column, zstd-compressed through the
//! shared codec. Messages are stored back to back in the last column, so a substring search
//! runs over one contiguous buffer per chunk (as grep does over a file) and maps each hit back
//! to its record.
//!
//! Raw layout before compression (varints are LEB128, `zz` is zigzag):
//!
//! ```text
//! count | len(timestamps) len(seqs) len(idx) len(fields) len(message lengths)
//! timestamps: zz delta from the previous (the first from 0)
//! seqs:       batch sequence numbers
//! idx:        position of the record in its batch
//! fields:     per record: n, then n × (key len, key, value len, value)
//! msg lens:   per record
//! messages:   every message, back to back (the rest of the chunk)
//! ```

use fleetwatch_common::codec::{self, FrameLimits};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Largest decoded chunk accepted when reading (records are bounded far below it).
const MAX_DECODED: u32 = 256 * 1024 * 1024;

/// One stored log record; the stream's labels (host, source, service, level) are not repeated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    /// Nanoseconds since the Unix epoch.
    pub timestamp_ns: i64,
    /// Sequence number of the agent batch it came in.
    pub seq: u64,
    /// Its position in that batch.
    pub idx: u32,
    /// The message.
    pub message: String,
    /// Structured fields (the promoted `service` field is a stream label instead).
    pub fields: Vec<(String, String)>,
}

impl StoredRecord {
    /// Bytes it takes before compression (roughly): what the buffer limit counts.
    pub fn raw_len(&self) -> usize {
        24 + self.message.len()
            + self
                .fields
                .iter()
                .map(|(k, v)| k.len() + v.len() + 2)
                .sum::<usize>()
    }
}

/// A chunk that can not be read back.
#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    /// The frame or its compression is damaged.
    #[error("chunk frame: {0}")]
    Frame(#[from] codec::CodecError),
    /// The columns do not add up.
    #[error("chunk is malformed: {0}")]
    Malformed(&'static str),
}

/// Raw bytes serialized as one byte string (not a sequence of numbers).
struct Bytes(Vec<u8>);

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Bytes;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Bytes, E> {
                Ok(Bytes(v.to_vec()))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
                Ok(Bytes(v))
            }
        }
        d.deserialize_byte_buf(V)
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_varint(buf: &[u8], pos: &mut usize) -> Result<u64, ChunkError> {
    let mut v = 0u64;
    let mut shift = 0;
    loop {
        let b = *buf
            .get(*pos)
            .ok_or(ChunkError::Malformed("varint past the end"))?;
        *pos += 1;
        if shift >= 64 {
            return Err(ChunkError::Malformed("varint too long"));
        }
        v |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Ok(v);
        }
        shift += 7;
    }
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// Encodes records (in any order; they are stored as given) into a compressed chunk frame.
pub fn encode(records: &[&StoredRecord]) -> Result<Vec<u8>, ChunkError> {
    let mut ts = Vec::with_capacity(records.len() * 3);
    let mut seqs = Vec::with_capacity(records.len() * 2);
    let mut idx = Vec::with_capacity(records.len() * 2);
    let mut fields = Vec::new();
    let mut lens = Vec::with_capacity(records.len() * 2);
    let mut messages = Vec::with_capacity(records.iter().map(|r| r.message.len()).sum());
    let mut prev = 0i64;
    for r in records {
        put_varint(&mut ts, zigzag(r.timestamp_ns.wrapping_sub(prev)));
        prev = r.timestamp_ns;
        put_varint(&mut seqs, r.seq);
        put_varint(&mut idx, u64::from(r.idx));
        put_varint(&mut fields, r.fields.len() as u64);
        for (k, v) in &r.fields {
            put_varint(&mut fields, k.len() as u64);
            fields.extend_from_slice(k.as_bytes());
            put_varint(&mut fields, v.len() as u64);
            fields.extend_from_slice(v.as_bytes());
        }
        put_varint(&mut lens, r.message.len() as u64);
        messages.extend_from_slice(r.message.as_bytes());
    }
    let mut raw = Vec::with_capacity(
        32 + ts.len() + seqs.len() + idx.len() + fields.len() + lens.len() + messages.len(),
    );
    put_varint(&mut raw, records.len() as u64);
    for col in [&ts, &seqs, &idx, &fields, &lens] {
        put_varint(&mut raw, col.len() as u64);
    }
    for col in [ts, seqs, idx, fields, lens, messages] {
        raw.extend_from_slice(&col);
    }
    Ok(codec::encode_value(&Bytes(raw))?)
}

/// A decoded chunk: timestamps, sequence numbers and message offsets ready, fields and
/// messages read on demand.
#[derive(Debug)]
pub struct ChunkView {
    raw: Vec<u8>,
    /// Timestamps (ns), one per record.
    pub timestamps: Vec<i64>,
    /// Batch sequence numbers.
    pub seqs: Vec<u64>,
    /// Positions in their batches.
    pub idx: Vec<u32>,
    /// `fields` column: byte range in `raw`.
    fields: (usize, usize),
    /// Start of each message in `messages()`, plus its end.
    offsets: Vec<usize>,
    /// Where the messages start in `raw`.
    messages_at: usize,
}

impl ChunkView {
    /// Decodes a chunk frame written by [`encode`].
    pub fn decode(frame: &[u8]) -> Result<Self, ChunkError> {
        let Bytes(raw) = codec::decode_value(
            frame,
            &FrameLimits {
                max_payload_bytes: MAX_DECODED,
                max_decoded_bytes: MAX_DECODED,
            },
        )?;
        let mut pos = 0;
        let count = get_varint(&raw, &mut pos)? as usize;
        let mut lens = [0usize; 5];
        for l in &mut lens {
            *l = get_varint(&raw, &mut pos)? as usize;
        }
        let total: usize = lens
            .iter()
            .try_fold(0usize, |a, &l| a.checked_add(l))
            .ok_or(ChunkError::Malformed("column lengths overflow"))?;
        if pos + total > raw.len() || count > raw.len() {
            return Err(ChunkError::Malformed("columns longer than the chunk"));
        }
        let mut starts = [0usize; 6];
        starts[0] = pos;
        for i in 0..5 {
            starts[i + 1] = starts[i] + lens[i];
        }
        let col = |i: usize| &raw[starts[i]..starts[i] + lens[i]];
        let mut timestamps = Vec::with_capacity(count);
        let (mut p, mut prev) = (0, 0i64);
        for _ in 0..count {
            prev = prev.wrapping_add(unzigzag(get_varint(col(0), &mut p)?));
            timestamps.push(prev);
        }
        let mut seqs = Vec::with_capacity(count);
        let mut p = 0;
        for _ in 0..count {
            seqs.push(get_varint(col(1), &mut p)?);
        }
        let mut idx = Vec::with_capacity(count);
        let mut p = 0;
        for _ in 0..count {
            idx.push(
                u32::try_from(get_varint(col(2), &mut p)?)
                    .map_err(|_| ChunkError::Malformed("position over u32"))?,
            );
        }
        let mut offsets = Vec::with_capacity(count + 1);
        let (mut p, mut at) = (0, 0usize);
        offsets.push(0);
        for _ in 0..count {
            at = at
                .checked_add(get_varint(col(4), &mut p)? as usize)
                .ok_or(ChunkError::Malformed("message lengths overflow"))?;
            offsets.push(at);
        }
        let messages_at = starts[5];
        if messages_at + at != raw.len() {
            return Err(ChunkError::Malformed(
                "message lengths do not match the messages",
            ));
        }
        Ok(Self {
            fields: (starts[3], starts[3] + lens[3]),
            raw,
            timestamps,
            seqs,
            idx,
            offsets,
            messages_at,
        })
    }

    /// Records in the chunk.
    pub fn len(&self) -> usize {
        self.timestamps.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.timestamps.is_empty()
    }

    /// Every message, back to back.
    pub fn messages(&self) -> &[u8] {
        &self.raw[self.messages_at..]
    }

    /// Where each message starts in [`Self::messages`], plus the end of the last.
    pub fn offsets(&self) -> &[usize] {
        &self.offsets
    }

    /// Record `i`'s message.
    pub fn message(&self, i: usize) -> &[u8] {
        &self.messages()[self.offsets[i]..self.offsets[i + 1]]
    }

    /// Where each record's fields start in the fields column (one pass over it).
    pub fn field_offsets(&self) -> Result<Vec<usize>, ChunkError> {
        let col = &self.raw[self.fields.0..self.fields.1];
        let mut out = Vec::with_capacity(self.len() + 1);
        let mut p = 0;
        for _ in 0..self.len() {
            out.push(p);
            let n = get_varint(col, &mut p)?;
            for _ in 0..n * 2 {
                let l = get_varint(col, &mut p)? as usize;
                p = p
                    .checked_add(l)
                    .filter(|&e| e <= col.len())
                    .ok_or(ChunkError::Malformed("field past the end"))?;
            }
        }
        out.push(p);
        Ok(out)
    }

    /// Record `i`'s fields, given [`Self::field_offsets`]; bytes that are not UTF-8 (a damaged
    /// chunk) are replaced.
    pub fn fields(&self, offsets: &[usize], i: usize) -> Vec<(String, String)> {
        let col = &self.raw[self.fields.0..self.fields.1];
        let mut p = offsets[i];
        let mut out = Vec::new();
        let text = |p: &mut usize| -> Option<String> {
            let l = get_varint(col, p).ok()? as usize;
            let end = p.checked_add(l)?;
            let s = String::from_utf8_lossy(col.get(*p..end)?).into_owned();
            *p = end;
            Some(s)
        };
        let n = get_varint(col, &mut p).unwrap_or(0);
        for _ in 0..n {
            match (text(&mut p), text(&mut p)) {
                (Some(k), Some(v)) => out.push((k, v)),
                _ => break,
            }
        }
        out
    }

    /// Record `i` in full.
    pub fn record(&self, field_offsets: &[usize], i: usize) -> StoredRecord {
        StoredRecord {
            timestamp_ns: self.timestamps[i],
            seq: self.seqs[i],
            idx: self.idx[i],
            message: String::from_utf8_lossy(self.message(i)).into_owned(),
            fields: self.fields(field_offsets, i),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn record() -> impl Strategy<Value = StoredRecord> {
        (
            any::<i64>(),
            any::<u64>(),
            any::<u32>(),
            ".{0,40}",
            proptest::collection::vec((".{0,8}", ".{0,12}"), 0..4),
        )
            .prop_map(|(timestamp_ns, seq, idx, message, fields)| StoredRecord {
                timestamp_ns,
                seq,
                idx,
                message,
                fields,
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        #[test]
        fn chunks_read_back_what_was_written(records in proptest::collection::vec(record(), 0..60)) {
            let frame = encode(&records.iter().collect::<Vec<_>>()).unwrap();
            let view = ChunkView::decode(&frame).unwrap();
            let offsets = view.field_offsets().unwrap();
            let back: Vec<StoredRecord> = (0..view.len()).map(|i| view.record(&offsets, i)).collect();
            prop_assert_eq!(back, records);
        }

        #[test]
        fn damaged_chunks_are_refused_or_read_without_panicking(
            records in proptest::collection::vec(record(), 1..20),
            flip in any::<prop::sample::Index>(),
        ) {
            let mut frame = encode(&records.iter().collect::<Vec<_>>()).unwrap();
            let at = flip.index(frame.len());
            frame[at] ^= 0x5a;
            if let Ok(view) = ChunkView::decode(&frame) {
                if let Ok(offsets) = view.field_offsets() {
                    for i in 0..view.len() {
                        let _ = view.record(&offsets, i);
                    }
                }
            }
        }
    }

    #[test]
    fn a_thousand_similar_lines_compress_well() {
        let records: Vec<StoredRecord> = (0..1000)
            .map(|i| StoredRecord {
                timestamp_ns: 1_700_000_000_000_000_000 + i * 1_000_000,
                seq: 7,
                idx: i as u32,
                message: format!("GET /api/orders/{i} 200 in {} ms user=u{}", i % 97, i % 13),
                fields: vec![("trace_id".into(), format!("{i:032x}"))],
            })
            .collect();
        let raw: usize = records.iter().map(StoredRecord::raw_len).sum();
        let frame = encode(&records.iter().collect::<Vec<_>>()).unwrap();
        assert!(frame.len() * 4 < raw, "{} of {raw}", frame.len());
        let view = ChunkView::decode(&frame).unwrap();
        assert_eq!(view.message(999), records[999].message.as_bytes());
    }
}

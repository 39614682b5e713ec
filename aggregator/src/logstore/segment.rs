//! Segment files: the buffered records of every stream, sorted and cut into compressed chunks,
//! written once to a temporary file, fsynced and renamed into place (a segment is there whole
//! or not at all). A footer lists each chunk (stream, time range, position, checksum) and the
//! batches the segment holds, so that a restart neither loses nor repeats them.
//!
//! ```text
//! chunk frame … chunk frame | footer frame | footer len u32 LE | crc32(footer) u32 LE | "FWLS"
//! ```

use super::chunk::{self, StoredRecord};
use super::index::{ChunkRef, Pending, Segment, StreamKey, Streams};
use fleetwatch_common::codec::{self, FrameLimits};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const MAGIC: &[u8; 4] = b"FWLS";
const TRAILER: usize = 12;
/// Records of one stream go into chunks of about this many bytes before compression.
pub const CHUNK_RAW_BYTES: usize = 1024 * 1024;

/// A segment file that can not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    /// A file system operation failed.
    #[error("log segment {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a whole segment.
    #[error("log segment {path} is damaged: {what}")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SegmentError + '_ {
    move |source| SegmentError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn damaged(path: &Path, what: impl Into<String>) -> SegmentError {
    SegmentError::Damaged {
        path: path.to_path_buf(),
        what: what.into(),
    }
}

/// One chunk as the footer lists it.
#[derive(Debug, Serialize, Deserialize)]
struct FooterChunk {
    stream: StreamKey,
    min_ts: i64,
    max_ts: i64,
    count: u32,
    offset: u64,
    len: u32,
    crc: u32,
}

/// The footer.
#[derive(Debug, Serialize, Deserialize)]
struct Footer {
    chunks: Vec<FooterChunk>,
    /// Host → sequence numbers of the batches whose records are in this segment.
    batches: Vec<(String, Vec<u64>)>,
}

/// A segment read back: its index entry and the batches it holds.
pub struct Opened {
    /// Index entry.
    pub segment: Segment,
    /// (host, sequence number) of its batches.
    pub batches: Vec<(String, u64)>,
}

/// The file name of segment `id`.
pub fn path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.seg"))
}

/// Sorts `pending` per stream by (time, batch, position), writes it as segment `id` in `dir`
/// (temporary file, fsync, rename, directory fsync) and returns its index entry.
pub fn write(
    dir: &Path,
    id: u64,
    pending: &Pending,
    keys: &HashMap<u32, Arc<StreamKey>>,
) -> Result<Segment, SegmentError> {
    let final_path = path(dir, id);
    let tmp = final_path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, &mut file);
    let mut chunks = Vec::new();
    let mut refs = Vec::new();
    let mut offset = 0u64;
    let mut ids: Vec<&u32> = pending.streams.keys().collect();
    ids.sort_unstable();
    for &sid in ids {
        let mut recs: Vec<&StoredRecord> = pending.streams[&sid].iter().collect();
        recs.sort_by_key(|r| (r.timestamp_ns, r.seq, r.idx));
        let mut start = 0;
        while start < recs.len() {
            let mut end = start;
            let mut raw = 0;
            while end < recs.len() && (end == start || raw < CHUNK_RAW_BYTES) {
                raw += recs[end].raw_len();
                end += 1;
            }
            let part = &recs[start..end];
            let frame = chunk::encode(part).map_err(|e| damaged(&tmp, e.to_string()))?;
            out.write_all(&frame).map_err(io(&tmp))?;
            let c = ChunkRef {
                stream: sid,
                min_ts: part[0].timestamp_ns,
                max_ts: part[part.len() - 1].timestamp_ns,
                count: part.len() as u32,
                offset,
                len: frame.len() as u32,
                crc: crc32fast::hash(&frame),
            };
            chunks.push(FooterChunk {
                stream: keys
                    .get(&sid)
                    .map(|k| (**k).clone())
                    .ok_or_else(|| damaged(&tmp, format!("stream {sid} has no labels")))?,
                min_ts: c.min_ts,
                max_ts: c.max_ts,
                count: c.count,
                offset: c.offset,
                len: c.len,
                crc: c.crc,
            });
            refs.push(c);
            offset += frame.len() as u64;
            start = end;
        }
    }
    let mut batches: std::collections::BTreeMap<&str, Vec<u64>> = Default::default();
    for (host, seq) in &pending.batches {
        batches.entry(host).or_default().push(*seq);
    }
    let footer = Footer {
        chunks,
        batches: batches
            .into_iter()
            .map(|(h, s)| (h.to_string(), s))
            .collect(),
    };
    let frame = codec::encode_value(&footer).map_err(|e| damaged(&tmp, e.to_string()))?;
    out.write_all(&frame).map_err(io(&tmp))?;
    out.write_all(&(frame.len() as u32).to_le_bytes())
        .map_err(io(&tmp))?;
    out.write_all(&crc32fast::hash(&frame).to_le_bytes())
        .map_err(io(&tmp))?;
    out.write_all(MAGIC).map_err(io(&tmp))?;
    out.flush().map_err(io(&tmp))?;
    drop(out);
    file.sync_all().map_err(io(&tmp))?;
    let bytes = offset + frame.len() as u64 + TRAILER as u64;
    std::fs::rename(&tmp, &final_path).map_err(io(&final_path))?;
    sync_dir(dir)?;
    Ok(Segment {
        id,
        path: final_path,
        bytes,
        min_ts: refs.iter().map(|c| c.min_ts).min().unwrap_or(0),
        max_ts: refs.iter().map(|c| c.max_ts).max().unwrap_or(0),
        chunks: refs,
        epoch: pending.epoch,
    })
}

/// fsyncs a directory (after a file in it was created, renamed or removed).
pub fn sync_dir(dir: &Path) -> Result<(), SegmentError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))
}

/// Reads segment `id`'s footer, its streams interned in `streams`.
pub fn open(dir: &Path, id: u64, streams: &mut Streams) -> Result<Opened, SegmentError> {
    let p = path(dir, id);
    let file = std::fs::File::open(&p).map_err(io(&p))?;
    let bytes = file.metadata().map_err(io(&p))?.len();
    if bytes < TRAILER as u64 {
        return Err(damaged(&p, "shorter than its trailer"));
    }
    let mut trailer = [0u8; TRAILER];
    file.read_exact_at(&mut trailer, bytes - TRAILER as u64)
        .map_err(io(&p))?;
    if &trailer[8..12] != MAGIC {
        return Err(damaged(&p, "no segment trailer"));
    }
    let len = u32::from_le_bytes([trailer[0], trailer[1], trailer[2], trailer[3]]) as u64;
    let crc = u32::from_le_bytes([trailer[4], trailer[5], trailer[6], trailer[7]]);
    if len + TRAILER as u64 > bytes {
        return Err(damaged(&p, "footer longer than the file"));
    }
    let mut frame = vec![0u8; len as usize];
    file.read_exact_at(&mut frame, bytes - TRAILER as u64 - len)
        .map_err(io(&p))?;
    if crc32fast::hash(&frame) != crc {
        return Err(damaged(&p, "footer checksum mismatch"));
    }
    let footer: Footer = codec::decode_value(
        &frame,
        &FrameLimits {
            max_payload_bytes: u32::MAX,
            max_decoded_bytes: u32::MAX,
        },
    )
    .map_err(|e| damaged(&p, format!("footer: {e}")))?;
    let data_end = bytes - TRAILER as u64 - len;
    let mut chunks = Vec::with_capacity(footer.chunks.len());
    for c in footer.chunks {
        if c.offset + u64::from(c.len) > data_end || c.count == 0 {
            return Err(damaged(&p, "a chunk lies outside the data"));
        }
        chunks.push(ChunkRef {
            stream: streams.intern(c.stream),
            min_ts: c.min_ts,
            max_ts: c.max_ts,
            count: c.count,
            offset: c.offset,
            len: c.len,
            crc: c.crc,
        });
    }
    Ok(Opened {
        segment: Segment {
            id,
            path: p,
            bytes,
            min_ts: chunks.iter().map(|c| c.min_ts).min().unwrap_or(0),
            max_ts: chunks.iter().map(|c| c.max_ts).max().unwrap_or(0),
            chunks,
            epoch: 0,
        },
        batches: footer
            .batches
            .into_iter()
            .flat_map(|(h, seqs)| seqs.into_iter().map(move |s| (h.clone(), s)))
            .collect(),
    })
}

/// Reads and checks one chunk's frame from an open segment file.
pub fn read_chunk(
    file: &std::fs::File,
    path: &Path,
    c: &ChunkRef,
) -> Result<Vec<u8>, SegmentError> {
    let mut frame = vec![0u8; c.len as usize];
    file.read_exact_at(&mut frame, c.offset).map_err(io(path))?;
    if crc32fast::hash(&frame) != c.crc {
        return Err(damaged(
            path,
            format!("chunk at {} fails its checksum", c.offset),
        ));
    }
    Ok(frame)
}

/// Segment ids in `dir`, ascending; leftover temporary files are removed.
pub fn list(dir: &Path) -> Result<Vec<u64>, SegmentError> {
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        let p = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if let Some(stem) = name.strip_suffix(".seg") {
            if let Ok(id) = stem.parse() {
                ids.push(id);
            }
        } else if name.ends_with(".tmp") {
            std::fs::remove_file(&p).map_err(io(&p))?;
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetwatch_common::model::LogLevel;

    #[test]
    fn a_written_segment_opens_with_its_chunks_and_batches() {
        let dir = tempfile::tempdir().unwrap();
        let mut streams = Streams::default();
        let sid = streams.intern(StreamKey {
            host: "web-1".into(),
            source: "app".into(),
            service: "api".into(),
            level: LogLevel::Error,
        });
        let mut pending = Pending::default();
        // out of order on purpose: a segment's chunks are sorted
        for (i, ts) in [30i64, 10, 20].into_iter().enumerate() {
            pending.streams.entry(sid).or_default().push(StoredRecord {
                timestamp_ns: ts,
                seq: 5,
                idx: i as u32,
                message: format!("m{ts}"),
                fields: vec![],
            });
        }
        pending.batches.push(("web-1".into(), 5));
        let keys = HashMap::from([(sid, streams.key(sid).clone())]);
        let seg = write(dir.path(), 3, &pending, &keys).unwrap();
        assert_eq!((seg.min_ts, seg.max_ts), (10, 30));
        let mut fresh = Streams::default();
        let opened = open(dir.path(), 3, &mut fresh).unwrap();
        assert_eq!(opened.batches, vec![("web-1".to_string(), 5)]);
        assert_eq!(opened.segment.bytes, seg.bytes);
        let c = &opened.segment.chunks[0];
        assert_eq!(fresh.key(c.stream).service, "api");
        let file = std::fs::File::open(&opened.segment.path).unwrap();
        let view =
            chunk::ChunkView::decode(&read_chunk(&file, &opened.segment.path, c).unwrap()).unwrap();
        assert_eq!(view.timestamps, vec![10, 20, 30]);
        assert_eq!(list(dir.path()).unwrap(), vec![3]);
    }

    #[test]
    fn a_truncated_segment_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let p = path(dir.path(), 1);
        std::fs::write(&p, b"not a segment at all").unwrap();
        let err = open(dir.path(), 1, &mut Streams::default()).err().unwrap();
        assert!(err.to_string().contains("damaged"), "{err}");
        std::fs::write(dir.path().join("00000000000000000002.tmp"), b"x").unwrap();
        assert_eq!(list(dir.path()).unwrap(), vec![1]);
        assert!(!dir.path().join("00000000000000000002.tmp").exists());
    }
}

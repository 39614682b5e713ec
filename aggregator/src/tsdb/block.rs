//! Persisted blocks: immutable directories holding the samples of one time window.
//!
//! ```text
//! blocks/SEQ-MINT-MAXT/
//!   chunks      chunks back to back: each a tag byte, then packed scaled integers or Gorilla
//!               samples (`chunk::encode_block_chunk`); a packed chunk takes its first and last
//!               timestamps from the index; blocks of format 0 hold bare Gorilla
//!   index       the series, their types and chunk references (fleetwatch codec frame)
//!   meta.json   window, resolution, counts
//! ```
//!
//! A block is written to a `.tmp-` directory, fsynced and renamed into place, so a crash leaves
//! either the whole block or a temporary directory that the next open removes. Blocks of the
//! same window may overlap (a backlog flushed after live data); a read merges them, the higher
//! sequence number winning on equal timestamps, and compaction later merges them into one.

use super::chunk::{decode_block_chunk, encode_block_chunk, ChunkIter};
use super::head::matches;
use fleetwatch_common::codec::{self, FrameLimits};
use fleetwatch_common::model::{MetricKind, Sample, Series};
use promql_parser::label::Matcher;
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// What a block holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BlockMeta {
    /// Order of creation: on equal timestamps the higher wins.
    pub seq: u64,
    /// Window start (inclusive), ms.
    pub mint: i64,
    /// Window end (exclusive), ms.
    pub maxt: i64,
    /// 0 for raw samples; otherwise the rollup bucket width in ms.
    pub resolution_ms: i64,
    /// Series in the block.
    pub series: usize,
    /// Samples in the block.
    pub samples: u64,
    /// Bytes of the block's files.
    pub bytes: u64,
    /// For a rollup block: the sequence number of the raw block it was computed from.
    #[serde(default)]
    pub source_seq: u64,
    /// How chunks are encoded: 0, bare Gorilla (blocks written before format 1); 1, a tag byte
    /// per chunk (Gorilla, scaled integers in buckets, or packed scaled integers; see
    /// [`super::chunk::decode_block_chunk`]).
    #[serde(default)]
    pub format: u32,
}

/// Most samples in one chunk of a block: blocks are read whole windows at a time, and a
/// chunk's first sample costs a dozen bytes, so they are larger than the head's.
const BLOCK_CHUNK_SAMPLES: usize = 1024;
const _: () = assert!(BLOCK_CHUNK_SAMPLES as u32 <= super::packed::MAX_SAMPLES);

/// The format new blocks are written in.
pub const FORMAT: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ChunkRef {
    mint: i64,
    maxt: i64,
    offset: u64,
    len: u32,
    count: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct BlockSeries {
    series: Series,
    kind: MetricKind,
    chunks: Vec<ChunkRef>,
}

#[derive(Debug, Serialize, Deserialize)]
struct BlockIndex {
    series: Vec<BlockSeries>,
}

/// An open block.
pub struct Block {
    /// Its description.
    pub meta: BlockMeta,
    /// Its directory.
    pub dir: PathBuf,
    index: BlockIndex,
    postings: super::Postings,
    chunks: File,
}

fn io(path: &Path, e: std::io::Error) -> String {
    format!("{}: {e}", path.display())
}

fn sync_dir(dir: &Path) -> Result<(), String> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io(dir, e))
}

/// The directory name of a block.
pub fn dir_name(seq: u64, mint: i64, maxt: i64) -> String {
    format!("{seq:020}-{mint}-{maxt}")
}

/// Writes a block of `series` (each with its samples sorted, limited to the window) into
/// `parent`, returning it opened.
pub fn write(
    parent: &Path,
    mut meta: BlockMeta,
    series: impl IntoIterator<Item = (Series, MetricKind, Vec<Sample>)>,
) -> Result<Block, String> {
    let name = dir_name(meta.seq, meta.mint, meta.maxt);
    let tmp = parent.join(format!(".tmp-{name}"));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| io(&tmp, e))?;
    let chunks_path = tmp.join("chunks");
    let mut chunks =
        std::io::BufWriter::new(File::create(&chunks_path).map_err(|e| io(&chunks_path, e))?);
    let mut offset = 0u64;
    let mut index = BlockIndex { series: Vec::new() };
    let mut samples = 0u64;
    for (s, kind, points) in series {
        if points.is_empty() {
            continue;
        }
        let mut refs = Vec::new();
        for part in points.chunks(BLOCK_CHUNK_SAMPLES) {
            let pairs: Vec<(i64, f64)> = part.iter().map(|p| (p.timestamp_ms, p.value)).collect();
            let bytes = encode_block_chunk(&pairs);
            chunks.write_all(&bytes).map_err(|e| io(&chunks_path, e))?;
            refs.push(ChunkRef {
                mint: pairs[0].0,
                maxt: pairs[pairs.len() - 1].0,
                offset,
                len: bytes.len() as u32,
                count: pairs.len() as u32,
            });
            offset += bytes.len() as u64;
        }
        samples += points.len() as u64;
        index.series.push(BlockSeries {
            series: s,
            kind,
            chunks: refs,
        });
    }
    index.series.sort_by(|a, b| a.series.cmp(&b.series));
    let file = chunks
        .into_inner()
        .map_err(|e| io(&chunks_path, e.into_error()))?;
    file.sync_all().map_err(|e| io(&chunks_path, e))?;
    let index_path = tmp.join("index");
    let index_bytes =
        codec::encode_value(&index).map_err(|e| format!("{}: {e}", index_path.display()))?;
    write_synced(&index_path, &index_bytes)?;
    meta.format = FORMAT;
    meta.series = index.series.len();
    meta.samples = samples;
    meta.bytes = offset + index_bytes.len() as u64;
    let meta_path = tmp.join("meta.json");
    let meta_bytes =
        serde_json::to_vec_pretty(&meta).map_err(|e| format!("{}: {e}", meta_path.display()))?;
    write_synced(&meta_path, &meta_bytes)?;
    sync_dir(&tmp)?;
    let dir = parent.join(&name);
    std::fs::rename(&tmp, &dir).map_err(|e| io(&dir, e))?;
    sync_dir(parent)?;
    Block::open(&dir)
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let mut f = File::create(path).map_err(|e| io(path, e))?;
    f.write_all(bytes).map_err(|e| io(path, e))?;
    f.sync_all().map_err(|e| io(path, e))
}

impl Block {
    /// Opens the block in `dir`.
    pub fn open(dir: &Path) -> Result<Block, String> {
        let meta_path = dir.join("meta.json");
        let meta: BlockMeta =
            serde_json::from_slice(&std::fs::read(&meta_path).map_err(|e| io(&meta_path, e))?)
                .map_err(|e| format!("{}: {e}", meta_path.display()))?;
        let index_path = dir.join("index");
        let bytes = std::fs::read(&index_path).map_err(|e| io(&index_path, e))?;
        let limits = FrameLimits {
            max_payload_bytes: u32::MAX,
            max_decoded_bytes: u32::MAX,
        };
        let index: BlockIndex = codec::decode_value(&bytes, &limits)
            .map_err(|e| format!("{}: {e}", index_path.display()))?;
        let mut postings = super::Postings::new();
        for (id, s) in index.series.iter().enumerate() {
            postings
                .entry(("__name__".into(), s.series.name.clone()))
                .or_default()
                .push(id as u32);
            for l in &s.series.labels {
                postings
                    .entry((l.name.clone(), l.value.clone()))
                    .or_default()
                    .push(id as u32);
            }
        }
        let chunks_path = dir.join("chunks");
        let chunks = File::open(&chunks_path).map_err(|e| io(&chunks_path, e))?;
        Ok(Block {
            meta,
            dir: dir.to_path_buf(),
            index,
            postings,
            chunks,
        })
    }

    fn candidates(&self, matchers: &[Matcher]) -> Vec<u32> {
        super::candidate_ids(&self.postings, matchers)
            .unwrap_or_else(|| (0..self.index.series.len() as u32).collect())
    }

    /// Series matching, with their samples in `[start, end]`.
    pub fn select(
        &self,
        matchers: &[Matcher],
        start: i64,
        end: i64,
    ) -> Result<Vec<(Series, MetricKind, Vec<Sample>)>, String> {
        if end < self.meta.mint || start >= self.meta.maxt {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        let mut buf = Vec::new();
        for id in self.candidates(matchers) {
            let s = &self.index.series[id as usize];
            if !matches(&s.series, matchers) {
                continue;
            }
            let mut samples = Vec::new();
            for c in s.chunks.iter().filter(|c| c.maxt >= start && c.mint <= end) {
                buf.resize(c.len as usize, 0);
                self.chunks
                    .read_exact_at(&mut buf, c.offset)
                    .map_err(|e| io(&self.dir.join("chunks"), e))?;
                let keep = |&(t, _): &(i64, f64)| t >= start && t <= end;
                let sample = |(t, v)| Sample {
                    timestamp_ms: t,
                    value: v,
                };
                if self.meta.format == 0 {
                    samples.extend(ChunkIter::new(&buf, c.count).filter(keep).map(sample));
                } else {
                    let decoded =
                        decode_block_chunk(&buf, c.count, c.mint, c.maxt).map_err(|e| {
                            format!(
                                "{}: chunk at {}: {e}",
                                self.dir.join("chunks").display(),
                                c.offset
                            )
                        })?;
                    samples.extend(decoded.into_iter().filter(keep).map(sample));
                }
            }
            if !samples.is_empty() {
                out.push((s.series.clone(), s.kind, samples));
            }
        }
        Ok(out)
    }

    /// Every series with all its samples.
    pub fn all(&self) -> Result<Vec<(Series, MetricKind, Vec<Sample>)>, String> {
        self.select(&[], i64::MIN, i64::MAX)
    }
}

/// Blocks in `parent`, oldest sequence first; temporary directories from a crash are removed.
pub fn open_all(parent: &Path) -> Result<Vec<Block>, String> {
    std::fs::create_dir_all(parent).map_err(|e| io(parent, e))?;
    let mut out = Vec::new();
    for entry in std::fs::read_dir(parent).map_err(|e| io(parent, e))? {
        let entry = entry.map_err(|e| io(parent, e))?;
        let name = entry.file_name().to_string_lossy().to_string();
        if name.starts_with(".tmp-") {
            let _ = std::fs::remove_dir_all(entry.path());
            continue;
        }
        if entry.path().join("meta.json").is_file() {
            out.push(Block::open(&entry.path())?);
        }
    }
    out.sort_by_key(|b| b.meta.seq);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetwatch_common::model::Label;

    /// The samples of `testdata/block-format1`: a block written by the encoder of format 1
    /// before packed chunks (scaled-integer chunks of encoding 2 and Gorilla chunks).
    fn format1_fixture() -> Vec<(Series, MetricKind, Vec<Sample>)> {
        let t0 = 1_700_000_000_000i64;
        let series = |name: &str, host: &str| Series::new(name, [Label::new("host", host)]);
        let at = |i: i64, value: f64| Sample {
            timestamp_ms: t0 + i * 15_000,
            value,
        };
        let mut ticks = 12_345_678u64;
        let cpu: Vec<Sample> = (0..1500)
            .map(|i| {
                ticks += 1_400 + (i as u64 * 7919) % 200;
                at(i, ticks as f64 / 100.0)
            })
            .collect();
        let mut bytes = 4_000_000_000i64;
        let pages: Vec<Sample> = (0..300)
            .map(|i| {
                bytes += (i * 7919 % 2001 - 1000) * 4096;
                at(i, bytes as f64)
            })
            .collect();
        let mut stale: Vec<Sample> = (0..40).map(|i| at(i, (i % 7) as f64 * 0.25)).collect();
        stale.push(at(40, f64::from_bits(0x7ff0_0000_0000_0002)));
        let odd: Vec<Sample> = [f64::NAN, f64::INFINITY, -0.0, 1e300, 5e-324, 1.0 / 3.0]
            .iter()
            .enumerate()
            .map(|(i, &v)| at(i as i64 * 3 + (i as i64 % 2), v))
            .collect();
        vec![
            (series("cpu_seconds_total", "a"), MetricKind::Counter, cpu),
            (series("mem_available_bytes", "a"), MetricKind::Gauge, pages),
            (series("up", "b"), MetricKind::Gauge, stale),
            (series("odd", "b"), MetricKind::Gauge, odd),
            (
                series("boot_time_seconds", "b"),
                MetricKind::Gauge,
                vec![at(0, 1_699_000_000.0)],
            ),
        ]
    }

    #[test]
    fn blocks_keep_every_value_and_time_through_select() {
        let t0 = 1_700_000_000_000i64;
        let series = |name: &str| Series::new(name, [Label::new("host", "a")]);
        // a regular counter long enough for several chunks, irregular times, special values
        let counter: Vec<Sample> = (0..2500)
            .map(|i| Sample {
                timestamp_ms: t0 + i * 15_000,
                value: (1_000_000 + i * i * 7) as f64 / 100.0,
            })
            .collect();
        let specials = [
            f64::NAN,
            f64::from_bits(0x7ff0_0000_0000_0002),
            f64::INFINITY,
            f64::NEG_INFINITY,
            -0.0,
            f64::MAX,
            5e-324,
            1e-300,
        ];
        let irregular: Vec<Sample> = (0..300)
            .map(|i| Sample {
                timestamp_ms: t0 + i * 15_000 + (i * i) % 977,
                value: if i % 50 == 7 {
                    specials[(i / 50) as usize]
                } else {
                    (i % 13) as f64 * 0.5
                },
            })
            .collect();
        let want = vec![
            (series("irregular"), MetricKind::Gauge, irregular),
            (series("regular_total"), MetricKind::Counter, counter),
        ];
        let dir = tempfile::tempdir().unwrap();
        let meta = BlockMeta {
            seq: 1,
            mint: t0,
            maxt: t0 + 86_400_000,
            resolution_ms: 0,
            series: 0,
            samples: 0,
            bytes: 0,
            source_seq: 0,
            format: FORMAT,
        };
        let block = write(dir.path(), meta, want.clone()).unwrap();
        let block = Block::open(&block.dir).unwrap();
        let bits = |v: &[Sample]| -> Vec<(i64, u64)> {
            v.iter()
                .map(|s| (s.timestamp_ms, s.value.to_bits()))
                .collect()
        };
        // whole, and a window cutting chunks on both sides
        for (start, end) in [(i64::MIN, i64::MAX), (t0 + 1_000_001, t0 + 20_000_000)] {
            let got = block.select(&[], start, end).unwrap();
            assert_eq!(got.len(), 2);
            for ((gs, gk, gv), (ws, wk, wv)) in got.iter().zip(&want) {
                assert_eq!((gs, gk), (ws, wk));
                let inside: Vec<Sample> = wv
                    .iter()
                    .filter(|s| s.timestamp_ms >= start && s.timestamp_ms <= end)
                    .copied()
                    .collect();
                assert_eq!(bits(gv), bits(&inside), "{}", gs.name);
            }
        }
    }

    fn fixture_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("src/tsdb/testdata/block-format1")
    }

    #[test]
    fn a_block_written_before_packed_chunks_still_reads() {
        let dir = fixture_dir().join(dir_name(1, 1_700_000_000_000, 1_700_086_400_000));
        let block = Block::open(&dir).unwrap();
        assert_eq!(block.meta.format, 1);
        // the fixture holds the encodings of that time: scaled integers and Gorilla
        let mut tags: Vec<u8> = block
            .index
            .series
            .iter()
            .flat_map(|s| &s.chunks)
            .map(|c| {
                let mut tag = [0u8];
                block.chunks.read_exact_at(&mut tag, c.offset).unwrap();
                tag[0]
            })
            .collect();
        tags.dedup();
        tags.sort_unstable();
        tags.dedup();
        assert_eq!(tags, [0, 2]);
        let mut want = format1_fixture();
        want.sort_by(|a, b| a.0.cmp(&b.0));
        let got = block.all().unwrap();
        assert_eq!(got.len(), want.len());
        for ((gs, gk, gv), (ws, wk, wv)) in got.iter().zip(&want) {
            assert_eq!((gs, gk), (ws, wk));
            let bits = |v: &[Sample]| -> Vec<(i64, u64)> {
                v.iter()
                    .map(|s| (s.timestamp_ms, s.value.to_bits()))
                    .collect()
            };
            assert_eq!(bits(gv), bits(wv), "{}", gs.name);
        }
    }
}

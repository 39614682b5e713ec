//! A segmented, checksummed write-ahead log with group commit.
//!
//! Records are opaque bytes framed as `[len u32 LE][crc32 u32 LE][payload]` in segment files
//! `DIR/NNNNNNNNNNNNNNNNNNNN.wal`. `append` returns once the record is fsynced; concurrent
//! appenders share one fsync. On open every intact record is replayed in order; a torn tail in
//! the last segment (a crash mid-write) is truncated, corruption in an earlier segment skips the
//! rest of that segment with an error log. Appends after open go to a new segment.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};
use tracing::{error, warn};

/// Largest record accepted.
pub const MAX_RECORD_BYTES: usize = 256 * 1024 * 1024;
const HEADER: usize = 8;

/// Settings.
#[derive(Debug, Clone)]
pub struct WalConfig {
    /// Segment size at which a new segment starts.
    pub segment_bytes: u64,
    /// fsync before `append` returns.
    pub sync: bool,
}

impl Default for WalConfig {
    fn default() -> Self {
        Self {
            segment_bytes: 64 * 1024 * 1024,
            sync: true,
        }
    }
}

/// A record's position: segment number and byte offset in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn {
    /// Segment number.
    pub segment: u64,
    /// Byte offset of the record in the segment.
    pub offset: u64,
}

/// What replay found.
#[derive(Debug, Default, Clone, Copy)]
pub struct ReplayStats {
    /// Records replayed.
    pub records: u64,
    /// Segments read.
    pub segments: u64,
    /// Bytes cut from a torn tail.
    pub truncated_bytes: u64,
    /// Earlier segments with corruption.
    pub corrupt_segments: u64,
}

/// A log failure.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// File system error on a path.
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    /// A record too large.
    #[error("record of {0} bytes exceeds the maximum of {MAX_RECORD_BYTES}")]
    TooLarge(usize),
}

struct Writer {
    file: File,
    segment: u64,
    offset: u64,
    /// Bytes written in total (across segments), and bytes known synced.
    written: u64,
}

struct SyncState {
    synced: u64,
    syncing: bool,
}

/// The log.
pub struct Wal {
    dir: PathBuf,
    config: WalConfig,
    writer: Mutex<Writer>,
    sync_state: Mutex<SyncState>,
    synced_cv: Condvar,
}

fn segment_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("{n:020}.wal"))
}

fn list_segments(dir: &Path) -> Result<Vec<u64>, WalError> {
    let mut out = Vec::new();
    let rd = std::fs::read_dir(dir).map_err(|e| WalError::Io(dir.to_path_buf(), e))?;
    for entry in rd {
        let entry = entry.map_err(|e| WalError::Io(dir.to_path_buf(), e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if let Some(n) = name
            .strip_suffix(".wal")
            .and_then(|s| s.parse::<u64>().ok())
        {
            out.push(n);
        }
    }
    out.sort_unstable();
    Ok(out)
}

fn sync_dir(dir: &Path) -> Result<(), WalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| WalError::Io(dir.to_path_buf(), e))
}

/// Reads one segment; returns the byte offset of the end of the last intact record.
fn replay_segment(
    path: &Path,
    segment: u64,
    f: &mut impl FnMut(Lsn, &[u8]),
    records: &mut u64,
) -> Result<(u64, bool), WalError> {
    let file = File::open(path).map_err(|e| WalError::Io(path.to_path_buf(), e))?;
    let len = file
        .metadata()
        .map_err(|e| WalError::Io(path.to_path_buf(), e))?
        .len();
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut offset = 0u64;
    let mut payload = Vec::new();
    loop {
        let mut header = [0u8; HEADER];
        if offset + HEADER as u64 > len {
            return Ok((offset, offset == len));
        }
        if reader.read_exact(&mut header).is_err() {
            return Ok((offset, false));
        }
        let n = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if n > MAX_RECORD_BYTES || offset + (HEADER + n) as u64 > len {
            return Ok((offset, false));
        }
        payload.resize(n, 0);
        if reader.read_exact(&mut payload).is_err() || crc32fast::hash(&payload) != crc {
            return Ok((offset, false));
        }
        f(Lsn { segment, offset }, &payload);
        *records += 1;
        offset += (HEADER + n) as u64;
    }
}

impl Wal {
    /// Opens the log in `dir`, replaying every intact record through `f`.
    pub fn open(
        dir: &Path,
        config: WalConfig,
        mut f: impl FnMut(Lsn, &[u8]),
    ) -> Result<(Wal, ReplayStats), WalError> {
        std::fs::create_dir_all(dir).map_err(|e| WalError::Io(dir.to_path_buf(), e))?;
        let segments = list_segments(dir)?;
        let mut stats = ReplayStats::default();
        for (i, &n) in segments.iter().enumerate() {
            let path = segment_path(dir, n);
            let (good, clean) = replay_segment(&path, n, &mut f, &mut stats.records)?;
            stats.segments += 1;
            if !clean {
                let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(good);
                if i + 1 == segments.len() {
                    warn!(segment = %path.display(), cut = len - good, "truncating a torn log tail");
                    let file = OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .map_err(|e| WalError::Io(path.clone(), e))?;
                    file.set_len(good)
                        .and_then(|_| file.sync_all())
                        .map_err(|e| WalError::Io(path.clone(), e))?;
                    stats.truncated_bytes += len - good;
                } else {
                    error!(segment = %path.display(), at = good, "corrupt log segment: records after this offset are skipped");
                    stats.corrupt_segments += 1;
                }
            }
        }
        let next = segments.last().map_or(1, |n| n + 1);
        let file = Self::create_segment(dir, next)?;
        let wal = Wal {
            dir: dir.to_path_buf(),
            config,
            writer: Mutex::new(Writer {
                file,
                segment: next,
                offset: 0,
                written: 0,
            }),
            sync_state: Mutex::new(SyncState {
                synced: 0,
                syncing: false,
            }),
            synced_cv: Condvar::new(),
        };
        Ok((wal, stats))
    }

    fn create_segment(dir: &Path, n: u64) -> Result<File, WalError> {
        let path = segment_path(dir, n);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| WalError::Io(path, e))?;
        sync_dir(dir)?;
        Ok(file)
    }

    /// Appends a record; durable when this returns (with `sync`).
    pub fn append(&self, record: &[u8]) -> Result<Lsn, WalError> {
        if record.len() > MAX_RECORD_BYTES {
            return Err(WalError::TooLarge(record.len()));
        }
        let (lsn, end) = {
            let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
            let size = (HEADER + record.len()) as u64;
            if w.offset > 0 && w.offset + size > self.config.segment_bytes {
                // Seal the old segment before starting a new one.
                w.file
                    .sync_data()
                    .map_err(|e| WalError::Io(segment_path(&self.dir, w.segment), e))?;
                let next = w.segment + 1;
                w.file = Self::create_segment(&self.dir, next)?;
                w.segment = next;
                w.offset = 0;
            }
            let mut buf = Vec::with_capacity(size as usize);
            buf.extend_from_slice(&(record.len() as u32).to_le_bytes());
            buf.extend_from_slice(&crc32fast::hash(record).to_le_bytes());
            buf.extend_from_slice(record);
            let segment = w.segment;
            w.file
                .write_all(&buf)
                .map_err(|e| WalError::Io(segment_path(&self.dir, segment), e))?;
            let lsn = Lsn {
                segment: w.segment,
                offset: w.offset,
            };
            w.offset += size;
            w.written += size;
            (lsn, w.written)
        };
        if self.config.sync {
            self.sync_upto(end)?;
        }
        Ok(lsn)
    }

    /// Group commit: one thread fsyncs for every record written before it started.
    fn sync_upto(&self, end: u64) -> Result<(), WalError> {
        let mut st = self.sync_state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if st.synced >= end {
                return Ok(());
            }
            if !st.syncing {
                break;
            }
            st = self.synced_cv.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        st.syncing = true;
        drop(st);
        // Everything written up to now is covered by syncing the active segment: a rotation
        // seals the older segment itself.
        let (target, segment, file) = {
            let w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
            (w.written, w.segment, w.file.try_clone())
        };
        let result = file.and_then(|f| f.sync_data());
        let mut st = self.sync_state.lock().unwrap_or_else(|p| p.into_inner());
        st.syncing = false;
        if result.is_ok() {
            st.synced = st.synced.max(target);
        }
        self.synced_cv.notify_all();
        result.map_err(|e| WalError::Io(segment_path(&self.dir, segment), e))
    }

    /// Removes whole segments before `lsn`'s segment (never the active one).
    pub fn remove_before(&self, lsn: Lsn) -> Result<u64, WalError> {
        let active = self
            .writer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .segment;
        let mut removed = 0;
        for n in list_segments(&self.dir)? {
            if n < lsn.segment && n < active {
                let path = segment_path(&self.dir, n);
                std::fs::remove_file(&path).map_err(|e| WalError::Io(path, e))?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Bytes on disk.
    pub fn disk_bytes(&self) -> u64 {
        list_segments(&self.dir)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|n| std::fs::metadata(segment_path(&self.dir, n)).ok())
            .map(|m| m.len())
            .sum()
    }

    /// Segment files.
    pub fn segments(&self) -> usize {
        list_segments(&self.dir).map(|v| v.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn collect(dir: &Path, cfg: WalConfig) -> (Wal, Vec<Vec<u8>>, ReplayStats) {
        let mut out = Vec::new();
        let (wal, stats) = Wal::open(dir, cfg, |_, b| out.push(b.to_vec())).unwrap();
        (wal, out, stats)
    }

    #[test]
    fn records_come_back_in_order_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = WalConfig {
            segment_bytes: 100,
            sync: true,
        };
        let recs: Vec<Vec<u8>> = (0..50u8).map(|i| vec![i; (i as usize) % 40 + 1]).collect();
        {
            let (wal, got, _) = collect(dir.path(), cfg.clone());
            assert!(got.is_empty());
            for r in &recs {
                wal.append(r).unwrap();
            }
            assert!(wal.segments() > 5);
        }
        let (wal, got, stats) = collect(dir.path(), cfg.clone());
        assert_eq!(got, recs);
        assert_eq!(stats.truncated_bytes, 0);
        let lsn = wal.append(b"x").unwrap();
        let removed = wal.remove_before(lsn).unwrap();
        assert!(removed > 0);
        assert_eq!(wal.segments(), 1);
    }

    #[test]
    fn torn_tail_is_truncated_and_appends_continue() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = WalConfig::default();
        {
            let (wal, _, _) = collect(dir.path(), cfg.clone());
            wal.append(b"one").unwrap();
            wal.append(b"two").unwrap();
        }
        let last = list_segments(dir.path())
            .unwrap()
            .into_iter()
            .max()
            .unwrap();
        let path = segment_path(dir.path(), last);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[200, 0, 0, 0, 1, 2, 3, 4, 9]).unwrap();
        drop(f);
        let (wal, got, stats) = collect(dir.path(), cfg.clone());
        assert_eq!(got, vec![b"one".to_vec(), b"two".to_vec()]);
        assert_eq!(stats.truncated_bytes, 9);
        wal.append(b"three").unwrap();
        drop(wal);
        let (_, got, _) = collect(dir.path(), cfg);
        assert_eq!(got.len(), 3);
    }

    #[test]
    fn corruption_in_an_earlier_segment_skips_only_that_segment() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = WalConfig {
            segment_bytes: 30,
            sync: false,
        };
        {
            let (wal, _, _) = collect(dir.path(), cfg.clone());
            for i in 0..6u8 {
                wal.append(&[i; 10]).unwrap();
            }
        }
        let first = list_segments(dir.path()).unwrap()[0];
        let path = segment_path(dir.path(), first);
        let mut bytes = std::fs::read(&path).unwrap();
        let n = bytes.len();
        bytes[n - 1] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
        let (_, got, stats) = collect(dir.path(), cfg);
        assert_eq!(stats.corrupt_segments, 1);
        assert!(got.len() >= 4 && got.len() < 6, "{}", got.len());
        assert_eq!(got.last().unwrap(), &vec![5u8; 10]);
    }

    #[test]
    fn concurrent_appends_all_survive() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _, _) = collect(dir.path(), WalConfig::default());
        let wal = std::sync::Arc::new(wal);
        let start = std::time::Instant::now();
        let threads: Vec<_> = (0..8u8)
            .map(|t| {
                let wal = wal.clone();
                std::thread::spawn(move || {
                    for i in 0..200u16 {
                        let mut r = vec![t];
                        r.extend(i.to_le_bytes());
                        wal.append(&r).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        println!(
            "1600 synced appends from 8 threads in {:?}",
            start.elapsed()
        );
        drop(wal);
        let (_, got, _) = collect(dir.path(), WalConfig::default());
        let mut got: Vec<_> = got.into_iter().collect();
        got.sort();
        got.dedup();
        assert_eq!(got.len(), 1600);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        #[test]
        fn a_crash_keeps_exactly_the_whole_records_before_it(
            recs in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 1..20),
            cut_frac in 0.0f64..1.0,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let cfg = WalConfig { segment_bytes: u64::MAX, sync: false };
            {
                let (wal, _, _) = collect(dir.path(), cfg.clone());
                for r in &recs {
                    wal.append(r).unwrap();
                }
            }
            let last = list_segments(dir.path()).unwrap().into_iter().max().unwrap();
            let path = segment_path(dir.path(), last);
            let len = std::fs::metadata(&path).unwrap().len();
            let cut = (len as f64 * cut_frac) as u64;
            OpenOptions::new().write(true).open(&path).unwrap().set_len(cut).unwrap();
            let mut end = 0u64;
            let expected: Vec<Vec<u8>> = recs.iter().take_while(|r| { end += (HEADER + r.len()) as u64; end <= cut }).cloned().collect();
            let (_, got, _) = collect(dir.path(), cfg);
            prop_assert_eq!(got, expected);
        }
    }
}

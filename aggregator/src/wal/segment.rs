//! Segment files: their names, the record framing and the scan that replays one file.
//!
//! A record is `[len u32 LE][crc32 of payload u32 LE][payload]`; a segment is records back to back.

use super::{Lsn, WalError, MAX_RECORD_BYTES};
use std::fmt;
use std::fs::File;
use std::io::{BufReader, ErrorKind, Read};
use std::path::{Path, PathBuf};

/// Bytes of framing before each payload.
pub(super) const HEADER: usize = 8;

/// Digits in a segment file name: `u64::MAX` has 20, so lexical order is numeric order.
const NAME_DIGITS: usize = 20;

/// `DIR/00000000000000000001.wal` for segment 1.
pub(super) fn segment_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("{n:0NAME_DIGITS$}.wal"))
}

/// The segment numbers in `dir`, ascending. Other files are ignored.
pub(super) fn list_segments(dir: &Path) -> Result<Vec<u64>, WalError> {
    let io = |e| WalError::io(dir, e);
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let name = entry.map_err(io)?.file_name();
        let Some(stem) = name.to_str().and_then(|s| s.strip_suffix(".wal")) else {
            continue;
        };
        if stem.len() == NAME_DIGITS && stem.bytes().all(|b| b.is_ascii_digit()) {
            if let Ok(n) = stem.parse::<u64>() {
                out.push(n);
            }
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// fsyncs a directory so that files created or removed in it survive a crash.
pub(super) fn sync_dir(dir: &Path) -> Result<(), WalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| WalError::io(dir, e))
}

/// Appends the framed `record` to `buf`. The caller has checked its length.
pub(super) fn encode(buf: &mut Vec<u8>, record: &[u8]) {
    // The caller checked record.len() <= MAX_RECORD_BYTES < u32::MAX: the cast is exact.
    buf.extend_from_slice(&(record.len() as u32).to_le_bytes());
    buf.extend_from_slice(&crc32fast::hash(record).to_le_bytes());
    buf.extend_from_slice(record);
}

/// Why a scan stopped before the end of a segment file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Damage {
    /// Fewer than [`HEADER`] bytes left.
    ShortHeader,
    /// A zero length: never written by `append`, typically a zero-filled tail after a crash.
    ZeroLength,
    /// A length over [`MAX_RECORD_BYTES`].
    BadLength(u32),
    /// The payload runs past the end of the file.
    ShortPayload,
    /// The payload's checksum does not match its header.
    Checksum,
}

impl fmt::Display for Damage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Damage::ShortHeader => f.write_str("partial record header"),
            Damage::ZeroLength => f.write_str("zero record length"),
            Damage::BadLength(n) => write!(f, "record length {n} over the limit"),
            Damage::ShortPayload => f.write_str("record runs past the end of the file"),
            Damage::Checksum => f.write_str("checksum mismatch"),
        }
    }
}

/// What a scan of one segment found.
#[derive(Debug)]
pub(super) struct Scan {
    /// End of the last intact record: where a torn tail is cut.
    pub(super) good: u64,
    /// The file's length.
    pub(super) len: u64,
    /// Intact records passed to the callback.
    pub(super) records: u64,
    /// Why the scan stopped before `len`, if it did.
    pub(super) damage: Option<Damage>,
}

/// Reads segment `segment` at `path` from the start, passing every intact record to `f`, and
/// stops at the first damaged one. Only I/O errors, never damage, are errors.
pub(super) fn scan(
    path: &Path,
    segment: u64,
    f: &mut impl FnMut(Lsn, &[u8]),
) -> Result<Scan, WalError> {
    scan_from(path, segment, 0, &mut |lsn, bytes| {
        f(lsn, bytes);
        true
    })
}

/// Like [`scan`], from the record at byte `start`, until `f` returns false (`good` is then the
/// end of the last record `f` took).
pub(super) fn scan_from(
    path: &Path,
    segment: u64,
    start: u64,
    f: &mut impl FnMut(Lsn, &[u8]) -> bool,
) -> Result<Scan, WalError> {
    let io = |e| WalError::io(path, e);
    let mut file = File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    let start = start.min(len);
    std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(start)).map_err(io)?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut offset = start;
    let mut records = 0u64;
    let mut payload = Vec::new();
    let damage = loop {
        let left = len - offset;
        if left == 0 {
            break None;
        }
        if left < HEADER as u64 {
            break Some(Damage::ShortHeader);
        }
        let mut header = [0u8; HEADER];
        if let Some(damage) = read_or_short(&mut reader, &mut header).map_err(io)? {
            break Some(damage);
        }
        let n = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if n == 0 {
            break Some(Damage::ZeroLength);
        }
        if n as usize > MAX_RECORD_BYTES {
            break Some(Damage::BadLength(n));
        }
        if u64::from(n) > left - HEADER as u64 {
            break Some(Damage::ShortPayload);
        }
        payload.resize(n as usize, 0);
        if let Some(damage) = read_or_short(&mut reader, &mut payload).map_err(io)? {
            break Some(damage);
        }
        if crc32fast::hash(&payload) != crc {
            break Some(Damage::Checksum);
        }
        if !f(Lsn { segment, offset }, &payload) {
            break None;
        }
        records += 1;
        offset += (HEADER + payload.len()) as u64;
    };
    Ok(Scan {
        good: offset,
        len,
        records,
        damage,
    })
}

/// `read_exact`, except that an early end of file (the file shrank under us) is damage, not an
/// error: only real I/O errors, which must not be mistaken for a torn tail, are returned.
fn read_or_short(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<Option<Damage>> {
    match reader.read_exact(buf) {
        Ok(()) => Ok(None),
        Err(e) if e.kind() == ErrorKind::UnexpectedEof => Ok(Some(Damage::ShortPayload)),
        Err(e) => Err(e),
    }
}

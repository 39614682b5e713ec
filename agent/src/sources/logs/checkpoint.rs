//! Read positions ("file F read to offset X", "journal read to cursor C") as they are kept in
//! the buffer's checkpoint tree, written in the same sled transaction as the batch that holds
//! the records up to that position, so that a restart neither loses nor repeats a record.
//!
//! A file is known by (device, inode) plus a fingerprint of its first bytes, so that a new file
//! that got a reused inode is not taken for the old one.

use std::fs::File;
use std::os::unix::fs::FileExt;

/// One change to the checkpoint tree: a key and its new value (`None` removes it).
pub type CheckpointUpdate = (Vec<u8>, Option<Vec<u8>>);

/// Bytes at the start of a file that make its fingerprint.
pub const FINGERPRINT_BYTES: usize = 256;

/// The key of the journal's cursor.
pub const JOURNALD_KEY: &[u8] = b"journald";

/// A file's identity on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId {
    /// Device number.
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
}

impl FileId {
    /// The checkpoint key of this file: `f` + device + inode.
    pub fn key(&self) -> Vec<u8> {
        let mut k = Vec::with_capacity(17);
        k.push(b'f');
        k.extend_from_slice(&self.dev.to_be_bytes());
        k.extend_from_slice(&self.ino.to_be_bytes());
        k
    }
}

/// A hash of a file's first `len` bytes (FNV-1a, stable across builds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint {
    /// How many bytes were hashed (up to [`FINGERPRINT_BYTES`]; 0 for an empty file).
    pub len: u32,
    /// Their hash.
    pub hash: u64,
}

/// FNV-1a of `bytes`.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

impl Fingerprint {
    /// The fingerprint of the first `min(len, FINGERPRINT_BYTES)` bytes of `file`.
    pub fn of(file: &File, len: usize) -> std::io::Result<Fingerprint> {
        let mut buf = vec![0u8; len.min(FINGERPRINT_BYTES)];
        let mut got = 0;
        while got < buf.len() {
            match file.read_at(&mut buf[got..], got as u64)? {
                0 => break,
                n => got += n,
            }
        }
        buf.truncate(got);
        Ok(Fingerprint {
            len: got as u32,
            hash: fnv1a(&buf),
        })
    }

    /// True when `file` still starts with the bytes this fingerprint was made of.
    pub fn matches(&self, file: &File) -> std::io::Result<bool> {
        let now = Fingerprint::of(file, self.len as usize)?;
        Ok(now == *self)
    }

    /// A full-length fingerprint: long enough to tell a copy of a file from another file.
    pub fn is_full(&self) -> bool {
        self.len as usize == FINGERPRINT_BYTES
    }
}

/// A file's saved position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileCheckpoint {
    /// The fingerprint when the position was saved.
    pub fingerprint: Fingerprint,
    /// Bytes read and shipped (the start of the first record not yet in the buffer).
    pub offset: u64,
    /// The path it was read under (for people reading the state; not used to match).
    pub path: String,
}

impl FileCheckpoint {
    /// Encoded: fingerprint length (4), hash (8), offset (8), path.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(20 + self.path.len());
        v.extend_from_slice(&self.fingerprint.len.to_be_bytes());
        v.extend_from_slice(&self.fingerprint.hash.to_be_bytes());
        v.extend_from_slice(&self.offset.to_be_bytes());
        v.extend_from_slice(self.path.as_bytes());
        v
    }

    /// Decodes what [`FileCheckpoint::encode`] wrote; `None` for anything else.
    pub fn decode(v: &[u8]) -> Option<FileCheckpoint> {
        if v.len() < 20 {
            return None;
        }
        Some(FileCheckpoint {
            fingerprint: Fingerprint {
                len: u32::from_be_bytes(v[0..4].try_into().ok()?),
                hash: u64::from_be_bytes(v[4..12].try_into().ok()?),
            },
            offset: u64::from_be_bytes(v[12..20].try_into().ok()?),
            path: String::from_utf8_lossy(&v[20..]).into_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn checkpoint_round_trip_and_garbage() {
        let c = FileCheckpoint {
            fingerprint: Fingerprint { len: 256, hash: 42 },
            offset: 1 << 40,
            path: "/var/log/app.log".into(),
        };
        assert_eq!(FileCheckpoint::decode(&c.encode()), Some(c));
        assert_eq!(FileCheckpoint::decode(b"short"), None);
        let id = FileId { dev: 1, ino: 2 };
        assert_eq!(id.key().len(), 17);
    }

    #[test]
    fn fingerprint_tells_files_apart() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a");
        let mut f = File::create(&p).unwrap();
        f.write_all(b"first line\n").unwrap();
        let r = File::open(&p).unwrap();
        let fp = Fingerprint::of(&r, FINGERPRINT_BYTES).unwrap();
        assert_eq!(fp.len, 11);
        assert!(!fp.is_full());
        f.write_all(b"more\n").unwrap();
        assert!(fp.matches(&r).unwrap(), "growing keeps the first bytes");
        f.set_len(0).unwrap();
        f.write_all(b"other line\n").unwrap();
        assert!(!fp.matches(&r).unwrap());
    }
}

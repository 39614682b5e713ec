//! Tests of the write-ahead log: replay, rotation, torn tails, corruption, crashes, group commit.

use super::*;
use proptest::prelude::*;
use std::fs::OpenOptions;
use std::time::Instant;

type Replayed = Vec<(Lsn, Vec<u8>)>;

fn open(dir: &Path, config: WalConfig) -> (Wal, Replayed, ReplayStats) {
    let mut got = Vec::new();
    let (wal, stats) = Wal::open(dir, config, |lsn, b| got.push((lsn, b.to_vec()))).unwrap();
    (wal, got, stats)
}

fn bytes_of(replayed: &Replayed) -> Vec<Vec<u8>> {
    replayed.iter().map(|(_, b)| b.clone()).collect()
}

/// Deterministic records of varied sizes and contents.
fn records(n: usize, max_len: usize) -> Vec<Vec<u8>> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let len = 1 + (x >> 33) as usize % max_len;
            (0..len).map(|i| (x >> (i % 56)) as u8 ^ i as u8).collect()
        })
        .collect()
}

fn last_segment(dir: &Path) -> PathBuf {
    let n = *list_segments(dir).unwrap().last().unwrap();
    segment_path(dir, n)
}

fn files_bytes(dir: &Path) -> u64 {
    list_segments(dir)
        .unwrap()
        .into_iter()
        .map(|n| std::fs::metadata(segment_path(dir, n)).unwrap().len())
        .sum()
}

fn framed(record: &[u8]) -> u64 {
    (HEADER + record.len()) as u64
}

fn append_bytes(path: &Path, bytes: &[u8]) {
    OpenOptions::new()
        .append(true)
        .open(path)
        .unwrap()
        .write_all(bytes)
        .unwrap();
}

#[test]
fn appended_records_replay_in_order_with_identical_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let recs = records(300, 2000);
    let mut lsns = Vec::new();
    {
        let (wal, got, stats) = open(dir.path(), WalConfig::default());
        assert!(got.is_empty());
        assert_eq!(stats, ReplayStats::default());
        for r in &recs {
            lsns.push(wal.append(r).unwrap());
        }
        assert!(lsns.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(wal.disk_bytes(), files_bytes(dir.path()));
    }
    let (wal, got, stats) = open(dir.path(), WalConfig::default());
    assert_eq!(bytes_of(&got), recs);
    assert_eq!(got.iter().map(|(l, _)| *l).collect::<Vec<_>>(), lsns);
    assert_eq!(
        (stats.records, stats.segments, stats.truncated_bytes),
        (300, 1, 0)
    );
    assert_eq!(wal.segments(), 2, "appends go to a new segment");
    drop(wal);
    // Opening again without appending reuses the empty segment instead of piling up files.
    let (wal, got, _) = open(dir.path(), WalConfig::default());
    assert_eq!(got.len(), 300);
    assert_eq!(wal.segments(), 2);
}

#[test]
fn rotation_and_remove_before_never_touch_the_active_segment() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = WalConfig {
        segment_bytes: 256,
        sync: true,
    };
    let mut recs = records(100, 60);
    recs.insert(40, vec![7u8; 1000]); // larger than a segment: gets one of its own
    let mut lsns = Vec::new();
    {
        let (wal, _, _) = open(dir.path(), cfg.clone());
        for r in &recs {
            lsns.push(wal.append(r).unwrap());
        }
        assert!(wal.segments() > 10, "{} segments", wal.segments());
        assert_eq!(wal.segments(), list_segments(dir.path()).unwrap().len());
        assert_eq!(wal.disk_bytes(), files_bytes(dir.path()));
        let big = lsns[40];
        assert_eq!(big.offset, 0);
        let after_big = Lsn {
            segment: big.segment + 1,
            offset: 0,
        };
        assert_eq!(lsns[41], after_big);
        for n in list_segments(dir.path()).unwrap() {
            let len = std::fs::metadata(segment_path(dir.path(), n))
                .unwrap()
                .len();
            assert!(
                len <= 256 || n == big.segment,
                "segment {n} has {len} bytes"
            );
        }

        let mark = lsns[60];
        let before = list_segments(dir.path())
            .unwrap()
            .into_iter()
            .filter(|&n| n < mark.segment)
            .count();
        assert_eq!(wal.remove_before(mark).unwrap(), before as u64);
        assert_eq!(list_segments(dir.path()).unwrap()[0], mark.segment);
        assert_eq!(wal.remove_before(mark).unwrap(), 0);
        assert_eq!(wal.disk_bytes(), files_bytes(dir.path()));
    }
    let first_kept = lsns
        .iter()
        .position(|l| l.segment == lsns[60].segment)
        .unwrap();
    let (wal, got, stats) = open(dir.path(), cfg.clone());
    assert_eq!(bytes_of(&got), recs[first_kept..].to_vec());
    assert_eq!(stats.corrupt_segments + stats.truncated_bytes, 0);

    // Even a position past everything leaves the active segment alone.
    let lsn = wal.append(b"after removal").unwrap();
    let everything = Lsn {
        segment: u64::MAX,
        offset: 0,
    };
    assert!(wal.remove_before(everything).unwrap() > 0);
    assert_eq!(wal.segments(), 1);
    assert_eq!(list_segments(dir.path()).unwrap(), vec![lsn.segment]);
    assert_eq!(wal.disk_bytes(), files_bytes(dir.path()));
    drop(wal);
    let (_, got, _) = open(dir.path(), cfg);
    assert_eq!(bytes_of(&got), vec![b"after removal".to_vec()]);
}

/// Appends ten records, damages the last segment with `damage`, and checks that the first
/// `kept` records come back, `cut` bytes are truncated and the log goes on working.
fn torn_tail_case(damage: impl FnOnce(&Path), kept: usize, cut: impl FnOnce(&[Vec<u8>]) -> u64) {
    let dir = tempfile::tempdir().unwrap();
    let recs = records(10, 300);
    {
        let (wal, _, _) = open(dir.path(), WalConfig::default());
        for r in &recs {
            wal.append(r).unwrap();
        }
    }
    let path = last_segment(dir.path());
    damage(&path);
    let (wal, got, stats) = open(dir.path(), WalConfig::default());
    assert_eq!(bytes_of(&got), recs[..kept].to_vec());
    let expected_cut = cut(&recs);
    assert!(expected_cut > 0);
    assert_eq!(stats.truncated_bytes, expected_cut);
    assert_eq!(stats.corrupt_segments, 0);
    let good: u64 = recs[..kept].iter().map(|r| framed(r)).sum();
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        good,
        "tail cut off on disk"
    );
    wal.append(b"after the crash").unwrap();
    drop(wal);
    let (_, got, stats) = open(dir.path(), WalConfig::default());
    let mut want = recs[..kept].to_vec();
    want.push(b"after the crash".to_vec());
    assert_eq!(bytes_of(&got), want);
    assert_eq!(stats.truncated_bytes, 0);
}

#[test]
fn torn_tail_with_a_partial_record_appended_is_truncated() {
    // A header promising 200 bytes, followed by 9.
    let mut junk = 200u32.to_le_bytes().to_vec();
    junk.extend([1, 2, 3, 4, 9, 9, 9, 9, 9, 9, 9, 9, 9]);
    torn_tail_case(|p| append_bytes(p, &junk), 10, |_| 17);
}

#[test]
fn torn_tail_with_a_partial_header_is_truncated() {
    torn_tail_case(|p| append_bytes(p, &[5, 0, 0]), 10, |_| 3);
}

#[test]
fn torn_tail_of_zeros_is_truncated_not_replayed_as_records() {
    torn_tail_case(|p| append_bytes(p, &[0u8; 4096]), 10, |_| 4096);
}

#[test]
fn torn_tail_cut_mid_record_keeps_the_records_before() {
    torn_tail_case(
        |p| {
            let f = OpenOptions::new().write(true).open(p).unwrap();
            let len = f.metadata().unwrap().len();
            f.set_len(len - 5).unwrap();
        },
        9,
        |recs| framed(&recs[9]) - 5,
    );
}

#[test]
fn torn_tail_with_a_bad_checksum_in_the_last_record_is_truncated() {
    torn_tail_case(
        |p| {
            let mut bytes = std::fs::read(p).unwrap();
            let n = bytes.len();
            bytes[n - 1] ^= 0x40;
            std::fs::write(p, bytes).unwrap();
        },
        9,
        |recs| framed(&recs[9]),
    );
}

#[test]
fn crc_mismatch_in_an_earlier_segment_skips_only_the_rest_of_that_segment() {
    let dir = tempfile::tempdir().unwrap();
    // 40-byte records, 48 framed: four per 200-byte segment, twelve records in three segments.
    let cfg = WalConfig {
        segment_bytes: 200,
        sync: false,
    };
    let recs: Vec<Vec<u8>> = (0..12u8).map(|i| vec![i; 40]).collect();
    {
        let (wal, _, _) = open(dir.path(), cfg.clone());
        for r in &recs {
            wal.append(r).unwrap();
        }
        assert_eq!(wal.segments(), 3);
    }
    let first = segment_path(dir.path(), 1);
    let mut bytes = std::fs::read(&first).unwrap();
    bytes[48 + HEADER + 5] ^= 0xff; // inside the second record's payload
    std::fs::write(&first, &bytes).unwrap();

    for round in 0..2 {
        let (wal, got, stats) = open(dir.path(), cfg.clone());
        let mut want = vec![recs[0].clone()];
        want.extend_from_slice(&recs[4..]);
        if round == 1 {
            want.push(b"still appending".to_vec());
        }
        assert_eq!(bytes_of(&got), want, "round {round}");
        assert_eq!(stats.corrupt_segments, 1);
        assert_eq!(stats.corrupt_bytes, 192 - 48);
        assert_eq!(stats.truncated_bytes, 0);
        let untouched = std::fs::read(&first).unwrap();
        assert_eq!(untouched, bytes, "a corrupt segment is left as it is");
        if round == 0 {
            wal.append(b"still appending").unwrap();
        }
    }
}

#[test]
fn empty_and_oversized_records_are_refused_without_writing() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _, _) = open(dir.path(), WalConfig::default());
    assert!(matches!(wal.append(b""), Err(WalError::Empty)));
    let huge = vec![0u8; MAX_RECORD_BYTES + 1];
    let err = wal.append(&huge).unwrap_err();
    assert!(matches!(err, WalError::TooLarge { len } if len == MAX_RECORD_BYTES + 1));
    assert!(err.to_string().contains("256 MiB"), "{err}");
    assert_eq!(wal.disk_bytes(), 0);
    assert_eq!(files_bytes(dir.path()), 0);
}

#[test]
fn concurrent_appends_share_fsyncs_and_all_come_back_once() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _, _) = open(dir.path(), WalConfig::default());

    let start = Instant::now();
    for i in 0..200u32 {
        wal.append(&i.to_le_bytes()).unwrap();
    }
    let single = start.elapsed();
    let single_fsyncs = wal.fsyncs();

    let wal = Arc::new(wal);
    let (threads, per_thread) = (8u8, 200u16);
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let wal = Arc::clone(&wal);
            std::thread::spawn(move || {
                for i in 0..per_thread {
                    let mut r = vec![t];
                    r.extend(i.to_le_bytes());
                    r.resize(100, t);
                    wal.append(&r).unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let elapsed = start.elapsed();
    let total = u64::from(threads) * u64::from(per_thread);
    let fsyncs = wal.fsyncs() - single_fsyncs;
    println!(
        "wal group commit: 1 thread: 200 appends in {single:.2?} ({:.0}/s, {single_fsyncs} fsyncs); \
         {threads} threads: {total} appends in {elapsed:.2?} ({:.0}/s, {fsyncs} fsyncs, {:.1} appends per fsync)",
        200.0 / single.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64(),
        total as f64 / fsyncs.max(1) as f64,
    );
    drop(wal);

    let (_, got, _) = open(dir.path(), WalConfig::default());
    let got: Vec<Vec<u8>> = bytes_of(&got)
        .into_iter()
        .filter(|r| r.len() == 100)
        .collect();
    assert_eq!(got.len() as u64, total);
    for t in 0..threads {
        let seqs: Vec<u16> = got
            .iter()
            .filter(|r| r[0] == t)
            .map(|r| u16::from_le_bytes([r[1], r[2]]))
            .collect();
        let want: Vec<u16> = (0..per_thread).collect();
        assert_eq!(seqs, want, "thread {t}'s records, once each, in order");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// A crash (the last segment cut at a random offset, maybe with junk after it) keeps
    /// exactly the records that fit whole before the cut, and the log goes on after it.
    #[test]
    fn a_crash_keeps_exactly_the_records_whole_before_it(
        recs in prop::collection::vec(prop::collection::vec(any::<u8>(), 1..300), 1..30),
        segment_bytes in 64u64..2048,
        cut_frac in 0.0f64..=1.0,
        junk in prop::collection::vec(any::<u8>(), 0..24),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let cfg = WalConfig { segment_bytes, sync: false };
        let mut lsns = Vec::new();
        {
            let (wal, _, _) = open(dir.path(), cfg.clone());
            for r in &recs {
                lsns.push(wal.append(r).unwrap());
            }
        }
        let path = last_segment(dir.path());
        let last = lsns[lsns.len() - 1].segment;
        let len = std::fs::metadata(&path).unwrap().len();
        let cut = (len as f64 * cut_frac) as u64;
        OpenOptions::new().write(true).open(&path).unwrap().set_len(cut).unwrap();
        append_bytes(&path, &junk);

        let whole = |(l, r): &(&Lsn, &Vec<u8>)| l.segment < last || l.offset + framed(r) <= cut;
        let expected: Vec<Vec<u8>> =
            lsns.iter().zip(&recs).filter(whole).map(|(_, r)| r.clone()).collect();
        let good: u64 = lsns
            .iter()
            .zip(&recs)
            .filter(|x| x.0.segment == last)
            .filter(whole)
            .map(|(_, r)| framed(r))
            .sum();
        let (wal, got, stats) = open(dir.path(), cfg.clone());
        prop_assert_eq!(bytes_of(&got), expected.clone());
        prop_assert_eq!(stats.truncated_bytes, cut + junk.len() as u64 - good);
        prop_assert_eq!(stats.corrupt_segments, 0);

        wal.append(b"next").unwrap();
        drop(wal);
        let (_, got, stats) = open(dir.path(), cfg);
        let mut expected = expected;
        expected.push(b"next".to_vec());
        prop_assert_eq!(bytes_of(&got), expected);
        prop_assert_eq!(stats.truncated_bytes, 0);
    }
}

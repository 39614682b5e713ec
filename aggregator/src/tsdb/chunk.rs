//! Gorilla-compressed chunks (Pelkonen et al., VLDB 2015): timestamps as delta-of-delta in
//! variable-width buckets, values XORed with their predecessor storing only the meaningful
//! bits. Regular 15-second samples of a slowly changing value take about 1.4 bytes.
//!
//! Layout: first timestamp (zigzag varint), first value (64 bits), then per sample the
//! timestamp's delta-of-delta and the value's XOR. The sample count is kept beside the bytes.
//!
//! Persisted blocks use a second encoding where it fits ([`encode_block_chunk`]): most metric
//! values are decimals with few fractional digits (CPU seconds in hundredths, byte counts,
//! sizes), whose float bits change almost entirely from one sample to the next, so XOR saves
//! little. Scaled to integers they are written as packed chunks ([`super::packed`]): residuals
//! of the predictor that fits the chunk, in Rice codes. Blocks written earlier hold them as
//! delta-of-delta in variable-width buckets (encodings 1 and 2), still read here. A chunk whose
//! values do not all round-trip bit for bit through such a scaling (NaN, staleness markers,
//! binary fractions, -0.0) stays Gorilla.

use super::packed::{self, ENCODING_PACKED};

/// Bucket widths of timestamp deltas-of-deltas (Gorilla's).
const TIME_BUCKETS: &[u8] = &[7, 9, 12];

/// Bucket widths of scaled-integer value deltas-of-deltas (encodings 1 and 2, read only).
const VALUE_BUCKETS: &[u8] = &[7, 13, 20, 32];

/// Appends bits to a byte vector, most significant first.
#[derive(Debug, Clone, Default)]
struct BitWriter {
    bytes: Vec<u8>,
    /// Bits used in the last byte (0 = start a new byte).
    used: u8,
}

impl BitWriter {
    fn write_bit(&mut self, bit: bool) {
        if self.used == 0 {
            self.bytes.push(0);
        }
        if bit {
            let last = self.bytes.len() - 1;
            self.bytes[last] |= 0x80 >> self.used;
        }
        self.used = (self.used + 1) % 8;
    }

    fn write_bits(&mut self, value: u64, n: u8) {
        let mut left = usize::from(n);
        while left > 0 {
            if self.used == 0 {
                self.bytes.push(0);
            }
            let free = 8 - usize::from(self.used);
            let take = free.min(left);
            let bits = ((value >> (left - take)) & ((1u64 << take) - 1)) as u8;
            let last = self.bytes.len() - 1;
            self.bytes[last] |= bits << (free - take);
            self.used = ((usize::from(self.used) + take) % 8) as u8;
            left -= take;
        }
    }

    /// A signed value in the smallest of `widths` (bits, two's complement) that holds it:
    /// `0` for zero, then `10`, `110`, ... before each width, all ones and 64 bits past them.
    fn write_bucketed(&mut self, v: i64, widths: &[u8]) {
        if v == 0 {
            self.write_bit(false);
            return;
        }
        for (i, &width) in widths.iter().enumerate() {
            let limit = 1i64 << (width - 1);
            if (-limit..limit).contains(&v) {
                let prefix = i as u8 + 2;
                self.write_bits((1u64 << prefix) - 2, prefix);
                self.write_bits(v as u64 & ((1u64 << width) - 1), width);
                return;
            }
        }
        let prefix = widths.len() as u8 + 1;
        self.write_bits((1u64 << prefix) - 1, prefix);
        self.write_bits(v as u64, 64);
    }

    fn write_varint(&mut self, v: i64) {
        let mut z = ((v << 1) ^ (v >> 63)) as u64;
        loop {
            let byte = (z & 0x7f) as u8;
            z >>= 7;
            if z == 0 {
                self.write_bits(u64::from(byte), 8);
                return;
            }
            self.write_bits(u64::from(byte | 0x80), 8);
        }
    }
}

/// Reads bits written by [`BitWriter`].
struct BitReader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl BitReader<'_> {
    fn read_bit(&mut self) -> Option<bool> {
        let byte = *self.bytes.get(self.pos / 8)?;
        let bit = byte & (0x80 >> (self.pos % 8)) != 0;
        self.pos += 1;
        Some(bit)
    }

    fn read_bits(&mut self, n: u8) -> Option<u64> {
        let mut left = usize::from(n);
        if self.pos + left > self.bytes.len() * 8 {
            return None;
        }
        let mut v = 0u64;
        while left > 0 {
            let byte = self.bytes[self.pos / 8];
            let avail = 8 - self.pos % 8;
            let take = avail.min(left);
            let bits = (u64::from(byte) >> (avail - take)) & ((1u64 << take) - 1);
            v = (v << take) | bits;
            self.pos += take;
            left -= take;
        }
        Some(v)
    }

    /// Reads what [`BitWriter::write_bucketed`] wrote with the same `widths`.
    fn read_bucketed(&mut self, widths: &[u8]) -> Option<i64> {
        let mut ones = 0;
        while ones <= widths.len() && self.read_bit()? {
            ones += 1;
        }
        match ones {
            0 => Some(0),
            n if n > widths.len() => Some(self.read_bits(64)? as i64),
            n => {
                let width = widths[n - 1];
                Some(sign_extend(self.read_bits(width)?, u32::from(width)))
            }
        }
    }

    fn read_varint(&mut self) -> Option<i64> {
        let mut z = 0u64;
        for shift in (0..70).step_by(7) {
            let byte = self.read_bits(8)?;
            z |= (byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(((z >> 1) as i64) ^ -((z & 1) as i64));
            }
        }
        None
    }
}

/// A chunk being appended to, in timestamp order.
#[derive(Debug, Clone, Default)]
pub struct ChunkWriter {
    bits: BitWriter,
    count: u32,
    first_t: i64,
    last_t: i64,
    last_delta: i64,
    last_v: u64,
    leading: u8,
    trailing: u8,
}

impl ChunkWriter {
    /// Samples appended.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// Timestamp of the first sample (meaningless when empty).
    pub fn first_t(&self) -> i64 {
        self.first_t
    }

    /// Timestamp of the last sample (meaningless when empty).
    pub fn last_t(&self) -> i64 {
        self.last_t
    }

    /// Encoded bytes so far.
    pub fn bytes(&self) -> &[u8] {
        &self.bits.bytes
    }

    /// Appends a sample; `t` must be after the last one.
    pub fn append(&mut self, t: i64, v: f64) {
        let v = v.to_bits();
        match self.count {
            0 => {
                self.bits.write_varint(t);
                self.bits.write_bits(v, 64);
                self.first_t = t;
                self.leading = u8::MAX;
            }
            1 => {
                let delta = t - self.last_t;
                self.bits.write_varint(delta);
                self.last_delta = delta;
                self.write_value(v);
            }
            _ => {
                let delta = t - self.last_t;
                self.bits
                    .write_bucketed(delta - self.last_delta, TIME_BUCKETS);
                self.last_delta = delta;
                self.write_value(v);
            }
        }
        self.last_t = t;
        self.last_v = v;
        self.count += 1;
    }

    fn write_value(&mut self, v: u64) {
        let xor = v ^ self.last_v;
        if xor == 0 {
            self.bits.write_bit(false);
            return;
        }
        self.bits.write_bit(true);
        let leading = (xor.leading_zeros() as u8).min(31);
        let trailing = xor.trailing_zeros() as u8;
        if self.leading != u8::MAX && leading >= self.leading && trailing >= self.trailing {
            // fits in the previous window of meaningful bits
            self.bits.write_bit(false);
            let width = 64 - self.leading - self.trailing;
            self.bits.write_bits(xor >> self.trailing, width);
        } else {
            self.bits.write_bit(true);
            let width = 64 - leading - trailing;
            self.bits.write_bits(u64::from(leading), 5);
            // width is 1..=64; 64 is stored as 0
            self.bits.write_bits(u64::from(width) & 0x3f, 6);
            self.bits.write_bits(xor >> trailing, width);
            self.leading = leading;
            self.trailing = trailing;
        }
    }

    /// The samples, decoded.
    pub fn iter(&self) -> ChunkIter<'_> {
        ChunkIter::new(&self.bits.bytes, self.count)
    }
}

/// Decodes the samples of a chunk.
pub struct ChunkIter<'a> {
    r: BitReader<'a>,
    left: u32,
    read: u32,
    t: i64,
    delta: i64,
    v: u64,
    leading: u8,
    trailing: u8,
}

impl<'a> ChunkIter<'a> {
    /// Iterates the `count` samples encoded in `bytes`.
    pub fn new(bytes: &'a [u8], count: u32) -> Self {
        ChunkIter {
            r: BitReader { bytes, pos: 0 },
            left: count,
            read: 0,
            t: 0,
            delta: 0,
            v: 0,
            leading: 0,
            trailing: 0,
        }
    }

    fn read_value(&mut self) -> Option<()> {
        if !self.r.read_bit()? {
            return Some(());
        }
        if self.r.read_bit()? {
            self.leading = self.r.read_bits(5)? as u8;
            let mut width = self.r.read_bits(6)? as u8;
            if width == 0 {
                width = 64;
            }
            self.trailing = 64 - self.leading - width;
        }
        let width = 64 - self.leading - self.trailing;
        let bits = self.r.read_bits(width)?;
        self.v ^= bits << self.trailing;
        Some(())
    }

    fn step(&mut self) -> Option<(i64, f64)> {
        match self.read {
            0 => {
                self.t = self.r.read_varint()?;
                self.v = self.r.read_bits(64)?;
            }
            1 => {
                self.delta = self.r.read_varint()?;
                self.t += self.delta;
                self.read_value()?;
            }
            _ => {
                self.delta += self.r.read_bucketed(TIME_BUCKETS)?;
                self.t += self.delta;
                self.read_value()?;
            }
        }
        self.read += 1;
        Some((self.t, f64::from_bits(self.v)))
    }
}

/// First byte of a chunk in a block: how it is encoded.
const ENCODING_GORILLA: u8 = 0;
/// Scaled integers (blocks written before the common factor).
const ENCODING_DECIMAL: u8 = 1;
/// Scaled integers whose steps are stored divided by their greatest common divisor (byte
/// counts in whole pages or blocks move in multiples of 4096), as delta-of-delta in buckets
/// (blocks written before packed chunks, [`ENCODING_PACKED`]).
const ENCODING_DECIMAL_FACTOR: u8 = 2;

/// Largest common step divided out of a chunk's values.
const MAX_FACTOR: u64 = 1 << 52;

/// Largest scaled integer kept (exactly representable in an f64).
const MAX_SCALED: f64 = 9_007_199_254_740_992.0;

/// The number of fractional decimal digits (0 to 6) with which every value survives scaling to
/// an integer and back bit for bit, if there is one.
fn decimal_scale(values: impl Iterator<Item = f64> + Clone) -> Option<u8> {
    (0..=6u8).find(|&digits| {
        let p = 10f64.powi(i32::from(digits));
        values.clone().all(|v| {
            let x = (v * p).round();
            x.abs() < MAX_SCALED && ((x as i64) as f64 / p).to_bits() == v.to_bits()
        })
    })
}

/// Encodes samples (time-ordered, non-empty) for a block: a tag byte, then a packed chunk
/// ([`super::packed`]) of scaled integers when every value fits ([`decimal_scale`]), otherwise
/// a Gorilla chunk.
pub fn encode_block_chunk(samples: &[(i64, f64)]) -> Vec<u8> {
    let Some(digits) = decimal_scale(samples.iter().map(|s| s.1)) else {
        let mut w = ChunkWriter::default();
        for &(t, v) in samples {
            w.append(t, v);
        }
        let mut out = Vec::with_capacity(w.bytes().len() + 1);
        out.push(ENCODING_GORILLA);
        out.extend_from_slice(w.bytes());
        return out;
    };
    let p = 10f64.powi(i32::from(digits));
    let xs: Vec<i64> = samples.iter().map(|s| (s.1 * p).round() as i64).collect();
    let factor = match xs
        .windows(2)
        .fold(0u64, |g, w| gcd(g, w[1].wrapping_sub(w[0]).unsigned_abs()))
    {
        g @ 2..=MAX_FACTOR => g as i64,
        _ => 1,
    };
    packed::encode(samples, digits, &xs, factor)
}

/// Decodes a chunk written by [`encode_block_chunk`] (or an earlier encoding) holding `count`
/// samples from `mint` to `maxt` (its first and last timestamps, from the block index).
pub fn decode_block_chunk(
    bytes: &[u8],
    count: u32,
    mint: i64,
    maxt: i64,
) -> Result<Vec<(i64, f64)>, String> {
    let (&tag, rest) = bytes.split_first().ok_or("empty chunk")?;
    let out: Vec<(i64, f64)> = match tag {
        ENCODING_GORILLA => ChunkIter::new(rest, count).collect(),
        ENCODING_PACKED => packed::decode(rest, count, mint, maxt)?,
        ENCODING_DECIMAL | ENCODING_DECIMAL_FACTOR => {
            let (&digits, rest) = rest.split_first().ok_or("truncated chunk")?;
            if digits > 6 {
                return Err(format!("chunk scale {digits} out of range"));
            }
            let p = 10f64.powi(i32::from(digits));
            let mut r = BitReader {
                bytes: rest,
                pos: 0,
            };
            let factor = if tag == ENCODING_DECIMAL_FACTOR {
                match r.read_varint() {
                    Some(f) if f >= 1 => f,
                    _ => return Err("bad chunk step factor".into()),
                }
            } else {
                1
            };
            let mut out = Vec::with_capacity(count as usize);
            let mut first = 0i64;
            let (mut t, mut x, mut dt, mut dx) = (0i64, 0i64, 0i64, 0i64);
            for i in 0..count {
                let step = match i {
                    0 => r.read_varint().zip(r.read_varint()).map(|(a, b)| {
                        t = a;
                        x = b;
                    }),
                    1 => r.read_varint().zip(r.read_varint()).map(|(a, b)| {
                        dt = a;
                        dx = b;
                        t = t.wrapping_add(dt);
                        x = x.wrapping_add(dx);
                    }),
                    _ => r.read_bucketed(TIME_BUCKETS).and_then(|ddt| {
                        let ddx = r.read_bucketed(VALUE_BUCKETS)?;
                        dt = dt.wrapping_add(ddt);
                        dx = dx.wrapping_add(ddx);
                        t = t.wrapping_add(dt);
                        x = x.wrapping_add(dx);
                        Some(())
                    }),
                };
                if step.is_none() {
                    break;
                }
                if i == 0 {
                    first = x;
                }
                // x counts common steps from the first value
                let value = first.wrapping_add((x.wrapping_sub(first)).wrapping_mul(factor));
                out.push((t, value as f64 / p));
            }
            out
        }
        other => return Err(format!("unknown chunk encoding {other}")),
    };
    if out.len() != count as usize {
        return Err(format!("chunk holds {} of its {count} samples", out.len()));
    }
    Ok(out)
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

fn sign_extend(v: u64, bits: u32) -> i64 {
    let shift = 64 - bits;
    ((v << shift) as i64) >> shift
}

impl Iterator for ChunkIter<'_> {
    type Item = (i64, f64);

    fn next(&mut self) -> Option<(i64, f64)> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let s = self.step();
        if s.is_none() {
            self.left = 0;
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn round_trip(samples: &[(i64, f64)]) {
        let mut w = ChunkWriter::default();
        for &(t, v) in samples {
            w.append(t, v);
        }
        let back: Vec<(i64, f64)> = ChunkIter::new(w.bytes(), w.count()).collect();
        assert_eq!(back.len(), samples.len());
        for (a, b) in back.iter().zip(samples) {
            assert_eq!(a.0, b.0);
            assert_eq!(a.1.to_bits(), b.1.to_bits(), "{} vs {}", a.1, b.1);
        }
    }

    #[test]
    fn regular_samples_compress_to_about_a_byte_and_a_half() {
        let mut w = ChunkWriter::default();
        let mut v = 1000.0;
        for i in 0..240 {
            v += [0.0, 1.0, 0.0, 2.0, 0.0, 0.0, 3.0][i % 7];
            w.append(1_700_000_000_000 + i as i64 * 15_000, v);
        }
        let per_sample = w.bytes().len() as f64 / 240.0;
        assert!(per_sample < 2.0, "{per_sample} bytes per sample");
        round_trip(&w.iter().collect::<Vec<_>>());
    }

    #[test]
    fn edge_values() {
        round_trip(&[
            (i64::MIN / 4, f64::NAN),
            (-5, f64::INFINITY),
            (0, f64::NEG_INFINITY),
            (1, -0.0),
            (2, f64::from_bits(0x7ff0_0000_0000_0002)),
            (i64::MAX / 4, f64::MIN_POSITIVE),
            (i64::MAX / 4 + 1, 1e300),
        ]);
    }

    #[test]
    fn bucket_edges_round_trip() {
        let mut samples = vec![(0, 0.0), (1000, 1.0)];
        let mut t = 1000;
        let mut delta = 1000;
        for dod in [
            63, 64, -64, -65, 255, 256, -256, -257, 2047, 2048, -2048, -2049, 0,
        ] {
            delta += dod;
            t += delta;
            samples.push((t, t as f64));
        }
        round_trip(&samples);
    }

    fn block_round_trip(samples: &[(i64, f64)]) -> usize {
        let bytes = encode_block_chunk(samples);
        let (mint, maxt) = (samples[0].0, samples[samples.len() - 1].0);
        let back = decode_block_chunk(&bytes, samples.len() as u32, mint, maxt).unwrap();
        assert_eq!(back.len(), samples.len());
        for (a, b) in back.iter().zip(samples) {
            assert_eq!(a.0, b.0);
            assert_eq!(a.1.to_bits(), b.1.to_bits(), "{} vs {}", a.1, b.1);
        }
        bytes.len()
    }

    #[test]
    fn decimal_counters_take_far_less_than_gorilla_in_blocks() {
        // CPU seconds in hundredths with a wandering rate, sampled every 10 minutes
        let mut ticks = 123_456_789u64;
        let samples: Vec<(i64, f64)> = (0..120)
            .map(|i| {
                ticks += 55_000 + (i * 7919 % 600) as u64;
                (1_700_000_000_000 + i * 600_000, ticks as f64 / 100.0)
            })
            .collect();
        let mut gorilla = ChunkWriter::default();
        for &(t, v) in &samples {
            gorilla.append(t, v);
        }
        let packed = block_round_trip(&samples);
        assert_eq!(encode_block_chunk(&samples)[0], ENCODING_PACKED);
        assert!(
            packed * 2 < gorilla.bytes().len(),
            "{packed} bytes vs Gorilla's {}",
            gorilla.bytes().len()
        );
    }

    #[test]
    fn whole_pages_are_stored_as_page_counts() {
        // available memory moving in whole 4 KiB pages
        let mut bytes = 8_000_000_000i64;
        let mut rng = 1;
        let pages: Vec<(i64, f64)> = (0..120)
            .map(|i| {
                bytes += super::super::packed::tests::noise(&mut rng, 1000) * 4096;
                (i * 600_000, bytes as f64)
            })
            .collect();
        let plus_one: Vec<(i64, f64)> = pages
            .iter()
            .enumerate()
            .map(|(i, &(t, v))| (t, v + (i % 2) as f64))
            .collect();
        let with_factor = block_round_trip(&pages);
        let without = block_round_trip(&plus_one);
        assert!(
            with_factor + 120 < without,
            "{with_factor} bytes with the page factor, {without} without"
        );
    }

    /// `(i * 15 s, i² / 100)` for i in 0..50 as the encoder of encoding 2 wrote it.
    const ENCODING_2_SQUARES: [u8; 69] = [
        2, 2, 2, 0, 0, 176, 234, 1, 2, 64, 144, 36, 9, 2, 64, 144, 36, 9, 2, 64, 144, 36, 9, 2, 64,
        144, 36, 9, 2, 64, 144, 36, 9, 2, 64, 144, 36, 9, 2, 64, 144, 36, 9, 2, 64, 144, 36, 9, 2,
        64, 144, 36, 9, 2, 64, 144, 36, 9, 2, 64, 144, 36, 9, 2, 64, 144, 36, 9, 2,
    ];

    #[test]
    fn chunks_of_the_earlier_decimal_encodings_still_read() {
        let samples: Vec<(i64, f64)> = (0..50)
            .map(|i| (i * 15_000, (i * i) as f64 / 100.0))
            .collect();
        let back = decode_block_chunk(&ENCODING_2_SQUARES, 50, 0, 49 * 15_000).unwrap();
        assert_eq!(back, samples);
        // encoding 1 is encoding 2 without the factor (here 1: the varint byte 0x02)
        assert_eq!(
            &ENCODING_2_SQUARES[..3],
            &[ENCODING_DECIMAL_FACTOR, 2, 0x02]
        );
        let mut old = vec![ENCODING_DECIMAL, 2];
        old.extend_from_slice(&ENCODING_2_SQUARES[3..]);
        let back = decode_block_chunk(&old, 50, 0, 49 * 15_000).unwrap();
        assert_eq!(back, samples);
        // and the packed encoding takes a fraction of it
        let packed = encode_block_chunk(&samples);
        assert_eq!(packed[0], ENCODING_PACKED);
        assert!(packed.len() * 3 < ENCODING_2_SQUARES.len(), "{packed:?}");
    }

    #[test]
    fn values_without_a_decimal_scale_stay_gorilla_in_blocks() {
        let samples = [
            (0, 1.0),
            (1, f64::from_bits(0x7ff0_0000_0000_0002)),
            (2, 1.0 / 3.0),
        ];
        assert_eq!(encode_block_chunk(&samples)[0], ENCODING_GORILLA);
        block_round_trip(&samples);
        assert!(decode_block_chunk(&[9, 0], 1, 0, 0).is_err());
        assert!(decode_block_chunk(&[ENCODING_DECIMAL, 2], 3, 0, 2).is_err());
        assert!(decode_block_chunk(&[ENCODING_PACKED, 2], 3, 0, 2).is_err());
    }

    /// Values a block must keep bit for bit: decimals of any scale, and the ones that are not.
    fn block_value() -> impl Strategy<Value = f64> {
        prop_oneof![
            8 => (-(1i64 << 52)..(1i64 << 52), 0u32..7)
                .prop_map(|(x, d)| x as f64 / 10f64.powi(d as i32)),
            1 => prop::sample::select(vec![
                f64::NAN,
                f64::from_bits(0x7ff0_0000_0000_0002), // staleness marker
                f64::INFINITY,
                f64::NEG_INFINITY,
                -0.0,
                0.0,
                f64::MAX,
                f64::MIN,
                f64::MIN_POSITIVE,
                5e-324,
                1e300,
                -1e-300,
                1.0 / 3.0,
            ]),
            1 => any::<f64>(),
        ]
    }

    /// Timestamps from `start`: runs at a regular step, then irregular gaps.
    fn block_times(start: i64, steps: &[(i64, bool)]) -> Vec<i64> {
        let mut t = start;
        let mut out = vec![t];
        for &(gap, regular) in steps {
            t += if regular { 15_000 } else { gap };
            out.push(t);
        }
        out
    }

    proptest! {
        #[test]
        fn mixed_values_and_times_round_trip_in_blocks(
            start in -1_000_000_000_000i64..1_000_000_000_000,
            steps in proptest::collection::vec((1i64..100_000_000, any::<bool>()), 0..400),
            values in proptest::collection::vec(block_value(), 401),
            special_every in 1usize..500,
        ) {
            let times = block_times(start, &steps);
            let samples: Vec<(i64, f64)> = times
                .iter()
                .zip(&values)
                .enumerate()
                // mostly decimal chunks, some with a special value now and then
                .map(|(i, (&t, &v))| {
                    let decimal = (v * 100.0).round() / 100.0;
                    (t, if i % special_every == 0 || !decimal.is_finite() { v } else { decimal })
                })
                .collect();
            block_round_trip(&samples);
        }

        #[test]
        fn decimal_values_round_trip_in_blocks(
            start in -1_000_000_000_000i64..1_000_000_000_000,
            gaps in proptest::collection::vec(1i64..10_000_000, 0..300),
            digits in 0u32..7,
            ints in proptest::collection::vec(-(1i64 << 52)..(1i64 << 52), 300),
        ) {
            let p = 10f64.powi(digits as i32);
            let mut t = start;
            let mut samples = vec![(t, ints[0] as f64 / p)];
            for (i, g) in gaps.iter().enumerate() {
                t += g;
                samples.push((t, ints[i + 1] as f64 / p));
            }
            block_round_trip(&samples);
        }

        #[test]
        fn any_values_round_trip_in_blocks(
            start in -1_000_000_000_000i64..1_000_000_000_000,
            gaps in proptest::collection::vec(1i64..10_000_000, 0..300),
            values in proptest::collection::vec(any::<f64>(), 300),
        ) {
            let mut t = start;
            let mut samples = vec![(t, values[0])];
            for (i, g) in gaps.iter().enumerate() {
                t += g;
                samples.push((t, values[i + 1]));
            }
            block_round_trip(&samples);
        }

        #[test]
        fn any_increasing_series_round_trips(
            start in -1_000_000_000_000i64..1_000_000_000_000,
            gaps in proptest::collection::vec(1i64..10_000_000, 0..300),
            values in proptest::collection::vec(any::<f64>(), 300),
        ) {
            let mut t = start;
            let mut samples = vec![(t, values[0])];
            for (i, g) in gaps.iter().enumerate() {
                t += g;
                samples.push((t, values[i + 1]));
            }
            round_trip(&samples);
        }
    }
}

//! Gorilla-compressed chunks (Pelkonen et al., VLDB 2015): timestamps as delta-of-delta in
//! variable-width buckets, values XORed with their predecessor storing only the meaningful
//! bits. Regular 15-second samples of a slowly changing value take about 1.4 bytes.
//!
//! Layout: first timestamp (zigzag varint), first value (64 bits), then per sample the
//! timestamp's delta-of-delta and the value's XOR. The sample count is kept beside the bytes.

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
        for i in (0..n).rev() {
            self.write_bit((value >> i) & 1 == 1);
        }
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
        let mut v = 0u64;
        for _ in 0..n {
            v = (v << 1) | u64::from(self.read_bit()?);
        }
        Some(v)
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
                let dod = delta - self.last_delta;
                match dod {
                    0 => self.bits.write_bit(false),
                    -64..=63 => {
                        self.bits.write_bits(0b10, 2);
                        self.bits.write_bits((dod as u64) & 0x7f, 7);
                    }
                    -256..=255 => {
                        self.bits.write_bits(0b110, 3);
                        self.bits.write_bits((dod as u64) & 0x1ff, 9);
                    }
                    -2048..=2047 => {
                        self.bits.write_bits(0b1110, 4);
                        self.bits.write_bits((dod as u64) & 0xfff, 12);
                    }
                    _ => {
                        self.bits.write_bits(0b1111, 4);
                        self.bits.write_bits(dod as u64, 64);
                    }
                }
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
                let mut prefix = 0u8;
                while prefix < 4 && self.r.read_bit()? {
                    prefix += 1;
                }
                let dod = match prefix {
                    0 => 0,
                    1 => sign_extend(self.r.read_bits(7)?, 7),
                    2 => sign_extend(self.r.read_bits(9)?, 9),
                    3 => sign_extend(self.r.read_bits(12)?, 12),
                    _ => self.r.read_bits(64)? as i64,
                };
                self.delta += dod;
                self.t += self.delta;
                self.read_value()?;
            }
        }
        self.read += 1;
        Some((self.t, f64::from_bits(self.v)))
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

    proptest! {
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

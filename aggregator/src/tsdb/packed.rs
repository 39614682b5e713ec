//! Packed chunks (block chunk encoding 3): decimal values as scaled integers, and their
//! timestamps, each coded as residuals of the predictor that fits the chunk best, in Rice codes
//! whose parameter is chosen per chunk.
//!
//! Scraped series at a fixed interval have even timestamps, and the chunk's first and last
//! timestamps are already in the block index, so such a chunk's times cost nothing. Values
//! differ in kind: a counter with a steady rate is best predicted from its last step
//! (delta-of-delta), one whose rate varies around a level from the chunk's typical step, and a
//! gauge that jumps around a level (running processes) from that level. For each the encoder
//! measures the bits the three predictors need and keeps the smallest. A Rice code with
//! parameter `k` writes a residual's zigzagged value `u` as `u >> k` in unary and its low `k`
//! bits: close to the entropy of the two-sided geometric residuals of such predictions, where
//! fixed-width buckets waste up to their width. A residual too large for the unary part is
//! written with its length instead (an outlier such as a log rotation freeing a gigabyte).
//!
//! ```text
//! chunk  = 3, digits (byte), factor (varint), times, values
//! seq    = order << 6 | k (byte), bases (varints), residuals (Rice codes with parameter k;
//!          none when k = 63: every residual is 0)
//! order  0 level: base c; x[i] = c + r[i]
//!        1 step:  base x[0], c; x[i] = x[i-1] + c + r[i]
//!        2 delta-of-delta: base x[0], d, c; x[1] = x[0] + d;
//!          x[i] = x[i-1] + (x[i-1] - x[i-2]) + c + r[i]
//!        3 even (times only): step = (last - first) / (n - 1), nothing stored
//! ```
//!
//! Times never store `x[0]` (the index has it). Values are `(x[0] + (x[i] - x[0]) * factor) /
//! 10^digits`, exactly as in encoding 2. All arithmetic wraps, so any i64 sequence round-trips.

/// The tag byte of a packed chunk.
pub const ENCODING_PACKED: u8 = 3;

/// Most samples a packed chunk may hold (blocks write at most 1,024 per chunk); a larger count
/// in an index is damage, refused before anything is allocated.
pub const MAX_SAMPLES: u32 = 1 << 16;

/// Largest unary part of a Rice code; this many zeros announce a residual written with its
/// length instead.
const QMAX: u32 = 24;

/// Rice parameter that marks a sequence whose residuals are all zero (none are written).
const ALL_ZERO: u8 = 63;

const ORDER_LEVEL: u8 = 0;
const ORDER_STEP: u8 = 1;
const ORDER_DOD: u8 = 2;
const ORDER_EVEN: u8 = 3;

/// Writes bits most significant first.
#[derive(Default)]
struct BitOut {
    bytes: Vec<u8>,
    /// Pending bits, in the low `n` bits.
    acc: u64,
    n: u32,
}

impl BitOut {
    /// The low `bits` (at most 64) of `v`.
    fn put(&mut self, v: u64, bits: u32) {
        if bits > 32 {
            self.put(v >> 32, bits - 32);
            self.put(v & 0xffff_ffff, 32);
            return;
        }
        if bits == 0 {
            return;
        }
        self.acc = (self.acc << bits) | (v & ((1u64 << bits) - 1));
        self.n += bits;
        while self.n >= 8 {
            self.n -= 8;
            self.bytes.push((self.acc >> self.n) as u8);
        }
        self.acc &= (1u64 << self.n) - 1;
    }

    /// A zigzag varint in whole bytes (on the bit stream, not aligned).
    fn put_varint(&mut self, v: i64) {
        let mut z = zigzag(v);
        loop {
            let byte = (z & 0x7f) as u8;
            z >>= 7;
            if z == 0 {
                self.put(u64::from(byte), 8);
                return;
            }
            self.put(u64::from(byte | 0x80), 8);
        }
    }

    fn put_rice(&mut self, u: u64, k: u8) {
        let q = u >> k;
        if q < u64::from(QMAX) {
            // q zeros, then a one
            self.put(1, q as u32 + 1);
            self.put(u, u32::from(k));
        } else {
            let len = bit_len(u).max(1);
            self.put(0, QMAX);
            self.put(u64::from(len - 1), 6);
            self.put(u, len);
        }
    }

    fn finish(mut self) -> Vec<u8> {
        if self.n > 0 {
            self.bytes.push((self.acc << (8 - self.n)) as u8);
        }
        self.bytes
    }
}

/// Reads what [`BitOut`] wrote, a 64-bit word at a time.
struct BitIn<'a> {
    bytes: &'a [u8],
    /// Next byte to load.
    pos: usize,
    /// Loaded bits, left-aligned; the rest are zero.
    acc: u64,
    n: u32,
}

impl<'a> BitIn<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        BitIn {
            bytes,
            pos: 0,
            acc: 0,
            n: 0,
        }
    }

    fn refill(&mut self) {
        while self.n <= 56 {
            let Some(&b) = self.bytes.get(self.pos) else {
                return;
            };
            self.pos += 1;
            self.acc |= u64::from(b) << (56 - self.n);
            self.n += 8;
        }
    }

    fn get(&mut self, bits: u32) -> Option<u64> {
        if bits > 56 {
            let hi = self.get(bits - 32)?;
            return Some((hi << 32) | self.get(32)?);
        }
        if bits == 0 {
            return Some(0);
        }
        if self.n < bits {
            self.refill();
            if self.n < bits {
                return None;
            }
        }
        let v = self.acc >> (64 - bits);
        self.acc <<= bits;
        self.n -= bits;
        Some(v)
    }

    fn get_varint(&mut self) -> Option<i64> {
        let mut z = 0u64;
        for shift in (0..70).step_by(7) {
            let byte = self.get(8)?;
            z |= (byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(unzigzag(z));
            }
        }
        None
    }

    fn get_rice(&mut self, k: u8) -> Option<u64> {
        if self.n < QMAX + 1 {
            self.refill();
        }
        let zeros = self.acc.leading_zeros();
        if zeros < QMAX && zeros < self.n {
            self.acc <<= zeros + 1;
            self.n -= zeros + 1;
            let low = self.get(u32::from(k))?;
            Some((u64::from(zeros) << k) | low)
        } else if zeros >= QMAX && self.n >= QMAX {
            self.acc <<= QMAX;
            self.n -= QMAX;
            let len = self.get(6)? as u32 + 1;
            self.get(len)
        } else {
            None
        }
    }
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(z: u64) -> i64 {
    ((z >> 1) as i64) ^ -((z & 1) as i64)
}

fn bit_len(u: u64) -> u32 {
    64 - u.leading_zeros()
}

/// Bits of `us` as Rice codes with parameter `k`.
fn rice_bits(us: &[u64], k: u8) -> u64 {
    us.iter()
        .map(|&u| {
            let q = u >> k;
            if q < u64::from(QMAX) {
                q + 1 + u64::from(k)
            } else {
                u64::from(QMAX + 6 + bit_len(u).max(1))
            }
        })
        .sum()
}

/// The best Rice parameter for `us` and the bits it takes (`ALL_ZERO` and 0 when all are
/// zero). Tries parameters around the logarithms of the median and of the mean.
fn best_k(us: &[u64]) -> (u8, u64) {
    if us.iter().all(|&u| u == 0) {
        return (ALL_ZERO, 0);
    }
    let mut sorted = us.to_vec();
    let mid = sorted.len() / 2;
    let median = *sorted.select_nth_unstable(mid).1;
    let mean = (us.iter().map(|&u| u128::from(u)).sum::<u128>() / us.len() as u128) as u64;
    let lo = bit_len(median).saturating_sub(2);
    let hi = bit_len(mean).max(lo + 1).min(62);
    (lo..=hi)
        .map(|k| (k as u8, rice_bits(us, k as u8)))
        .min_by_key(|&(_, bits)| bits)
        .unwrap_or((62, u64::MAX))
}

fn median(xs: &[i64]) -> i64 {
    if xs.is_empty() {
        return 0;
    }
    let mut v = xs.to_vec();
    let mid = v.len() / 2;
    *v.select_nth_unstable(mid).1
}

/// One way of writing a sequence: its order, bases and zigzagged residuals.
struct Plan {
    order: u8,
    bases: Vec<i64>,
    residuals: Vec<u64>,
}

impl Plan {
    fn level(xs: &[i64], skip: usize) -> Plan {
        let c = median(&xs[skip..]);
        Plan {
            order: ORDER_LEVEL,
            bases: vec![c],
            residuals: xs[skip..]
                .iter()
                .map(|&x| zigzag(x.wrapping_sub(c)))
                .collect(),
        }
    }

    fn step(xs: &[i64], first_known: bool, deltas: &[i64]) -> Plan {
        let c = median(deltas);
        let mut bases = if first_known { vec![] } else { vec![xs[0]] };
        bases.push(c);
        Plan {
            order: ORDER_STEP,
            bases,
            residuals: deltas.iter().map(|&d| zigzag(d.wrapping_sub(c))).collect(),
        }
    }

    fn dod(xs: &[i64], first_known: bool, deltas: &[i64]) -> Plan {
        let dods: Vec<i64> = deltas.windows(2).map(|w| w[1].wrapping_sub(w[0])).collect();
        let c = median(&dods);
        let mut bases = if first_known { vec![] } else { vec![xs[0]] };
        bases.push(deltas.first().copied().unwrap_or(0));
        bases.push(c);
        Plan {
            order: ORDER_DOD,
            bases,
            residuals: dods.iter().map(|&d| zigzag(d.wrapping_sub(c))).collect(),
        }
    }

    /// Bits the plan takes with its best parameter, and that parameter.
    fn cost(&self) -> (u64, u8) {
        let (k, bits) = best_k(&self.residuals);
        let bases: u64 = self
            .bases
            .iter()
            .map(|&b| 8 * u64::from(bit_len(zigzag(b)).max(1).div_ceil(7)))
            .sum();
        (8 + bases + bits, k)
    }

    fn write(&self, k: u8, w: &mut BitOut) {
        w.put(u64::from(self.order << 6 | k), 8);
        for &b in &self.bases {
            w.put_varint(b);
        }
        if k != ALL_ZERO {
            for &u in &self.residuals {
                w.put_rice(u, k);
            }
        }
    }
}

/// Writes `xs` (non-empty) with the predictor that takes the fewest bits. `first_known`: the
/// reader knows `xs[0]` (and, for evenly spaced sequences, the last element).
fn write_seq(xs: &[i64], first_known: bool, w: &mut BitOut) {
    let deltas: Vec<i64> = xs.windows(2).map(|p| p[1].wrapping_sub(p[0])).collect();
    if first_known && is_even(xs, &deltas) {
        w.put(u64::from(ORDER_EVEN << 6), 8);
        return;
    }
    let skip = usize::from(first_known);
    let plans = [
        Plan::level(xs, skip),
        Plan::step(xs, first_known, &deltas),
        Plan::dod(xs, first_known, &deltas),
    ];
    let (plan, k) = plans
        .iter()
        .map(|p| (p, p.cost()))
        .min_by_key(|(_, (bits, _))| *bits)
        .map(|(p, (_, k))| (p, k))
        .unwrap_or((&plans[1], ALL_ZERO));
    plan.write(k, w);
}

/// Whether the steps of `xs` are all equal and recoverable from its ends without overflow.
fn is_even(xs: &[i64], deltas: &[i64]) -> bool {
    let Some(&d) = deltas.first() else {
        return true;
    };
    deltas.iter().all(|&x| x == d)
        && xs[xs.len() - 1].checked_sub(xs[0]) == d.checked_mul(deltas.len() as i64)
}

/// Reads a sequence of `n` (at least 1) written by [`write_seq`] into `out`. `known`: its first
/// and last elements when the writer was told the first is known.
fn read_seq(r: &mut BitIn, n: usize, known: Option<(i64, i64)>, out: &mut Vec<i64>) -> Option<()> {
    let head = r.get(8)? as u8;
    let (order, k) = (head >> 6, head & 0x3f);
    let residual = |r: &mut BitIn| -> Option<i64> {
        if k == ALL_ZERO {
            Some(0)
        } else {
            r.get_rice(k).map(unzigzag)
        }
    };
    let first = match known {
        Some((first, _)) => Some(first),
        None if order == ORDER_LEVEL => None,
        None => Some(r.get_varint()?),
    };
    match order {
        ORDER_LEVEL => {
            let c = r.get_varint()?;
            if let Some(f) = first {
                out.push(f);
            }
            while out.len() < n {
                out.push(c.wrapping_add(residual(r)?));
            }
        }
        ORDER_STEP => {
            let c = r.get_varint()?;
            let mut x = first?;
            out.push(x);
            while out.len() < n {
                x = x.wrapping_add(c).wrapping_add(residual(r)?);
                out.push(x);
            }
        }
        ORDER_DOD => {
            let mut d = r.get_varint()?;
            let c = r.get_varint()?;
            let mut x = first?;
            out.push(x);
            if n > 1 {
                x = x.wrapping_add(d);
                out.push(x);
            }
            while out.len() < n {
                d = d.wrapping_add(c).wrapping_add(residual(r)?);
                x = x.wrapping_add(d);
                out.push(x);
            }
        }
        _ => {
            let (first, last) = known?;
            let step = if n > 1 {
                last.wrapping_sub(first) / (n as i64 - 1)
            } else {
                0
            };
            let mut x = first;
            out.push(x);
            while out.len() < n {
                x = x.wrapping_add(step);
                out.push(x);
            }
        }
    }
    Some(())
}

/// Encodes samples (time-ordered, non-empty) whose values are all `v = x / 10^digits` for
/// integers `x` (`scaled`, one per sample), with the steps between them divided by `factor`.
pub fn encode(samples: &[(i64, f64)], digits: u8, scaled: &[i64], factor: i64) -> Vec<u8> {
    let mut w = BitOut {
        bytes: vec![ENCODING_PACKED, digits],
        ..BitOut::default()
    };
    w.put_varint(factor);
    let times: Vec<i64> = samples.iter().map(|s| s.0).collect();
    write_seq(&times, true, &mut w);
    let first = scaled.first().copied().unwrap_or(0);
    let units: Vec<i64> = scaled
        .iter()
        .map(|&x| first.wrapping_add(x.wrapping_sub(first) / factor))
        .collect();
    write_seq(&units, false, &mut w);
    w.finish()
}

/// Decodes a packed chunk (after its tag byte) of `count` samples whose first and last
/// timestamps are `mint` and `maxt`.
pub fn decode(bytes: &[u8], count: u32, mint: i64, maxt: i64) -> Result<Vec<(i64, f64)>, String> {
    let (&digits, rest) = bytes.split_first().ok_or("truncated chunk")?;
    if digits > 6 {
        return Err(format!("chunk scale {digits} out of range"));
    }
    if count > MAX_SAMPLES {
        return Err(format!("packed chunk claims {count} samples"));
    }
    let n = count as usize;
    if n == 0 {
        return Ok(Vec::new());
    }
    let p = 10f64.powi(i32::from(digits));
    let mut r = BitIn::new(rest);
    let factor = match r.get_varint() {
        Some(f) if f >= 1 => f,
        _ => return Err("bad chunk step factor".into()),
    };
    let mut times = Vec::with_capacity(n);
    let mut units = Vec::with_capacity(n);
    read_seq(&mut r, n, Some((mint, maxt)), &mut times)
        .and_then(|()| read_seq(&mut r, n, None, &mut units))
        .ok_or_else(|| format!("packed chunk truncated ({count} samples)"))?;
    if times.last() != Some(&maxt) {
        return Err(format!(
            "packed chunk ends at {:?}, its index at {maxt}",
            times.last()
        ));
    }
    let first = units[0];
    Ok(times
        .into_iter()
        .zip(units)
        .map(|(t, x)| {
            let value = first.wrapping_add(x.wrapping_sub(first).wrapping_mul(factor));
            (t, value as f64 / p)
        })
        .collect())
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use proptest::prelude::*;

    fn seq_round_trip(xs: &[i64], first_known: bool) -> usize {
        let mut w = BitOut::default();
        write_seq(xs, first_known, &mut w);
        let bytes = w.finish();
        let mut out = Vec::new();
        let known = first_known.then(|| (xs[0], xs[xs.len() - 1]));
        read_seq(&mut BitIn::new(&bytes), xs.len(), known, &mut out).unwrap();
        assert_eq!(out, xs);
        bytes.len()
    }

    #[test]
    fn evenly_spaced_times_take_one_byte() {
        let times: Vec<i64> = (0..1024).map(|i| 1_700_000_000_000 + i * 15_000).collect();
        assert_eq!(seq_round_trip(&times, true), 1);
        assert_eq!(seq_round_trip(&times[..1], true), 1);
        // an end that does not divide evenly is not "even"
        let mut t = times.clone();
        t[1023] += 1;
        assert!(seq_round_trip(&t, true) > 1);
    }

    /// Uniform in `[-half, half]` (splitmix64).
    pub(in crate::tsdb) fn noise(state: &mut u64, half: i64) -> i64 {
        *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) % (2 * half as u64 + 1)) as i64 - half
    }

    #[test]
    fn each_predictor_is_chosen_where_it_fits() {
        let mut rng = 7u64;
        let order = |xs: &[i64]| {
            let mut w = BitOut::default();
            write_seq(xs, false, &mut w);
            w.finish()[0] >> 6
        };
        // a gauge jumping around a level
        let procs: Vec<i64> = (0..144).map(|_| 4 + noise(&mut rng, 3)).collect();
        assert_eq!(order(&procs), ORDER_LEVEL);
        // a counter whose rate varies around a level
        let mut x = 0;
        let noisy: Vec<i64> = (0..144)
            .map(|_| {
                x += 60_000 + noise(&mut rng, 500);
                x
            })
            .collect();
        assert_eq!(order(&noisy), ORDER_STEP);
        // a counter whose rate wanders
        let (mut x, mut rate) = (0i64, 60_000i64);
        let wandering: Vec<i64> = (0..144)
            .map(|_| {
                rate += noise(&mut rng, 100);
                x += rate;
                x
            })
            .collect();
        assert_eq!(order(&wandering), ORDER_DOD);
        for xs in [&procs, &noisy, &wandering] {
            seq_round_trip(xs, false);
        }
    }

    #[test]
    fn a_constant_takes_its_value_and_a_header() {
        let xs = vec![1_699_000_000i64; 144];
        assert_eq!(seq_round_trip(&xs, false), 1 + 5);
    }

    #[test]
    fn outliers_are_written_with_their_length() {
        let mut xs: Vec<i64> = (0..100).map(|i| i % 3).collect();
        xs[50] = i64::MAX;
        xs[60] = i64::MIN;
        let bytes = seq_round_trip(&xs, false);
        assert!(bytes < 60, "{bytes} bytes");
    }

    #[test]
    fn truncated_and_bad_chunks_are_errors() {
        let samples: Vec<(i64, f64)> = (0..50).map(|i| (i * 1000, (i * i) as f64)).collect();
        let scaled: Vec<i64> = (0..50).map(|i| i * i).collect();
        let bytes = encode(&samples, 0, &scaled, 1);
        let ok = decode(&bytes[1..], 50, 0, 49_000).unwrap();
        assert_eq!(ok, samples);
        for cut in 1..bytes.len() - 1 {
            assert!(
                decode(&bytes[1..cut], 50, 0, 49_000).is_err(),
                "cut at {cut}"
            );
        }
        assert!(decode(&[7, 2], 5, 0, 10).is_err());
        assert!(decode(&[0, 0], 5, 0, 10).is_err());
    }

    proptest! {
        #[test]
        fn any_sequence_round_trips(
            xs in proptest::collection::vec(any::<i64>(), 1..300),
            first_known: bool,
        ) {
            seq_round_trip(&xs, first_known);
        }

        #[test]
        fn damaged_chunks_are_refused_or_read_without_panic(
            samples in proptest::collection::vec((0i64..1_000_000, -1_000_000i64..1_000_000), 1..200),
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
            cut in any::<prop::sample::Index>(),
            count in 0u32..300,
            junk in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut t = 1_700_000_000_000i64;
            let pairs: Vec<(i64, f64)> = samples
                .iter()
                .map(|&(gap, x)| {
                    t += gap + 1;
                    (t, x as f64 / 100.0)
                })
                .collect();
            let scaled: Vec<i64> = samples.iter().map(|s| s.1).collect();
            let mut bytes = encode(&pairs, 2, &scaled, 1);
            for (at, byte) in flips {
                let i = at.index(bytes.len() - 1) + 1;
                bytes[i] ^= byte;
            }
            bytes.truncate(cut.index(bytes.len()) + 1);
            let (mint, maxt) = (pairs[0].0, pairs[pairs.len() - 1].0);
            let _ = decode(&bytes[1..], pairs.len() as u32, mint, maxt);
            let _ = decode(&bytes[1..], count, mint, maxt);
            let _ = decode(&junk, count, mint, maxt);
        }

        #[test]
        fn small_steps_round_trip(
            start: i64,
            steps in proptest::collection::vec(-3i64..4, 1..300),
            first_known: bool,
        ) {
            let xs: Vec<i64> = steps
                .iter()
                .scan(start, |x, &s| {
                    *x = x.wrapping_add(s);
                    Some(*x)
                })
                .collect();
            seq_round_trip(&xs, first_known);
        }
    }
}

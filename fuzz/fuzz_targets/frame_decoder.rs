//! Fuzzes the frame decoder with arbitrary bytes, whole and split into pieces, the way a
//! hostile agent (or a corrupt disk) would present them. It must never panic or allocate past
//! the limits.
#![no_main]

use fleetwatch_common::codec::{self, FrameDecoder, FrameLimits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = FrameLimits { max_payload_bytes: 1 << 20, max_decoded_bytes: 4 << 20 };
    let _ = codec::decode(data, &limits);
    let mut dec = FrameDecoder::new(limits);
    let split = data.first().copied().unwrap_or(1).max(1) as usize;
    for piece in data.chunks(split) {
        dec.extend(piece);
        while let Ok(Some(_)) = dec.next_message() {}
    }
});

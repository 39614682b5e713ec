//! The time-series storage engine under [`crate::store`]: Gorilla-compressed chunks, the
//! in-memory head with its inverted index, persisted blocks and downsampled rollups.

pub mod block;
pub mod chunk;
pub mod head;
pub mod rollup;

//! The time-series storage engine under [`crate::store`]: Gorilla-compressed chunks and the
//! in-memory head with its inverted index.

pub mod block;
pub mod chunk;
pub mod head;

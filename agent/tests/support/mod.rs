//! Helpers shared by the agent's integration tests.

#![allow(dead_code, unreachable_pub, missing_docs)]

pub mod quic;

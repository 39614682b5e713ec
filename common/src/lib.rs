//! fleetwatch-common: the data model, the wire protocol and codec, batch validation, and the PKI
//! and TLS helpers that the agent and the aggregator share.
//!
//! Nothing in this crate does network I/O; the protocol is driven by its callers.

pub mod codec;
pub mod model;
pub mod pki;
pub mod protocol;
pub mod tls;
pub mod validate;

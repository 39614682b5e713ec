//! fleetwatch-agent: collects host metrics, buffers every batch durably in sled, and ships the
//! batches to an aggregator over mutual-TLS QUIC.
//!
//! Data flows sources → [`collector`] (batching) → [`buffer`] → [`shipper`] → aggregator.

pub mod buffer;
pub mod collector;
pub mod config;
pub mod memory;
pub mod metrics;
pub mod run;
pub mod shipper;
pub mod sources;
pub mod transport;

//! fleetwatch-aggregator: receives agents' batches over mutual-TLS QUIC, stores them durably,
//! keeps the fleet's state and serves the Prometheus-compatible HTTP API.
//!
//! Data flows [`ingest`] → [`store`] (write-ahead log, then index) → [`promql`] → [`http`];
//! [`fleet`] tracks who is up. [`server`] wires it together; [`demo`] runs it with a local agent.

pub mod config;
pub mod dashboards;
pub mod demo;
pub mod fleet;
pub mod http;
pub mod ingest;
pub mod live;
pub mod logstore;
pub mod metrics;
pub mod notify;
pub mod promql;
pub mod remote_write;
pub mod rules;
pub mod server;
pub mod state;
pub mod store;
pub mod tsdb;
pub mod wal;

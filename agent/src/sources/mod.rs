//! Sources: one module per kind of thing the agent collects.

pub mod checks;
pub mod host;

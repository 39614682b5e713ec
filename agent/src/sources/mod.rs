//! Sources: one module per kind of thing the agent collects.

pub mod checks;
pub mod host;
pub mod push;
pub mod scrape;

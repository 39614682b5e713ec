//! Sources: one module per kind of thing the agent collects.

pub mod checks;
pub mod host;
pub mod logs;
pub mod push;
pub mod scrape;

//! fleetwatch benchmarks: criterion benches of hot functions (`benches/`) and whole-system
//! measurements (`src/bin/`) that run fleetwatch side by side with the system it is compared to.

pub mod browser;
pub mod fleet_sim;
pub mod loopback;
pub mod procfs;

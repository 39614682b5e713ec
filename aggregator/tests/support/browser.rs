//! Headless Chromium for the dashboard's browser tests: the benches' browser module (one piece
//! of code for the tests and the `dashboard_render` bench; the benches crate depends on this
//! one, so it is included by path rather than as a dependency), a skip-or-fail rule for a
//! machine without Chromium, and the screenshot folder the README names.

#![allow(unreachable_pub, dead_code)]

#[allow(unreachable_pub, dead_code)]
#[path = "../../../benches/src/browser.rs"]
mod shared;

pub use shared::{missing, testid, Browser};

use std::path::PathBuf;

/// Starts a browser, or `None` (the test skips) when Chromium or chromedriver is not installed;
/// with `FLEETWATCH_REQUIRE_PEERS=1` (as `.ci/run` sets) a missing browser fails the test.
pub async fn start_or_skip() -> Option<Browser> {
    if let Some(msg) = missing() {
        if std::env::var("FLEETWATCH_REQUIRE_PEERS").is_ok_and(|v| v == "1") {
            panic!("{msg}");
        }
        eprintln!("SKIPPED: {msg}");
        return None;
    }
    match Browser::start().await {
        Ok(b) => Some(b),
        Err(e) => panic!("cannot start headless Chromium: {e:#}"),
    }
}

/// `target/dashboard-screenshots/` under the workspace root: every page the tests visit.
pub fn screenshot_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the aggregator crate sits in the workspace")
        .join("target")
        .join("dashboard-screenshots")
}

/// Saves a screenshot named `name`.png into [`screenshot_dir`].
pub async fn shot(browser: &Browser, name: &str) {
    let path = screenshot_dir().join(format!("{name}.png"));
    if let Err(e) = browser.screenshot(&path).await {
        panic!("screenshot {name}: {e:#}");
    }
}

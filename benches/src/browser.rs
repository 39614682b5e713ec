//! Headless Chromium driven over WebDriver: Debian's `chromium` and `chromedriver`, a fresh
//! profile per browser, and waits that poll the page up to a deadline. The dashboard's browser
//! tests (`aggregator/tests/dashboard.rs`, which include this file) and the `dashboard_render`
//! bench use it.
//!
//! chromedriver runs in its own process group on a free loopback port; the browser it starts
//! joins that group, so dropping a [`Browser`] kills both by the group's id.

use anyhow::{bail, Context};
use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use std::future::Future;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Debian's Chromium (package `chromium`).
pub const CHROMIUM: &str = "/usr/bin/chromium";
/// Debian's chromedriver (package `chromium-driver`).
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// What is missing to run a browser, in words with the command that installs it; `None` when
/// both programs are there.
pub fn missing() -> Option<String> {
    let absent: Vec<&str> = [CHROMIUM, CHROMEDRIVER]
        .into_iter()
        .filter(|p| !Path::new(p).is_file())
        .collect();
    if absent.is_empty() {
        None
    } else {
        Some(format!(
            "{} not found: apt-get install -y chromium chromium-driver",
            absent.join(" and ")
        ))
    }
}

/// The CSS selector of a `data-testid` (`[data-testid="ID"]`).
pub fn testid(id: &str) -> String {
    format!("[data-testid=\"{id}\"]")
}

/// A headless Chromium session; the driver and the browser are killed when it drops.
pub struct Browser {
    /// The WebDriver session.
    pub client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver on a free port and opens a headless Chromium (1400x900) through it.
    pub async fn start() -> anyhow::Result<Browser> {
        if let Some(what) = missing() {
            bail!("{what}");
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let profile = tempfile::tempdir()?;
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg(format!(
                "--log-path={}",
                profile.path().join("chromedriver.log").display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {CHROMEDRIVER}"))?;
        let browser = Browser {
            client: connect(port, profile.path()).await?,
            driver,
            _profile: profile,
        };
        // Pages may take long on a busy machine: the waits below are the deadlines that count.
        browser
            .client
            .update_timeouts(fantoccini::wd::TimeoutConfiguration::new(
                None,
                Some(Duration::from_secs(120)),
                None,
            ))
            .await?;
        Ok(browser)
    }

    /// Polls `f` every 200 ms until it gives `Some`, for at most `timeout`; then fails with
    /// `what`, the last error, and the page's URL and text.
    pub async fn wait<T, F, Fut>(
        &self,
        what: &str,
        timeout: Duration,
        mut f: F,
    ) -> anyhow::Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = anyhow::Result<Option<T>>>,
    {
        let deadline = Instant::now() + timeout;
        let mut last_error = String::new();
        loop {
            match f().await {
                Ok(Some(v)) => return Ok(v),
                Ok(None) => {}
                Err(e) => last_error = format!("{e:#}"),
            }
            if Instant::now() >= deadline {
                let url = self
                    .client
                    .current_url()
                    .await
                    .map(|u| u.to_string())
                    .unwrap_or_default();
                let text = self.page_text().await;
                bail!(
                    "timed out after {timeout:?} waiting for {what} (last error: {last_error}) at {url}; the page says:\n{text}"
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The first element matching `css`, waiting for it up to `timeout`.
    pub async fn wait_css(&self, css: &str, timeout: Duration) -> anyhow::Result<Element> {
        self.wait(css, timeout, || async {
            Ok(self
                .client
                .find_all(Locator::Css(css))
                .await?
                .into_iter()
                .next())
        })
        .await
    }

    /// The element with `data-testid` `id`, waiting for it up to `timeout`.
    pub async fn wait_testid(&self, id: &str, timeout: Duration) -> anyhow::Result<Element> {
        self.wait_css(&testid(id), timeout).await
    }

    /// Clicks the element with `data-testid` `id`, waiting for it up to `timeout`.
    pub async fn click_testid(&self, id: &str, timeout: Duration) -> anyhow::Result<()> {
        self.wait_testid(id, timeout).await?.click().await?;
        Ok(())
    }

    /// How many elements match `css` now.
    pub async fn count(&self, css: &str) -> anyhow::Result<usize> {
        Ok(self.client.find_all(Locator::Css(css)).await?.len())
    }

    /// The visible text of the whole page (empty when it cannot be read).
    pub async fn page_text(&self) -> String {
        match self.client.find(Locator::Css("body")).await {
            Ok(body) => body.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// Runs `script` in the page and returns its value.
    pub async fn js(&self, script: &str) -> anyhow::Result<serde_json::Value> {
        Ok(self.client.execute(script, Vec::new()).await?)
    }

    /// Saves a PNG of the viewport to `path` (its directory is created).
    pub async fn screenshot(&self, path: &Path) -> anyhow::Result<PathBuf> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating the screenshot folder {}", dir.display()))?;
        }
        let png = self.client.screenshot().await?;
        std::fs::write(path, png).with_context(|| format!("writing {}", path.display()))?;
        Ok(path.to_path_buf())
    }

    /// Ends the WebDriver session (the browser quits), then stops chromedriver.
    pub async fn quit(self) {
        let _ = self.client.clone().close().await;
        // Drop kills what is left.
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The driver leads its own process group; the browser it started is in it.
        let pgid = self.driver.id() as i32;
        // SAFETY: kill has no memory preconditions; the group is the one started above.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Opens a session once chromedriver answers (it takes a moment to listen).
async fn connect(port: u16, profile: &Path) -> anyhow::Result<Client> {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": CHROMIUM,
            "args": [
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--window-size=1400,900",
                format!("--user-data-dir={}", profile.join("chromium").display()),
            ],
        }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match ClientBuilder::new(connector.clone())
            .capabilities(caps.clone())
            .connect(&url)
            .await
        {
            Ok(client) => return Ok(client),
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => {
                let log =
                    std::fs::read_to_string(profile.join("chromedriver.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                bail!(
                    "no WebDriver session from chromedriver on port {port}: {e}\nchromedriver log (last lines, newest first):\n{}",
                    tail.join("\n")
                );
            }
        }
    }
}

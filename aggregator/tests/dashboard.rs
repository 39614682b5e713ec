//! The dashboard in a real browser: headless Chromium (Debian's `chromium`, driven through
//! `chromedriver`) against a real aggregator and a real agent over loopback QUIC. Signs in
//! through the form, finds this host in the overview and watches it change live, opens the host
//! page, acknowledges a firing alert, searches logs, runs a query (and a bad one), checks that a
//! viewer gets no buttons that change anything, and that the page comes back to live by itself
//! after the aggregator restarts. Every page visited is saved as a PNG in
//! `target/dashboard-screenshots/`.
//!
//! Only `data-testid` attributes (the dashboard plan's list) find things on the page; every wait
//! polls up to a generous deadline, nothing is timed.

#[path = "support/browser.rs"]
mod browser;
mod support;

use browser::{shot, start_or_skip, testid, Browser};
use fantoccini::Locator;
use serde_json::Value;
use std::time::Duration;
use support::{urlencode, Fleet, TOKEN};

const VIEWER_TOKEN: &str = "test-viewer-token-9876543210";
/// Long enough for a busy two-core machine; waits end as soon as the page is ready.
const WAIT: Duration = Duration::from_secs(60);
const HOST: &str = "web-1";

/// A rule that fires at once for every host sending CPU figures (so for this one).
const RULES: &str = r#"groups:
  - name: dashboard
    interval: 1s
    rules:
      - alert: DashboardTestAlert
        expr: fleetwatch_cpu_usage_ratio >= 0
        labels:
          severity: warning
        annotations:
          summary: "raised by the dashboard test on {{ $labels.host }}"
"#;

/// A fleet whose aggregator also takes a viewer token, with one agent (host metrics every
/// second) tailing `app.log`.
fn fleet_with_agent(rules: Option<&str>) -> Fleet {
    let fleet = Fleet::new();
    std::fs::write(fleet.path("viewer.token"), VIEWER_TOKEN).unwrap();
    let toml = std::fs::read_to_string(fleet.path("aggregator.toml")).unwrap();
    std::fs::write(
        fleet.path("aggregator.toml"),
        toml.replacen(
            "[http]\n",
            &format!(
                "[http]\nviewer_token_file = \"{}\"\n",
                fleet.path("viewer.token").display()
            ),
            1,
        ),
    )
    .unwrap();
    if let Some(rules) = rules {
        fleet.use_rules(rules);
    }
    std::fs::write(fleet.path("app.log"), "").unwrap();
    fleet.agent_config(
        HOST,
        1.0,
        &format!(
            "[logs]\nscan_interval_seconds = 0.2\nread_interval_seconds = 0.05\n[[logs.files]]\nname = \"app\"\npaths = [\"{}\"]\nstart_at = \"beginning\"\n",
            fleet.path("app.log").display()
        ),
    );
    fleet
}

fn base_url(fleet: &Fleet) -> String {
    format!("http://127.0.0.1:{}/", fleet.http_port)
}

fn row_css(host: &str) -> String {
    format!("{}[data-host=\"{host}\"]", testid("host-row"))
}

/// Signs in through the login form with `token` and waits until the shell shows `role` and a
/// page (the one in the URL, the overview at first).
async fn sign_in(b: &Browser, token: &str, role: &str, screenshot: Option<&str>) {
    let input = b.wait_testid("login-token", WAIT).await.unwrap();
    input.send_keys(token).await.unwrap();
    if let Some(name) = screenshot {
        shot(b, name).await;
    }
    b.click_testid("login-submit", WAIT).await.unwrap();
    b.wait(&format!("the role shown as {role}"), WAIT, || async {
        Ok(text_of(b, &testid("role"))
            .await?
            .filter(|t| t.contains(role)))
    })
    .await
    .unwrap();
    b.wait_css("[data-testid^=\"page-\"]", WAIT).await.unwrap();
}

/// Text of the element matching `css`, or `None` while there is none.
async fn text_of(b: &Browser, css: &str) -> anyhow::Result<Option<String>> {
    match b
        .client
        .find_all(Locator::Css(css))
        .await?
        .into_iter()
        .next()
    {
        Some(e) => Ok(Some(e.text().await?)),
        None => Ok(None),
    }
}

/// Attribute `attr` of the element matching `css`, or `None` while there is none (or no such
/// attribute).
async fn attr_of(b: &Browser, css: &str, attr: &str) -> anyhow::Result<Option<String>> {
    match b
        .client
        .find_all(Locator::Css(css))
        .await?
        .into_iter()
        .next()
    {
        Some(e) => Ok(e.attr(attr).await?),
        None => Ok(None),
    }
}

/// Goes to a page through its link in the navigation bar (no reload) and waits for it.
async fn nav(b: &Browser, page: &str) {
    b.click_testid(&format!("nav-{page}"), WAIT).await.unwrap();
    b.wait_testid(&format!("page-{page}"), WAIT).await.unwrap();
}

/// Marks the document so that a reload (which would drop the mark) shows.
async fn mark_document(b: &Browser) {
    b.js("window.__dashboardTestMark = 'kept'; return true;")
        .await
        .unwrap();
}

async fn assert_not_reloaded(b: &Browser, when: &str) {
    let mark = b
        .js("return window.__dashboardTestMark || null;")
        .await
        .unwrap();
    assert_eq!(
        mark,
        Value::from("kept"),
        "the page was reloaded {when}: the mark set on window is gone"
    );
}

/// Waits until the overview row of `host` shows a last contact (the cell's title, an absolute
/// time from the `hosts` message) other than `before`, and returns it.
async fn wait_last_seen_change(b: &Browser, host: &str, before: Option<&str>) -> String {
    let css = format!("{} [data-col=\"last_seen\"]", row_css(host));
    b.wait(
        &format!("a new last-seen time for {host} (was {before:?})"),
        WAIT,
        || async {
            Ok(attr_of(b, &css, "title")
                .await?
                .filter(|t| !t.is_empty() && Some(t.as_str()) != before))
        },
    )
    .await
    .unwrap()
}

fn api_json(fleet: &Fleet, path: &str) -> Value {
    let (code, body) = fleet.http_get(path).unwrap();
    assert_eq!(code, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_uses_every_page_and_a_viewer_cannot_change_anything() {
    let Some(b) = start_or_skip().await else {
        return;
    };
    let fleet = fleet_with_agent(Some(RULES));
    let _agg = fleet.start_aggregator();
    let _agent = fleet.start_agent(HOST);
    let marker = format!("dashboard-test-line {}", std::process::id());
    std::fs::write(
        fleet.path("app.log"),
        format!("starting up\n{marker} level=info\nsomething else\n"),
    )
    .unwrap();

    // Sign in through the form with the admin token.
    b.client.goto(&base_url(&fleet)).await.unwrap();
    sign_in(&b, TOKEN, "admin", Some("login")).await;
    b.wait_testid("page-overview", WAIT).await.unwrap();

    // This host in the overview, with the live feed connected.
    b.wait_css(&row_css(HOST), WAIT).await.unwrap();
    b.wait("the live feed connected", WAIT, || async {
        Ok(attr_of(&b, &testid("live-state"), "data-state")
            .await?
            .filter(|s| s == "live"))
    })
    .await
    .unwrap();
    b.wait("CPU figures for this host", WAIT, || async {
        let t = text_of(&b, &format!("{} [data-col=\"cpu\"]", row_css(HOST))).await?;
        Ok(t.filter(|t| t.contains('%')))
    })
    .await
    .unwrap();
    shot(&b, "overview").await;

    // A value changes without reloading: with auto refresh off, only the live feed's `hosts`
    // messages can move the host's last contact.
    b.js("location.hash = '#/overview?refresh=off'; return true;")
        .await
        .unwrap();
    b.wait_css(&row_css(HOST), WAIT).await.unwrap();
    mark_document(&b).await;
    let first = wait_last_seen_change(&b, HOST, None).await;
    let second = wait_last_seen_change(&b, HOST, Some(&first)).await;
    let third = wait_last_seen_change(&b, HOST, Some(&second)).await;
    assert!(first != third, "{first} {third}");
    assert_not_reloaded(&b, "while the overview updated live").await;
    shot(&b, "overview-live").await;

    // The host page, through the host's link in the overview: charts, checks, logs, alerts.
    b.wait_css(&format!("{} a", row_css(HOST)), WAIT)
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    b.wait_testid("page-host", WAIT).await.unwrap();
    b.wait("the host's title", WAIT, || async {
        Ok(text_of(&b, &testid("host-title"))
            .await?
            .filter(|t| t.contains(HOST)))
    })
    .await
    .unwrap();
    for chart in [
        "chart-cpu",
        "chart-memory",
        "chart-swap",
        "chart-filesystems",
        "chart-disk-io",
        "chart-network",
        "chart-load",
    ] {
        // uPlot draws on a canvas once the chart has data
        b.wait_css(&format!("{} canvas", testid(chart)), WAIT)
            .await
            .unwrap();
    }
    for part in ["host-checks", "host-logs", "host-alerts"] {
        b.wait_testid(part, WAIT).await.unwrap();
    }
    assert_not_reloaded(&b, "going to the host page").await;
    shot(&b, "host").await;

    // The alert fires; acknowledge it from the alerts page.
    let fingerprint = {
        let mut fp = String::new();
        fleet.wait_for("the test alert firing", WAIT, || {
            let v = api_json(&fleet, "/api/fleet/alerts?state=firing");
            match v["data"]["alerts"].as_array().and_then(|a| {
                a.iter()
                    .find(|a| a["labels"]["alertname"] == "DashboardTestAlert")
            }) {
                Some(a) => {
                    fp = a["fingerprint"].as_str().unwrap_or_default().to_string();
                    !fp.is_empty()
                }
                None => false,
            }
        });
        fp
    };
    nav(&b, "alerts").await;
    let row = format!(
        "{}[data-fingerprint=\"{fingerprint}\"]",
        testid("alert-row")
    );
    b.wait_css(&format!("{row}[data-state=\"firing\"]"), WAIT)
        .await
        .unwrap();
    b.wait_testid("alerts-table", WAIT).await.unwrap();
    b.wait_testid("alerts-history", WAIT).await.unwrap();
    shot(&b, "alerts").await;
    b.wait_css(&format!("{row} {}", testid("alert-ack")), WAIT)
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    b.wait_css(&format!("{row}[data-state=\"acknowledged\"]"), WAIT)
        .await
        .unwrap();
    let v = api_json(&fleet, "/api/fleet/alerts");
    let alert = v["data"]["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["fingerprint"] == fingerprint.as_str())
        .cloned()
        .unwrap_or_else(|| panic!("alert {fingerprint} gone from the API: {v}"));
    assert!(
        alert["acknowledged"].is_object(),
        "the API does not say the alert is acknowledged: {alert}"
    );
    shot(&b, "alerts-acknowledged").await;

    // Logs: the line the agent tailed from app.log.
    nav(&b, "logs").await;
    let selector = b.wait_testid("logs-selector", WAIT).await.unwrap();
    selector.clear().await.unwrap();
    selector
        .send_keys(&format!("{{host=\"{HOST}\"}}"))
        .await
        .unwrap();
    let contains = b.wait_testid("logs-contains", WAIT).await.unwrap();
    contains.clear().await.unwrap();
    contains.send_keys(&marker).await.unwrap();
    let log_rows = format!("{} {}", testid("logs-results"), testid("log-row"));
    b.wait("the tailed line in the log search", WAIT, || async {
        // the agent may not have shipped the line yet: search again until it shows
        b.click_testid("logs-submit", WAIT).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        for row in b.client.find_all(Locator::Css(&log_rows)).await? {
            if row.text().await?.contains(&marker) {
                return Ok(Some(()));
            }
        }
        Ok(None)
    })
    .await
    .unwrap();
    shot(&b, "logs").await;

    // Live tail: a line written now shows up without searching again.
    b.click_testid("logs-tail", WAIT).await.unwrap();
    b.wait("the live tail switched on", WAIT, || async {
        Ok(attr_of(&b, &testid("logs-tail"), "aria-pressed")
            .await?
            .filter(|p| p == "true"))
    })
    .await
    .unwrap();
    // the tail subscribes over the live feed; lines written before it took effect would
    // only show on a new search, so keep writing until one arrives
    let tailed = format!("{marker} from the live tail");
    let mut written = 0;
    let (fleet_ref, b_ref, rows_ref, tailed_ref) = (&fleet, &b, &log_rows, &tailed);
    b.wait(
        "a tailed line in the results without a new search",
        WAIT,
        || {
            written += 1;
            let line = format!("{tailed_ref} #{written}\n");
            async move {
                let mut f = std::fs::OpenOptions::new()
                    .append(true)
                    .open(fleet_ref.path("app.log"))?;
                std::io::Write::write_all(&mut f, line.as_bytes())?;
                tokio::time::sleep(Duration::from_millis(800)).await;
                for row in b_ref.client.find_all(Locator::Css(rows_ref)).await? {
                    if row.text().await?.contains(tailed_ref.as_str()) {
                        return Ok(Some(()));
                    }
                }
                Ok(None)
            }
        },
    )
    .await
    .unwrap();
    assert_not_reloaded(&b, "while tailing logs").await;
    shot(&b, "logs-tail").await;

    // Query explorer: a row per series, then a bad query's error in words.
    nav(&b, "query").await;
    let input = b.wait_testid("query-input", WAIT).await.unwrap();
    input.clear().await.unwrap();
    input.send_keys("fleetwatch_cpu_usage_ratio").await.unwrap();
    b.click_testid("query-run", WAIT).await.unwrap();
    let rows = format!("{} tbody tr", testid("query-table"));
    b.wait("a result row for this host", WAIT, || async {
        for row in b.client.find_all(Locator::Css(&rows)).await? {
            if row.text().await?.contains(HOST) {
                return Ok(Some(()));
            }
        }
        Ok(None)
    })
    .await
    .unwrap();
    b.wait_css(&format!("{} canvas", testid("query-chart")), WAIT)
        .await
        .unwrap();
    shot(&b, "query").await;

    let bad = "sum(rate(fleetwatch_cpu_usage_ratio[5m]";
    let (code, body) = fleet
        .http_get(&format!("/api/v1/query?query={}", urlencode(bad)))
        .unwrap();
    assert_eq!(code, 400, "{body}");
    let api_error = serde_json::from_str::<Value>(&body).unwrap()["error"]
        .as_str()
        .unwrap()
        .to_string();
    input.clear().await.unwrap();
    input.send_keys(bad).await.unwrap();
    b.click_testid("query-run", WAIT).await.unwrap();
    let shown = b
        .wait("the query's error on the page", WAIT, || async {
            Ok(
                text_of(&b, &format!("{} {}", testid("page-query"), testid("error")))
                    .await?
                    .filter(|t| !t.trim().is_empty()),
            )
        })
        .await
        .unwrap();
    assert!(
        shown.contains(&api_error),
        "the page shows {shown:?}, not the aggregator's error {api_error:?}"
    );
    shot(&b, "query-error").await;

    // Dashboards from configuration.
    nav(&b, "dashboards").await;
    b.wait_testid("dashboard-list", WAIT).await.unwrap();
    let link = format!("{}[data-id=\"fleet-hosts\"]", testid("dashboard-link"));
    b.wait_css(&link, WAIT).await.unwrap();
    shot(&b, "dashboards").await;
    b.wait_css(&link, WAIT)
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    // a time chart of this host's figures, drawn from the shipped example's PromQL
    b.wait_css(
        &format!("{}[data-title=\"CPU use by host\"] canvas", testid("panel")),
        WAIT,
    )
    .await
    .unwrap();
    shot(&b, "dashboard-fleet-hosts").await;
    assert_not_reloaded(&b, "moving between pages").await;

    // A viewer: signed in, no button that acknowledges or silences.
    b.click_testid("logout", WAIT).await.unwrap();
    sign_in(&b, VIEWER_TOKEN, "viewer", None).await;
    nav(&b, "alerts").await;
    b.wait_css(&row, WAIT).await.unwrap();
    b.wait_testid("alerts-table", WAIT).await.unwrap();
    for button in ["alert-ack", "alert-silence", "silence-submit"] {
        assert_eq!(
            b.count(&testid(button)).await.unwrap(),
            0,
            "a viewer is shown {button}"
        );
    }
    shot(&b, "alerts-viewer").await;
    b.quit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_comes_back_to_live_after_the_aggregator_restarts() {
    let Some(b) = start_or_skip().await else {
        return;
    };
    let fleet = fleet_with_agent(None);
    let agg = fleet.start_aggregator();
    let _agent = fleet.start_agent(HOST);

    // The link `demo` prints signs in by itself.
    b.client
        .goto(&format!(
            "{}#/login?token={}",
            base_url(&fleet),
            urlencode(TOKEN)
        ))
        .await
        .unwrap();
    b.wait_testid("page-overview", WAIT).await.unwrap();
    b.wait_css(&row_css(HOST), WAIT).await.unwrap();
    let url = b.client.current_url().await.unwrap();
    assert!(
        !url.as_str().contains(TOKEN),
        "the token stays in the URL: {url}"
    );
    b.js("location.hash = '#/overview?refresh=off'; return true;")
        .await
        .unwrap();
    b.wait_css(&row_css(HOST), WAIT).await.unwrap();
    mark_document(&b).await;
    let live = || async {
        Ok(attr_of(&b, &testid("live-state"), "data-state")
            .await?
            .filter(|s| s == "live"))
    };
    b.wait("the live feed connected", WAIT, live).await.unwrap();
    let before = wait_last_seen_change(&b, HOST, None).await;

    // The aggregator stops: the page says it is not live.
    agg.stop();
    b.wait("the page noticing the aggregator is gone", WAIT, || async {
        Ok(attr_of(&b, &testid("live-state"), "data-state")
            .await?
            .filter(|s| s != "live"))
    })
    .await
    .unwrap();
    shot(&b, "overview-reconnecting").await;

    // Back on the same ports with the same data: live again, new data, no reload.
    let _agg = fleet.start_aggregator();
    b.wait("the live feed back after the restart", WAIT, live)
        .await
        .unwrap();
    let after = wait_last_seen_change(&b, HOST, Some(&before)).await;
    wait_last_seen_change(&b, HOST, Some(&after)).await;
    assert_not_reloaded(&b, "across the aggregator's restart").await;
    shot(&b, "overview-after-restart").await;
    b.quit().await;
}

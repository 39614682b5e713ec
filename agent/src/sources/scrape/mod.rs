//! Prometheus scrape targets: one task per `[[scrape]]` target fetches the exposition on its
//! interval, parses it ([`parse`]) against the target's scrape cache ([`state`]), labels it as
//! Prometheus does (`job`, `instance`, target labels, `honor_labels`), adds the `up` and
//! `scrape_*` series and staleness markers, and hands the samples to the collector.

pub mod parse;
pub mod state;

pub use state::{Scraped, TargetState};

use crate::collector::{Collected, Output};
use crate::config::{secs, ScrapeTarget};
use crate::metrics::AgentMetrics;
use fleetwatch_common::model::{now_ms, Label, Series, SeriesSamples};
use parse::{Format, ParseError};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tracing::{debug, info, warn};

/// Prometheus' staleness marker: a NaN with this exact bit pattern means "this series ended".
pub const STALE_NAN: f64 = f64::from_bits(0x7ff0_0000_0000_0002);

/// Why one scrape failed.
#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    /// No answer within the target's timeout.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The connection could not be made.
    #[error("connecting: {0}")]
    Connect(String),
    /// The target answered with a status other than 200.
    #[error("HTTP status {0}")]
    Status(u16),
    /// The body was larger than `max_body_bytes`.
    #[error("body larger than {0} bytes")]
    TooLarge(u64),
    /// The body could not be parsed.
    #[error("parsing the {0} body: {1}")]
    Parse(&'static str, ParseError),
    /// The body was not UTF-8.
    #[error("body is not UTF-8")]
    NotUtf8,
    /// Any other failure of the request.
    #[error("request: {0}")]
    Request(String),
}

impl ScrapeError {
    /// Short reason for `fleetwatch_agent_scrape_failures_total{reason}`.
    pub fn reason(&self) -> &'static str {
        match self {
            ScrapeError::Timeout(_) => "timeout",
            ScrapeError::Connect(_) => "connect",
            ScrapeError::Status(_) => "http_status",
            ScrapeError::TooLarge(_) => "body_too_large",
            ScrapeError::Parse(..) | ScrapeError::NotUtf8 => "parse",
            ScrapeError::Request(_) => "request",
        }
    }
}

/// The labels every series of a target carries: `job`, `instance` (the URL's `host:port`),
/// then the configured labels (which may override both). Empty values are left out.
pub fn target_labels(target: &ScrapeTarget) -> Vec<Label> {
    let instance = reqwest::Url::parse(&target.url)
        .ok()
        .and_then(|u| {
            let host = u.host_str()?.to_string();
            Some(match u.port_or_known_default() {
                Some(p) if host.contains(':') => format!("[{host}]:{p}"),
                Some(p) => format!("{host}:{p}"),
                None => host,
            })
        })
        .unwrap_or_default();
    let mut labels: Vec<Label> = vec![
        Label::new("instance", instance),
        Label::new("job", &target.job),
    ];
    for (k, v) in &target.labels {
        match labels.iter_mut().find(|l| &l.name == k) {
            Some(l) => l.value = v.clone(),
            None => labels.push(Label::new(k, v)),
        }
    }
    labels.retain(|l| !l.value.is_empty());
    labels.sort();
    labels
}

/// The series of one scraped sample with the target's labels applied. With `honor_labels` the
/// scraped labels win; otherwise a clashing scraped label is kept as `exported_<name>`.
pub fn apply_target_labels(
    name: &str,
    mut scraped: Vec<Label>,
    target: &[Label],
    honor_labels: bool,
) -> Series {
    for t in target {
        match scraped.iter().position(|l| l.name == t.name) {
            None => scraped.push(t.clone()),
            Some(_) if honor_labels => {}
            Some(i) => {
                let mut exported = format!("exported_{}", t.name);
                while scraped.iter().any(|l| l.name == exported) {
                    exported.insert_str(0, "exported_");
                }
                scraped[i].name = exported;
                scraped.push(t.clone());
            }
        }
    }
    Series::new(name, scraped)
}

/// Fetches one exposition within the target's timeout, reads it against `state` and turns it
/// into series (in a blocking thread: a 10,000-series body takes milliseconds, which would
/// hold one of the runtime's two workers). `started` is when the scrape began, for
/// `scrape_duration_seconds`.
pub async fn scrape(
    client: &reqwest::Client,
    target: &ScrapeTarget,
    state: &mut TargetState,
    timestamp_ms: i64,
    started: Instant,
) -> Result<Vec<SeriesSamples>, ScrapeError> {
    let timeout = secs(target.timeout());
    let (format, body) = tokio::time::timeout(timeout, fetch(client, target))
        .await
        .map_err(|_| ScrapeError::Timeout(timeout))??;
    let mut owned = std::mem::replace(state, TargetState::new(target));
    let target = target.clone();
    let (owned, result) = tokio::task::spawn_blocking(move || {
        let result = match owned.read(&body, format) {
            Ok(scraped) => Ok(scraped.on_success(&target, timestamp_ms, started.elapsed())),
            Err(e) => Err(ScrapeError::Parse(format.as_str(), e)),
        };
        (owned, result)
    })
    .await
    .map_err(|e| ScrapeError::Request(e.to_string()))?;
    *state = owned;
    result
}

/// Fetches one exposition: its format (from `Content-Type`) and the body.
pub async fn fetch(
    client: &reqwest::Client,
    target: &ScrapeTarget,
) -> Result<(Format, String), ScrapeError> {
    let request_error = |e: reqwest::Error| {
        if e.is_timeout() {
            ScrapeError::Timeout(secs(target.timeout()))
        } else if e.is_connect() {
            ScrapeError::Connect(error_chain(&e))
        } else {
            ScrapeError::Request(error_chain(&e))
        }
    };
    let mut response = client
        .get(&target.url)
        .header(reqwest::header::ACCEPT, parse::ACCEPT_HEADER)
        .header(
            "X-Prometheus-Scrape-Timeout-Seconds",
            format!("{}", target.timeout()),
        )
        .send()
        .await
        .map_err(request_error)?;
    if response.status() != reqwest::StatusCode::OK {
        return Err(ScrapeError::Status(response.status().as_u16()));
    }
    let format = Format::from_content_type(
        response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or(""),
    );
    if response
        .content_length()
        .is_some_and(|n| n > target.max_body_bytes)
    {
        return Err(ScrapeError::TooLarge(target.max_body_bytes));
    }
    let mut body = Vec::with_capacity(response.content_length().unwrap_or(0) as usize);
    while let Some(chunk) = response.chunk().await.map_err(request_error)? {
        if (body.len() + chunk.len()) as u64 > target.max_body_bytes {
            return Err(ScrapeError::TooLarge(target.max_body_bytes));
        }
        body.extend_from_slice(&chunk);
    }
    let text = String::from_utf8(body).map_err(|_| ScrapeError::NotUtf8)?;
    Ok((format, text))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

/// The HTTP client scrapes use.
pub fn client() -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .user_agent(concat!("fleetwatch-agent/", env!("CARGO_PKG_VERSION")))
        .no_proxy()
        .build()
}

/// Scrapes one target until `shutdown`, following changes of its configuration; when the
/// configuration becomes `None` (the target was removed) it writes staleness markers and ends.
pub async fn run(
    mut config: watch::Receiver<Option<ScrapeTarget>>,
    out: Output,
    metrics: AgentMetrics,
    mut shutdown: watch::Receiver<bool>,
) {
    let client = match client() {
        Ok(c) => c,
        Err(error) => {
            warn!(%error, "cannot build the HTTP client; scraping disabled");
            return;
        }
    };
    let Some(mut target) = config.borrow_and_update().clone() else {
        return;
    };
    let mut state = TargetState::new(&target);
    let mut tick = tokio::time::interval(secs(target.interval_seconds));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            changed = config.changed() => {
                let next = if changed.is_ok() { config.borrow_and_update().clone() } else { None };
                match next {
                    Some(next) => {
                        if next.interval_seconds != target.interval_seconds {
                            tick = tokio::time::interval_at(
                                tokio::time::Instant::now() + secs(next.interval_seconds),
                                secs(next.interval_seconds),
                            );
                            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                        }
                        if !state.fits(&next) {
                            // a different label set is a different set of series
                            let _ = out.send(Collected::Metrics(state.on_removed(now_ms()))).await;
                            state = TargetState::new(&next);
                        }
                        target = next;
                        info!(target = target.target_name(), interval = target.interval_seconds, "scrape target reconfigured");
                        continue;
                    }
                    None => {
                        let _ = out.send(Collected::Metrics(state.on_removed(now_ms()))).await;
                        info!(target = target.target_name(), "scrape target removed");
                        return;
                    }
                }
            }
            _ = shutdown.changed() => return,
        }
        let name = target.target_name().to_string();
        let timestamp_ms = now_ms();
        let started = Instant::now();
        let result = scrape(&client, &target, &mut state, timestamp_ms, started).await;
        metrics.scrapes.with_label_values(&[&name]).inc();
        let series = match result {
            Ok(series) => {
                if failing {
                    info!(target = %name, "scrape target is back");
                    failing = false;
                }
                series
            }
            Err(error) => {
                metrics
                    .scrape_failures
                    .with_label_values(&[&name, error.reason()])
                    .inc();
                if failing {
                    debug!(target = %name, %error, "scrape failed");
                } else {
                    warn!(target = %name, url = %target.url, %error, "scrape failed");
                    failing = true;
                }
                state.on_failure(timestamp_ms, started.elapsed())
            }
        };
        if out.send(Collected::Metrics(series)).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(url: &str) -> ScrapeTarget {
        ScrapeTarget {
            job: "app".into(),
            name: String::new(),
            url: url.into(),
            interval_seconds: 1.0,
            timeout_seconds: None,
            labels: Default::default(),
            honor_labels: false,
            honor_timestamps: true,
            max_body_bytes: 1 << 20,
        }
    }

    #[test]
    fn instance_is_host_and_port_and_labels_override() {
        let mut t = target("http://127.0.0.1:9100/metrics");
        assert_eq!(
            target_labels(&t),
            vec![
                Label::new("instance", "127.0.0.1:9100"),
                Label::new("job", "app")
            ]
        );
        t.url = "https://example.org/metrics".into();
        t.labels.insert("instance".into(), "web".into());
        t.labels.insert("team".into(), "a".into());
        assert_eq!(
            target_labels(&t),
            vec![
                Label::new("instance", "web"),
                Label::new("job", "app"),
                Label::new("team", "a")
            ]
        );
        t.labels.insert("instance".into(), "".into());
        assert!(target_labels(&t).iter().all(|l| l.name != "instance"));
    }

    #[test]
    fn clashing_labels_become_exported_unless_honored() {
        let target = vec![Label::new("instance", "h:1"), Label::new("job", "app")];
        let scraped = vec![Label::new("job", "theirs"), Label::new("exported_job", "x")];
        let s = apply_target_labels("m", scraped.clone(), &target, false);
        assert_eq!(s.label("job"), Some("app"));
        assert_eq!(s.label("exported_exported_job"), Some("theirs"));
        assert_eq!(s.label("exported_job"), Some("x"));
        let s = apply_target_labels("m", scraped, &target, true);
        assert_eq!(s.label("job"), Some("theirs"));
        assert_eq!(s.label("instance"), Some("h:1"));
    }

    #[tokio::test]
    async fn scrape_over_http_reports_status_and_size_failures() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let mut buf = vec![0u8; 4096];
                    let n = sock.read(&mut buf).await.unwrap_or(0);
                    let req = String::from_utf8_lossy(&buf[..n]).to_string();
                    let (status, ctype, body) = if req.starts_with("GET /om") {
                        assert!(
                            req.contains("application/openmetrics-text;version=1.0.0"),
                            "{req}"
                        );
                        (
                            "200 OK",
                            "application/openmetrics-text; version=1.0.0",
                            "# TYPE x counter\nx_total 3\n# EOF\n".to_string(),
                        )
                    } else if req.starts_with("GET /big") {
                        ("200 OK", "text/plain", "y 1\n".repeat(1000))
                    } else if req.starts_with("GET /bad") {
                        ("200 OK", "text/plain", "y{ 1\n".to_string())
                    } else {
                        ("404 Not Found", "text/plain", "no".to_string())
                    };
                    let resp = format!("HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
                    let _ = sock.write_all(resp.as_bytes()).await;
                });
            }
        });
        let client = client().unwrap();
        let mut t = target(&format!("http://{addr}/om"));
        let (format, body) = fetch(&client, &t).await.unwrap();
        assert_eq!(format, Format::OpenMetrics);
        let s = parse::parse(&body, format).unwrap();
        assert_eq!(s[0].name, "x_total");
        assert_eq!(s[0].kind, fleetwatch_common::model::MetricKind::Counter);
        let mut state = TargetState::new(&t);
        let series = scrape(&client, &t, &mut state, 1000, Instant::now())
            .await
            .unwrap();
        assert_eq!(series[0].series.name, "x_total");
        assert_eq!(series[0].series.label("job"), Some("app"));
        assert_eq!(state.cached_series(), 1);
        let scrape_error = |t: ScrapeTarget| {
            let client = client.clone();
            async move {
                let mut state = TargetState::new(&t);
                scrape(&client, &t, &mut state, 1000, Instant::now())
                    .await
                    .unwrap_err()
            }
        };
        t.url = format!("http://{addr}/missing");
        assert_eq!(scrape_error(t.clone()).await.reason(), "http_status");
        t.url = format!("http://{addr}/bad");
        let e = scrape_error(t.clone()).await;
        assert_eq!(e.reason(), "parse");
        assert!(e.to_string().contains("line 1"), "{e}");
        t.url = format!("http://{addr}/big");
        t.max_body_bytes = 100;
        assert_eq!(scrape_error(t.clone()).await.reason(), "body_too_large");
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        t.url = format!("http://{closed}/metrics");
        assert_eq!(scrape_error(t).await.reason(), "connect");
    }
}

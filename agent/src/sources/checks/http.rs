//! The HTTP(S) check: one request; the status code against the expected codes, the latency
//! against thresholds, the body against a substring or a regular expression, and for HTTPS the
//! days left on the server's certificate (read from the TLS session with x509-parser) against
//! thresholds that warn before it expires.

use super::series::seconds_text;
use super::threshold::{Direction, Threshold};
use super::{error_chain, Probe, Value};
use fleetwatch_common::model::CheckStatus;
use serde::Deserialize;
use std::path::PathBuf;
use std::time::{Instant, SystemTime};

/// Most bytes of a body read for matching; the rest is not read.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// `[checks.http]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HttpCheck {
    /// `http://` or `https://` URL.
    pub url: String,
    /// `GET` (default) or `HEAD`.
    #[serde(default = "default_method")]
    pub method: String,
    /// Status codes that count as healthy; empty (default) means any 2xx.
    #[serde(default)]
    pub expect_status: Vec<u16>,
    /// The body (first MiB) must contain this text.
    pub body_contains: Option<String>,
    /// The body (first MiB) must match this regular expression.
    pub body_regex: Option<String>,
    /// Seconds for the whole request: above `warn` degraded, above `critical` unhealthy.
    #[serde(default)]
    pub latency_seconds: Threshold,
    /// Days left on the server certificate: below `warn` degraded, below `critical` unhealthy
    /// (default warn 14, critical 3).
    #[serde(default = "default_cert_days")]
    pub cert_days: Threshold,
    /// Extra CA certificate (PEM) to trust, for servers with certificates from a private CA.
    pub ca_file: Option<PathBuf>,
    /// Accept any certificate (self-signed, expired, wrong name); days left are still reported.
    #[serde(default)]
    pub insecure_skip_verify: bool,
    /// Follow redirects (up to 10; default true); false judges the redirect's own status.
    #[serde(default = "yes")]
    pub follow_redirects: bool,
}

fn default_method() -> String {
    "GET".into()
}

fn default_cert_days() -> Threshold {
    Threshold {
        warn: Some(14.0),
        critical: Some(3.0),
    }
}

fn yes() -> bool {
    true
}

impl HttpCheck {
    pub(super) fn validate(&self) -> Result<(), String> {
        let url = reqwest::Url::parse(&self.url)
            .map_err(|e| format!("http.url {:?} is not a URL: {e}", self.url))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!(
                "http.url {:?} must start with http:// or https://",
                self.url
            ));
        }
        if url.host_str().is_none() {
            return Err(format!("http.url {:?} has no host", self.url));
        }
        if !matches!(self.method.as_str(), "GET" | "HEAD") {
            return Err(format!(
                "http.method must be GET or HEAD, got {:?}",
                self.method
            ));
        }
        if let Some(code) = self
            .expect_status
            .iter()
            .find(|c| !(100..=599).contains(*c))
        {
            return Err(format!(
                "http.expect_status holds {code}, which is not an HTTP status code"
            ));
        }
        if self.method == "HEAD" && (self.body_contains.is_some() || self.body_regex.is_some()) {
            return Err("http.body_contains and http.body_regex need method GET".into());
        }
        if let Some(re) = &self.body_regex {
            regex::Regex::new(re).map_err(|e| format!("http.body_regex: {e}"))?;
        }
        self.latency_seconds
            .validate("http.latency_seconds", Direction::Above)?;
        self.cert_days
            .validate("http.cert_days", Direction::Below)?;
        if let Some(path) = &self.ca_file {
            load_ca(path)?;
        }
        Ok(())
    }
}

fn load_ca(path: &PathBuf) -> Result<reqwest::Certificate, String> {
    let pem = std::fs::read(path).map_err(|e| format!("http.ca_file {}: {e}", path.display()))?;
    reqwest::Certificate::from_pem(&pem)
        .map_err(|e| format!("http.ca_file {}: {}", path.display(), error_chain(&e)))
}

/// An HTTP check with its client and regular expression made once.
pub(super) struct HttpProber {
    config: HttpCheck,
    client: reqwest::Client,
    regex: Option<regex::Regex>,
}

impl HttpProber {
    pub(super) fn new(config: &HttpCheck) -> Result<Self, String> {
        let mut builder = reqwest::Client::builder()
            .tls_info(true)
            .user_agent(concat!("fleetwatch-agent/", env!("CARGO_PKG_VERSION")))
            .redirect(if config.follow_redirects {
                reqwest::redirect::Policy::limited(10)
            } else {
                reqwest::redirect::Policy::none()
            })
            .pool_max_idle_per_host(0)
            .danger_accept_invalid_certs(config.insecure_skip_verify);
        if let Some(path) = &config.ca_file {
            builder = builder.add_root_certificate(load_ca(path)?);
        }
        let client = builder
            .build()
            .map_err(|e| format!("building the HTTP client: {}", error_chain(&e)))?;
        let regex = match &config.body_regex {
            Some(re) => Some(regex::Regex::new(re).map_err(|e| format!("http.body_regex: {e}"))?),
            None => None,
        };
        Ok(Self {
            config: config.clone(),
            client,
            regex,
        })
    }

    pub(super) async fn probe(&self) -> Probe {
        let c = &self.config;
        let started = Instant::now();
        let method = if c.method == "HEAD" {
            reqwest::Method::HEAD
        } else {
            reqwest::Method::GET
        };
        let mut response = match self.client.request(method, &c.url).send().await {
            Ok(r) => r,
            Err(error) => {
                return Probe::unhealthy(format!("{} {}: {}", c.method, c.url, error_chain(&error)))
            }
        };
        let code = response.status().as_u16();
        let mut values = vec![Value::new(
            "fleetwatch_check_http_status_code",
            f64::from(code),
        )];
        let mut findings = Vec::new();
        if !status_expected(code, &c.expect_status) {
            let expected = if c.expect_status.is_empty() {
                "2xx".to_string()
            } else {
                c.expect_status
                    .iter()
                    .map(u16::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            findings.push((
                CheckStatus::Unhealthy,
                format!("status {code}, expected {expected}"),
            ));
        }
        let cert_left = response
            .extensions()
            .get::<reqwest::tls::TlsInfo>()
            .and_then(|info| info.peer_certificate())
            .map(cert_seconds_left);
        match &cert_left {
            Some(Ok(left)) => {
                values.push(Value::new(
                    "fleetwatch_check_tls_cert_expiry_seconds",
                    *left,
                ));
                let days = left / 86_400.0;
                let status = c.cert_days.judge(days, Direction::Below);
                if status != CheckStatus::Healthy {
                    findings.push((status, format!("certificate expires in {days:.1} days")));
                }
            }
            Some(Err(e)) => findings.push((
                CheckStatus::Unhealthy,
                format!("server certificate unreadable: {e}"),
            )),
            None => {}
        }
        if self.regex.is_some() || c.body_contains.is_some() {
            match read_body(&mut response).await {
                Ok(body) => {
                    let text = String::from_utf8_lossy(&body);
                    if let Some(want) = &c.body_contains {
                        if !text.contains(want.as_str()) {
                            findings.push((
                                CheckStatus::Unhealthy,
                                format!("body does not contain {want:?}"),
                            ));
                        }
                    }
                    if let Some(re) = &self.regex {
                        if !re.is_match(&text) {
                            findings.push((
                                CheckStatus::Unhealthy,
                                format!("body does not match /{}/", re.as_str()),
                            ));
                        }
                    }
                }
                Err(error) => findings.push((
                    CheckStatus::Unhealthy,
                    format!("reading the body: {}", error_chain(&error)),
                )),
            }
        }
        let took = started.elapsed().as_secs_f64();
        let latency = c.latency_seconds.judge(took, Direction::Above);
        if latency != CheckStatus::Healthy {
            findings.push((latency, format!("took {} s", seconds_text(took))));
        }
        let mut summary = format!("HTTP {code} in {} s", seconds_text(took));
        if let Some(Ok(left)) = cert_left {
            summary.push_str(&format!(
                ", certificate expires in {:.1} days",
                left / 86_400.0
            ));
        }
        Probe::from_findings(findings, summary, values)
    }
}

/// Whether `code` is healthy: one of `expected`, or any 2xx when `expected` is empty.
pub(super) fn status_expected(code: u16, expected: &[u16]) -> bool {
    if expected.is_empty() {
        (200..300).contains(&code)
    } else {
        expected.contains(&code)
    }
}

/// Seconds from now until the certificate (DER) expires; negative once expired.
pub(super) fn cert_seconds_left(der: &[u8]) -> Result<f64, String> {
    let not_after = fleetwatch_common::pki::cert_not_after(der).map_err(|e| e.to_string())?;
    let now = SystemTime::now();
    Ok(match not_after.duration_since(now) {
        Ok(left) => left.as_secs_f64(),
        Err(past) => -past.duration().as_secs_f64(),
    })
}

async fn read_body(response: &mut reqwest::Response) -> Result<Vec<u8>, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = MAX_BODY_BYTES - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= MAX_BODY_BYTES {
            break;
        }
    }
    Ok(body)
}

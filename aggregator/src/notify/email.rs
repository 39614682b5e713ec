//! Email over SMTP with lettre: the receiver's settings checked and turned into a pooled
//! transport (STARTTLS required, opportunistic or none, or implicit TLS; a private CA; a login
//! whose password comes from the config, a file or an environment variable), and a group's
//! notification rendered as a plain-text message under Alertmanager's default subject.

use super::receivers::{fingerprint, title, Notification};
use crate::config::{ReceiverConfig, StartTls};
use crate::rules::lifecycle::{Alert, AlertState};
use crate::rules::rfc3339;
use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::transport::smtp::response::{Category, Severity};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use std::fmt::Write as _;
use std::time::Duration;

/// Parses an address as written in the config (`a@b.example` or `Name <a@b.example>`).
fn mailbox(receiver: &str, key: &str, value: &str) -> Result<Mailbox, String> {
    value.parse::<Mailbox>().map_err(|_| {
        format!(
            "receiver {receiver:?}: {key} {value:?} is not an email address (user@domain or Name <user@domain>)"
        )
    })
}

/// Checks an email receiver's settings; the error names the key and the receiver.
pub fn check(r: &ReceiverConfig) -> Result<(), (&'static str, String)> {
    let name = &r.name;
    if r.smtp_host.is_empty() {
        return Err((
            "alerting.receivers.smtp_host",
            format!("receiver {name:?} needs an smtp_host"),
        ));
    }
    if r.from.is_empty() {
        return Err((
            "alerting.receivers.from",
            format!("receiver {name:?} needs a from address"),
        ));
    }
    mailbox(name, "from", &r.from).map_err(|e| ("alerting.receivers.from", e))?;
    if r.to.is_empty() {
        return Err((
            "alerting.receivers.to",
            format!("receiver {name:?} needs at least one to address"),
        ));
    }
    for to in &r.to {
        mailbox(name, "to", to).map_err(|e| ("alerting.receivers.to", e))?;
    }
    let sources = [
        !r.password.is_empty(),
        !r.password_file.as_os_str().is_empty(),
        !r.password_env.is_empty(),
    ]
    .into_iter()
    .filter(|set| *set)
    .count();
    if sources > 1 {
        return Err((
            "alerting.receivers.password",
            format!("receiver {name:?}: set only one of password, password_file and password_env"),
        ));
    }
    if r.username.is_empty() && sources > 0 {
        return Err((
            "alerting.receivers.username",
            format!("receiver {name:?} has a password but no username"),
        ));
    }
    if !r.username.is_empty() && sources == 0 {
        return Err((
            "alerting.receivers.password",
            format!(
                "receiver {name:?} has a username but no password, password_file or password_env"
            ),
        ));
    }
    if !r.username.is_empty() && !r.implicit_tls && r.starttls != StartTls::Required {
        return Err((
            "alerting.receivers.starttls",
            format!(
                "receiver {name:?} sends its password only over TLS: set starttls = \"required\" or implicit_tls = true"
            ),
        ));
    }
    if !r.password_file.as_os_str().is_empty() {
        password(r).map_err(|e| ("alerting.receivers.password_file", e))?;
    }
    if !r.tls_ca_file.as_os_str().is_empty() {
        ca_certificates(r).map_err(|e| ("alerting.receivers.tls_ca_file", e))?;
    }
    Ok(())
}

/// The login password from wherever the receiver keeps it (`None`: no login).
pub fn password(r: &ReceiverConfig) -> Result<Option<String>, String> {
    let name = &r.name;
    if !r.password_file.as_os_str().is_empty() {
        let text = std::fs::read_to_string(&r.password_file).map_err(|e| {
            format!(
                "receiver {name:?}: password_file {}: {e}",
                r.password_file.display()
            )
        })?;
        let pw = text.trim_end_matches(['\r', '\n']).to_string();
        if pw.is_empty() {
            return Err(format!(
                "receiver {name:?}: password_file {} is empty",
                r.password_file.display()
            ));
        }
        return Ok(Some(pw));
    }
    if !r.password_env.is_empty() {
        return match std::env::var(&r.password_env) {
            Ok(pw) if !pw.is_empty() => Ok(Some(pw)),
            _ => Err(format!(
                "receiver {name:?}: environment variable {} (password_env) is not set",
                r.password_env
            )),
        };
    }
    Ok((!r.password.is_empty()).then(|| r.password.clone()))
}

fn ca_certificates(r: &ReceiverConfig) -> Result<Vec<Certificate>, String> {
    let path = &r.tls_ca_file;
    let certs = fleetwatch_common::pki::load_certs(path)
        .map_err(|e| format!("receiver {:?}: tls_ca_file: {e}", r.name))?;
    if certs.is_empty() {
        return Err(format!(
            "receiver {:?}: tls_ca_file {} holds no PEM certificate",
            r.name,
            path.display()
        ));
    }
    certs
        .into_iter()
        .map(|c| Certificate::from_der(c.to_vec()))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("receiver {:?}: tls_ca_file {}: {e}", r.name, path.display()))
}

/// Why one SMTP attempt failed, and whether another attempt may succeed.
pub struct SendError {
    /// What went wrong.
    pub message: String,
    /// False for a permanent refusal of the message (bad sender or recipient, syntax).
    pub retry: bool,
}

/// An email receiver: its transport (connections pooled) and addresses.
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    to: Vec<Mailbox>,
}

impl Mailer {
    /// Builds the transport from checked settings, reading the password and the CA file.
    pub fn new(r: &ReceiverConfig) -> Result<Self, String> {
        let from = mailbox(&r.name, "from", &r.from)?;
        let to =
            r.to.iter()
                .map(|t| mailbox(&r.name, "to", t))
                .collect::<Result<Vec<_>, _>>()?;
        let mut params = TlsParameters::builder(r.smtp_host.clone());
        if !r.tls_ca_file.as_os_str().is_empty() {
            for cert in ca_certificates(r)? {
                params = params.add_root_certificate(cert);
            }
        }
        let params = params
            .build_rustls()
            .map_err(|e| format!("receiver {:?}: TLS settings: {e}", r.name))?;
        let tls = match (r.implicit_tls, r.starttls) {
            (true, _) => Tls::Wrapper(params),
            (false, StartTls::Required) => Tls::Required(params),
            (false, StartTls::Opportunistic) => Tls::Opportunistic(params),
            (false, StartTls::None) => Tls::None,
        };
        let port = r
            .smtp_port
            .unwrap_or(if r.implicit_tls { 465 } else { 587 });
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&r.smtp_host)
            .port(port)
            .tls(tls)
            .timeout(Some(Duration::from_secs_f64(r.timeout_seconds)));
        if let Some(pw) = password(r)? {
            builder = builder.credentials(Credentials::new(r.username.clone(), pw));
        }
        Ok(Self {
            transport: builder.build(),
            from,
            to,
        })
    }

    /// The message for one notification.
    pub fn message(&self, n: &Notification) -> Result<Message, String> {
        let mut m = Message::builder()
            .from(self.from.clone())
            .subject(title(n))
            .header(ContentType::TEXT_PLAIN);
        for to in &self.to {
            m = m.to(to.clone());
        }
        m.body(body(n))
            .map_err(|e| format!("building the message: {e}"))
    }

    /// One delivery attempt of `m`.
    pub async fn send(&self, m: &Message) -> Result<(), SendError> {
        self.transport
            .send(m.clone())
            .await
            .map(|_| ())
            .map_err(|e| {
                // A refused sender, recipient or command will be refused again; a refused login
                // (535: a password being rotated, an auth backend down) or anything transient
                // may not be, so those are retried as Alertmanager does.
                let refused = e.is_permanent()
                    && e.status().is_some_and(|c| {
                        c.severity == Severity::PermanentNegativeCompletion
                            && matches!(c.category, Category::MailSystem | Category::Syntax)
                    });
                SendError {
                    message: format!("smtp: {e}"),
                    retry: !refused,
                }
            })
    }
}

fn alert_line(out: &mut String, a: &Alert) {
    let name = a.labels.get("alertname").map(String::as_str).unwrap_or("");
    let summary = a
        .annotations
        .get("summary")
        .map(|s| format!(": {s}"))
        .unwrap_or_default();
    let _ = writeln!(out, "* {name}{summary}");
    let labels: Vec<String> = a.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let _ = writeln!(out, "  Labels: {}", labels.join(", "));
    for (k, v) in a
        .annotations
        .iter()
        .filter(|(k, _)| k.as_str() != "summary")
    {
        let _ = writeln!(out, "  {k}: {v}");
    }
    let _ = writeln!(out, "  Since: {}", rfc3339(a.active_at_ms));
    if let Some(at) = a.resolved_at_ms.filter(|_| a.state == AlertState::Inactive) {
        let _ = writeln!(out, "  Resolved: {}", rfc3339(at));
    }
    let _ = writeln!(out, "  Fingerprint: {}", fingerprint(&a.labels));
}

/// The text of a notification: the title, the firing alerts, then the resolved ones, each with
/// its labels, annotations and times, and the link to the dashboard.
pub fn body(n: &Notification) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}\n", title(n));
    let (firing, resolved): (Vec<&Alert>, Vec<&Alert>) = n
        .alerts
        .iter()
        .partition(|a| a.state != AlertState::Inactive);
    for (heading, alerts) in [("Firing", firing), ("Resolved", resolved)] {
        if alerts.is_empty() {
            continue;
        }
        let _ = writeln!(out, "{heading} ({}):", alerts.len());
        for a in alerts {
            alert_line(&mut out, a);
        }
        out.push('\n');
    }
    if !n.external_url.is_empty() {
        let _ = writeln!(out, "Open fleetwatch: {}", n.external_url);
    }
    let _ = writeln!(out, "Group: {}", n.group_key);
    let _ = writeln!(out, "Sent by fleetwatch-aggregator at {}", rfc3339(n.at_ms));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn receiver() -> ReceiverConfig {
        ReceiverConfig {
            name: "mail".into(),
            kind: "email".into(),
            smtp_host: "smtp.example.com".into(),
            from: "Fleet <alerts@example.com>".into(),
            to: vec!["ops@example.com".into()],
            ..Default::default()
        }
    }

    fn alert(state: AlertState, host: &str) -> Alert {
        Alert {
            labels: [
                ("alertname".to_string(), "HostDown".to_string()),
                ("host".into(), host.into()),
                ("severity".into(), "critical".into()),
            ]
            .into(),
            annotations: [
                ("summary".to_string(), format!("{host} sends no data")),
                (
                    "runbook".to_string(),
                    "https://runbooks.example/host-down".into(),
                ),
            ]
            .into(),
            state,
            active_at_ms: 1_700_000_000_000,
            fired_at_ms: Some(1_700_000_060_000),
            resolved_at_ms: (state == AlertState::Inactive).then_some(1_700_000_600_000),
            keep_firing_since_ms: None,
            value: 0.0,
            last_eval_ms: 0,
        }
    }

    fn note(alerts: Vec<Alert>) -> Notification {
        Notification {
            receiver: "mail".into(),
            group_key: "mail:{alertname=\"HostDown\"}".into(),
            group_labels: BTreeMap::from([("alertname".into(), "HostDown".into())]),
            alerts,
            at_ms: 1_700_000_600_000,
            external_url: "https://fleet.example".into(),
        }
    }

    #[test]
    fn checks_name_the_receiver_and_the_problem() {
        assert!(check(&receiver()).is_ok());
        let bad = |f: fn(&mut ReceiverConfig)| {
            let mut r = receiver();
            f(&mut r);
            check(&r).unwrap_err()
        };
        let (key, msg) = bad(|r| r.to.clear());
        assert_eq!(key, "alerting.receivers.to");
        assert!(
            msg.contains("\"mail\"") && msg.contains("at least one to"),
            "{msg}"
        );
        let (key, msg) = bad(|r| r.to.push("bob".into()));
        assert_eq!(key, "alerting.receivers.to");
        assert!(msg.contains("\"bob\" is not an email address"), "{msg}");
        let (key, _) = bad(|r| r.from.clear());
        assert_eq!(key, "alerting.receivers.from");
        let (key, msg) = bad(|r| r.from = "alerts@".into());
        assert_eq!(key, "alerting.receivers.from");
        assert!(msg.contains("\"alerts@\""), "{msg}");
        let (key, _) = bad(|r| r.smtp_host.clear());
        assert_eq!(key, "alerting.receivers.smtp_host");
        let (key, _) = bad(|r| r.username = "u".into());
        assert_eq!(key, "alerting.receivers.password");
        let (key, _) = bad(|r| r.password = "p".into());
        assert_eq!(key, "alerting.receivers.username");
        let (key, msg) = bad(|r| {
            r.username = "u".into();
            r.password = "p".into();
            r.starttls = StartTls::Opportunistic;
        });
        assert_eq!(key, "alerting.receivers.starttls");
        assert!(msg.contains("only over TLS"), "{msg}");
        let (key, msg) = bad(|r| {
            r.username = "u".into();
            r.password_file = "/nonexistent/smtp.pass".into();
        });
        assert_eq!(key, "alerting.receivers.password_file");
        assert!(msg.contains("/nonexistent/smtp.pass"), "{msg}");
        let (key, _) = bad(|r| {
            r.username = "u".into();
            r.password = "p".into();
            r.password_env = "X".into();
        });
        assert_eq!(key, "alerting.receivers.password");
        let (key, msg) = bad(|r| r.tls_ca_file = "/nonexistent/ca.pem".into());
        assert_eq!(key, "alerting.receivers.tls_ca_file");
        assert!(msg.contains("/nonexistent/ca.pem"), "{msg}");
    }

    #[test]
    fn password_from_file_or_environment() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "s3cret\n").unwrap();
        let mut r = receiver();
        r.username = "alerts".into();
        r.password_file = file;
        assert_eq!(password(&r).unwrap().as_deref(), Some("s3cret"));
        r.password_file = Default::default();
        r.password_env = "FLEETWATCH_TEST_UNSET_SMTP_PASSWORD".into();
        let e = password(&r).unwrap_err();
        assert!(e.contains("FLEETWATCH_TEST_UNSET_SMTP_PASSWORD"), "{e}");
        r.password_env.clear();
        assert_eq!(password(&r).unwrap(), None);
    }

    #[test]
    fn firing_and_resolved_text() {
        let n = note(vec![
            alert(AlertState::Firing, "web-1"),
            alert(AlertState::Inactive, "web-2"),
        ]);
        assert_eq!(title(&n), "[FIRING:1] HostDown (critical)");
        let text = body(&n);
        assert!(
            text.contains("Firing (1):\n* HostDown: web-1 sends no data\n"),
            "{text}"
        );
        assert!(
            text.contains("Resolved (1):\n* HostDown: web-2 sends no data\n"),
            "{text}"
        );
        assert!(
            text.contains("  Labels: alertname=HostDown, host=web-1, severity=critical\n"),
            "{text}"
        );
        assert!(text.contains("  runbook: https://runbooks.example/host-down\n"));
        assert!(
            text.contains("  Resolved: 2023-11-14T22:23:20.000Z\n"),
            "{text}"
        );
        assert!(text.contains("Open fleetwatch: https://fleet.example\n"));
        let resolved = note(vec![alert(AlertState::Inactive, "web-2")]);
        assert_eq!(title(&resolved), "[RESOLVED] HostDown (web-2 critical)");
    }
}

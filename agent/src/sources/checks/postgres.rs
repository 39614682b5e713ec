//! The PostgreSQL check: connect (without TLS: loopback or a Unix socket), time a probe query,
//! and compare client connections in use with `max_connections`. Connections are counted from
//! `pg_stat_activity` by state; states of other users' sessions need the `pg_monitor` role
//! (without it they count as `unknown`, and the total is still right).

use super::series::seconds_text;
use super::threshold::{Direction, Threshold};
use super::{error_chain, Probe, Value};
use fleetwatch_common::model::CheckStatus;
use serde::Deserialize;
use std::str::FromStr;
use std::time::{Duration, Instant};

/// `[checks.postgres]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PostgresCheck {
    /// A libpq-style connection string, `host=127.0.0.1 port=5432 user=fleetwatch dbname=postgres`,
    /// or a `postgresql://` URL. `host=/run/postgresql` uses the Unix socket.
    pub connection: String,
    /// The probe query (default `SELECT 1`).
    #[serde(default = "default_query")]
    pub query: String,
    /// Seconds the probe query takes: above `warn` degraded, above `critical` unhealthy.
    #[serde(default)]
    pub query_seconds: Threshold,
    /// Client connections in use divided by `max_connections`: above `warn` degraded, above
    /// `critical` unhealthy (default warn 0.8, critical 0.95).
    #[serde(default = "default_connections")]
    pub connections_ratio: Threshold,
}

fn default_query() -> String {
    "SELECT 1".into()
}

fn default_connections() -> Threshold {
    Threshold {
        warn: Some(0.8),
        critical: Some(0.95),
    }
}

const CONNECTIONS_SQL: &str = "SELECT coalesce(state, 'unknown'), count(*) FROM pg_stat_activity \
     WHERE backend_type = 'client backend' GROUP BY 1 ORDER BY 1";

impl PostgresCheck {
    pub(super) fn validate(&self) -> Result<(), String> {
        let config = tokio_postgres::Config::from_str(&self.connection)
            .map_err(|e| format!("postgres.connection: {}", error_chain(&e)))?;
        if config.get_ssl_mode() == tokio_postgres::config::SslMode::Require {
            return Err(
                "postgres.connection: sslmode=require is not supported (no TLS); \
                        use loopback or a Unix socket"
                    .into(),
            );
        }
        if self.query.trim().is_empty() {
            return Err("postgres.query is empty".into());
        }
        self.query_seconds
            .validate("postgres.query_seconds", Direction::Above)?;
        self.connections_ratio
            .validate("postgres.connections_ratio", Direction::Above)
    }

    pub(super) async fn probe(&self, timeout: Duration) -> Probe {
        let mut config = match tokio_postgres::Config::from_str(&self.connection) {
            Ok(c) => c,
            Err(e) => return Probe::unhealthy(format!("postgres.connection: {}", error_chain(&e))),
        };
        config.connect_timeout(timeout);
        config.application_name("fleetwatch-agent");
        let target = describe(&config);
        let (client, connection) = match config.connect(tokio_postgres::NoTls).await {
            Ok(c) => c,
            Err(e) => {
                return Probe::unhealthy(format!("connecting to {target}: {}", error_chain(&e)))
            }
        };
        // The connection is driven beside the queries, inside this future, so that a timeout
        // drops both; dropping the client ends the session with a Terminate message.
        let work = async move {
            let probe = self.measure(&client, &target).await;
            drop(client);
            probe
        };
        let (probe, _) = tokio::join!(work, connection);
        probe
    }

    async fn measure(&self, client: &tokio_postgres::Client, target: &str) -> Probe {
        let started = Instant::now();
        if let Err(e) = client.simple_query(&self.query).await {
            return Probe::unhealthy(format!(
                "probe query on {target} failed: {}",
                error_chain(&e)
            ));
        }
        let took = started.elapsed().as_secs_f64();
        let mut values = vec![Value::new(
            "fleetwatch_check_postgres_query_duration_seconds",
            took,
        )];
        let mut findings = Vec::new();
        let status = self.query_seconds.judge(took, Direction::Above);
        if status != CheckStatus::Healthy {
            findings.push((status, format!("probe query took {} s", seconds_text(took))));
        }
        let max = match first_text(client.simple_query("SHOW max_connections").await) {
            Ok(rows) => rows.first().and_then(|r| r[0].parse::<f64>().ok()),
            Err(e) => {
                findings.push((CheckStatus::Unhealthy, format!("SHOW max_connections: {e}")));
                None
            }
        };
        let mut in_use = 0.0;
        match first_text(client.simple_query(CONNECTIONS_SQL).await) {
            Ok(rows) => {
                for row in rows {
                    let count = row
                        .get(1)
                        .and_then(|c| c.parse::<f64>().ok())
                        .unwrap_or(0.0);
                    in_use += count;
                    values.push(
                        Value::new("fleetwatch_check_postgres_connections", count)
                            .with_label("state", row[0].clone()),
                    );
                }
            }
            Err(e) => findings.push((
                CheckStatus::Unhealthy,
                format!("reading pg_stat_activity: {e}"),
            )),
        }
        let mut summary = format!("probe query {} s", seconds_text(took));
        if let Some(max) = max {
            values.push(Value::new("fleetwatch_check_postgres_max_connections", max));
            summary.push_str(&format!(", {in_use} of {max} connections in use"));
            if max > 0.0 {
                let ratio = in_use / max;
                let status = self.connections_ratio.judge(ratio, Direction::Above);
                if status != CheckStatus::Healthy {
                    findings.push((
                        status,
                        format!(
                            "{in_use} of {max} connections in use ({:.0}%)",
                            ratio * 100.0
                        ),
                    ));
                }
            }
        }
        Probe::from_findings(findings, summary, values)
    }
}

/// Rows of a simple query as text columns (NULL as empty).
fn first_text(
    result: Result<Vec<tokio_postgres::SimpleQueryMessage>, tokio_postgres::Error>,
) -> Result<Vec<Vec<String>>, String> {
    let messages = result.map_err(|e| error_chain(&e))?;
    Ok(messages
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => Some(
                (0..row.len())
                    .map(|i| row.get(i).unwrap_or_default().to_string())
                    .collect(),
            ),
            _ => None,
        })
        .collect())
}

/// `host:port/dbname` for details, never the password.
fn describe(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let db = config.get_dbname().or(config.get_user()).unwrap_or("");
    format!("postgres {host}:{port}/{db}")
}

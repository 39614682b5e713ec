//! `fleetwatch-aggregator demo`: the whole system on this host with no configuration — a
//! throwaway fleet CA, an aggregator on loopback and a local agent named after this host.

use crate::config::AggregatorConfig;

/// `configs/rules/fleet.yml`, built in: the demo's rules.
pub const DEFAULT_RULES: &str = include_str!("../../configs/rules/fleet.yml");
use anyhow::Context;
use fleetwatch_agent::config::AgentConfig;
use fleetwatch_common::pki;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// What `demo` needs to know.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Where everything is kept.
    pub data_dir: PathBuf,
    /// HTTP listen address (loopback).
    pub http: String,
    /// QUIC listen address (loopback).
    pub quic: String,
}

/// The demo's files and settings, made (or reused) under the data directory.
pub struct DemoSetup {
    /// The aggregator's configuration.
    pub aggregator: AggregatorConfig,
    /// The local agent's configuration.
    pub agent: AgentConfig,
    /// The admin token.
    pub token: String,
    /// The local agent's name.
    pub agent_name: String,
}

/// This machine's hostname, as the demo agent's name.
pub fn local_hostname() -> String {
    hostname::get()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

fn ensure_loopback(key: &str, addr: &str) -> anyhow::Result<()> {
    let parsed: std::net::SocketAddr = addr
        .parse()
        .with_context(|| format!("--{key} {addr:?} is not an IP:port address"))?;
    anyhow::ensure!(
        parsed.ip().is_loopback(),
        "--{key} {addr}: the demo listens on loopback addresses only"
    );
    Ok(())
}

fn write_secret(path: &Path, contents: &str) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(contents.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Makes the CA, certificates, token and configurations (reusing those of an earlier run).
pub fn prepare(opts: &DemoOptions) -> anyhow::Result<DemoSetup> {
    ensure_loopback("http", &opts.http)?;
    ensure_loopback("quic", &opts.quic)?;
    let dir = &opts.data_dir;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let pki_dir = dir.join("pki");
    let agent_name = local_hostname();
    if !pki_dir.join("ca.key").exists() {
        pki::init(&pki_dir, "fleetwatch demo CA").context("creating the demo CA")?;
    }
    let server = pki::issue_server(&pki_dir, "localhost", pki::Validity::days(30))
        .context("issuing the demo server certificate")?;
    let agent = pki::issue_agent(&pki_dir, &agent_name, pki::Validity::days(30))
        .context("issuing the demo agent certificate")?;

    let token_path = dir.join("admin.token");
    let token = match std::fs::read_to_string(&token_path) {
        Ok(t) if t.trim().len() >= 16 => t.trim().to_string(),
        _ => {
            let bytes: [u8; 24] = rand::random();
            let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            write_secret(&token_path, &format!("{token}\n"))?;
            token
        }
    };

    let mut aggregator = AggregatorConfig {
        data_dir: dir.join("aggregator"),
        ..Default::default()
    };
    aggregator.quic.listen = opts.quic.clone();
    aggregator.quic.ca = pki_dir.join("ca.pem");
    aggregator.quic.cert = server.cert.clone();
    aggregator.quic.key = server.key.clone();
    aggregator.quic.crl = pki_dir.join("crl.pem");
    aggregator.http.listen = opts.http.clone();
    aggregator.http.admin_token_file = token_path;
    aggregator.fleet.stale_after_seconds = 20;
    aggregator.fleet.down_after_seconds = 60;
    // the default rules every fleet needs, written out so that they can be read and edited
    let rules_dir = dir.join("rules");
    std::fs::create_dir_all(&rules_dir)?;
    let rules_file = rules_dir.join("fleet.yml");
    if !rules_file.exists() {
        std::fs::write(&rules_file, DEFAULT_RULES)?;
    }
    aggregator.rules.files = vec![rules_dir];

    let mut agent_cfg = AgentConfig {
        data_dir: dir.join("agent"),
        ..Default::default()
    };
    agent_cfg.aggregator.addresses = vec![opts.quic.clone()];
    agent_cfg.aggregator.server_name = "localhost".into();
    agent_cfg.aggregator.ca = pki_dir.join("ca.pem");
    agent_cfg.aggregator.cert = agent.cert;
    agent_cfg.aggregator.key = agent.key;
    agent_cfg.host.interval_seconds = 5.0;
    agent_cfg.batch.max_wait_seconds = 0.2;
    // this host's logs, with no configuration: the journal where there is one (skipped and
    // counted where there is not), /var/log/*.log and /var/log/syslog, from their end; files
    // that appear later are picked up within a second and read from their beginning
    agent_cfg.logs.journald.enabled = true;
    agent_cfg.logs.files = vec![fleetwatch_agent::sources::logs::config::FileSource {
        name: "var-log".into(),
        paths: vec!["/var/log/*.log".into(), "/var/log/syslog".into()],
        exclude: Vec::new(),
        start_at: fleetwatch_agent::sources::logs::config::StartAt::End,
        multiline_start: None,
        labels: Default::default(),
        max_line_bytes: 256 * 1024,
        rate_limit_lines_per_second: 2000,
    }];
    Ok(DemoSetup {
        aggregator,
        agent: agent_cfg,
        token,
        agent_name,
    })
}

/// Runs the demo until Ctrl-C.
pub async fn run(opts: DemoOptions) -> anyhow::Result<()> {
    let setup = prepare(&opts)?;
    let aggregator = crate::server::start(setup.aggregator.clone()).await?;
    let mut agent_cfg = setup.agent.clone();
    agent_cfg.aggregator.addresses = vec![aggregator.quic_addr.to_string()];
    let agent = fleetwatch_agent::run::start(agent_cfg)?;
    let base = format!("http://{}", aggregator.http_addr);
    println!("fleetwatch demo is running (Ctrl-C stops it)");
    println!();
    println!("  dashboard:    {base}/#/login?token={}", setup.token);
    println!("  API:          {base}/");
    println!("  admin token:  {}", setup.token);
    println!(
        "  token file:   {}",
        opts.data_dir.join("admin.token").display()
    );
    println!(
        "  agent:        {} (this host), shipping over QUIC to {}",
        setup.agent_name, aggregator.quic_addr
    );
    match agent.push_address() {
        Some(push) => println!(
            "  push:         http://{push}/v1/metrics (custom metrics from local programs)"
        ),
        None => println!("  push:         not listening (its address is taken; see the log)"),
    }
    println!();
    println!(
        "  curl -H \"Authorization: Bearer $(cat {})\" '{base}/api/v1/query?query=up'",
        opts.data_dir.join("admin.token").display()
    );
    println!(
        "  curl -H \"Authorization: Bearer $(cat {})\" '{base}/api/fleet/hosts'",
        opts.data_dir.join("admin.token").display()
    );
    let _ = std::io::stdout().flush();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    agent.stop().await;
    aggregator.stop().await;
    Ok(())
}

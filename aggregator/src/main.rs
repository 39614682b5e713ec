//! The `fleetwatch-aggregator` binary.

use anyhow::Context;
use clap::{Parser, Subcommand};
use fleetwatch_aggregator::config::AggregatorConfig;
use fleetwatch_aggregator::demo::{self, DemoOptions};
use fleetwatch_common::pki;
use std::path::PathBuf;
use std::process::ExitCode;

/// fleetwatch aggregator: receives the fleet's data from agents, stores it and serves the API.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the aggregator service.
    Run {
        /// Configuration file (TOML).
        #[arg(short, long, default_value = "/etc/fleetwatch/aggregator.toml")]
        config: PathBuf,
    },
    /// The whole system on this host with no configuration: a throwaway CA, the aggregator and
    /// a local agent, on loopback. Prints the API URL and an admin token.
    Demo {
        /// Where the demo keeps its CA, store, buffer and token.
        #[arg(long, default_value = "fleetwatch-demo")]
        data_dir: PathBuf,
        /// HTTP API address (loopback only).
        #[arg(long, default_value = "127.0.0.1:4741")]
        http: String,
        /// QUIC address for agents (loopback only).
        #[arg(long, default_value = "127.0.0.1:4740")]
        quic: String,
    },
    /// Manage the fleet's certificate authority.
    Pki {
        #[command(subcommand)]
        command: PkiCommand,
    },
    /// Check Prometheus rule files and exit: 0 when all are valid, otherwise every problem
    /// with its file, line and reason.
    CheckRules {
        /// Rule files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Check a configuration file and the dashboard files it names (`[dashboards] dir`) and exit:
    /// 0 when valid, otherwise the file, key and problem.
    CheckConfig {
        /// Configuration file (TOML).
        #[arg(short, long, default_value = "/etc/fleetwatch/aggregator.toml")]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum PkiCommand {
    /// Create a fleet CA in DIR (ca.pem, ca.key with mode 0600, an empty crl.pem).
    Init {
        /// The PKI directory.
        #[arg(long)]
        dir: PathBuf,
        /// The CA's common name.
        #[arg(long, default_value = "fleetwatch fleet CA")]
        name: String,
    },
    /// Issue a certificate signed by the fleet CA: for an agent (its name is the agent's
    /// identity, the `host` label) or for an aggregator (its DNS name or IP).
    Issue {
        /// The PKI directory.
        #[arg(long)]
        dir: PathBuf,
        /// Issue an agent certificate with this name.
        #[arg(long, conflicts_with = "server", required_unless_present = "server")]
        agent: Option<String>,
        /// Issue a server certificate for this DNS name or IP address.
        #[arg(long)]
        server: Option<String>,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = 397)]
        days: u32,
    },
    /// Revoke every certificate issued to NAME and rewrite crl.pem; running aggregators pick it
    /// up within seconds and close that agent's connection.
    Revoke {
        /// The PKI directory.
        #[arg(long)]
        dir: PathBuf,
        /// The agent or server name.
        name: String,
    },
}

fn init_logs() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { config } => run(config),
        Command::Demo {
            data_dir,
            http,
            quic,
        } => {
            init_logs();
            runtime().and_then(|rt| {
                rt.block_on(demo::run(DemoOptions {
                    data_dir,
                    http,
                    quic,
                }))
            })
        }
        Command::CheckConfig { config } => check_config(&config),
        Command::Pki { command } => pki_command(command),
        Command::CheckRules { files } => check_rules(&files),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The configuration file, then the dashboards it names (each refused file with its key).
fn check_config(path: &std::path::Path) -> anyhow::Result<()> {
    let config = AggregatorConfig::load(path)?;
    let dashboards = fleetwatch_aggregator::dashboards::load(&config.dashboards.dir);
    for e in &dashboards.errors {
        eprintln!("{e}");
    }
    if !dashboards.errors.is_empty() {
        anyhow::bail!(
            "{}: {} dashboard file(s) refused",
            path.display(),
            dashboards.errors.len()
        );
    }
    println!(
        "{}: ok, {} dashboards",
        path.display(),
        dashboards.dashboards.len()
    );
    Ok(())
}

fn check_rules(files: &[PathBuf]) -> anyhow::Result<()> {
    let mut failed = false;
    for f in files {
        match fleetwatch_aggregator::rules::file::load(f, 60_000) {
            Ok(groups) => {
                let rules: usize = groups.iter().map(|g| g.rules.len()).sum();
                println!(
                    "{}: ok, {} groups, {rules} rules",
                    f.display(),
                    groups.len()
                );
            }
            Err(errors) => {
                failed = true;
                for e in errors {
                    eprintln!("{e}");
                }
            }
        }
    }
    if failed {
        anyhow::bail!("rule files have errors");
    }
    Ok(())
}

fn pki_command(command: PkiCommand) -> anyhow::Result<()> {
    match command {
        PkiCommand::Init { dir, name } => {
            pki::init(&dir, &name)?;
            println!("fleet CA created in {}", dir.display());
            println!(
                "next: fleetwatch-aggregator pki issue --dir {} --server <aggregator DNS name>",
                dir.display()
            );
        }
        PkiCommand::Issue {
            dir,
            agent,
            server,
            days,
        } => {
            let validity = pki::Validity::days(days);
            let issued = match (agent, server) {
                (Some(name), _) => pki::issue_agent(&dir, &name, validity)?,
                (None, Some(name)) => pki::issue_server(&dir, &name, validity)?,
                (None, None) => anyhow::bail!("say --agent NAME or --server NAME"),
            };
            println!("certificate: {}", issued.cert.display());
            println!("private key: {} (mode 0600)", issued.key.display());
        }
        PkiCommand::Revoke { dir, name } => {
            let outcome = pki::revoke(&dir, &name)?;
            println!("{outcome:?}");
            println!("crl written to {}", dir.join("crl.pem").display());
        }
    }
    Ok(())
}

fn run(path: PathBuf) -> anyhow::Result<()> {
    init_logs();
    let config = AggregatorConfig::load(&path)?;
    let rt = runtime()?;
    let result = rt.block_on(async move {
        let running = fleetwatch_aggregator::server::start(config).await?;
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("installing the SIGHUP handler")?;
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                _ = term.recv() => break,
                _ = hup.recv() => {
                    let rules = running.state.rules.clone();
                    match tokio::task::spawn_blocking(move || rules.reload()).await {
                        Ok(Ok(n)) => tracing::info!(rules = n, "SIGHUP: rules reloaded"),
                        Ok(Err(errors)) => {
                            for e in errors {
                                tracing::error!(error = %e, "SIGHUP: rule files refused; the running rules are kept");
                            }
                        }
                        Err(_) => {}
                    }
                    let dashboards = running.state.dashboards.clone();
                    if let Ok(set) = tokio::task::spawn_blocking(move || dashboards.reload()).await {
                        tracing::info!(
                            dashboards = set.dashboards.len(),
                            refused = set.errors.len(),
                            "SIGHUP: dashboards reloaded"
                        );
                    }
                }
            }
        }
        tracing::info!("stopping");
        running.stop().await;
        Ok(())
    });
    // Blocking store writes finish quickly; do not wait on anything else.
    rt.shutdown_timeout(std::time::Duration::from_secs(5));
    result
}

//! The `fleetwatch-agent` binary.

use anyhow::Context;
use clap::{Parser, Subcommand};
use fleetwatch_agent::config::AgentConfig;
use std::path::PathBuf;

/// fleetwatch agent: collects this host's metrics and ships them to the fleet's aggregator.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent. SIGHUP reloads the configuration file (scrape targets, push listener,
    /// host interval, aggregator link and certificate files); an invalid file is refused and
    /// the running configuration kept.
    Run {
        /// Configuration file (TOML).
        #[arg(short, long, default_value = "/etc/fleetwatch/agent.toml")]
        config: PathBuf,
    },
    /// Check a configuration file and exit: 0 when valid, otherwise the file, key and problem.
    CheckConfig {
        /// Configuration file (TOML).
        #[arg(short, long, default_value = "/etc/fleetwatch/agent.toml")]
        config: PathBuf,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { config } => match AgentConfig::load(&config) {
            Ok(_) => {
                println!("{}: ok", config.display());
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                std::process::ExitCode::FAILURE
            }
        },
        Command::Run { config } => match run(config) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                std::process::ExitCode::FAILURE
            }
        },
    }
}

/// Longest an orderly stop may take after SIGTERM or Ctrl-C (systemd's default stop timeout
/// is 90 s).
const STOP_DEADLINE: std::time::Duration = std::time::Duration::from_secs(15);

fn run(path: PathBuf) -> anyhow::Result<()> {
    // Before any thread: arenas are made per thread as threads first allocate.
    let refused = fleetwatch_agent::memory::limit_allocator_retention();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    if !refused.is_empty() {
        tracing::warn!(
            ?refused,
            "the allocator refused a setting; the agent may keep more memory than it uses"
        );
    }
    let config = AgentConfig::load(&path).with_context(|| format!("loading {}", path.display()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let result = runtime.block_on(async move {
        let mut agent = fleetwatch_agent::run::start(config)?;
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let mut hangup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                _ = term.recv() => break,
                _ = hangup.recv() => {
                    // reload_from logs and counts the outcome; a refused file changes nothing
                    let _ = agent.reload_from(&path).await;
                }
            }
        }
        tracing::info!("stopping");
        // Every batch in the buffer is already on disk (a write returns after its flush), so
        // a stop that hangs (a wedged disk, a stuck source) must not keep the process: after
        // STOP_DEADLINE the agent exits anyway, and a restart resumes from the buffer.
        if tokio::time::timeout(STOP_DEADLINE, agent.stop())
            .await
            .is_err()
        {
            tracing::error!(
                deadline = ?STOP_DEADLINE,
                "stopping took too long; exiting without waiting further (buffered data is on disk)"
            );
        }
        Ok(())
    });
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    result
}

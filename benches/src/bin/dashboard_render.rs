//! The fleet overview with thousands of hosts, in a real browser: starts an aggregator, connects
//! `--hosts` simulated hosts to it (each a real QUIC connection with its own agent certificate,
//! sending host metrics like an agent's, see `fleetwatch_benches::fleet_sim`), then loads the
//! dashboard's overview `--loads` times in headless Chromium (Debian's `chromium` through
//! `chromedriver`) and reports two figures per load:
//!
//! - `overviewFirstRenderMs`: what the page itself measures, from navigation start to the host
//!   table painted with data (`window.fleetwatchTimings`, set after a requestAnimationFrame);
//! - the time until the first host row is in the page, seen from the WebDriver side (from the
//!   navigation command, so it includes the page load and WebDriver's own round trips).
//!
//! Reported, not asserted. The first load (cold cache) is shown apart.
//!
//! `cargo run --release -p fleetwatch-benches --bin dashboard_render -- --hosts 2000 --loads 7`

use anyhow::{bail, Context};
use clap::Parser;
use fantoccini::Locator;
use fleetwatch_benches::browser::{self, testid, Browser};
use fleetwatch_benches::fleet_sim::{SimConfig, Simulation};
use fleetwatch_common::pki;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// The overview's first render with a simulated fleet.
#[derive(Parser)]
struct Args {
    /// Simulated hosts.
    #[arg(long, default_value_t = 2000)]
    hosts: usize,
    /// Page loads measured (after one cold load).
    #[arg(long, default_value_t = 7)]
    loads: usize,
    /// Seconds between two batches of a simulated host.
    #[arg(long, default_value_t = 10)]
    interval: u64,
    /// Hosts connecting at once.
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
}

const TOKEN: &str = "bench-token-0123456789abcdef";

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(what) = browser::missing() {
        bail!("{what}");
    }
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let p = d.join("pki");
    pki::init(&p, "bench CA")?;
    let server = pki::issue_server(&p, "localhost", pki::Validity::days(1))?;
    std::fs::write(d.join("token"), format!("{TOKEN}\n"))?;
    let mut cfg = fleetwatch_benches::loopback::aggregator_config(
        &d.join("agg"),
        &p,
        server,
        &d.join("token"),
    );
    // a host stays up across a slow round on a busy machine
    cfg.fleet.stale_after_seconds = 6 * args.interval.max(5);
    cfg.fleet.down_after_seconds = 18 * args.interval.max(5);
    let agg = fleetwatch_aggregator::server::start(cfg).await?;
    let http = agg.http_addr;

    let started = Instant::now();
    let sim = Simulation::start(SimConfig {
        hosts: args.hosts,
        aggregator: agg.quic_addr,
        server_name: "localhost".into(),
        pki_dir: p.clone(),
        interval: Duration::from_secs(args.interval),
        connect_concurrency: args.connect_concurrency,
    })
    .await?;
    let hosts = args.hosts as u64;
    sim.wait_for(hosts, 2 * hosts, Duration::from_secs(600))
        .await?;
    println!(
        "{} hosts connected and sent {} batches ({} samples) in {:.1} s",
        args.hosts,
        sim.stats.batches_acked.load(Ordering::Relaxed),
        sim.stats.samples_sent.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64()
    );

    // The aggregator's side: the hosts list the overview asks for, with every summary filled.
    let client = reqwest::Client::new();
    let hosts_url = format!("http://{http}/api/fleet/hosts");
    let deadline = Instant::now() + Duration::from_secs(180);
    let (bytes, api_ms, summarized) = loop {
        let t = Instant::now();
        let body = client
            .get(&hosts_url)
            .bearer_auth(TOKEN)
            .send()
            .await?
            .error_for_status()?
            .bytes()
            .await?;
        let api_ms = t.elapsed().as_secs_f64() * 1000.0;
        let v: serde_json::Value = serde_json::from_slice(&body)?;
        let list = v["data"]
            .as_array()
            .context("no host list in /api/fleet/hosts")?;
        let summarized = list
            .iter()
            .filter(|h| h["summary"]["cpu_ratio"].is_number())
            .count();
        if list.len() >= args.hosts && summarized >= args.hosts {
            break (body.len(), api_ms, summarized);
        }
        if Instant::now() >= deadline {
            println!(
                "note: after 180 s, {} hosts listed and {summarized} with a CPU summary",
                list.len()
            );
            break (body.len(), api_ms, summarized);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    println!(
        "GET /api/fleet/hosts: {} hosts with a summary, {:.0} KiB, {api_ms:.0} ms",
        summarized,
        bytes as f64 / 1024.0
    );

    let b = Browser::start().await?;
    let result = measure(&b, &args, &http.to_string()).await;
    let shot = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("benches sits in the workspace")?
        .join("target/dashboard-screenshots/overview-2000-hosts.png");
    if result.is_ok() {
        b.screenshot(&shot).await?;
    }
    b.quit().await;
    let (page, webdriver, cold, shown) = result?;

    println!(
        "overview with {} hosts, {} warm loads after a cold one (page shows: {shown})",
        args.hosts, args.loads
    );
    println!(
        "  cold load (signing in, empty cache): overviewFirstRenderMs {:.0} ms, first row via WebDriver {:.0} ms",
        cold.0, cold.1
    );
    println!(
        "  overviewFirstRenderMs: min {:.0} / median {:.0} / max {:.0} ms",
        page.0, page.1, page.2
    );
    println!(
        "  first host row via WebDriver: min {:.0} / median {:.0} / max {:.0} ms",
        webdriver.0, webdriver.1, webdriver.2
    );
    println!("  screenshot: {}", shot.display());
    println!(
        "README: | Fleet overview, {} simulated hosts, headless Chromium | first render {:.0} ms median (min {:.0}, max {:.0}; {} loads), first row via WebDriver {:.0} ms median | `cargo run --release -p fleetwatch-benches --bin dashboard_render -- --hosts {} --loads {}` |",
        args.hosts,
        page.1,
        page.0,
        page.2,
        args.loads,
        webdriver.1,
        args.hosts,
        args.loads
    );
    println!(
        "simulation: {} batches acknowledged, {} errors",
        sim.stats.batches_acked.load(Ordering::Relaxed),
        sim.stats.errors.load(Ordering::Relaxed)
    );
    sim.stop().await;
    agg.stop().await;
    Ok(())
}

type Spread = (f64, f64, f64);

/// Loads the overview `loads + 1` times: first through the link `demo` prints (signs in, empty
/// cache: the cold load), then by its plain URL. Returns the page's own first-render figure and
/// the WebDriver side's time to the first row, as (min, median, max) over the warm loads, the
/// cold load's pair, and the page's counter text.
async fn measure(
    b: &Browser,
    args: &Args,
    http: &str,
) -> anyhow::Result<(Spread, Spread, (f64, f64), String)> {
    let row = testid("host-row");
    let mut page = Vec::new();
    let mut webdriver = Vec::new();
    let mut shown = String::new();
    for load in 0..=args.loads {
        let url = if load == 0 {
            format!("http://{http}/#/login?token={TOKEN}")
        } else {
            b.client.goto("about:blank").await?;
            format!("http://{http}/#/overview")
        };
        let t0 = Instant::now();
        b.client.goto(&url).await?;
        // as fast as WebDriver answers: no sleep between looks
        let deadline = t0 + Duration::from_secs(120);
        loop {
            if !b.client.find_all(Locator::Css(&row)).await?.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                bail!(
                    "no host row within 120 s; the page says:\n{}",
                    b.page_text().await
                );
            }
        }
        webdriver.push(t0.elapsed().as_secs_f64() * 1000.0);
        let ms = b
            .wait(
                "window.fleetwatchTimings.overviewFirstRenderMs",
                Duration::from_secs(120),
                || async {
                    Ok(b.js(
                        "return (window.fleetwatchTimings || {}).overviewFirstRenderMs ?? null;",
                    )
                    .await?
                    .as_f64())
                },
            )
            .await?;
        page.push(ms);
        shown = b
            .wait_testid("page-info", Duration::from_secs(30))
            .await?
            .text()
            .await?;
    }
    let cold = (page.remove(0), webdriver.remove(0));
    Ok((spread(&mut page), spread(&mut webdriver), cold, shown))
}

fn spread(v: &mut [f64]) -> Spread {
    v.sort_by(|a, b| a.total_cmp(b));
    let median = if v.len() % 2 == 1 {
        v[v.len() / 2]
    } else {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    };
    (v[0], median, v[v.len() - 1])
}

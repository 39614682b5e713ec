//! Unit tests of check configuration, judging and series.

use super::*;

#[derive(Deserialize, Debug)]
struct File {
    checks: Vec<CheckConfig>,
}

/// Parses through the `config` crate, as the agent's configuration is loaded.
fn load(toml_text: &str) -> Result<Vec<CheckConfig>, String> {
    config::Config::builder()
        .add_source(config::File::from_str(toml_text, config::FileFormat::Toml))
        .build()
        .and_then(|c| c.try_deserialize::<File>())
        .map(|f| f.checks)
        .map_err(|e| e.to_string())
}

fn parse(toml_text: &str) -> Vec<CheckConfig> {
    load(toml_text).unwrap()
}

fn tcp(name: &str, address: &str) -> CheckConfig {
    CheckConfig {
        name: name.into(),
        interval_seconds: 1.0,
        timeout_seconds: 1.0,
        http: None,
        tcp: Some(tcp::TcpCheck {
            address: address.into(),
            latency_seconds: Default::default(),
        }),
        command: None,
        redis: None,
        postgres: None,
    }
}

#[test]
fn every_kind_parses_from_toml() {
    let checks = parse(
        r#"
[[checks]]
name = "api"
interval_seconds = 15
[checks.http]
url = "https://example.com/health"
expect_status = [200, 204]
body_regex = "ok|healthy"
latency_seconds = { warn = 0.5, critical = 2.0 }
cert_days = { warn = 30, critical = 7 }

[[checks]]
name = "db-port"
[checks.tcp]
address = "127.0.0.1:5432"

[[checks]]
name = "disk"
[checks.command]
argv = ["/bin/true"]
degraded_exit_codes = [1]

[[checks]]
name = "votes-queue"
[checks.redis]
url = "redis://127.0.0.1:6379/0"
lists = [{ key = "votes", warn = 500, critical = 1000 }]

[[checks]]
name = "db"
timeout_seconds = 3
[checks.postgres]
connection = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
"#,
    );
    assert_eq!(checks.len(), 5);
    validate(&checks).unwrap();
    let kinds: Vec<_> = checks.iter().map(|c| c.kind_label().unwrap()).collect();
    assert_eq!(kinds, ["http", "tcp", "command", "redis", "postgres"]);
    assert_eq!(checks[0].interval_seconds, 15.0);
    assert_eq!(checks[1].interval_seconds, 30.0);
    assert_eq!(checks[4].timeout_seconds, 3.0);
    let http = checks[0].http.as_ref().unwrap();
    assert_eq!(http.cert_days.warn, Some(30.0));
    assert_eq!(http.method, "GET");
    let pg = checks[4].postgres.as_ref().unwrap();
    assert_eq!(pg.query, "SELECT 1");
    assert_eq!(pg.connections_ratio.warn, Some(0.8));
}

#[test]
fn unknown_keys_are_refused_by_name() {
    let err = load("[[checks]]\nname = \"a\"\n[checks.tcp]\naddress = \"a:1\"\nlatency = 3\n")
        .unwrap_err();
    assert!(err.contains("latency"), "{err}");
}

fn refused(checks: &[CheckConfig]) -> String {
    validate(checks).unwrap_err()
}

#[test]
fn validation_names_the_check_and_the_problem() {
    let dup = refused(&[tcp("db", "a:1"), tcp("db", "b:2")]);
    assert!(
        dup.contains("checks[1] (\"db\")") && dup.contains("unique"),
        "{dup}"
    );

    let bad_addr = refused(&[tcp("db", "nohost")]);
    assert!(
        bad_addr.contains("\"db\"") && bad_addr.contains("host:port"),
        "{bad_addr}"
    );

    let mut none = tcp("x", "a:1");
    none.tcp = None;
    assert!(refused(&[none]).contains("has no kind"));

    let mut two = tcp("x", "a:1");
    two.command = Some(command::CommandCheck {
        argv: vec!["true".into()],
        degraded_exit_codes: vec![],
        working_dir: None,
    });
    assert!(refused(&[two]).contains("2 kinds (tcp, command)"));

    let mut slow = tcp("x", "a:1");
    slow.timeout_seconds = 5.0;
    assert!(refused(&[slow]).contains("timeout_seconds (5) must not exceed"));

    assert!(refused(&[tcp("bad name", "a:1")]).contains("found ' '"));
    assert!(refused(&[tcp(&"n".repeat(200), "a:1")]).contains("1 to 128 bytes"));

    let checks = parse(
        "[[checks]]\nname = \"web\"\n[checks.http]\nurl = \"ftp://x/\"\n\
         [[checks]]\nname = \"re\"\n[checks.http]\nurl = \"http://x/\"\nbody_regex = \"(\"\n\
         [[checks]]\nname = \"lat\"\n[checks.http]\nurl = \"http://x/\"\n\
         latency_seconds = { warn = 2, critical = 1 }\n\
         [[checks]]\nname = \"q\"\n[checks.redis]\nurl = \"redis://x/\"\n\
         lists = [{ key = \"a\", warn = 600, critical = 500 }]\n\
         [[checks]]\nname = \"pg\"\n[checks.postgres]\nconnection = \"host=x port=notaport\"\n\
         [[checks]]\nname = \"cmd\"\n[checks.command]\nargv = []\n",
    );
    let problems: Vec<String> = checks
        .iter()
        .map(|c| refused(std::slice::from_ref(c)))
        .collect();
    assert!(
        problems[0].contains("\"web\"") && problems[0].contains("http://"),
        "{problems:?}"
    );
    assert!(problems[1].contains("http.body_regex"), "{problems:?}");
    assert!(
        problems[2].contains("latency_seconds.warn (2)"),
        "{problems:?}"
    );
    assert!(
        problems[3].contains("redis.lists[\"a\"].warn (600)"),
        "{problems:?}"
    );
    assert!(problems[4].contains("postgres.connection"), "{problems:?}");
    assert!(problems[5].contains("command.argv"), "{problems:?}");
}

#[test]
fn series_carry_status_duration_and_values() {
    let result = CheckResult {
        name: "q".into(),
        timestamp_ms: 5,
        status: CheckStatus::Degraded,
        duration_seconds: 0.25,
        detail: String::new(),
    };
    let values =
        [Value::new("fleetwatch_check_redis_list_length", 600.0).with_label("key", "votes")];
    let s = series::check_series(&result, "redis", &values);
    assert_eq!(s.len(), 3);
    assert_eq!(s[0].series.name, STATUS_METRIC);
    assert_eq!(s[0].series.label("check"), Some("q"));
    assert_eq!(s[0].series.label("kind"), Some("redis"));
    assert_eq!(s[0].samples[0].value, 1.0);
    assert_eq!(s[1].samples[0].value, 0.25);
    assert_eq!(s[2].series.label("key"), Some("votes"));
    assert_eq!(s[2].samples[0].timestamp_ms, 5);
    assert_eq!(status_value(CheckStatus::Unhealthy), 2.0);
}

#[test]
fn findings_give_the_worst_status_and_problems_first() {
    let p = Probe::from_findings(
        vec![
            (CheckStatus::Degraded, "slow".into()),
            (CheckStatus::Unhealthy, "status 500".into()),
        ],
        "HTTP 500 in 1 s".into(),
        vec![],
    );
    assert_eq!(p.status, CheckStatus::Unhealthy);
    assert_eq!(p.detail, "slow; status 500; HTTP 500 in 1 s");
    let long = "é".repeat(2000);
    let cut = series::bounded_detail(&long);
    assert!(cut.len() <= series::MAX_DETAIL_BYTES && cut.ends_with('…'));
    assert_eq!(series::seconds_text(0.0123456), "0.012");
    assert_eq!(series::seconds_text(30.0), "30");
}

#[test]
fn http_status_expectations() {
    assert!(http::status_expected(204, &[]));
    assert!(!http::status_expected(301, &[]));
    assert!(http::status_expected(301, &[301]));
    assert!(!http::status_expected(200, &[204]));
}

#[test]
fn redis_info_fields_and_redaction() {
    let info = "# Server\r\nredis_version:7.0.15\r\nuptime_in_seconds:42\r\n# Memory\r\nused_memory:1048576\r\nused_memory_human:1.00M\r\n";
    assert_eq!(redis::info_field(info, "uptime_in_seconds"), Some(42.0));
    assert_eq!(redis::info_field(info, "used_memory"), Some(1_048_576.0));
    assert_eq!(redis::info_field(info, "used_memory_human"), None);
    assert_eq!(
        redis::redact("redis://u:secret@h:6379/0"),
        "redis://u:***@h:6379/0"
    );
}

#[test]
fn command_exit_codes_and_output() {
    assert_eq!(command::judge_exit(0, &[1]), CheckStatus::Healthy);
    assert_eq!(command::judge_exit(1, &[1]), CheckStatus::Degraded);
    assert_eq!(command::judge_exit(2, &[1]), CheckStatus::Unhealthy);
    assert_eq!(
        command::first_line(b"\n  DISK OK - 40% used  \nmore").as_deref(),
        Some("DISK OK - 40% used")
    );
    assert_eq!(command::first_line(b"  \n"), None);
}

#[tokio::test]
async fn tcp_check_follows_the_listener() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let config = tcp("port", &addr);
    let (result, series) = run_once(&config).await;
    assert_eq!(result.status, CheckStatus::Healthy, "{}", result.detail);
    assert!(result.detail.contains("connected to"), "{}", result.detail);
    assert_eq!(series[0].series.label("kind"), Some("tcp"));
    drop(listener);
    let (result, _) = run_once(&config).await;
    assert_eq!(result.status, CheckStatus::Unhealthy);
    assert!(result.detail.contains(&addr), "{}", result.detail);
}

#[tokio::test]
async fn run_reports_each_result_with_host_health_and_stops() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = listener.local_addr().unwrap().to_string();
    let down = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let (tx, mut rx) = mpsc::channel(16);
    let (stop, shutdown) = watch::channel(false);
    let task = tokio::spawn(run(vec![tcp("up", &up), tcp("down", &down)], tx, shutdown));
    let mut seen = BTreeMap::new();
    let mut host = Vec::new();
    while seen.len() < 2 {
        let out = rx.recv().await.unwrap();
        assert_eq!(out.results.len(), 1);
        let r = &out.results[0];
        seen.insert(r.name.clone(), r.status);
        let h = out
            .series
            .iter()
            .find(|s| s.series.name == HOST_HEALTH_METRIC)
            .unwrap();
        host.push(h.samples[0].value);
    }
    assert_eq!(seen["up"], CheckStatus::Healthy);
    assert_eq!(seen["down"], CheckStatus::Unhealthy);
    // Once "down" has reported, the host is unhealthy.
    assert_eq!(*host.last().unwrap(), 2.0);
    stop.send(true).unwrap();
    task.await.unwrap();
}

/// The commented `[[checks]]` example in `configs/agent.toml`, uncommented.
fn shipped_example() -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/agent.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let start = text
        .find("# [[checks]]")
        .expect("configs/agent.toml has a [[checks]] example");
    text[start..]
        .lines()
        .take_while(|l| l.starts_with('#'))
        .filter(|l| !l.starts_with("# #") && *l != "#")
        .map(|l| l.trim_start_matches("# "))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn shipped_example_parses_and_validates() {
    let checks = parse(&shipped_example());
    validate(&checks).unwrap();
    let kinds: Vec<_> = checks.iter().map(|c| c.kind_label().unwrap()).collect();
    assert_eq!(kinds, ["http", "tcp", "command", "redis", "postgres"]);
    let lists = &checks[3].redis.as_ref().unwrap().lists;
    assert_eq!(lists[0].key, "votes");
    assert_eq!(lists[0].warn, Some(500.0));
}

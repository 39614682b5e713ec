//! Dashboards from configuration with a real aggregator and agent: the shipped dashboards load
//! from a directory, a broken file is refused with its path and key (listed, counted, the others
//! served), `check-config` names it, SIGHUP reloads the directory, the endpoints answer 404 in
//! words and need the token, the compiled-in examples are served with no configuration, and a
//! job-queue panel's queries return the samples an application pushed to the agent.

mod support;

use serde_json::Value;
use std::path::Path;
use std::time::Duration;
use support::{free_tcp_port, http_get_with, http_post, sighup, urlencode, Fleet};

const LONG: Duration = Duration::from_secs(60);

fn shipped_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/dashboards")
}

fn get(fleet: &Fleet, path: &str) -> (u16, Value) {
    let (code, body) = fleet.http_get(path).unwrap();
    let v = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"));
    (code, v)
}

fn ids(list: &Value) -> Vec<String> {
    let mut ids: Vec<String> = list["data"]["dashboards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

fn shipped_ids() -> Vec<String> {
    let mut ids: Vec<String> = std::fs::read_dir(shipped_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    ids.sort();
    ids
}

/// The first result of `expr` for host `host`, if any.
fn query_value(fleet: &Fleet, expr: &str, host: &str) -> Option<f64> {
    fleet
        .query(expr)
        .iter()
        .find(|r| r["metric"]["host"] == host || r["metric"].get("host").is_none())
        .and_then(|r| r["value"][1].as_str()?.parse().ok())
}

#[test]
fn dashboards_load_from_a_directory_refuse_bad_files_reload_and_show_pushed_queue_data() {
    let fleet = Fleet::new();
    let dir = fleet.path("dashboards");
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(shipped_dir()).unwrap() {
        let p = entry.unwrap().path();
        std::fs::copy(&p, dir.join(p.file_name().unwrap())).unwrap();
    }
    std::fs::write(
        dir.join("broken.toml"),
        "title = \"Broken\"\n[[panels]]\ntitle = \"x\"\nunit = \"percentage\"\n[[panels.queries]]\nexpr = \"up\"\n",
    )
    .unwrap();
    fleet.add_aggregator_config(&format!("[dashboards]\ndir = \"{}\"\n", dir.display()));

    // check-config names the file and the key, and fails
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fleetwatch-aggregator"))
        .args(["check-config", "-c"])
        .arg(fleet.path("aggregator.toml"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("broken.toml") && text.contains("panels[0].unit"),
        "{text}"
    );

    let push_port = free_tcp_port();
    fleet.agent_config(
        "queue-1",
        1.0,
        &format!("[push]\nlisten = \"127.0.0.1:{push_port}\"\n"),
    );
    let agg = fleet.start_aggregator();
    let _agent = fleet.start_agent("queue-1");

    // every shipped dashboard, and the broken file listed with its key and counted
    let (code, list) = get(&fleet, "/api/dashboards");
    assert_eq!(code, 200);
    assert_eq!(ids(&list), shipped_ids());
    let errors = list["data"]["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{list}");
    assert!(errors[0]["file"].as_str().unwrap().ends_with("broken.toml"));
    assert!(
        errors[0]["error"]
            .as_str()
            .unwrap()
            .contains("panels[0].unit: unknown unit \"percentage\""),
        "{list}"
    );
    assert_eq!(fleet.own_metric("fleetwatch_dashboard_errors_total"), 1.0);

    // one dashboard; an unknown id is a 404 in words; no token, no dashboards
    let (code, one) = get(&fleet, "/api/dashboards/job-queues");
    assert_eq!(code, 200);
    let d = &one["data"];
    assert_eq!(d["id"], "job-queues");
    for p in d["panels"].as_array().unwrap() {
        let width = p["width"].as_u64().unwrap();
        assert!((1..=12).contains(&width), "{p}");
        assert!(!p["queries"].as_array().unwrap().is_empty(), "{p}");
    }
    let (code, missing) = get(&fleet, "/api/dashboards/nope");
    assert_eq!(code, 404);
    let message = missing["error"].as_str().unwrap();
    assert!(
        message.contains("no dashboard with id \"nope\"") && message.contains("job-queues"),
        "{missing}"
    );
    let (code, _) = http_get_with(fleet.http_port, "/api/dashboards", "wrong-token").unwrap();
    assert_eq!(code, 401);

    // An application pushes its queue metrics to the agent: the queue panels show them.
    fleet.wait_for("the push listener", LONG, || {
        std::net::TcpStream::connect(("127.0.0.1", push_port)).is_ok()
    });
    let now = fleetwatch_common::model::now_ms();
    let mut text = String::from(
        "# TYPE jobqueue_jobs gauge\n\
         jobqueue_jobs{queue=\"mail\",state=\"pending\"} 42\n\
         jobqueue_jobs{queue=\"mail\",state=\"processing\"} 3\n\
         # TYPE jobqueue_job_duration_seconds histogram\n",
    );
    // two scrapes' worth of a histogram, 20 s apart: 100 more jobs, 90 of them under 1 s
    for (t, n) in [(now - 20_000, 0.0), (now, 100.0)] {
        for (le, share) in [("0.5", 0.5), ("1", 0.9), ("5", 1.0), ("+Inf", 1.0)] {
            text.push_str(&format!(
                "jobqueue_job_duration_seconds_bucket{{queue=\"mail\",le=\"{le}\"}} {} {t}\n",
                n * share
            ));
        }
        text.push_str(&format!(
            "jobqueue_job_duration_seconds_count{{queue=\"mail\"}} {n} {t}\n"
        ));
    }
    let (code, body) = http_post(
        push_port,
        "/v1/metrics",
        "text/plain; version=0.0.4",
        text.as_bytes(),
    )
    .unwrap();
    assert_eq!(code, 200, "{body}");

    let panel_expr = |title: &str| -> String {
        let panel = d["panels"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["title"] == title)
            .unwrap_or_else(|| panic!("no panel {title:?}"));
        panel["queries"][0]["expr"].as_str().unwrap().to_string()
    };
    let pending = panel_expr("Pending jobs by queue");
    fleet.wait_for("the pending jobs panel's data", LONG, || {
        query_value(&fleet, &pending, "queue-1") == Some(42.0)
    });
    let result = fleet.query(&pending);
    assert_eq!(result[0]["metric"]["queue"], "mail", "{result:?}");
    // p95 of 100 jobs, 90 under 1 s and all under 5 s: inside the (1, 5] bucket
    let p95 = panel_expr("Processing time p95 and p99");
    let v = query_value(&fleet, &p95, "queue-1").expect("a p95");
    assert!(v > 1.0 && v <= 5.0, "{p95} = {v}");

    // SIGHUP: the fixed file and a new one load, nothing is refused
    std::fs::write(
        dir.join("broken.toml"),
        "title = \"Fixed\"\n[[panels]]\ntitle = \"x\"\nunit = \"percent\"\n[[panels.queries]]\nexpr = \"up\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("extra.toml"),
        "id = \"votes\"\ntitle = \"Votes\"\n[[panels]]\ntitle = \"Queue\"\n[[panels.queries]]\nexpr = \"avg_over_time(redis_queue_length[5m])\"\n",
    )
    .unwrap();
    sighup(agg.pid());
    fleet.wait_for("the reloaded dashboards", LONG, || {
        let (_, list) = get(&fleet, "/api/dashboards");
        let got = ids(&list);
        got.contains(&"broken".to_string())
            && got.contains(&"votes".to_string())
            && list["data"]["errors"].as_array().unwrap().is_empty()
    });
    let (code, votes) = get(&fleet, &format!("/api/dashboards/{}", urlencode("votes")));
    assert_eq!(code, 200);
    assert_eq!(votes["data"]["panels"][0]["unit"], "short");
    assert_eq!(votes["data"]["panels"][0]["type"], "line");
    assert_eq!(votes["data"]["panels"][0]["width"], 6);
}

#[test]
fn with_no_directory_the_shipped_examples_are_served() {
    let fleet = Fleet::new();
    let _agg = fleet.start_aggregator();
    let (code, list) = get(&fleet, "/api/dashboards");
    assert_eq!(code, 200);
    assert_eq!(ids(&list), shipped_ids());
    assert!(list["data"]["errors"].as_array().unwrap().is_empty());
    let (code, hosts) = get(&fleet, "/api/dashboards/fleet-hosts");
    assert_eq!(code, 200);
    assert_eq!(hosts["data"]["title"], "Fleet hosts");
}

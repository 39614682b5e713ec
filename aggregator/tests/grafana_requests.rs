//! Grafana's Prometheus data source against a real aggregator: every request the data source
//! sends, formed as Grafana forms it (method, content type, parameter encoding and order, the
//! bearer token as a custom `Authorization` header, Go's `User-Agent`/`Accept-Encoding`), and
//! every answer decoded the way Grafana decodes it, with values checked against the data shipped.
//!
//! Grafana cannot be installed here, so the requests and the decoder follow Grafana's source
//! (repository grafana/grafana, read at the commits given):
//!
//! - `pkg/promlib/client/client.go` (24d6880a): queries are `POST` with
//!   `Content-Type: application/x-www-form-urlencoded` by default (`httpMethod` unset means
//!   POST, `pkg/promlib/querydata/request.go` 0084c0a5), the form from Go's `url.Values.Encode`
//!   (keys sorted, space as `+`); `start`/`end`/`time` are Unix seconds written with
//!   `strconv.FormatFloat(.., 'f', -1, 64)` (decimals when not whole), `step` is float seconds
//!   the same way; `timeout` is added when a query timeout is configured. Resource calls
//!   (`QueryResource`) keep the body a browser sent, but `api/v1/label/…`,
//!   `api/v1/metadata` and `api/v1/status/buildinfo` are always `GET`
//!   (`endpointsSupportOnlyGet`), the body moved to the query string.
//! - `pkg/promlib/healthcheck.go` (03930ff8): "Save & test" is the instant query `1+1` over the
//!   range 1 s .. 4 s, so `time=4`; `pkg/promlib/heuristics.go` (0c2c8040) then reads
//!   `api/v1/status/buildinfo` and calls the server Prometheus when `data.features` is empty.
//! - `pkg/promlib/models/query.go` (00aaabde): range start and end are rounded down to a
//!   multiple of the step (`AlignTimeRange`); an instant query's time is the range end as is.
//! - `pkg/promlib/converter/prom.go` (08627cf7) and `pkg/promlib/querydata/response.go`
//!   (00aaabde): the decoder. `status: "error"` becomes the error `"<errorType>: <error>"`; a
//!   `data` object without `resultType` is the error "no resultType found"; `metric` must be
//!   an object of strings; a sample is `[number, "string"]`, the time converted with
//!   `time.UnixMilli(int64(t*1000))`, the value with `strconv.ParseFloat`; `warnings` and
//!   `infos` are arrays of strings.
//! - `packages/grafana-prometheus/src/language_provider.ts` (00ebd26e) and `datasource.ts`
//!   (012d362d): the editor's look-ups, through the resource path: label values
//!   (`/api/v1/label/NAME/values` with `start`, `end` and optionally `match[]`), label names
//!   (`/api/v1/labels`, `match[]` optional), series (`/api/v1/series` with `match[]` and
//!   `limit=40000`), `/api/v1/metadata` with no parameters, `/api/v1/rules` for recording rule
//!   expansion (`data.groups[].rules[]` with `type`, `name`, `query`) and
//!   `/api/v1/query_exemplars` (`start`/`end` in milliseconds) whose non-success answer turns
//!   exemplars off. The browser body is form-encoded with `encodeURIComponent` in object order.
//!   Look-up times are whole seconds snapped to the minute (`getRangeSnapInterval` in
//!   `language_utils.ts`).
//! - `public/app/features/alerting/unified/api/buildInfo.ts` (14a38d0f): alerting's feature
//!   discovery reads buildinfo's `data.version` and `data.features`, then
//!   `/api/v1/status/flags`, whose success would mark the server as Thanos.

mod support;

use fleetwatch_common::model::{Batch, Label, Lane, MetricKind, Sample, Series, SeriesSamples};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;
use support::{Fleet, TOKEN};

/// The `User-Agent` Grafana's backend HTTP client sends.
const GRAFANA_UA: &str = "Grafana/11.5.0";
/// Sample interval of the shipped data.
const SCRAPE_MS: i64 = 15_000;
/// Samples per shipped series.
const POINTS: i64 = 41;

fn temperature(room: &str, i: i64) -> f64 {
    match room {
        "x" => 20.0 + i as f64 * 0.25,
        _ => 30.0 - i as f64 * 0.125,
    }
}

fn requests_total(i: i64) -> f64 {
    1000.0 + 10.0 * i as f64
}

/// Ten minutes of a gauge in two rooms and a counter, as host `gf-1`.
fn dataset(t0: i64) -> Batch {
    let mut batch = Batch::new(Lane::Metrics, t0 + POINTS * SCRAPE_MS);
    let samples = |f: &dyn Fn(i64) -> f64| -> Vec<Sample> {
        (0..POINTS)
            .map(|i| Sample {
                timestamp_ms: t0 + i * SCRAPE_MS,
                value: f(i),
            })
            .collect()
    };
    for room in ["x", "y"] {
        batch.metrics.push(SeriesSamples {
            series: Series::new("grafana_probe_temperature", [Label::new("room", room)]),
            kind: MetricKind::Gauge,
            samples: samples(&|i| temperature(room, i)),
        });
    }
    batch.metrics.push(SeriesSamples {
        series: Series::new("grafana_probe_requests_total", [Label::new("code", "200")]),
        kind: MetricKind::Counter,
        samples: samples(&requests_total),
    });
    batch
}

/// Seconds as Go's `strconv.FormatFloat(s, 'f', -1, 64)` writes them.
fn go_seconds(ms: i64) -> String {
    let s = format!("{}", ms as f64 / 1000.0);
    assert!(!s.contains('e'), "{s}");
    s
}

/// A time as Grafana's decoder turns it into milliseconds: `int64(t * 1000)`, truncated.
fn grafana_ms(t: f64) -> i64 {
    (t * 1000.0) as i64
}

/// Go's `url.QueryEscape`.
fn go_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            b' ' => "+".to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Go's `url.Values.Encode`: keys sorted, each escaped with `QueryEscape`.
fn go_form(pairs: &[(&str, &str)]) -> String {
    let mut sorted: Vec<&(&str, &str)> = pairs.iter().collect();
    sorted.sort_by_key(|(k, _)| *k);
    sorted
        .iter()
        .map(|(k, v)| format!("{}={}", go_escape(k), go_escape(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// A browser's form body from Grafana's `serializeParams`: `encodeURIComponent`, object order.
fn browser_form(pairs: &[(&str, &str)]) -> String {
    let enc = |s: &str| -> String {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z'
                | b'a'..=b'z'
                | b'0'..=b'9'
                | b'-'
                | b'_'
                | b'.'
                | b'!'
                | b'~'
                | b'*'
                | b'\''
                | b'('
                | b')' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect()
    };
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

struct Reply {
    status: u16,
    content_type: String,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}), status {}: {}", self.status, self.body))
    }
}

/// One request with the headers Grafana's backend HTTP client sends (Go's net/http: canonical
/// header names, `Accept-Encoding: gzip`; the data source's custom header
/// `Authorization: Bearer TOKEN`), a form body for `POST`.
fn grafana_request(port: u16, method: &str, path: &str, form: &str, token: Option<&str>) -> Reply {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: {GRAFANA_UA}\r\n"
    );
    if method == "POST" {
        head.push_str(&format!(
            "Content-Length: {}\r\nContent-Type: application/x-www-form-urlencoded\r\n",
            form.len()
        ));
    }
    if let Some(t) = token {
        head.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    head.push_str("Accept-Encoding: gzip\r\nConnection: close\r\n\r\n");
    s.write_all(head.as_bytes()).unwrap();
    if method == "POST" {
        s.write_all(form.as_bytes()).unwrap();
    }
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let lower = head.to_ascii_lowercase();
    assert!(
        !lower.contains("content-encoding"),
        "Go's transport undoes gzip only when it asked for it; keep it simple: {head}"
    );
    let content_type = lower
        .lines()
        .find_map(|l| l.strip_prefix("content-type:"))
        .map(|v| v.trim().to_string())
        .unwrap_or_default();
    let body = if lower.contains("transfer-encoding: chunked") {
        support::dechunk(body)
    } else {
        body.to_string()
    };
    Reply {
        status,
        content_type,
        body,
    }
}

/// One frame of Grafana's decoder: the series' labels and its (time ms, value) rows.
#[derive(Debug)]
struct Frame {
    labels: BTreeMap<String, String>,
    rows: Vec<(i64, f64)>,
}

/// What Grafana's `ReadPrometheusStyleResult` makes of a query answer: frames and notices,
/// or the error it would show.
#[derive(Debug)]
struct Decoded {
    result_type: String,
    frames: Vec<Frame>,
    notices: Vec<String>,
}

/// `[t, "v"]`: `ReadFloat64` then `ReadString` and Go's `ParseFloat`.
fn time_value_pair(v: &Value) -> Result<(i64, f64), String> {
    let pair = v.as_array().ok_or("sample is not an array")?;
    if pair.len() != 2 {
        return Err(format!("sample {v} has {} elements", pair.len()));
    }
    let t = pair[0]
        .as_f64()
        .ok_or(format!("sample time {} is not a number", pair[0]))?;
    let s = pair[1]
        .as_str()
        .ok_or(format!("sample value {} is not a string", pair[1]))?;
    let value = match s {
        "NaN" => f64::NAN,
        "+Inf" | "Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        _ => s.parse::<f64>().map_err(|e| format!("value {s:?}: {e}"))?,
    };
    Ok((grafana_ms(t), value))
}

fn labels_of(v: Option<&Value>) -> Result<BTreeMap<String, String>, String> {
    let Some(v) = v else {
        return Ok(BTreeMap::new());
    };
    v.as_object()
        .ok_or(format!("metric {v} is not an object"))?
        .iter()
        .map(|(k, v)| {
            v.as_str()
                .map(|s| (k.clone(), s.to_string()))
                .ok_or(format!("label {k} is not a string"))
        })
        .collect()
}

fn decode_like_grafana(body: &str) -> Result<Decoded, String> {
    let root: Value = serde_json::from_str(body).map_err(|e| format!("not JSON: {e}"))?;
    let root = root.as_object().ok_or("answer is not an object")?;
    let text = |k: &str| root.get(k).and_then(Value::as_str).unwrap_or("");
    if text("status") == "error" {
        return Err(format!("{}: {}", text("errorType"), text("error")));
    }
    let mut notices = Vec::new();
    for key in ["warnings", "infos"] {
        if let Some(list) = root.get(key).and_then(Value::as_array) {
            notices.extend(list.iter().filter_map(Value::as_str).map(String::from));
        }
    }
    let data = root
        .get("data")
        .and_then(Value::as_object)
        .ok_or("expected object type")?;
    let result_type = data
        .get("resultType")
        .and_then(Value::as_str)
        .ok_or("no resultType found")?
        .to_string();
    let result = data.get("result").ok_or("no result")?;
    let frames = match result_type.as_str() {
        "matrix" | "vector" => {
            let mut frames = Vec::new();
            for elem in result.as_array().ok_or("result is not an array")? {
                let labels = labels_of(elem.get("metric"))?;
                let mut rows = Vec::new();
                if let Some(v) = elem.get("value") {
                    rows.push(time_value_pair(v)?);
                }
                if let Some(vs) = elem.get("values") {
                    for v in vs.as_array().ok_or("values is not an array")? {
                        rows.push(time_value_pair(v)?);
                    }
                }
                frames.push(Frame { labels, rows });
            }
            frames
        }
        "scalar" => vec![Frame {
            labels: BTreeMap::new(),
            rows: vec![time_value_pair(result)?],
        }],
        other => return Err(format!("unknown result type: {other}")),
    };
    Ok(Decoded {
        result_type,
        frames,
        notices,
    })
}

/// A look-up answer as the browser code reads it: `res.data.data`.
fn lookup_data(reply: &Reply, what: &str) -> Value {
    assert_eq!(reply.status, 200, "{what}: {}", reply.body);
    let v = reply.json();
    assert_eq!(v["status"], "success", "{what}: {}", reply.body);
    v["data"].clone()
}

fn strings(v: &Value, what: &str) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("{what}: data is not an array: {v}"))
        .iter()
        .map(|s| {
            s.as_str()
                .unwrap_or_else(|| panic!("{what}: {s} is not a string"))
                .to_string()
        })
        .collect()
}

const RULES: &str = r#"groups:
  - name: grafana
    interval: 1s
    rules:
      - record: room:grafana_probe_temperature:max
        expr: max by (room) (grafana_probe_temperature)
"#;

#[test]
fn grafana_prometheus_data_source_requests() {
    let fleet = Fleet::new();
    fleet.use_rules(RULES);
    fleet.agent_config("gf-agent", 0.2, "");
    let _agg = fleet.start_aggregator();
    let _agent = fleet.start_agent("gf-agent");
    let port = fleet.http_port;
    let now = fleetwatch_common::model::now_ms();
    // twenty minutes ago, on a 15 s boundary
    let t0 = (now - 20 * 60 * 1000).div_euclid(SCRAPE_MS) * SCRAPE_MS;
    support::ship_in_order(&fleet, "gf-1", vec![dataset(t0)]);
    fleet.wait_for(
        "the real agent's host series",
        Duration::from_secs(30),
        || {
            !fleet
                .query("node_time_seconds{host=\"gf-agent\"}")
                .is_empty()
        },
    );

    let post = |path: &str, form: &str| grafana_request(port, "POST", path, form, Some(TOKEN));
    let get = |path: &str| grafana_request(port, "GET", path, "", Some(TOKEN));

    // --- "Save & test": instant query 1+1 at time 4 (healthcheck.go), POST form.
    let health = post(
        "/api/v1/query",
        &go_form(&[("query", "1+1"), ("time", "4")]),
    );
    assert_eq!(health.status, 200, "health check: {}", health.body);
    assert!(
        health.content_type.starts_with("application/json"),
        "{}",
        health.content_type
    );
    let d = decode_like_grafana(&health.body).expect("health check decodes");
    assert_eq!(d.result_type, "scalar");
    assert_eq!(d.frames[0].rows, vec![(4000, 2.0)]);
    // Grafana's "custom query parameters" ride in the URL even on a POST; Prometheus reads
    // the body's parameters first, then the URL's (Go's Request.Form).
    let custom = post(
        "/api/v1/query?time=7&query=2%2B2",
        &go_form(&[("query", "1+1")]),
    );
    assert_eq!(custom.status, 200, "{}", custom.body);
    let d = decode_like_grafana(&custom.body).expect("a POST with URL parameters decodes");
    assert_eq!(
        d.frames[0].rows,
        vec![(7000, 2.0)],
        "the body's query, the URL's time"
    );

    // --- heuristics.go and alerting's buildInfo.ts: buildinfo by GET; no `features` means
    // "Prometheus" (no ruler API); a successful /api/v1/status/flags would mean Thanos.
    let info = get("/api/v1/status/buildinfo");
    assert_eq!(info.status, 200, "{}", info.body);
    let info = info.json();
    assert_eq!(info["status"], "success");
    let version = info["data"]["version"]
        .as_str()
        .expect("data.version string");
    assert_eq!(version, env!("CARGO_PKG_VERSION"));
    for key in ["revision", "branch", "buildUser", "buildDate", "goVersion"] {
        assert!(info["data"][key].is_string(), "data.{key}: {info}");
    }
    assert!(info["data"].get("features").is_none(), "{info}");
    let flags = get("/api/v1/status/flags");
    assert_ne!(
        flags.status, 200,
        "Grafana would take a successful flags API for Thanos"
    );

    // --- a panel's range query: POST form with aligned float start/end, a float step
    // (7.5 s: a 4-minute range at Grafana's default resolution) and the query timeout.
    let step_ms = 7_500;
    let start = (t0 + 68_000).div_euclid(step_ms) * step_ms;
    let end = (t0 + 250_000).div_euclid(step_ms) * step_ms;
    assert!(
        start % 1000 != 0 && end % 1000 != 0,
        "want fractional bounds"
    );
    let (start_s, end_s, step_s) = (go_seconds(start), go_seconds(end), go_seconds(step_ms));
    let range = post(
        "/api/v1/query_range",
        &go_form(&[
            ("query", "grafana_probe_temperature{room=\"x\"}"),
            ("start", &start_s),
            ("end", &end_s),
            ("step", &step_s),
            ("timeout", "60s"),
        ]),
    );
    assert_eq!(range.status, 200, "range query: {}", range.body);
    let d = decode_like_grafana(&range.body).expect("range query decodes");
    assert_eq!(d.result_type, "matrix");
    assert!(d.notices.is_empty(), "{:?}", d.notices);
    assert_eq!(d.frames.len(), 1, "{:?}", d.frames);
    let frame = &d.frames[0];
    let want_labels: BTreeMap<String, String> = [
        ("__name__", "grafana_probe_temperature"),
        ("host", "gf-1"),
        ("room", "x"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(frame.labels, want_labels);
    let want: Vec<(i64, f64)> = (0..)
        .map(|k| start + k * step_ms)
        .take_while(|t| *t <= end)
        .map(|t| {
            let shown = grafana_ms(go_seconds(t).parse::<f64>().unwrap());
            (shown, temperature("x", (t - t0) / SCRAPE_MS))
        })
        .collect();
    assert_eq!(frame.rows, want, "range query values");

    // rate() of a counter rising 10 every 15 s, 15 s step, no timeout configured
    let (rs, re) = (t0 + 120_000, t0 + 480_000);
    let rate = post(
        "/api/v1/query_range",
        &go_form(&[
            ("query", "rate(grafana_probe_requests_total[1m])"),
            ("start", &go_seconds(rs)),
            ("end", &go_seconds(re)),
            ("step", "15"),
        ]),
    );
    let d = decode_like_grafana(&rate.body).expect("rate decodes");
    assert_eq!(d.frames.len(), 1);
    assert_eq!(d.frames[0].rows.len(), 25);
    for (t, v) in &d.frames[0].rows {
        assert!((v - 10.0 / 15.0).abs() < 1e-9, "rate at {t}: {v}");
    }
    assert!(!d.frames[0].labels.contains_key("__name__"));

    // --- an instant query (table, stat, Explore's "Both"): time is the range end, unaligned.
    let at = t0 + 100_123;
    let instant = post(
        "/api/v1/query",
        &go_form(&[
            ("query", "sum by (room) (grafana_probe_temperature)"),
            ("time", &go_seconds(at)),
        ]),
    );
    let d = decode_like_grafana(&instant.body).expect("instant query decodes");
    assert_eq!(d.result_type, "vector");
    let mut got: Vec<(String, i64, f64)> = d
        .frames
        .iter()
        .map(|f| (f.labels["room"].clone(), f.rows[0].0, f.rows[0].1))
        .collect();
    got.sort_by(|a, b| a.0.cmp(&b.0));
    let shown = grafana_ms(go_seconds(at).parse::<f64>().unwrap());
    let i = (at - t0) / SCRAPE_MS;
    assert_eq!(
        got,
        vec![
            ("x".to_string(), shown, temperature("x", i)),
            ("y".to_string(), shown, temperature("y", i)),
        ]
    );
    assert!(
        d.frames.iter().all(|f| f.labels.len() == 1),
        "{:?}",
        d.frames
    );

    // --- a bad query: Grafana shows "<errorType>: <error>".
    let bad = post(
        "/api/v1/query_range",
        &go_form(&[
            ("query", "sum(rate(grafana_probe_requests_total[1m])"),
            ("start", &start_s),
            ("end", &end_s),
            ("step", &step_s),
        ]),
    );
    assert_eq!(bad.status, 400, "{}", bad.body);
    let err = decode_like_grafana(&bad.body).expect_err("a parse error is an error");
    assert!(
        err.starts_with("bad_data: ") && err.len() > "bad_data: ".len(),
        "{err}"
    );
    let bad_step = post(
        "/api/v1/query_range",
        &go_form(&[
            ("query", "up"),
            ("start", &start_s),
            ("end", &end_s),
            ("step", "0"),
        ]),
    );
    assert_eq!(bad_step.status, 400, "{}", bad_step.body);
    let err = decode_like_grafana(&bad_step.body).expect_err("step 0 is an error");
    assert!(
        err.starts_with("bad_data: ") && err.contains("step"),
        "{err}"
    );
    // without the token the health check reports the HTTP status, with a JSON reason
    let anon = grafana_request(
        port,
        "POST",
        "/api/v1/query",
        &go_form(&[("query", "1+1"), ("time", "4")]),
        None,
    );
    assert_eq!(anon.status, 401);
    assert_eq!(anon.json()["status"], "error");

    // --- the query editor's look-ups (language_provider.ts), times snapped to the minute.
    let lookup_start = (now - 60 * 60 * 1000).div_euclid(60_000) * 60;
    let lookup_end = (now + 59_999).div_euclid(60_000) * 60;
    let (ls, le) = (lookup_start.to_string(), lookup_end.to_string());

    // metric names: label values of __name__, always GET (client.go endpointsSupportOnlyGet)
    let names = strings(
        &lookup_data(
            &get(&format!(
                "/api/v1/label/__name__/values?{}",
                go_form(&[("start", &ls), ("end", &le)])
            )),
            "metric names",
        ),
        "metric names",
    );
    for name in [
        "grafana_probe_temperature",
        "grafana_probe_requests_total",
        "node_time_seconds",
    ] {
        assert!(
            names.contains(&name.to_string()),
            "{name} missing: {names:?}"
        );
    }
    let mut sorted = names.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(names, sorted, "sorted and unique");

    // label values with match[] (fetchSeriesValuesWithMatch)
    let hosts = |selector: &str| {
        strings(
            &lookup_data(
                &get(&format!(
                    "/api/v1/label/host/values?{}",
                    go_form(&[("start", &ls), ("end", &le), ("match[]", selector)])
                )),
                "host values",
            ),
            "host values",
        )
    };
    assert_eq!(hosts("grafana_probe_temperature"), vec!["gf-1"]);
    assert_eq!(hosts("{__name__=\"node_time_seconds\"}"), vec!["gf-agent"]);

    // label names: POST from the browser (fetchSeriesLabelsMatch), body passed on as is
    let label_names = |form: &str| {
        strings(
            &lookup_data(&post("/api/v1/labels", form), "label names"),
            "label names",
        )
    };
    assert_eq!(
        label_names(&browser_form(&[
            ("start", &ls),
            ("end", &le),
            ("match[]", "grafana_probe_temperature")
        ])),
        vec!["__name__", "host", "room"]
    );
    let all = label_names(&browser_form(&[("start", &ls), ("end", &le)]));
    for l in ["__name__", "host", "room", "code"] {
        assert!(all.contains(&l.to_string()), "{l} missing: {all:?}");
    }

    // series: POST with match[] and the metrics browser's limit (fetchSeriesLabels)
    let series = lookup_data(
        &post(
            "/api/v1/series",
            &browser_form(&[
                ("start", &ls),
                ("end", &le),
                ("match[]", "grafana_probe_temperature{room=\"x\"}"),
                ("limit", "40000"),
            ]),
        ),
        "series",
    );
    assert_eq!(
        series,
        serde_json::json!([{
            "__name__": "grafana_probe_temperature",
            "host": "gf-1",
            "room": "x",
        }])
    );

    // `limit` (Prometheus 2.54+; the metrics browser sends 40000): a shorter list and
    // Prometheus' warning, which Grafana's look-ups ignore (they read `data` only)
    let cut = post(
        "/api/v1/series",
        &browser_form(&[
            ("start", &ls),
            ("end", &le),
            ("match[]", "grafana_probe_temperature"),
            ("limit", "1"),
        ]),
    );
    assert_eq!(
        lookup_data(&cut, "series limit").as_array().map(Vec::len),
        Some(1)
    );
    assert_eq!(
        cut.json()["warnings"],
        serde_json::json!(["results truncated due to limit"])
    );
    // gf-1's names only: the agent's own metric names keep appearing as it runs
    let two = get(&format!(
        "/api/v1/label/__name__/values?{}",
        go_form(&[
            ("start", &ls),
            ("end", &le),
            ("match[]", "{host=\"gf-1\"}"),
            ("limit", "2")
        ])
    ));
    assert_eq!(
        strings(&lookup_data(&two, "values limit"), "values limit"),
        ["grafana_probe_requests_total", "grafana_probe_temperature"]
    );
    assert_eq!(two.json()["warnings"][0], "results truncated due to limit");
    let room = post(
        "/api/v1/labels",
        &browser_form(&[
            ("start", &ls),
            ("end", &le),
            ("match[]", "grafana_probe_temperature"),
            ("limit", "3"),
        ]),
    );
    assert!(room.json().get("warnings").is_none(), "{}", room.body);
    let negative = get("/api/v1/label/__name__/values?limit=-1");
    assert_eq!(negative.status, 400, "{}", negative.body);
    assert_eq!(negative.json()["errorType"], "bad_data");

    // metadata (loadMetricsMetadata): GET, no parameters; Record<name, [{type, help, unit}]>
    let meta = lookup_data(&get("/api/v1/metadata"), "metadata");
    for (name, kind) in [
        ("grafana_probe_temperature", "gauge"),
        ("grafana_probe_requests_total", "counter"),
    ] {
        let entry = &meta[name][0];
        assert_eq!(entry["type"], kind, "{name}: {meta}");
        assert!(
            entry["help"].is_string() && entry["unit"].is_string(),
            "{entry}"
        );
    }

    // recording rules (loadRules): data.groups[].rules[] with type, name and query
    let rules = lookup_data(&get("/api/v1/rules"), "rules");
    let recording: Vec<(String, String)> = rules["groups"]
        .as_array()
        .expect("data.groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
        .filter(|r| r["type"] == "recording")
        .map(|r| {
            (
                r["name"].as_str().unwrap_or_default().to_string(),
                r["query"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert_eq!(recording.len(), 1, "{rules}");
    assert_eq!(recording[0].0, "room:grafana_probe_temperature:max");
    assert!(
        recording[0].1.contains("grafana_probe_temperature"),
        "{recording:?}"
    );

    // exemplars (areExemplarsAvailable): fleetwatch keeps none; anything but success turns
    // Grafana's exemplar toggle off
    let ex = get(&format!(
        "/api/v1/query_exemplars?{}",
        go_form(&[
            ("query", "test"),
            ("start", &(now - 30 * 60 * 1000).to_string()),
            ("end", &now.to_string()),
        ])
    ));
    assert!(
        ex.status != 200 || ex.json()["status"] != "success",
        "{}",
        ex.body
    );
}

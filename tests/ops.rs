//! Operations (issue #5): metrics that match the traffic, health and readiness, SIGHUP
//! reloads that keep state, and a SIGTERM drain that relays the real answer.

mod support;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hookgate::admin::{serve_admin, AdminState};
use hookgate::server::reload::Reloader;
use serde_json::json;
use support::*;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// A gateway serving a config file (so it can be reloaded), with its admin listener.
struct Ops {
    gateway_url: String,
    admin_url: String,
    reloader: Reloader,
    admin: Arc<AdminState>,
    config_path: PathBuf,
    _gateway: TestGateway,
    _admin_stop: oneshot::Sender<()>,
    _dir: TempDir,
}

impl Ops {
    async fn start(name: &str, config: &str) -> Self {
        let dir = TempDir::new(&format!("ops-{name}"));
        let config_path = dir.write("config.toml", config);
        let config = hookgate::Config::load(&config_path).unwrap_or_else(|e| panic!("{e}"));
        // Served as the binary serves: through the workers.
        let gateway = spawn_config(config.clone()).await;
        let gateway_url = gateway.url("/fp");

        let admin_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin_url = format!("http://{}", admin_listener.local_addr().unwrap());
        let metrics = Arc::clone(gateway.gateway.metrics());
        let admin = Arc::new(AdminState::new(metrics, Arc::clone(gateway.serving())));
        let (admin_stop, admin_stop_rx) = oneshot::channel::<()>();
        tokio::spawn(serve_admin(admin_listener, Arc::clone(&admin), async {
            let _ = admin_stop_rx.await;
        }));
        let reloader = gateway.reloader(config);
        Self {
            gateway_url,
            admin_url,
            reloader,
            admin,
            config_path,
            _gateway: gateway,
            _admin_stop: admin_stop,
            _dir: dir,
        }
    }

    async fn get(&self, path: &str) -> Answer {
        Sender::http1()
            .send(
                http::Request::get(format!("{}{path}", self.admin_url))
                    .body(http_body_util::Full::new(bytes::Bytes::new()))
                    .unwrap(),
            )
            .await
    }

    /// The value of the exposition line starting with `series` (name and labels).
    async fn metric(&self, series: &str) -> f64 {
        let text = self.get("/metrics").await.text();
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no series {series} in\n{text}"))
    }

    fn rewrite(&self, config: &str) {
        std::fs::write(&self.config_path, config).unwrap();
    }
}

fn config(upstream_url: &str, extra: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"

[[sources]]
name = "fp"
path = "/fp"

[upstreams.app]
url = "{upstream_url}"
{extra}

[[routes]]
event_type = ["lead_*", "fulfilment_pending"]
upstream = "app"
"#
    )
}

/// `/metrics` counts exactly the traffic sent: forwarded, duplicates (and dedup hits),
/// unrouted, bad requests (incl. an unknown path), upstream statuses and durations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_match_the_traffic() {
    let upstream = FakeUpstream::start(Reply::json(200, "{}")).await;
    upstream.script([Reply::status(500)]);
    let ops = Ops::start("metrics", &config(&upstream.url("/hook"), "")).await;
    let sender = Sender::http1();
    let url = &ops.gateway_url;

    sender.post(url, event(json!(1), "lead_signup")).await; // 500, forwarded
    for id in 1..=3 {
        sender.post(url, event(json!(id), "lead_signup")).await; // 200, forwarded
    }
    for _ in 0..2 {
        sender.post(url, event(json!(2), "lead_signup")).await; // duplicates
    }
    sender.post(url, event(json!(9), "promoter_accepted")).await; // unrouted
    sender.post(url, "not json").await; // 400
    let unknown = url.replace("/fp", "/nope");
    sender.post(&unknown, event(json!(1), "lead_signup")).await; // 404

    let requests =
        |outcome: &str| format!("hookgate_requests_total{{source=\"fp\",outcome=\"{outcome}\"}}");
    assert_eq!(ops.metric(&requests("forwarded")).await, 4.0);
    assert_eq!(ops.metric(&requests("duplicate")).await, 2.0);
    assert_eq!(ops.metric(&requests("unrouted")).await, 1.0);
    assert_eq!(ops.metric(&requests("bad_request")).await, 1.0);
    assert_eq!(ops.metric(&requests("upstream_error")).await, 0.0);
    let unknown_source = "hookgate_requests_total{source=\"unknown\",outcome=\"bad_request\"}";
    assert_eq!(ops.metric(unknown_source).await, 1.0);
    assert_eq!(ops.metric("hookgate_dedup_hits_total").await, 2.0);
    let upstream_requests = |status: &str| {
        format!("hookgate_upstream_requests_total{{upstream=\"app\",status=\"{status}\"}}")
    };
    assert_eq!(ops.metric(&upstream_requests("200")).await, 3.0);
    assert_eq!(ops.metric(&upstream_requests("500")).await, 1.0);
    let count = "hookgate_upstream_duration_seconds_count{upstream=\"app\"}";
    assert_eq!(ops.metric(count).await, 4.0);
    assert_eq!(ops.metric("hookgate_dedup_records").await, 3.0);
    assert_eq!(
        ops.metric("hookgate_in_flight{upstream=\"app\"}").await,
        0.0
    );
    assert_eq!(upstream.count(), 4);
}

/// Failures made by hookgate are `upstream_error`; limits are `rate_limited` with a scope.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_upstream_errors_and_limits() {
    let upstream = FakeUpstream::start(Reply::status(200).after(Duration::from_millis(800))).await;
    let extra = "timeout = \"200ms\"\nrate_limit = { per_second = 1, burst = 1 }";
    let ops = Ops::start("errors", &config(&upstream.url("/hook"), extra)).await;
    let sender = Sender::http1();
    let timed_out = sender
        .post(&ops.gateway_url, event(json!(1), "lead_signup"))
        .await;
    assert_eq!(timed_out.status, 504);
    let limited = sender
        .post(&ops.gateway_url, event(json!(2), "lead_signup"))
        .await;
    assert_eq!(limited.status, 429);
    let requests =
        |outcome: &str| format!("hookgate_requests_total{{source=\"fp\",outcome=\"{outcome}\"}}");
    assert_eq!(ops.metric(&requests("upstream_error")).await, 1.0);
    assert_eq!(ops.metric(&requests("rate_limited")).await, 1.0);
    assert_eq!(
        ops.metric("hookgate_rate_limited_total{scope=\"upstream\"}")
            .await,
        1.0
    );
    let timeouts = "hookgate_upstream_requests_total{upstream=\"app\",status=\"timeout\"}";
    assert_eq!(ops.metric(timeouts).await, 1.0);
}

/// `/healthz` is 200; `/readyz` is 200, then 503 once draining; unknown paths are 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness() {
    let upstream = FakeUpstream::start(Reply::status(200)).await;
    let ops = Ops::start("health", &config(&upstream.url("/hook"), "")).await;
    assert_eq!(ops.get("/healthz").await.status, 200);
    assert_eq!(ops.get("/readyz").await.status, 200);
    assert_eq!(ops.get("/other").await.status, 404);
    ops.admin.start_draining();
    assert_eq!(ops.get("/readyz").await.status, 503);
    assert_eq!(ops.get("/healthz").await.status, 200);
}

/// `/readyz` is 503 while the Redis backend cannot be reached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_needs_a_reachable_redis() {
    let closed = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let dedup = format!("[dedup]\nbackend = \"redis\"\nredis_url = \"redis://{closed}\"\n");
    let text = config("http://127.0.0.1:9/hook", "").replacen(
        "[upstreams.app]",
        &format!("{dedup}\n[upstreams.app]"),
        1,
    );
    let ops = Ops::start("readyz-redis", &text).await;
    let answer = ops.get("/readyz").await;
    assert_eq!(answer.status, 503);
    assert!(answer.text().contains("dedup backend"), "{}", answer.text());
}

/// A reload during a slow in-flight request: new requests take the new route while the old
/// one completes on the old route; records made before the reload are still replayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_switches_new_requests_while_the_old_one_finishes() {
    let old = FakeUpstream::start(Reply::json(200, r#"{"from":"old"}"#)).await;
    let new = FakeUpstream::start(Reply::json(200, r#"{"from":"new"}"#)).await;
    let ops = Ops::start("reload", &config(&old.url("/hook"), "")).await;
    let sender = Sender::http1();
    let recorded = sender
        .post(&ops.gateway_url, event(json!(1), "lead_signup"))
        .await;
    assert_eq!(recorded.text(), r#"{"from":"old"}"#);

    old.hold();
    let slow = sender.spawn_post(ops.gateway_url.clone(), event(json!(2), "lead_signup"));
    old.wait_for_count(2).await;
    // The held forward shows in the in-flight gauge (and leaves it once answered, below).
    let in_flight = "hookgate_in_flight{upstream=\"app\"}";
    assert_eq!(ops.metric(in_flight).await, 1.0);

    ops.rewrite(&config(&new.url("/hook"), ""));
    ops.reloader.reload().expect("valid reload");
    let fresh = sender
        .post(&ops.gateway_url, event(json!(3), "lead_signup"))
        .await;
    assert_eq!(fresh.text(), r#"{"from":"new"}"#);

    old.release(1);
    let slow = bounded("the in-flight request", slow).await.unwrap();
    assert_eq!(
        (slow.status, slow.text().as_str()),
        (200, r#"{"from":"old"}"#)
    );
    assert_eq!(ops.metric(in_flight).await, 0.0);
    // Dedup records survive the reload: event 1 is replayed, not sent to the new upstream.
    let replay = sender
        .post(&ops.gateway_url, event(json!(1), "lead_signup"))
        .await;
    assert!(replay.is_duplicate());
    assert_eq!(replay.text(), r#"{"from":"old"}"#);
    assert_eq!((old.count(), new.count()), (2, 1));
    assert_eq!(
        ops.metric("hookgate_config_reloads_total{result=\"success\"}")
            .await,
        1.0
    );
}

/// An invalid config is rejected and counted; the running one keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_reload_keeps_serving() {
    let upstream = FakeUpstream::start(Reply::status(200)).await;
    let ops = Ops::start("invalid", &config(&upstream.url("/hook"), "")).await;
    ops.rewrite("[server]\nlisten = \"127.0.0.1:0\"\nunrouted_status = 200\n");
    let error = ops
        .reloader
        .reload()
        .expect_err("an invalid config must be rejected");
    assert!(
        format!("{error:#}").contains("unrouted_status"),
        "{error:#}"
    );
    let answer = Sender::http1()
        .post(&ops.gateway_url, event(json!(1), "lead_signup"))
        .await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        ops.metric("hookgate_config_reloads_total{result=\"failure\"}")
            .await,
        1.0
    );
}

/// Rate-limit state survives a reload that leaves the limit as it was: a spent upstream
/// bucket is still spent (a reload must not hand the legacy app a fresh burst).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_state_survives_a_reload() {
    let upstream = FakeUpstream::start(Reply::status(200)).await;
    let extra = "rate_limit = { per_second = 1, burst = 1 }";
    let ops = Ops::start("limits", &config(&upstream.url("/hook"), extra)).await;
    let sender = Sender::http1();
    assert_eq!(
        sender
            .post(&ops.gateway_url, event(json!(1), "lead_signup"))
            .await
            .status,
        200
    );
    // Same limit, another change (a new route): the spent bucket is carried over.
    let changed =
        config(&upstream.url("/hook"), extra).replace("\"fulfilment_pending\"", "\"fulfilment_*\"");
    ops.rewrite(&changed);
    ops.reloader.reload().expect("valid reload");
    assert_eq!(
        sender
            .post(&ops.gateway_url, event(json!(2), "lead_signup"))
            .await
            .status,
        429
    );
}

/// SIGTERM with a request in flight: the listener closes, `/readyz` turns 503, the request
/// gets its upstream's real answer, and the process exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_relays_the_real_answer() {
    let upstream = FakeUpstream::start(Reply::json(200, r#"{"fulfilled":true}"#)).await;
    upstream.hold();
    let dir = TempDir::new("ops-term");
    let text = config(&upstream.url("/hook"), "").replacen(
        "[server]\n",
        "[server]\nshutdown_timeout = \"20s\"\n",
        1,
    ) + "\n[admin]\nlisten = \"127.0.0.1:0\"\n";
    let (mut child, lines) = spawn_serving(&dir.write("config.toml", text));
    let listening = wait_for_log(&lines, "with the listen address", |log| {
        log["listen"].is_string()
    });
    let gateway = listening["listen"].as_str().unwrap().to_owned();
    let admin = listening["admin"].as_str().unwrap().to_owned();

    let in_flight = Sender::http1().spawn_post(
        format!("http://{gateway}/fp"),
        event(json!(1), "fulfilment_pending"),
    );
    upstream.wait_for_count(1).await;
    signal(&child, "TERM");

    // Draining: readiness turns 503 while health and the in-flight request carry on.
    let readyz = format!("http://{admin}/readyz");
    poll_until("/readyz to answer 503", || async {
        let answer = Sender::http1()
            .send(
                http::Request::get(&readyz)
                    .body(http_body_util::Full::new(bytes::Bytes::new()))
                    .unwrap(),
            )
            .await;
        (answer.status == 503).then_some(())
    })
    .await;
    // The workers close their listeners on their own threads, just after /readyz turns:
    // wait (bounded) for that, while the request is still held in flight.
    poll_until("the gateway listener to close during the drain", || async {
        tokio::net::TcpStream::connect(&gateway)
            .await
            .err()
            .map(drop)
    })
    .await;

    upstream.release(1);
    let answer = bounded("the in-flight answer", in_flight).await.unwrap();
    assert_eq!(
        (answer.status, answer.text().as_str()),
        (200, r#"{"fulfilled":true}"#)
    );
    let status = wait_for_exit(&mut child).await;
    assert_eq!(status.code(), Some(0));
}

/// A drain that `shutdown_timeout` cuts short is said once, whatever the number of workers
/// (each worker waits on the same forwards, so all of them time out together), and the
/// process still exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_cut_short_is_reported_once() {
    let upstream = FakeUpstream::start(Reply::json(200, r#"{"fulfilled":true}"#)).await;
    upstream.hold();
    let dir = TempDir::new("ops-drain-timeout");
    let text = config(&upstream.url("/hook"), "").replacen(
        "[server]\n",
        "[server]\nworkers = 3\nshutdown_timeout = \"1s\"\n",
        1,
    );
    let (mut child, lines) = spawn_serving(&dir.write("config.toml", text));
    let listening = wait_for_log(&lines, "with the listen address", |log| log["workers"] == 3);
    let gateway = listening["listen"].as_str().unwrap().to_owned();
    // Its connection is cut when the drain gives up: an error, not a panic, is expected.
    let request = http::Request::post(format!("http://{gateway}/fp"))
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(event(
            json!(1),
            "fulfilment_pending",
        )))
        .unwrap();
    let held = tokio::spawn(async move { Sender::http1().try_send(request).await });
    upstream.wait_for_count(1).await;
    signal(&child, "TERM");
    let status = wait_for_exit(&mut child).await;
    assert_eq!(status.code(), Some(0));
    // The child has exited: its stdout ends, and so do the lines.
    let warnings = lines
        .iter()
        .filter(|log| log["message"] == "shutdown_timeout passed with requests still in flight")
        .count();
    assert_eq!(warnings, 1, "the cut-short drain is reported once");
    let answer = bounded("the held request's end", held)
        .await
        .expect("the sender task does not panic");
    assert!(
        !answer.is_ok_and(|answer| answer.status == 200),
        "a request cut off by the drain must not look like a success"
    );
    upstream.release(1);
}

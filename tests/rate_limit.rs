//! End to end: rate limits. CONTRACT.md: over an inbound (`[rate_limit]`) or upstream
//! (`rate_limit`) limit the sender gets 429 + `Retry-After` (whole seconds, at least 1),
//! nothing is forwarded or recorded; inbound limits come after size and before verification;
//! a replay is not subject to an upstream's limit; in a fan-out an upstream over its limit is
//! that upstream's failure (429). (`max_in_flight`'s 503 is in `status_table.rs`.)
//!
//! Quotas here are `per_second = 1`: a spent token comes back after one second, far longer
//! than the steps between a refusal and what it is compared with, and short enough that a
//! test can poll (bounded) until the limit admits again.

mod support;

use serde_json::json;
use support::*;

const FP: &str = "/fp";

/// One source at `/fp` routing every event to one upstream, with `rate_limit_table` (a whole
/// `[rate_limit]` table, or nothing), and `upstream_extra` under `[upstreams.app]`.
fn config(upstream_url: &str, rate_limit_table: &str, upstream_extra: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
max_body_bytes = 512

[[sources]]
name = "firstpromoter"
path = "/fp"

{rate_limit_table}

[upstreams.app]
url = "{upstream_url}"
{upstream_extra}

[[routes]]
event_type = "*"
upstream = "app"
"#
    )
}

/// The `Retry-After` of a 429, checked to be whole seconds, at least 1.
fn retry_after(answer: &Answer) -> u64 {
    assert_eq!(answer.status, 429, "{}", answer.text());
    let value = answer
        .headers
        .get("retry-after")
        .unwrap_or_else(|| panic!("429 without Retry-After: {:?}", answer.headers));
    let secs: u64 = value
        .to_str()
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or_else(|| panic!("Retry-After is not whole seconds: {value:?}"));
    assert!(secs >= 1, "Retry-After {secs}");
    secs
}

/// Posts `body` (from the same client) until the answer is not 429, bounded by [`STEP`]:
/// waits out the refill without assuming how long it takes.
async fn post_until_admitted(sender: &Sender, url: &str, body: bytes::Bytes) -> Answer {
    poll_until("the rate limit to admit the request again", || {
        let (sender, url, body) = (sender.clone(), url.to_owned(), body.clone());
        async move {
            let answer = sender.post(&url, body).await;
            (answer.status != 429).then_some(answer)
        }
    })
    .await
}

/// Over `per_client`: 429 + Retry-After, the connection is closed (HTTP/1), the upstream saw
/// nothing extra; once the bucket refills, the same event is forwarded and answered 200.
#[tokio::test]
async fn a_client_over_its_burst_gets_429_and_is_forwarded_once_refilled() {
    let upstream = FakeUpstream::start(Reply::json(200, "ok")).await;
    let gateway = spawn_gateway(&config(
        &upstream.url("/hook"),
        "[rate_limit]\nper_client = { per_second = 1, burst = 2 }",
        "",
    ))
    .await;
    let sender = Sender::http1();
    let url = gateway.url(FP);

    for id in [1, 2] {
        let answer = sender.post(&url, event(json!(id), "lead_signup")).await;
        assert_eq!(answer.status, 200, "within the burst: {}", answer.text());
    }
    let refused = sender.post(&url, event(json!(3), "lead_signup")).await;
    retry_after(&refused);
    assert!(
        error_message(&refused).contains("client rate limit"),
        "{}",
        refused.text()
    );
    assert_eq!(
        refused.headers["connection"], "close",
        "body unread: closed"
    );
    assert!(!refused.is_duplicate());
    // The same client over HTTP/2 (another connection, same address) is refused too.
    let h2 = Sender::h2c()
        .post(&url, event(json!(3), "lead_signup"))
        .await;
    retry_after(&h2);
    assert_eq!(upstream.count(), 2, "nothing over the limit was forwarded");

    let admitted = post_until_admitted(&sender, &url, event(json!(3), "lead_signup")).await;
    assert_eq!(admitted.status, 200, "{}", admitted.text());
    assert!(!admitted.is_duplicate(), "the 429 was not recorded");
    assert_eq!(upstream.count(), 3);
    assert_eq!(upstream.seen()[2].headers["hookgate-event-id"], "3");
}

/// A request over the limit is answered before its body is read: the 429 comes while the
/// announced body has not even been sent, and the connection is closed, so no byte of that
/// body can be read as a next request.
#[tokio::test]
async fn a_refused_request_is_answered_before_its_body_and_the_connection_closed() {
    let upstream = FakeUpstream::start(Reply::json(200, "ok")).await;
    let gateway = spawn_gateway(&config(
        &upstream.url("/hook"),
        "[rate_limit]\nper_client = { per_second = 1, burst = 1 }",
        "",
    ))
    .await;
    let first = Sender::http1()
        .post(&gateway.url(FP), event(json!(1), "lead_signup"))
        .await;
    assert_eq!(first.status, 200);

    let mut conn = RawConn::connect(gateway.addr).await;
    let body = event(json!(2), "lead_signup");
    let mut head = raw_post(FP, &body, "");
    head.truncate(head.len() - body.len());
    conn.write(&head).await.expect("write the head");
    let answer = conn.read_response().await;
    assert_eq!(answer.status, 429);
    assert!(answer.header("retry-after").is_some());
    assert_eq!(answer.header("connection"), Some("close"));
    conn.expect_closed().await;
    assert_eq!(upstream.count(), 1);
}

/// `global` spans clients. Behind a trusted proxy (127.0.0.1 here), `X-Forwarded-For` names
/// the client: two clients each get their own `per_client` bucket, and a third is refused by
/// the global limit they used up. A client refused by its own limit spends no global token.
#[tokio::test]
async fn the_global_limit_spans_clients_named_by_a_trusted_proxy() {
    let upstream = FakeUpstream::start(Reply::json(200, "ok")).await;
    let gateway = spawn_gateway(&config(
        &upstream.url("/hook"),
        r#"[rate_limit]
per_client = { per_second = 1, burst = 1 }
global = { per_second = 1, burst = 2 }
trusted_proxies = ["127.0.0.1/32"]"#,
        "",
    ))
    .await;
    let sender = Sender::http1();
    let url = gateway.url(FP);
    let from = |client: &'static str, id: u64| {
        let sender = sender.clone();
        let url = url.clone();
        async move {
            sender
                .post_with(
                    &url,
                    event(json!(id), "lead_signup"),
                    &[("x-forwarded-for", client)],
                )
                .await
        }
    };

    let a = from("203.0.113.1", 1).await;
    assert_eq!(a.status, 200, "{}", a.text());
    let a_again = from("203.0.113.1", 2).await;
    retry_after(&a_again);
    assert!(error_message(&a_again).contains("client rate limit"));
    let b = from("203.0.113.2", 3).await;
    assert_eq!(
        b.status, 200,
        "another client, and a's refusal spent no global token"
    );
    let c = from("203.0.113.3", 4).await;
    retry_after(&c);
    assert!(
        error_message(&c).contains("global rate limit"),
        "{}",
        c.text()
    );
    assert_eq!(upstream.count(), 2);
    // Each refusal is counted once, under the limit that refused it.
    let metrics = gateway.gateway.metrics().encode();
    for line in [
        r#"hookgate_rate_limited_total{scope="client"} 1"#,
        r#"hookgate_rate_limited_total{scope="global"} 1"#,
        r#"hookgate_requests_total{source="firstpromoter",outcome="rate_limited"} 2"#,
    ] {
        assert!(metrics.contains(line), "missing {line:?} in\n{metrics}");
    }
    // What the upstream is told is unchanged: the sender's list plus the TCP peer.
    assert_eq!(
        upstream.seen()[1].headers["x-forwarded-for"],
        "203.0.113.2, 127.0.0.1"
    );
}

/// From a peer that is not a trusted proxy, `X-Forwarded-For` is ignored: every request
/// below is the same client (127.0.0.1), whatever address it claims.
#[tokio::test]
async fn x_forwarded_for_from_an_untrusted_peer_is_ignored() {
    let upstream = FakeUpstream::start(Reply::json(200, "ok")).await;
    let gateway = spawn_gateway(&config(
        &upstream.url("/hook"),
        r#"[rate_limit]
per_client = { per_second = 1, burst = 1 }
trusted_proxies = ["10.0.0.0/8"]"#,
        "",
    ))
    .await;
    let sender = Sender::http1();
    let url = gateway.url(FP);
    let first = sender
        .post_with(
            &url,
            event(json!(1), "lead_signup"),
            &[("x-forwarded-for", "203.0.113.1")],
        )
        .await;
    assert_eq!(first.status, 200);
    let claimed_other = sender
        .post_with(
            &url,
            event(json!(2), "lead_signup"),
            &[("x-forwarded-for", "203.0.113.2")],
        )
        .await;
    retry_after(&claimed_other);
    assert_eq!(upstream.count(), 1);
}

/// Two upstreams on two routes: `slow` has `rate_limit = { per_second = 1, burst = 1 }`.
async fn two_routes() -> (FakeUpstream, FakeUpstream, TestGateway) {
    let slow = FakeUpstream::start(Reply::json(200, "slow ok")).await;
    let fast = FakeUpstream::start(Reply::json(200, "fast ok")).await;
    let gateway = spawn_gateway(&format!(
        r#"
[server]
listen = "127.0.0.1:0"

[[sources]]
name = "firstpromoter"
path = "/fp"

[upstreams.slow]
url = "{}"
rate_limit = {{ per_second = 1, burst = 1 }}

[upstreams.fast]
url = "{}"

[[routes]]
event_type = "fulfilment_pending"
upstream = "slow"

[[routes]]
event_type = "*"
upstream = "fast"
"#,
        slow.url("/slow"),
        fast.url("/fast")
    ))
    .await;
    (slow, fast, gateway)
}

/// An upstream's `rate_limit` protects it alone: over it, its events get 429 and are not
/// forwarded (nor recorded), while another upstream's route keeps flowing.
#[tokio::test]
async fn an_upstream_limit_protects_one_upstream_while_another_flows() {
    let (slow, fast, gateway) = two_routes().await;
    let sender = Sender::http1();
    let url = gateway.url(FP);

    let first = sender
        .post(&url, event(json!(1), "fulfilment_pending"))
        .await;
    assert_eq!(first.text(), "slow ok");
    let limited = sender
        .post(&url, event(json!(2), "fulfilment_pending"))
        .await;
    retry_after(&limited);
    assert!(
        error_message(&limited).contains("upstream's rate limit"),
        "{}",
        limited.text()
    );
    // The body was read: no reason to close the connection.
    assert!(limited.headers.get("connection").is_none());
    for id in 10..15 {
        let answer = sender.post(&url, event(json!(id), "lead_signup")).await;
        assert_eq!(
            (answer.status, answer.text().as_str()),
            (200, "fast ok"),
            "the other upstream is not limited"
        );
    }
    assert_eq!((slow.count(), fast.count()), (1, 5));

    let admitted = post_until_admitted(&sender, &url, event(json!(2), "fulfilment_pending")).await;
    assert_eq!(admitted.text(), "slow ok");
    assert!(!admitted.is_duplicate(), "the 429 was not recorded");
    assert_eq!(slow.count(), 2);
    assert_eq!(slow.seen()[1].headers["hookgate-event-id"], "2");
}

/// "A replay costs the upstream nothing and is not subject to its limits": with the
/// upstream's only token spent (a new event gets 429), a duplicate of a recorded event is
/// still replayed (200, `hookgate-duplicate`), and the upstream sees nothing.
#[tokio::test]
async fn a_duplicate_is_replayed_even_when_its_upstreams_limit_is_spent() {
    let upstream = FakeUpstream::start(Reply::json(200, "recorded")).await;
    let gateway = spawn_gateway(&config(
        &upstream.url("/hook"),
        "",
        "rate_limit = { per_second = 1, burst = 1 }",
    ))
    .await;
    let sender = Sender::http1();
    let url = gateway.url(FP);

    // Taken before the only token is spent: it comes back a second after that.
    let spent_at = std::time::Instant::now();
    let first = sender.post(&url, event(json!(1), "lead_signup")).await;
    assert_eq!((first.status, first.text().as_str()), (200, "recorded"));
    retry_after(&sender.post(&url, event(json!(2), "lead_signup")).await);

    // Within the second it takes the token to come back: were the replay subject to the
    // limit, it would be refused too.
    let replay = sender.post(&url, event(json!(1), "lead_signup")).await;
    assert_eq!((replay.status, replay.text().as_str()), (200, "recorded"));
    assert!(replay.is_duplicate());
    assert_eq!(upstream.count(), 1);

    // Proof that the bucket was still empty when the replay went through (and that the
    // replay took nothing from it): a new event is still refused, unless the token had time
    // to come back, which only a very slow run allows; then this check says nothing.
    let after = sender.post(&url, event(json!(3), "lead_signup")).await;
    if spent_at.elapsed() < std::time::Duration::from_millis(900) {
        assert_eq!(after.status, 429, "{}", after.text());
    } else {
        // Visible, so that a machine where this never runs is noticed.
        eprintln!("note: the bucket had time to refill; the empty-bucket check was skipped");
    }
}

/// Fan-out to `a` (limited) and `b`: with `a`'s token spent, a new event gets 429 (`a`'s
/// failure) while `b` got it and recorded its 200; the sender's retries go only to `a`, and
/// once it is admitted the answer is 200.
#[tokio::test]
async fn in_a_fan_out_an_upstream_over_its_limit_fails_alone_with_429() {
    let a = FakeUpstream::start(Reply::json(200, "from a")).await;
    let b = FakeUpstream::start(Reply::json(200, "from b")).await;
    let gateway = spawn_gateway(&format!(
        r#"
[server]
listen = "127.0.0.1:0"

[[sources]]
name = "firstpromoter"
path = "/fp"

[upstreams.a]
url = "{}"
rate_limit = {{ per_second = 1, burst = 1 }}

[upstreams.b]
url = "{}"

[[routes]]
event_type = "*"
upstreams = ["a", "b"]
"#,
        a.url("/a"),
        b.url("/b")
    ))
    .await;
    let sender = Sender::http1();
    let url = gateway.url(FP);

    let first = sender.post(&url, event(json!(1), "lead_signup")).await;
    assert_eq!((first.status, first.text().as_str()), (200, "from a"));
    let limited = sender.post(&url, event(json!(2), "lead_signup")).await;
    retry_after(&limited);
    assert_eq!((a.count(), b.count()), (1, 2), "b got event 2, a did not");
    assert_eq!(b.seen()[1].headers["hookgate-event-id"], "2");

    let admitted = post_until_admitted(&sender, &url, event(json!(2), "lead_signup")).await;
    assert_eq!((admitted.status, admitted.text().as_str()), (200, "from a"));
    assert_eq!(a.count(), 2);
    assert_eq!(a.seen()[1].headers["hookgate-event-id"], "2");
    assert_eq!(b.count(), 2, "every retry was replayed from b's record");
}

/// Order of checks: path and method (404/405) and size (413) come before the inbound rate
/// limits, which come before verification (401). With the client's only token spent, each
/// request below fails two checks; the earlier one decides.
#[tokio::test]
async fn inbound_limits_come_after_size_and_before_verification() {
    let upstream = FakeUpstream::start(Reply::json(200, "ok")).await;
    let toml = config(
        &upstream.url("/hook"),
        "[rate_limit]\nper_client = { per_second = 1, burst = 1 }",
        "",
    )
    .replace(
        "path = \"/fp\"\n",
        "path = \"/fp\"\nverify = { scheme = \"token\", secret = \"s3cret\" }\n",
    );
    let gateway = spawn_gateway(&toml).await;
    let sender = Sender::http1();
    let authorized = format!("{}?token=s3cret", gateway.url(FP));
    let first = sender
        .post(&authorized, event(json!(1), "lead_signup"))
        .await;
    assert_eq!(first.status, 200, "{}", first.text());

    let request = |method: http::Method, url: String, body: bytes::Bytes| {
        http::Request::builder()
            .method(method)
            .uri(url)
            .body(http_body_util::Full::new(body))
            .unwrap()
    };
    let oversized = bytes::Bytes::from(vec![b'{'; 600]);
    let cases = [
        (
            request(http::Method::POST, gateway.url("/nope"), oversized.clone()),
            404,
        ),
        (
            request(http::Method::GET, authorized.clone(), oversized.clone()),
            405,
        ),
        (
            request(http::Method::POST, authorized.clone(), oversized),
            413,
        ),
        // Wrong token: the rate limit answers before verification looks at it.
        (
            request(
                http::Method::POST,
                format!("{}?token=wrong", gateway.url(FP)),
                event(json!(2), "lead_signup"),
            ),
            429,
        ),
    ];
    for (request, status) in cases {
        let what = format!("{} {}", request.method(), request.uri().path());
        let answer = sender.send(request).await;
        assert_eq!(answer.status, status, "{what}: {}", answer.text());
    }
    assert_eq!(upstream.count(), 1);
}

/// With the Redis backend, the upstream limit is checked once this replica holds the claim:
/// over it, the claim is released unrecorded (the retry is forwarded once admitted), and a
/// duplicate is replayed from Redis without touching the limit. Needs `HOOKGATE_TEST_REDIS`;
/// skips without it.
#[tokio::test]
async fn with_redis_a_limited_forward_releases_its_claim_and_replays_skip_the_limit() {
    let Some(redis_url) = test_redis_url() else {
        return;
    };
    let prefix = unique_redis_prefix("rate-limit");
    let upstream = FakeUpstream::start(Reply::json(200, "recorded")).await;
    let dedup = format!(
        "[dedup]\nbackend = \"redis\"\nredis_url = \"{redis_url}\"\nkey_prefix = \"{prefix}\""
    );
    let gateway = spawn_gateway(&config(
        &upstream.url("/hook"),
        &dedup,
        "rate_limit = { per_second = 1, burst = 1 }",
    ))
    .await;
    let sender = Sender::http1();
    let url = gateway.url(FP);

    let first = sender.post(&url, event(json!(1), "lead_signup")).await;
    assert_eq!((first.status, first.text().as_str()), (200, "recorded"));
    retry_after(&sender.post(&url, event(json!(2), "lead_signup")).await);
    let replay = sender.post(&url, event(json!(1), "lead_signup")).await;
    assert_eq!((replay.status, replay.is_duplicate()), (200, true));
    assert_eq!(upstream.count(), 1);

    // Had the limited forward kept its claim, the retry would wait on it, not be forwarded.
    let admitted = post_until_admitted(&sender, &url, event(json!(2), "lead_signup")).await;
    assert_eq!((admitted.status, admitted.is_duplicate()), (200, false));
    assert_eq!(upstream.count(), 2);
}

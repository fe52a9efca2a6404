//! End to end: fan-out (`upstreams = ["a", "b"]`). CONTRACT.md: each upstream has its own dedup
//! record; a retry goes only to upstreams without one; the answer is 200 only if every record
//! is 200, else the first failure in config order, else the first non-200 2xx; at
//! `respond_within`, an upstream that already failed decides, else 504.

mod support;

use serde_json::json;
use support::*;

const FP: &str = "/fp";

/// Two upstreams `a` and `b`, and one route fanning every event out to both (in that order).
async fn fan_out(
    a: Reply,
    b: Reply,
    extra_server: &str,
) -> (FakeUpstream, FakeUpstream, TestGateway) {
    let a = FakeUpstream::start(a).await;
    let b = FakeUpstream::start(b).await;
    let config = format!(
        r#"
[server]
listen = "127.0.0.1:0"
{extra_server}

[[sources]]
name = "firstpromoter"
path = "/fp"

[upstreams.a]
url = "{}"

[upstreams.b]
url = "{}"

[[routes]]
event_type = "*"
upstreams = ["a", "b"]
"#,
        a.url("/a"),
        b.url("/b")
    );
    let gateway = spawn_gateway(&config).await;
    (a, b, gateway)
}

/// Both answer 200: the sender gets 200 with the first upstream's body; each upstream saw the
/// event once; the retry is replayed entirely.
#[tokio::test]
async fn all_200_is_200_with_the_first_upstreams_body() {
    let (a, b, gateway) = fan_out(Reply::json(200, "from a"), Reply::json(200, "from b"), "").await;
    let sender = Sender::http1();
    let body = fixture("fulfilment_pending.json");

    let first = sender.post(&gateway.url(FP), body.clone()).await;
    assert_eq!((first.status, first.text().as_str()), (200, "from a"));
    assert!(!first.is_duplicate());
    assert_eq!((a.count(), b.count()), (1, 1));
    assert_eq!(a.seen()[0].body, body);
    assert_eq!(b.seen()[0].body, body);

    let retry = sender.post(&gateway.url(FP), body).await;
    assert_eq!((retry.status, retry.text().as_str()), (200, "from a"));
    assert!(retry.is_duplicate());
    assert_eq!((a.count(), b.count()), (1, 1));
}

/// Events one after another reach each upstream over the connection already open; an
/// upstream that closes its connection after every answer still gets every event.
#[tokio::test]
async fn events_reuse_upstream_connections_unless_the_upstream_closes_them() {
    let (a, b, gateway) = fan_out(
        Reply::json(200, "from a"),
        Reply::json(200, "from b").header("connection", "close"),
        "",
    )
    .await;
    let sender = Sender::http1();
    for id in 0..10 {
        let answer = sender
            .post(&gateway.url(FP), event(json!(id), "lead_signup"))
            .await;
        assert_eq!(answer.status, 200, "{}", answer.text());
    }
    assert_eq!((a.count(), b.count()), (10, 10));
    assert_eq!(a.connections(), 1, "one kept-alive connection");
    assert_eq!(b.connections(), 10, "a new connection after every close");
}

/// One fails (b: 500): the sender gets b's 500; retries go only to b (a's 200 is on record)
/// until b answers 200; then the answer is 200 with a's body, and the next retry is replayed.
#[tokio::test]
async fn a_failing_upstream_is_retried_alone() {
    let (a, b, gateway) = fan_out(Reply::json(200, "from a"), Reply::json(200, "from b"), "").await;
    b.script([Reply::json(500, "b down"), Reply::json(500, "b still down")]);
    let sender = Sender::http1();
    let body = fixture("fulfilment_pending.json");

    let first = sender.post(&gateway.url(FP), body.clone()).await;
    assert_eq!((first.status, first.text().as_str()), (500, "b down"));
    assert_eq!((a.count(), b.count()), (1, 1));

    let second = sender.post(&gateway.url(FP), body.clone()).await;
    assert_eq!(
        (second.status, second.text().as_str()),
        (500, "b still down")
    );
    assert_eq!((a.count(), b.count()), (1, 2), "the retry went only to b");

    let third = sender.post(&gateway.url(FP), body.clone()).await;
    assert_eq!((third.status, third.text().as_str()), (200, "from a"));
    assert!(!third.is_duplicate(), "b was forwarded to");
    assert_eq!((a.count(), b.count()), (1, 3));

    let fourth = sender.post(&gateway.url(FP), body).await;
    assert_eq!((fourth.status, fourth.text().as_str()), (200, "from a"));
    assert!(fourth.is_duplicate(), "both records are on file");
    assert_eq!((a.count(), b.count()), (1, 3));
}

/// Two failures: the first in config order decides (a's 404 over b's 500).
#[tokio::test]
async fn the_first_failure_in_config_order_decides() {
    let (a, b, gateway) = fan_out(
        Reply::json(404, "a: unknown"),
        Reply::json(500, "b down"),
        "",
    )
    .await;
    let answer = Sender::http1()
        .post(&gateway.url(FP), event(json!(1), "lead_signup"))
        .await;
    assert_eq!((answer.status, answer.text().as_str()), (404, "a: unknown"));
    assert_eq!((a.count(), b.count()), (1, 1));
}

/// All 2xx, one 202: the sender gets the 202 with its body (never 200); recorded and replayed.
#[tokio::test]
async fn all_2xx_with_one_202_is_202() {
    let (a, b, gateway) = fan_out(
        Reply::json(200, "from a"),
        Reply::json(202, "b pending"),
        "",
    )
    .await;
    let sender = Sender::http1();
    let body = event(json!(2), "fulfilment_pending");

    let first = sender.post(&gateway.url(FP), body.clone()).await;
    assert_eq!((first.status, first.text().as_str()), (202, "b pending"));
    let retry = sender.post(&gateway.url(FP), body).await;
    assert_eq!((retry.status, retry.text().as_str()), (202, "b pending"));
    assert!(retry.is_duplicate());
    assert_eq!((a.count(), b.count()), (1, 1));
}

/// At `respond_within` with b still busy and nobody failed: 504. b's forward goes on; once it
/// has answered 200, the retry is replayed from both records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn still_busy_at_respond_within_is_504() {
    let (a, b, gateway) = fan_out(
        Reply::json(200, "from a"),
        Reply::json(200, "from b"),
        r#"respond_within = "300ms""#,
    )
    .await;
    b.hold();
    let sender = Sender::http1();
    let body = event(json!(3), "fulfilment_pending");

    let first = sender.post(&gateway.url(FP), body.clone()).await;
    assert_eq!(first.status, 504, "{}", first.text());
    assert!(first.json()["error"].is_string());
    b.wait_for_count(1).await;
    assert_eq!(a.count(), 1);

    b.release(1);
    let url = gateway.url(FP);
    let replay = poll_until("the retry to get 200", || {
        let (sender, url, body) = (sender.clone(), url.clone(), body.clone());
        async move {
            let answer = sender.post(&url, body).await;
            assert!(
                answer.status == 504 || answer.status == 200,
                "{}: {}",
                answer.status,
                answer.text()
            );
            (answer.status == 200).then_some(answer)
        }
    })
    .await;
    assert_eq!(replay.text(), "from a");
    assert!(replay.is_duplicate());
    assert_eq!((a.count(), b.count()), (1, 1));
}

/// At `respond_within` with a still busy but b already failed (503): b's failure is the answer,
/// not 504.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_already_failed_upstream_decides_at_respond_within() {
    let (a, b, gateway) = fan_out(
        Reply::json(200, "from a"),
        Reply::json(503, "b overloaded"),
        // Long enough for b's immediate 503 to arrive first even on a loaded machine.
        r#"respond_within = "1s""#,
    )
    .await;
    a.hold();
    let answer = Sender::http1()
        .post(&gateway.url(FP), event(json!(4), "fulfilment_pending"))
        .await;
    assert_eq!(
        (answer.status, answer.text().as_str()),
        (503, "b overloaded")
    );
    assert_eq!((a.count(), b.count()), (1, 1));
    a.release(1);
}

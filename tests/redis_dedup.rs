//! Dedup across replicas sharing Redis (CONTRACT.md: `backend = "redis"`).
//!
//! Needs `HOOKGATE_TEST_REDIS` (e.g. `redis://127.0.0.1:6379`); without it the tests that
//! need a live Redis print a notice and skip. Each test uses its own key prefix, so runs never
//! see each other's records.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;

use serde_json::json;
use support::*;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// One replica's config: source `/fp`, every event to `upstream_url`, records in Redis.
fn replica_config(
    upstream_url: &str,
    redis_url: &str,
    prefix: &str,
    respond_within: &str,
) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
respond_within = "{respond_within}"

[[sources]]
name = "firstpromoter"
path = "/fp"

[dedup]
backend = "redis"
redis_url = "{redis_url}"
key_prefix = "{prefix}"

[upstreams.app]
url = "{upstream_url}"
timeout = "5s"

[[routes]]
event_type = "*"
upstream = "app"
"#
    )
}

/// Two gateways (replicas) sharing one Redis prefix, in front of one upstream.
async fn two_replicas(
    upstream: &FakeUpstream,
    test: &str,
) -> Option<(TestGateway, TestGateway, String)> {
    let url = test_redis_url()?;
    let prefix = unique_redis_prefix(test);
    let config = replica_config(&upstream.url("/hook"), &url, &prefix, "5s");
    Some((
        spawn_gateway(&config).await,
        spawn_gateway(&config).await,
        prefix,
    ))
}

/// Waits until `replica` is waiting on another replica's forward for `n` keys.
async fn waiting_elsewhere(replica: &TestGateway, n: usize) {
    let store = replica.gateway.dedup().shared().expect("redis backend");
    eventually("the replica to wait on the other one", || {
        store.waiting_elsewhere() == n
    })
    .await;
}

/// A record made on one replica is replayed by another; the upstream sees one request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_made_on_one_replica_is_replayed_by_another() {
    let upstream = FakeUpstream::start(Reply::json(200, r#"{"fulfilled":true}"#)).await;
    let Some((a, b, _)) = two_replicas(&upstream, "replay").await else {
        return;
    };
    let sender = Sender::http1();

    let first = sender
        .post(&a.url("/fp"), event(json!(5367), "fulfilment_pending"))
        .await;
    assert_eq!((first.status, first.is_duplicate()), (200, false));
    // The same id as a string is the same event, on the other replica too.
    let retry = sender
        .post(&b.url("/fp"), event(json!("5367"), "fulfilment_pending"))
        .await;
    assert_eq!(retry.status, 200);
    assert!(retry.is_duplicate());
    assert_eq!(retry.text(), r#"{"fulfilled":true}"#);
    assert_eq!(retry.headers["content-type"], "application/json");
    assert_eq!(upstream.count(), 1);
}

/// A duplicate arriving at replica B while replica A is still forwarding waits for A's
/// record and replays it: still exactly one upstream request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_on_another_replica_waits_for_the_forward_in_flight() {
    let upstream = FakeUpstream::start(Reply::json(200, r#"{"ok":1}"#)).await;
    upstream.hold();
    let Some((a, b, _)) = two_replicas(&upstream, "inflight").await else {
        return;
    };
    let sender = Sender::http1();

    let first = sender.spawn_post(a.url("/fp"), event(json!(42), "fulfilment_pending"));
    upstream.wait_for_count(1).await; // A holds the claim and is forwarding
    let second = sender.spawn_post(b.url("/fp"), event(json!(42), "fulfilment_pending"));
    waiting_elsewhere(&b, 1).await;
    upstream.release(1);
    let (first, second) = (
        bounded("first", first).await.unwrap(),
        bounded("second", second).await.unwrap(),
    );
    assert_eq!((first.status, first.is_duplicate()), (200, false));
    assert_eq!((second.status, second.is_duplicate()), (200, true));
    assert_eq!(second.text(), r#"{"ok":1}"#);
    assert_eq!(upstream.count(), 1);
}

/// If the forward on replica A fails, the request waiting on replica B gets 503 +
/// Retry-After (never a success), and B's retry is forwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_on_another_replica_gets_503_when_the_forward_fails() {
    let upstream = FakeUpstream::start(Reply::json(200, r#"{"ok":2}"#)).await;
    upstream.script([Reply::json(500, r#"{"error":"db down"}"#)]);
    upstream.hold();
    let Some((a, b, _)) = two_replicas(&upstream, "failed").await else {
        return;
    };
    let sender = Sender::http1();

    let first = sender.spawn_post(a.url("/fp"), event(json!(7), "fulfilment_pending"));
    upstream.wait_for_count(1).await;
    let second = sender.spawn_post(b.url("/fp"), event(json!(7), "fulfilment_pending"));
    waiting_elsewhere(&b, 1).await;
    upstream.release(1);
    let (first, second) = (
        bounded("first", first).await.unwrap(),
        bounded("second", second).await.unwrap(),
    );
    assert_eq!(first.status, 500);
    assert_eq!(second.status, 503);
    assert!(second.headers.contains_key("retry-after"));
    assert_eq!(upstream.count(), 1, "the waiter must not forward by itself");

    upstream.release(1);
    let retry = sender
        .post(&b.url("/fp"), event(json!(7), "fulfilment_pending"))
        .await;
    assert_eq!((retry.status, retry.is_duplicate()), (200, false));
    assert_eq!(upstream.count(), 2);
}

/// A claim left by a crashed replica (planted here with a short lifetime) blocks the event
/// only until it expires; the waiter then gets 503 and the retry is forwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_replicas_claim_expires() {
    let Some(url) = test_redis_url() else { return };
    let upstream = FakeUpstream::start(Reply::status(200)).await;
    let prefix = unique_redis_prefix("crashed");
    let gateway = spawn_gateway(&replica_config(&upstream.url("/hook"), &url, &prefix, "5s")).await;

    let (_, claim_key) =
        hookgate::pipeline::dedup::redis::redis_keys(&prefix, "firstpromoter", "app", "99");
    let mut redis = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg(&claim_key)
        .arg("crashed-replica")
        .arg("PX")
        .arg(400)
        .query_async(&mut redis)
        .await
        .unwrap();

    let sender = Sender::http1();
    let waited = sender
        .post(&gateway.url("/fp"), event(json!(99), "lead_signup"))
        .await;
    assert_eq!(waited.status, 503);
    assert_eq!(upstream.count(), 0);
    let retry = sender
        .post(&gateway.url("/fp"), event(json!(99), "lead_signup"))
        .await;
    assert_eq!(retry.status, 200);
    assert_eq!(upstream.count(), 1);
}

/// A Redis that cannot be reached answers 503 + Retry-After and forwards nothing: without
/// the shared record, forwarding could fulfil a reward twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_redis_gives_503_and_forwards_nothing() {
    let upstream = FakeUpstream::start(Reply::status(200)).await;
    let closed = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let config = replica_config(
        &upstream.url("/hook"),
        &format!("redis://{closed}"),
        "hg",
        "5s",
    );
    let gateway = spawn_gateway(&config).await;

    let answer = Sender::http1()
        .post(&gateway.url("/fp"), event(json!(1), "lead_signup"))
        .await;
    assert_eq!(answer.status, 503);
    assert_eq!(answer.headers["retry-after"], "1");
    assert!(answer.text().contains("dedup backend"), "{}", answer.text());
    assert_eq!(upstream.count(), 0);
}

/// When Redis goes away mid-run, a duplicate this replica already recorded is replayed from
/// its local copy, while a new event gets 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_copy_replays_while_redis_is_down() {
    let Some(url) = test_redis_url() else { return };
    let target: SocketAddr = url
        .trim_start_matches("redis://")
        .trim_end_matches('/')
        .parse()
        .expect("HOOKGATE_TEST_REDIS as redis://IP:PORT");
    let proxy = CuttableProxy::start(target).await;
    let upstream = FakeUpstream::start(Reply::json(200, r#"{"ok":3}"#)).await;
    let config = replica_config(
        &upstream.url("/hook"),
        &format!("redis://{}", proxy.addr),
        &unique_redis_prefix("local-copy"),
        "5s",
    );
    let gateway = spawn_gateway(&config).await;
    let sender = Sender::http1();

    let first = sender
        .post(&gateway.url("/fp"), event(json!(11), "lead_signup"))
        .await;
    assert_eq!(first.status, 200);
    proxy.cut();
    let replay = sender
        .post(&gateway.url("/fp"), event(json!(11), "lead_signup"))
        .await;
    assert_eq!((replay.status, replay.is_duplicate()), (200, true));
    assert_eq!(replay.text(), r#"{"ok":3}"#);
    let fresh = sender
        .post(&gateway.url("/fp"), event(json!(12), "lead_signup"))
        .await;
    assert_eq!(fresh.status, 503);
    assert_eq!(upstream.count(), 1);
}

/// A TCP proxy to Redis whose `cut` closes every connection and refuses new ones.
struct CuttableProxy {
    addr: SocketAddr,
    cut_tx: Arc<watch::Sender<bool>>,
}

impl CuttableProxy {
    async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cut_tx, cut_rx) = watch::channel(false);
        tokio::spawn(async move {
            let mut accept_cut = cut_rx.clone();
            loop {
                let client = tokio::select! {
                    accepted = listener.accept() => match accepted { Ok((c, _)) => c, Err(_) => continue },
                    _ = accept_cut.wait_for(|cut| *cut) => return, // drops the listener
                };
                let mut cut = cut_rx.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let mut client = client;
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.wait_for(|cut| *cut) => {}
                    }
                });
            }
        });
        Self {
            addr,
            cut_tx: Arc::new(cut_tx),
        }
    }

    fn cut(&self) {
        self.cut_tx.send_replace(true);
    }
}

//! How much memory the dedup records take, and that it stops growing at `max_entries`.
//!
//! Builds the in-memory dedup store as the gateway does (`[dedup]` defaults: ttl 48h,
//! max_entries 1,000,000; mimalloc, the gateway's allocator) and records 3,000,000 distinct
//! events the way the gateway's forward path does: claim the key, forward as its leader with
//! the gateway's own `forward()` to a local upstream that answers like the benchmark's nginx
//! (`200`, `content-type: application/json`, `{"ok":true}\n`), complete the lease with that
//! outcome, and build the sender's answer from it (`relay::respond`). Keys are the
//! benchmark's: source `firstpromoter`, upstream `billing`, 19-digit numeric event ids, 32
//! events in flight at a time. Prints the resident set size (VmRSS, Linux) before and after
//! each million records, the bytes per record of the first million, and the record count the
//! store reports (which stays at `max_entries` once it is reached).
//!
//! ```text
//! cargo run --release --example dedup_memory
//! MAX_ENTRIES=10000000 cargo run --release --example dedup_memory   # a store 10x the events
//! ```
//!
//! A record packs copies of the answer's status, content-type and body into one allocation
//! of its own: the slices hyper hands out would each keep the connection's whole 8 KiB read
//! buffer alive.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use bytes::Bytes;
use hookgate::config::{defaults, DedupBackend, DedupConfig, Upstream};
use hookgate::metrics::Metrics;
use hookgate::pipeline::dedup::{Claim, Dedup};
use hookgate::pipeline::forward::{forward, Delivery, Outcome, UpstreamTarget};
use hookgate::pipeline::relay;
use hookgate::upstream::Clients;
use http::header::{HeaderMap, HeaderValue, CONTENT_TYPE, SERVER};
use http::Response;
use http_body_util::Full;
use hyper_util::rt::TokioIo;

mod memory;
use memory::rss_bytes;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const MILLION: u64 = 1_000_000;
/// Events recorded in all: three million, a million a round.
const ROUNDS: u64 = 3;
/// Events forwarded at once (the benchmark's wrk runs 32 connections).
const CONCURRENCY: u64 = 32;
/// The benchmark upstream's answer (`return 200 '{"ok":true}\n'`).
const UPSTREAM_BODY: &[u8] = b"{\"ok\":true}\n";
/// The first 8 digits of every event id (the harness uses one per run).
const NONCE: u64 = 17_326_841;

fn main() -> anyhow::Result<()> {
    // As `hookgate serve` does (src/main.rs): no transparent huge pages, so that memory
    // becomes resident as it is used, not 2 MiB ahead.
    // SAFETY: PR_SET_THP_DISABLE takes plain integers and touches no memory of ours.
    #[cfg(target_os = "linux")]
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let config = DedupConfig {
        ttl: defaults::DEDUP_TTL,
        max_entries: match std::env::var("MAX_ENTRIES") {
            Ok(text) => text.parse().context("MAX_ENTRIES must be a whole number")?,
            Err(_) => defaults::DEDUP_MAX_ENTRIES,
        },
        backend: DedupBackend::Memory,
    };
    let target = Arc::new(upstream_target(serve_upstream().await?)?);
    let source: Arc<str> = Arc::from("firstpromoter");

    // Open the pool's connections first, so that they are part of the baseline.
    let warm_up: Vec<_> = (0..CONCURRENCY)
        .map(|n| {
            let target = Arc::clone(&target);
            tokio::spawn(async move { forward(&target, &delivery(&event_id(n))).await })
        })
        .collect();
    for outcome in warm_up {
        anyhow::ensure!(
            is_200(&outcome.await?),
            "the local upstream did not answer 200"
        );
    }

    let before = rss_bytes();
    let store = Arc::new(Dedup::from_config(&config)?);

    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    println!(
        "dedup: ttl = {}h, max_entries = {}",
        config.ttl.as_secs() / 3600,
        config.max_entries
    );
    println!("{:<30} {:8.1} MiB", "RSS before:", mib(before));
    // Ids run on from the warm-up's, so every recorded event is new.
    let mut next = CONCURRENCY;
    for round in 1..=ROUNDS {
        let started = Instant::now();
        let end = next + MILLION;
        record_events(&store, &target, &source, next, end).await?;
        next = end;
        let took = started.elapsed();
        // First: counting drops the expired records (evictions happen as records are written).
        let held = store.record_count();
        let rss = rss_bytes();
        let grown = rss.saturating_sub(before);
        let label = format!("RSS after {round},000,000 events:");
        println!(
            "{label:<30} {:8.1} MiB  (+{:.1} MiB; {held} records held; {took:.1?})",
            mib(rss),
            mib(grown),
        );
        if round == 1 {
            println!(
                "{:<30} {:8.1}",
                "bytes per record:",
                grown as f64 / MILLION as f64
            );
        }
    }
    Ok(())
}

/// Records events `start..end`, `CONCURRENCY` at a time.
async fn record_events(
    store: &Arc<Dedup>,
    target: &Arc<UpstreamTarget>,
    source: &Arc<str>,
    start: u64,
    end: u64,
) -> anyhow::Result<()> {
    let next = Arc::new(AtomicU64::new(start));
    let workers: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let (store, target, source, next) = (
                Arc::clone(store),
                Arc::clone(target),
                Arc::clone(source),
                Arc::clone(&next),
            );
            tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= end {
                        return anyhow::Ok(());
                    }
                    record_one(&store, &target, &source, &event_id(n)).await?;
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await??;
    }
    Ok(())
}

/// One new event through the gateway's steps: claim, forward as leader, complete, answer.
async fn record_one(
    dedup: &Arc<Dedup>,
    target: &UpstreamTarget,
    source: &Arc<str>,
    event_id: &str,
) -> anyhow::Result<()> {
    let Claim::Leader(lease) = dedup.claim(source, &target.name, event_id) else {
        anyhow::bail!("event {event_id} is new, yet its claim did not lead");
    };
    let outcome = Arc::new(forward(target, &delivery(event_id)).await);
    lease.complete(Arc::clone(&outcome));
    anyhow::ensure!(is_200(&outcome), "the local upstream did not answer 200");
    // The leader's own sender gets its answer built from the outcome, as in the gateway.
    drop(relay::respond(&outcome));
    Ok(())
}

fn is_200(outcome: &Outcome) -> bool {
    matches!(outcome, Outcome::Answered(record) if record.status == 200)
}

/// The benchmark harness's ids: `<nonce:8><thread:2><counter:9>`, two wrk threads.
fn event_id(n: u64) -> String {
    format!("{NONCE:08}{:02}{:09}", 1 + n % 2, n / 2)
}

fn delivery(event_id: &str) -> Delivery {
    let client: SocketAddr = ([203, 0, 113, 7], 40_000).into();
    let body = format!(r#"{{"event":{{"id":{event_id},"type":"fulfilment_pending"}}}}"#);
    Delivery::new(
        &HeaderMap::new(),
        None,
        client,
        "http",
        event_id,
        "fulfilment_pending",
        Bytes::from(body),
    )
}

/// A local upstream answering every request like the benchmark's nginx.
async fn serve_upstream() -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_request| async {
                    let mut response = Response::new(Full::new(Bytes::from_static(UPSTREAM_BODY)));
                    let headers = response.headers_mut();
                    headers.insert(SERVER, HeaderValue::from_static("nginx/1.24.0"));
                    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                    Ok::<_, Infallible>(response)
                });
                // A connection error only ends that connection; the example then fails loudly.
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(address)
}

/// The upstream `billing` as the gateway builds it from `[upstreams.billing]`.
fn upstream_target(address: SocketAddr) -> anyhow::Result<UpstreamTarget> {
    let config = Upstream {
        name: "billing".to_owned(),
        url: format!("http://{address}/firstpromoter").parse()?,
        timeout: defaults::UPSTREAM_TIMEOUT,
        rate_limit: None,
        max_in_flight: defaults::UPSTREAM_MAX_IN_FLIGHT,
        sign: Vec::new(),
        headers: Vec::new(),
        redact: Vec::new(),
        ca: None,
        client_cert: None,
    };
    let client = Clients::from_config(std::slice::from_ref(&config), 1, None)?
        .for_upstream(&config)
        .clone();
    UpstreamTarget::new(config, client, Arc::new(Metrics::new()))
}

//! Per-event cost of each pipeline stage, on a realistic ~2 KB FirstPromoter
//! `fulfilment_pending` body, so that a regression in the end-to-end benchmark
//! (BENCHMARKS.md) can be pinned to a stage.
//!
//! ```sh
//! cargo bench --bench stages                                   # full run
//! cargo bench --bench stages -- --warm-up-time 1 --measurement-time 2
//! cargo bench --bench stages -- stage/dedup                    # one group of stages
//! ```
//!
//! Every input is built through the crate's public API from the config below, as the gateway
//! builds it; each stage is checked once to take its success path before it is measured.

use std::hint::black_box;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::StatusCode;
use ring::hmac;

use hookgate::config::{Config, Secret, Source};
use hookgate::pipeline::authenticate::{now_unix, Authenticator};
use hookgate::pipeline::dedup::{Claim, Dedup};
use hookgate::pipeline::forward::{Outcome, Record};
use hookgate::pipeline::parse;
use hookgate::pipeline::payload::{Payload, Pointers};
use hookgate::pipeline::relay::{self, Decision};
use hookgate::pipeline::route::Router;
use hookgate::pipeline::sign::{Signer, WEBHOOK_ID, WEBHOOK_SIGNATURE, WEBHOOK_TIMESTAMP};

/// The shared harness's body (`../shared/bench/fixtures/fulfilment_pending.json`, 2125 bytes).
const BODY: &[u8] = include_bytes!("fixtures/fulfilment_pending.json");
/// Its `/event/id` and `/event/type`.
const EVENT_ID: &str = "48213377";
const EVENT_TYPE: &str = "fulfilment_pending";

const HMAC_SECRET: &str = "bench-hmac-secret-not-a-secret";
const WHSEC: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// Two sources (one per signature scheme), three upstreams, ten routes: exact types, globs,
/// a source filter and `match` conditions. The fixture (campaign 20417, reward in free
/// months) falls through four `match` routes before it matches route 8.
const CONFIG: &str = r#"
[server]
listen = "127.0.0.1:8080"

[[sources]]
name = "firstpromoter"
path = "/webhooks/firstpromoter"
verify = { scheme = "hmac-sha256", secret = "bench-hmac-secret-not-a-secret" }

[[sources]]
name = "firstpromoter-sw"
path = "/webhooks/firstpromoter-sw"
verify = { scheme = "standard-webhooks", secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw" }

[upstreams.billing]
url = "http://127.0.0.1:3000/firstpromoter"
sign = { secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw" }

[upstreams.crm]
url = "http://127.0.0.1:3000/crm"

[upstreams.payouts]
url = "http://127.0.0.1:3000/payouts"

[[routes]]
event_type = "promoter_accepted"
upstream = "crm"

[[routes]]
event_type = ["lead_*", "reward_created"]
source = "firstpromoter"
upstreams = ["crm", "billing"]

[[routes]]
event_type = "promoter_*_up"
upstream = "crm"

[[routes]]
event_type = "new_customer"
upstream = "billing"

[[routes]]
event_type = "fulfilment_pending"
match = { "/data/campaign/id" = 41001 }
upstream = "billing"

[[routes]]
event_type = "fulfilment_pending"
match = { "/data/campaign/id" = 41002 }
upstream = "crm"

[[routes]]
event_type = "*_cancelled"
upstream = "crm"

[[routes]]
event_type = "fulfilment_*"
source = "firstpromoter"
match = { "/data/reward/unit" = "cash" }
upstream = "payouts"

[[routes]]
event_type = "fulfilment_pending"
match = { "/data/campaign/id" = "20417", "/data/status" = "pending" }
upstream = "billing"

[[routes]]
event_type = "*"
upstream = "crm"
"#;

/// The route the fixture must match (file order, 0-based).
const EXPECTED_ROUTE: usize = 8;

fn config() -> Config {
    Config::from_toml_str(CONFIG, Path::new("benches/stages.rs"))
        .expect("the bench config is valid")
}

fn source<'c>(config: &'c Config, name: &str) -> &'c Source {
    config
        .sources
        .iter()
        .find(|source| source.name == name)
        .expect("the bench config names this source")
}

fn authenticator(source: &Source) -> Authenticator {
    Authenticator::new(source.verify.as_ref().expect("the bench source verifies"))
        .expect("the bench secret is usable")
}

fn header(name: &str, value: &str) -> (HeaderName, HeaderValue) {
    (
        HeaderName::from_bytes(name.as_bytes()).expect("a fixed header name"),
        HeaderValue::from_str(value).expect("a fixed header value"),
    )
}

fn bench_parse(c: &mut Criterion, config: &Config) {
    let source = source(config, "firstpromoter");
    let pointers = Pointers::of_config(config);
    let event = parse::parse(BODY, source, &pointers).expect("the fixture parses");
    assert_eq!(
        (event.id.as_str(), event.event_type.as_str()),
        (EVENT_ID, EVENT_TYPE)
    );

    let mut group = c.benchmark_group("stage");
    group.throughput(Throughput::Bytes(BODY.len() as u64));
    group.bench_function("parse", |b| {
        b.iter(|| parse::parse(black_box(BODY), source, &pointers).expect("the fixture parses"))
    });
    group.finish();
}

fn bench_verify(c: &mut Criterion, config: &Config) {
    // hmac-sha256: the sender's hex digest of the raw body, with the optional prefix.
    let hmac_auth = authenticator(source(config, "firstpromoter"));
    let key = hmac::Key::new(hmac::HMAC_SHA256, HMAC_SECRET.as_bytes());
    let digest: String = hmac::sign(&key, BODY)
        .as_ref()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    let hmac_headers: HeaderMap = [header("x-signature", &format!("sha256={digest}"))]
        .into_iter()
        .collect();

    // standard-webhooks: signed now, so well inside the 5-minute tolerance for any sane run
    // (a run that outlasts it fails loudly below instead of timing the refusal).
    let sw_auth = authenticator(source(config, "firstpromoter-sw"));
    let sender = Signer::new([WHSEC]).expect("the bench whsec decodes");
    let timestamp = now_unix();
    let message_id = format!("msg_{EVENT_ID}");
    let signature = sender.signature(&message_id, timestamp, BODY);
    let sw_headers: HeaderMap = [
        header(WEBHOOK_ID.as_str(), &message_id),
        header(WEBHOOK_TIMESTAMP.as_str(), &timestamp.to_string()),
        (WEBHOOK_SIGNATURE.clone(), signature),
    ]
    .into_iter()
    .collect();

    let mut group = c.benchmark_group("stage");
    group.throughput(Throughput::Bytes(BODY.len() as u64));
    for (name, auth, headers) in [
        ("verify/hmac-sha256", &hmac_auth, &hmac_headers),
        ("verify/standard-webhooks", &sw_auth, &sw_headers),
    ] {
        auth.authenticate(headers, None, BODY)
            .expect("the bench request is correctly signed");
        group.bench_function(name, |b| {
            b.iter(|| {
                auth.authenticate(black_box(headers), None, black_box(BODY))
                    .expect("the bench request is correctly signed")
            })
        });
    }
    group.finish();
}

fn record_200() -> Arc<Record> {
    Arc::new(Record {
        status: StatusCode::OK,
        content_type: Some(HeaderValue::from_static("application/json")),
        body: Bytes::from(format!(r#"{{"fulfilled":true,"event_id":"{EVENT_ID}"}}"#)),
    })
}

fn bench_dedup(c: &mut Criterion, config: &Config) {
    // The in-memory store with the config's (default) ttl and capacity, as the gateway builds it.
    let dedup = Arc::new(Dedup::from_config(&config.dedup).expect("the memory store builds"));
    let source: Arc<str> = Arc::from("firstpromoter");
    let upstream: Arc<str> = Arc::from("billing");
    let record = record_200();

    // Hit: the event was forwarded and answered 2xx before; its retry is replayed.
    match dedup.claim(&source, &upstream, EVENT_ID) {
        Claim::Leader(lease) => lease.complete(Arc::new(Outcome::Answered(Arc::clone(&record)))),
        _ => panic!("the first claim of the bench key must lead"),
    }
    let mut group = c.benchmark_group("stage");
    group.bench_function("dedup/hit", |b| {
        b.iter(
            || match dedup.claim(&source, &upstream, black_box(EVENT_ID)) {
                Claim::Recorded(record) => record,
                _ => panic!("the bench key is recorded"),
            },
        )
    });

    // Miss: a fresh event id leads, and its lease completes with the upstream's 200 (which
    // is recorded). Making the id and the outcome is the setup, not the stage.
    let next_id = AtomicU64::new(1);
    group.bench_function("dedup/miss", |b| {
        b.iter_batched(
            || {
                let id = next_id.fetch_add(1, Ordering::Relaxed);
                let outcome = Arc::new(Outcome::Answered(Arc::clone(&record)));
                (format!("fresh-{id}"), outcome)
            },
            |(id, outcome)| match dedup.claim(&source, &upstream, &id) {
                Claim::Leader(lease) => lease.complete(outcome),
                _ => panic!("a fresh bench id must lead"),
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn bench_route(c: &mut Criterion, config: &Config) {
    let router = Router::new(config.routes.clone());
    // Parsed as the gateway parses it: noting the config's pointers.
    let pointers = Pointers::of_config(config);
    let payload = Payload::parse_noting(BODY, &pointers).expect("the fixture is JSON");
    let route = router
        .find("firstpromoter", EVENT_TYPE, &payload)
        .expect("the fixture is routed");
    assert_eq!(route.index, EXPECTED_ROUTE, "the fixture's route");

    let mut group = c.benchmark_group("stage");
    group.bench_function("route", |b| {
        b.iter(|| {
            router
                .find("firstpromoter", black_box(EVENT_TYPE), black_box(&payload))
                .expect("the fixture is routed")
                .index
        })
    });
    group.finish();
}

fn bench_sign(c: &mut Criterion, config: &Config) {
    let billing = config
        .upstreams
        .iter()
        .find(|upstream| upstream.name == "billing")
        .expect("the bench config has billing");
    let signer =
        Signer::new(billing.sign.iter().map(Secret::expose)).expect("the bench whsec decodes");

    let mut group = c.benchmark_group("stage");
    group.throughput(Throughput::Bytes(BODY.len() as u64));
    group.bench_function("sign", |b| {
        b.iter(|| signer.signature(black_box(EVENT_ID), now_unix(), black_box(BODY)))
    });
    group.finish();
}

fn bench_relay(c: &mut Criterion) {
    let outcomes = vec![Some(Arc::new(Outcome::Answered(record_200())))];

    let mut group = c.benchmark_group("stage");
    group.bench_function("relay", |b| {
        b.iter(|| {
            let outcomes = black_box(&outcomes);
            match relay::decide(outcomes) {
                Decision::Outcome(position) => {
                    relay::respond(outcomes[position].as_deref().expect("an outcome is known"))
                }
                Decision::StillBusy => panic!("the bench outcome is known"),
            }
        })
    });
    group.finish();
}

fn stages(c: &mut Criterion) {
    let config = config();
    bench_parse(c, &config);
    bench_verify(c, &config);
    bench_dedup(c, &config);
    bench_route(c, &config);
    bench_sign(c, &config);
    bench_relay(c);
}

criterion_group!(benches, stages);
criterion_main!(benches);

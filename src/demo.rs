//! `hookgate demo`: one command that shows a real round trip on a config (the shipped
//! `config.toml` by default).
//!
//! It starts a small example legacy app on every local upstream address the config names,
//! runs the gateway on the configured listen address, posts FirstPromoter-shaped events
//! through it, prints what the sender got back, and stops. The legacy app answers like a
//! fulfilment integration would: `/firstpromoter` fulfils (200), anything else only takes note
//! (202, "keep pending").

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::Mutex;

use crate::config::Config;
use crate::pipeline::Gateway;
use crate::server::tls::TlsTerminator;
use crate::server::workers;

/// How long the demo waits for any one answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(20);

/// The events the demo sends, with what each shows.
const STEPS: [(&str, &str); 6] = [
    (
        "fulfilment_pending, campaign 41001 -> billing fulfils it",
        include_str!("../tests/fixtures/firstpromoter/fulfilment_pending.json"),
    ),
    (
        "the same event again (FirstPromoter retry) -> replayed, not delivered twice",
        include_str!("../tests/fixtures/firstpromoter/fulfilment_pending.json"),
    ),
    (
        "fulfilment_pending, campaign 41002 -> crm keeps it pending",
        include_str!("../tests/fixtures/firstpromoter/fulfilment_pending_campaign_b.json"),
    ),
    (
        "lead_signup -> fan-out to crm and billing",
        include_str!("../tests/fixtures/firstpromoter/lead_signup.json"),
    ),
    (
        "promoter_accepted -> no route matches",
        include_str!("../tests/fixtures/firstpromoter/promoter_accepted.json"),
    ),
    (
        "a body without an event id -> refused",
        r#"{"event": {"type": "lead_signup"}}"#,
    ),
];

/// Runs the demo against `config`; prints to stdout.
///
/// # Errors
/// If an address is taken, or the gateway fails to answer.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let source = config
        .sources
        .first()
        .context("the config has no [[sources]]")?
        .clone();
    let deliveries = Arc::new(Mutex::new(Vec::new()));
    for addr in local_upstream_addrs(&config) {
        let listener = TcpListener::bind(addr).await.with_context(|| {
            format!("cannot start the example legacy app on {addr} (is the port taken?)")
        })?;
        tokio::spawn(serve_legacy_app(listener, Arc::clone(&deliveries)));
        println!("example legacy app listening on http://{addr}");
    }

    // Served as `hookgate serve` serves it: on the worker threads.
    let listen = config.server.listen;
    let listeners = workers::bind(listen, config.server.workers)
        .with_context(|| format!("cannot listen on {listen} (is the port taken?)"))?;
    let gateway_addr = listeners
        .first()
        .context("no listener was bound")?
        .local_addr()?;
    let tls = TlsTerminator::for_server(&config.server)?;
    let state = Arc::new(ArcSwap::from_pointee(Gateway::from_config(&config)?));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let gateway = tokio::spawn(async move {
        let stop = async {
            let _ = stop_rx.await;
        };
        workers::serve_workers(listeners, state, &config.server, tls, stop).await
    });
    let url = format!("http://{gateway_addr}{}", source.path);
    println!(
        "hookgate listening on http://{gateway_addr}, source {:?} at {url}\n",
        source.name
    );

    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    for (number, (what, body)) in STEPS.iter().enumerate() {
        let request = Request::post(&url)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(body.as_bytes())))?;
        let response = tokio::time::timeout(ANSWER_TIMEOUT, client.request(request))
            .await
            .context("the gateway did not answer in time")?
            .context("the request to the gateway failed")?;
        let status = response.status();
        let duplicate = response.headers().contains_key("hookgate-duplicate");
        let answer = response.into_body().collect().await?.to_bytes();
        println!("{}. {what}", number + 1);
        println!(
            "   sender got: {status}{}  {}",
            if duplicate {
                " (hookgate-duplicate: true)"
            } else {
                ""
            },
            String::from_utf8_lossy(&answer)
        );
        for line in deliveries.lock().await.drain(..) {
            println!("   legacy app received: {line}");
        }
    }

    let _ = stop_tx.send(());
    gateway.await.context("the gateway task failed")??;
    println!("\nround trip complete; edit config.toml and run `hookgate serve` to use it for real");
    Ok(())
}

/// Upstream addresses on this machine: the demo plays the legacy app there.
fn local_upstream_addrs(config: &Config) -> BTreeSet<SocketAddr> {
    config
        .upstreams
        .iter()
        .filter(|upstream| upstream.url.scheme_str() == Some("http"))
        .filter_map(|upstream| {
            let authority = upstream.url.authority()?;
            let host = authority.host();
            let local = host == "localhost"
                || host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            let ip = if host == "localhost" {
                "127.0.0.1"
            } else {
                host
            };
            local.then(|| {
                format!("{ip}:{}", authority.port_u16().unwrap_or(80))
                    .parse()
                    .ok()
            })?
        })
        .collect()
}

async fn serve_legacy_app(listener: TcpListener, deliveries: Arc<Mutex<Vec<String>>>) {
    while let Ok((stream, _)) = listener.accept().await {
        let deliveries = Arc::clone(&deliveries);
        let service = service_fn(move |request| legacy_app(request, Arc::clone(&deliveries)));
        tokio::spawn(async move {
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn legacy_app(
    request: Request<Incoming>,
    deliveries: Arc<Mutex<Vec<String>>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = request.uri().path().to_owned();
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or("-")
            .to_owned()
    };
    let (id, event_type) = (header("hookgate-event-id"), header("hookgate-event-type"));
    let size = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes().len())
        .unwrap_or(0);
    deliveries.lock().await.push(format!(
        "POST {path} event {id} ({event_type}), {size} bytes"
    ));
    let (status, body) = if path.ends_with("/firstpromoter") {
        (
            StatusCode::OK,
            format!(r#"{{"fulfilled":true,"event_id":"{id}"}}"#),
        )
    } else {
        (
            StatusCode::ACCEPTED,
            format!(r#"{{"noted":true,"event_id":"{id}"}}"#),
        )
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

//! The floor of hookgate's stack: a proxy that does nothing but relay, on the same crates and
//! runtime layout as `hookgate serve` (one single-threaded tokio runtime per core with its own
//! `SO_REUSEPORT` listener, hyper's HTTP/1 server, hookgate's own upstream client with a pool
//! per worker, mimalloc).
//! No JSON, no verification, no dedup, no limits, no signing, no logging, no metrics.
//!
//! It answers "what would any gateway built on hyper + tokio cost per request on this machine,
//! before doing any work of its own?" (BENCHMARKS.md). Not a product: no limits.
//!
//! ```text
//! cargo build --release --example bare_proxy
//! GATEWAY_CMD='exec target/release/examples/bare_proxy' TARGETS='direct nginx candidate' \
//!   ../shared/bench/run.sh
//! ```
//! Environment: `UPSTREAM_URL` (set by run.sh; default `http://127.0.0.1:24081`; every request
//! goes to it as configured, as hookgate forwards), `BARE_LISTEN` (default `127.0.0.1:24090`,
//! run.sh's gateway port), `BARE_WORKERS` (cores), `BARE_POOL=hyper-util`: hyper-util's pooled
//! client instead of hookgate's, to measure what hyper-util's pool costs per request.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpSocket;

use hookgate::config::Config;
use hookgate::upstream::{self, Clients, UpstreamClient};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Largest answer relayed (hookgate's limit for an upstream answer).
const MAX_ANSWER_BYTES: usize = hookgate::pipeline::forward::MAX_UPSTREAM_BODY_BYTES;

/// How the relay reaches the upstream.
#[derive(Clone)]
enum Upstream {
    /// hyper-util's pooled client (what hookgate uses for HTTPS upstreams), to `url`.
    HyperUtil {
        client: Box<Client<HttpConnector, Full<Bytes>>>,
        url: Uri,
    },
    /// hookgate's client for the upstream (for plain HTTP, its own pool).
    Hookgate(UpstreamClient),
}

fn main() -> anyhow::Result<()> {
    let listen: SocketAddr = std::env::var("BARE_LISTEN")
        .unwrap_or_else(|_| "127.0.0.1:24090".to_owned())
        .parse()?;
    let url = std::env::var("UPSTREAM_URL").unwrap_or_else(|_| "http://127.0.0.1:24081".into());
    let workers = match std::env::var("BARE_WORKERS") {
        Ok(count) => count.parse()?,
        Err(_) => std::thread::available_parallelism().map_or(1, usize::from),
    };
    let upstream = if std::env::var("BARE_POOL").is_ok_and(|pool| pool == "hyper-util") {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Upstream::HyperUtil {
            client: Box::new(Client::builder(TokioExecutor::new()).build(connector)),
            url: url.parse()?,
        }
    } else {
        Upstream::Hookgate(hookgate_client(&url, workers)?)
    };
    let threads: Vec<_> = (0..workers)
        .map(|index| {
            let upstream = upstream.clone();
            std::thread::spawn(move || worker(index, listen, upstream))
        })
        .collect();
    for thread in threads {
        thread
            .join()
            .map_err(|_| anyhow::anyhow!("a worker panicked"))??;
    }
    Ok(())
}

/// The client `hookgate serve` would use for an upstream at `url`, with a pool per worker.
fn hookgate_client(url: &str, workers: usize) -> anyhow::Result<UpstreamClient> {
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"

[[sources]]
name = "bare"
path = "/bare"

[upstreams.app]
url = "{url}"

[[routes]]
event_type = "*"
upstream = "app"
"#
    );
    let config = Config::from_toml_str(&text, Path::new("bare_proxy.toml"))?;
    let clients = Clients::from_config(&config.upstreams, workers, None)?;
    let app = config
        .upstreams
        .first()
        .ok_or_else(|| anyhow::anyhow!("no upstream"))?;
    Ok(clients.for_upstream(app))
}

fn worker(index: usize, listen: SocketAddr, upstream: Upstream) -> anyhow::Result<()> {
    upstream::set_worker_index(index);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let socket = TcpSocket::new_v4()?;
        socket.set_reuseaddr(true)?;
        socket.set_reuseport(true)?;
        socket.bind(listen)?;
        let listener = socket.listen(1024)?;
        loop {
            let (stream, _) = listener.accept().await?;
            stream.set_nodelay(true)?;
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request| relay(upstream.clone(), request));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

/// Reads the whole body (as a gateway that checks it must), forwards it, relays the answer.
async fn relay(
    upstream: Upstream,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let failed = |status: u16| {
        let mut response = Response::new(Full::new(Bytes::from_static(b"relay failed")));
        *response.status_mut() = http::StatusCode::from_u16(status).unwrap_or_default();
        Ok(response)
    };
    let (parts, body) = request.into_parts();
    let Ok(body) = body.collect().await.map(|body| body.to_bytes()) else {
        return failed(400);
    };
    let mut forward = Request::new(Full::new(body));
    *forward.method_mut() = parts.method;
    copy_content_type(&parts.headers, forward.headers_mut());
    let Ok((parts, body)) = upstream.send(forward).await else {
        return failed(502);
    };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = parts.status;
    copy_content_type(&parts.headers, response.headers_mut());
    Ok(response)
}

impl Upstream {
    /// Sends `request` to the upstream and reads the whole answer.
    async fn send(
        &self,
        mut request: Request<Full<Bytes>>,
    ) -> anyhow::Result<(http::response::Parts, Bytes)> {
        match self {
            Upstream::HyperUtil { client, url } => {
                *request.uri_mut() = url.clone();
                let (parts, body) = client.request(request).await?.into_parts();
                Ok((parts, body.collect().await?.to_bytes()))
            }
            Upstream::Hookgate(client) => client.exchange(request, MAX_ANSWER_BYTES).await,
        }
    }
}

fn copy_content_type(from: &http::HeaderMap, to: &mut http::HeaderMap) {
    if let Some(content_type) = from.get(http::header::CONTENT_TYPE) {
        to.insert(http::header::CONTENT_TYPE, content_type.clone());
    }
}

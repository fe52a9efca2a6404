//! The floor of hookgate's stack: a proxy that does nothing but relay, on the same crates and
//! runtime layout as `hookgate serve` (one single-threaded tokio runtime per core with its own
//! `SO_REUSEPORT` listener, hyper's HTTP/1 server, a stack of idle HTTP/1 upstream connections
//! per worker as hookgate keeps for a plain-HTTP upstream, mimalloc).
//! No JSON, no verification, no dedup, no limits, no signing, no logging, no metrics.
//!
//! It answers "what would any gateway built on hyper + tokio cost per request on this machine,
//! before doing any work of its own?" (BENCHMARKS.md). Not a product: no timeouts, no limits.
//!
//! ```text
//! cargo build --release --example bare_proxy
//! GATEWAY_CMD='exec target/release/examples/bare_proxy' TARGETS='direct nginx candidate' \
//!   ../shared/bench/run.sh
//! ```
//! Environment: `UPSTREAM_URL` (set by run.sh; default `http://127.0.0.1:24081`),
//! `BARE_LISTEN` (default `127.0.0.1:24090`, run.sh's gateway port), `BARE_WORKERS` (cores),
//! `BARE_POOL=hyper-util`: hyper-util's pooled client instead of the stack of idle
//! `hyper::client::conn` senders (which has no idle expiry and no resend of a request a closing
//! connection dropped: not a product), to measure what hyper-util's pool costs per request.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpSocket, TcpStream};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How the relay reaches the upstream.
#[derive(Clone)]
enum Upstream {
    /// hyper-util's pooled client (what hookgate uses for HTTPS upstreams).
    Pooled(Box<Client<HttpConnector, Full<Bytes>>>),
    /// Idle HTTP/1 connections of this worker, most recently used first.
    Conns(Arc<Mutex<Vec<SendRequest<Full<Bytes>>>>>),
}

fn main() -> anyhow::Result<()> {
    let listen: SocketAddr = std::env::var("BARE_LISTEN")
        .unwrap_or_else(|_| "127.0.0.1:24090".to_owned())
        .parse()?;
    let upstream =
        std::env::var("UPSTREAM_URL").unwrap_or_else(|_| "http://127.0.0.1:24081".into());
    let workers = match std::env::var("BARE_WORKERS") {
        Ok(count) => count.parse()?,
        Err(_) => std::thread::available_parallelism().map_or(1, usize::from),
    };
    let threads: Vec<_> = (0..workers)
        .map(|_| {
            let upstream = upstream.clone();
            std::thread::spawn(move || worker(listen, upstream))
        })
        .collect();
    for thread in threads {
        thread
            .join()
            .map_err(|_| anyhow::anyhow!("a worker panicked"))??;
    }
    Ok(())
}

fn worker(listen: SocketAddr, upstream: String) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let socket = TcpSocket::new_v4()?;
        socket.set_reuseaddr(true)?;
        socket.set_reuseport(true)?;
        socket.bind(listen)?;
        let listener = socket.listen(1024)?;
        let client = if std::env::var("BARE_POOL").is_ok_and(|pool| pool == "hyper-util") {
            let mut connector = HttpConnector::new();
            connector.set_nodelay(true);
            Upstream::Pooled(Box::new(
                Client::builder(TokioExecutor::new()).build(connector),
            ))
        } else {
            Upstream::Conns(Arc::default())
        };
        loop {
            let (stream, _) = listener.accept().await?;
            stream.set_nodelay(true)?;
            let client = client.clone();
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let service =
                    service_fn(move |request| relay(client.clone(), upstream.clone(), request));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

/// Reads the whole body (as a gateway that checks it must), forwards it, relays the answer.
async fn relay(
    client: Upstream,
    upstream: String,
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
    let path = parts.uri.path_and_query().map_or("/", |path| path.as_str());
    let Ok(uri) = format!("{upstream}{path}").parse::<Uri>() else {
        return failed(500);
    };
    let mut forward = Request::new(Full::new(body));
    *forward.method_mut() = parts.method;
    *forward.uri_mut() = uri;
    copy_content_type(&parts.headers, forward.headers_mut());
    let Ok((parts, body)) = client.send(forward).await else {
        return failed(502);
    };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = parts.status;
    copy_content_type(&parts.headers, response.headers_mut());
    Ok(response)
}

impl Upstream {
    /// Sends `request` and reads the whole answer.
    async fn send(
        &self,
        mut request: Request<Full<Bytes>>,
    ) -> anyhow::Result<(http::response::Parts, Bytes)> {
        let idle = match self {
            Upstream::Pooled(client) => {
                let (parts, body) = client.request(request).await?.into_parts();
                return Ok((parts, body.collect().await?.to_bytes()));
            }
            Upstream::Conns(idle) => idle,
        };
        let authority = request.uri().authority().cloned();
        let authority = authority.ok_or_else(|| anyhow::anyhow!("no authority"))?;
        // A connection's request line carries only the path; the host goes in a header.
        let path = request.uri().path_and_query().cloned();
        *request.uri_mut() = Uri::from(path.ok_or_else(|| anyhow::anyhow!("no path"))?);
        request
            .headers_mut()
            .insert(http::header::HOST, authority.as_str().parse()?);
        let mut sender = loop {
            let popped = idle.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.pop();
            match popped {
                Some(mut sender) => {
                    if sender.ready().await.is_ok() {
                        break sender;
                    }
                }
                None => {
                    let stream = TcpStream::connect(authority.as_str()).await?;
                    stream.set_nodelay(true)?;
                    let (sender, connection) =
                        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
                    tokio::spawn(connection);
                    break sender;
                }
            }
        };
        let (parts, body) = sender.send_request(request).await?.into_parts();
        let body = body.collect().await?.to_bytes();
        idle.lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .push(sender);
        Ok((parts, body))
    }
}

fn copy_content_type(from: &http::HeaderMap, to: &mut http::HeaderMap) {
    if let Some(content_type) = from.get(http::header::CONTENT_TYPE) {
        to.insert(http::header::CONTENT_TYPE, content_type.clone());
    }
}

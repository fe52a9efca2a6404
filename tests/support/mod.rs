//! Shared helpers for the end-to-end tests: a scripted upstream, a gateway on an ephemeral
//! port, and a real HTTP client. Everything binds 127.0.0.1 only, and every wait is bounded.

#![allow(dead_code)] // each test crate uses a different subset

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, Notify};

/// The longest any single test step may wait before the test fails.
pub const STEP: Duration = Duration::from_secs(10);

/// Runs `future`, failing the test if it takes longer than [`STEP`].
pub async fn bounded<F: std::future::Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(STEP, future)
        .await
        .unwrap_or_else(|_| panic!("timed out after {STEP:?}: {what}"))
}

// === FakeUpstream ===

/// One scripted answer.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub body: &'static str,
    pub content_type: Option<&'static str>,
    pub delay: Duration,
    pub headers: Vec<(&'static str, &'static str)>,
}

impl Reply {
    pub fn status(status: u16) -> Self {
        Self {
            status,
            body: "",
            content_type: None,
            delay: Duration::ZERO,
            headers: Vec::new(),
        }
    }
    pub fn json(status: u16, body: &'static str) -> Self {
        Self {
            body,
            content_type: Some("application/json"),
            ..Self::status(status)
        }
    }
    pub fn after(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
    pub fn header(mut self, name: &'static str, value: &'static str) -> Self {
        self.headers.push((name, value));
        self
    }
}

/// A request the upstream received.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: http::Method,
    pub uri: http::Uri,
    pub version: http::Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

struct UpstreamState {
    script: Mutex<VecDeque<Reply>>,
    fallback: Mutex<Reply>,
    seen: Mutex<Vec<Seen>>,
    arrived: Notify,
    /// Released once per request when `gated` is set: lets a test hold answers back.
    gate: tokio::sync::Semaphore,
    gated: std::sync::atomic::AtomicBool,
    /// Connections accepted.
    connections: std::sync::atomic::AtomicUsize,
}

impl UpstreamState {
    fn new(fallback: Reply) -> Arc<Self> {
        Arc::new(Self {
            script: Mutex::new(VecDeque::new()),
            fallback: Mutex::new(fallback),
            seen: Mutex::new(Vec::new()),
            arrived: Notify::new(),
            gate: tokio::sync::Semaphore::new(0),
            gated: std::sync::atomic::AtomicBool::new(false),
            connections: std::sync::atomic::AtomicUsize::new(0),
        })
    }
}

/// A small hyper server on an ephemeral port that records what it gets and answers from a
/// script (then with the fallback reply).
#[derive(Clone)]
pub struct FakeUpstream {
    pub addr: SocketAddr,
    state: Arc<UpstreamState>,
    _stop: Arc<oneshot::Sender<()>>,
}

impl FakeUpstream {
    /// Starts an upstream that answers every request with `fallback`.
    pub async fn start(fallback: Reply) -> Self {
        Self::start_with(fallback, None).await
    }

    /// Plain, or over TLS with `tls`; failed handshakes are dropped, like a real server's.
    async fn start_with(fallback: Reply, tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let addr = listener.local_addr().expect("upstream addr");
        let state = UpstreamState::new(fallback);
        let (stop_tx, mut stop_rx) = oneshot::channel::<()>();
        let server_state = Arc::clone(&state);
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    accepted = listener.accept() => match accepted { Ok(a) => a, Err(_) => continue },
                    _ = &mut stop_rx => break,
                };
                let state = Arc::clone(&server_state);
                state
                    .connections
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let tls = tls.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| answer(Arc::clone(&state), request));
                    let http = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let _ = match tls {
                        None => http.serve_connection(TokioIo::new(stream), service).await,
                        Some(tls) => match tls.accept(stream).await {
                            Ok(stream) => {
                                http.serve_connection(TokioIo::new(stream), service).await
                            }
                            Err(_) => return,
                        },
                    };
                });
            }
        });
        Self {
            addr,
            state,
            _stop: Arc::new(stop_tx),
        }
    }

    /// Answers the next requests with these replies, in order, before the fallback.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.state.script.lock().unwrap().extend(replies);
    }

    /// Changes the answer given once the script is used up.
    pub fn set_fallback(&self, reply: Reply) {
        *self.state.fallback.lock().unwrap() = reply;
    }

    /// From now on, every request waits for [`FakeUpstream::release`] before answering.
    pub fn hold(&self) {
        self.state
            .gated
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Lets `n` held requests answer.
    pub fn release(&self, n: usize) {
        self.state.gate.add_permits(n);
    }

    /// `http://127.0.0.1:PORT/path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Every request received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    /// How many connections were accepted so far.
    pub fn connections(&self) -> usize {
        self.state
            .connections
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// How many requests were received so far.
    pub fn count(&self) -> usize {
        self.state.seen.lock().unwrap().len()
    }

    /// Waits until at least `n` requests have arrived (bounded by [`STEP`]).
    pub async fn wait_for_count(&self, n: usize) {
        self.wait_until(&format!("upstream to receive {n} request(s)"), || {
            self.count() >= n
        })
        .await
    }

    async fn wait_until(&self, what: &str, done: impl Fn() -> bool) {
        bounded(what, async {
            loop {
                let notified = self.state.arrived.notified();
                if done() {
                    return;
                }
                notified.await;
            }
        })
        .await
    }
}

async fn answer(
    state: Arc<UpstreamState>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    state.seen.lock().unwrap().push(Seen {
        method: parts.method,
        uri: parts.uri,
        version: parts.version,
        headers: parts.headers,
        body,
    });
    state.arrived.notify_waiters();
    let reply = {
        let next = state.script.lock().unwrap().pop_front();
        next.unwrap_or_else(|| state.fallback.lock().unwrap().clone())
    };
    if state.gated.load(std::sync::atomic::Ordering::SeqCst) {
        if let Ok(permit) = state.gate.acquire().await {
            permit.forget();
        }
    }
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let mut response = Response::new(Full::new(Bytes::from_static(reply.body.as_bytes())));
    *response.status_mut() = StatusCode::from_u16(reply.status).unwrap();
    if let Some(content_type) = reply.content_type {
        response
            .headers_mut()
            .insert("content-type", content_type.parse().unwrap());
    }
    for (name, value) in reply.headers {
        response.headers_mut().insert(name, value.parse().unwrap());
    }
    Ok(response)
}

// === Gateway ===

/// A gateway serving on an ephemeral port; dropping it (or [`TestGateway::shutdown`]) stops it.
pub struct TestGateway {
    pub addr: SocketAddr,
    /// The running gateway's state, for tests that must observe it.
    pub gateway: Arc<hookgate::pipeline::Gateway>,
    /// The TLS side, with `[server.tls]`.
    pub tls: Option<Arc<hookgate::server::tls::TlsTerminator>>,
    /// What a reload swaps: the gateway the listeners serve.
    serving: Arc<arc_swap::ArcSwap<hookgate::pipeline::Gateway>>,
    shutdown_tx: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestGateway {
    /// `http://127.0.0.1:PORT/path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The gateway the listeners serve, which a reload swaps.
    pub fn serving(&self) -> &Arc<arc_swap::ArcSwap<hookgate::pipeline::Gateway>> {
        &self.serving
    }

    /// The reloader `hookgate serve` would have for this gateway: SIGHUP's code path.
    /// `running` is the config it was started with, loaded from the file to re-read.
    pub fn reloader(&self, running: hookgate::Config) -> hookgate::server::reload::Reloader {
        hookgate::server::reload::Reloader::new(
            running,
            Arc::clone(&self.serving),
            self.tls.clone(),
        )
    }

    /// Triggers shutdown and waits (bounded) for `run` to return.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.shutdown_tx.take() {
            let _ = tx.send(());
        }
        let task = self.task.take().expect("running");
        bounded("gateway shutdown", task)
            .await
            .expect("gateway task panicked")
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown_tx.take() {
            let _ = tx.send(());
        }
    }
}

/// A spawned `hookgate` (or any child) that is killed if the test fails before stopping it,
/// so a failed test leaves no gateway running (holding its port and the test's stdout).
pub struct KillOnDrop(pub std::process::Child);

impl std::ops::Deref for KillOnDrop {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // Already exited (the test waited for it): both are harmless no-ops then.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Polls `condition` every few milliseconds until it holds (bounded by [`STEP`]); for state
/// that has no event to wait on.
pub async fn eventually(what: &str, condition: impl Fn() -> bool) {
    bounded(what, async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
}

/// Loads `toml` (as if from `tests/<name>.toml`) and serves it on 127.0.0.1:0.
pub async fn spawn_gateway(toml: &str) -> TestGateway {
    let config = hookgate::Config::from_toml_str(toml, Path::new("test-config.toml"))
        .unwrap_or_else(|error| panic!("test config is invalid:\n{error}"));
    spawn_config(config).await
}

/// Serves an already loaded config on 127.0.0.1:0.
pub async fn spawn_config(config: hookgate::Config) -> TestGateway {
    // As the binary serves: `server.workers` threads (one per core unless the config says),
    // each with its own listener on the one port.
    let listeners = hookgate::server::workers::bind(
        "127.0.0.1:0".parse().expect("an address"),
        config.server.workers,
    )
    .expect("bind gateway");
    let addr = listeners[0].local_addr().expect("gateway addr");
    let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
    let gateway = Arc::new(hookgate::pipeline::Gateway::from_config(&config).expect("gateway"));
    let tls =
        hookgate::server::tls::TlsTerminator::for_server(&config.server).expect("the TLS cert");
    let serving = Arc::new(arc_swap::ArcSwap::new(Arc::clone(&gateway)));
    let task = tokio::spawn({
        let serving = Arc::clone(&serving);
        let tls = tls.clone();
        async move {
            let shutdown = async {
                let _ = shutdown_rx.await;
            };
            hookgate::server::workers::serve_workers(
                listeners,
                serving,
                &config.server,
                tls,
                shutdown,
            )
            .await
        }
    });
    TestGateway {
        addr,
        gateway,
        tls,
        serving,
        shutdown_tx: Some(shutdown_tx),
        task: Some(task),
    }
}

/// A minimal config: one FirstPromoter source at `/fp`, every event to `upstream_url`.
pub fn one_route_config(upstream_url: &str, extra_server: &str, extra_upstream: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
{extra_server}

[[sources]]
name = "firstpromoter"
path = "/fp"

[upstreams.app]
url = "{upstream_url}"
{extra_upstream}

[[routes]]
event_type = "*"
upstream = "app"
"#
    )
}

/// Sends signal `name` (`TERM`, `HUP`) to a spawned process.
pub fn signal(child: &std::process::Child, name: &str) {
    signal_pid(child.id(), name);
}

/// Sends signal `name` to process `pid`.
pub fn signal_pid(pid: u32, name: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{name} {pid} failed");
}

/// Waits (bounded by [`STEP`]) for a spawned `hookgate` process to exit, and returns how.
pub async fn wait_for_exit(child: &mut std::process::Child) -> std::process::ExitStatus {
    bounded("hookgate to exit", async {
        loop {
            if let Some(status) = child.try_wait().expect("poll the child") {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

// === Client ===

/// What the sender got back.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn is_duplicate(&self) -> bool {
        self.headers
            .get("hookgate-duplicate")
            .is_some_and(|v| v == "true")
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("answer is not JSON ({e}): {}", self.text()))
    }
}

/// A real HTTP client (hyper-util legacy, HTTP/1.1 or h2c by prior knowledge).
#[derive(Clone)]
pub struct Sender {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Sender {
    pub fn http1() -> Self {
        Self {
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    pub fn h2c() -> Self {
        Self {
            client: Client::builder(TokioExecutor::new())
                .http2_only(true)
                .build_http(),
        }
    }

    /// POSTs `body` as JSON to `url`.
    pub async fn post(&self, url: &str, body: impl Into<Bytes>) -> Answer {
        let request = Request::post(url)
            .header("content-type", "application/json")
            .body(Full::new(body.into()))
            .unwrap();
        self.send(request).await
    }

    /// POSTs in a task of its own, for requests that must be in flight together.
    pub fn spawn_post(&self, url: String, body: Bytes) -> tokio::task::JoinHandle<Answer> {
        let sender = self.clone();
        tokio::spawn(async move { sender.post(&url, body).await })
    }

    /// Sends any request, bounded by [`STEP`].
    pub async fn send(&self, request: Request<Full<Bytes>>) -> Answer {
        bounded("the gateway's answer", async {
            let response = self.client.request(request).await.expect("request failed");
            let (parts, body) = response.into_parts();
            let body = body.collect().await.expect("answer body").to_bytes();
            Answer {
                status: parts.status.as_u16(),
                headers: parts.headers,
                body,
            }
        })
        .await
    }
}

// === Payloads ===

/// A FirstPromoter v1-shaped event.
pub fn event(id: serde_json::Value, event_type: &str) -> Bytes {
    Bytes::from(
        serde_json::json!({
            "event": {"id": id, "type": event_type, "created_at": "2026-11-26T10:00:00.000Z"},
            "data": {"id": 7770101, "campaign": {"id": 41001}}
        })
        .to_string(),
    )
}

/// A fixture from the repo's `tests/fixtures/firstpromoter/`.
pub fn fixture(name: &str) -> Bytes {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/firstpromoter")
        .join(name);
    Bytes::from(std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

// === Additions for the status-table, fan-out and hostile-input suites ===

/// An `http://127.0.0.1:PORT/hook` URL where nothing listens: the port was bound, then released.
pub async fn unreachable_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    format!("http://{addr}/hook")
}

/// Polls `check` until it returns `Some`, bounded by [`STEP`]; `check` itself should be quick.
pub async fn poll_until<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    bounded(what, async {
        loop {
            if let Some(value) = check().await {
                return value;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

impl Sender {
    /// POSTs `body` to `url` with extra headers.
    pub async fn post_with(
        &self,
        url: &str,
        body: impl Into<Bytes>,
        headers: &[(&str, &str)],
    ) -> Answer {
        let mut request = Request::post(url).header("content-type", "application/json");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        self.send(request.body(Full::new(body.into())).unwrap())
            .await
    }

    /// Sends a request, returning the client error instead of panicking (bounded by [`STEP`]).
    pub async fn try_send(
        &self,
        request: Request<Full<Bytes>>,
    ) -> Result<Answer, Box<dyn std::error::Error + Send + Sync>> {
        bounded("the gateway's answer", async {
            let response = self.client.request(request).await?;
            let (parts, body) = response.into_parts();
            let body = body.collect().await?.to_bytes();
            Ok(Answer {
                status: parts.status.as_u16(),
                headers: parts.headers,
                body,
            })
        })
        .await
    }
}

/// A response read off a raw socket.
#[derive(Debug)]
pub struct RawAnswer {
    pub status: u16,
    /// Lower-cased header names, in arrival order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawAnswer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "answer is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// A hand-driven HTTP/1.1 connection, for framing a client library will not produce.
pub struct RawConn {
    pub stream: tokio::net::TcpStream,
    buffer: Vec<u8>,
}

impl RawConn {
    pub async fn connect(addr: SocketAddr) -> Self {
        let stream = bounded("connect", tokio::net::TcpStream::connect(addr))
            .await
            .expect("connect to the gateway");
        Self {
            stream,
            buffer: Vec::new(),
        }
    }

    /// Writes raw bytes; a write error is returned (the peer may already have answered and closed).
    pub async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        use tokio::io::AsyncWriteExt;
        bounded("raw write", self.stream.write_all(bytes)).await
    }

    /// Reads more bytes into the buffer; `Ok(0)` at EOF.
    async fn fill(&mut self) -> std::io::Result<usize> {
        use tokio::io::AsyncReadExt;
        let mut chunk = [0u8; 16 * 1024];
        let n = self.stream.read(&mut chunk).await?;
        self.buffer.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// Reads one response (the gateway always sends a Content-Length), bounded by [`STEP`].
    pub async fn read_response(&mut self) -> RawAnswer {
        bounded("a raw response", async {
            let head_end = loop {
                if let Some(at) = find(&self.buffer, b"\r\n\r\n") {
                    break at;
                }
                let n = self.fill().await.expect("read response head");
                assert!(
                    n > 0,
                    "connection closed before a response head; got {:?}",
                    String::from_utf8_lossy(&self.buffer)
                );
            };
            let head = String::from_utf8(self.buffer[..head_end].to_vec()).expect("ASCII head");
            let mut lines = head.split("\r\n");
            let status_line = lines.next().expect("status line");
            let status: u16 = status_line
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
            let headers: Vec<(String, String)> = lines
                .map(|line| {
                    let (name, value) = line.split_once(':').expect("header line");
                    (name.trim().to_ascii_lowercase(), value.trim().to_owned())
                })
                .collect();
            let length: usize = headers
                .iter()
                .find(|(n, _)| n == "content-length")
                .map(|(_, v)| v.parse().expect("content-length"))
                .expect("the gateway always sends content-length");
            let body_start = head_end + 4;
            while self.buffer.len() < body_start + length {
                let n = self.fill().await.expect("read response body");
                assert!(n > 0, "connection closed mid-body");
            }
            let body = self.buffer[body_start..body_start + length].to_vec();
            self.buffer.drain(..body_start + length);
            RawAnswer {
                status,
                headers,
                body,
            }
        })
        .await
    }

    /// Whether the server closes the connection (EOF or reset) with no further bytes.
    /// Fails the test if more bytes arrive (they would be another response).
    pub async fn expect_closed(&mut self) {
        bounded("the gateway to close the connection", async {
            loop {
                assert!(
                    self.buffer.is_empty(),
                    "unexpected bytes after the response: {:?}",
                    String::from_utf8_lossy(&self.buffer)
                );
                match self.fill().await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// A complete HTTP/1.1 POST of `body` with Content-Length, plus extra header lines.
pub fn raw_post(path: &str, body: &[u8], extra_headers: &str) -> Vec<u8> {
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nhost: gateway.test\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{extra_headers}\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    request
}

/// `body` in chunked framing, cut into chunks of at most `chunk` bytes, with the last chunk.
pub fn chunked(body: &[u8], chunk: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for piece in body.chunks(chunk) {
        out.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        out.extend_from_slice(piece);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// A FirstPromoter v1 event padded (with a `data.padding` string) to exactly `len` bytes.
pub fn event_of_len(id: u64, len: usize) -> Bytes {
    let bare = format!(r#"{{"event":{{"id":{id},"type":"lead_signup"}},"data":{{"padding":""}}}}"#);
    assert!(len >= bare.len(), "{len} is shorter than the bare event");
    let padding = "x".repeat(len - bare.len());
    let body = format!(
        r#"{{"event":{{"id":{id},"type":"lead_signup"}},"data":{{"padding":"{padding}"}}}}"#
    );
    assert_eq!(body.len(), len);
    Bytes::from(body)
}

// === TLS: test certificates, HTTPS client connections, a TLS upstream ===
//
// Every key and certificate is generated at test time with rcgen; none is committed.

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, SupportedProtocolVersion};

/// A scratch directory for TLS files and configs, removed on drop.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("hookgate-test-{name}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        Self(dir)
    }

    /// Writes `contents` to `file` in this directory; returns its path.
    pub fn write(&self, file: &str, contents: impl AsRef<[u8]>) -> std::path::PathBuf {
        let path = self.0.join(file);
        std::fs::write(&path, contents).expect("write temp file");
        path
    }

    /// The path of `file` in this directory, as a string for TOML.
    pub fn path(&self, file: &str) -> String {
        self.0.join(file).display().to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A certificate and its key, issued at test time.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
}

impl Issued {
    /// Writes `{name}.pem` and `{name}.key` into `dir`; returns their paths as strings.
    pub fn write(&self, dir: &TempDir, name: &str) -> (String, String) {
        dir.write(&format!("{name}.pem"), &self.cert_pem);
        dir.write(&format!("{name}.key"), &self.key_pem);
        (
            dir.path(&format!("{name}.pem")),
            dir.path(&format!("{name}.key")),
        )
    }

    pub fn key_der(&self) -> PrivateKeyDer<'static> {
        use rustls::pki_types::pem::PemObject;
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).expect("test key")
    }
}

/// A certificate authority for one test.
pub struct TestCa {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl TestCa {
    pub fn new(name: &str) -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::new()).expect("ca params");
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!("hookgate test CA {name}"),
        );
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = rcgen::KeyPair::generate().expect("ca key");
        Self {
            issuer: rcgen::CertifiedIssuer::self_signed(params, key).expect("ca cert"),
        }
    }

    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// Trusts this CA only.
    pub fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.issuer.der().clone()).expect("ca as root");
        roots
    }

    /// A server certificate for `localhost` and `127.0.0.1` (ECDSA P-256, PKCS#8 key).
    pub fn server_cert(&self) -> Issued {
        self.issue_with(
            &rcgen::KeyPair::generate().expect("key"),
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// A client certificate (for mTLS).
    pub fn client_cert(&self) -> Issued {
        self.issue_with(
            &rcgen::KeyPair::generate().expect("key"),
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        )
    }

    /// A server certificate for `key` (any algorithm rcgen can sign a certificate for).
    pub fn issue_with(
        &self,
        key: &rcgen::KeyPair,
        usage: rcgen::ExtendedKeyUsagePurpose,
    ) -> Issued {
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .expect("params");
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(key, &self.issuer).expect("issue");
        Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }
}

/// A client config trusting `roots`, speaking only `versions` and offering `alpn`. Session
/// resumption is off so that every connection sees the certificate served at that moment.
pub fn tls_client_config(
    roots: RootCertStore,
    versions: &[&'static SupportedProtocolVersion],
    alpn: &[&[u8]],
) -> Arc<ClientConfig> {
    let mut config = ClientConfig::builder_with_provider(hookgate::server::tls::provider())
        .with_protocol_versions(versions)
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

/// Both TLS versions hookgate speaks.
pub static TLS_BOTH: [&SupportedProtocolVersion; 2] =
    [&rustls::version::TLS13, &rustls::version::TLS12];

/// A TLS handshake with `addr` as `localhost` (bounded by [`STEP`]).
pub async fn tls_handshake(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    bounded("TLS handshake", async {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let name = ServerName::try_from("localhost").expect("server name");
        tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
    })
    .await
}

enum TlsSendRequest {
    Http1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    Http2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

/// One HTTPS connection to the gateway, HTTP/2 if ALPN chose `h2`, else HTTP/1.1.
pub struct TlsConn {
    sender: TlsSendRequest,
    addr: SocketAddr,
    /// The ALPN protocol the server chose.
    pub alpn: Option<Vec<u8>>,
    pub version: rustls::ProtocolVersion,
    /// The leaf certificate the server presented.
    pub peer_cert: CertificateDer<'static>,
}

impl TlsConn {
    pub async fn connect(addr: SocketAddr, config: Arc<ClientConfig>) -> Self {
        let stream = tls_handshake(addr, config)
            .await
            .expect("TLS handshake with the gateway");
        let (_, session) = stream.get_ref();
        let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
        let version = session.protocol_version().expect("negotiated version");
        let peer_cert = session.peer_certificates().expect("server certificate")[0].clone();
        let io = TokioIo::new(stream);
        let sender = if alpn.as_deref() == Some(b"h2") {
            let (sender, connection) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                    .await
                    .expect("h2 handshake");
            tokio::spawn(connection);
            TlsSendRequest::Http2(sender)
        } else {
            let (sender, connection) = hyper::client::conn::http1::handshake(io)
                .await
                .expect("http1 handshake");
            tokio::spawn(connection);
            TlsSendRequest::Http1(sender)
        };
        Self {
            sender,
            addr,
            alpn,
            version,
            peer_cert,
        }
    }

    /// POSTs `body` as JSON to `path` on this connection (bounded by [`STEP`]). The answer's
    /// HTTP version is added as the header `x-test-http-version` (e.g. `HTTP/2.0`).
    pub async fn post(&mut self, path: &str, body: impl Into<Bytes>) -> Answer {
        let request = Request::post(format!("https://localhost:{}{path}", self.addr.port()))
            .header("content-type", "application/json")
            .body(Full::new(body.into()))
            .unwrap();
        bounded("the gateway's answer over TLS", async {
            let response = match &mut self.sender {
                TlsSendRequest::Http1(sender) => {
                    sender.ready().await.expect("connection still open");
                    sender.send_request(request).await
                }
                TlsSendRequest::Http2(sender) => {
                    sender.ready().await.expect("connection still open");
                    sender.send_request(request).await
                }
            }
            .expect("request over TLS");
            let version = response.version();
            let (parts, body) = response.into_parts();
            let body = body.collect().await.expect("answer body").to_bytes();
            let mut headers = parts.headers;
            headers.insert(
                "x-test-http-version",
                format!("{version:?}").parse().unwrap(),
            );
            Answer {
                status: parts.status.as_u16(),
                headers,
                body,
            }
        })
        .await
    }
}

/// A TLS server config for a [`FakeUpstream::start_tls`]: serves `cert`; with `client_ca`,
/// requires a client certificate issued by it.
pub fn upstream_tls_config(cert: &Issued, client_ca: Option<&TestCa>) -> Arc<rustls::ServerConfig> {
    let provider = hookgate::server::tls::provider();
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&TLS_BOTH)
        .expect("versions");
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => builder.with_client_cert_verifier(
            rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(ca.roots()),
                provider,
            )
            .build()
            .expect("client verifier"),
        ),
    };
    let mut config = builder
        .with_single_cert(vec![cert.der.clone()], cert.key_der())
        .expect("upstream cert");
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

impl FakeUpstream {
    /// Like [`FakeUpstream::start`], over TLS with `tls` (see [`upstream_tls_config`]).
    /// Failed handshakes are simply dropped, like a real server's.
    pub async fn start_tls(fallback: Reply, tls: Arc<rustls::ServerConfig>) -> Self {
        Self::start_with(fallback, Some(tokio_rustls::TlsAcceptor::from(tls))).await
    }

    /// `https://127.0.0.1:PORT/path`.
    pub fn https_url(&self, path: &str) -> String {
        format!("https://{}{}", self.addr, path)
    }
}

/// Serves `config` (which has `[server.tls]`) on 127.0.0.1:0 through the workers, as the
/// binary does, returning the TLS side too so the test can see the certificate it serves.
pub async fn spawn_tls_config(
    config: hookgate::Config,
) -> (TestGateway, Arc<hookgate::server::tls::TlsTerminator>) {
    let gateway = spawn_config(config).await;
    let tls = gateway.tls.clone().expect("config has [server.tls]");
    (gateway, tls)
}

/// `HOOKGATE_TEST_REDIS`, the Redis that tests needing one use; `None` (with a notice on
/// stderr that the test is skipped) when it is not set. CI sets it: there they run.
pub fn test_redis_url() -> Option<String> {
    let url = std::env::var("HOOKGATE_TEST_REDIS")
        .ok()
        .filter(|url| !url.is_empty());
    if url.is_none() {
        // Straight to stderr: the test harness captures eprintln!, and a skip must be seen.
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "skipping a Redis test: HOOKGATE_TEST_REDIS is not set (e.g. redis://127.0.0.1:6379)"
        );
    }
    url
}

/// A key prefix no other test run shares, so that tests on one Redis stay apart.
pub fn unique_redis_prefix(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is past 1970")
        .as_nanos();
    format!("hookgate-test-{test}-{}-{nanos}", std::process::id())
}

/// The message of a JSON error answer `{"error": "..."}`; fails unless it is one.
pub fn error_message(answer: &Answer) -> String {
    assert_eq!(
        answer
            .headers
            .get("content-type")
            .map(|v| v.to_str().unwrap_or("(not text)")),
        Some("application/json"),
        "error answers are JSON: {}",
        answer.text()
    );
    answer.json()["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no \"error\" string in {}", answer.text()))
        .to_owned()
}

/// `hookgate serve --config <config> --log-format json`, its stdout piped (read it with
/// [`log_lines`]) and its stderr inherited: add environment or redirect, then spawn.
pub fn serve_command(config: &Path) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_hookgate"));
    command
        .arg("serve")
        .arg("--config")
        .arg(config)
        .args(["--log-format", "json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit());
    command
}

/// Starts [`serve_command`]: the child (killed if the test fails first) and its log lines.
pub fn spawn_serving(config: &Path) -> (KillOnDrop, std::sync::mpsc::Receiver<serde_json::Value>) {
    let mut child = KillOnDrop(serve_command(config).spawn().expect("start hookgate"));
    let lines = log_lines(&mut child);
    (child, lines)
}

/// The binary's JSON log lines, read on a thread.
pub fn log_lines(child: &mut std::process::Child) -> std::sync::mpsc::Receiver<serde_json::Value> {
    let stdout = child.stdout.take().expect("piped stdout");
    let (line_tx, line_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if let Ok(log) = serde_json::from_str::<serde_json::Value>(&line) {
                let _ = line_tx.send(log);
            }
        }
    });
    line_rx
}

/// The next log line satisfying `wanted` (bounded by [`STEP`]).
pub fn wait_for_log(
    lines: &std::sync::mpsc::Receiver<serde_json::Value>,
    what: &str,
    wanted: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = std::time::Instant::now() + STEP;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if wanted(&line) => return line,
            Ok(_) => {}
            Err(_) => panic!("no log line {what} within {STEP:?}"),
        }
    }
}

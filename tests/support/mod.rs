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
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let addr = listener.local_addr().expect("upstream addr");
        let state = Arc::new(UpstreamState {
            script: Mutex::new(VecDeque::new()),
            fallback: Mutex::new(fallback),
            seen: Mutex::new(Vec::new()),
            arrived: Notify::new(),
            gate: tokio::sync::Semaphore::new(0),
            gated: std::sync::atomic::AtomicBool::new(false),
        });
        let (stop_tx, mut stop_rx) = oneshot::channel::<()>();
        let server_state = Arc::clone(&state);
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    accepted = listener.accept() => match accepted { Ok(a) => a, Err(_) => continue },
                    _ = &mut stop_rx => break,
                };
                let state = Arc::clone(&server_state);
                tokio::spawn(async move {
                    let service = service_fn(move |request| answer(Arc::clone(&state), request));
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
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
    shutdown_tx: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestGateway {
    /// `http://127.0.0.1:PORT/path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
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
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind gateway");
    let addr = listener.local_addr().expect("gateway addr");
    let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
    let gateway = Arc::new(hookgate::pipeline::Gateway::from_config(&config).expect("gateway"));
    let task = tokio::spawn({
        let gateway = Arc::clone(&gateway);
        async move {
            let shutdown = async {
                let _ = shutdown_rx.await;
            };
            hookgate::server::serve(listener, gateway, &config.server, shutdown).await
        }
    });
    TestGateway {
        addr,
        gateway,
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

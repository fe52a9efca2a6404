//! Keep-alive HTTP/1.1 connections to one plain-HTTP upstream address, for one worker thread.
//!
//! hyper-util's pooled client costs several thousand instructions per request on top of the
//! hyper connection it drives: it hashes its pool key with SipHash on checkout and on return,
//! spawns a task per request to wait for the connection to be ready again, and moves large
//! futures around. A plain-HTTP upstream (the usual legacy app) gets its pool when the config
//! is loaded instead, so a forward takes the most recently used idle connection off a stack.
//! Measured (BENCHMARKS.md): 43.6k → 33.1k instructions per request through
//! `examples/bare_proxy.rs` (`BARE_POOL=conn`), 101.7k → 95.7k through hookgate.
//!
//! The rules are hyper-util's:
//! - a connection goes back only once its answer was read whole; one whose exchange failed,
//!   timed out or was cut short is dropped, which closes it;
//! - a request takes only a connection that is ready for it (not one still writing an earlier
//!   request's body that the upstream answered without reading); the others are closed;
//! - idle connections are kept at most [`POOL_IDLE_TIMEOUT`] (a reaper task closes them even
//!   when no traffic comes), at most [`POOL_MAX_IDLE_PER_HOST`] of them;
//! - a request that a reused connection gave back unsent (the upstream closed it as the request
//!   was handed over) is sent once more on a new connection; one the upstream may have seen is
//!   never sent again: only the upstream could say whether it acted on it.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http::{Request, Uri};
use http_body_util::Full;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::{CONNECT_TIMEOUT, POOL_IDLE_TIMEOUT, POOL_MAX_IDLE_PER_HOST};

type Sender = SendRequest<Full<Bytes>>;

/// The idle connections to one `host:port`.
#[derive(Debug)]
pub struct PlainPool {
    /// Where to connect, as `host:port`.
    address: String,
    max_idle: usize,
    idle_timeout: Duration,
    /// Oldest at the front; taken from the back.
    idle: Mutex<IdleConnections>,
}

#[derive(Debug, Default)]
struct IdleConnections {
    connections: VecDeque<Idle>,
    /// Whether a reaper task is running for these connections.
    reaping: bool,
}

#[derive(Debug)]
struct Idle {
    sender: Sender,
    since: Instant,
}

/// The `host:port` a plain-HTTP pool for `url` connects to; `None` unless `url` is an
/// `http://` URL with a host.
pub fn address_of(url: &Uri) -> Option<String> {
    if url.scheme_str() != Some("http") {
        return None;
    }
    // An IPv6 literal keeps its brackets, as a socket address in text has them.
    let host = url.host().filter(|host| !host.is_empty())?;
    Some(format!("{host}:{}", url.port_u16().unwrap_or(80)))
}

/// An answer read whole.
pub type Answer = (http::response::Parts, Bytes);

impl PlainPool {
    /// The pool for `address` (`host:port`, as [`address_of`] gives it).
    pub fn new(address: String) -> Self {
        Self::with_limits(address, POOL_MAX_IDLE_PER_HOST, POOL_IDLE_TIMEOUT)
    }

    fn with_limits(address: String, max_idle: usize, idle_timeout: Duration) -> Self {
        Self {
            address,
            max_idle,
            idle_timeout,
            idle: Mutex::default(),
        }
    }

    /// Sends `request` (its URI as the request target: origin-form; its `host` header set by
    /// the caller) and reads the whole answer, refusing a body over `max_body` bytes.
    ///
    /// # Errors
    /// If no connection could be made, the upstream gave no complete HTTP answer, or the body
    /// is too large.
    pub async fn exchange(
        self: &Arc<Self>,
        request: Request<Full<Bytes>>,
        max_body: usize,
    ) -> anyhow::Result<Answer> {
        let (mut sender, reused) = match self.checkout() {
            Some(sender) => (sender, true),
            None => (self.connect().await?, false),
        };
        let response = match sender.try_send_request(request).await {
            Ok(response) => response,
            Err(mut error) => match error.take_message() {
                Some(unsent) if reused => {
                    tracing::debug!(upstream = %self.address, error = %error.error(),
                        "a reused connection closed before the request was sent; sending on a new one");
                    sender = self.connect().await?;
                    sender.send_request(unsent).await?
                }
                _ => return Err(error.into_error().into()),
            },
        };
        let answer = super::read_whole(response, max_body).await?;
        self.check_in(sender);
        Ok(answer)
    }

    /// The most recently used idle connection that is ready for a request and not expired.
    ///
    /// Readiness is checked, not awaited: a connection can be checked in while hyper is still
    /// writing its request body (the upstream answered before reading all of it), and may never
    /// become ready; waiting for it would hold up this request until its timeout.
    fn checkout(&self) -> Option<Sender> {
        loop {
            let Idle { sender, since } = self.lock().connections.pop_back()?;
            // Dropping one that is closed, busy or too old closes it.
            if since.elapsed() < self.idle_timeout && sender.is_ready() {
                return Some(sender);
            }
        }
    }

    /// Keeps `sender` for the next request, unless it is closed or the pool is full.
    fn check_in(self: &Arc<Self>, sender: Sender) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.lock();
        if idle.connections.len() >= self.max_idle {
            return;
        }
        idle.connections.push_back(Idle {
            sender,
            since: Instant::now(),
        });
        if !idle.reaping {
            idle.reaping = true;
            tokio::spawn(Arc::clone(self).reap());
        }
    }

    /// Closes idle connections as they expire, until none is left.
    async fn reap(self: Arc<Self>) {
        loop {
            let next_expiry = {
                let mut idle = self.lock();
                while idle
                    .connections
                    .front()
                    .is_some_and(|oldest| oldest.since.elapsed() >= self.idle_timeout)
                {
                    idle.connections.pop_front();
                }
                match idle.connections.front() {
                    Some(oldest) => oldest.since + self.idle_timeout,
                    None => {
                        idle.reaping = false;
                        return;
                    }
                }
            };
            tokio::time::sleep_until(next_expiry).await;
        }
    }

    /// A new connection, driven by a task on the calling runtime. The name is resolved
    /// within [`CONNECT_TIMEOUT`], then each address it resolves to is tried in turn, each
    /// with its share of another [`CONNECT_TIMEOUT`] (as hyper-util's connector shares it,
    /// though without its head start for the second address family).
    async fn connect(&self) -> anyhow::Result<Sender> {
        let addresses: Vec<SocketAddr> =
            tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::lookup_host(&self.address))
                .await
                .with_context(|| format!("resolving {} timed out", self.address))?
                .with_context(|| format!("resolving {}", self.address))?
                .collect();
        let share = CONNECT_TIMEOUT / u32::try_from(addresses.len().max(1)).unwrap_or(u32::MAX);
        let mut last_error = anyhow::anyhow!("{} resolves to no address", self.address);
        for address in addresses {
            match tokio::time::timeout(share, Self::open(address)).await {
                Ok(Ok(sender)) => return Ok(sender),
                Ok(Err(error)) => last_error = error.context(format!("connecting to {address}")),
                Err(_) => last_error = anyhow::anyhow!("connecting to {address} timed out"),
            }
        }
        Err(last_error)
    }

    /// A connection to `address`, its task spawned.
    async fn open(address: SocketAddr) -> anyhow::Result<Sender> {
        let stream = TcpStream::connect(address).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(upstream = %address, error = %error, "upstream connection failed");
            }
        });
        Ok(sender)
    }

    fn lock(&self) -> MutexGuard<'_, IdleConnections> {
        // The idle list stays consistent whatever a holder did: every change is one push or pop.
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How many connections are idle.
    #[cfg(test)]
    fn idle_count(&self) -> usize {
        self.lock().connections.len()
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use std::future::Future;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    use tokio::net::TcpListener;
    use tokio::sync::mpsc;

    /// How the test upstream treats a connection after answering.
    #[derive(Clone, Copy)]
    pub(in crate::upstream) enum Then {
        KeepOpen,
        Close,
    }

    /// A raw HTTP/1.1 upstream on 127.0.0.1: answers every request `200` with `answer`,
    /// counts the connections it accepted and sends each request head it read.
    pub(in crate::upstream) struct Upstream {
        pub(in crate::upstream) url: Uri,
        accepted: Arc<AtomicUsize>,
        pub(in crate::upstream) heads: mpsc::UnboundedReceiver<String>,
        /// Connections the client closed.
        closed: mpsc::UnboundedReceiver<()>,
    }

    pub(in crate::upstream) async fn upstream(then: Then, answer: &'static str) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook?x=1", listener.local_addr().unwrap());
        let accepted = Arc::new(AtomicUsize::new(0));
        let (heads_tx, heads) = mpsc::unbounded_channel();
        let (closed_tx, closed) = mpsc::unbounded_channel();
        let counter = Arc::clone(&accepted);
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                counter.fetch_add(1, Ordering::SeqCst);
                let (heads_tx, closed_tx) = (heads_tx.clone(), closed_tx.clone());
                tokio::spawn(async move {
                    let mut stream = BufReader::new(stream);
                    loop {
                        let mut head = String::new();
                        let mut length = 0;
                        loop {
                            let mut line = String::new();
                            if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
                                let _ = closed_tx.send(());
                                return;
                            }
                            if let Some(value) =
                                line.to_ascii_lowercase().strip_prefix("content-length:")
                            {
                                length = value.trim().parse().unwrap();
                            }
                            if line == "\r\n" {
                                break;
                            }
                            head.push_str(&line);
                        }
                        let mut body = vec![0; length];
                        stream.read_exact(&mut body).await.unwrap();
                        let _ = heads_tx.send(head);
                        let response = format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{answer}",
                            answer.len()
                        );
                        stream
                            .get_mut()
                            .write_all(response.as_bytes())
                            .await
                            .unwrap();
                        if let Then::Close = then {
                            return;
                        }
                    }
                });
            }
        });
        Upstream {
            url: url.parse().unwrap(),
            accepted,
            heads,
            closed,
        }
    }

    impl Upstream {
        /// Waits (bounded) until the client has closed `count` more connections.
        async fn wait_closed(&mut self, count: usize, what: &str) {
            for _ in 0..count {
                tokio::time::timeout(Duration::from_secs(10), self.closed.recv())
                    .await
                    .unwrap_or_else(|_| panic!("{what}"))
                    .unwrap();
            }
        }
    }

    fn request(url: &Uri) -> Request<Full<Bytes>> {
        let mut request = Request::new(Full::new(Bytes::from_static(b"{\"event\":{}}")));
        *request.method_mut() = http::Method::POST;
        *request.uri_mut() = Uri::from(url.path_and_query().unwrap().clone());
        request
    }

    fn pool(url: &Uri, max_idle: usize, idle_timeout: Duration) -> Arc<PlainPool> {
        let address = address_of(url).unwrap();
        Arc::new(PlainPool::with_limits(address, max_idle, idle_timeout))
    }

    #[test]
    fn only_http_urls_with_a_host_get_an_address() {
        for (url, address) in [
            ("http://app.internal/hook", Some("app.internal:80")),
            ("http://127.0.0.1:8080/hook", Some("127.0.0.1:8080")),
            ("http://[::1]:9000/", Some("[::1]:9000")),
            ("https://app.internal/hook", None),
        ] {
            let url: Uri = url.parse().unwrap();
            assert_eq!(address_of(&url).as_deref(), address, "{url}");
        }
    }

    #[tokio::test]
    async fn one_connection_serves_requests_in_sequence() {
        let mut upstream = upstream(Then::KeepOpen, "ok").await;
        let pool = pool(&upstream.url, 4, POOL_IDLE_TIMEOUT);
        for _ in 0..20 {
            let (parts, body) = pool.exchange(request(&upstream.url), 1024).await.unwrap();
            assert_eq!((parts.status.as_u16(), &body[..]), (200, &b"ok"[..]));
        }
        assert_eq!(upstream.accepted.load(Ordering::SeqCst), 1);
        assert_eq!(pool.idle_count(), 1);
        // The request line is origin-form (`UpstreamClient` sets the target and `host`).
        let head = upstream.heads.recv().await.unwrap();
        assert!(head.starts_with("POST /hook?x=1 HTTP/1.1\r\n"), "{head}");
    }

    #[tokio::test]
    async fn an_upstream_that_closes_every_connection_is_still_answered() {
        let upstream = upstream(Then::Close, "ok").await;
        let pool = pool(&upstream.url, 4, POOL_IDLE_TIMEOUT);
        for _ in 0..50 {
            let (parts, _) = pool.exchange(request(&upstream.url), 1024).await.unwrap();
            assert_eq!(parts.status, 200);
        }
        assert_eq!(upstream.accepted.load(Ordering::SeqCst), 50);
    }

    #[tokio::test]
    async fn concurrent_requests_open_connections_and_at_most_max_idle_are_kept() {
        let mut upstream = upstream(Then::KeepOpen, "ok").await;
        let pool = pool(&upstream.url, 2, POOL_IDLE_TIMEOUT);
        // Five exchanges at once: none can take another's connection.
        let mut exchanges = tokio::task::JoinSet::new();
        for _ in 0..5 {
            let (pool, request) = (Arc::clone(&pool), request(&upstream.url));
            exchanges.spawn(async move { pool.exchange(request, 1024).await });
        }
        while let Some(answer) = exchanges.join_next().await {
            assert_eq!(answer.unwrap().unwrap().0.status, 200);
        }
        assert_eq!(upstream.accepted.load(Ordering::SeqCst), 5);
        assert_eq!(pool.idle_count(), 2);
        upstream
            .wait_closed(3, "the connections past max_idle are closed")
            .await;
        for _ in 0..5 {
            pool.exchange(request(&upstream.url), 1024).await.unwrap();
        }
        assert_eq!(
            upstream.accepted.load(Ordering::SeqCst),
            5,
            "kept ones are reused"
        );
    }

    #[tokio::test]
    async fn an_expired_connection_is_not_reused_and_the_reaper_closes_it() {
        let mut upstream = upstream(Then::KeepOpen, "ok").await;
        let pool = pool(&upstream.url, 4, Duration::ZERO);
        for _ in 0..3 {
            pool.exchange(request(&upstream.url), 1024).await.unwrap();
        }
        assert_eq!(upstream.accepted.load(Ordering::SeqCst), 3);

        let pool = self::pool(&upstream.url, 4, Duration::from_millis(50));
        pool.exchange(request(&upstream.url), 1024).await.unwrap();
        assert_eq!(pool.idle_count(), 1);
        // The three expired ones, then this one: with no more traffic, the reaper closes it.
        upstream
            .wait_closed(4, "the idle connection is closed after its timeout")
            .await;
        assert_eq!(pool.idle_count(), 0);
    }

    #[tokio::test]
    async fn an_oversized_answer_is_refused_and_its_connection_not_kept() {
        let upstream = upstream(Then::KeepOpen, "a body longer than ten bytes").await;
        let pool = pool(&upstream.url, 4, POOL_IDLE_TIMEOUT);
        let error = pool.exchange(request(&upstream.url), 10).await.unwrap_err();
        assert!(format!("{error:#}").contains("body"), "{error:#}");
        assert_eq!(pool.idle_count(), 0);
        pool.exchange(request(&upstream.url), 1024).await.unwrap();
        assert_eq!(upstream.accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_refused_connection_is_an_error_naming_the_address() {
        // Bound, then closed: nothing listens there.
        let address = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let url: Uri = format!("http://{address}/hook").parse().unwrap();
        let pool = pool(&url, 4, POOL_IDLE_TIMEOUT);
        let error = pool.exchange(request(&url), 1024).await.unwrap_err();
        assert!(
            format!("{error:#}").contains(&address.to_string()),
            "{error:#}"
        );
    }

    /// An upstream that answers before reading the whole request body, and keeps the
    /// connection open: hyper is still writing the body when the answer is read, so that
    /// connection is not ready for another request, and the next one must not wait for it.
    #[tokio::test]
    async fn a_connection_still_sending_its_request_is_not_reused() {
        // A small, fixed receive buffer (no autotuning): far less than the body below can
        // be in flight, whatever the machine's TCP settings.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(64 * 1024).unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(16).unwrap();
        let url: Uri = format!("http://{}/hook", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&accepted);
        tokio::spawn(async move {
            let mut unread = Vec::new();
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                counter.fetch_add(1, Ordering::SeqCst);
                let mut stream = BufReader::new(stream);
                let mut line = String::new();
                while stream.read_line(&mut line).await.unwrap_or(0) > 0 && line != "\r\n" {
                    line.clear();
                }
                let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                stream.get_mut().write_all(answer).await.unwrap();
                // Neither read further nor closed.
                unread.push(stream);
            }
        });
        let pool = pool(&url, 4, POOL_IDLE_TIMEOUT);
        // Far larger than the socket buffers on both sides: hyper cannot finish writing it.
        let mut large = request(&url);
        *large.body_mut() = Full::new(Bytes::from(vec![b'x'; 32 * 1024 * 1024]));
        let (parts, _) = pool.exchange(large, 1024).await.unwrap();
        assert_eq!(parts.status, 200);
        let next =
            tokio::time::timeout(Duration::from_secs(10), pool.exchange(request(&url), 1024))
                .await
                .expect("the next request waited for a connection that never became ready");
        assert_eq!(next.unwrap().0.status, 200);
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    /// A reused connection that closes as a request is handed to it gives the request back
    /// unsent; it goes out once, on a new connection.
    #[tokio::test]
    async fn a_request_a_closing_connection_gave_back_is_sent_on_a_new_one() {
        let mut upstream = upstream(Then::KeepOpen, "ok").await;
        let pool = pool(&upstream.url, 4, POOL_IDLE_TIMEOUT);
        // A connection that is ready (its task ran once) but will never run again.
        let stream = TcpStream::connect(upstream.url.authority().unwrap().as_str())
            .await
            .unwrap();
        let (sender, mut connection) = http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream))
            .await
            .unwrap();
        std::future::poll_fn(|cx| {
            assert!(std::pin::Pin::new(&mut connection).poll(cx).is_pending());
            std::task::Poll::Ready(())
        })
        .await;
        pool.lock().connections.push_back(Idle {
            sender,
            since: Instant::now(),
        });
        let exchange = tokio::spawn({
            let (pool, request) = (Arc::clone(&pool), request(&upstream.url));
            async move { pool.exchange(request, 1024).await }
        });
        // On this single-threaded runtime the exchange runs until it waits for the answer:
        // the request is queued on the connection.
        tokio::task::yield_now().await;
        assert_eq!(
            pool.idle_count(),
            0,
            "the exchange took the idle connection"
        );
        drop(connection);
        let (parts, _) = exchange.await.unwrap().unwrap();
        assert_eq!(parts.status, 200);
        // Sent once: the first connection never wrote it.
        assert_eq!(upstream.accepted.load(Ordering::SeqCst), 2);
        upstream.heads.recv().await.unwrap();
        assert!(
            upstream.heads.try_recv().is_err(),
            "the request was sent twice"
        );
    }
}

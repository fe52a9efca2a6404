//! The listener: accepts connections, serves HTTP/1.1 and HTTP/2 on the same port (with TLS by
//! ALPN, without TLS by h2c prior knowledge), bounds the number of open connections, and
//! drains on shutdown.

pub mod idle;
pub mod linger;
pub mod reload;
pub mod signal;
pub mod tls;
pub mod workers;

use std::convert::Infallible;

use arc_swap::ArcSwap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::config::ServerConfig;
use crate::pipeline::Gateway;
use idle::{Activity, Watched};
use linger::Lingering;
use tls::TlsTerminator;

/// Most headers accepted in one request head; more is a hostile or broken client.
pub const MAX_HEADERS: usize = 100;
/// HTTP/2 streams one client may have open at once.
pub const MAX_CONCURRENT_STREAMS: u32 = 256;
/// HTTP/2 streams a client may reset before they are served, per connection.
pub const MAX_PENDING_RESET_STREAMS: usize = 20;
/// Pause after a failed accept (e.g. out of file descriptors) before trying again.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// How a listener's drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Drain {
    /// Every connection and forward finished.
    Finished,
    /// `shutdown_timeout` passed first; what was left is cut off with the runtime.
    TimedOut,
}

impl Drain {
    /// Warns if the drain timed out. Said once per process, not once per listener: every
    /// worker waits on the same forwards, so they all time out together.
    pub(crate) fn report(self, shutdown_timeout: Duration) {
        if self == Self::TimedOut {
            tracing::warn!(
                timeout = ?shutdown_timeout,
                "shutdown_timeout passed with requests still in flight"
            );
        }
    }
}

/// The accept loop of one listener, then its drain (reported by the caller). `connection_slots`
/// may be shared by several listeners, so that `max_connections` bounds them together.
///
/// The gateway is behind an [`ArcSwap`] that a config reload replaces: each request loads the
/// current gateway once and keeps it to the end, so no request ever sees half of one config
/// and half of another. `tls` is `None` for plain HTTP.
async fn accept_and_drain(
    listener: TcpListener,
    gateway: Arc<ArcSwap<Gateway>>,
    server: &ServerConfig,
    tls: Option<Arc<TlsTerminator>>,
    connection_slots: Arc<Semaphore>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<Drain> {
    let builder = Arc::new(connection_builder());
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);

    loop {
        let (stream, client) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accept failed; retrying");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Past max_connections, this one connection waits here unserved and accepting stops,
        // so further clients wait in the kernel's backlog. Accepting first matters when the
        // slots are shared by several workers' listeners: a freed slot goes to a worker that
        // has a client to serve, not to one that would hold it while its own queue is empty.
        let slot = tokio::select! {
            slot = Arc::clone(&connection_slots).acquire_owned() => slot?,
            () = &mut shutdown => break,
        };
        configure_stream(&stream);
        let connection = Connection {
            builder: Arc::clone(&builder),
            gateway: Arc::clone(&gateway),
            client,
            // Taken now, before the handshake: a shutdown that starts mid-handshake then
            // still reaches this connection (and waits for it).
            watcher: graceful.watcher(),
            // From the accept: the first head's timer includes the TLS handshake.
            activity: Activity::accepted(),
            header_timeout: server.header_timeout,
            idle_timeout: server.idle_timeout,
        };
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => connection.serve(stream).await,
                // The handshake runs here, never on the accept loop: a slow or silent client
                // holds up only its own connection, and only for the handshake timeout. The
                // head then gets its own header_timeout, as on a plain connection (shortening
                // it by the handshake's time would shorten every keep-alive head after it).
                Some(tls) => match tls.accept(stream).await {
                    Ok(stream) => connection.serve(stream).await,
                    Err(error) => {
                        connection.gateway.load().metrics().tls_handshake_failure();
                        tracing::debug!(%client, %error, "TLS handshake failed");
                    }
                },
            }
            drop(slot);
        });
    }

    drop(listener);
    tracing::debug!("listener closed, draining in-flight requests");
    // Every gateway of this process shares one forward tracker (reloads carry it over).
    let forwards = gateway.load().forwards().clone();
    forwards.close();
    let drain = async {
        graceful.shutdown().await;
        forwards.wait().await;
    };
    Ok(
        match tokio::time::timeout(server.shutdown_timeout, drain).await {
            Ok(()) => Drain::Finished,
            Err(_elapsed) => Drain::TimedOut,
        },
    )
}

/// One accepted connection, ready to be served once its transport is (after TLS, if any).
struct Connection {
    builder: Arc<auto::Builder<TokioExecutor>>,
    gateway: Arc<ArcSwap<Gateway>>,
    client: SocketAddr,
    watcher: Watcher,
    activity: Arc<Activity>,
    header_timeout: Duration,
    idle_timeout: Duration,
}

impl Connection {
    /// Serves HTTP/1.1 or HTTP/2 on `io` until the client or a graceful shutdown ends it.
    async fn serve<I>(self, io: I)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Self {
            builder,
            gateway,
            client,
            watcher,
            activity,
            header_timeout,
            idle_timeout,
        } = self;
        let io = Watched::new(Lingering::new(io), Arc::clone(&activity));
        let requests = Arc::clone(&activity);
        let service = service_fn(move |request| {
            let in_progress = requests.request_started();
            let gateway = gateway.load_full();
            // In a task of its own: hyper drops a service future when its connection goes
            // away, and a sender that hangs up right after its request must not cancel the
            // handling before the forward is started (the retry gets the recorded answer).
            // Boxed: the task then holds a pointer, not the ~2 KB future, which tokio would
            // otherwise copy in on spawn and over again when the task completes.
            let handling = tokio::spawn(Box::pin(
                async move { gateway.handle(request, client).await },
            ));
            async move {
                let _in_progress = in_progress;
                let response = match handling.await {
                    Ok(response) => response,
                    Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
                    // Cancelled: the runtime is shutting down. Never a success.
                    Err(_) => crate::error::json_error(
                        http::StatusCode::SERVICE_UNAVAILABLE,
                        "hookgate is shutting down; retry later",
                    ),
                };
                Ok::<_, Infallible>(response)
            }
        });
        let connection = builder
            .serve_connection(TokioIo::new(io), service)
            .into_owned();
        tokio::select! {
            served = watcher.watch(connection) => if let Err(error) = served {
                tracing::debug!(%client, error = %error, "connection ended with an error");
            },
            // Dropping the connection closes it.
            expiry = activity.expired(header_timeout, idle_timeout) => {
                tracing::debug!(%client, ?expiry, "connection closed by its timer");
            }
        }
    }
}

fn connection_builder() -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // Off: it starts at the previous response; `idle` times heads as the contract says.
        .header_read_timeout(None)
        .max_headers(MAX_HEADERS);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        // Rapid reset (CVE-2023-44487): a client that cancels more streams than this before
        // they are served gets GOAWAY(ENHANCE_YOUR_CALM). h2's default today; pinned here so
        // a dependency update cannot quietly drop it (tests/hostile_clients.rs).
        .max_pending_accept_reset_streams(MAX_PENDING_RESET_STREAMS);
    builder
}

fn configure_stream(stream: &TcpStream) {
    // Answers are small; waiting to coalesce them only adds latency.
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%error, "could not set TCP_NODELAY");
    }
}

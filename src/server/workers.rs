//! Thread-per-core serving. `[server] workers` threads each run a single-threaded tokio
//! runtime with a listening socket of their own on the same address (`SO_REUSEPORT`: the
//! kernel spreads new connections over them). A connection, its requests, their forwards and
//! the pooled upstream connections those use (`upstream::WorkerClients`) then all live on
//! one thread, so serving a request wakes no other thread. On the forward path, those
//! cross-thread wake-ups of a work-stealing runtime cost more CPU than the gateway's own
//! work (BENCHMARKS.md).
//!
//! What is shared stays shared: the gateway (config, dedup store, limits, metrics), the TLS
//! certificate, and one `max_connections` budget for all workers.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use arc_swap::ArcSwap;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::tls::TlsTerminator;
use super::Drain;
use crate::config::ServerConfig;
use crate::pipeline::Gateway;
use crate::{logbuf, upstream};

/// Pending connections the kernel queues per listening socket.
const BACKLOG: u32 = 1024;

/// Binds `workers` listening sockets to `addr` (port 0: one ephemeral port shared by all).
///
/// # Errors
/// If the address cannot be bound (in use, not local, no permission).
pub fn bind(addr: SocketAddr, workers: usize) -> io::Result<Vec<TcpListener>> {
    let shared = workers > 1;
    let first = bind_one(addr, shared)?;
    let addr = first.local_addr()?;
    let mut listeners = vec![first];
    for _ in 1..workers {
        listeners.push(bind_one(addr, shared)?);
    }
    Ok(listeners)
}

fn bind_one(addr: SocketAddr, shared: bool) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    if shared {
        socket.set_reuseport(true)?;
    }
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Serves on each of `listeners` from a worker thread of its own until `shutdown` resolves,
/// then has every worker stop accepting and drain its connections and forwards, and
/// returns once all have finished. Must be called inside a tokio runtime (the caller's keeps
/// running meanwhile: admin endpoints, signals, reloads).
///
/// # Errors
/// If a worker cannot start its runtime or adopt its listener; the other workers are then
/// stopped too.
pub async fn serve_workers(
    listeners: Vec<TcpListener>,
    gateway: Arc<ArcSwap<Gateway>>,
    server: &ServerConfig,
    tls: Option<Arc<TlsTerminator>>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let stop = CancellationToken::new();
    // Dropped before the end (its runtime shutting down): the workers must not serve on.
    let _stop_when_dropped = stop.clone().drop_guard();
    let connection_slots = Arc::new(Semaphore::new(server.max_connections));
    let mut workers = Vec::with_capacity(listeners.len());
    for (index, listener) in listeners.into_iter().enumerate() {
        // Out of this runtime's reactor, into the worker's.
        let listener = listener
            .into_std()
            .context("cannot hand the listener to a worker")?;
        let worker = Worker {
            index,
            gateway: Arc::clone(&gateway),
            server: server.clone(),
            tls: tls.clone(),
            connection_slots: Arc::clone(&connection_slots),
            stop: stop.clone(),
        };
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let spawned = std::thread::Builder::new()
            .name(format!("hookgate-w{index}"))
            .spawn(move || {
                let result = worker.run(listener);
                let _ = done_tx.send(result);
            });
        if let Err(error) = spawned {
            stop.cancel();
            return Err(error).context("cannot start a worker thread");
        }
        workers.push(done_rx);
    }

    tokio::select! {
        () = shutdown => tracing::info!("shutting down: listeners closed, draining in-flight requests"),
        () = stop.cancelled() => {}
    }
    stop.cancel();
    let mut first_error = None;
    let mut drain = Drain::Finished;
    for done in workers {
        let result = done
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("a worker thread panicked")));
        match result {
            Ok(Drain::TimedOut) => drain = Drain::TimedOut,
            Ok(Drain::Finished) => {}
            Err(error) => {
                first_error.get_or_insert(error);
            }
        }
    }
    drain.report(server.shutdown_timeout);
    first_error.map_or(Ok(()), Err)
}

struct Worker {
    index: usize,
    gateway: Arc<ArcSwap<Gateway>>,
    server: ServerConfig,
    tls: Option<Arc<TlsTerminator>>,
    connection_slots: Arc<Semaphore>,
    stop: CancellationToken,
}

impl Worker {
    fn run(self, listener: std::net::TcpListener) -> anyhow::Result<Drain> {
        let stop = self.stop.clone();
        let served = self.serve(listener);
        if let Err(error) = &served {
            tracing::error!(error = %format!("{error:#}"), "worker failed; stopping hookgate");
            stop.cancel();
        }
        // Before the thread reports back: the process may exit before this thread's buffer
        // would be dropped (and written out) with the thread.
        logbuf::flush_this_thread();
        served
    }

    fn serve(self, listener: std::net::TcpListener) -> anyhow::Result<Drain> {
        upstream::set_worker_index(self.index);
        logbuf::batch_this_thread();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            // Log lines wait no longer than until this worker has nothing left to do.
            .on_thread_park(logbuf::flush_this_thread)
            .build()
            .context("cannot start a worker's runtime")?;
        runtime.block_on(async move {
            let listener =
                TcpListener::from_std(listener).context("cannot adopt the listening socket")?;
            super::accept_and_drain(
                listener,
                self.gateway,
                &self.server,
                self.tls,
                self.connection_slots,
                self.stop.cancelled_owned(),
            )
            .await
        })
    }
}

//! The connection timers of the contract, which hyper does not give as specified:
//!
//! - `header_timeout` runs from the accept (TLS handshake included) and, on a keep-alive
//!   connection, from the first byte of the next request, until its head is complete;
//! - `idle_timeout` runs while a keep-alive connection waits for its next request.
//!
//! hyper's own head timer starts when the previous response is written, so it would close
//! every idle keep-alive connection after `header_timeout`; it is switched off and this
//! watchdog runs both timers from what the connection shows: bytes read and written (through
//! [`Watched`]) and requests in progress (through [`RequestGuard`]). While a request is in
//! progress neither timer runs: the body has `body_timeout`, the forward its own timeouts.
//!
//! HTTP/2 is told apart by its connection preface. There, bytes between requests are not the
//! start of a head: a client keeps an idle connection alive with PINGs and window updates. On
//! an HTTP/2 connection only the first head is timed (from the accept), and `idle_timeout`
//! runs from the end of the last request, whatever frames come meanwhile.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// No request head has started since the last request.
const NO_HEAD: u64 = u64::MAX;
/// What an HTTP/2 client sends first (RFC 9113, section 3.4), with or without TLS.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What one connection has been doing, in milliseconds since it was accepted.
#[derive(Debug)]
pub struct Activity {
    accepted: Instant,
    last_io_ms: AtomicU64,
    head_started_ms: AtomicU64,
    requests: AtomicUsize,
    /// HTTP/2: reads and writes between requests are not activity (see the module docs).
    multiplexed: AtomicBool,
}

/// Which timer closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// A request head did not complete within `header_timeout`.
    Head,
    /// No request came within `idle_timeout`.
    Idle,
}

impl Activity {
    /// A connection accepted now: its first head is under way from this moment.
    pub fn accepted() -> Arc<Self> {
        Arc::new(Self {
            accepted: Instant::now(),
            last_io_ms: AtomicU64::new(0),
            head_started_ms: AtomicU64::new(0),
            requests: AtomicUsize::new(0),
            multiplexed: AtomicBool::new(false),
        })
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.accepted.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
    }

    fn on_read(&self) {
        if self.multiplexed.load(Ordering::Relaxed) {
            return;
        }
        let now = self.now_ms();
        self.last_io_ms.store(now, Ordering::Relaxed);
        if self.requests.load(Ordering::Acquire) == 0 {
            // The first byte of the next request starts its head timer (if none runs yet).
            let _ = self.head_started_ms.compare_exchange(
                NO_HEAD,
                now,
                Ordering::AcqRel,
                Ordering::Relaxed,
            );
        }
    }

    fn on_write(&self) {
        if !self.multiplexed.load(Ordering::Relaxed) {
            self.last_io_ms.store(self.now_ms(), Ordering::Relaxed);
        }
    }

    fn request_ended(&self) {
        // Idle from here, on either protocol.
        self.last_io_ms.store(self.now_ms(), Ordering::Relaxed);
        self.requests.fetch_sub(1, Ordering::AcqRel);
    }

    /// A request head is complete and the request is being handled; the guard ends it.
    pub fn request_started(self: &Arc<Self>) -> RequestGuard {
        self.requests.fetch_add(1, Ordering::AcqRel);
        self.head_started_ms.store(NO_HEAD, Ordering::Release);
        RequestGuard(Arc::clone(self))
    }

    /// Resolves when a timer expires with no request in progress; never otherwise.
    pub async fn expired(&self, header_timeout: Duration, idle_timeout: Duration) -> Expiry {
        let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX / 2);
        let (header_ms, idle_ms) = (millis(header_timeout), millis(idle_timeout));
        loop {
            let now = self.now_ms();
            let (expiry, deadline) = if self.requests.load(Ordering::Acquire) > 0 {
                // Neither timer runs; look again a timer's length later.
                (None, now + header_ms.min(idle_ms))
            } else {
                match self.head_started_ms.load(Ordering::Acquire) {
                    NO_HEAD => (
                        Some(Expiry::Idle),
                        self.last_io_ms.load(Ordering::Relaxed) + idle_ms,
                    ),
                    started => (Some(Expiry::Head), started + header_ms),
                }
            };
            match expiry {
                Some(expiry) if now >= deadline => return expiry,
                _ => {
                    tokio::time::sleep_until(self.accepted + Duration::from_millis(deadline)).await
                }
            }
        }
    }
}

/// Marks a request in progress on its connection until dropped.
#[derive(Debug)]
pub struct RequestGuard(Arc<Activity>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.request_ended();
    }
}

/// A connection's transport, reporting reads and writes to its [`Activity`].
#[derive(Debug)]
pub struct Watched<T> {
    inner: T,
    activity: Arc<Activity>,
    /// How much of [`H2_PREFACE`] the first bytes matched; `None` once decided.
    preface_matched: Option<usize>,
}

impl<T> Watched<T> {
    /// Wraps `inner`.
    pub fn new(inner: T, activity: Arc<Activity>) -> Self {
        Self {
            inner,
            activity,
            preface_matched: Some(0),
        }
    }

    /// Follows the connection's first bytes until they are or are not the HTTP/2 preface.
    fn look_for_preface(&mut self, read: &[u8]) {
        let Some(matched) = self.preface_matched else {
            return;
        };
        let expected = &H2_PREFACE[matched..];
        let compared = read.len().min(expected.len());
        if read[..compared] != expected[..compared] {
            self.preface_matched = None;
        } else if matched + compared == H2_PREFACE.len() {
            self.activity.multiplexed.store(true, Ordering::Relaxed);
            self.preface_matched = None;
        } else {
            self.preface_matched = Some(matched + compared);
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.look_for_preface(&buf.filled()[before..]);
            self.activity.on_read();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.on_write();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.on_write();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    const HEAD: Duration = Duration::from_secs(10);
    const IDLE: Duration = Duration::from_secs(60);

    #[tokio::test(start_paused = true)]
    async fn the_first_head_is_timed_from_the_accept() {
        let activity = Activity::accepted();
        let started = Instant::now();
        assert_eq!(activity.expired(HEAD, IDLE).await, Expiry::Head);
        assert_eq!(started.elapsed(), HEAD);
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_keep_alive_connection_waits_for_idle_timeout_not_header_timeout() {
        let activity = Activity::accepted();
        drop(activity.request_started()); // one request served
        let idle_since = Instant::now();
        assert_eq!(activity.expired(HEAD, IDLE).await, Expiry::Idle);
        assert_eq!(idle_since.elapsed(), IDLE);
    }

    #[tokio::test(start_paused = true)]
    async fn the_next_head_is_timed_from_its_first_byte() {
        let activity = Activity::accepted();
        drop(activity.request_started());
        tokio::time::sleep(Duration::from_secs(30)).await; // idle, within idle_timeout
        activity.on_read(); // the next request's first byte
        let first_byte = Instant::now();
        assert_eq!(activity.expired(HEAD, IDLE).await, Expiry::Head);
        assert_eq!(first_byte.elapsed(), HEAD);
    }

    #[tokio::test(start_paused = true)]
    async fn no_timer_runs_while_a_request_is_in_progress() {
        let activity = Activity::accepted();
        let request = activity.request_started();
        let slow = tokio::time::timeout(Duration::from_secs(600), activity.expired(HEAD, IDLE));
        assert!(slow.await.is_err(), "nothing expires during a request");
        drop(request);
        let done = Instant::now();
        assert_eq!(activity.expired(HEAD, IDLE).await, Expiry::Idle);
        assert_eq!(done.elapsed(), IDLE);
    }

    #[tokio::test(start_paused = true)]
    async fn http2_frames_between_requests_do_not_start_a_head_or_stretch_idle() {
        let activity = Activity::accepted();
        let mut watched = Watched::new(H2_PREFACE, Arc::clone(&activity));
        // Read through the transport, and in pieces, as a connection may deliver it.
        let mut piece = [0u8; 5];
        watched.read_exact(&mut piece).await.expect("read");
        watched.read_to_end(&mut Vec::new()).await.expect("read");
        drop(activity.request_started());
        let idle_since = Instant::now();
        tokio::time::sleep(Duration::from_secs(30)).await;
        activity.on_read(); // a PING
        activity.on_write(); // its ACK
        assert_eq!(activity.expired(HEAD, IDLE).await, Expiry::Idle);
        assert_eq!(idle_since.elapsed(), IDLE);
    }

    #[tokio::test(start_paused = true)]
    async fn anything_else_is_http1_whose_next_byte_starts_a_head() {
        let activity = Activity::accepted();
        let mut watched = Watched::new(&b"POST /fp HTTP/1.1\r\n"[..], Arc::clone(&activity));
        watched.read_to_end(&mut Vec::new()).await.expect("read");
        assert_eq!(watched.preface_matched, None);
        drop(activity.request_started());
        activity.on_read();
        let first_byte = Instant::now();
        assert_eq!(activity.expired(HEAD, IDLE).await, Expiry::Head);
        assert_eq!(first_byte.elapsed(), HEAD);
    }
}

//! Lingering close: after the gateway closes its side of a connection, it keeps reading (and
//! discarding) what the client still sends, for a bounded time, before the socket goes away.
//!
//! An answer given before the request body was read (413 for an announced size over
//! `max_body_bytes`) ends the connection with the body still arriving. Closing a socket with
//! unread bytes makes the kernel send a reset, and a client still writing its body then
//! sees "connection reset" or "broken pipe" instead of the answer. nginx does the same
//! (`lingering_close`), with longer bounds.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// The longest the gateway keeps reading after its close.
pub const LINGER_TIME: Duration = Duration::from_secs(5);
/// The lingering ends once the client has sent nothing for this long.
pub const LINGER_GAP: Duration = Duration::from_secs(1);
/// Read size while discarding.
const SCRATCH: usize = 16 * 1024;

/// A transport whose shutdown lingers (see the module docs).
#[derive(Debug)]
pub struct Lingering<T> {
    inner: T,
    state: State,
}

#[derive(Debug)]
enum State {
    Open,
    Draining {
        until: Instant,
        gap: Pin<Box<Sleep>>,
    },
    Closed,
}

impl<T> Lingering<T> {
    /// Wraps `inner`.
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            state: State::Open,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Lingering<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Lingering<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    /// Closes the write side (the client sees the end of the answer), then reads and
    /// discards until the client closes too, goes quiet for [`LINGER_GAP`], or
    /// [`LINGER_TIME`] has passed.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            match &mut this.state {
                State::Open => {
                    if let Err(error) = ready!(Pin::new(&mut this.inner).poll_shutdown(cx)) {
                        this.state = State::Closed;
                        return Poll::Ready(Err(error));
                    }
                    let now = Instant::now();
                    this.state = State::Draining {
                        until: now + LINGER_TIME,
                        gap: Box::pin(tokio::time::sleep_until(now + LINGER_GAP)),
                    };
                }
                State::Draining { until, gap } => {
                    let mut scratch = [0u8; SCRATCH];
                    let mut discard = ReadBuf::new(&mut scratch);
                    let done = match Pin::new(&mut this.inner).poll_read(cx, &mut discard) {
                        // The client closed its side, or the connection broke: nothing to wait for.
                        Poll::Ready(Ok(())) if discard.filled().is_empty() => true,
                        Poll::Ready(Err(_)) => true,
                        Poll::Ready(Ok(())) => {
                            let now = Instant::now();
                            if now >= *until {
                                true
                            } else {
                                gap.as_mut().reset((now + LINGER_GAP).min(*until));
                                continue;
                            }
                        }
                        Poll::Pending => gap.as_mut().poll(cx).is_ready(),
                    };
                    if !done {
                        return Poll::Pending;
                    }
                    this.state = State::Closed;
                }
                State::Closed => return Poll::Ready(Ok(())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn shutdown_reads_what_the_client_still_sends_then_ends_at_its_close() {
        let (server, mut client) = tokio::io::duplex(64);
        let mut server = Lingering::new(server);
        let shutdown = tokio::spawn(async move {
            server.shutdown().await.expect("shutdown");
        });
        // More than the pipe holds: only a draining server lets this complete.
        client
            .write_all(&[7u8; 4096])
            .await
            .expect("the write completes");
        let mut rest = Vec::new();
        client
            .read_to_end(&mut rest)
            .await
            .expect("the server's side is closed");
        drop(client);
        shutdown.await.expect("shutdown ends at the client's close");
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_client_is_waited_for_one_gap_only() {
        let (server, _client) = tokio::io::duplex(64);
        let mut server = Lingering::new(server);
        let started = Instant::now();
        server.shutdown().await.expect("shutdown");
        assert_eq!(started.elapsed(), LINGER_GAP);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_never_stops_sending_is_cut_off_at_linger_time() {
        let (server, mut client) = tokio::io::duplex(64);
        let mut server = Lingering::new(server);
        let started = Instant::now();
        let sender = tokio::spawn(async move {
            while client.write_all(&[1u8; 64]).await.is_ok() {
                tokio::time::sleep(LINGER_GAP / 2).await;
            }
        });
        server.shutdown().await.expect("shutdown");
        assert!(started.elapsed() >= LINGER_TIME);
        assert!(started.elapsed() < LINGER_TIME + LINGER_GAP);
        drop(server);
        sender
            .await
            .expect("the sender stops once the server is gone");
    }
}

//! Log lines from worker threads, written to stdout in batches.
//!
//! Every handled event logs one line. Written as it comes, that is one `write(2)` per event on
//! the thread that serves requests; on the duplicate path the log line was a quarter of the
//! CPU per request (BENCHMARKS.md). A worker thread instead appends its lines to a buffer of
//! its own and writes the buffer out just before its runtime goes idle
//! ([`flush_this_thread`], from tokio's `on_thread_park`), when the buffer passes
//! [`FLUSH_AT`], and when the thread ends. A line therefore waits at most until the worker has
//! nothing left to do; under load, many lines go out in one write. Other threads (startup,
//! signals, reloads, admin) write each line at once.

use std::cell::RefCell;
use std::io::{self, Write};

use tracing_subscriber::fmt::MakeWriter;

/// A worker's buffer is written out once it holds this much.
pub const FLUSH_AT: usize = 32 * 1024;

thread_local! {
    /// `Some` on threads that batch ([`batch_this_thread`]).
    static PENDING: RefCell<Option<BatchBuffer>> = const { RefCell::new(None) };
}

/// Pending lines; written out when dropped (the thread ends).
struct BatchBuffer(Vec<u8>);

impl Drop for BatchBuffer {
    fn drop(&mut self) {
        write_out(&mut self.0);
    }
}

/// From now on, log lines of the calling thread are batched until [`flush_this_thread`].
pub fn batch_this_thread() {
    PENDING.with(|pending| {
        pending
            .borrow_mut()
            .get_or_insert_with(|| BatchBuffer(Vec::with_capacity(FLUSH_AT)));
    });
}

/// Writes out the calling thread's pending lines, if any.
pub fn flush_this_thread() {
    with_pending(write_out);
}

/// Runs `f` on the calling thread's pending lines; `None` if the thread does not batch, or
/// its buffer is out of reach (being torn down, or in use further up this stack).
fn with_pending<R>(f: impl FnOnce(&mut Vec<u8>) -> R) -> Option<R> {
    PENDING
        .try_with(|pending| {
            let mut pending = pending.try_borrow_mut().ok()?;
            pending.as_mut().map(|buffer| f(&mut buffer.0))
        })
        .ok()
        .flatten()
}

fn write_out(lines: &mut Vec<u8>) {
    if lines.is_empty() {
        return;
    }
    // Nothing sensible is left to do with a log line that stdout refuses.
    let _ = io::stdout().lock().write_all(lines);
    lines.clear();
}

/// The log writer: stdout, batched on worker threads.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stdout;

impl<'a> MakeWriter<'a> for Stdout {
    type Writer = Line;

    fn make_writer(&'a self) -> Self::Writer {
        Line
    }
}

/// Where one formatted log line goes.
#[derive(Debug)]
pub struct Line;

impl Write for Line {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let batched = with_pending(|buffer| {
            buffer.extend_from_slice(bytes);
            if buffer.len() >= FLUSH_AT {
                write_out(buffer);
            }
        });
        if batched.is_none() {
            io::stdout().lock().write_all(bytes)?;
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending_bytes() -> Option<usize> {
        PENDING.with(|pending| pending.borrow().as_ref().map(|buffer| buffer.0.len()))
    }

    #[test]
    fn a_batching_thread_keeps_lines_until_flushed() {
        std::thread::spawn(|| {
            assert_eq!(pending_bytes(), None, "threads do not batch unless asked");
            batch_this_thread();
            let line = b"{\"message\":\"logbuf unit test line\"}\n";
            Line.write_all(line).unwrap();
            Line.write_all(line).unwrap();
            assert_eq!(pending_bytes(), Some(2 * line.len()));
            flush_this_thread();
            assert_eq!(pending_bytes(), Some(0));
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_full_buffer_is_written_out_at_once() {
        std::thread::spawn(|| {
            batch_this_thread();
            let line = vec![b' '; 1000];
            for _ in 0..(FLUSH_AT / 1000) {
                Line.write_all(&line).unwrap();
            }
            assert_eq!(pending_bytes(), Some(FLUSH_AT / 1000 * 1000));
            Line.write_all(&line).unwrap();
            assert_eq!(
                pending_bytes(),
                Some(0),
                "past FLUSH_AT the buffer goes out"
            );
        })
        .join()
        .unwrap();
    }
}

//! The JSON log line, written directly.
//!
//! tracing-subscriber's JSON formatter collects every field of an event into a map of
//! `serde_json::Value`s (a `String` per field) and serialises that: on the duplicate path the
//! log line was about a fifth of the CPU per request. This writes the same line — one JSON
//! object per event, `{"timestamp", "level", <the event's fields, message first>, "target"}` —
//! straight into the output, escaping as it goes. Span fields are not included (hookgate opens
//! no spans; a dependency's spans only matter at trace level).
//!
//! The line is put together in a buffer of this thread's and handed to tracing-subscriber's
//! writer in one call: every call through that writer is a dynamic one, and writing each
//! piece through it cost about 3k instructions per access line (BENCHMARKS.md).

use std::cell::RefCell;
use std::fmt::{self, Write};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Formats each event as one line of JSON.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonLine;

/// A line buffer that has grown past this (a huge field) is not kept for the next line.
const KEPT_LINE_CAPACITY: usize = 16 * 1024;

thread_local! {
    static LINE: RefCell<String> = const { RefCell::new(String::new()) };
}

impl<S, N> FormatEvent<S, N> for JsonLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let in_buffer = LINE.try_with(|line| {
            let mut line = line.try_borrow_mut().ok()?;
            line.clear();
            let written = write_line(&mut line, event).and_then(|()| writer.write_str(&line));
            if line.capacity() > KEPT_LINE_CAPACITY {
                *line = String::new();
            }
            Some(written)
        });
        match in_buffer {
            Ok(Some(written)) => written,
            // The thread is ending, or formatting a field formatted another line on this thread
            // (tracing itself does not dispatch from inside a dispatch): a buffer of its own.
            _ => {
                let mut line = String::new();
                write_line(&mut line, event)?;
                writer.write_str(&line)
            }
        }
    }
}

/// `event` as one line of JSON, into `line`.
fn write_line(line: &mut String, event: &Event<'_>) -> fmt::Result {
    let metadata = event.metadata();
    line.push_str("{\"timestamp\":\"");
    write_timestamp(line, time::OffsetDateTime::now_utc())?;
    line.push_str("\",\"level\":\"");
    line.push_str(metadata.level().as_str());
    line.push('"');
    let mut fields = Fields {
        line,
        result: Ok(()),
    };
    event.record(&mut fields);
    fields.result?;
    line.push_str(",\"target\":");
    write_string(line, metadata.target())?;
    line.push_str("}\n");
    Ok(())
}

/// RFC 3339 in UTC with microseconds, as tracing-subscriber writes it.
fn write_timestamp(out: &mut impl Write, now: time::OffsetDateTime) -> fmt::Result {
    // Digit by digit into a template: `write!` with widths cost several times as much, on
    // every line. Years outside 0..=9999 (not this clock's) take the general path.
    if let Ok(year @ 0..=9999) = u32::try_from(now.year()) {
        let mut text = *b"0000-00-00T00:00:00.000000Z";
        for (range, value) in [
            (0..4, year),
            (5..7, u32::from(u8::from(now.month()))),
            (8..10, u32::from(now.day())),
            (11..13, u32::from(now.hour())),
            (14..16, u32::from(now.minute())),
            (17..19, u32::from(now.second())),
            (20..26, now.microsecond()),
        ] {
            put_digits(&mut text[range], value);
        }
        return out.write_str(std::str::from_utf8(&text).map_err(|_| fmt::Error)?);
    }
    write!(
        out,
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second(),
        now.microsecond()
    )
}

/// Writes the last `into.len()` decimal digits of `value` into `into`, zero-padded.
fn put_digits(into: &mut [u8], mut value: u32) {
    for digit in into.iter_mut().rev() {
        *digit = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

/// Writes each field as `,"name":value`.
struct Fields<'l> {
    line: &'l mut String,
    /// A `Debug` or `Display` implementation may fail; the line is then not written.
    result: fmt::Result,
}

impl Fields<'_> {
    fn field(&mut self, field: &Field, value: impl FnOnce(&mut String) -> fmt::Result) {
        if self.result.is_err() {
            return;
        }
        self.result = (|| {
            self.line.push(',');
            write_string(self.line, field.name())?;
            self.line.push(':');
            value(self.line)
        })();
    }
}

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.field(field, |out| write_string(out, value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.field(field, |out| {
            out.write_str(if value { "true" } else { "false" })
        });
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.field(field, |out| {
            out.write_str(itoa::Buffer::new().format(value))
        });
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.field(field, |out| {
            out.write_str(itoa::Buffer::new().format(value))
        });
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        // JSON has no NaN or infinities.
        match value.is_finite() {
            true => self.field(field, |out| write!(out, "{value}")),
            false => self.field(field, |out| write_string(out, &value.to_string())),
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        // `%value` fields arrive here too, already wrapped to format with Display.
        self.field(field, |out| {
            out.write_char('"')?;
            write!(Escaped(&mut *out), "{value:?}")?;
            out.write_char('"')
        });
    }
}

/// `text` as a JSON string.
fn write_string(out: &mut impl Write, text: &str) -> fmt::Result {
    out.write_char('"')?;
    Escaped(&mut *out).write_str(text)?;
    out.write_char('"')
}

/// Escapes what it is given for the inside of a JSON string.
struct Escaped<W>(W);

/// The bytes written escaped: quote, backslash, control characters and DEL.
static ESCAPED: [bool; 256] = {
    let mut escaped = [false; 256];
    let mut byte = 0;
    while byte < 0x20 {
        escaped[byte] = true;
        byte += 1;
    }
    escaped[b'"' as usize] = true;
    escaped[b'\\' as usize] = true;
    escaped[0x7f] = true;
    escaped
};

impl<W: Write> Write for Escaped<W> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        let bytes = text.as_bytes();
        let mut plain_from = 0;
        // A table lookup per byte: most text has nothing to escape.
        while let Some(offset) = bytes[plain_from..]
            .iter()
            .position(|&byte| ESCAPED[usize::from(byte)])
        {
            let at = plain_from + offset;
            let byte = bytes[at];
            let escape = match byte {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                _ => "",
            };
            // Escaped bytes are ASCII, so `at` is a character boundary.
            self.0.write_str(&text[plain_from..at])?;
            match escape {
                "" => write!(self.0, "\\u{byte:04x}")?,
                escape => self.0.write_str(escape)?,
            }
            plain_from = at + 1;
        }
        self.0.write_str(&text[plain_from..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::fmt::MakeWriter;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Captured {
        type Writer = Captured;
        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    /// The lines `emit` logs, parsed (each must be valid JSON), and as written.
    fn logged(emit: impl FnOnce()) -> Vec<(serde_json::Value, String)> {
        let captured = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .event_format(JsonLine)
            .with_writer(captured.clone())
            .with_max_level(tracing::Level::TRACE)
            .finish();
        tracing::subscriber::with_default(subscriber, emit);
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|line| {
                let value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
                (value, line.to_owned())
            })
            .collect()
    }

    #[test]
    fn an_event_is_one_line_of_json_with_its_fields_in_order() {
        let lines = logged(|| {
            tracing::info!(
                source = %"firstpromoter",
                event_id = "48213377",
                route = 3_usize,
                offset = -2_i64,
                duplicate = false,
                ratio = 0.5,
                "event handled"
            );
        });
        assert_eq!(lines.len(), 1);
        let (line, raw) = &lines[0];
        let mut keys: Vec<(usize, &str)> = line
            .as_object()
            .unwrap()
            .keys()
            .map(|key| (raw.find(&format!("\"{key}\":")).unwrap(), key.as_str()))
            .collect();
        keys.sort();
        assert_eq!(
            keys.iter().map(|(_, key)| *key).collect::<Vec<_>>(),
            [
                "timestamp",
                "level",
                "message",
                "source",
                "event_id",
                "route",
                "offset",
                "duplicate",
                "ratio",
                "target"
            ]
        );
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["message"], "event handled");
        assert_eq!(line["source"], "firstpromoter");
        assert_eq!(line["event_id"], "48213377");
        assert_eq!(line["route"], 3);
        assert_eq!(line["offset"], -2);
        assert_eq!(line["duplicate"], false);
        assert_eq!(line["ratio"], 0.5);
        assert_eq!(line["target"], "hookgate::logformat::tests");
        let timestamp = line["timestamp"].as_str().unwrap();
        assert_eq!(
            timestamp.len(),
            "2026-11-26T22:30:33.194324Z".len(),
            "{timestamp}"
        );
        assert!(timestamp.ends_with('Z') && timestamp.as_bytes()[10] == b'T');
    }

    #[test]
    fn the_timestamp_is_rfc3339_utc_with_microseconds() {
        // 2026-11-26T22:30:33.194324Z; each field distinct, so a swap would show.
        let at = time::OffsetDateTime::from_unix_timestamp_nanos(1_795_732_233_194_324_567)
            .expect("a valid time");
        let mut text = String::new();
        write_timestamp(&mut text, at).expect("formats");
        assert_eq!(text, "2026-11-26T22:30:33.194324Z");
        let early = time::OffsetDateTime::from_unix_timestamp(1_767_236_645).expect("valid");
        text.clear();
        write_timestamp(&mut text, early).expect("formats");
        assert_eq!(text, "2026-01-01T03:04:05.000000Z", "zero-padded");
    }

    #[test]
    fn strings_are_escaped_whatever_they_hold() {
        let nasty = "quote \" backslash \\ newline \n tab \t bell \u{7} del \u{7f} é 🙂";
        let lines = logged(|| {
            tracing::warn!(text = nasty, display = %nasty, debug = ?nasty, "{nasty}");
        });
        let line = &lines[0].0;
        assert_eq!(line["text"], nasty);
        assert_eq!(line["display"], nasty);
        assert_eq!(line["debug"], format!("{nasty:?}"));
        assert_eq!(line["message"], nasty);
    }

    /// A field whose formatting logs: tracing drops the nested event (it does not dispatch
    /// from inside a dispatch), and the line being formatted still comes out whole.
    #[test]
    fn a_field_whose_formatting_logs_still_gives_a_whole_line() {
        struct Noisy;
        impl fmt::Debug for Noisy {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                tracing::info!(inner = "yes", "formatting logged");
                f.write_str("noisy")
            }
        }
        let lines = logged(|| tracing::info!(field = ?Noisy, "outer"));
        let messages: Vec<_> = lines
            .iter()
            .map(|(line, _)| line["message"].clone())
            .collect();
        assert_eq!(messages, ["outer"]);
        assert_eq!(lines[0].0["field"], "noisy");
    }

    /// With the thread's line buffer unavailable (here: held), a line is still written whole,
    /// from a buffer of its own.
    #[test]
    fn a_line_is_written_when_the_threads_buffer_is_unavailable() {
        let lines = LINE.with(|line| {
            let _held = line.borrow_mut();
            logged(|| tracing::info!(field = "value", "while held"))
        });
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].0["message"], "while held");
        assert_eq!(lines[0].0["field"], "value");
    }

    /// A huge field is written whole, and the buffer it grew is not kept for later lines.
    #[test]
    fn a_huge_line_is_written_and_its_buffer_not_kept() {
        let huge = "x".repeat(4 * KEPT_LINE_CAPACITY);
        let lines = logged(|| {
            tracing::info!(body = huge.as_str(), "huge");
            tracing::info!("small");
        });
        assert_eq!(lines[0].0["body"], huge.as_str());
        assert_eq!(lines[1].0["message"], "small");
        LINE.with(|line| assert!(line.borrow().capacity() <= KEPT_LINE_CAPACITY));
    }

    #[test]
    fn non_finite_floats_stay_valid_json() {
        let lines = logged(|| tracing::info!(value = f64::NAN, other = f64::INFINITY));
        assert_eq!(lines[0].0["value"], "NaN");
        assert_eq!(lines[0].0["other"], "inf");
    }
}

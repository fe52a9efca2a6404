//! Parse: validate the body as JSON once, then read the event id and type at the source's
//! pointers ([`Payload`] materialises only those values).
//!
//! The payload view is kept for routing (`match` pointers); the original bytes are what gets
//! forwarded, so oddly formatted JSON reaches the upstream byte for byte.

use serde_json::Value;

use super::payload::{Payload, Pointers};

use crate::config::Source;
use crate::error::GatewayError;

/// Longest event id accepted. Ids key dedup records, so an unbounded id would let one sender
/// grow memory without limit; real ids are a few dozen bytes.
pub const MAX_EVENT_ID_BYTES: usize = 256;

/// Longest event type accepted (it is forwarded as a header and logged).
pub const MAX_EVENT_TYPE_BYTES: usize = 256;

/// A parsed event, borrowing the body it came from.
#[derive(Debug)]
pub struct Event<'a> {
    /// The id in canonical text form: a number and the same digits as a string are one id.
    pub id: String,
    /// The event type.
    pub event_type: String,
    /// The whole payload, for route `match` pointers.
    pub payload: Payload<'a>,
}

/// Parses `body` and reads the event id and type where `source` says they are. The pass
/// notes where the values at `pointers` are (the config's: [`Pointers::of_config`]).
///
/// # Errors
/// 400-class [`GatewayError`]s naming what is missing or malformed.
pub fn parse<'a>(
    body: &'a [u8],
    source: &Source,
    pointers: &'a Pointers,
) -> Result<Event<'a>, GatewayError> {
    let payload = Payload::parse_noting(body, pointers).map_err(GatewayError::InvalidJson)?;
    let id = event_id(&payload, &source.event_id)?;
    let event_type = event_type(&payload, &source.event_type)?;
    Ok(Event {
        id,
        event_type,
        payload,
    })
}

fn event_id(payload: &Payload<'_>, pointer: &str) -> Result<String, GatewayError> {
    let invalid = |reason| GatewayError::InvalidEventId {
        pointer: pointer.to_owned(),
        reason,
    };
    let id = match payload.get(pointer) {
        None | Some(Value::Null) => {
            return Err(GatewayError::MissingEventId {
                pointer: pointer.to_owned(),
            })
        }
        Some(Value::String(text)) => text,
        // `5367` and `"5367"` must dedup as one event: both become the text "5367".
        Some(Value::Number(number)) => number.to_string(),
        Some(_) => return Err(invalid("must be a string or a number")),
    };
    check_header_safe(&id, MAX_EVENT_ID_BYTES).map_err(invalid)?;
    Ok(id)
}

fn event_type(payload: &Payload<'_>, pointer: &str) -> Result<String, GatewayError> {
    let invalid = |reason| GatewayError::InvalidEventType {
        pointer: pointer.to_owned(),
        reason,
    };
    match payload.get(pointer) {
        None | Some(Value::Null) => Err(GatewayError::MissingEventType {
            pointer: pointer.to_owned(),
        }),
        Some(Value::String(text)) => {
            check_header_safe(&text, MAX_EVENT_TYPE_BYTES).map_err(invalid)?;
            Ok(text)
        }
        Some(_) => Err(invalid("must be a string")),
    }
}

/// Ids and types travel upstream as header values and into logs: keep them to visible ASCII.
fn check_header_safe(text: &str, max_bytes: usize) -> Result<(), &'static str> {
    if text.is_empty() {
        return Err("must not be empty");
    }
    if text.len() > max_bytes {
        return Err("is too long (at most 256 bytes)");
    }
    if !text.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
        return Err("must be printable ASCII");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(event_id: &str, event_type: &str) -> Source {
        Source {
            name: "fp".into(),
            path: "/fp".into(),
            event_id: event_id.into(),
            event_type: event_type.into(),
            verify: None,
        }
    }

    fn v1() -> Source {
        source("/event/id", "/event/type")
    }

    /// Parses as the gateway does, noting the source's pointers in the one pass.
    fn parse<'a>(body: &'a [u8], source: &Source) -> Result<Event<'a>, GatewayError> {
        let pointers = Pointers::new([source.event_id.as_str(), source.event_type.as_str()]);
        super::parse(body, source, Box::leak(Box::new(pointers)))
    }

    #[test]
    fn numeric_and_string_ids_are_the_same_id() {
        let number = parse(br#"{"event":{"id":5367,"type":"x"}}"#, &v1()).unwrap();
        let string = parse(br#"{"event":{"id":"5367","type":"x"}}"#, &v1()).unwrap();
        assert_eq!(number.id, "5367");
        assert_eq!(number.id, string.id);
    }

    #[test]
    fn v2_pointers_read_top_level_fields() {
        let event = parse(
            br#"{"event_id":"ev_1","event_type":"reward_created"}"#,
            &source("/event_id", "/event_type"),
        )
        .unwrap();
        assert_eq!(
            (event.id.as_str(), event.event_type.as_str()),
            ("ev_1", "reward_created")
        );
    }

    #[test]
    fn each_malformed_event_has_its_own_error() {
        let cases: [(&[u8], &str); 7] = [
            (b"not json", "not valid JSON"),
            (br#"{"event":{"type":"x"}}"#, "no event id"),
            (
                br#"{"event":{"id":{},"type":"x"}}"#,
                "must be a string or a number",
            ),
            (br#"{"event":{"id":"","type":"x"}}"#, "must not be empty"),
            (br#"{"event":{"id":"a\nb","type":"x"}}"#, "printable ASCII"),
            (br#"{"event":{"id":1}}"#, "no event type"),
            (br#"{"event":{"id":1,"type":7}}"#, "must be a string"),
        ];
        for (body, expected) in cases {
            let error = parse(body, &v1()).unwrap_err().to_string();
            assert!(error.contains(expected), "{error:?} lacks {expected:?}");
        }
    }

    #[test]
    fn an_overlong_id_is_refused() {
        let body = format!(r#"{{"event":{{"id":"{}","type":"x"}}}}"#, "a".repeat(257));
        let error = parse(body.as_bytes(), &v1()).unwrap_err();
        assert!(matches!(error, GatewayError::InvalidEventId { .. }));
    }
}

//! Forward: send the event to one upstream and capture its complete answer.
//!
//! The caller runs this in a task of its own, so a sender that hangs up does not cancel the
//! forward: the answer is still recorded and replayed to the sender's retry.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::authenticate::now_unix;
use super::rate_limit::UpstreamLimit;
use super::sign::{Signer, WEBHOOK_ID, WEBHOOK_SIGNATURE, WEBHOOK_TIMESTAMP};
use crate::config::{Secret, Upstream};
use crate::metrics::{AttemptStatus, Metrics, UpstreamAttempts};
use crate::upstream::UpstreamClient;

/// Largest upstream answer kept; it is held in memory and in the dedup record.
pub const MAX_UPSTREAM_BODY_BYTES: usize = 1024 * 1024;

/// Header carrying the event id to the upstream.
pub static EVENT_ID_HEADER: HeaderName = HeaderName::from_static("hookgate-event-id");
/// Header carrying the event type to the upstream.
pub static EVENT_TYPE_HEADER: HeaderName = HeaderName::from_static("hookgate-event-type");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");

/// Headers that describe one hop, not the message (RFC 9110 §7.6.1), plus the ones the
/// upstream request sets itself (`host`, `content-length`).
static NOT_FORWARDED: [&HeaderName; 8] = [
    &header::CONNECTION,
    &KEEP_ALIVE,
    &header::TE,
    &header::TRAILER,
    &header::TRANSFER_ENCODING,
    &header::UPGRADE,
    &header::HOST,
    &header::CONTENT_LENGTH,
];

/// An upstream's complete answer: what is relayed, and for 2xx what is recorded.
#[derive(Debug, Clone)]
pub struct Record {
    /// The upstream's status.
    pub status: StatusCode,
    /// The upstream's `content-type`, if any.
    pub content_type: Option<HeaderValue>,
    /// The upstream's body.
    pub body: Bytes,
}

/// What came of forwarding one event to one upstream.
#[derive(Debug)]
pub enum Outcome {
    /// The upstream answered this forward (any status).
    Answered(Arc<Record>),
    /// A 2xx answer recorded by an earlier forward (here or on another replica).
    Replayed(Arc<Record>),
    /// No complete answer within the upstream's `timeout`.
    TimedOut,
    /// No HTTP answer: refused, reset, DNS or TLS failure, malformed or oversized answer.
    Unreachable,
    /// The upstream already has `max_in_flight` requests open.
    Busy,
    /// The upstream's `rate_limit` is spent; a forward would be admitted after `retry_after`.
    RateLimited {
        /// The limiter's wait (`Retry-After` rounds it up to whole seconds).
        retry_after: Duration,
    },
    /// The forward task ended without an outcome (it panicked); never recorded.
    Lost,
    /// The shared dedup backend (Redis) could not be asked, so forwarding could duplicate.
    DedupUnavailable,
    /// Another replica forwarded this event and failed, or did not finish in time.
    FailedElsewhere,
}

impl Outcome {
    /// The upstream's answer, fresh or replayed.
    pub fn record(&self) -> Option<&Arc<Record>> {
        match self {
            Self::Answered(record) | Self::Replayed(record) => Some(record),
            _ => None,
        }
    }

    /// The answer to keep for replays: an upstream's 2xx, and nothing else.
    pub fn recordable(&self) -> Option<&Arc<Record>> {
        self.record().filter(|record| record.status.is_success())
    }
}

/// One upstream with its runtime state.
#[derive(Debug)]
pub struct UpstreamTarget {
    /// Name as an `Arc` for dedup keys.
    pub name: Arc<str>,
    /// Its configuration.
    pub config: Upstream,
    /// Permits for `max_in_flight`.
    pub in_flight: Arc<Semaphore>,
    /// Its `rate_limit`, if set; only a request that forwards spends from it.
    pub rate_limit: Option<Arc<UpstreamLimit>>,
    /// Standard Webhooks signing keys, when `sign` is set.
    pub signer: Option<Signer>,
    /// Where attempts are counted.
    pub metrics: Arc<Metrics>,
    /// This upstream's attempt series, once resolved.
    pub attempts: UpstreamAttempts,
    /// How this upstream is reached (its plain-HTTP pools, the shared HTTPS clients, or its
    /// own for `ca` / `client_cert`), resolved once rather than looked up per forward.
    pub client: UpstreamClient,
}

impl UpstreamTarget {
    /// Wraps a configured upstream.
    ///
    /// # Errors
    /// If a `sign` secret does not decode (config validation refuses those first).
    pub fn new(
        config: Upstream,
        client: UpstreamClient,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        Self::carry_over(config, client, metrics, None)
    }

    /// Like [`UpstreamTarget::new`], keeping `previous`'s in-flight count and rate-limit
    /// state when the new config leaves `max_in_flight` and `rate_limit` as they were (a
    /// reload must not hand a protected legacy app a fresh burst).
    ///
    /// # Errors
    /// As [`UpstreamTarget::new`].
    pub fn carry_over(
        config: Upstream,
        client: UpstreamClient,
        metrics: Arc<Metrics>,
        previous: Option<&UpstreamTarget>,
    ) -> anyhow::Result<Self> {
        let signer = match config.sign.is_empty() {
            true => None,
            false => Some(
                Signer::new(config.sign.iter().map(Secret::expose)).ok_or_else(|| {
                    anyhow::anyhow!(
                        "upstreams.{}.sign: a secret is not whsec_ base64",
                        config.name
                    )
                })?,
            ),
        };
        let in_flight = match previous {
            Some(old) if old.config.max_in_flight == config.max_in_flight => {
                Arc::clone(&old.in_flight)
            }
            _ => Arc::new(Semaphore::new(config.max_in_flight)),
        };
        let rate_limit = match (previous, config.rate_limit) {
            (Some(old), Some(quota)) if old.config.rate_limit == Some(quota) => {
                old.rate_limit.clone()
            }
            (_, quota) => quota.map(|quota| Arc::new(UpstreamLimit::new(quota))),
        };
        Ok(Self {
            name: Arc::from(config.name.as_str()),
            in_flight,
            rate_limit,
            signer,
            metrics,
            attempts: UpstreamAttempts::default(),
            client,
            config,
        })
    }
}

/// The part of an upstream request that is the same for every upstream of a fan-out.
#[derive(Debug)]
pub struct Delivery {
    /// Sender headers without hop-by-hop ones, plus forwarding headers.
    pub headers: HeaderMap,
    /// The body bytes to send: the original ones, or redacted for this upstream.
    pub body: Bytes,
    /// The event id (`webhook-id` when signing).
    pub event_id: String,
}

impl Delivery {
    /// Prepares the headers the upstream receives: the sender's, minus hop-by-hop headers
    /// (and any named in `Connection`) and minus `credential` (hookgate's own inbound
    /// token or Basic authorization), with `x-forwarded-*` and the event headers added.
    pub fn new(
        sender_headers: &HeaderMap,
        credential: Option<&HeaderName>,
        client: SocketAddr,
        proto: &'static str,
        event_id: &str,
        event_type: &str,
        body: Bytes,
    ) -> Self {
        let mut headers = HeaderMap::with_capacity(sender_headers.len() + 4);
        let connection_named: Vec<&str> = sender_headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .map(str::trim)
            .collect();
        for (name, value) in sender_headers {
            let hop_by_hop = NOT_FORWARDED.contains(&name)
                || Some(name) == credential
                || name.as_str().starts_with("proxy-")
                || connection_named
                    .iter()
                    .any(|named| named.eq_ignore_ascii_case(name.as_str()));
            if !hop_by_hop {
                headers.append(name.clone(), value.clone());
            }
        }
        let client_ip = ip_text(client.ip());
        // Several `x-forwarded-for` lines are one list (RFC 9110 §5.3): keep every hop.
        let previous: Vec<&str> = sender_headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .collect();
        let forwarded_for = if previous.is_empty() {
            client_ip
        } else {
            format!("{}, {client_ip}", previous.join(", "))
        };
        // Ids and types were checked to be printable ASCII, and an IP is, so these hold.
        for (name, value) in [
            (&X_FORWARDED_FOR, forwarded_for.as_str()),
            (&EVENT_ID_HEADER, event_id),
            (&EVENT_TYPE_HEADER, event_type),
        ] {
            if let Ok(value) = HeaderValue::from_str(value) {
                headers.insert(name.clone(), value);
            }
        }
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
        Self {
            headers,
            body,
            event_id: event_id.to_owned(),
        }
    }

    /// The same delivery with another body (a redacted one).
    pub fn with_body(&self, body: Bytes) -> Self {
        Self {
            headers: self.headers.clone(),
            body,
            event_id: self.event_id.clone(),
        }
    }
}

/// `ip` as text, as its `Display` writes it. IPv4 is written octet by octet: through `fmt`
/// (padding support included) it cost more than the rest of the forwarded headers together.
fn ip_text(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let mut text = String::with_capacity(15);
            for (position, octet) in v4.octets().into_iter().enumerate() {
                if position > 0 {
                    text.push('.');
                }
                text.push_str(itoa::Buffer::new().format(octet));
            }
            text
        }
        IpAddr::V6(_) => ip.to_string(),
    }
}

/// Forwards `delivery` to `target` and waits for its whole answer, at most its `timeout`.
pub async fn forward(target: &UpstreamTarget, delivery: &Delivery) -> Outcome {
    let Ok(_permit) = Arc::clone(&target.in_flight).try_acquire_owned() else {
        return Outcome::Busy;
    };
    let upstream = &target.config;
    let mut request = Request::new(Full::new(delivery.body.clone()));
    *request.method_mut() = Method::POST;
    let headers = request.headers_mut();
    headers.clone_from(&delivery.headers);
    // An upstream's configured headers win (`host` is not among them: the client sets it).
    for (name, value) in &upstream.headers {
        headers.insert(name.clone(), value.clone());
    }
    if let Some(signer) = &target.signer {
        // Signed over the bytes actually sent (after any redaction).
        let timestamp = now_unix();
        let signature = signer.signature(&delivery.event_id, timestamp, &delivery.body);
        // The value `Delivery::new` made for hookgate-event-id: the same id, already checked
        // as a header value (a timestamp is digits).
        if let Some(id) = delivery.headers.get(&EVENT_ID_HEADER) {
            headers.insert(WEBHOOK_ID.clone(), id.clone());
        }
        headers.insert(WEBHOOK_TIMESTAMP.clone(), HeaderValue::from(timestamp));
        headers.insert(WEBHOOK_SIGNATURE.clone(), signature);
    }

    let started = Instant::now();
    let exchange = async {
        let (parts, body) = target
            .client
            .exchange(request, MAX_UPSTREAM_BODY_BYTES)
            .await
            .map_err(|error| {
                tracing::debug!(upstream = %target.name, error = format!("{error:#}"), "upstream request failed");
            })?;
        Ok::<_, ()>(Record {
            status: parts.status,
            content_type: parts.headers.get(header::CONTENT_TYPE).cloned(),
            body,
        })
    };
    let outcome = match tokio::time::timeout(upstream.timeout, exchange).await {
        Ok(Ok(record)) => Outcome::Answered(Arc::new(record)),
        Ok(Err(())) => Outcome::Unreachable,
        Err(_elapsed) => Outcome::TimedOut,
    };
    let took = started.elapsed();
    let status = match &outcome {
        Outcome::Answered(record) => AttemptStatus::Code(record.status.as_u16()),
        Outcome::TimedOut => AttemptStatus::Timeout,
        _ => AttemptStatus::ConnectError,
    };
    target
        .metrics
        .upstream_attempt(&target.name, &target.attempts, status, took.as_secs_f64());
    log_attempt(target, status, took);
    outcome
}

fn log_attempt(target: &UpstreamTarget, status: AttemptStatus, took: Duration) {
    tracing::debug!(
        upstream = %target.name,
        status = ?status,
        took_ms = took.as_millis() as u64,
        "upstream attempt"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::test_headers as headers;

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_dropped() {
        let sender = headers(&[
            ("connection", "keep-alive, x-drop-me"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("proxy-authorization", "x"),
            ("x-drop-me", "1"),
            ("host", "gateway.example"),
            ("content-type", "application/json"),
            ("x-custom", "kept"),
        ]);
        let addr: SocketAddr = "10.1.2.3:5555".parse().unwrap();
        let delivery = Delivery::new(
            &sender,
            None,
            addr,
            "https",
            "42",
            "lead_signup",
            Bytes::new(),
        );
        let names: Vec<&str> = delivery.headers.keys().map(|n| n.as_str()).collect();
        for dropped in [
            "connection",
            "keep-alive",
            "te",
            "transfer-encoding",
            "upgrade",
            "proxy-authorization",
            "x-drop-me",
            "host",
        ] {
            assert!(!names.contains(&dropped), "{dropped} was forwarded");
        }
        assert_eq!(delivery.headers["x-custom"], "kept");
        assert_eq!(delivery.headers["content-type"], "application/json");
        assert_eq!(delivery.headers["x-forwarded-for"], "10.1.2.3");
        assert_eq!(delivery.headers["x-forwarded-proto"], "https");
        assert_eq!(delivery.headers["hookgate-event-id"], "42");
        assert_eq!(delivery.headers["hookgate-event-type"], "lead_signup");
    }

    #[test]
    fn client_ips_are_written_as_display_writes_them() {
        for ip in [
            "10.1.2.3",
            "0.0.0.0",
            "255.255.255.255",
            "127.0.0.1",
            "::1",
            "2001:db8::7",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_text(ip), ip.to_string());
        }
    }

    #[test]
    fn x_forwarded_for_is_appended_to() {
        let sender = headers(&[("x-forwarded-for", "203.0.113.9")]);
        let addr: SocketAddr = "[::1]:1".parse().unwrap();
        let delivery = Delivery::new(&sender, None, addr, "http", "1", "t", Bytes::new());
        assert_eq!(delivery.headers["x-forwarded-for"], "203.0.113.9, ::1");

        let mut sender = headers(&[("x-forwarded-for", "203.0.113.9, 198.51.100.1")]);
        sender.append("x-forwarded-for", HeaderValue::from_static("198.51.100.7"));
        let delivery = Delivery::new(&sender, None, addr, "http", "1", "t", Bytes::new());
        let values: Vec<_> = delivery.headers.get_all("x-forwarded-for").iter().collect();
        assert_eq!(values, ["203.0.113.9, 198.51.100.1, 198.51.100.7, ::1"]);
    }
}

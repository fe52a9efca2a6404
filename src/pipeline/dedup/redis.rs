//! The Redis side of dedup, for several replicas sharing records and claims.
//!
//! Per (source, upstream, event id) there are two keys:
//! - the *record*: a 2xx answer, kept for the dedup `ttl`;
//! - the *claim*: which replica is forwarding right now; it expires after the upstream's
//!   `timeout` plus [`CLAIM_MARGIN`], so a replica that crashed mid-forward blocks nobody for
//!   longer than that.
//!
//! "Is it recorded? If not, claim it" is one Lua script, and so is "record the answer and
//! release the claim": between two replicas there is no moment in which both see neither
//! record nor claim, so an event is forwarded at most once at a time across the fleet.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderValue, StatusCode};
use redis::aio::ConnectionManager;
use redis::{Script, Value};
use tokio::time::Instant;

use super::DedupKey;
use crate::pipeline::forward::Record;

/// Added to an upstream's `timeout` to get its claims' lifetime.
pub const CLAIM_MARGIN: Duration = Duration::from_secs(5);
/// One Redis round trip may take this long before Redis counts as unavailable.
pub const REDIS_OP_TIMEOUT: Duration = Duration::from_secs(1);
/// How often a replica waiting on another replica's forward looks for its record.
pub const POLL_INTERVAL: Duration = Duration::from_millis(25);

const CLAIM_SCRIPT: &str = r"
local record = redis.call('GET', KEYS[1])
if record then return {1, record} end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {2} end
return {3}
";

const COMPLETE_SCRIPT: &str = r"
if ARGV[2] ~= '' then redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) end
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
return 1
";

const PEEK_SCRIPT: &str = r"
local record = redis.call('GET', KEYS[1])
if record then return {1, record} end
if redis.call('EXISTS', KEYS[2]) == 1 then return {3} end
return {0}
";

/// Redis could not be used (down, slow, or an unexpected answer).
#[derive(Debug, thiserror::Error)]
#[error("redis dedup backend unavailable: {0}")]
pub struct Unavailable(String);

/// What [`RedisStore::claim`] found.
#[derive(Debug)]
pub enum SharedClaim {
    /// A 2xx answer is recorded (by any replica).
    Recorded(Record),
    /// This replica now owns the forward.
    Claimed,
    /// Another replica is forwarding.
    ClaimedElsewhere,
}

/// How another replica's forward ended, as seen by a replica waiting on it.
#[derive(Debug)]
pub enum Elsewhere {
    /// It recorded a 2xx answer.
    Recorded(Record),
    /// Its claim is gone without a record: it failed (or crashed and the claim expired).
    Failed,
    /// Still claimed at the deadline.
    StillClaimed,
}

/// Records and claims in Redis; shared (`Arc`) by every forward of the process.
pub struct RedisStore {
    connection: ConnectionManager,
    key_prefix: String,
    ttl: Duration,
    /// Identifies this replica's claims, so it only ever releases its own.
    owner: String,
    claim: Script,
    complete: Script,
    peek: Script,
    /// Requests currently waiting on another replica's forward (a gauge for operators).
    waiting: Arc<AtomicUsize>,
}

impl RedisStore {
    /// A store on `url`; connects lazily, so a Redis that is down at start only makes
    /// requests answer 503 until it is back.
    ///
    /// # Errors
    /// If `url` is not a valid Redis URL.
    pub fn new(url: &str, key_prefix: &str, ttl: Duration) -> anyhow::Result<Self> {
        let client = redis::Client::open(url).map_err(|error| {
            anyhow::anyhow!("dedup.redis_url is not usable: {:?}", error.kind())
        })?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(REDIS_OP_TIMEOUT))
            .set_response_timeout(Some(REDIS_OP_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let connection = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(Self {
            connection,
            key_prefix: key_prefix.to_owned(),
            ttl,
            owner: replica_id(),
            claim: Script::new(CLAIM_SCRIPT),
            complete: Script::new(COMPLETE_SCRIPT),
            peek: Script::new(PEEK_SCRIPT),
            waiting: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// Returns the record, or claims the forward for `claim_for`, or reports another owner.
    ///
    /// # Errors
    /// [`Unavailable`] when Redis does not answer in time.
    pub async fn claim(
        &self,
        key: &DedupKey,
        claim_for: Duration,
    ) -> Result<SharedClaim, Unavailable> {
        let (record_key, claim_key) = self.keys(key);
        let mut invocation = self.claim.key(record_key);
        invocation
            .key(claim_key)
            .arg(&self.owner)
            .arg(millis(claim_for));
        let reply: Value = self
            .run(invocation.invoke_async(&mut self.connection.clone()))
            .await?;
        match parse_reply(reply)? {
            (1, Some(record)) => Ok(SharedClaim::Recorded(record)),
            (2, None) => Ok(SharedClaim::Claimed),
            (3, None) => Ok(SharedClaim::ClaimedElsewhere),
            _ => Err(Unavailable("unexpected claim reply".into())),
        }
    }

    /// Records `record` (if any: only 2xx answers are recorded) and releases this replica's
    /// claim.
    ///
    /// # Errors
    /// [`Unavailable`] when Redis does not answer in time; the claim then expires by itself.
    pub async fn complete(
        &self,
        key: &DedupKey,
        record: Option<&Record>,
    ) -> Result<(), Unavailable> {
        let (record_key, claim_key) = self.keys(key);
        let encoded = record.map(encode).unwrap_or_default();
        let mut invocation = self.complete.key(record_key);
        invocation
            .key(claim_key)
            .arg(&self.owner)
            .arg(encoded.as_ref())
            .arg(millis(self.ttl));
        let _: Value = self
            .run(invocation.invoke_async(&mut self.connection.clone()))
            .await?;
        Ok(())
    }

    /// Waits until another replica's forward of `key` ends, or `deadline`.
    ///
    /// # Errors
    /// [`Unavailable`] when Redis does not answer in time.
    pub async fn wait_elsewhere(
        &self,
        key: &DedupKey,
        deadline: Instant,
    ) -> Result<Elsewhere, Unavailable> {
        let (record_key, claim_key) = self.keys(key);
        let _waiting = WaitingGuard::enter(&self.waiting);
        loop {
            let mut invocation = self.peek.key(&record_key);
            invocation.key(&claim_key);
            let reply: Value = self
                .run(invocation.invoke_async(&mut self.connection.clone()))
                .await?;
            match parse_reply(reply)? {
                (1, Some(record)) => return Ok(Elsewhere::Recorded(record)),
                (0, None) => return Ok(Elsewhere::Failed),
                (3, None) => {}
                _ => return Err(Unavailable("unexpected peek reply".into())),
            }
            if Instant::now() + POLL_INTERVAL >= deadline {
                return Ok(Elsewhere::StillClaimed);
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Whether Redis answers a PING within [`REDIS_OP_TIMEOUT`] (for `/readyz`).
    pub async fn ping(&self) -> bool {
        let mut connection = self.connection.clone();
        let command = redis::cmd("PING");
        let ping = command.query_async::<String>(&mut connection);
        matches!(self.run(ping).await, Ok(reply) if reply == "PONG")
    }

    /// How many keys this replica is waiting on another replica for, right now.
    pub fn waiting_elsewhere(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// The record and claim keys of `key`. Lengths prefix the names so that no choice of
    /// source or upstream name can make two different keys collide.
    pub fn keys(&self, key: &DedupKey) -> (String, String) {
        redis_keys(&self.key_prefix, &key.source, &key.upstream, &key.event_id)
    }

    async fn run<T>(
        &self,
        operation: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, Unavailable> {
        match tokio::time::timeout(REDIS_OP_TIMEOUT, operation).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(Unavailable(error.to_string())),
            Err(_elapsed) => Err(Unavailable("timed out".into())),
        }
    }
}

/// Counts a wait for as long as it lasts, however it ends.
struct WaitingGuard<'a>(&'a AtomicUsize);

impl<'a> WaitingGuard<'a> {
    fn enter(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Self(counter)
    }
}

impl Drop for WaitingGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The Redis record and claim keys for one (source, upstream, event id); public so that
/// operators' tooling and tests can find them.
pub fn redis_keys(prefix: &str, source: &str, upstream: &str, event_id: &str) -> (String, String) {
    let tail = format!(
        "{}:{source}:{}:{upstream}:{event_id}",
        source.len(),
        upstream.len()
    );
    (
        format!("{prefix}:rec:{tail}"),
        format!("{prefix}:claim:{tail}"),
    )
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

fn replica_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos());
    format!("{}-{nanos:x}", std::process::id())
}

/// Scripts answer `{code}` or `{code, record}`.
fn parse_reply(reply: Value) -> Result<(i64, Option<Record>), Unavailable> {
    let malformed = || Unavailable("malformed script reply".into());
    let Value::Array(items) = reply else {
        return Err(malformed());
    };
    let code = match items.first() {
        Some(Value::Int(code)) => *code,
        _ => return Err(malformed()),
    };
    let record = match items.get(1) {
        None => None,
        Some(Value::BulkString(bytes)) => Some(decode(bytes).ok_or_else(malformed)?),
        Some(_) => return Err(malformed()),
    };
    Ok((code, record))
}

/// `status (u16) | content-type length (u16) | content-type | body`.
fn encode(record: &Record) -> Bytes {
    let content_type = record
        .content_type
        .as_ref()
        .map_or(&[][..], HeaderValue::as_bytes);
    let mut out = BytesMut::with_capacity(4 + content_type.len() + record.body.len());
    out.put_u16(record.status.as_u16());
    // A content-type over 64 KiB is absurd; it is dropped rather than corrupting the record.
    match u16::try_from(content_type.len()) {
        Ok(len) => {
            out.put_u16(len);
            out.put_slice(content_type);
        }
        Err(_) => out.put_u16(0),
    }
    out.put_slice(&record.body);
    out.freeze()
}

fn decode(mut bytes: &[u8]) -> Option<Record> {
    if bytes.len() < 4 {
        return None;
    }
    let status = StatusCode::from_u16(bytes.get_u16()).ok()?;
    let content_type_len = usize::from(bytes.get_u16());
    let content_type = bytes.get(..content_type_len)?;
    let content_type = match content_type_len {
        0 => None,
        _ => Some(HeaderValue::from_bytes(content_type).ok()?),
    };
    Some(Record {
        status,
        content_type,
        body: Bytes::copy_from_slice(&bytes[content_type_len..]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_through_their_encoding() {
        let record = Record {
            status: StatusCode::ACCEPTED,
            content_type: Some(HeaderValue::from_static("application/json")),
            body: Bytes::from_static(b"{\"pending\":true}"),
        };
        let decoded = decode(&encode(&record)).unwrap();
        assert_eq!(decoded.status, 202);
        assert_eq!(decoded.content_type.unwrap(), "application/json");
        assert_eq!(decoded.body, record.body);
        let bare = Record {
            status: StatusCode::OK,
            content_type: None,
            body: Bytes::new(),
        };
        let decoded = decode(&encode(&bare)).unwrap();
        assert_eq!(
            (
                decoded.status.as_u16(),
                decoded.content_type,
                decoded.body.len()
            ),
            (200, None, 0)
        );
        assert!(decode(b"\x00").is_none());
    }

    #[test]
    fn keys_cannot_collide_across_name_boundaries() {
        let (a, _) = redis_keys("hg", "a:b", "c", "1");
        let (b, _) = redis_keys("hg", "a", "b:c", "1");
        assert_ne!(a, b);
    }
}

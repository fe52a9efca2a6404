//! Configuration: `raw` mirrors the TOML file 1:1; this module turns it into a typed,
//! validated [`Config`] that the rest of the crate can use without further checks.
//!
//! Loading reports *all* problems at once, each naming the file, the key (and the line
//! where the TOML parser knows it) and the reason.

mod cidr;
mod duration;
mod load;
/// The config test helpers (`load`, `edit`, `MINIMAL`), for other modules' tests.
#[cfg(test)]
pub(crate) use load::tests as test_support;
mod raw;
mod route_table;
mod validate;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::{HeaderName, HeaderValue, StatusCode, Uri};

pub use cidr::{Cidr, CidrError};
pub use duration::{format_duration, parse_duration};
pub use load::{ConfigError, EnvLookup, Problem};

/// Defaults, in one place, with their units in the name.
pub mod defaults {
    use std::time::Duration;

    /// Default `[server] max_body_bytes`: 1 MiB.
    pub const MAX_BODY_BYTES: usize = 1024 * 1024;

    /// `[server] workers = 0` (the default): one per core, or 1 if the count is unknown.
    pub fn workers() -> usize {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    }
    /// Default `[server] unrouted_status`.
    pub const UNROUTED_STATUS: u16 = 202;
    /// Default `[server] respond_within`: below FirstPromoter's 15 s wait.
    pub const RESPOND_WITHIN: Duration = Duration::from_secs(14);
    /// Default `[server] shutdown_timeout`.
    pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
    /// Default `[server] header_timeout`.
    pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
    /// Default `[server] body_timeout`.
    pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);
    /// Default `[server] idle_timeout`.
    pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
    /// Default `[server] max_connections`.
    pub const MAX_CONNECTIONS: usize = 10_000;
    /// Default source `event_id` pointer (FirstPromoter v1).
    pub const EVENT_ID_POINTER: &str = "/event/id";
    /// Default source `event_type` pointer (FirstPromoter v1).
    pub const EVENT_TYPE_POINTER: &str = "/event/type";
    /// Default `[dedup] ttl`: longer than FirstPromoter's retry day.
    pub const DEDUP_TTL: Duration = Duration::from_secs(48 * 3600);
    /// Default `[dedup] max_entries`.
    pub const DEDUP_MAX_ENTRIES: u64 = 1_000_000;
    /// Default `[dedup] key_prefix` for the Redis backend.
    pub const REDIS_KEY_PREFIX: &str = "hookgate";
    /// Default upstream `timeout`.
    pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(10);
    /// Default upstream `max_in_flight`.
    pub const UPSTREAM_MAX_IN_FLIGHT: usize = 256;
}

/// Upper bounds enforced when loading: beyond them a value is almost certainly a typo (and
/// huge durations would overflow `Instant` arithmetic at run time).
pub mod limits {
    use std::time::Duration;

    /// Largest `[server] max_body_bytes`: 64 MiB.
    pub const MAX_BODY_BYTES: u64 = 64 * 1024 * 1024;
    /// Largest per-request duration: `respond_within`, `header_timeout`, `body_timeout`,
    /// `shutdown_timeout` and upstream `timeout`.
    pub const MAX_REQUEST_DURATION: Duration = Duration::from_secs(3600);
    /// Largest `[server] idle_timeout`.
    pub const MAX_IDLE_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
    /// Largest `[server] workers`.
    pub const MAX_WORKERS: u64 = 256;
    /// Largest `[dedup] ttl`.
    pub const MAX_DEDUP_TTL: Duration = Duration::from_secs(365 * 24 * 3600);
}

/// A loaded, validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was loaded from (for messages; relative paths resolve against its directory).
    pub path: PathBuf,
    /// `[server]`.
    pub server: ServerConfig,
    /// `[admin]`; `None` means no admin listener.
    pub admin: Option<AdminConfig>,
    /// `[[sources]]`, in file order; at least one; paths are unique.
    pub sources: Vec<Source>,
    /// `[dedup]`.
    pub dedup: DedupConfig,
    /// `[rate_limit]`.
    pub rate_limit: RateLimitConfig,
    /// `[upstreams.NAME]`, sorted by name; routes refer to them by index.
    pub upstreams: Vec<Upstream>,
    /// `[[routes]]`, in file order (first match wins).
    pub routes: Vec<Route>,
}

/// `[server]`.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Gateway listen address.
    pub listen: SocketAddr,
    /// Larger request bodies are answered 413.
    pub max_body_bytes: usize,
    /// Answer for events that no route matches (never 200).
    pub unrouted_status: StatusCode,
    /// The sender is answered by then (504 if the upstream is still busy).
    pub respond_within: Duration,
    /// How long in-flight work may take to finish after SIGTERM.
    pub shutdown_timeout: Duration,
    /// The whole request head must arrive within this.
    pub header_timeout: Duration,
    /// The whole body must arrive within this (else 408).
    pub body_timeout: Duration,
    /// Idle keep-alive connections are closed after this.
    pub idle_timeout: Duration,
    /// At most this many client connections are open at once.
    pub max_connections: usize,
    /// Threads serving connections, each with its own listener socket (`SO_REUSEPORT`),
    /// event loop and upstream connection pool; `workers = 0` (the default) is one per core.
    pub workers: usize,
    /// `[server.tls]`; `None` serves plain HTTP.
    pub tls: Option<TlsConfig>,
}

/// `[server.tls]`.
#[derive(Debug, Clone)]
pub enum TlsConfig {
    /// PEM files, resolved against the config file's directory.
    Files {
        /// Certificate chain.
        cert: PathBuf,
        /// Private key.
        key: PathBuf,
    },
    /// Generate an ephemeral self-signed certificate at start (development only).
    SelfSigned,
}

/// `[admin]`.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// Admin listen address (`/healthz`, `/readyz`, `/metrics`).
    pub listen: SocketAddr,
}

/// One `[[sources]]` entry: where a sender posts and how its events are read.
#[derive(Debug, Clone)]
pub struct Source {
    /// Unique name; part of every dedup key.
    pub name: String,
    /// Request path, starting with `/`; unique across sources.
    pub path: String,
    /// JSON pointer to the event id.
    pub event_id: String,
    /// JSON pointer to the event type.
    pub event_type: String,
    /// Inbound verification; `None` accepts every request.
    pub verify: Option<Verify>,
}

/// `[sources.verify]`.
#[derive(Debug, Clone)]
pub enum Verify {
    /// Shared token in `?token=` or the header `header`.
    Token {
        /// The token.
        secret: Secret,
        /// Header that may carry it (default `x-hookgate-token`).
        header: HeaderName,
    },
    /// HTTP Basic authentication.
    Basic {
        /// Expected user name.
        user: Secret,
        /// Expected password.
        password: Secret,
    },
    /// Hex HMAC-SHA256 of the raw body in `header` (optional `sha256=` prefix).
    HmacSha256 {
        /// Key.
        secret: Secret,
        /// Header carrying the digest (default `x-signature`).
        header: HeaderName,
    },
    /// Standard Webhooks `webhook-id` / `-timestamp` / `-signature`.
    StandardWebhooks {
        /// `whsec_`-prefixed (or raw base64) secret.
        secret: Secret,
    },
}

/// A secret value whose `Debug` never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl Secret {
    /// The secret's text.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Where dedup records live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DedupBackend {
    /// In-process store (sharded, oldest written evicted first).
    Memory,
    /// Redis, shared by replicas.
    Redis {
        /// Connection URL.
        url: Secret,
        /// Prefix of every key hookgate writes (`key_prefix`, default `hookgate`), so that
        /// several deployments can share one Redis.
        key_prefix: String,
    },
}

/// `[dedup]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DedupConfig {
    /// How long a record is kept.
    pub ttl: Duration,
    /// At most this many records (memory backend).
    pub max_entries: u64,
    /// Storage backend.
    pub backend: DedupBackend,
}

/// A token-bucket quota: `per_second` sustained, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Sustained rate.
    pub per_second: std::num::NonZeroU32,
    /// Bucket size.
    pub burst: std::num::NonZeroU32,
}

/// `[rate_limit]` (inbound). `None` fields are unlimited.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RateLimitConfig {
    /// Per client IP.
    pub per_client: Option<Quota>,
    /// Over all clients.
    pub global: Option<Quota>,
    /// `trusted_proxies`: peers whose `X-Forwarded-For` names the client (for `per_client`).
    pub trusted_proxies: Vec<Cidr>,
}

/// `[upstreams.NAME]`.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// The table key.
    pub name: String,
    /// Absolute `http` or `https` URI.
    pub url: Uri,
    /// Give up on the upstream after this.
    pub timeout: Duration,
    /// Protects the legacy app; over it: 429.
    pub rate_limit: Option<Quota>,
    /// Over it: 503.
    pub max_in_flight: usize,
    /// Standard Webhooks signing secrets (several during rotation); empty: no signing.
    pub sign: Vec<Secret>,
    /// Extra headers sent upstream (values may be secrets, so never logged).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// JSON pointers removed from the body before forwarding.
    pub redact: Vec<String>,
    /// `ca`: PEM file of extra CAs trusted for this upstream, besides the webpki roots
    /// (resolved against the config file's directory; `https` URLs only).
    pub ca: Option<PathBuf>,
    /// `client_cert` + `client_key`: the certificate presented to the upstream (mTLS).
    pub client_cert: Option<ClientCert>,
}

/// An upstream's `client_cert` and `client_key`, checked at load to parse and match.
#[derive(Debug, Clone)]
pub struct ClientCert {
    /// PEM chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key of the leaf.
    pub key: PathBuf,
}

/// One pattern of a route's `event_type`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TypePattern {
    /// Matches every type (`"*"`).
    Any,
    /// Matches exactly this type.
    Exact(String),
    /// A glob whose only wildcard is `*`, split at the stars (e.g. `lead_*` -> ["lead_", ""]).
    Glob(Vec<String>),
}

/// One `[[routes]]` entry.
#[derive(Debug, Clone)]
pub struct Route {
    /// Position in the file (0-based), for logs and `check`.
    pub index: usize,
    /// Any of these patterns matches.
    pub event_types: Vec<TypePattern>,
    /// Only events from this source (by name), if set.
    pub source: Option<String>,
    /// All of these (JSON pointer, expected value) must hold.
    pub matches: Vec<(String, serde_json::Value)>,
    /// Indexes into [`Config::upstreams`], in the order given (fan-out order).
    pub upstreams: Vec<usize>,
}

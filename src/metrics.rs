//! Metrics: what operators scrape from the admin listener's `/metrics`.
//!
//! One [`Metrics`] lives as long as the process: it survives config reloads, so counters
//! never reset under a running Prometheus. Label values are low-cardinality by construction:
//! source and upstream names from the config, outcomes and statuses from closed sets, never
//! an event id or a client address.
//!
//! The per-request counter is resolved once per (source, outcome) when a gateway is built, so
//! counting a request is one atomic add with no label hashing or allocation.

use std::sync::{Arc, OnceLock};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::pipeline::rate_limit::Scope;

/// Upper bounds (seconds) of the upstream latency histogram: up to FirstPromoter's 15 s wait.
pub const UPSTREAM_DURATION_BUCKETS_SECS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0,
];

/// The `outcome` label of `hookgate_requests_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RequestOutcome {
    /// An upstream answer was relayed (any status).
    Forwarded,
    /// Answered from another request's forward (replay or in-flight wait).
    Duplicate,
    /// No route matched.
    Unrouted,
    /// Any 429, and the `max_in_flight` 503.
    RateLimited,
    /// Inbound verification failed.
    Unauthorized,
    /// 400/404/405/408/413.
    BadRequest,
    /// A 502/504 made by hookgate (`respond_within` included).
    UpstreamError,
    /// 503 because the dedup backend is down.
    Unavailable,
}

impl RequestOutcome {
    /// Every outcome, in a fixed order (the index of each is `as usize`).
    pub const ALL: [Self; 8] = [
        Self::Forwarded,
        Self::Duplicate,
        Self::Unrouted,
        Self::RateLimited,
        Self::Unauthorized,
        Self::BadRequest,
        Self::UpstreamError,
        Self::Unavailable,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Forwarded => "forwarded",
            Self::Duplicate => "duplicate",
            Self::Unrouted => "unrouted",
            Self::RateLimited => "rate_limited",
            Self::Unauthorized => "unauthorized",
            Self::BadRequest => "bad_request",
            Self::UpstreamError => "upstream_error",
            Self::Unavailable => "unavailable",
        }
    }
}

impl EncodeLabelValue for RequestOutcome {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

impl EncodeLabelValue for Scope {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    source: String,
    outcome: RequestOutcome,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct UpstreamStatusLabels {
    upstream: UpstreamName,
    status: AttemptStatus,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct UpstreamLabels {
    upstream: UpstreamName,
}

/// An upstream's name as a label: shared, so a lookup per forward allocates nothing.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct UpstreamName(Arc<str>);

impl EncodeLabelValue for UpstreamName {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&&*self.0, encoder)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ScopeLabels {
    scope: Scope,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

/// One upstream's series that every attempt touches, resolved at its first attempt (so that
/// they appear in `/metrics` only once used, like the others).
#[derive(Debug, Default)]
pub struct UpstreamAttempts {
    duration: OnceLock<Histogram>,
    ok: OnceLock<Counter>,
}

/// How an upstream attempt ended, for `hookgate_upstream_requests_total{status}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AttemptStatus {
    /// The upstream answered with this status.
    Code(u16),
    /// No answer within the upstream's `timeout`.
    Timeout,
    /// Any other failure without an HTTP answer.
    ConnectError,
}

impl EncodeLabelValue for AttemptStatus {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        match self {
            Self::Code(code) => std::fmt::Write::write_fmt(encoder, format_args!("{code}")),
            Self::Timeout => EncodeLabelValue::encode(&"timeout", encoder),
            Self::ConnectError => EncodeLabelValue::encode(&"connect_error", encoder),
        }
    }
}

/// The process's metrics.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    upstream_requests: Family<UpstreamStatusLabels, Counter>,
    upstream_duration: Family<UpstreamLabels, Histogram, fn() -> Histogram>,
    in_flight: Family<UpstreamLabels, Gauge>,
    rate_limited: Family<ScopeLabels, Counter>,
    dedup_hits: Counter,
    dedup_records: Gauge,
    config_reloads: Family<ResultLabels, Counter>,
    tls_handshake_failures: Counter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

/// The request counters of one source, one per [`RequestOutcome`].
#[derive(Clone, Debug)]
pub struct SourceCounters([Counter; 8]);

impl SourceCounters {
    /// Counts one request with `outcome`.
    pub fn count(&self, outcome: RequestOutcome) {
        self.0[outcome as usize].inc();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::default();
        let upstream_requests = Family::default();
        let upstream_duration: Family<UpstreamLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(|| Histogram::new(UPSTREAM_DURATION_BUCKETS_SECS));
        let in_flight = Family::default();
        let rate_limited = Family::default();
        let dedup_hits = Counter::default();
        let dedup_records = Gauge::default();
        let config_reloads = Family::default();
        let tls_handshake_failures = Counter::default();
        // Counter names get their `_total` suffix from the encoder.
        registry.register(
            "hookgate_requests",
            "Requests by source and outcome",
            requests.clone(),
        );
        registry.register(
            "hookgate_upstream_requests",
            "Upstream attempts by upstream and status (code, timeout or connect_error)",
            upstream_requests.clone(),
        );
        registry.register(
            "hookgate_upstream_duration_seconds",
            "Duration of every upstream attempt, failures included",
            upstream_duration.clone(),
        );
        registry.register(
            "hookgate_in_flight",
            "Upstream requests in flight",
            in_flight.clone(),
        );
        registry.register(
            "hookgate_rate_limited",
            "Requests refused by a rate limit or max_in_flight, by scope",
            rate_limited.clone(),
        );
        registry.register(
            "hookgate_dedup_hits",
            "Answers shared from another request's forward (replays and in-flight waits)",
            dedup_hits.clone(),
        );
        registry.register(
            "hookgate_dedup_records",
            "Dedup records held in this process",
            dedup_records.clone(),
        );
        registry.register(
            "hookgate_config_reloads",
            "Config reloads by result",
            config_reloads.clone(),
        );
        registry.register(
            "hookgate_tls_handshake_failures",
            "TLS handshakes that failed or timed out",
            tls_handshake_failures.clone(),
        );
        Self {
            registry,
            requests,
            upstream_requests,
            upstream_duration,
            in_flight,
            rate_limited,
            dedup_hits,
            dedup_records,
            config_reloads,
            tls_handshake_failures,
        }
    }

    /// The counters of `source` (resolved once; counting is then allocation-free).
    pub fn source_counters(&self, source: &str) -> SourceCounters {
        SourceCounters(RequestOutcome::ALL.map(|outcome| {
            self.requests.get_or_create_owned(&RequestLabels {
                source: source.to_owned(),
                outcome,
            })
        }))
    }

    /// Counts one attempt of `upstream` and observes its duration. `resolved` keeps the
    /// series every attempt touches (the duration, and the count of 200s) from the first
    /// attempt on, so that later ones take no lookup; other statuses are looked up.
    pub fn upstream_attempt(
        &self,
        upstream: &Arc<str>,
        resolved: &UpstreamAttempts,
        status: AttemptStatus,
        seconds: f64,
    ) {
        let name = || UpstreamName(Arc::clone(upstream));
        resolved
            .duration
            .get_or_init(|| {
                self.upstream_duration
                    .get_or_create_owned(&UpstreamLabels { upstream: name() })
            })
            .observe(seconds);
        let labels = || UpstreamStatusLabels {
            upstream: name(),
            status,
        };
        match status {
            AttemptStatus::Code(200) => resolved
                .ok
                .get_or_init(|| self.upstream_requests.get_or_create_owned(&labels()))
                .inc(),
            _ => self.upstream_requests.get_or_create(&labels()).inc(),
        };
    }

    /// Counts a request refused by a limit of `scope`.
    pub fn rate_limited(&self, scope: Scope) {
        self.rate_limited
            .get_or_create(&ScopeLabels { scope })
            .inc();
    }

    /// Counts an answer shared from another request's forward.
    pub fn dedup_hit(&self) {
        self.dedup_hits.inc();
    }

    /// Counts a config reload.
    pub fn config_reload(&self, succeeded: bool) {
        let result = if succeeded { "success" } else { "failure" };
        self.config_reloads
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// Counts a failed TLS handshake.
    pub fn tls_handshake_failure(&self) {
        self.tls_handshake_failures.inc();
    }

    /// Sets the scrape-time gauges: records held, and requests in flight per upstream.
    pub fn set_gauges<'a>(
        &self,
        records: u64,
        in_flight: impl IntoIterator<Item = (&'a str, usize)>,
    ) {
        self.dedup_records
            .set(i64::try_from(records).unwrap_or(i64::MAX));
        for (upstream, count) in in_flight {
            self.in_flight
                .get_or_create(&UpstreamLabels {
                    upstream: UpstreamName(Arc::from(upstream)),
                })
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
    }

    /// The exposition, in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut text = String::with_capacity(4096);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// The content type of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_the_contract_names_and_labels() {
        let metrics = Metrics::new();
        let fp = metrics.source_counters("firstpromoter");
        fp.count(RequestOutcome::Forwarded);
        fp.count(RequestOutcome::Forwarded);
        fp.count(RequestOutcome::Duplicate);
        metrics.dedup_hit();
        let billing: Arc<str> = Arc::from("billing");
        let resolved = UpstreamAttempts::default();
        metrics.upstream_attempt(&billing, &resolved, AttemptStatus::Code(200), 0.012);
        metrics.upstream_attempt(&billing, &resolved, AttemptStatus::Code(200), 0.012);
        metrics.upstream_attempt(&billing, &resolved, AttemptStatus::Timeout, 10.0);
        // A reloaded upstream resolves its series again: the same ones.
        let reloaded = UpstreamAttempts::default();
        metrics.upstream_attempt(&billing, &reloaded, AttemptStatus::Code(200), 0.012);
        metrics.rate_limited(Scope::Client);
        metrics.config_reload(false);
        metrics.set_gauges(42, [("billing", 3)]);
        let text = metrics.encode();
        for line in [
            r#"hookgate_requests_total{source="firstpromoter",outcome="forwarded"} 2"#,
            r#"hookgate_requests_total{source="firstpromoter",outcome="duplicate"} 1"#,
            r#"hookgate_requests_total{source="firstpromoter",outcome="unavailable"} 0"#,
            "hookgate_dedup_hits_total 1",
            r#"hookgate_upstream_requests_total{upstream="billing",status="200"} 3"#,
            r#"hookgate_upstream_requests_total{upstream="billing",status="timeout"} 1"#,
            r#"hookgate_upstream_duration_seconds_count{upstream="billing"} 4"#,
            r#"hookgate_upstream_duration_seconds_bucket{le="0.025",upstream="billing"} 3"#,
            r#"hookgate_rate_limited_total{scope="client"} 1"#,
            r#"hookgate_config_reloads_total{result="failure"} 1"#,
            "hookgate_dedup_records 42",
            r#"hookgate_in_flight{upstream="billing"} 3"#,
            "hookgate_tls_handshake_failures_total 0",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }
}

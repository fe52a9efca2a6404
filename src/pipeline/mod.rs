//! The request pipeline. [`Gateway::handle`] is the only place the stage order is written:
//! receive → rate limit → authenticate → parse → route → dedup → settle (redact, sign, forward) → relay.

pub mod authenticate;
pub mod dedup;
pub mod forward;
pub mod parse;
pub mod payload;
pub mod rate_limit;
pub mod receive;
pub mod redact;
pub mod relay;
pub mod route;
pub mod settle;
pub mod sign;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CONNECTION, CONTENT_TYPE};
use http::{Request, Response, StatusCode, Version};
use http_body_util::Full;
use hyper::body::Body;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use crate::config::{Config, DedupConfig, RateLimitConfig, Source};
use crate::error::GatewayError;
use crate::metrics::{Metrics, RequestOutcome, SourceCounters};
use crate::upstream::Clients;
use authenticate::Authenticator;
use dedup::{Claim, Dedup, Lease, OutcomeRx};
use forward::{Delivery, Outcome, UpstreamTarget};
use payload::Pointers;
use relay::Decision;
use route::Router;

/// Everything needed to serve requests under one [`Config`]. A reload builds a new one with
/// [`Gateway::reload`], which carries over what must outlive a config: dedup records and
/// claims, forwards in flight, rate-limit state, metrics.
pub struct Gateway {
    sources_by_path: HashMap<String, SourceEntry>,
    router: Router,
    /// What parsing notes for the later stages (event id and type, route `match` fields).
    pointers: Pointers,
    upstreams: Vec<Arc<UpstreamTarget>>,
    /// The upstream clients, kept so that a reload can keep their warm pools.
    clients: Clients,
    dedup: Arc<Dedup>,
    dedup_config: DedupConfig,
    inbound: Arc<rate_limit::InboundLimits>,
    rate_limit_config: RateLimitConfig,
    forwards: TaskTracker,
    metrics: Arc<Metrics>,
    /// Counts requests whose path names no source.
    unknown_source: SourceCounters,
    max_body_bytes: usize,
    body_timeout: Duration,
    respond_within: Duration,
    unrouted_status: StatusCode,
    proto: &'static str,
}

struct SourceEntry {
    name: Arc<str>,
    config: Source,
    authenticator: Option<Authenticator>,
    counters: SourceCounters,
}

/// A route's upstream names joined by commas, for the log line (formatted, never collected).
struct UpstreamNames<'a, F> {
    indices: &'a [usize],
    name: F,
}

impl<'a, F: Fn(usize) -> &'a str> std::fmt::Display for UpstreamNames<'a, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (position, &index) in self.indices.iter().enumerate() {
            if position > 0 {
                f.write_str(",")?;
            }
            f.write_str((self.name)(index))?;
        }
        Ok(())
    }
}

/// How one upstream's outcome reaches this request.
enum Pending {
    /// Already known (a replayed record).
    Ready(Arc<Outcome>),
    /// Arrives through this receiver, from this request's forward or another's.
    Waiting(OutcomeRx),
}

impl Gateway {
    /// Builds the gateway state for `config`, with metrics of its own.
    ///
    /// # Errors
    /// If the upstream HTTP clients or the Redis client cannot be built, or (with
    /// `[rate_limit] per_client`) outside a tokio runtime.
    pub fn from_config(config: &Config) -> anyhow::Result<Self> {
        Self::with_metrics(config, Arc::new(Metrics::new()))
    }

    /// Like [`Gateway::from_config`], counting into `metrics`.
    ///
    /// # Errors
    /// As [`Gateway::from_config`].
    pub fn with_metrics(config: &Config, metrics: Arc<Metrics>) -> anyhow::Result<Self> {
        Self::build(config, metrics, None)
    }

    /// The gateway for a reloaded `config`, keeping this one's dedup store, forwards in
    /// flight, metrics, and rate-limit state wherever the limits are unchanged. Requests
    /// already running finish on this gateway; new ones should get the returned one.
    ///
    /// # Errors
    /// As [`Gateway::from_config`]; this gateway is unaffected.
    pub fn reload(&self, config: &Config) -> anyhow::Result<Self> {
        Self::build(config, Arc::clone(&self.metrics), Some(self))
    }

    fn build(
        config: &Config,
        metrics: Arc<Metrics>,
        previous: Option<&Gateway>,
    ) -> anyhow::Result<Self> {
        let mut sources_by_path = HashMap::with_capacity(config.sources.len());
        for source in &config.sources {
            let authenticator = match &source.verify {
                None => None,
                Some(verify) => Some(Authenticator::new(verify).ok_or_else(|| {
                    anyhow::anyhow!("sources {:?}: cannot prepare verification", source.name)
                })?),
            };
            let entry = SourceEntry {
                name: Arc::from(source.name.as_str()),
                config: source.clone(),
                authenticator,
                counters: metrics.source_counters(&source.name),
            };
            sources_by_path.insert(source.path.clone(), entry);
        }
        let clients = Clients::from_config(
            &config.upstreams,
            config.server.workers,
            previous.map(|old| &old.clients),
        )?;
        let upstreams = config
            .upstreams
            .iter()
            .map(|upstream| {
                let old = previous.and_then(|gateway| gateway.upstream(&upstream.name));
                let client = clients.for_upstream(upstream);
                UpstreamTarget::carry_over(upstream.clone(), client, Arc::clone(&metrics), old)
                    .map(Arc::new)
            })
            .collect::<anyhow::Result<_>>()?;
        let dedup = match previous {
            Some(old) => {
                if old.dedup_config != config.dedup {
                    tracing::warn!(
                        "[dedup] changed: restart hookgate to apply it; the running store is kept"
                    );
                }
                Arc::clone(&old.dedup)
            }
            None => Arc::new(Dedup::from_config(&config.dedup)?),
        };
        let inbound = match previous {
            Some(old) if old.rate_limit_config == config.rate_limit => Arc::clone(&old.inbound),
            _ => Arc::new(rate_limit::InboundLimits::from_config(&config.rate_limit)?),
        };
        Ok(Self {
            sources_by_path,
            router: Router::new(config.routes.clone()),
            pointers: Pointers::of_config(config),
            upstreams,
            clients,
            dedup,
            // What runs keeps running: a reloaded gateway keeps the dedup settings it runs on.
            dedup_config: previous
                .map_or_else(|| config.dedup.clone(), |old| old.dedup_config.clone()),
            inbound,
            rate_limit_config: config.rate_limit.clone(),
            forwards: previous.map_or_else(TaskTracker::new, |old| old.forwards.clone()),
            unknown_source: metrics.source_counters(UNKNOWN_SOURCE),
            metrics,
            max_body_bytes: config.server.max_body_bytes,
            body_timeout: config.server.body_timeout,
            respond_within: config.server.respond_within,
            unrouted_status: config.server.unrouted_status,
            proto: if config.server.tls.is_some() {
                "https"
            } else {
                "http"
            },
        })
    }

    fn upstream(&self, name: &str) -> Option<&UpstreamTarget> {
        self.upstreams
            .iter()
            .find(|target| &*target.name == name)
            .map(|target| &**target)
    }

    /// The metrics this gateway counts into.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Requests in flight per upstream (for the `hookgate_in_flight` gauge).
    pub fn in_flight(&self) -> impl Iterator<Item = (&str, usize)> + '_ {
        self.upstreams.iter().map(|target| {
            let free = target.in_flight.available_permits();
            (
                &*target.name,
                target.config.max_in_flight.saturating_sub(free),
            )
        })
    }

    /// Whether the gateway can serve: the Redis backend, when configured, answers.
    pub async fn ready(&self) -> bool {
        match self.dedup.shared() {
            Some(store) => store.ping().await,
            None => true,
        }
    }

    /// The dedup store (records, claims, and the Redis side if configured).
    pub fn dedup(&self) -> &Dedup {
        &self.dedup
    }

    /// Forwards still running (some outlive their sender's request); shutdown waits on them.
    pub fn forwards(&self) -> &TaskTracker {
        &self.forwards
    }

    /// Answers one request. Never fails: every error becomes its contract status.
    pub async fn handle<B>(&self, request: Request<B>, client: SocketAddr) -> Response<Full<Bytes>>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let http1 = request.version() <= Version::HTTP_11;
        let Some(source) = self.sources_by_path.get(request.uri().path()) else {
            self.unknown_source.count(RequestOutcome::BadRequest);
            return refuse(&GatewayError::UnknownPath, http1);
        };
        match self.handle_event(source, request, client).await {
            Ok((response, outcome)) => {
                source.counters.count(outcome);
                match outcome {
                    RequestOutcome::Duplicate => self.metrics.dedup_hit(),
                    RequestOutcome::RateLimited => {
                        self.metrics.rate_limited(rate_limit::Scope::Upstream)
                    }
                    _ => {}
                }
                response
            }
            Err(error) => {
                source.counters.count(error.outcome());
                if let GatewayError::RateLimited { scope, .. } = &error {
                    self.metrics.rate_limited(*scope);
                }
                tracing::info!(
                    source = &*source.name,
                    status = error.status().as_u16(),
                    error = %error,
                    "request refused"
                );
                refuse(&error, http1)
            }
        }
    }

    async fn handle_event<B>(
        &self,
        source: &SourceEntry,
        request: Request<B>,
        client: SocketAddr,
    ) -> Result<(Response<Full<Bytes>>, RequestOutcome), GatewayError>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let started = Instant::now();
        receive::check_method(request.method())?;
        receive::check_transfer_coding(request.headers())?;
        // Size (413) before the rate limits (429), and both before a byte of body is read:
        // a refused request costs no read, and its connection is closed (`closes_connection`).
        receive::check_announced_size(request.body(), self.max_body_bytes)?;
        self.inbound
            .check(self.inbound.client_ip(client.ip(), request.headers()))?;
        let (parts, body) = request.into_parts();
        let body = receive::read_body(body, self.max_body_bytes, self.body_timeout).await?;
        if let Some(authenticator) = &source.authenticator {
            authenticator.authenticate(&parts.headers, parts.uri.query(), &body)?;
        }
        let event = parse::parse(&body, &source.config, &self.pointers)?;

        let Some(route) = self
            .router
            .find(&source.name, &event.event_type, &event.payload)
        else {
            tracing::info!(
                source = &*source.name,
                event_id = event.id.as_str(),
                event_type = event.event_type.as_str(),
                status = self.unrouted_status.as_u16(),
                "event unrouted"
            );
            return Ok((self.unrouted(&event.event_type), RequestOutcome::Unrouted));
        };

        // Built on the first claim this request leads: a replay forwards nothing.
        let mut delivery: Option<Arc<Delivery>> = None;
        let mut pending = Vec::with_capacity(route.upstreams.len());
        let mut led = Vec::with_capacity(route.upstreams.len());
        for &index in &route.upstreams {
            let target = &self.upstreams[index];
            let claim = self.dedup.claim(&source.name, &target.name, &event.id);
            led.push(matches!(claim, Claim::Leader(_)));
            pending.push(match claim {
                Claim::Recorded(record) => Pending::Ready(Arc::new(Outcome::Replayed(record))),
                Claim::InFlight(outcome_rx) => Pending::Waiting(outcome_rx),
                Claim::Leader(lease) => {
                    let delivery = delivery.get_or_insert_with(|| {
                        Arc::new(Delivery::new(
                            &parts.headers,
                            source
                                .authenticator
                                .as_ref()
                                .and_then(Authenticator::credential_header),
                            client,
                            self.proto,
                            &event.id,
                            &event.event_type,
                            // A reference-count bump: the bytes are shared, never copied.
                            body.clone(),
                        ))
                    });
                    let delivery = match target.config.redact.is_empty() {
                        true => Arc::clone(delivery),
                        false => Arc::new(
                            delivery
                                .with_body(redact::redact(&delivery.body, &target.config.redact)),
                        ),
                    };
                    Pending::Waiting(self.spawn_settle(target, &delivery, lease))
                }
            });
        }

        let outcomes = wait_until(pending, started + self.respond_within).await;
        // Shared means: made by another request's forward, here or on another replica.
        let shared = led.iter().zip(&outcomes).all(|(&led, outcome)| {
            !led || matches!(outcome.as_deref(), Some(Outcome::Replayed(_)))
        });
        let (mut response, decided_by, mut outcome) = match relay::decide(&outcomes) {
            Decision::Outcome(position) => {
                let decided = outcomes[position].as_deref().unwrap_or(&Outcome::Lost);
                (
                    relay::respond(decided),
                    Some(position),
                    request_outcome(decided),
                )
            }
            Decision::StillBusy => (relay::still_busy(), None, RequestOutcome::UpstreamError),
        };
        if shared {
            relay::mark_duplicate(&mut response);
            outcome = RequestOutcome::Duplicate;
        }
        if tracing::enabled!(tracing::Level::INFO) {
            let name = |index: usize| &*self.upstreams[index].name;
            // Text fields as `&str`, not `%`: written directly, not through `fmt`.
            tracing::info!(
                source = &*source.name,
                event_id = event.id.as_str(),
                event_type = event.event_type.as_str(),
                route = route.index,
                upstreams = %UpstreamNames {
                    indices: &route.upstreams,
                    name
                },
                decided_by = decided_by
                    .map_or("respond_within", |position| name(route.upstreams[position])),
                status = response.status().as_u16(),
                outcome = outcome.as_str(),
                duplicate = shared,
                duration_ms = started.elapsed().as_millis() as u64,
                "event handled"
            );
        }
        Ok((response, outcome))
    }

    /// Settles a led key in its own task: the forward must finish (and record a 2xx) even if
    /// the sender hangs up or `respond_within` passes.
    fn spawn_settle(
        &self,
        target: &Arc<UpstreamTarget>,
        delivery: &Arc<Delivery>,
        lease: Lease,
    ) -> OutcomeRx {
        let outcome_rx = lease.subscribe();
        // Boxed, like the request's task (`server::Connection::serve`).
        self.forwards.spawn(Box::pin(settle::settle(
            lease,
            self.dedup.shared().cloned(),
            Arc::clone(target),
            Arc::clone(delivery),
        )));
        outcome_rx
    }

    fn unrouted(&self, event_type: &str) -> Response<Full<Bytes>> {
        let body = serde_json::json!({
            "status": "unrouted",
            "message": format!("no route matches event type {event_type:?}; nothing was forwarded"),
        });
        let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
        *response.status_mut() = self.unrouted_status;
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        response
    }
}

/// The `source` label of requests whose path names no source.
const UNKNOWN_SOURCE: &str = "unknown";

/// The answer for a refused request; on HTTP/1 the connection is closed when the body may be
/// unread (h2 forbids connection headers and resets the stream instead).
fn refuse(error: &GatewayError, http1: bool) -> Response<Full<Bytes>> {
    let mut response = error.to_response();
    if http1 && error.closes_connection() {
        response
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// How an answer decided by `outcome` is counted.
fn request_outcome(outcome: &Outcome) -> RequestOutcome {
    match outcome {
        Outcome::Answered(_) | Outcome::Replayed(_) => RequestOutcome::Forwarded,
        Outcome::Busy | Outcome::RateLimited { .. } => RequestOutcome::RateLimited,
        Outcome::DedupUnavailable => RequestOutcome::Unavailable,
        Outcome::TimedOut | Outcome::Unreachable | Outcome::Lost | Outcome::FailedElsewhere => {
            RequestOutcome::UpstreamError
        }
    }
}

/// Waits for every outcome until `deadline`; those not known by then are `None`.
async fn wait_until(pending: Vec<Pending>, deadline: Instant) -> Vec<Option<Arc<Outcome>>> {
    let mut outcomes = Vec::with_capacity(pending.len());
    for entry in pending {
        outcomes.push(match entry {
            Pending::Ready(outcome) => Some(outcome),
            Pending::Waiting(outcome_rx) => {
                match tokio::time::timeout_at(deadline, outcome_rx.outcome()).await {
                    Ok(Some(outcome)) => Some(outcome),
                    // The forward task ended without publishing: it panicked.
                    Ok(None) => Some(Arc::new(Outcome::Lost)),
                    Err(_elapsed) => None,
                }
            }
        });
    }
    outcomes
}

/// A header map from `(name, value)` pairs, for unit tests of the stages.
#[cfg(test)]
pub(crate) fn test_headers(pairs: &[(&str, &str)]) -> http::HeaderMap {
    pairs
        .iter()
        .map(|(name, value)| {
            (
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::{Gateway, UpstreamNames};
    use crate::upstream::UpstreamClient;
    use crate::Config;

    /// A reload keeps the shared pools (and their warm connections) but builds an upstream's
    /// own clients anew, so that its `ca` file is read again.
    #[test]
    fn a_reload_keeps_the_shared_pools_and_rebuilds_private_tls_ones() {
        let dir = std::env::temp_dir().join(format!("hookgate-pools-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let ca = rcgen::generate_simple_self_signed(vec!["upstream.test".to_owned()])
            .expect("a certificate");
        std::fs::write(dir.join("ca.pem"), ca.cert.pem()).expect("write ca");
        let text = r#"
[server]
listen = "127.0.0.1:0"

[[sources]]
name = "fp"
path = "/fp"

[upstreams.plain]
url = "http://127.0.0.1:9/hook"

[upstreams.private]
url = "https://upstream.test/hook"
ca = "ca.pem"

[[routes]]
event_type = "*"
upstreams = ["plain", "private"]
"#;
        let loaded = Config::from_toml_str(text, &dir.join("config.toml"));
        let config = loaded.unwrap_or_else(|error| panic!("{error}"));
        let running = Gateway::from_config(&config).expect("gateway");
        let reloaded = running.reload(&config).expect("reload");
        std::fs::remove_dir_all(&dir).expect("clean up");
        let pools = |gateway: &Gateway, name: &str| {
            gateway.upstream(name).expect("configured").client.clone()
        };
        // A plain-HTTP upstream's requests carry only the path; an HTTPS one's, the URL.
        assert!(matches!(
            pools(&running, "plain"),
            UpstreamClient::Plain { path, .. } if path == "/hook"
        ));
        assert!(matches!(
            pools(&running, "private"),
            UpstreamClient::Pooled { url, .. } if url == "https://upstream.test/hook"
        ));
        assert!(pools(&reloaded, "plain").same_pools(&pools(&running, "plain")));
        assert!(!pools(&reloaded, "private").same_pools(&pools(&running, "private")));
    }

    #[test]
    fn upstream_names_are_joined_in_route_order() {
        let names = ["billing", "crm", "audit"];
        let joined = |indices: &[usize]| {
            UpstreamNames {
                indices,
                name: |index: usize| names[index],
            }
            .to_string()
        };
        assert_eq!(joined(&[2, 0]), "audit,billing");
        assert_eq!(joined(&[1]), "crm");
        assert_eq!(joined(&[]), "");
    }
}

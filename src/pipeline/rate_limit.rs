//! Rate limits, with governor's GCRA limiters (token buckets: `per_second` sustained, `burst`
//! at once).
//!
//! - Inbound ([`InboundLimits`]): `[rate_limit] per_client` (keyed by the client's IP) and
//!   `global`, checked after path, method and announced size, before the body is read.
//! - Per upstream ([`UpstreamLimit`]): an upstream's `rate_limit`, checked by the request that
//!   leads a dedup key just before it forwards. Replays and requests waiting on another's
//!   forward never reach it: a replay costs the upstream nothing.
//!
//! A refusal carries `Retry-After`: the limiter's own wait, rounded up to whole seconds, at
//! least 1.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Weak};
use std::time::Duration;

use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, RateLimiter};
use http::header::HeaderName;
use http::HeaderMap;
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::config::{Cidr, Quota, RateLimitConfig};
use crate::error::GatewayError;

/// How often stale per-client buckets are dropped (see [`InboundLimits`] for the bound this
/// gives).
pub const RETAIN_INTERVAL: Duration = Duration::from_secs(5);

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Which limit refused a request; also the `scope` label of `hookgate_rate_limited_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// `[rate_limit] per_client`.
    Client,
    /// `[rate_limit] global`.
    Global,
    /// An upstream's `rate_limit`.
    Upstream,
}

impl Scope {
    /// The label: `client`, `global` or `upstream`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Global => "global",
            Self::Upstream => "upstream",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// governor's quota for a configured one: `per_second` replenished evenly, `burst` at once.
pub fn governor_quota(quota: Quota) -> governor::Quota {
    governor::Quota::per_second(quota.per_second).allow_burst(quota.burst)
}

/// `Retry-After` for a limiter's wait: whole seconds, rounded up, at least 1 (a sender told
/// "0" would retry at once and be refused again).
pub fn retry_after_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

// === impl InboundLimits ===

/// The per-client limiter: one GCRA bucket per client IP, in a sharded concurrent map.
pub type ClientLimiter = DefaultKeyedRateLimiter<IpAddr>;

/// A per-client limiter for `quota`, as the gateway builds it (the `limiter_memory` example
/// measures this one).
pub fn client_limiter(quota: Quota) -> ClientLimiter {
    RateLimiter::keyed(governor_quota(quota))
}

/// `[rate_limit]`: the per-client and global limits, and who may name the client.
///
/// # Memory
/// The per-client limiter keeps one bucket per client IP it has seen. A background task
/// calls `retain_recent` every [`RETAIN_INTERVAL`], which drops every bucket that is back to
/// full (indistinguishable from a fresh one): a client's bucket is gone at most
/// `(burst + 1) / per_second` seconds after its last request, plus one interval. So the
/// limiter holds at most the number of distinct client IPs seen within that window (about
/// 7 s with `per_second = 50, burst = 100`), each a few dozen bytes (the
/// `limiter_memory` example measures it), and `shrink_to_fit` hands the table's spare
/// capacity back after a burst of clients. The task stops when these limits are dropped
/// (with the gateway).
pub struct InboundLimits {
    per_client: Option<Arc<ClientLimiter>>,
    global: Option<DefaultDirectRateLimiter>,
    trusted_proxies: Vec<Cidr>,
    /// Cancels the sweeping task on drop.
    _sweeper: Option<DropGuard>,
}

impl InboundLimits {
    /// Builds the limiters of `config`; with `per_client`, starts the task that drops stale
    /// buckets.
    ///
    /// # Errors
    /// With `per_client`, if called outside a tokio runtime (the task needs one).
    pub fn from_config(config: &RateLimitConfig) -> anyhow::Result<Self> {
        let mut sweeper = None;
        let per_client = match config.per_client {
            None => None,
            Some(quota) => {
                if tokio::runtime::Handle::try_current().is_err() {
                    anyhow::bail!(
                        "rate_limit.per_client: the gateway must be built inside a tokio runtime"
                    );
                }
                let limiter = Arc::new(client_limiter(quota));
                let stop = CancellationToken::new();
                spawn_sweeper(Arc::downgrade(&limiter), RETAIN_INTERVAL, stop.clone());
                sweeper = Some(stop.drop_guard());
                Some(limiter)
            }
        };
        Ok(Self {
            per_client,
            global: config
                .global
                .map(|quota| RateLimiter::direct(governor_quota(quota))),
            trusted_proxies: config.trusted_proxies.clone(),
            _sweeper: sweeper,
        })
    }

    /// The address a request is limited as: the TCP peer, or, when the peer is a trusted
    /// proxy, what `X-Forwarded-For` says (see [`client_ip`]).
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        client_ip(peer, headers, &self.trusted_proxies)
    }

    /// Admits one request from `client`, or refuses it with 429.
    ///
    /// The per-client limit is asked first: a client over its own limit is refused without
    /// spending a global token, so one noisy client cannot use up everyone's share.
    ///
    /// # Errors
    /// [`GatewayError::RateLimited`] with the limit that refused and the wait until it admits
    /// this client again.
    pub fn check(&self, client: IpAddr) -> Result<(), GatewayError> {
        if let Some(limiter) = &self.per_client {
            if let Err(not_until) = limiter.check_key(&client) {
                let wait = not_until.wait_time_from(limiter.clock().now());
                return Err(refused(Scope::Client, wait));
            }
        }
        if let Some(limiter) = &self.global {
            if let Err(not_until) = limiter.check() {
                let wait = not_until.wait_time_from(limiter.clock().now());
                return Err(refused(Scope::Global, wait));
            }
        }
        Ok(())
    }

    /// How many client buckets the per-client limiter holds now (0 without one).
    pub fn tracked_clients(&self) -> usize {
        self.per_client.as_ref().map_or(0, |limiter| limiter.len())
    }
}

fn refused(scope: Scope, wait: Duration) -> GatewayError {
    GatewayError::RateLimited {
        retry_after_secs: retry_after_secs(wait),
        scope,
    }
}

/// Drops stale buckets every `every` until `stop` is cancelled or the limiter is gone. The
/// task holds only a `Weak`, so it never keeps a dropped gateway's limiter alive.
fn spawn_sweeper(
    limiter: Weak<ClientLimiter>,
    every: Duration,
    stop: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(every);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        interval.tick().await; // the first tick is immediate; nothing is stale yet
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = interval.tick() => {}
            }
            let Some(limiter) = limiter.upgrade() else {
                return;
            };
            // Walking a large table is CPU work: keep it off the async workers.
            if tokio::task::spawn_blocking(move || sweep(&limiter))
                .await
                .is_err()
            {
                return;
            }
        }
    })
}

/// What the background task does every [`RETAIN_INTERVAL`]: drops the buckets that are back
/// to full, then the table capacity they leave unused.
pub fn sweep<C: Clock>(
    limiter: &RateLimiter<IpAddr, DashMapStateStore<IpAddr>, C, NoOpMiddleware<C::Instant>>,
) {
    limiter.retain_recent();
    limiter.shrink_to_fit();
}

/// The client a request is limited as.
///
/// `X-Forwarded-For` is believed only from a `trusted` peer, since anyone else could write
/// any address there. Then the header is walked from the right (the hop nearest to us):
/// each trusted hop vouches for the one before it, and the first address that is not
/// trusted is the client. If every listed hop is trusted, the left-most is taken; an entry
/// that is not an address ends the walk at the last hop vouched for. IPv4-mapped IPv6
/// addresses count as the IPv4 address they map.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[Cidr]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|network| network.contains(ip));
    let mut client = peer.to_canonical();
    if !is_trusted(client) {
        return client;
    }
    // Several header lines are one comma-separated list, in order (RFC 9110 §5.3).
    for value in headers.get_all(&X_FORWARDED_FOR).iter().rev() {
        let Ok(list) = value.to_str() else {
            return client;
        };
        for hop in list.rsplit(',').map(str::trim) {
            if hop.is_empty() {
                continue;
            }
            let Some(ip) = parse_hop(hop) else {
                return client;
            };
            client = ip;
            if !is_trusted(ip) {
                return ip;
            }
        }
    }
    client
}

/// An `X-Forwarded-For` entry: an address, or (as some proxies write it) address and port.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    hop.parse::<IpAddr>()
        .or_else(|_| hop.parse::<SocketAddr>().map(|addr| addr.ip()))
        .ok()
        .map(|ip| ip.to_canonical())
}

// === impl UpstreamLimit ===

/// One upstream's `rate_limit`, shared by every request forwarding to it.
#[derive(Debug)]
pub struct UpstreamLimit {
    limiter: DefaultDirectRateLimiter,
}

impl UpstreamLimit {
    /// A limiter for `quota`, full at start.
    pub fn new(quota: Quota) -> Self {
        Self {
            limiter: RateLimiter::direct(governor_quota(quota)),
        }
    }

    /// Takes one token for a forward.
    ///
    /// # Errors
    /// Over the limit: how long until a forward would be admitted.
    pub fn check(&self) -> Result<(), Duration> {
        self.limiter
            .check()
            .map_err(|not_until| not_until.wait_time_from(self.limiter.clock().now()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;
    use http::HeaderValue;
    use std::num::NonZeroU32;

    fn quota(per_second: u32, burst: u32) -> Quota {
        Quota {
            per_second: NonZeroU32::new(per_second).unwrap(),
            burst: NonZeroU32::new(burst).unwrap(),
        }
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(&X_FORWARDED_FOR, HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    fn trusted() -> Vec<Cidr> {
        ["10.0.0.0/8", "127.0.0.1/32", "::1/128"]
            .iter()
            .map(|text| text.parse().unwrap())
            .collect()
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds_at_least_one() {
        let cases = [
            (0, 1),
            (1_000_000, 1),
            (1_000_000_000, 1),
            (1_000_000_001, 2),
        ];
        for (nanos, secs) in cases {
            assert_eq!(
                retry_after_secs(Duration::from_nanos(nanos)),
                secs,
                "{nanos}"
            );
        }
        assert_eq!(retry_after_secs(Duration::from_secs(30)), 30);
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_forwards() {
        let headers = xff(&["203.0.113.9"]);
        assert_eq!(
            client_ip(ip("198.51.100.1"), &headers, &trusted()),
            ip("198.51.100.1")
        );
        assert_eq!(
            client_ip(ip("10.0.0.1"), &headers, &[]),
            ip("10.0.0.1"),
            "nothing trusted"
        );
    }

    #[test]
    fn a_trusted_peer_names_the_right_most_untrusted_hop() {
        let t = trusted();
        // The client wrote "1.1.1.1" itself; the proxy 10.0.0.2 appended the real peer.
        let headers = xff(&["1.1.1.1, 203.0.113.9, 10.0.0.2"]);
        assert_eq!(client_ip(ip("127.0.0.1"), &headers, &t), ip("203.0.113.9"));
        // Several header lines are one list.
        let headers = xff(&["1.1.1.1", "203.0.113.9", "10.0.0.2,"]);
        assert_eq!(client_ip(ip("10.9.9.9"), &headers, &t), ip("203.0.113.9"));
        // No header: the proxy itself is the client.
        assert_eq!(
            client_ip(ip("10.9.9.9"), &HeaderMap::new(), &t),
            ip("10.9.9.9")
        );
        // Every hop trusted: the left-most.
        let headers = xff(&["10.1.1.1, 10.2.2.2"]);
        assert_eq!(client_ip(ip("::1"), &headers, &t), ip("10.1.1.1"));
        // Garbage ends the walk at the last hop vouched for.
        let headers = xff(&["203.0.113.9, unknown, 10.2.2.2"]);
        assert_eq!(client_ip(ip("::1"), &headers, &t), ip("10.2.2.2"));
        // Ports and IPv4-mapped IPv6 addresses.
        let headers = xff(&["[2001:db8::1]:4711, 198.51.100.7:80"]);
        assert_eq!(client_ip(ip("::1"), &headers, &t), ip("198.51.100.7"));
        let headers = xff(&["::ffff:203.0.113.9"]);
        assert_eq!(
            client_ip(ip("::ffff:10.0.0.1"), &headers, &t),
            ip("203.0.113.9")
        );
    }

    fn limits(per_client: Option<Quota>, global: Option<Quota>) -> InboundLimits {
        InboundLimits::from_config(&RateLimitConfig {
            per_client,
            global,
            trusted_proxies: Vec::new(),
        })
        .unwrap()
    }

    fn refused_by(result: Result<(), GatewayError>) -> Option<(Scope, u64)> {
        match result {
            Ok(()) => None,
            Err(GatewayError::RateLimited {
                scope,
                retry_after_secs,
            }) => Some((scope, retry_after_secs)),
            Err(other) => panic!("{other}"),
        }
    }

    // Quotas of 1 per second: nothing refills within the microseconds these tests take.
    #[tokio::test]
    async fn each_client_has_its_own_burst() {
        let limits = limits(Some(quota(1, 2)), None);
        let (a, b) = (ip("192.0.2.1"), ip("192.0.2.2"));
        assert_eq!(refused_by(limits.check(a)), None);
        assert_eq!(refused_by(limits.check(a)), None);
        assert_eq!(refused_by(limits.check(a)), Some((Scope::Client, 1)));
        assert_eq!(refused_by(limits.check(b)), None, "another client");
        assert_eq!(limits.tracked_clients(), 2);
    }

    #[tokio::test]
    async fn the_global_limit_spans_clients_and_a_refused_client_spends_none_of_it() {
        let limits = limits(Some(quota(1, 1)), Some(quota(1, 2)));
        let (a, b, c) = (ip("192.0.2.1"), ip("192.0.2.2"), ip("192.0.2.3"));
        assert_eq!(refused_by(limits.check(a)), None);
        // Over its own limit: refused as a client, the global token is not spent.
        assert_eq!(refused_by(limits.check(a)), Some((Scope::Client, 1)));
        assert_eq!(refused_by(limits.check(b)), None);
        assert_eq!(refused_by(limits.check(c)), Some((Scope::Global, 1)));
    }

    #[test]
    fn without_limits_everything_passes_and_no_task_is_needed() {
        // No runtime here: only per_client needs one.
        let limits = InboundLimits::from_config(&RateLimitConfig {
            per_client: None,
            global: None,
            trusted_proxies: Vec::new(),
        })
        .unwrap();
        for _ in 0..1000 {
            assert!(limits.check(ip("192.0.2.1")).is_ok());
        }
        assert!(InboundLimits::from_config(&RateLimitConfig {
            per_client: Some(quota(1, 1)),
            global: None,
            trusted_proxies: Vec::new(),
        })
        .is_err());
    }

    #[test]
    fn an_upstream_limit_reports_its_wait() {
        let limit = UpstreamLimit::new(quota(1, 2));
        assert!(limit.check().is_ok());
        assert!(limit.check().is_ok());
        let wait = limit.check().unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        assert_eq!(retry_after_secs(wait), 1);
    }

    #[test]
    fn a_sweep_drops_exactly_the_buckets_that_are_full_again() {
        let clock = FakeRelativeClock::default();
        // 10 per second: one token back every 100 ms; a burst of 2.
        let limiter: RateLimiter<IpAddr, DashMapStateStore<IpAddr>, _, _> =
            RateLimiter::dashmap_with_clock(governor_quota(quota(10, 2)), clock.clone());
        for n in 0..100u8 {
            limiter.check_key(&IpAddr::from([192, 0, 2, n])).unwrap();
        }
        clock.advance(Duration::from_millis(50));
        let busy = ip("198.51.100.1");
        limiter.check_key(&busy).unwrap();
        limiter.check_key(&busy).unwrap();
        sweep(&limiter);
        assert_eq!(limiter.len(), 101, "nothing is full again yet");
        clock.advance(Duration::from_millis(200));
        sweep(&limiter);
        assert_eq!(
            limiter.len(),
            1,
            "only the client that spent its burst is kept"
        );
        clock.advance(Duration::from_millis(200));
        sweep(&limiter);
        assert_eq!(limiter.len(), 0);
    }

    #[tokio::test]
    async fn the_sweeper_runs_until_stopped_or_the_limiter_is_gone() {
        // 1000 per second, burst 1: a bucket is full again 2 ms after its request.
        let limiter = Arc::new(RateLimiter::keyed(governor_quota(quota(1000, 1))));
        for n in 0..100u8 {
            limiter.check_key(&IpAddr::from([192, 0, 2, n])).unwrap();
        }
        let stop = CancellationToken::new();
        let task = spawn_sweeper(
            Arc::downgrade(&limiter),
            Duration::from_millis(10),
            stop.clone(),
        );
        let swept = async {
            while !limiter.is_empty() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), swept)
            .await
            .expect("stale buckets are swept");
        assert!(!task.is_finished());
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("a cancelled sweeper stops")
            .unwrap();

        let task = spawn_sweeper(
            Arc::downgrade(&limiter),
            Duration::from_millis(10),
            CancellationToken::new(),
        );
        drop(limiter);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("a sweeper whose limiter is gone stops")
            .unwrap();
    }
}

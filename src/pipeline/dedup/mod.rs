//! Dedup: every (source, event id, upstream) is forwarded at most once at a time, and a 2xx
//! answer is recorded so that a redelivery is replayed instead of forwarded.
//!
//! A request *claims* each key. Exactly one of three things comes back:
//! - [`Claim::Recorded`]: a 2xx answer is on record; replay it, the upstream is not called;
//! - [`Claim::InFlight`]: another request is forwarding this event; wait for its outcome;
//! - [`Claim::Leader`]: this request forwards; the [`Lease`] publishes the outcome to waiters.
//!
//! The record lookup and the in-flight check happen under one short lock, and a leader
//! records its answer *before* releasing its in-flight entry, so there is no moment when a
//! newcomer can see neither and forward a second time.
//!
//! This in-process layer always runs. With the Redis backend ([`redis`]) a leader here also
//! claims the key in Redis, so the same holds across replicas; the local records are then a
//! copy that spares Redis a round trip for duplicates this replica has already seen.

pub mod redis;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use moka::policy::EvictionPolicy;
use moka::sync::Cache;
use tokio::sync::watch;

use self::redis::RedisStore;
use super::forward::{Outcome, Record};
use crate::config::DedupBackend;
use crate::config::DedupConfig;

/// Identifies one delivery target of one event.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DedupKey {
    source: Arc<str>,
    upstream: Arc<str>,
    event_id: Box<str>,
}

impl DedupKey {
    /// The key of `event_id` from `source` for `upstream`.
    pub fn new(source: &Arc<str>, upstream: &Arc<str>, event_id: &str) -> Self {
        Self {
            source: Arc::clone(source),
            upstream: Arc::clone(upstream),
            event_id: event_id.into(),
        }
    }
}

/// Receives the outcome of a forward; `None` until it is known.
pub type OutcomeRx = watch::Receiver<Option<Arc<Outcome>>>;

/// Recorded answers plus the forwards in flight.
pub struct Dedup {
    records: Cache<DedupKey, Arc<Record>>,
    in_flight: Mutex<HashMap<DedupKey, OutcomeRx>>,
    shared: Option<Arc<RedisStore>>,
}

/// The result of [`Dedup::claim`].
pub enum Claim {
    /// A 2xx answer is recorded for this key.
    Recorded(Arc<Record>),
    /// Another request is forwarding; its outcome arrives here.
    InFlight(OutcomeRx),
    /// This request must forward and then [`Lease::complete`].
    Leader(Lease),
}

impl Dedup {
    /// The store `config` asks for.
    ///
    /// # Errors
    /// If the Redis URL cannot be used.
    pub fn from_config(config: &DedupConfig) -> anyhow::Result<Self> {
        let mut dedup = Self::new(config.ttl, config.max_entries);
        if let DedupBackend::Redis { url, key_prefix } = &config.backend {
            let store = RedisStore::new(url.expose(), key_prefix, config.ttl)?;
            dedup.shared = Some(Arc::new(store));
        }
        Ok(dedup)
    }

    /// An in-memory store keeping records for `ttl`, at most `max_entries` of them.
    pub fn new(ttl: Duration, max_entries: u64) -> Self {
        // LRU rather than moka's default TinyLFU: a fresh record must always be admitted,
        // or the retry of an event that was just fulfilled would be forwarded again.
        let records = Cache::builder()
            .max_capacity(max_entries)
            .time_to_live(ttl)
            .eviction_policy(EvictionPolicy::lru())
            .build();
        Self {
            records,
            in_flight: Mutex::new(HashMap::new()),
            shared: None,
        }
    }

    /// Claims `key`: replay, wait, or lead the forward.
    pub fn claim(self: &Arc<Self>, key: DedupKey) -> Claim {
        let mut in_flight = self.lock_in_flight();
        if let Some(record) = self.records.get(&key) {
            return Claim::Recorded(record);
        }
        if let Some(outcome_rx) = in_flight.get(&key) {
            return Claim::InFlight(outcome_rx.clone());
        }
        let (outcome_tx, outcome_rx) = watch::channel(None);
        in_flight.insert(key.clone(), outcome_rx);
        Claim::Leader(Lease {
            dedup: Arc::clone(self),
            key,
            outcome_tx,
            released: false,
        })
    }

    /// The Redis store, when records are shared across replicas.
    pub fn shared(&self) -> Option<&Arc<RedisStore>> {
        self.shared.as_ref()
    }

    /// How many records are held. moka counts lazily, so this first runs its pending
    /// maintenance: call it at scrape time, not per request.
    pub fn record_count(&self) -> u64 {
        self.records.run_pending_tasks();
        self.records.entry_count()
    }

    fn lock_in_flight(&self) -> std::sync::MutexGuard<'_, HashMap<DedupKey, OutcomeRx>> {
        // The map stays consistent even if a holder panicked: every critical section is a
        // single get/insert/remove.
        self.in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// The right and duty to forward one key and publish its outcome.
///
/// Dropped without [`Lease::complete`] (a panicking forward task), it still releases the
/// in-flight entry; waiters then see the channel close and answer 502, and a retry forwards.
pub struct Lease {
    dedup: Arc<Dedup>,
    key: DedupKey,
    outcome_tx: watch::Sender<Option<Arc<Outcome>>>,
    released: bool,
}

impl Lease {
    /// The key this lease is for.
    pub fn key(&self) -> &DedupKey {
        &self.key
    }

    /// A receiver for this lease's outcome.
    pub fn subscribe(&self) -> OutcomeRx {
        self.outcome_tx.subscribe()
    }

    /// Records a 2xx answer, releases the key and wakes every waiter with `outcome`.
    pub fn complete(mut self, outcome: Arc<Outcome>) {
        // Copied before the lock: the answer may be up to 1 MiB.
        let record = match &*outcome {
            Outcome::Answered(record) if record.status.is_success() => {
                Some(Arc::new(record.detached()))
            }
            _ => None,
        };
        {
            let mut in_flight = self.dedup.lock_in_flight();
            if let Some(record) = record {
                self.dedup.records.insert(self.key.clone(), record);
            }
            in_flight.remove(&self.key);
            self.released = true;
        }
        self.outcome_tx.send_replace(Some(outcome));
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if !self.released {
            self.dedup.lock_in_flight().remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http::{HeaderValue, StatusCode};

    fn key(id: &str) -> DedupKey {
        DedupKey::new(&Arc::from("fp"), &Arc::from("billing"), id)
    }

    fn answered(status: u16) -> Arc<Outcome> {
        Arc::new(Outcome::Answered(Arc::new(Record {
            status: StatusCode::from_u16(status).unwrap(),
            content_type: None,
            body: Bytes::from_static(b"ok"),
        })))
    }

    fn store() -> Arc<Dedup> {
        Arc::new(Dedup::new(Duration::from_secs(60), 100))
    }

    /// A record must not keep the buffer its answer was read into (hyper's 8 KiB read
    /// buffer per upstream answer): with a million records that is gigabytes.
    #[test]
    fn a_record_does_not_pin_the_buffer_its_answer_came_in() {
        let dedup = store();
        let read_buffer = Bytes::from(vec![b'x'; 8192]);
        let Claim::Leader(lease) = dedup.claim(key("1")) else {
            panic!("first claim must lead")
        };
        lease.complete(Arc::new(Outcome::Answered(Arc::new(Record {
            status: StatusCode::OK,
            content_type: Some(HeaderValue::from_maybe_shared(read_buffer.slice(0..16)).unwrap()),
            body: read_buffer.slice(16..27),
        }))));
        let Claim::Recorded(record) = dedup.claim(key("1")) else {
            panic!("the 200 must be recorded")
        };
        assert_eq!(&record.body[..], b"xxxxxxxxxxx");
        assert_eq!(
            record.content_type.as_ref().unwrap().as_bytes(),
            b"xxxxxxxxxxxxxxxx"
        );
        assert!(
            read_buffer.is_unique(),
            "the record still shares the 8 KiB buffer its answer was read into"
        );
    }

    #[test]
    fn first_claim_leads_and_a_concurrent_one_waits() {
        let dedup = store();
        let Claim::Leader(lease) = dedup.claim(key("1")) else {
            panic!("first claim must lead")
        };
        let Claim::InFlight(mut waiter) = dedup.claim(key("1")) else {
            panic!("second claim must wait")
        };
        lease.complete(answered(200));
        // The lease is gone, so the channel is closed, but the value stays readable.
        let outcome = waiter.borrow_and_update().clone().unwrap();
        assert!(matches!(&*outcome, Outcome::Answered(r) if r.status == 200));
    }

    #[test]
    fn a_2xx_is_recorded_and_replayed() {
        let dedup = store();
        let Claim::Leader(lease) = dedup.claim(key("1")) else {
            panic!("first claim must lead")
        };
        lease.complete(answered(202));
        match dedup.claim(key("1")) {
            Claim::Recorded(record) => assert_eq!(record.status, 202),
            _ => panic!("a 2xx must be replayed"),
        }
    }

    #[test]
    fn a_failure_is_not_recorded_so_the_retry_leads_again() {
        let dedup = store();
        for status in [500, 302, 404] {
            let Claim::Leader(lease) = dedup.claim(key("1")) else {
                panic!("after a {status} the retry must lead")
            };
            lease.complete(answered(status));
        }
        let Claim::Leader(lease) = dedup.claim(key("1")) else {
            panic!("timeouts are not recorded either")
        };
        lease.complete(Arc::new(Outcome::TimedOut));
        assert!(matches!(dedup.claim(key("1")), Claim::Leader(_)));
    }

    #[test]
    fn a_dropped_lease_releases_the_key_and_closes_the_channel() {
        let dedup = store();
        let Claim::Leader(lease) = dedup.claim(key("1")) else {
            panic!("first claim must lead")
        };
        let Claim::InFlight(waiter) = dedup.claim(key("1")) else {
            panic!("second claim must wait")
        };
        drop(lease);
        assert!(
            waiter.has_changed().is_err(),
            "waiters see the closed channel"
        );
        assert!(matches!(dedup.claim(key("1")), Claim::Leader(_)));
    }

    #[test]
    fn records_expire_after_the_ttl() {
        let dedup = Arc::new(Dedup::new(Duration::from_millis(50), 100));
        let Claim::Leader(lease) = dedup.claim(key("1")) else {
            panic!("first claim must lead")
        };
        lease.complete(answered(200));
        assert!(matches!(dedup.claim(key("1")), Claim::Recorded(_)));
        // moka keeps its own clock, so wait for real (bounded), not with tokio's paused time.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !matches!(dedup.claim(key("1")), Claim::Leader(_)) {
            assert!(
                std::time::Instant::now() < deadline,
                "record outlived its ttl"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn records_are_bounded_by_max_entries() {
        let dedup = Arc::new(Dedup::new(Duration::from_secs(60), 3));
        for id in 0..50 {
            let Claim::Leader(lease) = dedup.claim(key(&id.to_string())) else {
                panic!("a new id must lead")
            };
            lease.complete(answered(200));
        }
        assert_eq!(dedup.record_count(), 3);
        // Least recently used go first: the newest record is still there.
        assert!(matches!(dedup.claim(key("49")), Claim::Recorded(_)));
    }

    #[test]
    fn the_in_flight_map_is_empty_once_every_lease_ends() {
        let dedup = store();
        for id in 0..10 {
            let Claim::Leader(lease) = dedup.claim(key(&id.to_string())) else {
                panic!("a new id must lead")
            };
            if id % 2 == 0 {
                lease.complete(answered(500));
            } else {
                drop(lease);
            }
        }
        assert!(dedup.lock_in_flight().is_empty());
    }

    #[test]
    fn keys_differ_by_source_upstream_and_id() {
        let dedup = store();
        let Claim::Leader(lease) = dedup.claim(key("1")) else {
            panic!("first claim must lead")
        };
        lease.complete(answered(200));
        let other_upstream = DedupKey::new(&Arc::from("fp"), &Arc::from("crm"), "1");
        let other_source = DedupKey::new(&Arc::from("v2"), &Arc::from("billing"), "1");
        assert!(matches!(dedup.claim(other_upstream), Claim::Leader(_)));
        assert!(matches!(dedup.claim(other_source), Claim::Leader(_)));
        assert!(matches!(dedup.claim(key("2")), Claim::Leader(_)));
    }
}

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

mod published;
pub mod redis;
mod shard;

use std::hash::BuildHasher;
use std::hash::RandomState;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use self::redis::RedisStore;
use self::shard::{Fingerprint, Shard, StoredAnswer};
use super::forward::{Outcome, Record};
use crate::config::DedupBackend;
use crate::config::DedupConfig;

/// Records one shard holds at most: 7/16 of a power of two, half of what a table of that
/// many buckets may hold, so that a full shard's table can always rehash in place (see
/// [`shard`]).
const SHARD_CAPACITY: u64 = 7_168;
/// Most shards; past this, shards grow instead.
const MAX_SHARDS: u64 = 4096;

/// Identifies one delivery target of one event.
#[derive(Debug, Clone)]
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

pub use published::OutcomeRx;
use published::{publication, Publisher};

/// Recorded answers plus the forwards in flight, in shards chosen by the key's fingerprint:
/// a claim locks one shard, briefly, and never across an await.
pub struct Dedup {
    shards: Box<[Mutex<Shard>]>,
    fingerprints: [RandomState; 2],
    ttl_ms: u64,
    started: Instant,
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

    /// An in-memory store keeping each record for `ttl` from when it was written, at most
    /// `max_entries` of them in all; past that, the oldest written go first.
    ///
    /// Each shard holds an equal share of `max_entries`, so a shard that fills before the
    /// others starts evicting a little early: after exactly 1,000,000 distinct events into a
    /// store of 1,000,000, 995,574 were held (`examples/dedup_memory.rs`).
    pub fn new(ttl: Duration, max_entries: u64) -> Self {
        let shard_count = max_entries.div_ceil(SHARD_CAPACITY).clamp(1, MAX_SHARDS);
        // The shards' capacities add up to exactly max_entries.
        let shards = (0..shard_count)
            .map(|index| {
                let capacity =
                    max_entries / shard_count + u64::from(index < max_entries % shard_count);
                Mutex::new(Shard::new(usize::try_from(capacity).unwrap_or(usize::MAX)))
            })
            .collect();
        Self {
            shards,
            fingerprints: [RandomState::new(), RandomState::new()],
            ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
            started: Instant::now(),
            shared: None,
        }
    }

    /// Claims `event_id` from `source` for `upstream`: replay, wait, or lead the forward.
    /// Only a leader gets an owned [`DedupKey`] (for Redis); a replay or a wait allocates
    /// no key.
    pub fn claim(
        self: &Arc<Self>,
        source: &Arc<str>,
        upstream: &Arc<str>,
        event_id: &str,
    ) -> Claim {
        let fingerprint = self.fingerprint(source, upstream, event_id);
        let mut shard = self.lock_shard(fingerprint);
        if let Some(answer) = shard.recorded(&fingerprint, || self.now_ms()) {
            drop(shard);
            return Claim::Recorded(Arc::new(answer.unpack()));
        }
        if let Some(outcome_rx) = shard.in_flight.get(&fingerprint) {
            return Claim::InFlight(outcome_rx.clone());
        }
        let (publisher, outcome_rx) = publication();
        shard.in_flight.insert(fingerprint, outcome_rx);
        Claim::Leader(Lease {
            dedup: Arc::clone(self),
            key: DedupKey::new(source, upstream, event_id),
            fingerprint,
            publisher,
            released: false,
        })
    }

    /// The Redis store, when records are shared across replicas.
    pub fn shared(&self) -> Option<&Arc<RedisStore>> {
        self.shared.as_ref()
    }

    /// How many records are held. Drops the expired ones first, shard by shard: call it at
    /// scrape time, not per request.
    pub fn record_count(&self) -> u64 {
        let now = self.now_ms();
        self.shards
            .iter()
            .map(|shard| {
                let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
                shard.drop_expired(now);
                shard.len() as u64
            })
            .sum()
    }

    fn fingerprint(&self, source: &str, upstream: &str, event_id: &str) -> Fingerprint {
        // A tuple of strs hashes each with a terminator: names cannot run into each other.
        let parts = (source, upstream, event_id);
        Fingerprint {
            table: self.fingerprints[0].hash_one(parts),
            shard: self.fingerprints[1].hash_one(parts),
        }
    }

    fn lock_shard(&self, fingerprint: Fingerprint) -> MutexGuard<'_, Shard> {
        // The shard count fits in usize (at most MAX_SHARDS), so the remainder does too.
        let index = (fingerprint.shard % self.shards.len() as u64) as usize;
        // A shard stays consistent even if a holder panicked: no critical section leaves a
        // half-done change behind.
        self.shards[index]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// The right and duty to forward one key and publish its outcome.
///
/// Dropped without [`Lease::complete`] (a panicking forward task), it still releases the
/// in-flight entry; waiters then learn there is no outcome and answer 502, and a retry
/// forwards.
pub struct Lease {
    dedup: Arc<Dedup>,
    key: DedupKey,
    fingerprint: Fingerprint,
    publisher: Publisher,
    released: bool,
}

impl Lease {
    /// The key this lease is for.
    pub fn key(&self) -> &DedupKey {
        &self.key
    }

    /// A receiver for this lease's outcome.
    pub fn subscribe(&self) -> OutcomeRx {
        self.publisher.subscribe()
    }

    /// Records a 2xx answer, releases the key and wakes every waiter with `outcome`.
    ///
    /// The record is written before the in-flight entry goes, under the same lock, so a
    /// newcomer always sees one or the other and never forwards a second time.
    pub fn complete(mut self, outcome: Arc<Outcome>) {
        // Packed (a copy) before the lock: the answer may be up to 1 MiB. It owns its bytes,
        // so it does not keep the buffer the answer was read into.
        let answer = match &*outcome {
            Outcome::Answered(record) if record.status.is_success() => {
                let now = self.dedup.now_ms();
                let packed = StoredAnswer::pack(record, now.saturating_add(self.dedup.ttl_ms));
                if packed.is_none() {
                    tracing::error!("a 2xx answer is not recorded: its content-type is over 4 GiB");
                }
                packed.map(|answer| (answer, now))
            }
            _ => None,
        };
        {
            let mut shard = self.dedup.lock_shard(self.fingerprint);
            if let Some((answer, now)) = answer {
                shard.record(self.fingerprint, answer, now);
            }
            shard.in_flight.remove(&self.fingerprint);
            self.released = true;
        }
        self.publisher.publish(outcome);
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if !self.released {
            self.dedup
                .lock_shard(self.fingerprint)
                .in_flight
                .remove(&self.fingerprint);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http::{HeaderValue, StatusCode};

    /// Claims `id` from source `fp` for upstream `billing`.
    fn claim(dedup: &Arc<Dedup>, id: &str) -> Claim {
        dedup.claim(&Arc::from("fp"), &Arc::from("billing"), id)
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
        let Claim::Leader(lease) = claim(&dedup, "1") else {
            panic!("first claim must lead")
        };
        lease.complete(Arc::new(Outcome::Answered(Arc::new(Record {
            status: StatusCode::OK,
            content_type: Some(HeaderValue::from_maybe_shared(read_buffer.slice(0..16)).unwrap()),
            body: read_buffer.slice(16..27),
        }))));
        let Claim::Recorded(record) = claim(&dedup, "1") else {
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
        let Claim::Leader(lease) = claim(&dedup, "1") else {
            panic!("first claim must lead")
        };
        let Claim::InFlight(waiter) = claim(&dedup, "1") else {
            panic!("second claim must wait")
        };
        assert!(waiter.published().is_none(), "nothing is published yet");
        lease.complete(answered(200));
        // The lease is gone, but what it published stays readable.
        let outcome = waiter
            .published()
            .flatten()
            .expect("the outcome is published");
        assert!(matches!(&*outcome, Outcome::Answered(r) if r.status == 200));
    }

    #[test]
    fn a_2xx_is_recorded_and_replayed() {
        let dedup = store();
        let Claim::Leader(lease) = claim(&dedup, "1") else {
            panic!("first claim must lead")
        };
        lease.complete(answered(202));
        match claim(&dedup, "1") {
            Claim::Recorded(record) => assert_eq!(record.status, 202),
            _ => panic!("a 2xx must be replayed"),
        }
    }

    #[test]
    fn a_failure_is_not_recorded_so_the_retry_leads_again() {
        let dedup = store();
        for status in [500, 302, 404] {
            let Claim::Leader(lease) = claim(&dedup, "1") else {
                panic!("after a {status} the retry must lead")
            };
            lease.complete(answered(status));
        }
        let Claim::Leader(lease) = claim(&dedup, "1") else {
            panic!("timeouts are not recorded either")
        };
        lease.complete(Arc::new(Outcome::TimedOut));
        assert!(matches!(claim(&dedup, "1"), Claim::Leader(_)));
    }

    #[test]
    fn a_dropped_lease_releases_the_key_and_publishes_no_outcome() {
        let dedup = store();
        let Claim::Leader(lease) = claim(&dedup, "1") else {
            panic!("first claim must lead")
        };
        let Claim::InFlight(waiter) = claim(&dedup, "1") else {
            panic!("second claim must wait")
        };
        assert!(waiter.published().is_none(), "nothing is published yet");
        drop(lease);
        assert!(
            matches!(waiter.published(), Some(None)),
            "waiters learn the lease was given up"
        );
        assert!(matches!(claim(&dedup, "1"), Claim::Leader(_)));
    }

    #[test]
    fn records_expire_after_the_ttl() {
        let dedup = Arc::new(Dedup::new(Duration::from_millis(50), 100));
        let Claim::Leader(lease) = claim(&dedup, "1") else {
            panic!("first claim must lead")
        };
        lease.complete(answered(200));
        assert!(matches!(claim(&dedup, "1"), Claim::Recorded(_)));
        // The store reads the real clock, so wait for real (bounded).
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !matches!(claim(&dedup, "1"), Claim::Leader(_)) {
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
            let Claim::Leader(lease) = claim(&dedup, &id.to_string()) else {
                panic!("a new id must lead")
            };
            lease.complete(answered(200));
        }
        assert_eq!(dedup.record_count(), 3);
        // The oldest written go first: the newest record is still there.
        assert!(matches!(claim(&dedup, "49"), Claim::Recorded(_)));
    }

    #[test]
    fn a_sharded_store_holds_max_entries_in_all() {
        let max_entries = 3 * SHARD_CAPACITY + 5;
        let dedup = Arc::new(Dedup::new(Duration::from_secs(60), max_entries));
        assert_eq!(dedup.shards.len(), 4);
        let written = max_entries + max_entries / 4;
        for id in 0..written {
            let Claim::Leader(lease) = claim(&dedup, &id.to_string()) else {
                panic!("a new id must lead")
            };
            lease.complete(answered(200));
        }
        // Every shard got well over its share, so every shard is full.
        assert_eq!(dedup.record_count(), max_entries);
        let newest = (written - 1).to_string();
        assert!(matches!(claim(&dedup, &newest), Claim::Recorded(_)));
        assert!(matches!(claim(&dedup, "0"), Claim::Leader(_)));
    }

    #[test]
    fn the_in_flight_map_is_empty_once_every_lease_ends() {
        let dedup = store();
        for id in 0..10 {
            let Claim::Leader(lease) = claim(&dedup, &id.to_string()) else {
                panic!("a new id must lead")
            };
            if id % 2 == 0 {
                lease.complete(answered(500));
            } else {
                drop(lease);
            }
        }
        assert!(dedup
            .shards
            .iter()
            .all(|shard| shard.lock().unwrap().in_flight.is_empty()));
    }

    #[test]
    fn keys_differ_by_source_upstream_and_id() {
        let dedup = store();
        let Claim::Leader(lease) = claim(&dedup, "1") else {
            panic!("first claim must lead")
        };
        lease.complete(answered(200));
        let claim_as = |source: &str, upstream: &str, id: &str| {
            dedup.claim(&Arc::from(source), &Arc::from(upstream), id)
        };
        assert!(matches!(claim_as("fp", "billing", "1"), Claim::Recorded(_)));
        for (source, upstream, id) in [
            ("fp", "crm", "1"),
            ("v2", "billing", "1"),
            ("fp", "billing", "2"),
            // Only the boundaries between the names differ: still other keys.
            ("fpb", "illing", "1"),
            ("fp", "billing1", ""),
            ("f", "pbilling", "1"),
        ] {
            assert!(
                matches!(claim_as(source, upstream, id), Claim::Leader(_)),
                "{source}/{upstream}/{id} must be a key of its own"
            );
        }
    }
}

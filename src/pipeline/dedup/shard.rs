//! One shard of the in-memory dedup store: its recorded answers, in the order they were
//! written, and its forwards in flight, under one lock.
//!
//! Sized for a million records in under 200 MB (issue #6): a record is a 128-bit
//! fingerprint of its key and its answer packed into one allocation with its expiry
//! ([`StoredAnswer`]); 155–170 bytes of RSS per record with a 12-byte answer (measured with
//! `examples/dedup_memory.rs`), where moka's own bookkeeping alone was about 300.
//! A shard's table grows with its records, as any map does, and stops growing at twice the
//! shard's capacity: once tombstones (what removals leave) fill a table holding the
//! capacity, hashbrown doubles it once, and from then on the records take at most half of
//! it, so it cleans tombstones out by rehashing in place and memory stays flat through any
//! amount of churn. Growing on demand keeps memory proportional to the records held, not
//! to `max_entries`: reserving every shard's final size up front cost 851 bytes a record
//! for a million records in a store of ten million, because records land in random pages
//! of the tables and each first write faults a page in (`examples/dedup_memory.rs` with
//! `MAX_ENTRIES=10000000`).
//! Every record lives for the same `ttl` from when it was written, so write order is also
//! expiry order: the oldest record is the next to expire and the first to go when the shard
//! is full. A record is never refreshed by a read: a replay must not extend how long an
//! answer is kept.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, StatusCode};

use super::OutcomeRx;
use crate::pipeline::forward::Record;

/// A key's fingerprint: two independent 64-bit keyed hashes of (source, upstream, event id).
/// Random keys per process mean a sender cannot choose ids that collide; by chance, two of
/// a million keys collide with probability about 10⁻²⁶.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint {
    pub(super) table: u64,
    pub(super) shard: u64,
}

impl Hash for Fingerprint {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Already a hash: [`PassThrough`] uses it as is.
        state.write_u64(self.table);
    }
}

/// The hasher for maps keyed by a [`Fingerprint`]: it is a keyed hash already.
#[derive(Default)]
pub struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only fingerprints are hashed here, through write_u64; stay correct regardless.
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}

type FingerprintMap<V> = HashMap<Fingerprint, V, BuildHasherDefault<PassThrough>>;

/// A recorded answer and its expiry packed into one allocation. Layout, big-endian:
/// expiry (8 bytes), status (2), content-type length (4; `u32::MAX` for none), the
/// content-type, the body.
#[derive(Debug, Clone)]
pub struct StoredAnswer(Arc<[u8]>);

const NO_CONTENT_TYPE: u32 = u32::MAX;
const HEADER_LEN: usize = 14;

impl StoredAnswer {
    /// Packs `record`, to be kept until `expires`; `None` if its content-type is longer
    /// than 4 GiB, which no answer that hyper accepted can have.
    pub fn pack(record: &Record, expires: u64) -> Option<Self> {
        let content_type = record.content_type.as_ref().map(HeaderValue::as_bytes);
        let content_type_len = match content_type {
            Some(bytes) => u32::try_from(bytes.len())
                .ok()
                .filter(|&len| len != NO_CONTENT_TYPE)?,
            None => NO_CONTENT_TYPE,
        };
        let content_type = content_type.unwrap_or_default();
        let mut packed = Vec::with_capacity(HEADER_LEN + content_type.len() + record.body.len());
        packed.extend_from_slice(&expires.to_be_bytes());
        packed.extend_from_slice(&record.status.as_u16().to_be_bytes());
        packed.extend_from_slice(&content_type_len.to_be_bytes());
        packed.extend_from_slice(content_type);
        packed.extend_from_slice(&record.body);
        Some(Self(Arc::from(packed)))
    }

    /// The record again. The body shares this allocation rather than copying it.
    pub fn unpack(&self) -> Record {
        let bytes = Bytes::from_owner(Shared(Arc::clone(&self.0)));
        let status = StatusCode::from_u16(u16::from_be_bytes([bytes[8], bytes[9]]))
            .unwrap_or(StatusCode::OK);
        let content_type_len = u32::from_be_bytes([bytes[10], bytes[11], bytes[12], bytes[13]]);
        let (content_type, body_start) = if content_type_len == NO_CONTENT_TYPE {
            (None, HEADER_LEN)
        } else {
            let end = HEADER_LEN + content_type_len as usize;
            // It was a valid header value when packed, so this does not fail.
            let value = HeaderValue::from_maybe_shared(bytes.slice(HEADER_LEN..end)).ok();
            (value, end)
        };
        Record {
            status,
            content_type,
            body: bytes.slice(body_start..),
        }
    }

    /// When this record expires.
    pub fn expires(&self) -> u64 {
        let mut expires = [0; 8];
        expires.copy_from_slice(&self.0[..8]);
        u64::from_be_bytes(expires)
    }

    /// Bytes held by the allocation (without the allocator's rounding).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.0.len()
    }
}

/// Lets a `Bytes` share a stored answer's allocation.
struct Shared(Arc<[u8]>);

impl AsRef<[u8]> for Shared {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// One shard's state. Times are milliseconds since the store was created.
#[derive(Debug)]
pub struct Shard {
    records: FingerprintMap<StoredAnswer>,
    /// Fingerprints in write order with the expiry they were written with. A fingerprint
    /// written again after its record expired is in here twice; the older entry no longer
    /// matches the record's expiry and is skipped when it comes up.
    written: VecDeque<(Fingerprint, u64)>,
    capacity: usize,
    pub(super) in_flight: FingerprintMap<OutcomeRx>,
}

impl Shard {
    /// An empty shard holding at most `capacity` records.
    pub fn new(capacity: usize) -> Self {
        Self {
            records: FingerprintMap::default(),
            written: VecDeque::new(),
            capacity,
            in_flight: FingerprintMap::default(),
        }
    }

    /// The answer recorded for `key`, unless it expired by `now`, which is read only if
    /// there is a record (a new event's claim reads no clock).
    pub fn recorded(&self, key: &Fingerprint, now: impl FnOnce() -> u64) -> Option<StoredAnswer> {
        self.records
            .get(key)
            .filter(|answer| answer.expires() > now())
            .cloned()
    }

    /// Records `answer` for `key`, first dropping what expired by `now` and, at
    /// `capacity`, the oldest records. Dropping comes first so that the table never holds
    /// more than `capacity`, which keeps it at its allocated size (see the module docs).
    pub fn record(&mut self, key: Fingerprint, answer: StoredAnswer, now: u64) {
        self.drop_expired(now);
        while self.records.len() >= self.capacity && self.drop_oldest() {}
        if self.capacity == 0 {
            return;
        }
        self.written.push_back((key, answer.expires()));
        self.records.insert(key, answer);
    }

    /// Drops the records that expired by `now`.
    pub fn drop_expired(&mut self, now: u64) {
        while self
            .written
            .front()
            .is_some_and(|&(_, expires)| expires <= now)
        {
            self.drop_oldest();
        }
    }

    /// How many records are held (expired ones included until they are dropped).
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Drops the record written first, if it is still the one its fingerprint maps to.
    /// `false` once nothing is left.
    fn drop_oldest(&mut self) -> bool {
        let Some((key, expires)) = self.written.pop_front() else {
            return false;
        };
        if self
            .records
            .get(&key)
            .is_some_and(|current| current.expires() == expires)
        {
            self.records.remove(&key);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fingerprint(n: u64) -> Fingerprint {
        Fingerprint { table: n, shard: 0 }
    }

    fn answer(body: &'static str, expires: u64) -> StoredAnswer {
        let record = Record {
            status: StatusCode::OK,
            content_type: None,
            body: Bytes::from_static(body.as_bytes()),
        };
        StoredAnswer::pack(&record, expires).expect("packs")
    }

    #[test]
    fn an_answer_unpacks_as_it_was_packed() {
        for (status, content_type, body) in [
            (200, Some("application/json"), &b"{\"ok\":true}"[..]),
            (202, None, &b""[..]),
            (204, Some(""), &b"\x00\xff binary"[..]),
        ] {
            let record = Record {
                status: StatusCode::from_u16(status).unwrap(),
                content_type: content_type.map(HeaderValue::from_static),
                body: Bytes::copy_from_slice(body),
            };
            let packed = StoredAnswer::pack(&record, 42).expect("packs");
            assert_eq!(packed.expires(), 42);
            assert_eq!(
                packed.len(),
                HEADER_LEN + content_type.map_or(0, str::len) + body.len()
            );
            let unpacked = packed.unpack();
            assert_eq!(unpacked.status, record.status);
            assert_eq!(unpacked.content_type, record.content_type);
            assert_eq!(unpacked.body, record.body);
        }
    }

    #[test]
    fn a_record_is_found_until_it_expires() {
        let mut shard = Shard::new(10);
        shard.record(fingerprint(1), answer("a", 100), 0);
        assert!(shard.recorded(&fingerprint(1), || 99).is_some());
        assert!(shard.recorded(&fingerprint(1), || 100).is_none());
        assert!(shard.recorded(&fingerprint(2), || 0).is_none());
        shard.drop_expired(100);
        assert_eq!(shard.len(), 0);
    }

    #[test]
    fn past_capacity_the_oldest_written_goes_first() {
        let mut shard = Shard::new(3);
        for n in 0..5 {
            shard.record(fingerprint(n), answer("a", n + 1000), n);
        }
        assert_eq!(shard.len(), 3);
        let held: Vec<u64> = (0..5)
            .filter(|&n| shard.recorded(&fingerprint(n), || 10).is_some())
            .collect();
        assert_eq!(held, [2, 3, 4]);
    }

    #[test]
    fn a_key_written_again_after_expiring_is_not_dropped_by_its_old_entry() {
        let mut shard = Shard::new(2);
        shard.record(fingerprint(1), answer("old", 10), 0);
        // Expired at 10 but not yet dropped; written again at 20 (a new forward's answer).
        shard.record(fingerprint(1), answer("new", 30), 20);
        shard.record(fingerprint(2), answer("b", 31), 21);
        let record = shard
            .recorded(&fingerprint(1), || 22)
            .expect("the new record is held");
        assert_eq!(&record.unpack().body[..], b"new");
        assert_eq!(shard.len(), 2);
    }

    #[test]
    fn eviction_passes_over_stale_entries_to_a_live_record() {
        let mut shard = Shard::new(1);
        shard.record(fingerprint(1), answer("old", 10), 0);
        // Written again while the first entry is still queued: two entries, one record.
        shard.record(fingerprint(1), answer("new", 50), 5);
        shard.record(fingerprint(2), answer("b", 56), 6);
        // Capacity 1: the stale entry goes without a record, then fingerprint 1's record.
        assert_eq!(shard.len(), 1);
        assert!(shard.recorded(&fingerprint(1), || 7).is_none());
        assert!(shard.recorded(&fingerprint(2), || 7).is_some());
    }

    fn spread(n: u64) -> Fingerprint {
        Fingerprint {
            table: n.wrapping_mul(0x9E37_79B9_7F4A_7C15),
            shard: 0,
        }
    }

    #[test]
    fn churn_never_grows_a_full_shards_table_past_twice_its_capacity() {
        let capacity = 7168;
        let twice: FingerprintMap<StoredAnswer> =
            FingerprintMap::with_capacity_and_hasher(2 * capacity, BuildHasherDefault::default());
        let mut shard = Shard::new(capacity);
        let mut largest = 0;
        let mut halfway = 0;
        // Ten times over: every record is evicted many times, leaving tombstones behind.
        for n in 0..10 * capacity as u64 {
            shard.record(spread(n), answer("a", u64::MAX), 0);
            largest = largest.max(shard.records.capacity());
            if n == 5 * capacity as u64 {
                halfway = shard.records.capacity();
            }
        }
        assert_eq!(shard.len(), capacity);
        assert_eq!(shard.records.capacity(), halfway, "the table still grows");
        assert!(
            largest <= twice.capacity(),
            "{largest} > {}",
            twice.capacity()
        );
        assert!(shard.written.capacity() <= capacity.next_power_of_two());
    }

    /// A store sized far above what it holds must not cost memory for the records it could
    /// hold: its tables grow with the records.
    #[test]
    fn a_shard_allocates_for_the_records_it_holds_not_its_capacity() {
        let mut shard = Shard::new(7168);
        assert_eq!(shard.records.capacity(), 0);
        assert_eq!(shard.written.capacity(), 0);
        for n in 0..100 {
            shard.record(spread(n), answer("a", u64::MAX), 0);
        }
        assert!(
            shard.records.capacity() < 256,
            "{}",
            shard.records.capacity()
        );
        assert!(
            shard.written.capacity() < 256,
            "{}",
            shard.written.capacity()
        );
    }
}

//! Settle: how the request that leads a dedup key gets that key's outcome.
//!
//! With the memory backend the leader simply forwards. With Redis it first claims the key
//! fleet-wide: a record found there is replayed, another replica's forward is waited on, and
//! only a successful claim forwards. Either way the outcome is published through the lease
//! to every request waiting on this replica.

use std::sync::Arc;

use tokio::time::Instant;

use super::dedup::redis::{Elsewhere, RedisStore, SharedClaim, CLAIM_MARGIN};
use super::dedup::{DedupKey, Lease};
use super::forward::{forward, Delivery, Outcome, UpstreamTarget};

/// Settles `lease` and publishes the outcome. Runs in a task of its own: nothing the sender
/// does (hanging up, `respond_within` passing) may cut it short.
pub async fn settle(
    lease: Lease,
    shared: Option<Arc<RedisStore>>,
    target: Arc<UpstreamTarget>,
    delivery: Arc<Delivery>,
) {
    let outcome = match shared {
        None => forward_within_limit(&target, &delivery).await,
        Some(store) => settle_shared(&store, lease.key(), &target, &delivery).await,
    };
    lease.complete(Arc::new(outcome));
}

/// Forwards unless the upstream's `rate_limit` is spent. Checked here, once this request
/// leads the key (and, with Redis, holds the claim): replays and waiters never spend from
/// the upstream's limit, since they cost it nothing.
async fn forward_within_limit(target: &UpstreamTarget, delivery: &Delivery) -> Outcome {
    if let Some(limit) = &target.rate_limit {
        if let Err(retry_after) = limit.check() {
            tracing::debug!(upstream = %target.name, ?retry_after, "upstream rate limit spent");
            return Outcome::RateLimited { retry_after };
        }
    }
    forward(target, delivery).await
}

async fn settle_shared(
    store: &RedisStore,
    key: &DedupKey,
    target: &UpstreamTarget,
    delivery: &Delivery,
) -> Outcome {
    // A claim outlives the forward's own timeout a little, so that only a crashed replica's
    // claim ever expires on its own.
    let claim_for = target.config.timeout + CLAIM_MARGIN;
    let unavailable = |error| {
        tracing::warn!(upstream = %target.name, %error, "dedup backend unavailable");
        Outcome::DedupUnavailable
    };
    match store.claim(key, claim_for).await {
        Err(error) => unavailable(error),
        Ok(SharedClaim::Recorded(record)) => Outcome::Replayed(Arc::new(record)),
        Ok(SharedClaim::ClaimedElsewhere) => {
            match store.wait_elsewhere(key, Instant::now() + claim_for).await {
                Err(error) => unavailable(error),
                Ok(Elsewhere::Recorded(record)) => Outcome::Replayed(Arc::new(record)),
                Ok(Elsewhere::Failed | Elsewhere::StillClaimed) => Outcome::FailedElsewhere,
            }
        }
        Ok(SharedClaim::Claimed) => {
            // Over the limit, the claim is released unrecorded, like any failed forward.
            let outcome = forward_within_limit(target, delivery).await;
            if let Err(error) = store
                .complete(key, outcome.recordable().map(|r| &**r))
                .await
            {
                // The answer is still relayed and kept locally; the claim expires by itself.
                tracing::warn!(upstream = %target.name, %error, "could not record the answer in redis");
            }
            outcome
        }
    }
}

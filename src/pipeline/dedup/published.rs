//! Where a lease's outcome is published: set once, by the lease, and read by every request
//! waiting on that key (the leader's own request, and duplicates that arrived meanwhile).
//!
//! A `tokio::sync::watch` channel did this before. It is built for values that change: each
//! channel carries eight wait lists, all of which are allocated per forward and walked on
//! every send. This carries one value and one wait list.

use std::sync::{Arc, OnceLock};

use tokio::sync::Notify;

use super::Outcome;

/// The publishing side; see [`publication`].
#[derive(Debug)]
pub struct Publisher(Arc<Slot>);

/// Receives the outcome of a forward.
#[derive(Debug, Clone)]
pub struct OutcomeRx(Arc<Slot>);

#[derive(Debug, Default)]
struct Slot {
    /// `Some` once published; `None` inside if the lease was given up without an outcome.
    outcome: OnceLock<Option<Arc<Outcome>>>,
    published: Notify,
}

/// A new, empty publication.
pub fn publication() -> (Publisher, OutcomeRx) {
    let slot = Arc::new(Slot::default());
    (Publisher(Arc::clone(&slot)), OutcomeRx(slot))
}

impl Publisher {
    /// Publishes `outcome` and wakes every waiter. Only the first publication counts.
    pub fn publish(&self, outcome: Arc<Outcome>) {
        self.settle(Some(outcome));
    }

    /// A receiver of this publication.
    pub fn subscribe(&self) -> OutcomeRx {
        OutcomeRx(Arc::clone(&self.0))
    }

    fn settle(&self, outcome: Option<Arc<Outcome>>) {
        let _ = self.0.outcome.set(outcome);
        self.0.published.notify_waiters();
    }
}

impl Drop for Publisher {
    /// Given up without an outcome (a panicking forward): waiters learn it at once.
    fn drop(&mut self) {
        if self.0.outcome.get().is_none() {
            self.settle(None);
        }
    }
}

impl OutcomeRx {
    /// What is published so far: `None` while pending, `Some(None)` if given up.
    #[cfg(test)]
    pub fn published(&self) -> Option<Option<Arc<Outcome>>> {
        self.0.outcome.get().cloned()
    }

    /// The published outcome; `None` if the publisher was dropped without one.
    pub async fn outcome(&self) -> Option<Arc<Outcome>> {
        loop {
            let published = self.0.published.notified();
            let mut published = std::pin::pin!(published);
            // Registered before the check, so a publication between the two still wakes it.
            published.as_mut().enable();
            if let Some(outcome) = self.0.outcome.get() {
                return outcome.clone();
            }
            published.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn timed_out() -> Arc<Outcome> {
        Arc::new(Outcome::TimedOut)
    }

    #[tokio::test]
    async fn waiters_before_and_after_the_publication_get_it() {
        let (publisher, early) = publication();
        let waiting = tokio::spawn(async move { early.outcome().await });
        tokio::task::yield_now().await;
        let late = publisher.subscribe();
        publisher.publish(timed_out());
        let early = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the early waiter is woken")
            .expect("no panic");
        assert!(matches!(early.as_deref(), Some(Outcome::TimedOut)));
        assert!(matches!(
            late.outcome().await.as_deref(),
            Some(Outcome::TimedOut)
        ));
    }

    #[tokio::test]
    async fn a_publisher_dropped_without_an_outcome_wakes_its_waiters_with_none() {
        let (publisher, receiver) = publication();
        let waiting = tokio::spawn(async move { receiver.outcome().await });
        tokio::task::yield_now().await;
        drop(publisher);
        let outcome = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the waiter is woken")
            .expect("no panic");
        assert!(outcome.is_none());
    }
}

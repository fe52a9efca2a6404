//! Relay: turn the upstream outcome(s) of one event into the sender's answer.
//!
//! With one upstream the answer is that upstream's. With several (fan-out) the answer is 200
//! only if every upstream's answer is 200; otherwise the first failure in config order;
//! otherwise (all 2xx) the first non-200 2xx. An upstream still busy at `respond_within`
//! makes it 504, unless another one has already failed: that failure is the answer.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use http::{Response, StatusCode};
use http_body_util::Full;

use super::forward::Outcome;
use super::rate_limit::retry_after_secs;
use crate::error::json_error;

/// Marks answers shared from another request's forward (a replay or an in-flight wait).
pub static DUPLICATE_HEADER: HeaderName = HeaderName::from_static("hookgate-duplicate");

/// Which outcome decides the answer, or that time ran out first.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// The outcome at this position (config order) is the answer.
    Outcome(usize),
    /// An upstream was still busy at `respond_within` and none had failed.
    StillBusy,
}

/// Applies the fan-out rule to outcomes in config order; `None` is an upstream still busy.
pub fn decide(outcomes: &[Option<Arc<Outcome>>]) -> Decision {
    // A replayed record is a 2xx like a fresh one: only what has no 2xx is a failure.
    let is_failure = |outcome: &Outcome| outcome.recordable().is_none();
    if let Some(first_failure) = outcomes
        .iter()
        .position(|outcome| outcome.as_deref().is_some_and(is_failure))
    {
        return Decision::Outcome(first_failure);
    }
    if outcomes.iter().any(Option::is_none) {
        return Decision::StillBusy;
    }
    let first_not_200 = outcomes.iter().position(|outcome| {
        outcome
            .as_deref()
            .and_then(Outcome::record)
            .is_none_or(|record| record.status != StatusCode::OK)
    });
    Decision::Outcome(first_not_200.unwrap_or(0))
}

/// The sender's answer for one upstream outcome.
pub fn respond(outcome: &Outcome) -> Response<Full<Bytes>> {
    match outcome {
        Outcome::Answered(record) | Outcome::Replayed(record) => {
            let mut response = Response::new(Full::new(record.body.clone()));
            *response.status_mut() = record.status;
            if let Some(content_type) = &record.content_type {
                response
                    .headers_mut()
                    .insert(CONTENT_TYPE, content_type.clone());
            }
            response
        }
        Outcome::TimedOut => json_error(
            StatusCode::GATEWAY_TIMEOUT,
            "the upstream did not answer within its timeout",
        ),
        Outcome::Unreachable => json_error(
            StatusCode::BAD_GATEWAY,
            "the upstream could not be reached or gave no valid answer",
        ),
        Outcome::Lost => json_error(
            StatusCode::BAD_GATEWAY,
            "the forward to the upstream failed inside hookgate",
        ),
        Outcome::Busy => with_retry_after(json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the upstream has too many requests in flight; retry later",
        )),
        Outcome::RateLimited { retry_after } => {
            let mut response = json_error(
                StatusCode::TOO_MANY_REQUESTS,
                "the upstream's rate limit is reached, so the event was not forwarded; retry later",
            );
            response.headers_mut().insert(
                RETRY_AFTER,
                HeaderValue::from(retry_after_secs(*retry_after)),
            );
            response
        }
        Outcome::DedupUnavailable => with_retry_after(json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the dedup backend is unavailable, so the event was not forwarded; retry later",
        )),
        Outcome::FailedElsewhere => with_retry_after(json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "another hookgate replica was forwarding this event and did not succeed; retry later",
        )),
    }
}

/// The 504 sent when `respond_within` passes while the forward goes on.
pub fn still_busy() -> Response<Full<Bytes>> {
    json_error(
        StatusCode::GATEWAY_TIMEOUT,
        "the upstream is still processing this event; a retry will get its answer",
    )
}

/// Marks a response as shared from another request's forward.
pub fn mark_duplicate(response: &mut Response<Full<Bytes>>) {
    response
        .headers_mut()
        .insert(DUPLICATE_HEADER.clone(), HeaderValue::from_static("true"));
}

fn with_retry_after(mut response: Response<Full<Bytes>>) -> Response<Full<Bytes>> {
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::forward::Record;

    fn answered(status: u16) -> Option<Arc<Outcome>> {
        Some(Arc::new(Outcome::Answered(Arc::new(Record {
            status: StatusCode::from_u16(status).unwrap(),
            content_type: None,
            body: Bytes::new(),
        }))))
    }

    fn failed(outcome: Outcome) -> Option<Arc<Outcome>> {
        Some(Arc::new(outcome))
    }

    #[test]
    fn all_200_is_200_with_the_first_body() {
        assert_eq!(
            decide(&[answered(200), answered(200)]),
            Decision::Outcome(0)
        );
    }

    #[test]
    fn the_first_failure_in_config_order_wins() {
        assert_eq!(
            decide(&[answered(200), answered(500), failed(Outcome::TimedOut)]),
            Decision::Outcome(1)
        );
        assert_eq!(
            decide(&[answered(202), failed(Outcome::Unreachable)]),
            Decision::Outcome(1)
        );
        assert_eq!(
            decide(&[answered(302), answered(200)]),
            Decision::Outcome(0)
        );
        // A fan-out retry: the first upstream's 200 is replayed, the second fails again.
        let replayed = Some(Arc::new(Outcome::Replayed(Arc::new(Record {
            status: StatusCode::OK,
            content_type: None,
            body: Bytes::new(),
        }))));
        assert_eq!(decide(&[replayed, answered(500)]), Decision::Outcome(1));
    }

    #[test]
    fn all_2xx_but_not_all_200_is_the_first_non_200() {
        assert_eq!(
            decide(&[answered(200), answered(202), answered(204)]),
            Decision::Outcome(1)
        );
    }

    #[test]
    fn a_busy_upstream_is_504_unless_another_already_failed() {
        assert_eq!(decide(&[answered(200), None]), Decision::StillBusy);
        assert_eq!(decide(&[None, answered(503)]), Decision::Outcome(1));
    }

    #[test]
    fn an_upstream_over_its_rate_limit_is_a_429_failure_never_recorded() {
        let limited = Outcome::RateLimited {
            retry_after: std::time::Duration::from_millis(1500),
        };
        let response = respond(&limited);
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[RETRY_AFTER], "2");
        assert!(limited.recordable().is_none());
        // In a fan-out it is that upstream's failure.
        assert_eq!(
            decide(&[answered(200), failed(limited)]),
            Decision::Outcome(1)
        );
    }

    #[test]
    fn hookgate_made_answers_are_never_200() {
        for outcome in [
            Outcome::TimedOut,
            Outcome::Unreachable,
            Outcome::Busy,
            Outcome::Lost,
        ] {
            assert_ne!(respond(&outcome).status(), StatusCode::OK);
        }
        assert_ne!(still_busy().status(), StatusCode::OK);
        for retry_later in [
            Outcome::Busy,
            Outcome::DedupUnavailable,
            Outcome::FailedElsewhere,
        ] {
            assert_eq!(respond(&retry_later).headers()[RETRY_AFTER], "1");
        }
    }
}

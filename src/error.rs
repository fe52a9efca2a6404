//! Errors on the request path, and the single place where they become HTTP answers.
//!
//! Every variant is an outcome the sender can see. Answers are JSON `{"error": "..."}` whose
//! text says what was wrong with the request, never anything from the payload or a secret.

use bytes::Bytes;
use http::header::{HeaderValue, ALLOW, CONTENT_TYPE, RETRY_AFTER};
use http::{Response, StatusCode};
use http_body_util::Full;

use crate::metrics::RequestOutcome;
use crate::pipeline::rate_limit::Scope;

/// A request that is answered without reaching an upstream.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// No source is configured at the request path.
    #[error("no webhook source is configured at this path")]
    UnknownPath,
    /// Sources accept POST only.
    #[error("method not allowed: webhook sources accept POST only")]
    MethodNotAllowed,
    /// Content-Length, or the bytes read so far, exceed `max_body_bytes`.
    #[error("request body is larger than the limit of {limit} bytes")]
    BodyTooLarge {
        /// The configured limit.
        limit: usize,
    },
    /// The body did not arrive within `body_timeout`.
    #[error("request body did not arrive in time")]
    BodyTimeout,
    /// `Transfer-Encoding` names a coding other than one `chunked`: hookgate decodes no
    /// others, and a body it cannot read must not be forwarded as if it were the payload.
    #[error("unsupported transfer coding: only chunked is accepted")]
    UnsupportedTransferCoding,
    /// The connection failed while the body was being read.
    #[error("request body could not be read")]
    BodyRead(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Over an inbound rate limit (`[rate_limit]`); answered before the body is read.
    #[error("too many requests ({scope} rate limit); retry after {retry_after_secs} s")]
    RateLimited {
        /// `Retry-After`: whole seconds until the limit admits a request again, at least 1.
        retry_after_secs: u64,
        /// Which limit refused it.
        scope: Scope,
    },
    /// Inbound verification failed (`[sources.verify]`).
    #[error("unauthorized: {reason}")]
    Unauthorized {
        /// What was missing or wrong (never the expected value).
        reason: &'static str,
    },
    /// The body is not JSON.
    #[error("body is not valid JSON: {0}")]
    InvalidJson(#[source] serde_json::Error),
    /// Nothing at the source's event id pointer.
    #[error("no event id at JSON pointer {pointer:?}")]
    MissingEventId {
        /// The source's `event_id` pointer.
        pointer: String,
    },
    /// The event id is not a usable string or number.
    #[error("event id at JSON pointer {pointer:?} {reason}")]
    InvalidEventId {
        /// The source's `event_id` pointer.
        pointer: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Nothing at the source's event type pointer.
    #[error("no event type at JSON pointer {pointer:?}")]
    MissingEventType {
        /// The source's `event_type` pointer.
        pointer: String,
    },
    /// The event type is not a usable string.
    #[error("event type at JSON pointer {pointer:?} {reason}")]
    InvalidEventType {
        /// The source's `event_type` pointer.
        pointer: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

impl GatewayError {
    /// The status the sender gets for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::UnknownPath => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            Self::BodyRead(_)
            | Self::UnsupportedTransferCoding
            | Self::InvalidJson(_)
            | Self::MissingEventId { .. }
            | Self::InvalidEventId { .. }
            | Self::MissingEventType { .. }
            | Self::InvalidEventType { .. } => StatusCode::BAD_REQUEST,
        }
    }

    /// The `outcome` label this answer counts under.
    pub fn outcome(&self) -> RequestOutcome {
        match self {
            Self::RateLimited { .. } => RequestOutcome::RateLimited,
            Self::Unauthorized { .. } => RequestOutcome::Unauthorized,
            _ => RequestOutcome::BadRequest,
        }
    }

    /// Whether the connection must be closed after answering: the request body may be
    /// partly unread, and no byte of it may ever be read as a next request.
    pub fn closes_connection(&self) -> bool {
        matches!(
            self,
            Self::UnknownPath
                | Self::MethodNotAllowed
                | Self::BodyTooLarge { .. }
                | Self::BodyTimeout
                | Self::BodyRead(_)
                | Self::UnsupportedTransferCoding
                | Self::RateLimited { .. }
        )
    }

    /// The answer to the sender.
    pub fn to_response(&self) -> Response<Full<Bytes>> {
        let mut response = json_error(self.status(), &self.to_string());
        match self {
            Self::MethodNotAllowed => {
                response
                    .headers_mut()
                    .insert(ALLOW, HeaderValue::from_static("POST"));
            }
            Self::RateLimited {
                retry_after_secs, ..
            } => {
                response
                    .headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from(*retry_after_secs));
            }
            _ => {}
        }
        response
    }
}

/// A JSON `{"error": message}` response with `status`.
pub fn json_error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({ "error": message }).to_string();
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_maps_to_its_contract_status() {
        let cases = [
            (GatewayError::UnknownPath, 404),
            (GatewayError::MethodNotAllowed, 405),
            (GatewayError::BodyTooLarge { limit: 1 }, 413),
            (GatewayError::BodyTimeout, 408),
            (
                GatewayError::Unauthorized {
                    reason: "invalid token",
                },
                401,
            ),
            (GatewayError::UnsupportedTransferCoding, 400),
            (
                GatewayError::RateLimited {
                    retry_after_secs: 1,
                    scope: Scope::Client,
                },
                429,
            ),
            (
                GatewayError::MissingEventId {
                    pointer: "/event/id".into(),
                },
                400,
            ),
            (
                GatewayError::InvalidEventType {
                    pointer: "/event/type".into(),
                    reason: "must be a string",
                },
                400,
            ),
        ];
        for (error, status) in cases {
            assert_eq!(error.status().as_u16(), status, "{error}");
        }
    }

    #[test]
    fn error_body_is_json_with_the_reason() {
        let response = GatewayError::MissingEventId {
            pointer: "/event/id".into(),
        }
        .to_response();
        assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
        let method = GatewayError::MethodNotAllowed.to_response();
        assert_eq!(method.headers()[ALLOW], "POST");
    }

    #[test]
    fn rate_limited_carries_retry_after_and_closes_the_connection() {
        let error = GatewayError::RateLimited {
            retry_after_secs: 3,
            scope: Scope::Global,
        };
        let response = error.to_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[RETRY_AFTER], "3");
        assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
        // Answered before the body is read: its bytes must never be taken for a next request.
        assert!(error.closes_connection());
    }
}

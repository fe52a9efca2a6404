//! Receive: find the source by path, check the method, read the body within its size and
//! time limits.
//!
//! The size limit is checked twice: up front against `Content-Length` (no byte read), and
//! while streaming, because a chunked body announces no length.

use std::time::Duration;

use bytes::Bytes;
use http::header::TRANSFER_ENCODING;
use http::{HeaderMap, Method};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Body;

use crate::error::GatewayError;

/// Rejects anything but POST.
///
/// # Errors
/// [`GatewayError::MethodNotAllowed`] for any other method.
pub fn check_method(method: &Method) -> Result<(), GatewayError> {
    if method == Method::POST {
        Ok(())
    } else {
        Err(GatewayError::MethodNotAllowed)
    }
}

/// Refuses any transfer coding but a single `chunked`. hyper decodes `chunked` and refuses a
/// last coding other than `chunked`, but accepts e.g. `gzip, chunked` and would hand over the
/// still-gzipped bytes as the body.
///
/// # Errors
/// [`GatewayError::UnsupportedTransferCoding`] for any other coding, or `chunked` twice.
pub fn check_transfer_coding(headers: &HeaderMap) -> Result<(), GatewayError> {
    let mut codings = headers
        .get_all(TRANSFER_ENCODING)
        .iter()
        .flat_map(|value| value.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii);
    match (codings.next(), codings.next()) {
        (None, _) => Ok(()),
        (Some(coding), None) if coding.eq_ignore_ascii_case(b"chunked") => Ok(()),
        _ => Err(GatewayError::UnsupportedTransferCoding),
    }
}

/// Refuses a body that announces (by `Content-Length`) more than `limit` bytes, before any
/// byte is read. Separate from [`read_body`] so that the contract's order holds: size (413),
/// then the inbound rate limits, which answer before the body is read.
///
/// # Errors
/// [`GatewayError::BodyTooLarge`].
pub fn check_announced_size<B: Body>(body: &B, limit: usize) -> Result<(), GatewayError> {
    if body.size_hint().lower() > limit as u64 {
        return Err(GatewayError::BodyTooLarge { limit });
    }
    Ok(())
}

/// Reads the whole `body`, at most `limit` bytes, within `timeout`. The pipeline has already
/// refused an announced length over `limit` ([`check_announced_size`]); this enforces the
/// limit on what actually arrives, which a chunked body never announces.
///
/// # Errors
/// 413 when the body grows past `limit`, 408 when it is too slow, 400 when the connection
/// breaks mid-body.
pub async fn read_body<B>(body: B, limit: usize, timeout: Duration) -> Result<Bytes, GatewayError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let collect = Limited::new(body, limit).collect();
    match tokio::time::timeout(timeout, collect).await {
        Err(_elapsed) => Err(GatewayError::BodyTimeout),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(error)) if error.is::<LengthLimitError>() => {
            Err(GatewayError::BodyTooLarge { limit })
        }
        Ok(Err(error)) => Err(GatewayError::BodyRead(error)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;
    use hyper::body::Frame;
    use std::collections::VecDeque;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    /// A body without a length: the given chunks, then either the end or nothing, forever.
    struct Chunks {
        chunks: VecDeque<Bytes>,
        then_stall: bool,
    }

    impl Body for Chunks {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            match self.chunks.pop_front() {
                Some(chunk) => Poll::Ready(Some(Ok(Frame::data(chunk)))),
                None if self.then_stall => Poll::Pending,
                None => Poll::Ready(None),
            }
        }
    }

    #[test]
    fn only_a_single_chunked_coding_is_accepted() {
        let check = |values: &[&str]| {
            let mut headers = HeaderMap::new();
            for value in values {
                headers.append(TRANSFER_ENCODING, value.parse().unwrap());
            }
            check_transfer_coding(&headers).is_ok()
        };
        assert!(check(&[]));
        assert!(check(&["chunked"]));
        assert!(check(&["Chunked "]));
        assert!(!check(&["gzip, chunked"]));
        assert!(!check(&["gzip", "chunked"]));
        assert!(!check(&["chunked, chunked"]));
        assert!(!check(&["identity"]));
    }

    #[tokio::test]
    async fn a_body_within_the_limit_is_returned_unchanged() {
        let body = Full::new(Bytes::from_static(b"{\"a\": 1}"));
        let bytes = read_body(body, 8, Duration::from_secs(1)).await.unwrap();
        assert_eq!(&bytes[..], b"{\"a\": 1}");
    }

    #[tokio::test]
    async fn an_announced_length_over_the_limit_is_413_before_reading() {
        let body = Full::new(Bytes::from_static(b"123456789"));
        let error = check_announced_size(&body, 8).unwrap_err();
        assert!(matches!(error, GatewayError::BodyTooLarge { limit: 8 }));
        assert!(check_announced_size(&body, 9).is_ok());
        // And read on its own, the body is still refused.
        let error = read_body(body, 8, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(matches!(error, GatewayError::BodyTooLarge { limit: 8 }));
    }

    #[tokio::test]
    async fn a_streamed_body_over_the_limit_is_413() {
        let body = Chunks {
            chunks: std::iter::repeat_n(Bytes::from_static(b"abc"), 4).collect(),
            then_stall: false,
        };
        let error = read_body(body, 8, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(matches!(error, GatewayError::BodyTooLarge { limit: 8 }));
    }

    #[tokio::test]
    async fn a_streamed_body_within_the_limit_is_joined() {
        let body = Chunks {
            chunks: std::iter::repeat_n(Bytes::from_static(b"abc"), 2).collect(),
            then_stall: false,
        };
        let bytes = read_body(body, 8, Duration::from_secs(1)).await.unwrap();
        assert_eq!(&bytes[..], b"abcabc");
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stalls_is_408() {
        let body = Chunks {
            chunks: [Bytes::from_static(b"{")].into(),
            then_stall: true,
        };
        let error = read_body(body, 8, Duration::from_secs(10))
            .await
            .unwrap_err();
        assert!(matches!(error, GatewayError::BodyTimeout));
    }
}

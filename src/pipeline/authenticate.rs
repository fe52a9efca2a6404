//! Authenticate: verify the sender over the raw request before anything is parsed or recorded.
//!
//! Every comparison with a secret is constant-time: values are compared as HMAC tags (under a
//! key drawn at start) with ring's constant-time `verify`, which also hides their lengths.
//! Failures name what was wrong with the request, never the expected value.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use http::header::{HeaderMap, HeaderName, AUTHORIZATION};
use ring::hmac;
use ring::rand::SystemRandom;

use super::sign::{Signer, WEBHOOK_ID, WEBHOOK_SIGNATURE, WEBHOOK_TIMESTAMP};
use crate::config::Verify;
use crate::error::GatewayError;

/// A `webhook-timestamp` further than this from now is refused (replay protection).
pub const TIMESTAMP_TOLERANCE_SECS: u64 = 5 * 60;

/// A source's verifier, with its secrets prepared once.
pub struct Authenticator {
    scheme: Scheme,
}

enum Scheme {
    Token {
        expected: SecretTag,
        header: HeaderName,
    },
    Basic {
        user: SecretTag,
        password: SecretTag,
    },
    HmacSha256 {
        key: Box<hmac::Key>,
        header: HeaderName,
    },
    StandardWebhooks {
        signer: Signer,
    },
}

/// A secret kept only as an HMAC tag under a random key, so comparing a candidate is one
/// constant-time tag check.
struct SecretTag {
    // Boxed: ring's keys are a few hundred bytes and would bloat every `Scheme`.
    key: Box<hmac::Key>,
    tag: hmac::Tag,
}

impl SecretTag {
    fn new(secret: &[u8]) -> Option<Self> {
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &SystemRandom::new()).ok()?;
        let tag = hmac::sign(&key, secret);
        Some(Self {
            key: Box::new(key),
            tag,
        })
    }

    fn matches(&self, candidate: &[u8]) -> bool {
        hmac::verify(&self.key, candidate, self.tag.as_ref()).is_ok()
    }
}

impl Authenticator {
    /// Prepares `verify`; `None` if a secret cannot be used (config validation refuses those)
    /// or the system RNG fails.
    pub fn new(verify: &Verify) -> Option<Self> {
        let scheme = match verify {
            Verify::Token { secret, header } => Scheme::Token {
                expected: SecretTag::new(secret.expose().as_bytes())?,
                header: header.clone(),
            },
            Verify::Basic { user, password } => Scheme::Basic {
                user: SecretTag::new(user.expose().as_bytes())?,
                password: SecretTag::new(password.expose().as_bytes())?,
            },
            Verify::HmacSha256 { secret, header } => Scheme::HmacSha256 {
                key: Box::new(hmac::Key::new(
                    hmac::HMAC_SHA256,
                    secret.expose().as_bytes(),
                )),
                header: header.clone(),
            },
            Verify::StandardWebhooks { secret } => Scheme::StandardWebhooks {
                signer: Signer::new([secret.expose()])?,
            },
        };
        Some(Self { scheme })
    }

    /// The header carrying this source's credential (token or Basic), which is hookgate's and
    /// so is not forwarded upstream. Signatures are not secrets and stay.
    pub fn credential_header(&self) -> Option<&HeaderName> {
        match &self.scheme {
            Scheme::Token { header, .. } => Some(header),
            Scheme::Basic { .. } => Some(&AUTHORIZATION),
            Scheme::HmacSha256 { .. } | Scheme::StandardWebhooks { .. } => None,
        }
    }

    /// Checks the request; `query` is the URI's query string.
    ///
    /// # Errors
    /// [`GatewayError::Unauthorized`] (401) saying what is missing or wrong.
    pub fn authenticate(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
        body: &[u8],
    ) -> Result<(), GatewayError> {
        let refuse = |reason| Err(GatewayError::Unauthorized { reason });
        match &self.scheme {
            Scheme::Token { expected, header } => {
                // Both places are always accepted; a wrong value in one does not hide a
                // right value in the other.
                let from_header = headers.get(header).map(|value| value.as_bytes());
                let from_query = query.and_then(token_from_query);
                if from_header.is_none() && from_query.is_none() {
                    return refuse("missing token (?token= or the token header)");
                }
                let ok = from_header.is_some_and(|token| expected.matches(token))
                    | from_query.is_some_and(|token| expected.matches(&token));
                if ok {
                    Ok(())
                } else {
                    refuse("invalid token")
                }
            }
            Scheme::Basic { user, password } => {
                let Some(credentials) = basic_credentials(headers) else {
                    return refuse("missing or malformed Basic authorization");
                };
                let (given_user, given_password) = match credentials.iter().position(|&b| b == b':')
                {
                    Some(colon) => (&credentials[..colon], &credentials[colon + 1..]),
                    None => return refuse("missing or malformed Basic authorization"),
                };
                // Both checks always run, so timing does not tell which part was wrong.
                let ok = user.matches(given_user) & password.matches(given_password);
                if ok {
                    Ok(())
                } else {
                    refuse("invalid credentials")
                }
            }
            Scheme::HmacSha256 { key, header } => {
                let Some(value) = headers.get(header).and_then(|v| v.to_str().ok()) else {
                    return refuse("missing signature header");
                };
                let hex = value.trim();
                let hex = hex.strip_prefix("sha256=").unwrap_or(hex);
                let Some(signature) = decode_hex(hex) else {
                    return refuse("signature is not a hex SHA-256 digest");
                };
                match hmac::verify(key, body, &signature) {
                    Ok(()) => Ok(()),
                    Err(_) => refuse("signature does not match the body"),
                }
            }
            Scheme::StandardWebhooks { signer } => {
                let text = |name: &HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
                let (Some(id), Some(timestamp), Some(signatures)) = (
                    text(&WEBHOOK_ID),
                    text(&WEBHOOK_TIMESTAMP),
                    text(&WEBHOOK_SIGNATURE),
                ) else {
                    return refuse("missing webhook-id, webhook-timestamp or webhook-signature");
                };
                let Ok(sent_at) = timestamp.trim().parse::<u64>() else {
                    return refuse("webhook-timestamp is not unix seconds");
                };
                if now_unix().abs_diff(sent_at) > TIMESTAMP_TOLERANCE_SECS {
                    return refuse("webhook-timestamp is more than 5 minutes from now");
                }
                if signer.verify(id, timestamp.trim(), body, signatures) {
                    Ok(())
                } else {
                    refuse("no webhook-signature matches")
                }
            }
        }
    }
}

/// Seconds since the epoch (0 if the clock is before 1970, which then fails every timestamp).
pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

/// The (percent-decoded) value of `token=` in a query string.
fn token_from_query(query: &str) -> Option<Vec<u8>> {
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix("token="))
        .map(percent_decode)
}

fn percent_decode(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex_pair = bytes
            .get(i + 1..i + 3)
            .and_then(|pair| decode_hex(std::str::from_utf8(pair).ok()?));
        match (bytes[i], hex_pair) {
            (b'%', Some(decoded)) => {
                out.extend_from_slice(&decoded);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    out
}

fn basic_credentials(headers: &HeaderMap) -> Option<Vec<u8>> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;
    use crate::pipeline::test_headers as headers;

    fn reason(result: Result<(), GatewayError>) -> &'static str {
        match result {
            Err(GatewayError::Unauthorized { reason }) => reason,
            other => panic!("expected 401, got {other:?}"),
        }
    }

    fn token() -> Authenticator {
        Authenticator::new(&Verify::Token {
            secret: Secret("s3cr3t/+=".into()),
            header: HeaderName::from_static("x-hookgate-token"),
        })
        .unwrap()
    }

    #[test]
    fn token_in_header_or_query() {
        let auth = token();
        assert!(auth
            .authenticate(&headers(&[("x-hookgate-token", "s3cr3t/+=")]), None, b"")
            .is_ok());
        assert!(auth
            .authenticate(&HeaderMap::new(), Some("a=1&token=s3cr3t%2F%2B%3D"), b"")
            .is_ok());
        // A right query token is accepted even next to a wrong header one.
        let wrong_header = headers(&[("x-hookgate-token", "nope")]);
        assert!(auth
            .authenticate(&wrong_header, Some("token=s3cr3t%2F%2B%3D"), b"")
            .is_ok());
        assert_eq!(
            reason(auth.authenticate(&wrong_header, None, b"")),
            "invalid token"
        );
        assert!(
            reason(auth.authenticate(&HeaderMap::new(), Some("a=1"), b""))
                .starts_with("missing token")
        );
        assert_eq!(
            reason(auth.authenticate(&HeaderMap::new(), Some("token=s3cr3t"), b"")),
            "invalid token"
        );
    }

    #[test]
    fn basic_splits_user_and_password_at_the_first_colon() {
        let auth = Authenticator::new(&Verify::Basic {
            user: Secret("fp".into()),
            password: Secret("pa:ss".into()),
        })
        .unwrap();
        let basic = |credentials: &str| {
            let encoded = base64::engine::general_purpose::STANDARD.encode(credentials);
            headers(&[("authorization", &format!("Basic {encoded}"))])
        };
        assert!(auth.authenticate(&basic("fp:pa:ss"), None, b"").is_ok());
        assert_eq!(
            reason(auth.authenticate(&basic("fp:pass"), None, b"")),
            "invalid credentials"
        );
        assert_eq!(
            reason(auth.authenticate(&basic("xx:pa:ss"), None, b"")),
            "invalid credentials"
        );
        assert!(reason(auth.authenticate(&basic("nocolon"), None, b""))
            .starts_with("missing or malformed"));
        let bearer = headers(&[("authorization", "Bearer abc")]);
        assert!(reason(auth.authenticate(&bearer, None, b"")).starts_with("missing or malformed"));
    }

    #[test]
    fn hmac_sha256_hex_with_or_without_prefix() {
        let auth = Authenticator::new(&Verify::HmacSha256 {
            secret: Secret("key".into()),
            header: HeaderName::from_static("x-signature"),
        })
        .unwrap();
        let body = b"The quick brown fox jumps over the lazy dog";
        // RFC 4231-style known answer: HMAC-SHA256("key", body).
        let digest = "f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8";
        for value in [
            digest.to_owned(),
            format!("sha256={digest}"),
            digest.to_uppercase(),
        ] {
            assert!(
                auth.authenticate(&headers(&[("x-signature", &value)]), None, body)
                    .is_ok(),
                "{value}"
            );
        }
        let tampered = b"The quick brown fox jumps over the lazy cat";
        assert_eq!(
            reason(auth.authenticate(&headers(&[("x-signature", digest)]), None, tampered)),
            "signature does not match the body"
        );
        assert_eq!(
            reason(auth.authenticate(&HeaderMap::new(), None, body)),
            "missing signature header"
        );
        assert!(
            reason(auth.authenticate(&headers(&[("x-signature", "zz")]), None, body))
                .contains("hex")
        );
    }

    #[test]
    fn standard_webhooks_checks_signature_and_timestamp() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let auth = Authenticator::new(&Verify::StandardWebhooks {
            secret: Secret(secret.into()),
        })
        .unwrap();
        let signer = Signer::new([secret]).unwrap();
        let body = br#"{"event":{"id":1,"type":"x"}}"#;
        let signed_at = |ts: u64| {
            let signature = signer.signature("msg_1", ts, body);
            headers(&[
                ("webhook-id", "msg_1"),
                ("webhook-timestamp", &ts.to_string()),
                ("webhook-signature", signature.to_str().unwrap()),
            ])
        };
        let now = now_unix();
        assert!(auth.authenticate(&signed_at(now), None, body).is_ok());
        assert!(auth.authenticate(&signed_at(now - 299), None, body).is_ok());
        assert!(reason(auth.authenticate(&signed_at(now - 301), None, body)).contains("5 minutes"));
        assert!(reason(auth.authenticate(&signed_at(now + 301), None, body)).contains("5 minutes"));
        assert_eq!(
            reason(auth.authenticate(&signed_at(now), None, b"{}")),
            "no webhook-signature matches"
        );
        assert!(reason(auth.authenticate(&HeaderMap::new(), None, body))
            .starts_with("missing webhook-id"));
    }
}

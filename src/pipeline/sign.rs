//! Standard Webhooks signatures, both ways: verifying what a sender signed, and signing what
//! hookgate forwards so legacy apps can trust it.
//!
//! The signed content is `"{webhook-id}.{webhook-timestamp}.{body}"`, the MAC is HMAC-SHA256
//! under the secret's bytes (the base64 after `whsec_`), and a `webhook-signature` header is a
//! space-separated list of `v1,<base64 MAC>`: one per secret, so secrets can be rotated.

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use http::header::{HeaderName, HeaderValue};
use ring::hmac;
use subtle::ConstantTimeEq;

/// `webhook-id`: the message (event) id.
pub static WEBHOOK_ID: HeaderName = HeaderName::from_static("webhook-id");
/// `webhook-timestamp`: unix seconds when it was signed.
pub static WEBHOOK_TIMESTAMP: HeaderName = HeaderName::from_static("webhook-timestamp");
/// `webhook-signature`: `v1,<base64>` entries separated by spaces.
pub static WEBHOOK_SIGNATURE: HeaderName = HeaderName::from_static("webhook-signature");

/// Senders are inconsistent about padding their base64 secrets and signatures.
const LENIENT_BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The key bytes of a Standard Webhooks secret: base64, optionally prefixed `whsec_`.
/// `None` if it is not valid base64 or empty.
pub fn decode_whsec(secret: &str) -> Option<Vec<u8>> {
    let encoded = secret.strip_prefix("whsec_").unwrap_or(secret);
    LENIENT_BASE64
        .decode(encoded)
        .ok()
        .filter(|key| !key.is_empty())
}

/// A set of signing keys (several while a secret is being rotated).
#[derive(Debug)]
pub struct Signer {
    keys: Vec<hmac::Key>,
}

impl Signer {
    /// Keys from `whsec_` secrets; `None` if any does not decode (config validation has
    /// already refused those, so this is a second line of defence).
    pub fn new<'a>(secrets: impl IntoIterator<Item = &'a str>) -> Option<Self> {
        let keys = secrets
            .into_iter()
            .map(|secret| decode_whsec(secret).map(|key| hmac::Key::new(hmac::HMAC_SHA256, &key)))
            .collect::<Option<Vec<_>>>()?;
        Some(Self { keys })
    }

    /// The `webhook-signature` value for `id`, `timestamp` and `body`: one `v1,` entry per key.
    pub fn signature(&self, id: &str, timestamp: u64, body: &[u8]) -> HeaderValue {
        let timestamp = timestamp.to_string();
        let mut value = String::with_capacity(self.keys.len() * 48);
        for key in &self.keys {
            let tag = mac(key, id, &timestamp, body);
            if !value.is_empty() {
                value.push(' ');
            }
            value.push_str("v1,");
            STANDARD.encode_string(tag.as_ref(), &mut value);
        }
        // Base64, commas and spaces only: always a valid header value.
        HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    /// Whether any `v1,` entry of `signatures` is a valid MAC of the content under any key.
    /// Each key's MAC is computed once, however many entries there are, and compared with
    /// every entry in constant time.
    pub fn verify(&self, id: &str, timestamp: &str, body: &[u8], signatures: &str) -> bool {
        let entries: Vec<Vec<u8>> = signatures
            .split(' ')
            .filter_map(|entry| entry.strip_prefix("v1,"))
            .filter_map(|encoded| LENIENT_BASE64.decode(encoded).ok())
            .collect();
        if entries.is_empty() {
            return false;
        }
        self.keys.iter().any(|key| {
            let tag = mac(key, id, timestamp, body);
            entries
                .iter()
                .any(|entry| bool::from(tag.as_ref().ct_eq(entry.as_slice())))
        })
    }
}

/// The MAC of `"{id}.{timestamp}.{body}"` under `key`, fed in pieces: the body is not copied
/// into a signed-content buffer.
fn mac(key: &hmac::Key, id: &str, timestamp: &str, body: &[u8]) -> hmac::Tag {
    let mut mac = hmac::Context::with_key(key);
    for piece in [id.as_bytes(), b".", timestamp.as_bytes(), b".", body] {
        mac.update(piece);
    }
    mac.sign()
}

#[cfg(test)]
mod tests {
    use super::*;

    // The Standard Webhooks reference vector, from the test suite of its libraries
    // (standard-webhooks/standard-webhooks, "sign function works").
    const SPEC_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const SPEC_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const SPEC_TIMESTAMP: u64 = 1614265330;
    const SPEC_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SPEC_SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    #[test]
    fn signs_the_specifications_test_vector() {
        let signer = Signer::new([SPEC_SECRET]).unwrap();
        let signature = signer.signature(SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY);
        assert_eq!(signature, SPEC_SIGNATURE);
    }

    #[test]
    fn verifies_the_specifications_test_vector_and_nothing_else() {
        let signer = Signer::new([SPEC_SECRET]).unwrap();
        let ts = SPEC_TIMESTAMP.to_string();
        assert!(signer.verify(SPEC_ID, &ts, SPEC_BODY, SPEC_SIGNATURE));
        assert!(!signer.verify(SPEC_ID, &ts, br#"{"test": 2432232315}"#, SPEC_SIGNATURE));
        assert!(!signer.verify(SPEC_ID, "1614265331", SPEC_BODY, SPEC_SIGNATURE));
        assert!(!signer.verify("msg_other", &ts, SPEC_BODY, SPEC_SIGNATURE));
        assert!(!signer.verify(
            SPEC_ID,
            &ts,
            SPEC_BODY,
            "v2,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        ));
        // Several signatures: one valid entry is enough.
        let several = format!("v1,bm90IGl0 {SPEC_SIGNATURE}");
        assert!(signer.verify(SPEC_ID, &ts, SPEC_BODY, &several));
        // Part of the right tag is not the tag, nor is the tag with a byte more.
        let tag = LENIENT_BASE64
            .decode(SPEC_SIGNATURE.strip_prefix("v1,").unwrap())
            .unwrap();
        for wrong in [&tag[..16], &[tag.as_slice(), &[0]].concat()[..], &[][..]] {
            let entry = format!("v1,{}", STANDARD.encode(wrong));
            assert!(!signer.verify(SPEC_ID, &ts, SPEC_BODY, &entry), "{entry}");
        }
    }

    #[test]
    fn rotation_signs_with_every_secret() {
        let other = "whsec_c2Vjb25kLXNlY3JldC1mb3Itcm90YXRpb24=";
        let signer = Signer::new([SPEC_SECRET, other]).unwrap();
        let value = signer.signature(SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY);
        let entries: Vec<&str> = value.to_str().unwrap().split(' ').collect();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0], SPEC_SIGNATURE);
        let only_other = Signer::new([other]).unwrap();
        let ts = SPEC_TIMESTAMP.to_string();
        assert!(only_other.verify(SPEC_ID, &ts, SPEC_BODY, entries[1]));
    }

    #[test]
    fn whsec_secrets_decode_with_or_without_prefix_and_padding() {
        assert_eq!(decode_whsec("whsec_aGVsbG8="), Some(b"hello".to_vec()));
        assert_eq!(decode_whsec("aGVsbG8"), Some(b"hello".to_vec()));
        assert_eq!(decode_whsec("whsec_"), None);
        assert_eq!(decode_whsec("whsec_not base64!"), None);
    }
}

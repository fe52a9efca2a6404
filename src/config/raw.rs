//! The TOML file, 1:1. No defaults and no checks beyond what serde does: `validate` turns
//! this into [`Config`](super::Config). Every table denies unknown keys, so a typo is an
//! error with its line instead of a silently ignored setting.
//!
//! The only parsing done here is for values whose error should carry the TOML line:
//! durations and the string-or-list `event_type`.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;

use super::duration::parse_duration;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    pub server: Option<RawServer>,
    pub admin: Option<RawAdmin>,
    #[serde(default)]
    pub sources: Vec<RawSource>,
    #[serde(default)]
    pub dedup: RawDedup,
    #[serde(default)]
    pub rate_limit: RawRateLimit,
    /// A `BTreeMap` so that upstreams come out sorted by name.
    #[serde(default)]
    pub upstreams: BTreeMap<String, RawUpstream>,
    #[serde(default)]
    pub routes: Vec<RawRoute>,
}

/// `[server]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawServer {
    pub listen: Option<String>,
    pub max_body_bytes: Option<u64>,
    pub unrouted_status: Option<u16>,
    pub respond_within: Option<RawDuration>,
    pub shutdown_timeout: Option<RawDuration>,
    pub header_timeout: Option<RawDuration>,
    pub body_timeout: Option<RawDuration>,
    pub idle_timeout: Option<RawDuration>,
    pub max_connections: Option<u64>,
    pub workers: Option<u64>,
    pub tls: Option<RawTls>,
}

/// `[server.tls]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTls {
    pub cert: Option<String>,
    pub key: Option<String>,
    pub self_signed: Option<bool>,
}

/// `[admin]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAdmin {
    pub listen: String,
}

/// One `[[sources]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSource {
    pub name: String,
    pub path: String,
    pub event_id: Option<String>,
    pub event_type: Option<String>,
    pub verify: Option<RawVerify>,
}

/// `[sources.verify]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawVerify {
    pub scheme: String,
    pub secret: Option<String>,
    pub secret_env: Option<String>,
    pub header: Option<String>,
}

/// `[dedup]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDedup {
    pub ttl: Option<RawDuration>,
    pub max_entries: Option<u64>,
    pub backend: Option<String>,
    pub redis_url: Option<String>,
    pub redis_url_env: Option<String>,
    pub key_prefix: Option<String>,
}

/// `[rate_limit]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRateLimit {
    pub per_client: Option<RawQuota>,
    pub global: Option<RawQuota>,
    /// CIDRs (or single addresses) of proxies whose `X-Forwarded-For` is believed.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
}

/// `{ per_second = N, burst = M }`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawQuota {
    pub per_second: u32,
    pub burst: u32,
}

/// `[upstreams.NAME]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawUpstream {
    pub url: String,
    pub timeout: Option<RawDuration>,
    pub rate_limit: Option<RawQuota>,
    pub max_in_flight: Option<u64>,
    pub sign: Option<RawSign>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Header name -> name of the environment variable holding the value.
    #[serde(default)]
    pub headers_env: BTreeMap<String, String>,
    #[serde(default)]
    pub redact: Vec<String>,
    /// PEM file of extra CAs trusted for this upstream (besides the webpki roots).
    pub ca: Option<String>,
    /// PEM chain presented to the upstream (mTLS); needs `client_key`.
    pub client_cert: Option<String>,
    /// PEM key of `client_cert`.
    pub client_key: Option<String>,
}

/// Upstream `sign`: exactly one of the four keys.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSign {
    pub secret: Option<String>,
    pub secret_env: Option<String>,
    /// Several secrets during a rotation: each one signs, receivers accept any.
    pub secrets: Option<Vec<String>>,
    pub secrets_env: Option<Vec<String>>,
}

/// One `[[routes]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRoute {
    pub event_type: OneOrMany,
    pub source: Option<String>,
    /// JSON pointer -> expected scalar; kept as TOML values so validation can name the
    /// offending type (tables, arrays and datetimes are refused there).
    #[serde(rename = "match", default)]
    pub matches: BTreeMap<String, toml::Value>,
    pub upstream: Option<String>,
    pub upstreams: Option<Vec<String>>,
}

/// A duration parsed while deserializing, so a bad one is reported with its TOML line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RawDuration(pub Duration);

impl<'de> Deserialize<'de> for RawDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DurationVisitor;

        impl Visitor<'_> for DurationVisitor {
            type Value = RawDuration;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration string such as \"10s\" or \"250ms\"")
            }

            fn visit_str<E: de::Error>(self, s: &str) -> Result<RawDuration, E> {
                parse_duration(s).map(RawDuration).map_err(E::custom)
            }
        }

        deserializer.deserialize_str(DurationVisitor)
    }
}

/// `event_type = "x"` or `event_type = ["x", "y"]`.
///
/// Hand-written rather than `#[serde(untagged)]`, whose error ("data did not match any
/// variant") would not say what is expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OneOrMany(pub Vec<String>);

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct OneOrManyVisitor;

        impl<'de> Visitor<'de> for OneOrManyVisitor {
            type Value = OneOrMany;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or an array of strings")
            }

            fn visit_str<E: de::Error>(self, s: &str) -> Result<OneOrMany, E> {
                Ok(OneOrMany(vec![s.to_owned()]))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<OneOrMany, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<String>()? {
                    items.push(item);
                }
                Ok(OneOrMany(items))
            }
        }

        deserializer.deserialize_any(OneOrManyVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_type_accepts_a_string_or_a_list() {
        let route: RawRoute =
            toml::from_str("event_type = \"a\"\nupstream = \"u\"").expect("string form");
        assert_eq!(route.event_type, OneOrMany(vec!["a".into()]));
        let route: RawRoute =
            toml::from_str("event_type = [\"a\", \"b*\"]\nupstream = \"u\"").expect("list form");
        assert_eq!(route.event_type, OneOrMany(vec!["a".into(), "b*".into()]));
    }

    #[test]
    fn event_type_of_another_type_says_what_is_expected() {
        let err = toml::from_str::<RawRoute>("event_type = 5\nupstream = \"u\"")
            .expect_err("integer event_type");
        assert!(
            err.message().contains("a string or an array of strings"),
            "{}",
            err.message()
        );
    }

    #[test]
    fn durations_are_parsed_with_the_value_span() {
        let text = "[server]\nlisten = \"127.0.0.1:1\"\nrespond_within = \"10x\"\n";
        let err = toml::from_str::<RawConfig>(text).expect_err("bad duration");
        assert!(
            err.message().contains("invalid duration \"10x\""),
            "{}",
            err.message()
        );
        let span = err.span().expect("span");
        assert_eq!(&text[span], "\"10x\"");
    }

    #[test]
    fn a_number_for_a_duration_names_the_expected_form() {
        let err = toml::from_str::<RawConfig>("[server]\nbody_timeout = 10\n")
            .expect_err("integer duration");
        assert!(
            err.message().contains("a duration string such as"),
            "{}",
            err.message()
        );
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = toml::from_str::<RawConfig>("[dedup]\nttl = \"1h\"\nttl_seconds = 5\n")
            .expect_err("unknown key");
        assert!(
            err.message().contains("unknown field `ttl_seconds`"),
            "{}",
            err.message()
        );
    }
}

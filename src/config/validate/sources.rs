//! `[[sources]]` and their `verify` tables.

use std::collections::HashMap;

use http::uri::PathAndQuery;
use http::HeaderName;

use super::{KeyPath, Validator};
use crate::config::raw::{RawSource, RawVerify};
use crate::config::{defaults, Secret, Source, Verify};

/// Default header for `scheme = "token"`.
const TOKEN_HEADER: &str = "x-hookgate-token";

/// Default header for `scheme = "hmac-sha256"`.
const HMAC_HEADER: &str = "x-signature";

impl Validator<'_> {
    pub(super) fn sources(&mut self, raw: Vec<RawSource>) -> Vec<Source> {
        let key = KeyPath::root().key("sources");
        if raw.is_empty() {
            self.problem(&key, "at least one [[sources]] entry is required");
        }
        let mut names: HashMap<String, usize> = HashMap::new();
        let mut paths: HashMap<String, usize> = HashMap::new();
        let mut sources = Vec::with_capacity(raw.len());
        for (i, source) in raw.into_iter().enumerate() {
            let key = key.index(i);
            if source.name.is_empty() {
                self.problem(&key.key("name"), "must not be empty");
            } else if let Some(first) = names.insert(source.name.clone(), i) {
                self.problem(
                    &key.key("name"),
                    format!(
                        "duplicate source name {:?} (also sources[{first}])",
                        source.name
                    ),
                );
            }
            self.source_path(&key.key("path"), &source.path);
            if let Some(first) = paths.insert(source.path.clone(), i) {
                self.problem(
                    &key.key("path"),
                    format!(
                        "duplicate path {:?} (also sources[{first}].path)",
                        source.path
                    ),
                );
            }
            let event_id = source
                .event_id
                .unwrap_or_else(|| defaults::EVENT_ID_POINTER.to_owned());
            self.pointer(&key.key("event_id"), &event_id);
            let event_type = source
                .event_type
                .unwrap_or_else(|| defaults::EVENT_TYPE_POINTER.to_owned());
            self.pointer(&key.key("event_type"), &event_type);
            let verify = source
                .verify
                .and_then(|verify| self.verify(&key.key("verify"), verify));
            sources.push(Source {
                name: source.name,
                path: source.path,
                event_id,
                event_type,
                verify,
            });
        }
        sources
    }

    fn source_path(&mut self, key: &KeyPath, path: &str) {
        if !path.starts_with('/') {
            self.problem(key, format!("must start with \"/\", not {path:?}"));
            return;
        }
        // The router compares request paths, which never carry a query or fragment.
        let plain = path
            .parse::<PathAndQuery>()
            .is_ok_and(|parsed| parsed.query().is_none() && !path.contains('#'));
        if !plain {
            self.problem(
                key,
                format!("{path:?} must be a plain URL path (no query, fragment or spaces)"),
            );
        }
    }

    fn verify(&mut self, key: &KeyPath, raw: RawVerify) -> Option<Verify> {
        // `None`: the scheme has no configurable header.
        let default_header = match raw.scheme.as_str() {
            "token" => Some(TOKEN_HEADER),
            "hmac-sha256" => Some(HMAC_HEADER),
            "basic" | "standard-webhooks" => None,
            other => {
                self.problem(
                    &key.key("scheme"),
                    format!(
                        "unknown scheme {other:?}: expected \"token\", \"basic\", \
                         \"hmac-sha256\" or \"standard-webhooks\""
                    ),
                );
                return None;
            }
        };
        let header = match (&raw.header, default_header) {
            (Some(_), None) => {
                self.problem(
                    &key.key("header"),
                    format!("is not used by scheme {:?}", raw.scheme),
                );
                None
            }
            (Some(name), Some(_)) => self.header_name(&key.key("header"), name),
            (None, Some(default)) => Some(HeaderName::from_static(default)),
            (None, None) => None,
        };
        let (secret, secret_key) = self.secret(key, raw.secret, raw.secret_env)?;
        match raw.scheme.as_str() {
            "token" => Some(Verify::Token {
                secret,
                header: header?,
            }),
            "hmac-sha256" => Some(Verify::HmacSha256 {
                secret,
                header: header?,
            }),
            "basic" => match secret.expose().split_once(':') {
                Some((user, password)) if !user.is_empty() && !password.is_empty() => {
                    Some(Verify::Basic {
                        user: Secret(user.to_owned()),
                        password: Secret(password.to_owned()),
                    })
                }
                Some(_) => {
                    self.problem(&secret_key, "user and password must both be non-empty");
                    None
                }
                None => {
                    self.problem(
                        &secret_key,
                        "must be \"user:password\" for scheme \"basic\" (no ':' found)",
                    );
                    None
                }
            },
            _ => {
                self.webhook_secret(&secret_key, &secret);
                Some(Verify::StandardWebhooks { secret })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::load::tests::{edit, load, only_problem, problems, with, MINIMAL};

    #[test]
    fn duplicate_source_paths_name_the_first_one() {
        let text = with("[[sources]]\nname = \"fp2\"\npath = \"/webhooks/fp\"");
        let p = only_problem(&text, "sources[1].path");
        assert_eq!(
            p.reason,
            "duplicate path \"/webhooks/fp\" (also sources[0].path)"
        );
    }

    #[test]
    fn duplicate_and_empty_source_names_are_refused() {
        let text = with(
            "[[sources]]\nname = \"fp\"\npath = \"/b\"\n[[sources]]\nname = \"\"\npath = \"/c\"",
        );
        let problems = problems(&text);
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["sources[1].name", "sources[2].name"]);
        assert!(problems[0]
            .reason
            .starts_with("duplicate source name \"fp\""));
        assert_eq!(problems[1].reason, "must not be empty");
    }

    #[test]
    fn source_path_must_be_a_plain_absolute_path() {
        let p = only_problem(
            &edit("path = \"/webhooks/fp\"", "path = \"webhooks\""),
            "sources[0].path",
        );
        assert!(p.reason.starts_with("must start with \"/\""), "{p}");
        let p = only_problem(
            &edit("path = \"/webhooks/fp\"", "path = \"/w?x=1\""),
            "sources[0].path",
        );
        assert!(p.reason.contains("plain URL path"), "{p}");
    }

    #[test]
    fn at_least_one_source_is_required() {
        let text = MINIMAL.replace("[[sources]]\nname = \"fp\"\npath = \"/webhooks/fp\"\n", "");
        let p = only_problem(&text, "sources");
        assert_eq!(p.reason, "at least one [[sources]] entry is required");
        assert_eq!(p.line, None);
    }

    #[test]
    fn secret_and_secret_env_together_are_refused() {
        let text = edit("path = \"/webhooks/fp\"", "path = \"/webhooks/fp\"\nverify = { scheme = \"token\", secret = \"a\", secret_env = \"B\" }");
        let p = only_problem(&text, "sources[0].verify");
        assert_eq!(p.reason, "set either `secret` or `secret_env`, not both");
    }

    #[test]
    fn verify_scheme_must_be_known() {
        let text = edit(
            "path = \"/webhooks/fp\"",
            "path = \"/webhooks/fp\"\nverify = { scheme = \"jwt\", secret = \"a\" }",
        );
        let p = only_problem(&text, "sources[0].verify.scheme");
        assert!(p.reason.starts_with("unknown scheme \"jwt\""), "{p}");
    }

    #[test]
    fn basic_secret_needs_a_colon_and_is_never_echoed() {
        let text = edit(
            "path = \"/webhooks/fp\"",
            "path = \"/webhooks/fp\"\nverify = { scheme = \"basic\", secret = \"hunter2\" }",
        );
        let err = load(&text).expect_err("no colon");
        assert_eq!(err.problems[0].key, "sources[0].verify.secret");
        assert!(err.problems[0].reason.contains("\"user:password\""));
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn header_only_applies_to_token_and_hmac() {
        let text = edit("path = \"/webhooks/fp\"", "path = \"/webhooks/fp\"\nverify = { scheme = \"basic\", secret = \"a:b\", header = \"x-a\" }");
        let p = only_problem(&text, "sources[0].verify.header");
        assert_eq!(p.reason, "is not used by scheme \"basic\"");
    }

    #[test]
    fn header_names_are_checked() {
        let text = edit("path = \"/webhooks/fp\"", "path = \"/webhooks/fp\"\nverify = { scheme = \"token\", secret = \"a\", header = \"bad header\" }");
        let p = only_problem(&text, "sources[0].verify.header");
        assert_eq!(p.reason, "invalid header name \"bad header\"");
        let text = edit(
            "url = \"http://127.0.0.1:3000/hook\"",
            "url = \"http://127.0.0.1:3000/hook\"\nheaders = { \"x key\" = \"v\" }",
        );
        only_problem(&text, "upstreams.billing.headers.\"x key\"");
    }
}

//! [`RawConfig`] -> [`Config`]: defaults, environment lookups and every check.
//!
//! Split by section: [`server`] (`[server]`, `[admin]`, `[dedup]`, `[rate_limit]`),
//! [`sources`], [`upstreams`], [`routes`]; helpers shared by them live here.
//!
//! Each check records a problem and carries on with a placeholder value, so one run reports
//! everything that is wrong; the placeholders never escape because any problem turns the
//! result into an error.

mod routes;
mod server;
mod sources;
mod upstreams;

use std::env::VarError;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::Path;
use std::time::Duration;

use http::HeaderName;

use crate::config::duration::format_duration;
use crate::config::load::{EnvLookup, KeyPath};
use crate::config::raw::{RawConfig, RawDuration, RawQuota};
use crate::config::{Config, Quota, Secret};
use crate::server::tls;

/// Turns the raw file into a [`Config`], or returns every problem found.
pub(crate) fn validate(
    raw: RawConfig,
    path: &Path,
    env: EnvLookup<'_>,
) -> Result<Config, Vec<(KeyPath, String)>> {
    let mut v = Validator {
        issues: Vec::new(),
        env,
        dir: path.parent().unwrap_or(Path::new("")),
    };
    let server = v.server(raw.server.unwrap_or_default());
    let admin = raw.admin.map(|admin| v.admin(admin, server.listen));
    let sources = v.sources(raw.sources);
    let dedup = v.dedup(raw.dedup);
    let rate_limit = v.rate_limit(raw.rate_limit);
    let upstreams = v.upstreams(raw.upstreams);
    let routes = v.routes(raw.routes, &sources, &upstreams);
    let config = Config {
        path: path.to_path_buf(),
        server,
        admin,
        sources,
        dedup,
        rate_limit,
        upstreams,
        routes,
    };
    if !v.issues.is_empty() {
        return Err(v.issues);
    }
    Ok(config)
}

struct Validator<'a> {
    issues: Vec<(KeyPath, String)>,
    env: EnvLookup<'a>,
    /// Relative TLS paths resolve against this (the config file's directory).
    dir: &'a Path,
}

impl Validator<'_> {
    fn problem(&mut self, key: &KeyPath, reason: impl Into<String>) {
        self.issues.push((key.clone(), reason.into()));
    }

    /// Reads a certificate chain and its key with the loader the server and the upstream
    /// clients use, and reports a file that cannot be used, or a key that does not belong to
    /// the chain, at `cert_at` or `key_at`: `hookgate check` catches it, not a handshake.
    fn certified_pair(&mut self, cert_at: &KeyPath, key_at: &KeyPath, cert: &Path, key: &Path) {
        if let Err(error) = tls::read_certified_key(cert, key, &tls::provider()) {
            let at = if error.path() == cert {
                cert_at
            } else {
                key_at
            };
            self.problem(at, error.to_string());
        }
    }

    /// `secret = "..."` or `secret_env = "VAR"`: exactly one, non-empty. Returns the secret
    /// and the key it came from (for later problems about its format).
    fn secret(
        &mut self,
        table: &KeyPath,
        literal: Option<String>,
        env_name: Option<String>,
    ) -> Option<(Secret, KeyPath)> {
        self.literal_or_env(table, "secret", literal, env_name)
            .map(|(value, key)| (Secret(value), key))
    }

    fn literal_or_env(
        &mut self,
        table: &KeyPath,
        name: &str,
        literal: Option<String>,
        env_name: Option<String>,
    ) -> Option<(String, KeyPath)> {
        let env_key = format!("{name}_env");
        match (literal, env_name) {
            (Some(_), Some(_)) => {
                self.problem(
                    table,
                    format!("set either `{name}` or `{env_key}`, not both"),
                );
                None
            }
            (None, None) => {
                self.problem(table, format!("`{name}` or `{env_key}` is required"));
                None
            }
            (Some(value), None) => {
                let key = table.key(name);
                if value.is_empty() {
                    self.problem(&key, "must not be empty");
                    return None;
                }
                Some((value, key))
            }
            (None, Some(var)) => {
                let key = table.key(env_key);
                self.env_var(&key, &var).map(|value| (value, key))
            }
        }
    }

    /// Reads `var`; the message names the variable, never its value.
    fn env_var(&mut self, key: &KeyPath, var: &str) -> Option<String> {
        if var.is_empty() {
            self.problem(key, "must name an environment variable");
            return None;
        }
        let reason = match (self.env)(var) {
            Ok(value) if !value.is_empty() => return Some(value),
            Ok(_) => format!("environment variable {var} is empty"),
            Err(VarError::NotPresent) => format!("environment variable {var} is not set"),
            Err(VarError::NotUnicode(_)) => {
                format!("environment variable {var} is not valid UTF-8")
            }
        };
        self.problem(key, reason);
        None
    }

    /// Standard Webhooks secrets are base64, optionally prefixed `whsec_`; checking now
    /// avoids a signer or verifier that fails on every request.
    fn webhook_secret(&mut self, key: &KeyPath, secret: &Secret) {
        let body = secret
            .expose()
            .strip_prefix("whsec_")
            .unwrap_or(secret.expose());
        if !is_base64(body) {
            self.problem(
                key,
                "must be \"whsec_\" followed by base64, as the sender issues it",
            );
        }
    }

    fn quota(&mut self, key: &KeyPath, raw: RawQuota) -> Option<Quota> {
        let per_second = NonZeroU32::new(raw.per_second);
        if per_second.is_none() {
            self.problem(
                &key.key("per_second"),
                "must be at least 1 (omit the limit for unlimited)",
            );
        }
        let burst = NonZeroU32::new(raw.burst);
        if burst.is_none() {
            self.problem(&key.key("burst"), "must be at least 1");
        }
        Some(Quota {
            per_second: per_second?,
            burst: burst?,
        })
    }

    fn duration(
        &mut self,
        key: &KeyPath,
        raw: Option<RawDuration>,
        default: Duration,
        max: Duration,
    ) -> Duration {
        let value = raw.map_or(default, |RawDuration(d)| d);
        if value.is_zero() {
            self.problem(key, "must be greater than zero");
        } else if value > max {
            self.problem(
                key,
                format!(
                    "{} is too long: at most {}",
                    format_duration(value),
                    format_duration(max)
                ),
            );
        }
        value
    }

    fn header_name(&mut self, key: &KeyPath, name: &str) -> Option<HeaderName> {
        let header = HeaderName::from_bytes(name.as_bytes()).ok();
        if header.is_none() {
            self.problem(key, format!("invalid header name {name:?}"));
        }
        header
    }

    /// A JSON pointer (RFC 6901): empty, or `/`-separated names where `~` is only `~0`/`~1`.
    fn pointer(&mut self, key: &KeyPath, pointer: &str) -> bool {
        let reason = if !pointer.is_empty() && !pointer.starts_with('/') {
            format!(
                "invalid JSON pointer {pointer:?}: must be empty or start with \"/\" (e.g. \"/event/id\")"
            )
        } else if pointer
            .split('~')
            .skip(1)
            .any(|after| !after.starts_with(['0', '1']))
        {
            format!(
                "invalid JSON pointer {pointer:?}: write \"~\" as \"~0\" and a \"/\" inside a name as \"~1\""
            )
        } else {
            return true;
        };
        self.problem(key, reason);
        false
    }
}

fn placeholder_addr() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 0))
}

/// Standard base64 with optional `=` padding (the Standard Webhooks secret format).
fn is_base64(text: &str) -> bool {
    let body = text.trim_end_matches('=');
    let padding = text.len() - body.len();
    !body.is_empty()
        && padding <= 2
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
        && body.len() % 4 != 1
        && (padding == 0 || text.len().is_multiple_of(4))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load::tests::{edit, load, load_with_env, only_problem, problems, with};

    #[test]
    fn pointer_without_leading_slash_is_refused() {
        let text = edit(
            "path = \"/webhooks/fp\"",
            "path = \"/webhooks/fp\"\nevent_id = \"event/id\"",
        );
        let p = only_problem(&text, "sources[0].event_id");
        assert!(
            p.reason.starts_with(
                "invalid JSON pointer \"event/id\": must be empty or start with \"/\""
            ),
            "{p}"
        );
        assert_eq!(p.line, Some(8));
    }

    #[test]
    fn pointer_with_a_bare_tilde_is_refused() {
        let text =
            with("[upstreams.billing2]\nurl = \"http://a\"\nredact = [\"/a~2b\", \"/ok~0~1\"]");
        let p = only_problem(&text, "upstreams.billing2.redact[0]");
        assert!(p.reason.contains("\"~0\""), "{p}");
    }

    #[test]
    fn zero_duration_is_refused() {
        let text = edit(
            "listen = \"127.0.0.1:8080\"",
            "listen = \"127.0.0.1:8080\"\nrespond_within = \"0s\"",
        );
        let p = only_problem(&text, "server.respond_within");
        assert_eq!(p.reason, "must be greater than zero");
    }

    #[test]
    fn overlong_upstream_timeout_is_refused() {
        let text = edit(
            "url = \"http://127.0.0.1:3000/hook\"",
            "url = \"http://127.0.0.1:3000/hook\"\ntimeout = \"2h\"",
        );
        let p = only_problem(&text, "upstreams.billing.timeout");
        assert_eq!(p.reason, "2h is too long: at most 1h");
    }

    #[test]
    fn zero_per_second_is_refused() {
        let p = only_problem(
            &with("[rate_limit]\nper_client = { per_second = 0, burst = 10 }"),
            "rate_limit.per_client.per_second",
        );
        assert!(p.reason.starts_with("must be at least 1"), "{p}");
    }

    #[test]
    fn zero_burst_is_refused() {
        let text = edit(
            "url = \"http://127.0.0.1:3000/hook\"",
            "url = \"http://127.0.0.1:3000/hook\"\nrate_limit = { per_second = 5, burst = 0 }",
        );
        only_problem(&text, "upstreams.billing.rate_limit.burst");
    }

    #[test]
    fn counts_must_be_at_least_one() {
        let text = edit(
            "listen = \"127.0.0.1:8080\"",
            "listen = \"127.0.0.1:8080\"\nmax_connections = 0\nmax_body_bytes = 0",
        );
        let text = text.replace(
            "url = \"http://127.0.0.1:3000/hook\"",
            "url = \"http://127.0.0.1:3000/hook\"\nmax_in_flight = 0",
        );
        let text = format!("{text}\n[dedup]\nmax_entries = 0\n");
        let problems = problems(&text);
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "server.max_body_bytes",
                "server.max_connections",
                "dedup.max_entries",
                "upstreams.billing.max_in_flight"
            ]
        );
        assert!(problems[0]
            .reason
            .starts_with("must be between 1 and 67108864"));
    }

    #[test]
    fn workers_are_bounded() {
        let config_with = |workers: &str| {
            edit(
                "listen = \"127.0.0.1:8080\"",
                &format!("listen = \"127.0.0.1:8080\"\nworkers = {workers}"),
            )
        };
        let p = only_problem(&config_with("257"), "server.workers");
        assert!(
            p.reason.contains("between 0 (one per core) and 256"),
            "{p:?}"
        );
        assert_eq!(
            load(&config_with("256")).expect("256 loads").server.workers,
            256
        );
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(
            load(&config_with("0")).expect("0 loads").server.workers,
            cores
        );
    }

    #[test]
    fn missing_env_var_names_the_variable() {
        // Read from the real environment, where this name is surely unset.
        let text = edit(
            "path = \"/webhooks/fp\"",
            "path = \"/webhooks/fp\"\nverify = { scheme = \"token\", secret_env = \"HOOKGATE_TEST_UNSET_5F0C1E\" }",
        );
        let err = crate::config::Config::from_toml_str(&text, Path::new("x.toml"))
            .expect_err("unset env var");
        assert_eq!(err.problems.len(), 1, "{err}");
        assert_eq!(err.problems[0].key, "sources[0].verify.secret_env");
        assert_eq!(
            err.problems[0].reason,
            "environment variable HOOKGATE_TEST_UNSET_5F0C1E is not set"
        );
    }

    #[test]
    fn empty_env_var_is_refused() {
        let text = edit(
            "url = \"http://127.0.0.1:3000/hook\"",
            "url = \"http://127.0.0.1:3000/hook\"\nheaders_env = { \"x-api-key\" = \"API_KEY\" }",
        );
        let err = load_with_env(&text, &[("API_KEY", "")]).expect_err("empty env var");
        assert_eq!(
            err.problems[0].key,
            "upstreams.billing.headers_env.x-api-key"
        );
        assert_eq!(
            err.problems[0].reason,
            "environment variable API_KEY is empty"
        );
    }

    #[test]
    fn several_problems_are_all_reported_in_order() {
        let text = r#"
[server]
listen = "127.0.0.1:8080"
unrouted_status = 200

[[sources]]
name = "fp"
path = "fp"

[upstreams.billing]
url = "ftp://x"

[[routes]]
event_type = "lead_[ab]"
upstream = "crm"
"#;
        let err = load(text).expect_err("four problems");
        let lines: Vec<String> = err.to_string().lines().map(str::to_owned).collect();
        assert_eq!(lines.len(), 5, "{err}");
        let expected_starts = [
            "/etc/hookgate/config.toml: server.unrouted_status (line 4): must never be 200",
            "/etc/hookgate/config.toml: sources[0].path (line 8): must start with \"/\"",
            "/etc/hookgate/config.toml: upstreams.billing.url (line 11): upstream \"billing\": URL \"ftp://x\" scheme",
            "/etc/hookgate/config.toml: routes[0].event_type (line 14): unsupported glob syntax",
            "/etc/hookgate/config.toml: routes[0].upstream (line 15): unknown upstream \"crm\"",
        ];
        for (line, start) in lines.iter().zip(expected_starts) {
            assert!(
                line.starts_with(start),
                "{line}\ndoes not start with\n{start}"
            );
        }
    }

    #[test]
    fn base64_check_accepts_padded_and_unpadded() {
        for good in [
            "c2VjcmV0",
            "c2VjcmV0MQ==",
            "c2VjcmV0MQ",
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        ] {
            assert!(is_base64(good), "{good}");
        }
        for bad in ["", "=", "abcde", "ab cd", "c2VjcmV0MQ=", "ab==="] {
            assert!(!is_base64(bad), "{bad}");
        }
    }
}

//! Keys the contract defines whose feature is not built yet.
//!
//! Accepting such a key and ignoring it would be worse than refusing it: an operator who sets
//! `[sources.verify]` believes unauthenticated events are refused. So each one is a config
//! problem until its feature lands, naming the issue that tracks it. Delete a line here when
//! its feature is built.

use super::Validator;
use crate::config::load::KeyPath;
use crate::config::Config;

impl Validator<'_> {
    pub(super) fn refuse_unbuilt(&mut self, config: &Config) {
        let root = KeyPath::root();
        let not_yet = |what: &str, issue: u32| {
            format!("{what} is not built yet (tracked in issue #{issue}); remove this key for now")
        };
        if config.server.tls.is_some() {
            let reason = not_yet("TLS termination", 3) + " and terminate TLS in front of hookgate";
            self.problem(&root.key("server").key("tls"), reason);
        }
        if config.admin.is_some() {
            self.problem(&root.key("admin"), not_yet("the admin listener", 5));
        }
        for (name, quota) in [
            ("per_client", config.rate_limit.per_client),
            ("global", config.rate_limit.global),
        ] {
            if quota.is_some() {
                let key = root.key("rate_limit").key(name);
                self.problem(&key, not_yet("inbound rate limiting", 4));
            }
        }
        for upstream in &config.upstreams {
            let table = root.key("upstreams").key(upstream.name.as_str());
            if upstream.rate_limit.is_some() {
                self.problem(
                    &table.key("rate_limit"),
                    not_yet("upstream rate limiting", 4),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::load::tests::with;
    use crate::config::Config;
    use std::path::Path;

    #[test]
    fn an_unbuilt_feature_is_refused_not_ignored() {
        let text = with("[rate_limit]\nper_client = { per_second = 1, burst = 1 }\n");
        let error = Config::from_toml_str(&text, Path::new("hookgate.toml")).unwrap_err();
        assert_eq!(error.problems.len(), 1, "{error}");
        assert_eq!(error.problems[0].key, "rate_limit.per_client");
        let message = error.to_string();
        assert!(
            message.contains("not built yet (tracked in issue #4)"),
            "{message}"
        );
    }
}

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
        if config.admin.is_some() {
            self.problem(&root.key("admin"), not_yet("the admin listener", 5));
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
        let text = with("[admin]\nlisten = \"127.0.0.1:9090\"\n");
        let error = Config::from_toml_str(&text, Path::new("hookgate.toml")).unwrap_err();
        assert_eq!(error.problems.len(), 1, "{error}");
        assert_eq!(error.problems[0].key, "admin");
        let message = error.to_string();
        assert!(
            message.contains("not built yet (tracked in issue #5)"),
            "{message}"
        );
    }
}

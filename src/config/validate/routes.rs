//! `[[routes]]`: event type patterns, source, `match`, and the upstreams they name.

use super::{KeyPath, Validator};
use crate::config::raw::RawRoute;
use crate::config::{Route, Source, TypePattern, Upstream};

impl Validator<'_> {
    pub(super) fn routes(
        &mut self,
        raw: Vec<RawRoute>,
        sources: &[Source],
        upstreams: &[Upstream],
    ) -> Vec<Route> {
        raw.into_iter()
            .enumerate()
            .map(|(index, route)| {
                let key = KeyPath::root().key("routes").index(index);
                self.route(&key, index, route, sources, upstreams)
            })
            .collect()
    }

    fn route(
        &mut self,
        key: &KeyPath,
        index: usize,
        raw: RawRoute,
        sources: &[Source],
        upstreams: &[Upstream],
    ) -> Route {
        let patterns = raw.event_type.0;
        if patterns.is_empty() {
            self.problem(&key.key("event_type"), "must not be empty");
        }
        let single = patterns.len() == 1;
        let mut event_types = Vec::with_capacity(patterns.len());
        for (i, pattern) in patterns.iter().enumerate() {
            let pattern_key = if single {
                key.key("event_type")
            } else {
                key.key("event_type").index(i)
            };
            match type_pattern(pattern) {
                Ok(pattern) => event_types.push(pattern),
                Err(reason) => self.problem(&pattern_key, reason),
            }
        }
        if let Some(source) = &raw.source {
            if !sources.iter().any(|known| &known.name == source) {
                let known: Vec<&str> = sources.iter().map(|s| s.name.as_str()).collect();
                self.problem(
                    &key.key("source"),
                    format!(
                        "unknown source {source:?}; known sources: {}",
                        known.join(", ")
                    ),
                );
            }
        }
        let mut matches = Vec::with_capacity(raw.matches.len());
        for (pointer, value) in raw.matches {
            let match_key = key.key("match").key(pointer.as_str());
            let pointer_ok = self.pointer(&match_key, &pointer);
            match match_value(value) {
                Ok(value) if pointer_ok => matches.push((pointer, value)),
                Ok(_) => {}
                Err(reason) => self.problem(&match_key, reason),
            }
        }
        Route {
            index,
            event_types,
            source: raw.source,
            matches,
            upstreams: self.route_upstreams(key, raw.upstream, raw.upstreams, upstreams),
        }
    }

    fn route_upstreams(
        &mut self,
        key: &KeyPath,
        one: Option<String>,
        many: Option<Vec<String>>,
        upstreams: &[Upstream],
    ) -> Vec<usize> {
        let names: Vec<(String, KeyPath)> = match (one, many) {
            (Some(_), Some(_)) => {
                self.problem(key, "set either `upstream` or `upstreams`, not both");
                return Vec::new();
            }
            (None, None) => {
                self.problem(
                    key,
                    "needs `upstream = \"NAME\"` or `upstreams = [\"NAME\", ...]`",
                );
                return Vec::new();
            }
            (Some(name), None) => vec![(name, key.key("upstream"))],
            (None, Some(list)) => {
                if list.is_empty() {
                    self.problem(&key.key("upstreams"), "must not be empty");
                }
                list.into_iter()
                    .enumerate()
                    .map(|(i, name)| (name, key.key("upstreams").index(i)))
                    .collect()
            }
        };
        let mut indexes = Vec::with_capacity(names.len());
        for (name, name_key) in names {
            match upstreams.iter().position(|u| u.name == name) {
                Some(index) if indexes.contains(&index) => {
                    self.problem(&name_key, format!("duplicate upstream {name:?}"));
                }
                Some(index) => indexes.push(index),
                None => {
                    let known: Vec<&str> = upstreams.iter().map(|u| u.name.as_str()).collect();
                    let known = if known.is_empty() {
                        "no [upstreams.NAME] tables are defined".to_owned()
                    } else {
                        format!("known upstreams: {}", known.join(", "))
                    };
                    self.problem(&name_key, format!("unknown upstream {name:?}; {known}"));
                }
            }
        }
        indexes
    }
}

/// `*` alone is [`TypePattern::Any`]; with other text a glob split at the stars.
fn type_pattern(pattern: &str) -> Result<TypePattern, String> {
    if pattern.is_empty() {
        return Err("event type pattern must not be empty".to_owned());
    }
    if let Some(c) = pattern.chars().find(|c| "?[]{}\\".contains(*c)) {
        return Err(format!(
            "unsupported glob syntax {c:?} in {pattern:?}: only `*` is supported"
        ));
    }
    if !pattern.contains('*') {
        return Ok(TypePattern::Exact(pattern.to_owned()));
    }
    let parts: Vec<String> = pattern.split('*').map(str::to_owned).collect();
    // "**" matches everything, as "*" does: one form for matchers and `check` to handle.
    if parts.iter().all(String::is_empty) {
        return Ok(TypePattern::Any);
    }
    Ok(TypePattern::Glob(parts))
}

/// A `match` value as the JSON value it is compared with; only scalars compare sensibly.
fn match_value(value: toml::Value) -> Result<serde_json::Value, String> {
    match value {
        toml::Value::String(s) => Ok(serde_json::Value::String(s)),
        toml::Value::Integer(i) => Ok(serde_json::Value::from(i)),
        toml::Value::Float(f) => serde_json::Number::from_f64(f)
            .map(serde_json::Value::Number)
            .ok_or_else(|| format!("{f} cannot appear in JSON; use a finite number")),
        toml::Value::Boolean(b) => Ok(serde_json::Value::Bool(b)),
        toml::Value::Datetime(_) => {
            Err("datetimes are not supported; quote the value to compare it as a string".to_owned())
        }
        toml::Value::Array(_) => {
            Err("must be a string, integer, float or bool, not an array".to_owned())
        }
        toml::Value::Table(_) => {
            Err("must be a string, integer, float or bool, not a table".to_owned())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load::tests::{edit, only_problem, problems};

    #[test]
    fn route_naming_an_unknown_upstream_lists_the_known_ones() {
        let p = only_problem(
            &edit("upstream = \"billing\"", "upstream = \"crm\""),
            "routes[0].upstream",
        );
        assert_eq!(
            p.reason,
            "unknown upstream \"crm\"; known upstreams: billing"
        );
        assert_eq!(p.line, Some(14));
    }

    #[test]
    fn glob_syntax_other_than_star_is_refused() {
        let p = only_problem(
            &edit("\"fulfilment_pending\"", "\"lead_[ab]\""),
            "routes[0].event_type",
        );
        assert_eq!(
            p.reason,
            "unsupported glob syntax '[' in \"lead_[ab]\": only `*` is supported"
        );
    }

    #[test]
    fn event_type_list_items_are_checked_one_by_one() {
        let p = only_problem(
            &edit("\"fulfilment_pending\"", "[\"a\", \"\"]"),
            "routes[0].event_type[1]",
        );
        assert!(p.reason.contains("must not be empty"), "{p}");
        let p = only_problem(
            &edit("\"fulfilment_pending\"", "[]"),
            "routes[0].event_type",
        );
        assert_eq!(p.reason, "must not be empty");
    }

    #[test]
    fn upstream_and_upstreams_together_are_refused() {
        let text = edit(
            "upstream = \"billing\"",
            "upstream = \"billing\"\nupstreams = [\"billing\"]",
        );
        let p = only_problem(&text, "routes[0]");
        assert_eq!(p.reason, "set either `upstream` or `upstreams`, not both");
        assert_eq!(p.line, Some(12));
    }

    #[test]
    fn a_route_needs_an_upstream() {
        let p = only_problem(&edit("upstream = \"billing\"", ""), "routes[0]");
        assert!(p.reason.starts_with("needs `upstream"), "{p}");
    }

    #[test]
    fn fan_out_lists_must_be_non_empty_and_distinct() {
        let p = only_problem(
            &edit("upstream = \"billing\"", "upstreams = []"),
            "routes[0].upstreams",
        );
        assert_eq!(p.reason, "must not be empty");
        let p = only_problem(
            &edit(
                "upstream = \"billing\"",
                "upstreams = [\"billing\", \"billing\"]",
            ),
            "routes[0].upstreams[1]",
        );
        assert_eq!(p.reason, "duplicate upstream \"billing\"");
    }

    #[test]
    fn route_source_must_exist() {
        let text = edit(
            "upstream = \"billing\"",
            "upstream = \"billing\"\nsource = \"stripe\"",
        );
        let p = only_problem(&text, "routes[0].source");
        assert_eq!(p.reason, "unknown source \"stripe\"; known sources: fp");
    }

    #[test]
    fn match_values_must_be_scalars() {
        let text = edit(
            "upstream = \"billing\"",
            "upstream = \"billing\"\nmatch = { \"/a\" = [1], \"/b\" = 1979-05-27, \"/c\" = 1.5 }",
        );
        let problems = problems(&text);
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["routes[0].match.\"/a\"", "routes[0].match.\"/b\""]);
        assert_eq!(
            problems[0].reason,
            "must be a string, integer, float or bool, not an array"
        );
        assert!(problems[1]
            .reason
            .starts_with("datetimes are not supported"));
    }

    #[test]
    fn type_patterns_are_any_exact_or_glob() {
        assert_eq!(type_pattern("*"), Ok(TypePattern::Any));
        assert_eq!(type_pattern("**"), Ok(TypePattern::Any));
        assert_eq!(
            type_pattern("lead_created"),
            Ok(TypePattern::Exact("lead_created".into()))
        );
        assert_eq!(
            type_pattern("lead_*"),
            Ok(TypePattern::Glob(vec!["lead_".into(), "".into()]))
        );
        assert_eq!(
            type_pattern("a*b*c"),
            Ok(TypePattern::Glob(vec!["a".into(), "b".into(), "c".into()]))
        );
        for bad in ["a?", "a{b}", "a\\*"] {
            assert!(type_pattern(bad).is_err(), "{bad}");
        }
    }
}

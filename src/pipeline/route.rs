//! Route: pick the first `[[routes]]` entry whose event type, source and `match` conditions
//! all hold for the event.

use serde_json::Value;

use super::payload::Payload;
use crate::config::{Route, TypePattern};

/// The route table of one config, in file order.
#[derive(Debug)]
pub struct Router {
    routes: Vec<Route>,
}

impl Router {
    /// Builds the table from validated routes.
    pub fn new(routes: Vec<Route>) -> Self {
        Self { routes }
    }

    /// The first route matching the event, if any.
    pub fn find(&self, source: &str, event_type: &str, payload: &Payload<'_>) -> Option<&Route> {
        self.routes
            .iter()
            .find(|route| route_matches(route, source, event_type, payload))
    }
}

fn route_matches(route: &Route, source: &str, event_type: &str, payload: &Payload<'_>) -> bool {
    route.source.as_deref().is_none_or(|name| name == source)
        && route
            .event_types
            .iter()
            .any(|pattern| type_matches(pattern, event_type))
        && route.matches.iter().all(|(pointer, expected)| {
            payload
                .get(pointer)
                .is_some_and(|actual| value_matches(expected, &actual))
        })
}

/// Whether `event_type` fits `pattern`; a glob's only wildcard is `*`.
pub fn type_matches(pattern: &TypePattern, event_type: &str) -> bool {
    match pattern {
        TypePattern::Any => true,
        TypePattern::Exact(exact) => exact == event_type,
        TypePattern::Glob(parts) => glob_matches(parts, event_type),
    }
}

/// `parts` is the glob split at its stars: the first part must be a prefix, the last a
/// suffix, and the ones between must appear in order.
fn glob_matches(parts: &[String], text: &str) -> bool {
    let (Some(first), Some(last)) = (parts.first(), parts.last()) else {
        return true;
    };
    if parts.len() == 1 {
        return first == text;
    }
    let Some(mut rest) = text.strip_prefix(first.as_str()) else {
        return false;
    };
    for middle in &parts[1..parts.len() - 1] {
        match rest.find(middle.as_str()) {
            Some(at) => rest = &rest[at + middle.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last.as_str())
}

/// Config values are compared leniently with payload values: senders are not consistent about
/// ids being numbers or strings (`41001` and `"41001"` match), and `1` matches `1.0`.
fn value_matches(expected: &Value, actual: &Value) -> bool {
    match (expected, actual) {
        (Value::Number(a), Value::Number(b)) => {
            a == b || matches!((a.as_f64(), b.as_f64()), (Some(x), Some(y)) if x == y)
        }
        (Value::Number(number), Value::String(text))
        | (Value::String(text), Value::Number(number)) => number.to_string() == *text,
        _ => expected == actual,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn glob(pattern: &str) -> TypePattern {
        TypePattern::Glob(pattern.split('*').map(str::to_owned).collect())
    }

    fn route(types: Vec<TypePattern>, matches: Vec<(&str, Value)>, upstream: usize) -> Route {
        Route {
            index: upstream,
            event_types: types,
            source: None,
            matches: matches
                .into_iter()
                .map(|(pointer, value)| (pointer.to_owned(), value))
                .collect(),
            upstreams: vec![upstream],
        }
    }

    #[test]
    fn globs_match_prefix_suffix_and_middle() {
        assert!(type_matches(&glob("lead_*"), "lead_signup"));
        assert!(type_matches(&glob("lead_*"), "lead_"));
        assert!(!type_matches(&glob("lead_*"), "promoter_accepted"));
        assert!(type_matches(&glob("*_pending"), "fulfilment_pending"));
        assert!(type_matches(&glob("promoter_*_up"), "promoter_signs_up"));
        assert!(!type_matches(&glob("a*a"), "a"));
        assert!(type_matches(&glob("a*b*c"), "aXbYc"));
        assert!(!type_matches(&glob("a*b*c"), "aXcYb"));
    }

    #[test]
    fn first_matching_route_wins_and_match_values_are_lenient() {
        let router = Router::new(vec![
            route(
                vec![TypePattern::Exact("fulfilment_pending".into())],
                vec![("/data/campaign/id", json!(41002))],
                0,
            ),
            route(
                vec![TypePattern::Exact("fulfilment_pending".into())],
                vec![],
                1,
            ),
            route(vec![TypePattern::Any], vec![], 2),
        ]);
        let campaign = |id: Value| json!({"data": {"campaign": {"id": id}}}).to_string();
        let pick = |t: &str, body: &str| {
            let payload = Payload::parse(body.as_bytes()).unwrap();
            router.find("fp", t, &payload).map(|r| r.upstreams[0])
        };
        assert_eq!(pick("fulfilment_pending", &campaign(json!(41002))), Some(0));
        assert_eq!(
            pick("fulfilment_pending", &campaign(json!("41002"))),
            Some(0)
        );
        assert_eq!(
            pick("fulfilment_pending", &campaign(json!(41002.0))),
            Some(0)
        );
        assert_eq!(pick("fulfilment_pending", &campaign(json!(41001))), Some(1));
        assert_eq!(pick("lead_signup", "{}"), Some(2));
    }

    #[test]
    fn a_route_limited_to_a_source_skips_others() {
        let mut only_fp = route(vec![TypePattern::Any], vec![], 0);
        only_fp.source = Some("fp".into());
        let router = Router::new(vec![only_fp]);
        let empty = Payload::parse(b"{}").unwrap();
        assert!(router.find("fp", "x", &empty).is_some());
        assert!(router.find("other", "x", &empty).is_none());
    }
}

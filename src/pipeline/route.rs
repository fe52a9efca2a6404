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
        self.find_reading(source, event_type, &mut Fields::new(payload))
    }

    fn find_reading<'r>(
        &'r self,
        source: &str,
        event_type: &str,
        fields: &mut Fields<'r, '_, '_>,
    ) -> Option<&'r Route> {
        self.routes
            .iter()
            .find(|route| route_matches(route, source, event_type, fields))
    }
}

/// The payload's values at the pointers routes test, each materialised at most once per
/// event: the usual FirstPromoter table has one route per campaign, all testing
/// `/data/campaign/id`.
struct Fields<'r, 'p, 'a> {
    payload: &'p Payload<'a>,
    /// By pointer (borrowed from the route table).
    read: Vec<(&'r str, Option<Value>)>,
}

impl<'r, 'p, 'a> Fields<'r, 'p, 'a> {
    fn new(payload: &'p Payload<'a>) -> Self {
        Self {
            payload,
            read: Vec::new(),
        }
    }

    fn get(&mut self, pointer: &'r str) -> Option<&Value> {
        let at = match self.read.iter().position(|(read, _)| *read == pointer) {
            Some(at) => at,
            None => {
                self.read.push((pointer, self.payload.get(pointer)));
                self.read.len() - 1
            }
        };
        self.read[at].1.as_ref()
    }
}

fn route_matches<'r>(
    route: &'r Route,
    source: &str,
    event_type: &str,
    fields: &mut Fields<'r, '_, '_>,
) -> bool {
    route.source.as_deref().is_none_or(|name| name == source)
        && route
            .event_types
            .iter()
            .any(|pattern| type_matches(pattern, event_type))
        && route.matches.iter().all(|(pointer, expected)| {
            fields
                .get(pointer)
                .is_some_and(|actual| value_matches(expected, actual))
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

    /// One route per campaign, as the README suggests for FirstPromoter, plus a route testing
    /// two pointers: each pointer's value is read once per event and reused, never mixed up.
    #[test]
    fn many_routes_on_the_same_pointers() {
        let pending = || vec![TypePattern::Exact("fulfilment_pending".into())];
        let router = Router::new(vec![
            route(pending(), vec![("/data/campaign/id", json!(1))], 0),
            route(pending(), vec![("/data/campaign/id", json!(2))], 1),
            route(
                pending(),
                vec![
                    ("/data/campaign/id", json!(3)),
                    ("/data/plan", json!("pro")),
                ],
                2,
            ),
            route(pending(), vec![("/data/plan", json!("pro"))], 3),
            route(pending(), vec![("/data/campaign/id", json!(3))], 4),
        ]);
        let pick = |body: Value| {
            let text = body.to_string();
            let payload = Payload::parse(text.as_bytes()).unwrap();
            router
                .find("fp", "fulfilment_pending", &payload)
                .map(|r| r.upstreams[0])
        };
        let event = |campaign: i64, plan: &str| json!({"data": {"campaign": {"id": campaign}, "plan": plan}});
        assert_eq!(pick(event(1, "pro")), Some(0));
        assert_eq!(pick(event(2, "basic")), Some(1));
        assert_eq!(pick(event(3, "pro")), Some(2));
        assert_eq!(pick(event(4, "pro")), Some(3));
        assert_eq!(pick(event(3, "basic")), Some(4));
        assert_eq!(pick(event(5, "basic")), None);

        // That last event was tested by all five routes: two pointers, each read once.
        let text = event(5, "basic").to_string();
        let payload = Payload::parse(text.as_bytes()).unwrap();
        let mut fields = Fields::new(&payload);
        assert!(router
            .find_reading("fp", "fulfilment_pending", &mut fields)
            .is_none());
        let read: Vec<&str> = fields.read.iter().map(|(pointer, _)| *pointer).collect();
        assert_eq!(read, ["/data/campaign/id", "/data/plan"]);
    }
}

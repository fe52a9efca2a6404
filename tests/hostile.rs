//! End to end: a few hundred malformed bodies. Each must get a 4xx answer (never 200, never a
//! dropped connection), nothing may be forwarded, and afterwards a valid event still goes
//! through. CONTRACT.md rows: "body not JSON, no event id, no event type" (400) and
//! "body over `max_body_bytes`" (413).

mod support;

use std::path::Path;

use bytes::Bytes;
use http_body_util::Full;
use serde_json::json;
use support::*;

const FP: &str = "/fp";

/// A fixed-seed xorshift64 generator: the same "random" bodies on every run.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// Every fixture, cut at 20 offsets spread from 0 (an empty body) up to just before its final
/// `}` (so that no cut is still valid JSON).
fn truncated_fixtures() -> Vec<(String, Bytes)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/firstpromoter");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .expect("fixtures")
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.ends_with(".json"))
        .collect();
    names.sort();
    assert!(names.len() >= 10, "fixtures missing: {names:?}");
    let mut cases = Vec::new();
    for name in names {
        let full = fixture(&name);
        let last_brace = full
            .iter()
            .rposition(|&b| b == b'}')
            .expect("a JSON object");
        for k in 0..20 {
            let cut = last_brace * k / 20;
            cases.push((format!("{name} cut at {cut}"), full.slice(..cut)));
        }
        // And right before the closing brace.
        cases.push((
            format!("{name} without its last brace"),
            full.slice(..last_brace),
        ));
    }
    cases
}

fn random_binary() -> Vec<(String, Bytes)> {
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    (0..60)
        .map(|i| {
            let len = 1 + (rng.next() % 4096) as usize;
            (
                format!("random binary #{i} ({len} bytes)"),
                Bytes::from(rng.bytes(len)),
            )
        })
        .collect()
}

fn event_with(id: &str, event_type: &str) -> String {
    format!(r#"{{"event":{{"id":{id},"type":{event_type}}},"data":{{}}}}"#)
}

fn specials() -> Vec<(String, Bytes)> {
    let long = "a".repeat(900 * 1024);
    let mut cases: Vec<(String, String)> = vec![
        ("100000 nested [".into(), "[".repeat(100_000)),
        (
            "100000 nested balanced []".into(),
            "[".repeat(100_000) + &"]".repeat(100_000),
        ),
        ("100000 nested {\"a\":".into(), "{\"a\":".repeat(100_000)),
        ("a 900 KB string".into(), format!("\"{long}\"")),
        (
            "a 900 KB event id".into(),
            event_with(&format!("\"{long}\""), "\"x\""),
        ),
        (
            "a 900 KB event type".into(),
            event_with("1", &format!("\"{long}\"")),
        ),
        (
            "a 900 KB field, no event id".into(),
            format!(r#"{{"event":{{"type":"x"}},"data":"{long}"}}"#),
        ),
        ("empty body".into(), String::new()),
        ("whitespace only".into(), " \r\n\t ".into()),
        ("top-level null".into(), "null".into()),
        ("top-level true".into(), "true".into()),
        ("top-level number".into(), "5367".into()),
        ("top-level string".into(), "\"5367\"".into()),
        ("top-level empty array".into(), "[]".into()),
        (
            "top-level array of an event".into(),
            format!("[{}]", event_with("1", "\"x\"")),
        ),
        ("empty object".into(), "{}".into()),
        ("event null".into(), r#"{"event":null}"#.into()),
        ("event an array".into(), r#"{"event":[1,"x"]}"#.into()),
        ("event a string".into(), r#"{"event":"lead_signup"}"#.into()),
        ("id and type null".into(), event_with("null", "null")),
        ("id trailing garbage".into(), event_with("1", "\"x\"") + "x"),
        (
            "two events back to back".into(),
            event_with("1", "\"x\"") + &event_with("2", "\"x\""),
        ),
        ("id NaN".into(), event_with("NaN", "\"x\"")),
        ("id 1e400".into(), event_with("1e400", "\"x\"")),
        ("id empty string".into(), event_with("\"\"", "\"x\"")),
        ("id with a newline".into(), event_with("\"a\\nb\"", "\"x\"")),
        ("id with a NUL".into(), event_with("\"a\\u0000b\"", "\"x\"")),
        (
            "id 257 bytes".into(),
            event_with(&format!("\"{}\"", "9".repeat(257)), "\"x\""),
        ),
        (
            "type not ASCII".into(),
            event_with("1", "\"l\u{e9}ad_signup\""),
        ),
        ("type empty".into(), event_with("1", "\"\"")),
        (
            "id lone surrogate".into(),
            event_with("\"\\ud800\"", "\"x\""),
        ),
        (
            "single quotes".into(),
            "{'event':{'id':1,'type':'x'}}".into(),
        ),
        (
            "trailing comma".into(),
            r#"{"event":{"id":1,"type":"x",}}"#.into(),
        ),
        (
            "comment".into(),
            r#"{"event":{"id":1,/* c */"type":"x"}}"#.into(),
        ),
    ];
    for (what, value) in [
        ("true", "true"),
        ("false", "false"),
        ("an object", "{}"),
        ("an object with fields", r#"{"id":1}"#),
        ("an empty array", "[]"),
        ("an array", "[5367]"),
    ] {
        cases.push((format!("id {what}"), event_with(value, "\"x\"")));
    }
    for (what, value) in [
        ("a number", "7"),
        ("a float", "1.5"),
        ("true", "true"),
        ("an object", "{}"),
        ("an array", "[\"lead_signup\"]"),
        ("null", "null"),
    ] {
        cases.push((format!("type {what}"), event_with("1", value)));
    }
    let mut cases: Vec<(String, Bytes)> = cases
        .into_iter()
        .map(|(what, body)| (what, Bytes::from(body)))
        .collect();
    cases.push((
        "invalid UTF-8 in the id".into(),
        Bytes::from_static(b"{\"event\":{\"id\":\"\xff\xfe\",\"type\":\"x\"}}"),
    ));
    cases.push((
        "a body over max_body_bytes".into(),
        Bytes::from(format!("\"{}\"", "b".repeat(1024 * 1024))),
    ));
    cases
}

/// Sends every hostile body; each must be answered 4xx over a working connection.
async fn send_all(sender: &Sender, url: &str, cases: &[(String, Bytes)]) {
    for (what, body) in cases {
        let request = http::Request::post(url)
            .header("content-type", "application/json")
            .body(Full::new(body.clone()))
            .unwrap();
        let answer = sender
            .try_send(request)
            .await
            .unwrap_or_else(|error| panic!("{what}: no answer, the connection failed: {error}"));
        assert!(
            (400..500).contains(&answer.status),
            "{what}: expected a 4xx, got {}: {}",
            answer.status,
            answer.text()
        );
        if answer.status == 400 {
            let error = answer.json();
            assert!(error["error"].is_string(), "{what}: {}", answer.text());
        }
    }
}

/// A few hundred malformed bodies over HTTP/1.1 and h2c: each gets a 4xx, none is forwarded,
/// and afterwards a valid event is forwarded and answered 200.
#[tokio::test]
async fn hostile_bodies_get_4xx_and_the_gateway_keeps_working() {
    let upstream = FakeUpstream::start(Reply::json(200, "fulfilled")).await;
    let gateway = spawn_gateway(&one_route_config(&upstream.url("/hook"), "", "")).await;
    let url = gateway.url(FP);

    let mut cases = truncated_fixtures();
    cases.extend(random_binary());
    cases.extend(specials());
    assert!(cases.len() >= 300, "only {} cases", cases.len());

    let http1 = Sender::http1();
    send_all(&http1, &url, &cases).await;
    send_all(&Sender::h2c(), &url, &specials()).await;
    assert_eq!(upstream.count(), 0, "no hostile body was forwarded");

    let valid = http1.post(&url, fixture("fulfilment_pending.json")).await;
    assert_eq!((valid.status, valid.text().as_str()), (200, "fulfilled"));
    let also_valid = Sender::h2c()
        .post(&url, event(json!("h2-1"), "lead_signup"))
        .await;
    assert_eq!(also_valid.status, 200);
    assert_eq!(upstream.count(), 2);
    assert_eq!(upstream.seen()[0].body, fixture("fulfilment_pending.json"));
}

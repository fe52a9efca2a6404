//! The trust boundary (issue #3, pipeline side): inbound verification for each scheme,
//! Standard Webhooks signing of what is forwarded, redaction, and log hygiene.

mod support;

use std::io::Read;
use std::path::Path;
use std::process::Stdio;

use base64::Engine;
use bytes::Bytes;
use hookgate::pipeline::sign::Signer;
use http::Request;
use http_body_util::Full;
use serde_json::{json, Value};
use support::*;

const WHSEC: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const WHSEC_ROTATED: &str = "whsec_c2Vjb25kLXNlY3JldC1mb3Itcm90YXRpb24=";

/// A gateway whose source at `/fp` uses `verify` (a TOML table body), forwarding to `upstream`.
async fn verified_gateway(upstream: &FakeUpstream, verify: &str) -> TestGateway {
    spawn_gateway(&format!(
        r#"
[server]
listen = "127.0.0.1:0"
max_body_bytes = 65536

[[sources]]
name = "fp"
path = "/fp"
[sources.verify]
{verify}

[upstreams.app]
url = "{}"

[[routes]]
event_type = "*"
upstream = "app"
"#,
        upstream.url("/hook")
    ))
    .await
}

fn post(url: &str, body: &Bytes, headers: &[(&str, String)]) -> Request<Full<Bytes>> {
    let mut request = Request::post(url).header("content-type", "application/json");
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    request.body(Full::new(body.clone())).unwrap()
}

/// A 401 with a JSON error that does not contain `secret`.
fn assert_refused(answer: &Answer, secret: &str, reason: &str) {
    assert_eq!(answer.status, 401, "{}", answer.text());
    let message = answer.json()["error"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(message.contains(reason), "{message:?} lacks {reason:?}");
    assert!(
        !answer.text().contains(secret),
        "the error leaks the secret"
    );
}

/// `token`: `?token=` or the header; wrong or missing is 401 and nothing is forwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_scheme_round_trip() {
    let upstream = FakeUpstream::start(Reply::status(200)).await;
    let gateway = verified_gateway(&upstream, "scheme = \"token\"\nsecret = \"tok-3x/+=\"").await;
    let sender = Sender::http1();
    let body = event(json!(1), "lead_signup");

    let by_query = sender
        .send(post(&gateway.url("/fp?token=tok-3x%2F%2B%3D"), &body, &[]))
        .await;
    assert_eq!(by_query.status, 200);
    let body = event(json!(2), "lead_signup");
    let by_header = sender
        .send(post(
            &gateway.url("/fp"),
            &body,
            &[("x-hookgate-token", "tok-3x/+=".into())],
        ))
        .await;
    assert_eq!(by_header.status, 200);

    let body = event(json!(3), "lead_signup");
    let wrong = sender
        .send(post(&gateway.url("/fp?token=tok-3y"), &body, &[]))
        .await;
    assert_refused(&wrong, "tok-3x", "invalid token");
    let missing = sender.send(post(&gateway.url("/fp"), &body, &[])).await;
    assert_refused(&missing, "tok-3x", "missing token");
    assert_eq!(upstream.count(), 2);
    // The token is hookgate's credential: it reaches the upstream neither in the URL nor as a
    // header.
    assert_eq!(upstream.seen()[0].uri.path(), "/hook");
    assert_eq!(upstream.seen()[0].uri.query(), None);
    assert!(!upstream.seen()[1].headers.contains_key("x-hookgate-token"));
}

/// `basic`: HTTP Basic with `user:password` (split at the first ':').
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_scheme_round_trip() {
    let upstream = FakeUpstream::start(Reply::status(200)).await;
    let gateway = verified_gateway(&upstream, "scheme = \"basic\"\nsecret = \"fp:pa:ss\"").await;
    let sender = Sender::http1();
    let basic = |credentials: &str| {
        let encoded = base64::engine::general_purpose::STANDARD.encode(credentials);
        vec![("authorization", format!("Basic {encoded}"))]
    };
    let body = event(json!(1), "lead_signup");
    let ok = sender
        .send(post(&gateway.url("/fp"), &body, &basic("fp:pa:ss")))
        .await;
    assert_eq!(ok.status, 200);
    let wrong = sender
        .send(post(&gateway.url("/fp"), &body, &basic("fp:pa:sx")))
        .await;
    assert_refused(&wrong, "pa:ss", "invalid credentials");
    let missing = sender.send(post(&gateway.url("/fp"), &body, &[])).await;
    assert_refused(&missing, "pa:ss", "missing or malformed");
    assert_eq!(upstream.count(), 1);
    assert!(
        !upstream.seen()[0].headers.contains_key("authorization"),
        "credential forwarded"
    );
}

/// `hmac-sha256`: hex HMAC of the raw body in `x-signature`, optional `sha256=` prefix; a
/// tampered body or a wrong secret is 401.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hmac_scheme_round_trip() {
    let upstream = FakeUpstream::start(Reply::status(200)).await;
    let gateway =
        verified_gateway(&upstream, "scheme = \"hmac-sha256\"\nsecret = \"hm-key\"").await;
    let sender = Sender::http1();
    let hex = |key: &[u8], body: &[u8]| {
        let tag = ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key), body);
        tag.as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let body = event(json!(1), "lead_signup");
    let good = hex(b"hm-key", &body);
    let ok = sender
        .send(post(
            &gateway.url("/fp"),
            &body,
            &[("x-signature", format!("sha256={good}"))],
        ))
        .await;
    assert_eq!(ok.status, 200);

    let tampered = event(json!(2), "lead_signup");
    let answer = sender
        .send(post(
            &gateway.url("/fp"),
            &tampered,
            &[("x-signature", good.clone())],
        ))
        .await;
    assert_refused(&answer, "hm-key", "does not match");
    let wrong_key = hex(b"hm-kez", &tampered);
    let answer = sender
        .send(post(
            &gateway.url("/fp"),
            &tampered,
            &[("x-signature", wrong_key)],
        ))
        .await;
    assert_refused(&answer, "hm-key", "does not match");
    let answer = sender.send(post(&gateway.url("/fp"), &tampered, &[])).await;
    assert_refused(&answer, "hm-key", "missing signature");
    assert_eq!(upstream.count(), 1);
}

/// `standard-webhooks`: valid, wrong secret, missing header, stale timestamp, tampered body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standard_webhooks_scheme_round_trip() {
    let upstream = FakeUpstream::start(Reply::status(200)).await;
    let gateway = verified_gateway(
        &upstream,
        &format!("scheme = \"standard-webhooks\"\nsecret = \"{WHSEC}\""),
    )
    .await;
    let sender = Sender::http1();
    let now = hookgate::pipeline::authenticate::now_unix();
    let signed = |secret: &str, ts: u64, body: &Bytes| {
        let signature = Signer::new([secret]).unwrap().signature("msg_1", ts, body);
        vec![
            ("webhook-id", "msg_1".to_owned()),
            ("webhook-timestamp", ts.to_string()),
            ("webhook-signature", signature.to_str().unwrap().to_owned()),
        ]
    };
    let body = event(json!(1), "lead_signup");
    let ok = sender
        .send(post(&gateway.url("/fp"), &body, &signed(WHSEC, now, &body)))
        .await;
    assert_eq!(ok.status, 200);

    let body = event(json!(2), "lead_signup");
    let cases = [
        (
            signed(WHSEC_ROTATED, now, &body),
            "no webhook-signature matches",
        ),
        (signed(WHSEC, now - 600, &body), "5 minutes"),
        (
            signed(WHSEC, now, &event(json!(3), "lead_signup")),
            "no webhook-signature matches",
        ),
        (
            signed(WHSEC, now, &body)[..2].to_vec(),
            "missing webhook-id",
        ),
    ];
    for (headers, reason) in cases {
        let answer = sender
            .send(post(&gateway.url("/fp"), &body, &headers))
            .await;
        assert_refused(&answer, "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", reason);
    }
    assert_eq!(upstream.count(), 1);
}

/// Order of checks: size (413) before verification (401) before parse (400).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verification_comes_after_size_and_before_parsing() {
    let upstream = FakeUpstream::start(Reply::status(200)).await;
    let gateway = verified_gateway(&upstream, "scheme = \"token\"\nsecret = \"tok\"").await;
    let sender = Sender::http1();
    let not_json = Bytes::from_static(b"not json");
    let unauthenticated = sender
        .send(post(&gateway.url("/fp?token=bad"), &not_json, &[]))
        .await;
    assert_eq!(unauthenticated.status, 401);
    let authenticated = sender
        .send(post(&gateway.url("/fp?token=tok"), &not_json, &[]))
        .await;
    assert_eq!(authenticated.status, 400);
    let huge = Bytes::from(vec![b' '; 70_000]);
    let too_big = sender
        .send(post(&gateway.url("/fp?token=bad"), &huge, &[]))
        .await;
    assert_eq!(too_big.status, 413);
}

/// `sign`: the upstream gets `webhook-id` (the event id), `webhook-timestamp` (now) and a
/// `webhook-signature` with one valid entry per secret, over the bytes it received.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_events_are_signed_with_every_secret() {
    let upstream = FakeUpstream::start(Reply::status(200)).await;
    let extra = format!("sign = {{ secrets = [\"{WHSEC}\", \"{WHSEC_ROTATED}\"] }}");
    let gateway = spawn_gateway(&one_route_config(&upstream.url("/hook"), "", &extra)).await;
    let body = event(json!(5367), "fulfilment_pending");
    let answer = Sender::http1()
        .post(&gateway.url("/fp"), body.clone())
        .await;
    assert_eq!(answer.status, 200);

    let seen = &upstream.seen()[0];
    let header = |name: &str| seen.headers[name].to_str().unwrap().to_owned();
    assert_eq!(header("webhook-id"), "5367");
    let timestamp: u64 = header("webhook-timestamp").parse().unwrap();
    assert!(hookgate::pipeline::authenticate::now_unix().abs_diff(timestamp) < 60);
    let signatures = header("webhook-signature");
    let entries: Vec<&str> = signatures.split(' ').collect();
    assert_eq!(entries.len(), 2, "{signatures}");
    for (secret, entry) in [(WHSEC, entries[0]), (WHSEC_ROTATED, entries[1])] {
        let signer = Signer::new([secret]).unwrap();
        assert!(signer.verify("5367", &timestamp.to_string(), &seen.body, entry));
    }
    assert_eq!(
        seen.body, body,
        "without redact the original bytes are sent"
    );
}

/// `redact`: the pointers are gone from what that upstream receives (and the signature
/// covers the redacted bytes), while a fan-out sibling without `redact` gets the original.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redaction_applies_per_upstream_and_is_signed() {
    let crm = FakeUpstream::start(Reply::status(200)).await;
    let archive = FakeUpstream::start(Reply::status(200)).await;
    let gateway = spawn_gateway(&format!(
        r#"
[server]
listen = "127.0.0.1:0"

[[sources]]
name = "fp"
path = "/fp"

[upstreams.crm]
url = "{}"
sign = {{ secret = "{WHSEC}" }}
redact = ["/data/promoter/temp_password", "/data/promoter/auth_token", "/data/promoter/email"]

[upstreams.archive]
url = "{}"

[[routes]]
event_type = "promoter_*"
upstreams = ["crm", "archive"]
"#,
        crm.url("/in"),
        archive.url("/in")
    ))
    .await;
    let body = fixture("promoter_signed_up.json");
    let answer = Sender::http1()
        .post(&gateway.url("/fp"), body.clone())
        .await;
    assert_eq!(answer.status, 200);

    let redacted = &crm.seen()[0];
    let text = String::from_utf8_lossy(&redacted.body);
    for secret in [
        "FAKE-tmp-pw1",
        "FAKE-casey-authtoken-000000002",
        "casey.fixture@example.com",
    ] {
        assert!(
            !text.contains(secret),
            "{secret} reached the redacting upstream"
        );
    }
    let payload: Value = serde_json::from_slice(&redacted.body).unwrap();
    assert_eq!(
        payload["data"]["promoter"]["id"], 880202,
        "the rest is intact"
    );
    let ts = redacted.headers["webhook-timestamp"].to_str().unwrap();
    let signature = redacted.headers["webhook-signature"].to_str().unwrap();
    assert!(Signer::new([WHSEC])
        .unwrap()
        .verify("900005", ts, &redacted.body, signature));
    assert_eq!(
        archive.seen()[0].body,
        body,
        "the sibling gets the original bytes"
    );
}

/// Log hygiene: everything the binary logs (at every level of its own code) while handling
/// sensitive events contains no secret, token, query string, body, password, auth token or
/// email.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_contain_no_secrets_or_payload_values() {
    let upstream = FakeUpstream::start(Reply::json(200, r#"{"ok":true}"#)).await;
    upstream.script([Reply::status(500)]);
    let dir = std::env::temp_dir().join(format!("hookgate-logs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[server]
listen = "127.0.0.1:0"

[[sources]]
name = "fp"
path = "/fp"
[sources.verify]
scheme = "token"
secret_env = "HG_TEST_TOKEN"

[upstreams.app]
url = "{}"
sign = {{ secret = "{WHSEC}" }}
headers_env = {{ "x-api-key" = "HG_TEST_API_KEY" }}
redact = ["/data/promoter/temp_password"]

[[routes]]
event_type = "*"
upstream = "app"
"#,
            upstream.url("/hook")
        ),
    )
    .unwrap();
    let child = serve_command(&config)
        .env("RUST_LOG", "hookgate=trace,info")
        .env("HG_TEST_TOKEN", "tok-LEAKCHECK-1")
        .env("HG_TEST_API_KEY", "key-LEAKCHECK-2")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(child);
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    // Read the bound address from the first lines, keeping everything for the check.
    let (line_tx, line_rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            all.push_str(&String::from_utf8_lossy(&buf[..n]));
            if let Some(line) = all.lines().find(|line| line.contains("\"listen\"")) {
                let _ = line_tx.send(line.to_owned());
            }
        }
        all
    });
    let listening: Value = serde_json::from_str(&line_rx.recv_timeout(STEP).unwrap()).unwrap();
    let url = format!("http://{}/fp", listening["listen"].as_str().unwrap());

    let sender = Sender::http1();
    let sensitive = fixture("promoter_signed_up.json");
    let with_token = format!("{url}?token=tok-LEAKCHECK-1");
    // A failure (500), the retry (200), a replay, a bad token, a malformed body: each must
    // take its own path, or the log lines this test reads are not the ones it claims.
    let mut answers = Vec::new();
    for target in [&with_token, &with_token, &with_token] {
        answers.push(sender.send(post(target, &sensitive, &[])).await);
    }
    answers.push(
        sender
            .send(post(&format!("{url}?token=tok-WRONG-3"), &sensitive, &[]))
            .await,
    );
    answers.push(
        sender
            .send(post(
                &with_token,
                &Bytes::from_static(b"{\"password\":\"pw-LEAKCHECK-4\""),
                &[],
            ))
            .await,
    );
    let seen: Vec<(u16, bool)> = answers
        .iter()
        .map(|answer| (answer.status, answer.is_duplicate()))
        .collect();
    assert_eq!(
        seen,
        [
            (500, false),
            (200, false),
            (200, true),
            (401, false),
            (400, false)
        ]
    );
    assert_eq!(upstream.count(), 2);

    signal(&child, "TERM");
    let status = wait_for_exit(&mut child).await;
    assert!(status.success());
    let mut logs = reader.join().unwrap();
    stderr.read_to_string(&mut logs).unwrap();
    let _ = std::fs::remove_dir_all(Path::new(&dir));

    assert!(
        logs.contains("event handled"),
        "the run logged events:\n{logs}"
    );
    assert!(logs.contains("900005"), "event ids are logged:\n{logs}");
    for leak in [
        "tok-LEAKCHECK-1",
        "tok-WRONG-3",
        "key-LEAKCHECK-2",
        "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "pw-LEAKCHECK-4",
        "FAKE-tmp-pw1",
        "FAKE-casey-authtoken",
        "casey.fixture@example.com",
        "token=",
        "Casey",
        "\"data\"",
    ] {
        assert!(
            !logs.contains(leak),
            "{leak:?} appears in the logs:\n{logs}"
        );
    }
}

//! Hostile clients at the connection level (issue #4): an HTTP/2 "rapid reset" flood
//! (CVE-2023-44487) must end in a GOAWAY without hurting other senders, and clients beyond
//! `server.max_connections` must wait, not be served, until a slot frees up.

mod support;

use std::time::Duration;

use http::Request;
use serde_json::json;
use support::*;
use tokio::net::TcpStream;

const FP: &str = "/fp";

/// Most streams the rapid-reset client opens and resets before giving up on a GOAWAY.
const RESET_ATTEMPTS: usize = 5000;
/// Streams opened and reset between two looks at the connection: an attacker pipelines.
const RESET_BATCH: usize = 50;
/// "Well before" `RESET_ATTEMPTS`: the GOAWAY must come by then.
const RESET_LIMIT: usize = 1000;

/// Issue #4, HTTP/2 rapid reset: one h2c connection that opens streams (a POST to `/fp`
/// whose body never ends) and cancels each at once with RST_STREAM(CANCEL) is cut off by the
/// gateway with GOAWAY(ENHANCE_YOUR_CALM) well before 5000 streams; nothing it opened reaches
/// the upstream (no stream ever completed a request), and other senders, one started alongside
/// the flood and one after it, still get the upstream's 200 (CONTRACT.md: the gateway relays
/// the upstream's status).
#[tokio::test]
async fn rapid_reset_ends_in_goaway_while_others_are_served() {
    let upstream = FakeUpstream::start(Reply::status(200)).await;
    let gateway = spawn_gateway(&one_route_config(&upstream.url("/hook"), "", "")).await;
    let calm_body = event(json!("calm-during"), "lead_signup");
    let later_body = event(json!("calm-after"), "lead_signup");

    // A well-behaved sender on a connection of its own, started alongside the flood.
    let during = Sender::http1().spawn_post(gateway.url(FP), calm_body.clone());

    let tcp = bounded("connect", TcpStream::connect(gateway.addr))
        .await
        .expect("connect to the gateway");
    let (streams, connection) = bounded("the h2c handshake", h2::client::handshake(tcp))
        .await
        .expect("h2c handshake");
    let connection = tokio::spawn(connection);

    let url = gateway.url(FP);
    let mut resets = 0usize;
    // The first error the attacking side sees when it tries to open another stream.
    let send_error = bounded("the rapid-reset flood", async {
        let mut streams = streams;
        while resets < RESET_ATTEMPTS {
            for _ in 0..RESET_BATCH {
                streams = match streams.ready().await {
                    Ok(streams) => streams,
                    Err(error) => return Some(error),
                };
                let request = Request::post(url.as_str())
                    .header("content-type", "application/json")
                    .body(())
                    .unwrap();
                // HEADERS without END_STREAM: the request is open, its body still to come.
                let (_response, mut body) = match streams.send_request(request, false) {
                    Ok(pair) => pair,
                    Err(error) => return Some(error),
                };
                body.send_reset(h2::Reason::CANCEL);
                resets += 1;
            }
            // Lets the connection task write the batch and read whatever the gateway sent.
            tokio::task::yield_now().await;
            if connection.is_finished() {
                return None;
            }
        }
        None
    })
    .await;
    let connection_result = bounded("the gateway to close the flooding connection", connection)
        .await
        .expect("h2 connection task panicked");

    let errors = [send_error.as_ref(), connection_result.as_ref().err()];
    let go_away = errors
        .into_iter()
        .flatten()
        .find(|error| error.is_go_away() && error.is_remote());
    match go_away {
        Some(go_away) => assert_eq!(
            go_away.reason(),
            Some(h2::Reason::ENHANCE_YOUR_CALM),
            "the GOAWAY after {resets} rapid resets names the wrong reason: {go_away:?}"
        ),
        // The gateway sends GOAWAY and closes; frames the flood had in flight then make the
        // gateway's kernel answer with a TCP reset, which discards the GOAWAY still unread in
        // this side's receive buffer. That is the gateway cutting the flood off too.
        None => assert!(
            errors
                .into_iter()
                .flatten()
                .any(|error| error.get_io().is_some_and(|io| matches!(
                    io.kind(),
                    std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
                ))),
            "neither a GOAWAY nor a reset from the gateway after {resets} rapid resets \
             (send side: {send_error:?}; connection: {connection_result:?})"
        ),
    }
    assert!(
        resets <= RESET_LIMIT,
        "the gateway cut the flood off only after {resets} rapid resets (limit {RESET_LIMIT})"
    );
    // Not before the configured allowance: a cut-off for another reason (a crash, the
    // stream limit) would otherwise pass for the rapid-reset guard.
    assert!(
        resets >= hookgate::server::MAX_PENDING_RESET_STREAMS,
        "the connection was cut after only {resets} resets, below the allowance of {}",
        hookgate::server::MAX_PENDING_RESET_STREAMS
    );
    assert!(
        connection_result.is_err(),
        "the flooding connection ended cleanly after {resets} rapid resets"
    );
    eprintln!("rapid reset: cut off after {resets} streams opened and reset ({go_away:?})");

    let during = bounded("the in-flight sender's answer", during)
        .await
        .expect("sender task panicked");
    assert_eq!(during.status, 200, "during the flood: {}", during.text());
    let after = Sender::h2c()
        .post(&gateway.url(FP), later_body.clone())
        .await;
    assert_eq!(after.status, 200, "after the flood: {}", after.text());

    upstream.wait_for_count(2).await;
    let forwarded: Vec<_> = upstream.seen().into_iter().map(|seen| seen.body).collect();
    assert_eq!(
        forwarded,
        [calm_body, later_body],
        "the upstream got requests from the {resets} reset streams (or missed a calm one)"
    );
}

/// CONTRACT.md `max_connections` ("At most max_connections client connections are open;
/// beyond it, new connections wait in the backlog or are accepted and closed at once"): with
/// `max_connections = 2` and two keep-alive connections held open, a third client's request
/// is not answered; once one of the two closes, it is answered 200.
#[tokio::test]
async fn connections_beyond_max_connections_wait_and_are_served_later() {
    let upstream = FakeUpstream::start(Reply::status(200)).await;
    let gateway = spawn_gateway(&one_route_config(
        &upstream.url("/hook"),
        "max_connections = 2",
        "",
    ))
    .await;

    // Two clients take both slots: each got an answer, so the gateway holds the connection.
    let mut first = RawConn::connect(gateway.addr).await;
    let mut second = RawConn::connect(gateway.addr).await;
    for (n, conn) in [&mut first, &mut second].into_iter().enumerate() {
        let body = event(json!(format!("slot-{n}")), "lead_signup");
        conn.write(&raw_post(FP, &body, ""))
            .await
            .expect("write a request");
        let answer = conn.read_response().await;
        assert_eq!(answer.status, 200, "slot {n}: {:?}", answer.body);
        assert_ne!(answer.header("connection"), Some("close"), "slot {n}");
    }

    // The third connects (the kernel completes the handshake into the backlog) and sends.
    let mut third = RawConn::connect(gateway.addr).await;
    third
        .write(&raw_post(FP, &event(json!("third"), "lead_signup"), ""))
        .await
        .expect("write the third request");
    // Asserts an absence: no answer within 300 ms while both slots are held. A slow machine
    // can only make this pass wrongly (an answer arriving later), never fail wrongly.
    let early = tokio::time::timeout(Duration::from_millis(300), third.read_response()).await;
    assert!(
        early.is_err(),
        "the third connection was served while max_connections = 2 were open: {early:?}"
    );
    assert_eq!(
        upstream.count(),
        2,
        "the third request reached the upstream"
    );

    // Closing one frees its slot; the waiting client is accepted and answered.
    drop(first);
    let answer = third.read_response().await;
    assert_eq!(
        answer.status, 200,
        "third, after a slot freed: {:?}",
        answer.body
    );
    upstream.wait_for_count(3).await;

    // The connection that stayed open is still served.
    second
        .write(&raw_post(
            FP,
            &event(json!("slot-1-again"), "lead_signup"),
            "",
        ))
        .await
        .expect("write on the second connection");
    assert_eq!(second.read_response().await.status, 200);
}

/// `idle_timeout` and `header_timeout` as the contract times them on a keep-alive
/// connection: while it waits for its next request only `idle_timeout` runs (so a wait
/// longer than `header_timeout` is fine), and an idle connection is closed once
/// `idle_timeout` passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_waits_are_timed_by_idle_timeout_not_header_timeout() {
    let upstream = FakeUpstream::start(Reply::status(200)).await;
    let server = "header_timeout = \"200ms\"\nidle_timeout = \"3s\"";
    let gateway = spawn_gateway(&one_route_config(&upstream.url("/hook"), server, "")).await;
    let mut conn = RawConn::connect(gateway.addr).await;
    conn.write(&raw_post("/fp", &event(json!(1), "lead_signup"), ""))
        .await
        .unwrap();
    assert_eq!(conn.read_response().await.status, 200);

    // A setup step, not a timing assertion: wait well past header_timeout (200 ms) and well
    // within idle_timeout (3 s). Timed from the last response, the head timer would have
    // closed the connection by now.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    conn.write(&raw_post("/fp", &event(json!(2), "lead_signup"), ""))
        .await
        .unwrap();
    assert_eq!(
        conn.read_response().await.status,
        200,
        "the idle connection was kept"
    );

    // Then idle: closed after idle_timeout (bounded wait).
    conn.expect_closed().await;
    assert_eq!(upstream.count(), 2);
}

/// On a keep-alive connection, `header_timeout` runs from the first byte of the next
/// request: a head that starts and stalls is cut off long before `idle_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_second_head_is_cut_off_by_header_timeout() {
    let upstream = FakeUpstream::start(Reply::status(200)).await;
    let server = "header_timeout = \"300ms\"\nidle_timeout = \"60s\"";
    let gateway = spawn_gateway(&one_route_config(&upstream.url("/hook"), server, "")).await;
    let mut conn = RawConn::connect(gateway.addr).await;
    conn.write(&raw_post("/fp", &event(json!(1), "lead_signup"), ""))
        .await
        .unwrap();
    assert_eq!(conn.read_response().await.status, 200);
    conn.write(b"POST /fp HTTP/1.1\r\nhost: gateway.test\r\n")
        .await
        .unwrap();
    // Closed within STEP (10 s), far below idle_timeout (60 s): only the head timer can do it.
    conn.expect_closed().await;
    assert_eq!(upstream.count(), 1);
}

/// A body trickled a byte at a time is cut off at `body_timeout`: bytes keep arriving, so
/// only a deadline on the whole body stops it. 408, connection closed, nothing forwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_body_is_cut_off_at_body_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let upstream = FakeUpstream::start(Reply::status(200)).await;
    let server = "body_timeout = \"500ms\"";
    let gateway = spawn_gateway(&one_route_config(&upstream.url("/hook"), server, "")).await;
    let body = event(json!(1), "lead_signup");
    let request = raw_post("/fp", &body, "");
    let head_len = request.len() - body.len();
    let (mut from_gateway, mut to_gateway) =
        TcpStream::connect(gateway.addr).await.unwrap().into_split();
    to_gateway.write_all(&request[..head_len]).await.unwrap();
    // One byte every 50 ms: the whole body would take ~len x 50 ms (well over a minute).
    let trickle = tokio::spawn(async move {
        let mut sent = 0;
        for byte in &request[head_len..] {
            if to_gateway
                .write_all(std::slice::from_ref(byte))
                .await
                .is_err()
            {
                break;
            }
            sent += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        sent
    });
    let answer = bounded("the gateway to answer the trickled body", async {
        let mut answer = Vec::new();
        let _ = from_gateway.read_to_end(&mut answer).await; // until the gateway closes
        answer
    })
    .await;
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    trickle.abort();
    assert!(
        body.len() > 100,
        "the body is long enough to outlast body_timeout"
    );
    assert_eq!(upstream.count(), 0);
}

/// Slowloris: clients trickling a request head forever are cut off at `header_timeout`,
/// while a normal client is served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_clients_are_cut_off_while_others_are_served() {
    let upstream = FakeUpstream::start(Reply::status(200)).await;
    let server = "header_timeout = \"500ms\"";
    let gateway = spawn_gateway(&one_route_config(&upstream.url("/hook"), server, "")).await;
    let head = b"POST /fp HTTP/1.1\r\nhost: gateway.test\r\nx-slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let slow_clients: Vec<_> = (0..20)
        .map(|_| {
            let addr = gateway.addr;
            tokio::spawn(async move {
                let mut conn = RawConn::connect(addr).await;
                for byte in head {
                    if conn.write(std::slice::from_ref(byte)).await.is_err() {
                        return true; // cut off while trickling
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                false // the whole head went through: never cut off
            })
        })
        .collect();
    let answer = Sender::http1()
        .post(&gateway.url("/fp"), event(json!(1), "lead_signup"))
        .await;
    assert_eq!(
        answer.status, 200,
        "a normal client is served during the attack"
    );
    for client in slow_clients {
        let cut_off = bounded("a slowloris client to be cut off", client)
            .await
            .unwrap();
        assert!(cut_off, "a slowloris client outlived header_timeout");
    }
    assert_eq!(upstream.count(), 1);
}

/// Too many header lines, or a head larger than hyper's buffer, are refused (431 or 400)
/// and the connection is closed; nothing is forwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_or_too_large_headers_are_refused() {
    let upstream = FakeUpstream::start(Reply::status(200)).await;
    let gateway = spawn_gateway(&one_route_config(&upstream.url("/hook"), "", "")).await;
    let body = event(json!(1), "lead_signup");
    let many: String = (0..150).map(|i| format!("x-h{i}: v\r\n")).collect();
    let huge = format!("x-big: {}\r\n", "a".repeat(600 * 1024));
    for (what, extra) in [("150 header lines", many), ("a 600 KiB header", huge)] {
        let mut conn = RawConn::connect(gateway.addr).await;
        // The server may stop reading mid-head; a failed write then is part of the refusal.
        let _ = conn.write(&raw_post("/fp", &body, &extra)).await;
        let answer = conn.read_response().await;
        assert!(
            matches!(answer.status, 431 | 400),
            "{what}: got {}",
            answer.status
        );
        conn.expect_closed().await;
    }
    assert_eq!(upstream.count(), 0);
}

/// A sender that announces a body over `max_body_bytes` gets 413 before the gateway reads the
/// body, and the gateway closes the connection. If it closed with the body still arriving, its
/// kernel would answer the unread bytes with a reset, and the sender, still writing, would see
/// "connection reset" instead of the 413 (issue #4: a clear answer, never a dropped one). The
/// body here is far larger than the sockets' buffers, so without a lingering close the write
/// fails every time rather than by chance.
#[tokio::test]
async fn a_sender_still_writing_an_oversized_body_reads_its_413() {
    let upstream = FakeUpstream::start(Reply::status(200)).await;
    let gateway = spawn_gateway(&one_route_config(&upstream.url("/hook"), "", "")).await;
    let body = vec![b' '; 32 * 1024 * 1024];
    let request = raw_post("/fp", &body, "");
    let (start, rest) = request.split_at(request.len() - body.len() + 64 * 1024);
    let mut conn = RawConn::connect(gateway.addr).await;
    conn.write(start)
        .await
        .expect("the head and 64 KiB of body");
    // The answer comes while the body is still arriving: the size is refused from the head.
    let answer = conn.read_response().await;
    assert_eq!(
        answer.status,
        413,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    conn.write(rest)
        .await
        .expect("the rest of the body is written: the gateway reads and discards it");
    conn.expect_closed().await;
    assert_eq!(upstream.count(), 0);
}

/// Sends one POST on an open h2 connection and returns its status.
async fn h2_post(
    streams: &mut h2::client::SendRequest<bytes::Bytes>,
    url: &str,
    body: bytes::Bytes,
) -> u16 {
    let ready = bounded(
        "the h2 connection to take a stream",
        streams.clone().ready(),
    )
    .await
    .expect("the connection is still open");
    *streams = ready;
    let request = Request::post(url)
        .header("content-type", "application/json")
        .body(())
        .unwrap();
    let (response, mut send) = streams.send_request(request, false).expect("open a stream");
    send.send_data(body, true).expect("send the body");
    let response = bounded("an h2 answer", response).await.expect("an answer");
    response.status().as_u16()
}

/// An HTTP/2 client that keeps an idle connection alive with PINGs (as Go's and others'
/// health checks do) is idle, not sending a request head: its connection lasts until
/// `idle_timeout`, not `header_timeout`, and PINGs do not stretch `idle_timeout` either.
#[tokio::test]
async fn h2_pings_on_an_idle_connection_are_timed_by_idle_timeout() {
    let upstream = FakeUpstream::start(Reply::status(200)).await;
    let server = "header_timeout = \"300ms\"\nidle_timeout = \"3s\"";
    let gateway = spawn_gateway(&one_route_config(&upstream.url("/hook"), server, "")).await;
    let tcp = bounded("connect", TcpStream::connect(gateway.addr))
        .await
        .expect("connect to the gateway");
    let (mut streams, mut connection) = bounded("the h2c handshake", h2::client::handshake(tcp))
        .await
        .expect("h2c handshake");
    let mut ping_pong = connection.ping_pong().expect("the ping handle");
    let connection = tokio::spawn(connection);
    let url = gateway.url(FP);
    assert_eq!(
        h2_post(&mut streams, &url, event(json!(1), "lead_signup")).await,
        200
    );

    // A setup step, not a timing assertion: ping for well past header_timeout and well within
    // idle_timeout. Each PING's ACK proves the connection is still served.
    let pinging = tokio::time::Instant::now();
    while pinging.elapsed() < Duration::from_millis(1200) {
        bounded("a PING ACK", ping_pong.ping(h2::Ping::opaque()))
            .await
            .expect("the idle connection answers its PING");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        h2_post(&mut streams, &url, event(json!(2), "lead_signup")).await,
        200,
        "the pinged connection was kept"
    );
    let last_answer = tokio::time::Instant::now();

    // Pinging on, with no request: closed after idle_timeout all the same (bounded wait).
    let closed = bounded("the gateway to close the idle h2 connection", async {
        loop {
            if ping_pong.ping(h2::Ping::opaque()).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    closed.await;
    // Timed from the last request's end (just before its answer arrived here), not from the
    // accept nor stretched by the PINGs; timers never fire early, so this cannot flake.
    assert!(
        last_answer.elapsed() >= Duration::from_millis(2900),
        "closed {:?} after the last answer; idle_timeout is 3 s",
        last_answer.elapsed()
    );
    let _ = bounded("the client connection task to end", connection).await;
    assert_eq!(upstream.count(), 2);
}

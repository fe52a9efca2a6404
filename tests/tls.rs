//! TLS end to end: HTTPS over HTTP/1.1 and h2 (by ALPN), TLS 1.2/1.3 only, hostile and slow
//! clients on the TLS port, certificate reload (in-process and by SIGHUP to the binary),
//! startup errors, `self_signed`, and https upstreams with a private CA and mTLS.
//!
//! Every certificate is generated at test time; sockets are on 127.0.0.1 only.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use bytes::Bytes;
use hookgate::config::TlsConfig;
use hookgate::server::tls::TlsTerminator;
use http::Request;
use http_body_util::Full;
use rustls::version::{TLS12, TLS13};
use rustls::ProtocolVersion;
use serde_json::json;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The source path of [`one_route_config`].
const FP: &str = "/fp";

/// `[server.tls]` lines for these files.
fn tls_keys(cert: &str, key: &str) -> String {
    format!("[server.tls]\ncert = {cert:?}\nkey = {key:?}")
}

/// A gateway with `[server.tls]` serving `cert` (files in `dir`), routing every event to a
/// plain-HTTP upstream that answers 200. `extra_server` goes under `[server]`.
async fn tls_gateway(
    dir: &TempDir,
    cert: &Issued,
    extra_server: &str,
) -> (FakeUpstream, TestGateway, Arc<TlsTerminator>) {
    let upstream = FakeUpstream::start(Reply::json(200, r#"{"fulfilled":true}"#)).await;
    let (cert_path, key_path) = cert.write(dir, "server");
    let server = format!("{extra_server}\n{}", tls_keys(&cert_path, &key_path));
    let config = load(&one_route_config(&upstream.url("/hook"), &server, ""));
    let (gateway, tls) = spawn_tls_config(config).await;
    (upstream, gateway, tls)
}

fn load(toml: &str) -> hookgate::Config {
    hookgate::Config::from_toml_str(toml, Path::new("tls-test.toml"))
        .unwrap_or_else(|error| panic!("test config is invalid:\n{error}"))
}

/// A client trusting `ca`, with both versions and the given ALPN offer.
fn client(ca: &TestCa, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    tls_client_config(ca.roots(), &TLS_BOTH, alpn)
}

// === HTTP/1.1 and HTTP/2 by ALPN ===

#[tokio::test]
async fn https_over_http1_and_h2_by_alpn_relays_the_upstream_200() {
    let (dir, ca) = (TempDir::new("alpn"), TestCa::new("alpn"));
    let (upstream, gateway, _tls) = tls_gateway(&dir, &ca.server_cert(), "").await;

    let mut http1 = TlsConn::connect(gateway.addr, client(&ca, &[b"http/1.1"])).await;
    assert_eq!(http1.alpn.as_deref(), Some(&b"http/1.1"[..]));
    let answer = http1.post(FP, event(json!(1), "lead_signup")).await;
    assert_eq!(
        (answer.status, answer.text().as_str()),
        (200, r#"{"fulfilled":true}"#)
    );
    assert_eq!(answer.headers["x-test-http-version"], "HTTP/1.1");

    // Offered both, the server prefers h2.
    let mut h2 = TlsConn::connect(gateway.addr, client(&ca, &[b"h2", b"http/1.1"])).await;
    assert_eq!(h2.alpn.as_deref(), Some(&b"h2"[..]));
    let answer = h2.post(FP, event(json!(2), "lead_signup")).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.headers["x-test-http-version"], "HTTP/2.0");

    let seen = upstream.seen();
    assert_eq!(seen.len(), 2);
    for request in &seen {
        assert_eq!(request.headers["x-forwarded-proto"], "https");
    }
}

// === Protocol versions ===

/// A ClientHello that offers at most TLS 1.1 (no `supported_versions` extension).
fn tls11_client_hello() -> Vec<u8> {
    let mut hello = vec![0x03, 0x02]; // client_version: TLS 1.1
    hello.extend_from_slice(&[0x5a; 32]); // random
    hello.push(0); // no session id
    let suites = [0xc0, 0x13, 0x00, 0x2f]; // ECDHE_RSA / RSA with AES_128_CBC_SHA
    hello.extend_from_slice(&(suites.len() as u16).to_be_bytes());
    hello.extend_from_slice(&suites);
    hello.extend_from_slice(&[1, 0]); // compression: null only
                                      // signature_algorithms, as old clients commonly sent: without it rustls answers
                                      // handshake_failure before it even looks at the version.
    let schemes = [0x04, 0x03, 0x04, 0x01]; // ecdsa_secp256r1_sha256, rsa_pkcs1_sha256
    let mut extension = vec![0x00, 0x0d];
    extension.extend_from_slice(&(schemes.len() as u16 + 2).to_be_bytes());
    extension.extend_from_slice(&(schemes.len() as u16).to_be_bytes());
    extension.extend_from_slice(&schemes);
    hello.extend_from_slice(&(extension.len() as u16).to_be_bytes());
    hello.extend(extension);
    let mut handshake = vec![0x01]; // client_hello
    handshake.extend_from_slice(&(hello.len() as u32).to_be_bytes()[1..]);
    handshake.extend(hello);
    let mut record = vec![0x16, 0x03, 0x01]; // handshake record, TLS 1.0 record version
    record.extend_from_slice(&(handshake.len() as u16).to_be_bytes());
    record.extend(handshake);
    record
}

/// Reads until the server closes (EOF or reset), bounded by [`STEP`].
async fn read_until_closed(stream: &mut tokio::net::TcpStream) -> Vec<u8> {
    bounded("the server to close the connection", async {
        let mut received = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return received,
                Ok(n) => received.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
}

#[tokio::test]
async fn only_tls12_and_tls13_are_spoken() {
    let (dir, ca) = (TempDir::new("versions"), TestCa::new("versions"));
    let (_upstream, gateway, _tls) = tls_gateway(&dir, &ca.server_cert(), "").await;

    for (version, expected) in [
        (&TLS12, ProtocolVersion::TLSv1_2),
        (&TLS13, ProtocolVersion::TLSv1_3),
    ] {
        let config = tls_client_config(ca.roots(), &[version], &[b"http/1.1"]);
        let mut conn = TlsConn::connect(gateway.addr, config).await;
        assert_eq!(conn.version, expected);
        let answer = conn
            .post(FP, event(json!(format!("{expected:?}")), "lead_signup"))
            .await;
        assert_eq!(answer.status, 200, "{expected:?}: {}", answer.text());
    }

    // rustls cannot speak TLS 1.1, so a hand-made ClientHello plays the old client: the server
    // answers with a fatal protocol_version alert and closes.
    let mut old = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
    old.write_all(&tls11_client_hello()).await.unwrap();
    let received = read_until_closed(&mut old).await;
    assert!(
        received.len() >= 7 && received[0] == 0x15 && received[5] == 2 && received[6] == 70,
        "expected a fatal protocol_version alert, got {received:02x?}"
    );
}

// === Hostile and slow clients on the TLS port ===

#[tokio::test]
async fn plain_http_to_the_tls_port_fails_cleanly_and_tls_keeps_working() {
    let (dir, ca) = (TempDir::new("plain"), TestCa::new("plain"));
    let (upstream, gateway, _tls) = tls_gateway(&dir, &ca.server_cert(), "").await;

    let mut plain = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
    plain
        .write_all(&raw_post(FP, &event(json!(1), "lead_signup"), ""))
        .await
        .unwrap();
    let received = read_until_closed(&mut plain).await;
    assert!(
        !received.starts_with(b"HTTP/"),
        "plain HTTP got an HTTP answer: {:?}",
        String::from_utf8_lossy(&received)
    );
    assert_eq!(upstream.count(), 0, "nothing was forwarded");
    // Counted by the worker right after it drops the connection: wait (bounded) for it.
    eventually("the failed handshake to be counted", || {
        gateway
            .gateway
            .metrics()
            .encode()
            .contains("hookgate_tls_handshake_failures_total 1")
    })
    .await;

    let mut conn = TlsConn::connect(gateway.addr, client(&ca, &[b"http/1.1"])).await;
    assert_eq!(
        conn.post(FP, event(json!(2), "lead_signup")).await.status,
        200
    );
}

#[tokio::test]
async fn a_silent_client_holds_up_only_itself_until_the_handshake_timeout() {
    let (dir, ca) = (TempDir::new("silent"), TestCa::new("silent"));
    let (_upstream, gateway, _tls) =
        tls_gateway(&dir, &ca.server_cert(), "header_timeout = \"2s\"").await;

    let mut silent = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
    // The handshake runs off the accept loop: another client is served meanwhile.
    let mut conn = TlsConn::connect(gateway.addr, client(&ca, &[b"h2"])).await;
    assert_eq!(
        conn.post(FP, event(json!(1), "lead_signup")).await.status,
        200
    );
    let mut probe = [0u8; 1];
    assert!(
        matches!(silent.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the silent connection is still open while the other client is served"
    );
    let received = read_until_closed(&mut silent).await;
    assert!(received.is_empty(), "{received:02x?}");
}

#[tokio::test]
async fn a_slow_request_head_over_tls_is_cut_off_by_header_timeout() {
    let (dir, ca) = (TempDir::new("slow-head"), TestCa::new("slow-head"));
    let (upstream, gateway, _tls) =
        tls_gateway(&dir, &ca.server_cert(), "header_timeout = \"1s\"").await;

    let mut stream = tls_handshake(gateway.addr, client(&ca, &[b"http/1.1"]))
        .await
        .expect("handshake");
    stream
        .write_all(b"POST /fp HTTP/1.1\r\nhost: localhost\r\n")
        .await
        .unwrap();
    stream.flush().await.unwrap();
    let received = bounded("the gateway to give up on the head", async {
        let mut received = Vec::new();
        // A TLS close without close_notify is an error here; either way the peer is gone.
        let _ = stream.read_to_end(&mut received).await;
        received
    })
    .await;
    let text = String::from_utf8_lossy(&received);
    assert!(
        received.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
    assert_eq!(upstream.count(), 0);
}

// === Certificate reload ===

/// SIGHUP's code path (`Reloader::reload`, which re-reads the config file and the
/// certificate it names): new connections get the new certificate, open ones keep theirs,
/// and a certificate that cannot be used is rejected with the running one kept.
#[tokio::test]
async fn reload_serves_the_new_certificate_to_new_connections_only() {
    let (dir, ca) = (TempDir::new("reload"), TestCa::new("reload"));
    let (old_cert, new_cert) = (ca.server_cert(), ca.server_cert());
    let upstream = FakeUpstream::start(Reply::json(200, r#"{"fulfilled":true}"#)).await;
    let (cert_path, key_path) = old_cert.write(&dir, "server");
    let config_naming =
        |cert: &str, key: &str| one_route_config(&upstream.url("/hook"), &tls_keys(cert, key), "");
    let config_path = dir.write("hookgate.toml", config_naming(&cert_path, &key_path));
    let running = hookgate::Config::load(&config_path).expect("the test config loads");
    let gateway = spawn_config(running.clone()).await;
    let reloader = gateway.reloader(running);
    let tls = gateway.tls.clone().expect("TLS is on");

    let mut before = TlsConn::connect(gateway.addr, client(&ca, &[b"http/1.1"])).await;
    assert_eq!(before.peer_cert, old_cert.der);
    assert_eq!(
        before.post(FP, event(json!(1), "lead_signup")).await.status,
        200
    );

    // The config file is read again: it now names other files.
    let (new_cert_path, new_key_path) = new_cert.write(&dir, "server2");
    dir.write(
        "hookgate.toml",
        config_naming(&new_cert_path, &new_key_path),
    );
    reloader.reload().expect("valid new certificate");
    assert_eq!(tls.certificate().cert[0], new_cert.der);

    // The keep-alive connection made before the reload goes on, with the old certificate.
    assert_eq!(
        before.post(FP, event(json!(2), "lead_signup")).await.status,
        200
    );
    assert_eq!(before.peer_cert, old_cert.der);
    let mut after = TlsConn::connect(gateway.addr, client(&ca, &[b"http/1.1"])).await;
    assert_eq!(after.peer_cert, new_cert.der);
    assert_eq!(
        after.post(FP, event(json!(3), "lead_signup")).await.status,
        200
    );

    // An invalid new certificate is rejected; the current one keeps serving.
    dir.write("server2.pem", "not a certificate\n");
    let error = reloader.reload().expect_err("empty chain");
    let message = format!("{error:#}");
    assert!(message.contains(&dir.path("server2.pem")), "{message}");
    assert!(message.contains("holds no certificate"), "{message}");
    // A valid certificate with someone else's key is rejected too.
    dir.write("server2.pem", &old_cert.cert_pem);
    let message = format!("{:#}", reloader.reload().expect_err("mismatched key"));
    assert!(message.contains("does not match"), "{message}");
    // A valid certificate in a config that is invalid elsewhere is not installed either.
    let (third_cert, third_key) = ca.server_cert().write(&dir, "server3");
    dir.write(
        "hookgate.toml",
        config_naming(&third_cert, &third_key).replace("[[routes]]", "[[routes]]\nbogus = 1"),
    );
    reloader.reload().expect_err("invalid config");
    let mut still = TlsConn::connect(gateway.addr, client(&ca, &[b"h2"])).await;
    assert_eq!(still.peer_cert, new_cert.der);
    assert_eq!(
        still.post(FP, event(json!(4), "lead_signup")).await.status,
        200
    );
}

// === Loading: key formats and startup errors ===

/// Serves one handshake with `tls` on a fresh port and returns the certificate the client saw.
async fn handshake_with(
    tls: TlsTerminator,
    ca: &TestCa,
) -> rustls::pki_types::CertificateDer<'static> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let mut stream = tls.accept(stream).await.expect("server handshake");
        // Keep the connection until the client is done with it.
        let _ = stream.read(&mut [0u8; 1]).await;
    });
    let stream = tls_handshake(addr, client(ca, &[b"h2"]))
        .await
        .expect("client handshake");
    let cert = stream.get_ref().1.peer_certificates().expect("cert")[0].clone();
    drop(stream);
    bounded("server side of the handshake", server)
        .await
        .unwrap();
    cert
}

/// The SEC1 `ECPrivateKey` inside a PKCS#8 EC key, as "EC PRIVATE KEY" PEM.
fn sec1_pem(pkcs8_der: &[u8]) -> String {
    // DER: SEQUENCE { INTEGER version, SEQUENCE algorithm, OCTET STRING { ECPrivateKey } }
    fn tlv(input: &[u8]) -> (u8, &[u8], &[u8]) {
        let (tag, first) = (input[0], input[1] as usize);
        let (len, start) = if first < 0x80 {
            (first, 2)
        } else {
            let n = first & 0x7f;
            let len = input[2..2 + n]
                .iter()
                .fold(0usize, |acc, &b| acc << 8 | b as usize);
            (len, 2 + n)
        };
        (tag, &input[start..start + len], &input[start + len..])
    }
    let (_, outer, _) = tlv(pkcs8_der);
    let (_, _, rest) = tlv(outer);
    let (_, _, rest) = tlv(rest);
    let (tag, sec1, _) = tlv(rest);
    assert_eq!(tag, 0x04, "PKCS#8 private key octet string");
    use base64::Engine;
    let body = base64::engine::general_purpose::STANDARD.encode(sec1);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|line| std::str::from_utf8(line).unwrap())
        .collect();
    format!(
        "-----BEGIN EC PRIVATE KEY-----\n{}\n-----END EC PRIVATE KEY-----\n",
        lines.join("\n")
    )
}

/// An RSA key from the `openssl` binary (ring cannot generate RSA keys), PKCS#8 and PKCS#1
/// PEM; `None` if openssl is not installed.
fn openssl_rsa_key(dir: &TempDir) -> Option<(String, String)> {
    let pkcs8 = dir.0.join("rsa8.key");
    let pkcs1 = dir.0.join("rsa1.key");
    let generated = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&pkcs8)
        .stderr(Stdio::null())
        .status()
        .ok()?;
    let converted = Command::new("openssl")
        .args(["rsa", "-traditional", "-in"])
        .arg(&pkcs8)
        .arg("-out")
        .arg(&pkcs1)
        .stderr(Stdio::null())
        .status()
        .ok()?;
    if !(generated.success() && converted.success()) {
        return None;
    }
    Some((
        std::fs::read_to_string(pkcs8).ok()?,
        std::fs::read_to_string(pkcs1).ok()?,
    ))
}

#[tokio::test]
async fn rsa_ecdsa_and_ed25519_keys_load_as_pkcs8_sec1_and_pkcs1() {
    let (dir, ca) = (TempDir::new("formats"), TestCa::new("formats"));
    let usage = rcgen::ExtendedKeyUsagePurpose::ServerAuth;
    let mut cases: Vec<(&str, Issued, String)> = Vec::new();

    let p256 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let issued = ca.issue_with(&p256, usage.clone());
    cases.push(("ecdsa-p256-pkcs8", issued, p256.serialize_pem()));
    let p384 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    let issued = ca.issue_with(&p384, usage.clone());
    cases.push(("ecdsa-p384-sec1", issued, sec1_pem(&p384.serialize_der())));
    let ed25519 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let issued = ca.issue_with(&ed25519, usage.clone());
    cases.push(("ed25519-pkcs8", issued, ed25519.serialize_pem()));
    match openssl_rsa_key(&dir) {
        Some((pkcs8, pkcs1)) => {
            assert!(
                pkcs1.starts_with("-----BEGIN RSA PRIVATE KEY-----"),
                "{pkcs1}"
            );
            let rsa = rcgen::KeyPair::from_pem(&pkcs8).expect("RSA key for rcgen");
            let issued = ca.issue_with(&rsa, usage.clone());
            cases.push(("rsa-pkcs1", issued, pkcs1));
        }
        None => eprintln!("openssl not found: the RSA (PKCS#1) case is skipped"),
    }

    for (name, issued, key_pem) in cases {
        let cert = dir.write(&format!("{name}.pem"), &issued.cert_pem);
        let key = dir.write(&format!("{name}.key"), &key_pem);
        let tls = TlsTerminator::from_config(&TlsConfig::Files { cert, key }, STEP)
            .unwrap_or_else(|error| panic!("{name}: {error:#}"));
        assert_eq!(handshake_with(tls, &ca).await, issued.der, "{name}");
    }
}

#[test]
fn startup_errors_name_the_file() {
    let (dir, ca) = (TempDir::new("startup"), TestCa::new("startup"));
    let (good, other) = (ca.server_cert(), ca.server_cert());
    let (cert, key) = good.write(&dir, "good");
    let (_, other_key) = other.write(&dir, "other");
    let empty = dir.write("empty.pem", "");
    let load = |cert: &str, key: &str| {
        let files = TlsConfig::Files {
            cert: cert.into(),
            key: key.into(),
        };
        let error = TlsTerminator::from_config(&files, STEP).expect_err("unusable TLS files");
        format!("{error:#}")
    };

    let missing = dir.path("missing.pem");
    assert!(load(&missing, &key).starts_with(&format!("cannot read {missing}: ")));
    assert_eq!(
        load(&empty.display().to_string(), &key),
        format!(
            "{} holds no certificate (expected a PEM \"BEGIN CERTIFICATE\" block)",
            empty.display()
        )
    );
    assert!(load(&cert, &cert).starts_with(&format!("{cert} holds no private key")));
    assert_eq!(
        load(&cert, &other_key),
        format!("the private key in {other_key} does not match the certificate in {cert}")
    );
    let garbled = dir.write("garbled.pem", "-----BEGIN CERTIFICATE-----\n@@@\n");
    let message = load(&garbled.display().to_string(), &key);
    assert!(
        message.starts_with(&format!("{} is not valid PEM: ", garbled.display())),
        "{message}"
    );
}

// === self_signed ===

#[tokio::test]
async fn self_signed_serves_tls_for_localhost_and_loopback_ips() {
    let upstream = FakeUpstream::start(Reply::status(200)).await;
    let config = load(&one_route_config(
        &upstream.url("/hook"),
        "[server.tls]\nself_signed = true",
        "",
    ));
    let (gateway, tls) = spawn_tls_config(config).await;
    let generated = tls.certificate().cert[0].clone();

    // A client that trusts exactly the generated certificate can reach it by each name.
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(generated.clone())
        .expect("self-signed cert as a root");
    let config = tls_client_config(roots, &TLS_BOTH, &[b"h2"]);
    for name in ["localhost", "127.0.0.1"] {
        let tcp = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
        let server_name = rustls::pki_types::ServerName::try_from(name).unwrap();
        let stream = bounded(
            "handshake",
            tokio_rustls::TlsConnector::from(Arc::clone(&config)).connect(server_name, tcp),
        )
        .await
        .unwrap_or_else(|error| panic!("{name}: {error}"));
        assert_eq!(
            stream.get_ref().1.peer_certificates().unwrap()[0],
            generated
        );
    }
    let server_name = rustls::pki_types::ServerName::try_from("::1").unwrap();
    let tcp = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
    bounded(
        "handshake as ::1",
        tokio_rustls::TlsConnector::from(Arc::clone(&config)).connect(server_name, tcp),
    )
    .await
    .expect("the certificate is valid for ::1");

    let mut conn = TlsConn::connect(gateway.addr, config).await;
    assert_eq!(
        conn.post(FP, event(json!(1), "lead_signup")).await.status,
        200
    );
}

// === https upstreams: private CA and mTLS ===

/// `[upstreams.app]` lines for the TLS files.
fn upstream_tls_keys(ca: Option<&str>, client: Option<(&str, &str)>) -> String {
    let mut keys = String::new();
    if let Some(ca) = ca {
        keys += &format!("ca = {ca:?}\n");
    }
    if let Some((cert, key)) = client {
        keys += &format!("client_cert = {cert:?}\nclient_key = {key:?}\n");
    }
    keys
}

/// What `upstream::Clients` gets from the https `upstream` with these keys (bypassing the
/// pipeline, so the client choice itself is pinned).
async fn direct_status(upstream: &FakeUpstream, keys: &str) -> Result<u16, String> {
    let config = load(&one_route_config(&upstream.https_url("/hook"), "", keys));
    let clients =
        hookgate::upstream::Clients::from_config(&config.upstreams, 1, None).expect("clients");
    let client = clients.for_upstream(&config.upstreams[0]);
    assert!(matches!(
        client,
        hookgate::upstream::UpstreamClient::Pooled { .. }
    ));
    let request = Request::post(upstream.https_url("/hook"))
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    bounded("upstream answer", async {
        let (parts, _body) = client
            .exchange(request, 1024)
            .await
            .map_err(|e| format!("{e:?}"))?;
        Ok(parts.status.as_u16())
    })
    .await
}

#[tokio::test]
async fn upstream_clients_trust_a_private_ca_only_when_configured() {
    let (dir, upstream_ca) = (TempDir::new("upstream-ca"), TestCa::new("upstream"));
    let upstream = FakeUpstream::start_tls(
        Reply::status(200),
        upstream_tls_config(&upstream_ca.server_cert(), None),
    )
    .await;
    let ca = dir.write("ca.pem", upstream_ca.pem()).display().to_string();

    assert_eq!(
        direct_status(&upstream, &upstream_tls_keys(Some(&ca), None)).await,
        Ok(200)
    );
    let untrusted = direct_status(&upstream, "")
        .await
        .expect_err("webpki roots only");
    assert!(untrusted.contains("UnknownIssuer"), "{untrusted}");
}

#[tokio::test]
async fn upstream_clients_present_the_client_certificate_only_when_configured() {
    let dir = TempDir::new("upstream-mtls");
    let (upstream_ca, client_ca) = (TestCa::new("upstream"), TestCa::new("clients"));
    let tls = upstream_tls_config(&upstream_ca.server_cert(), Some(&client_ca));
    let upstream = FakeUpstream::start_tls(Reply::status(200), tls).await;
    let ca = dir.write("ca.pem", upstream_ca.pem()).display().to_string();
    let (cert, key) = client_ca.client_cert().write(&dir, "client");

    let keys = upstream_tls_keys(Some(&ca), Some((&cert, &key)));
    assert_eq!(direct_status(&upstream, &keys).await, Ok(200));
    direct_status(&upstream, &upstream_tls_keys(Some(&ca), None))
        .await
        .expect_err("no client certificate");
    assert_eq!(upstream.count(), 1, "only the mTLS request got through");
}

/// The whole path: sender -> hookgate -> https upstream with a private CA, then mTLS.
#[tokio::test]
async fn gateway_forwards_to_https_upstreams_with_private_ca_and_mtls() {
    let dir = TempDir::new("gateway-upstream");
    let (upstream_ca, client_ca) = (TestCa::new("upstream"), TestCa::new("clients"));
    let ca = dir.write("ca.pem", upstream_ca.pem()).display().to_string();
    let (cert, key) = client_ca.client_cert().write(&dir, "client");
    let sender = Sender::http1();

    let plain_tls = upstream_tls_config(&upstream_ca.server_cert(), None);
    let upstream = FakeUpstream::start_tls(Reply::json(200, r#"{"ok":1}"#), plain_tls).await;
    let url = upstream.https_url("/hook");
    let trusted = spawn_gateway(&one_route_config(
        &url,
        "",
        &upstream_tls_keys(Some(&ca), None),
    ))
    .await;
    let answer = sender
        .post(&trusted.url(FP), event(json!(1), "lead_signup"))
        .await;
    assert_eq!(
        (answer.status, answer.text().as_str()),
        (200, r#"{"ok":1}"#)
    );
    let untrusting = spawn_gateway(&one_route_config(&url, "", "")).await;
    let answer = sender
        .post(&untrusting.url(FP), event(json!(2), "lead_signup"))
        .await;
    assert_eq!(
        answer.status, 502,
        "an untrusted upstream certificate is a TLS failure"
    );

    let mtls = upstream_tls_config(&upstream_ca.server_cert(), Some(&client_ca));
    let upstream = FakeUpstream::start_tls(Reply::status(200), mtls).await;
    let url = upstream.https_url("/hook");
    let with_cert = upstream_tls_keys(Some(&ca), Some((&cert, &key)));
    let gateway = spawn_gateway(&one_route_config(&url, "", &with_cert)).await;
    let answer = sender
        .post(&gateway.url(FP), event(json!(3), "lead_signup"))
        .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let without = spawn_gateway(&one_route_config(
        &url,
        "",
        &upstream_tls_keys(Some(&ca), None),
    ))
    .await;
    let answer = sender
        .post(&without.url(FP), event(json!(4), "lead_signup"))
        .await;
    assert_eq!(
        answer.status, 502,
        "the upstream requires a client certificate"
    );
}

// === The binary: SIGHUP and startup errors ===

const BIN: &str = env!("CARGO_BIN_EXE_hookgate");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate_of_the_running_binary() {
    let upstream = FakeUpstream::start(Reply::status(200)).await;
    let (dir, ca) = (TempDir::new("sighup"), TestCa::new("sighup"));
    let (old_cert, new_cert) = (ca.server_cert(), ca.server_cert());
    let (cert, key) = old_cert.write(&dir, "server");
    let config = one_route_config(&upstream.url("/hook"), &tls_keys(&cert, &key), "");
    let path = dir.write("config.toml", config);
    let (mut child, lines) = spawn_serving(&path);
    let listening = wait_for_log(&lines, "with the listen address", |l| {
        l["listen"].is_string()
    });
    let addr: SocketAddr = listening["listen"].as_str().unwrap().parse().unwrap();

    let mut before = TlsConn::connect(addr, client(&ca, &[b"http/1.1"])).await;
    assert_eq!(before.peer_cert, old_cert.der);

    new_cert.write(&dir, "server");
    signal(&child, "HUP");
    // SIGHUP reloads the config and the certificate it names, together.
    wait_for_log(&lines, "\"config reloaded\"", |l| {
        l["message"] == "config reloaded"
    });
    let after = TlsConn::connect(addr, client(&ca, &[b"http/1.1"])).await;
    assert_eq!(after.peer_cert, new_cert.der);
    assert_eq!(
        before.post(FP, event(json!(1), "lead_signup")).await.status,
        200
    );

    // A broken file: rejected and logged, the process keeps serving the current certificate.
    dir.write("server.key", "");
    signal(&child, "HUP");
    let rejected = wait_for_log(&lines, "about the rejected reload", |l| {
        l["level"] == "ERROR"
    });
    let message = rejected["message"].as_str().unwrap_or_default();
    assert!(message.contains(&dir.path("server.key")), "{rejected}");
    let still = TlsConn::connect(addr, client(&ca, &[b"http/1.1"])).await;
    assert_eq!(still.peer_cert, new_cert.der);

    signal(&child, "TERM");
    let status = wait_for_exit(&mut child).await;
    assert_eq!(status.code(), Some(0));
}

/// `hookgate check` parses `[server.tls]` and checks that the key belongs to the certificate,
/// as it does for an upstream's `client_cert`: a mismatched pair fails the check (exit 78,
/// naming the key and the file), not the server's start.
#[test]
fn check_rejects_a_server_key_that_does_not_match_its_certificate() {
    let (dir, ca) = (
        TempDir::new("check-mismatch"),
        TestCa::new("check-mismatch"),
    );
    let (cert, _) = ca.server_cert().write(&dir, "server");
    let (_, other_key) = ca.server_cert().write(&dir, "other");
    let config = one_route_config("http://127.0.0.1:9/hook", &tls_keys(&cert, &other_key), "");
    let path = dir.write("config.toml", config);
    let output = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .expect("run hookgate");
    assert_eq!(output.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("server.tls.key"), "stderr: {stderr}");
    assert!(stderr.contains("does not match"), "stderr: {stderr}");
    assert!(stderr.contains(&other_key), "stderr: {stderr}");
}

#[test]
fn serve_refuses_to_start_with_an_empty_certificate_chain() {
    let (dir, ca) = (TempDir::new("bin-startup"), TestCa::new("bin-startup"));
    let (_, key) = ca.server_cert().write(&dir, "server");
    let cert = dir.write("empty.pem", "").display().to_string();
    let config = one_route_config("http://127.0.0.1:9/hook", &tls_keys(&cert, &key), "");
    let path = dir.write("config.toml", config);
    let output = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&path)
        .args(["--log-format", "json"])
        .output()
        .expect("run hookgate");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("{cert} holds no certificate")),
        "stderr: {stderr}"
    );
}

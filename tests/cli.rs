//! The `hookgate` binary: `check`, `serve`, config discovery, exit codes and SIGTERM.

mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::json;
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_hookgate");

/// Runs the binary with `args` (no HOOKGATE_CONFIG from the environment) to completion.
fn hookgate(args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .env_remove("HOOKGATE_CONFIG")
        .output()
        .expect("run hookgate")
}

const VALID: &str = r#"
[server]
listen = "127.0.0.1:0"

[[sources]]
name = "firstpromoter"
path = "/fp"

[upstreams.app]
url = "http://127.0.0.1:9/hook"

[[routes]]
event_type = ["lead_*", "fulfilment_pending"]
upstream = "app"
"#;

/// The shipped config.toml is valid, so the README's quick start cannot go stale silently.
#[test]
fn check_accepts_the_shipped_config_and_prints_the_route_table() {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml");
    let out = hookgate(&["check", "--config", shipped.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("OK"), "{stdout}");
    assert!(stdout.contains("fulfilment_pending"), "{stdout}");
    assert!(
        stdout.contains("-> billing (http://127.0.0.1:3000/firstpromoter)"),
        "{stdout}"
    );
}

/// Each validation rule gives a message naming the file, the key (with its line) and why;
/// the exit status is 78 (EX_CONFIG).
#[test]
fn check_names_file_key_and_reason_for_each_invalid_config() {
    let scratch = TempDir::new("invalid");
    let cases: [(&str, &str, &str, &str); 9] = [
        (
            "unknown key",
            "[server]\n",
            "[server]\nlisten_adress = \"x\"\n",
            "listen_adress",
        ),
        (
            "unknown upstream",
            "upstream = \"app\"",
            "upstream = \"billing\"",
            "routes[0].upstream",
        ),
        (
            "unrouted 200",
            "[server]\n",
            "[server]\nunrouted_status = 200\n",
            "server.unrouted_status",
        ),
        (
            "bad glob",
            "\"lead_*\"",
            "\"lead_[ab]\"",
            "routes[0].event_type",
        ),
        (
            "bad pointer",
            "path = \"/fp\"",
            "path = \"/fp\"\nevent_id = \"event/id\"",
            "sources[0].event_id",
        ),
        (
            "bad url",
            "http://127.0.0.1:9/hook",
            "ftp://127.0.0.1/hook",
            "upstreams.app.url",
        ),
        (
            "duplicate path",
            "[upstreams.app]",
            "[[sources]]\nname = \"second\"\npath = \"/fp\"\n\n[upstreams.app]",
            "sources[1].path",
        ),
        (
            "zero duration",
            "[server]\n",
            "[server]\nrespond_within = \"0s\"\n",
            "server.respond_within",
        ),
        (
            "zero limit",
            "[server]\n",
            "[server]\nmax_connections = 0\n",
            "server.max_connections",
        ),
    ];
    for (what, old, new, key) in cases {
        assert!(
            VALID.contains(old),
            "{what}: {old:?} not in the base config"
        );
        let path = scratch.write("hookgate.toml", VALID.replacen(old, new, 1));
        let out = hookgate(&["check", "--config", path.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{what}: {stderr}");
        assert!(
            stderr.contains(path.to_str().unwrap()),
            "{what}: file not named: {stderr}"
        );
        assert!(
            stderr.contains(key),
            "{what}: key {key} not named: {stderr}"
        );
        assert!(stderr.contains("(line "), "{what}: no line: {stderr}");
    }
}

/// The reasons are specific, not just "invalid".
#[test]
fn check_explains_why() {
    let scratch = TempDir::new("why");
    let path = scratch.write(
        "c.toml",
        VALID
            .replacen("[server]\n", "[server]\nunrouted_status = 200\n", 1)
            .replacen("upstream = \"app\"", "upstream = \"billing\"", 1),
    );
    let out = hookgate(&["check", "--config", path.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("200"), "{stderr}");
    assert!(stderr.contains("billing"), "{stderr}");
    assert!(
        stderr.contains("app"),
        "known upstreams are listed: {stderr}"
    );
    assert_eq!(
        stderr.lines().count(),
        2,
        "both problems, one line each: {stderr}"
    );
}

/// A missing file is named in the error; nothing else happens.
#[test]
fn a_missing_config_file_is_named() {
    let out = hookgate(&["check", "--config", "/nonexistent/hookgate.toml"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78));
    assert!(stderr.contains("/nonexistent/hookgate.toml"), "{stderr}");
}

/// `HOOKGATE_CONFIG` replaces the default path; `--log-format` goes before or after the
/// subcommand.
#[test]
fn hookgate_config_env_and_global_flags() {
    let scratch = TempDir::new("env");
    let path = scratch.write("from-env.toml", VALID);
    for args in [
        &["check", "--log-format", "json"][..],
        &["--log-format", "text", "check"],
    ] {
        let out = Command::new(BIN)
            .args(args)
            .env("HOOKGATE_CONFIG", &path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("from-env.toml: OK"));
    }
}

/// `serve` refuses an invalid config before binding anything.
#[test]
fn serve_refuses_an_invalid_config() {
    let scratch = TempDir::new("serve-invalid");
    let path = scratch.write(
        "c.toml",
        VALID.replacen("[server]\n", "[server]\nbogus = 1\n", 1),
    );
    let out = hookgate(&["serve", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(78));
}

/// `hookgate` with no subcommand serves: a real round trip through the binary, then SIGTERM
/// makes it exit 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_round_trip_then_sigterm_exits_zero() {
    let upstream = FakeUpstream::start(Reply::json(200, r#"{"fulfilled":true}"#)).await;
    let scratch = TempDir::new("serve");
    let config = VALID.replace("http://127.0.0.1:9/hook", &upstream.url("/hook"));
    let path = scratch.write("c.toml", &config);
    let (mut child, addr) = serve_binary(&path);

    let answer = Sender::http1()
        .post(&format!("http://{addr}/fp"), event(json!(1), "lead_signup"))
        .await;
    assert_eq!(answer.status, 200);
    assert_eq!(upstream.count(), 1);

    signal(&child, "TERM");
    let status = wait_for_exit(&mut child).await;
    assert_eq!(status.code(), Some(0));
}

/// Starts `hookgate --config path` and waits (bounded) for the address it logs as bound.
fn serve_binary(path: &Path) -> (KillOnDrop, String) {
    let (child, addr, _) = serve_binary_counting_events(path);
    (child, addr)
}

/// Like [`serve_binary`], also counting the "event handled" lines the process logs.
/// The child is killed if the test fails before stopping it.
fn serve_binary_counting_events(path: &Path) -> (KillOnDrop, String, std::sync::Arc<AtomicUsize>) {
    let mut child = KillOnDrop(
        Command::new(BIN)
            .args(["--config", path.to_str().unwrap(), "--log-format", "json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    // The first log line with a listen address tells where it bound port 0.
    let stdout = child.stdout.take().unwrap();
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let events = std::sync::Arc::new(AtomicUsize::new(0));
    let counted = std::sync::Arc::clone(&events);
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(log) = serde_json::from_str::<serde_json::Value>(&line) {
                if let Some(listen) = log["listen"].as_str() {
                    let _ = addr_tx.send(listen.to_owned());
                }
                if log["message"] == "event handled" {
                    counted.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
    });
    let addr = addr_rx
        .recv_timeout(STEP)
        .expect("hookgate logged its listen address");
    (child, addr, events)
}

/// `[server] workers = 3`: three worker threads, three listening sockets on the one port
/// (SO_REUSEPORT), and every connection served whichever worker the kernel gave it to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_runs_the_configured_workers() {
    let upstream = FakeUpstream::start(Reply::json(200, r#"{"fulfilled":true}"#)).await;
    let scratch = TempDir::new("workers");
    let config = VALID
        .replace("http://127.0.0.1:9/hook", &upstream.url("/hook"))
        .replace("[server]\n", "[server]\nworkers = 3\n");
    let path = scratch.write("c.toml", &config);
    let (mut child, addr, events_logged) = serve_binary_counting_events(&path);
    let addr: std::net::SocketAddr = addr.parse().expect("a socket address");

    // The listeners are bound before the address is logged; the threads start right after.
    let pid = child.id();
    eventually("three worker threads", || worker_threads(pid).len() == 3).await;
    assert_eq!(
        worker_threads(pid),
        ["hookgate-w0", "hookgate-w1", "hookgate-w2"]
    );
    assert_eq!(listening_sockets(addr.port()), 3, "one listener per worker");

    // Twelve connections of their own: the kernel spreads them over the three listeners.
    const CONNECTIONS: usize = 12;
    for n in 0..CONNECTIONS {
        let mut conn = RawConn::connect(addr).await;
        conn.write(&raw_post("/fp", &event(json!(n), "lead_signup"), ""))
            .await
            .expect("write a request");
        let answer = conn.read_response().await;
        assert_eq!(answer.status, 200, "connection {n}: {:?}", answer.body);
    }
    assert_eq!(upstream.count(), CONNECTIONS);
    // Worker threads batch their log lines, but write them out once idle: every event's line
    // is on stdout while the gateway still runs.
    eventually("a log line per event while running", || {
        events_logged.load(Ordering::SeqCst) == CONNECTIONS
    })
    .await;

    signal_pid(pid, "TERM");
    assert_eq!(wait_for_exit(&mut child).await.code(), Some(0));
}

/// The names of `pid`'s worker threads, sorted.
fn worker_threads(pid: u32) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("the process's threads")
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| name.starts_with("hookgate-w"))
        .collect();
    names.sort();
    names
}

/// Listening TCP sockets on 127.0.0.1:`port`, from /proc/net/tcp (state 0A = LISTEN).
fn listening_sockets(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let local = format!("0100007F:{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.get(1) == Some(&local.as_str()) && fields.get(3) == Some(&"0A")
        })
        .count()
}

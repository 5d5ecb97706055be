//! How long a connection may hold the proxy (`listener.rs`): a head sent
//! one byte at a time (slowloris), an idle keep-alive connection and a body
//! that stalls are closed at their configured timeouts; a listener at its
//! connection cap closes new connections at accept with one log line, not
//! one per connection; and with the descriptor limit at 1,024 and 1,100 idle
//! clients, a new client is still served or refused cleanly, with a quiet
//! log.
//!
//! Timeouts are set short here (half a second); each test checks that the
//! connection closed, and not before its timeout: a test cannot close a
//! connection early, and without the timeout it would stay open forever.

mod support;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use mesh_proxy::{Config, Proxy, ProxyHandle};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SHORT: Duration = Duration::from_millis(500);
/// Far longer than any timeout under test: a connection still open after
/// this was not closed by the proxy.
const NEVER: Duration = Duration::from_secs(15);

/// A sidecar routing `hw` to `upstream`, with `limits` changed by `set`.
async fn sidecar(upstream: &Upstream, set: impl FnOnce(&mut Config)) -> ProxyHandle {
    let mut config = Config::local_sidecar("client", refused_addr().await);
    set(&mut config);
    let proxy = Proxy::start(config).await.unwrap();
    proxy
        .apply_snapshot(snapshot(1, vec![service("hw", vec![upstream.endpoint()])]))
        .unwrap();
    proxy
}

const REQUEST: &[u8] = b"GET http://hw:8080/ HTTP/1.1\r\nHost: hw:8080\r\n\r\n";

/// Send one request on `stream` and read its whole response (the upstream
/// answers with its name, `hw-1`).
async fn exchange(stream: &mut TcpStream) -> String {
    stream.write_all(REQUEST).await.unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&seen).ends_with("hw-1") {
        let n = tokio::time::timeout(NEVER, stream.read(&mut buf))
            .await
            .expect("a response")
            .unwrap();
        assert!(
            n > 0,
            "closed mid-response: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&seen).into_owned()
}

/// Wait until the proxy closes `stream` (a read returns 0 or an error).
async fn closed(stream: &mut TcpStream, what: &str) {
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(NEVER, stream.read(&mut buf)).await {
            Err(_) => panic!("{what}: still open after {NEVER:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test]
async fn a_head_sent_one_byte_at_a_time_is_closed_at_the_request_headers_timeout() {
    let upstream = Upstream::start("hw-1").await;
    let proxy = sidecar(&upstream, |c| {
        c.limits.request_headers_timeout = Some(SHORT);
    })
    .await;
    let mut stream = TcpStream::connect(proxy.outbound_addr().unwrap())
        .await
        .unwrap();
    let opened = Instant::now();
    // Slowloris: a byte every 100 ms, never the blank line that ends a head.
    let trickle = async {
        for byte in b"GET http://hw:8080/ HTTP/1.1\r\nX-Slow: ".iter().cycle() {
            if stream.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(NEVER, trickle)
        .await
        .expect("the proxy closed the trickling connection");
    let took = opened.elapsed();
    assert!(took >= SHORT, "closed after {took:?}, before the timeout");
    assert_eq!(upstream.hits(), 0);
}

#[tokio::test]
async fn a_keep_alive_connection_waiting_for_its_next_request_outlives_the_headers_timeout() {
    let upstream = Upstream::start("hw-1").await;
    let proxy = sidecar(&upstream, |c| {
        // As Envoy's: the headers clock starts at a head's first byte, so
        // the wait between requests is the idle timeout's (long here).
        c.limits.request_headers_timeout = Some(SHORT);
        c.limits.idle_timeout = Some(NEVER);
    })
    .await;
    let mut stream = TcpStream::connect(proxy.outbound_addr().unwrap())
        .await
        .unwrap();
    let first = exchange(&mut stream).await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    tokio::time::sleep(SHORT * 4).await;
    let second = exchange(&mut stream).await;
    assert!(
        second.starts_with("HTTP/1.1 200"),
        "the same connection after {:?} idle: {second}",
        SHORT * 4
    );
    assert_eq!(upstream.hits(), 2);
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_at_the_idle_timeout() {
    let upstream = Upstream::start("hw-1").await;
    let proxy = sidecar(&upstream, |c| {
        // The headers clock does not count the wait for a next request
        // (the test above); off here all the same, so only idle is seen.
        c.limits.request_headers_timeout = None;
        c.limits.idle_timeout = Some(SHORT);
    })
    .await;
    let mut stream = TcpStream::connect(proxy.outbound_addr().unwrap())
        .await
        .unwrap();
    // The proxy's last activity (writing the response) comes after this
    // and before the client has read it all: idle is measured from a time
    // that cannot be later than the proxy's own clock start.
    let sent = Instant::now();
    let response = exchange(&mut stream).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    closed(&mut stream, "an idle keep-alive connection").await;
    let idle = sent.elapsed();
    assert!(
        idle >= SHORT,
        "closed {idle:?} after the request was sent, before the idle timeout"
    );
}

#[tokio::test]
async fn a_request_body_that_stalls_is_closed_at_the_stream_idle_timeout() {
    let upstream = Upstream::start("hw-1").await;
    let proxy = sidecar(&upstream, |c| {
        c.limits.stream_idle_timeout = Some(SHORT);
    })
    .await;
    let mut stream = TcpStream::connect(proxy.outbound_addr().unwrap())
        .await
        .unwrap();
    // A head promising 100 bytes, then 10 of them, then nothing.
    stream
        .write_all(
            b"POST http://hw:8080/upload HTTP/1.1\r\nHost: hw:8080\r\n\
              Content-Length: 100\r\n\r\n0123456789",
        )
        .await
        .unwrap();
    let stalled = Instant::now();
    closed(&mut stream, "a request whose body stalled").await;
    let took = stalled.elapsed();
    assert!(took >= SHORT, "closed after {took:?}, before the timeout");
}

#[tokio::test]
async fn beyond_the_cap_connections_are_closed_at_accept_with_one_log_line() {
    let (_guard, logs) = Logs::capture();
    let upstream = Upstream::start("hw-1").await;
    let proxy = sidecar(&upstream, |c| c.limits.max_connections = 3).await;
    let outbound = proxy.outbound_addr().unwrap();

    // Three connections, each answered: the cap is full.
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut stream = TcpStream::connect(outbound).await.unwrap();
        assert!(exchange(&mut stream).await.starts_with("HTTP/1.1 200"));
        held.push(stream);
    }
    // Fifty more are each closed before a byte is read.
    for _ in 0..50 {
        let mut stream = TcpStream::connect(outbound).await.unwrap();
        let _ = stream.write_all(REQUEST).await;
        closed(&mut stream, "a connection beyond the cap").await;
    }
    let refusals = logs
        .text()
        .lines()
        .filter(|l| l.contains("connection cap"))
        .count();
    assert_eq!(
        refusals,
        1,
        "fifty refusals, one log line:\n{}",
        logs.text()
    );
    // The three still work, and one closing makes room for a new client.
    assert!(exchange(&mut held[0]).await.starts_with("HTTP/1.1 200"));
    drop(held.pop());
    let served = retry_until_ok("a new client once one left", NEVER, async || {
        let mut stream = TcpStream::connect(outbound).await?;
        stream.write_all(REQUEST).await?;
        let mut buf = [0u8; 64];
        let n = stream.read(&mut buf).await?;
        anyhow::ensure!(n > 0, "closed at accept: the cap is still full");
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    })
    .await
    .unwrap();
    assert!(served.starts_with("HTTP/1.1 200"), "{served}");
}

// === the descriptor limit ===

/// Idle clients, more than the proxy's descriptor limit allows.
const IDLE_CLIENTS: usize = 1_100;

/// The two tests with 1,100 clients run one after the other: side by side
/// on two cores, connecting could take longer than the timeouts that free
/// the proxy's descriptors, and the limit would never be reached.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The binary under `prlimit --nofile=1024`, on a snapshot routing `hw` to
/// `upstream`, with `env`; stderr kept to count its lines.
async fn binary_at_1024_descriptors(upstream: &Upstream, env: &[(&str, &str)]) -> Limited {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("snapshot.json");
    let snapshot = snapshot(1, vec![service("hw", vec![upstream.endpoint()])]);
    std::fs::write(&file, serde_json::to_string(&snapshot).unwrap()).unwrap();
    let (admin, outbound) = (refused_addr().await, refused_addr().await);
    let prlimit = std::process::Command::new("prlimit")
        .arg("--version")
        .output();
    assert!(
        prlimit.is_ok_and(|o| o.status.success()),
        "this test needs prlimit(1) (util-linux) to start the proxy with 1,024 descriptors"
    );
    let child = tokio::process::Command::new("prlimit")
        .args(["--nofile=1024:1024", "--", PROXY_BIN])
        .env_clear()
        .env("MESH_SERVICE", "client")
        .env("MESH_SNAPSHOT_FILE", &file)
        .env("MESH_APP_ADDR", upstream.addr.to_string())
        .env("MESH_ADMIN_ADDR", admin.to_string())
        .env("MESH_OUTBOUND_ADDR", outbound.to_string())
        .env("MESH_INBOUND_ADDR", "127.0.0.1:0")
        .env("MESH_LOG", "info")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("prlimit starts the proxy");
    let ready = format!("http://{admin}/ready");
    let client = direct_client();
    retry_until_ok("the proxy to be ready", NEVER, async || {
        let status = client.get(&ready).send().await?.status();
        anyhow::ensure!(status == 200, "/ready answers {status}");
        Ok(())
    })
    .await
    .unwrap();
    Limited {
        child,
        admin,
        outbound,
        _dir: dir,
    }
}

/// The proxy binary started under prlimit.
struct Limited {
    child: tokio::process::Child,
    admin: SocketAddr,
    outbound: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Limited {
    /// SIGTERM, wait for the exit, and return everything it logged.
    async fn stop(mut self) -> String {
        // prlimit execs the proxy: the pid is the proxy's.
        let pid = self.child.id().expect("still running").to_string();
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        assert!(sent.success());
        let mut text = String::new();
        let mut pipe = self.child.stderr.take().expect("stderr piped");
        tokio::time::timeout(NEVER, pipe.read_to_string(&mut text))
            .await
            .expect("the proxy exits after SIGTERM")
            .unwrap();
        text
    }
}

/// Open `n` connections to `addr` and leave them idle.
async fn idle_clients(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        // The kernel completes the handshake from the listen queue even
        // when the proxy cannot accept: every connect succeeds.
        clients.push(TcpStream::connect(addr).await.unwrap());
    }
    clients
}

async fn get_once(outbound: SocketAddr) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect(outbound).await?;
    stream.write_all(REQUEST).await?;
    let mut buf = [0u8; 256];
    let n = stream.read(&mut buf).await?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_1024_descriptors_the_default_cap_refuses_cleanly_and_logs_little() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let upstream = Upstream::start("hw-1").await;
    let proxy = binary_at_1024_descriptors(&upstream, &[]).await;
    let clients = idle_clients(proxy.outbound, IDLE_CLIENTS).await;

    // The default cap is half of 1,024 less 64 kept back: 480. The 481st
    // client on is closed at accept, and so is a new one now: a clean
    // refusal (an empty read), not a wait.
    let answer = tokio::time::timeout(NEVER, get_once(proxy.outbound))
        .await
        .expect("refused at once, not left waiting");
    match answer {
        Ok(text) => assert!(
            text.is_empty() || text.starts_with("HTTP/1.1 200"),
            "served or closed, nothing else: {text:?}"
        ),
        Err(error) => assert!(
            matches!(
                error.downcast_ref::<std::io::Error>().map(|e| e.kind()),
                Some(std::io::ErrorKind::ConnectionReset)
            ),
            "{error}"
        ),
    }
    // The admin port still answers (its own cap, its own descriptors).
    let ready = format!("http://{}/ready", proxy.admin);
    let status = direct_client().get(&ready).send().await.unwrap().status();
    assert_eq!(status, 200);

    drop(clients);
    // Once they leave, clients are served again.
    let served = retry_until_ok(
        "a client served after the idle ones left",
        NEVER,
        async || {
            let text = get_once(proxy.outbound).await?;
            anyhow::ensure!(text.starts_with("HTTP/1.1 200"), "got {text:?}");
            Ok(text)
        },
    )
    .await
    .unwrap();
    assert!(served.contains("hw-1") || served.starts_with("HTTP/1.1 200"));

    let stderr = proxy.stop().await;
    let refusals = stderr
        .lines()
        .filter(|l| l.contains("connection cap"))
        .count();
    assert!(
        (1..=3).contains(&refusals),
        "620 refusals in a few seconds: one line per 10 s expected, got {refusals}:\n{stderr}"
    );
    assert!(
        stderr.lines().count() < 30,
        "the log is flooded ({} lines):\n{stderr}",
        stderr.lines().count()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_descriptors_the_accept_loop_backs_off_and_serves_when_some_close() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let upstream = Upstream::start("hw-1").await;
    // A cap above the descriptor limit: accept itself fails (EMFILE). The
    // idle timeout lets the proxy free descriptors by itself.
    let proxy = binary_at_1024_descriptors(
        &upstream,
        &[
            ("MESH_MAX_CONNECTIONS", "5000"),
            ("MESH_IDLE_TIMEOUT", "4s"),
            ("MESH_REQUEST_HEADERS_TIMEOUT", "4s"),
        ],
    )
    .await;
    let _clients = idle_clients(proxy.outbound, IDLE_CLIENTS).await;

    // A new client waits in the listen queue while descriptors are out,
    // then is served once the idle connections time out.
    let served = retry_until_ok(
        "a new client to be served",
        Duration::from_secs(30),
        async || {
            let text =
                tokio::time::timeout(Duration::from_secs(10), get_once(proxy.outbound)).await??;
            anyhow::ensure!(text.starts_with("HTTP/1.1 200"), "got {text:?}");
            Ok(text)
        },
    )
    .await
    .unwrap();
    assert!(served.starts_with("HTTP/1.1 200"));

    let stderr = proxy.stop().await;
    let failures = stderr
        .lines()
        .filter(|l| l.contains("accept failed"))
        .count();
    assert!(
        failures >= 1,
        "the descriptor limit was never reached: no accept failed\n{stderr}"
    );
    assert!(
        stderr.lines().count() < 30,
        "the log is flooded ({} lines):\n{stderr}",
        stderr.lines().count()
    );
}

// === settings ===

#[test]
fn the_limits_are_read_from_the_environment_with_envoys_defaults() {
    use std::collections::HashMap;
    let defaults = Config::from_strings(&HashMap::from([("MESH_SERVICE", "hw")])).unwrap();
    let limits = defaults.limits;
    assert_eq!(
        limits.request_headers_timeout,
        Some(Duration::from_secs(60))
    );
    assert_eq!(
        limits.idle_timeout,
        Some(Duration::from_secs(3600)),
        "Envoy's 1 h"
    );
    assert_eq!(
        limits.stream_idle_timeout,
        Some(Duration::from_secs(300)),
        "Envoy's 5 min"
    );
    assert_eq!(
        limits.drain_duration,
        Duration::from_secs(5),
        "Istio's terminationDrainDuration"
    );
    assert_eq!(limits.drain_timeout, Duration::from_secs(20));
    assert!(limits.max_connections >= 1);

    let set = Config::from_strings(&HashMap::from([
        ("MESH_SERVICE", "hw"),
        ("MESH_REQUEST_HEADERS_TIMEOUT", "250ms"),
        ("MESH_IDLE_TIMEOUT", "0"),
        ("MESH_STREAM_IDLE_TIMEOUT", "1m"),
        ("MESH_MAX_CONNECTIONS", "10"),
        ("MESH_DRAIN_DURATION", "1s"),
        ("MESH_DRAIN_TIMEOUT", "2s"),
    ]))
    .unwrap()
    .limits;
    assert_eq!(
        set.request_headers_timeout,
        Some(Duration::from_millis(250))
    );
    assert_eq!(set.idle_timeout, None, "0 turns a timeout off");
    assert_eq!(set.stream_idle_timeout, Some(Duration::from_secs(60)));
    assert_eq!(set.max_connections, 10);
    assert_eq!(
        (set.drain_duration, set.drain_timeout),
        (Duration::from_secs(1), Duration::from_secs(2))
    );

    for (var, value) in [
        ("MESH_IDLE_TIMEOUT", "5"),
        ("MESH_STREAM_IDLE_TIMEOUT", "soon"),
        ("MESH_MAX_CONNECTIONS", "0"),
        ("MESH_MAX_CONNECTIONS", "many"),
        ("MESH_DRAIN_DURATION", "-1s"),
    ] {
        let err = Config::from_strings(&HashMap::from([("MESH_SERVICE", "hw"), (var, value)]))
            .unwrap_err();
        assert_eq!(err.var, var, "{err}");
    }
}

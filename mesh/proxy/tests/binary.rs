//! The `mesh-proxy` binary: settings errors name the variable; it serves
//! without a control plane, and leaves cleanly on SIGTERM; it serves a
//! static snapshot from `MESH_SNAPSHOT_FILE` (what bench/ uses), and a bad
//! file stops it naming the file.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_mesh-proxy");

#[test]
fn a_bad_setting_stops_the_binary_naming_the_variable() {
    let output = Command::new(BIN)
        .env_clear()
        .env("MESH_SERVICE", "hw")
        .env("MESH_INBOUND_ADDR", "15006")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("MESH_INBOUND_ADDR"), "{stderr}");
}

#[tokio::test]
async fn the_binary_runs_without_its_control_plane_and_stops_on_sigterm() {
    let admin = refused_addr().await;
    let control = refused_addr().await;
    let mut child = tokio::process::Command::new(BIN)
        .env_clear()
        .env("MESH_SERVICE", "hw")
        .env("MESH_CONTROL_URL", format!("http://{control}"))
        .env("MESH_ADMIN_ADDR", admin.to_string())
        .env("MESH_OUTBOUND_ADDR", "127.0.0.1:0")
        .env("MESH_INBOUND_ADDR", "127.0.0.1:0")
        .env("MESH_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    let client = direct_client();
    let url = format!("http://{admin}/ready");
    wait_until(
        "the admin port answers",
        Duration::from_secs(10),
        async || client.get(&url).send().await.is_ok(),
    )
    .await;
    let ready = get(&client, &url).await;
    assert_eq!(ready.status, 503);
    assert!(ready.body.contains("no config from the control plane yet"));

    let pid = child.id().unwrap().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("the proxy exits after SIGTERM")
        .unwrap();
    assert!(status.success(), "{status}");

    let mut stderr = String::new();
    tokio::io::AsyncReadExt::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr)
        .await
        .unwrap();
    assert!(stderr.contains("control plane unreachable"), "{stderr}");
    // Sparse logging: a handful of warnings, not one per retry.
    assert!(
        stderr.matches("control plane unreachable").count() <= 8,
        "{stderr}"
    );
}

#[test]
fn a_bad_snapshot_file_stops_the_binary_naming_the_file_and_the_json_error() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("snapshot.json");
    std::fs::write(&bad, "{\"version\": 1,\n \"proxy\": }").unwrap();
    let missing = dir.path().join("missing.json");
    for (file, expected) in [(&bad, "line 2"), (&missing, "No such file")] {
        let output = Command::new(BIN)
            .env_clear()
            .env("MESH_SERVICE", "hw")
            .env("MESH_SNAPSHOT_FILE", file)
            .env("MESH_ADMIN_ADDR", "127.0.0.1:0")
            .env("MESH_OUTBOUND_ADDR", "127.0.0.1:0")
            .env("MESH_INBOUND_ADDR", "127.0.0.1:0")
            .output()
            .unwrap();
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(&*file.to_string_lossy()), "{stderr}");
        assert!(stderr.contains("MESH_SNAPSHOT_FILE"), "{stderr}");
        assert!(stderr.contains(expected), "{stderr}");
    }
}

#[tokio::test]
async fn the_binary_serves_a_static_snapshot_file_without_a_control_plane() {
    let upstream = Upstream::start("hw-1").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("snapshot.json");
    let snapshot = snapshot(7, vec![service("hw", vec![upstream.endpoint()])]);
    std::fs::write(&file, serde_json::to_string_pretty(&snapshot).unwrap()).unwrap();

    let (admin, outbound) = (refused_addr().await, refused_addr().await);
    let mut child = tokio::process::Command::new(BIN)
        .env_clear()
        .env("MESH_SERVICE", "client")
        .env("MESH_SNAPSHOT_FILE", &file)
        .env("MESH_APP_ADDR", upstream.addr.to_string())
        .env("MESH_ADMIN_ADDR", admin.to_string())
        .env("MESH_OUTBOUND_ADDR", outbound.to_string())
        .env("MESH_INBOUND_ADDR", "127.0.0.1:0")
        .env("MESH_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    // Ready at once: the snapshot came from the file.
    let client = direct_client();
    let ready_url = format!("http://{admin}/ready");
    wait_until(
        "the proxy is ready",
        Duration::from_secs(10),
        async || matches!(client.get(&ready_url).send().await, Ok(r) if r.status() == 200),
    )
    .await;
    let dump = get(&client, &format!("http://{admin}/config_dump")).await;
    assert!(dump.body.contains("\"version\": 7"), "{}", dump.body);

    let reply = get(&client_via(outbound), "http://hw:8080/hello").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, "hw-1");
    let stats_url = format!("http://{admin}/stats/prometheus");
    wait_until(
        "the request is counted",
        Duration::from_secs(10),
        async || {
            // One request: one istio_requests_total series for a 200 with no
            // flags, counted once (the label set in between is metrics.rs's).
            get(&client, &stats_url).await.body.lines().any(|line| {
                line.starts_with("istio_requests_total{")
                    && line.contains("response_code=\"200\"")
                    && line.contains("response_flags=\"-\"")
                    && line.ends_with("} 1")
            })
        },
    )
    .await;

    let pid = child.id().unwrap().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("the proxy exits after SIGTERM")
        .unwrap();
    assert!(status.success(), "{status}");
    let mut stderr = String::new();
    tokio::io::AsyncReadExt::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr)
        .await
        .unwrap();
    assert!(
        !stderr.contains("control plane"),
        "no control plane is contacted: {stderr}"
    );
    assert!(
        !stderr.contains("spans lost"),
        "no collector, no spans sent: {stderr}"
    );
}

/// Run the binary on a static snapshot with `encoding`, send one request
/// through it, stop it; returns its stderr and the upstream's address.
async fn access_log_of_one_request(encoding: &str) -> (String, String) {
    let upstream = Upstream::start("hw-1").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("snapshot.json");
    let snapshot = snapshot(7, vec![service("hw", vec![upstream.endpoint()])]);
    std::fs::write(&file, serde_json::to_string_pretty(&snapshot).unwrap()).unwrap();
    let (admin, outbound) = (refused_addr().await, refused_addr().await);
    let mut child = tokio::process::Command::new(BIN)
        .env_clear()
        .env("MESH_SERVICE", "client")
        .env("MESH_SNAPSHOT_FILE", &file)
        .env("MESH_APP_ADDR", upstream.addr.to_string())
        .env("MESH_ADMIN_ADDR", admin.to_string())
        .env("MESH_OUTBOUND_ADDR", outbound.to_string())
        .env("MESH_INBOUND_ADDR", "127.0.0.1:0")
        .env("MESH_LOG", "info")
        .env("MESH_ACCESS_LOG_ENCODING", encoding)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let client = direct_client();
    let ready_url = format!("http://{admin}/ready");
    wait_until(
        "the proxy is ready",
        Duration::from_secs(10),
        async || matches!(client.get(&ready_url).send().await, Ok(r) if r.status() == 200),
    )
    .await;
    let reply = get(&client_via(outbound), "http://hw:8080/hello").await;
    assert_eq!(reply.status, 200);
    let pid = child.id().unwrap().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("the proxy exits after SIGTERM")
        .unwrap();
    let mut stderr = String::new();
    tokio::io::AsyncReadExt::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr)
        .await
        .unwrap();
    (stderr, upstream.addr.to_string())
}

/// Issue 11: access lines were ~400 characters and wrapped on a projector.
/// By default the binary prints the short line; with
/// `MESH_ACCESS_LOG_ENCODING=json`, one JSON object with every field.
#[tokio::test]
async fn the_binary_prints_short_access_lines_or_json() {
    let (stderr, upstream) = access_log_of_one_request("text").await;
    let line = stderr
        .lines()
        .find(|l| l.contains(" outbound GET hw:8080/hello "))
        .unwrap_or_else(|| panic!("an access line: {stderr}"));
    assert!(line.len() < 160, "{} characters: {line}", line.len());
    assert!(line.contains(" 200 - "), "{line}");
    assert!(line.contains(&format!("upstream={upstream} ")), "{line}");
    assert!(!line.contains("request_id"), "{line}");

    let (stderr, upstream) = access_log_of_one_request("json").await;
    let access: serde_json::Value = stderr
        .lines()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("a JSON access line: {stderr}"));
    assert_eq!(access["authority"], "hw:8080", "{access}");
    assert_eq!(access["path"], "/hello", "{access}");
    assert_eq!(access["response_code"], 200, "{access}");
    assert_eq!(access["response_flags"], "-", "{access}");
    assert_eq!(access["upstream_host"], upstream.as_str(), "{access}");
    assert!(
        access["request_id"]
            .as_str()
            .is_some_and(|id| !id.is_empty()),
        "{access}"
    );
    // The proxy's other lines stay plain text, no colour codes in a pipe.
    assert!(!stderr.contains('\u{1b}'), "{stderr}");
}

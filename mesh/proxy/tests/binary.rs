//! The `mesh-proxy` binary: settings errors name the variable; it serves
//! without a control plane, and leaves cleanly on SIGTERM; it serves a
//! static snapshot from `MESH_SNAPSHOT_FILE` (what bench/ uses), and a bad
//! file stops it naming the file.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use support::*;

#[test]
fn a_bad_setting_stops_the_binary_naming_the_variable() {
    let output = Command::new(PROXY_BIN)
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
    let control = format!("http://{}", refused_addr().await);
    let mut proxy = ProxyBinary::spawn(
        &[("MESH_SERVICE", "hw"), ("MESH_CONTROL_URL", &control)],
        Stdio::piped(),
        tempfile::tempdir().unwrap(),
    )
    .await;

    let client = direct_client();
    let url = format!("http://{}/ready", proxy.admin);
    retry_until_ok(
        "the admin port to answer",
        Duration::from_secs(10),
        async || Ok(client.get(&url).send().await?),
    )
    .await
    .unwrap();
    let ready = get(&client, &url).await;
    assert_eq!(ready.status, 503);
    assert!(ready.body.contains("no config from the control plane yet"));

    proxy.sigterm();
    let status = proxy.exit_status().await;
    assert!(status.success(), "{status}");
    let stderr = proxy.stderr().await;
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
        let output = Command::new(PROXY_BIN)
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

/// The binary on snapshot version 7, which routes `hw` to the fake app
/// `hw-1`, logging at info to a pipe, with `env` on top; once ready.
async fn serving_hw(env: &[(&str, &str)]) -> (Upstream, ProxyBinary) {
    let upstream = Upstream::start("hw-1").await;
    let snapshot = snapshot(7, vec![service("hw", vec![upstream.endpoint()])]);
    let app = upstream.addr.to_string();
    let mut all = vec![
        ("MESH_SERVICE", "client"),
        ("MESH_APP_ADDR", app.as_str()),
        ("MESH_LOG", "info"),
    ];
    all.extend_from_slice(env);
    let proxy = ProxyBinary::start(&snapshot, &all, Stdio::piped()).await;
    (upstream, proxy)
}

#[tokio::test]
async fn the_binary_serves_a_static_snapshot_file_without_a_control_plane() {
    // Ready at once: the snapshot came from the file.
    let (_app, mut proxy) = serving_hw(&[]).await;
    let (admin, outbound) = (proxy.admin, proxy.outbound);
    let client = direct_client();
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
            Ok(get(&client, &stats_url).await.body.lines().any(|line| {
                line.starts_with("istio_requests_total{")
                    && line.contains("response_code=\"200\"")
                    && line.contains("response_flags=\"-\"")
                    && line.ends_with("} 1")
            }))
        },
    )
    .await
    .unwrap();

    proxy.sigterm();
    let status = proxy.exit_status().await;
    assert!(status.success(), "{status}");
    let stderr = proxy.stderr().await;
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
    let (upstream, mut proxy) = serving_hw(&[("MESH_ACCESS_LOG_ENCODING", encoding)]).await;
    let reply = get(&client_via(proxy.outbound), "http://hw:8080/hello").await;
    assert_eq!(reply.status, 200);
    proxy.sigterm();
    proxy.exit_status().await;
    (proxy.stderr().await, upstream.addr.to_string())
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

//! The control plane's write token (issue 15 item 10): a write without it is
//! refused with 401 and a message that says where the token lives; reads
//! and the span intake stay open; sidecars and `apply` work with it.
//!
//! Run with `cargo test -p mesh-control --test token`.

use std::time::Duration;

use mesh_control::token::{TOKEN_FILE, WriteToken};
use mesh_control::{Server, Settings};
use serde_json::json;

fn http() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// A control plane that keeps its token in its state directory, as the
/// binary does.
async fn control_with_state_file() -> (tempfile::TempDir, mesh_control::ServerHandle, String) {
    let state = tempfile::tempdir().unwrap();
    let mut settings = Settings::local(state.path());
    settings.write_token = WriteToken::StateFile;
    let control = Server::start(settings).await.unwrap();
    let token = std::fs::read_to_string(state.path().join(TOKEN_FILE))
        .expect("the control plane made its token file at start")
        .trim()
        .to_string();
    (state, control, token)
}

fn announce(instance: &str) -> mesh_api::xds::ProxyAnnounce {
    mesh_api::xds::ProxyAnnounce {
        instance: instance.into(),
        service: "reviews".into(),
        address: "127.0.0.1:9".into(),
        ready: true,
        ..Default::default()
    }
}

#[tokio::test]
async fn the_token_file_is_made_at_start_readable_only_by_its_owner() {
    let (state, control, token) = control_with_state_file().await;
    assert_eq!(token.len(), 64, "32 random bytes as hex");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(state.path().join(TOKEN_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "token file mode {:o}", mode & 0o777);
    }
    // A restart keeps the token: the proxies already running keep theirs.
    let dir = state.path().to_path_buf();
    control.shutdown().await.unwrap();
    let mut settings = Settings::local(&dir);
    settings.write_token = WriteToken::StateFile;
    let again = Server::start(settings).await.unwrap();
    let reread = std::fs::read_to_string(dir.join(TOKEN_FILE)).unwrap();
    assert_eq!(reread.trim(), token);
    again.shutdown().await.unwrap();
}

#[tokio::test]
async fn writes_without_the_token_are_refused_and_say_where_it_lives() {
    let (state, control, token) = control_with_state_file().await;
    let http = http();
    let proxy_url = format!("{}/v1/proxies/rogue-1", control.url());

    // An announce with no token: refused, nothing registered.
    let refused = http
        .put(&proxy_url)
        .json(&announce("rogue-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    assert_eq!(refused.headers()["www-authenticate"], "Bearer");
    let message = refused.text().await.unwrap();
    let file = state.path().join(TOKEN_FILE).display().to_string();
    assert!(
        message.contains(&file),
        "the 401 names the token file: {message}"
    );
    assert!(message.contains("no token was sent"), "{message}");

    // A wrong token (same length, one digit off): refused too.
    let mut wrong = token.clone().into_bytes();
    wrong[10] = if wrong[10] == b'0' { b'1' } else { b'0' };
    let wrong = String::from_utf8(wrong).unwrap();
    let refused = http
        .put(&proxy_url)
        .bearer_auth(&wrong)
        .json(&announce("rogue-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    assert!(
        refused
            .text()
            .await
            .unwrap()
            .contains("not this control plane's")
    );

    // Every other kind of write is guarded the same way.
    let apply = json!({"files": [{"name": "x.yaml", "content": ""}]});
    for (method, path, body) in [
        (reqwest::Method::POST, "/v1/config/apply", apply.clone()),
        (reqwest::Method::POST, "/v1/config/delete", apply.clone()),
        (
            reqwest::Method::POST,
            "/v1/proxies/rogue-1/ack",
            json!({"version": 1, "accepted": true}),
        ),
        (reqwest::Method::DELETE, "/v1/proxies/rogue-1", json!(null)),
    ] {
        let status = http
            .request(method.clone(), format!("{}{path}", control.url()))
            .json(&body)
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 401, "{method} {path} without the token");
    }
    // The dashboard's port serves the same API: guarded there too.
    let dashboard = control.dashboard_url().unwrap();
    let status = http
        .put(format!("{dashboard}v1/proxies/rogue-1"))
        .json(&announce("rogue-1"))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 401, "a write through the dashboard's port");

    let services: serde_json::Value = http
        .get(format!("{}/v1/services", control.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(services, json!([]), "no refused announce was registered");

    // With the token the same announce is taken.
    let accepted = http
        .put(&proxy_url)
        .bearer_auth(&token)
        .json(&announce("rogue-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status(), 200, "{}", accepted.text().await.unwrap());
    control.shutdown().await.unwrap();
}

#[tokio::test]
async fn reads_and_spans_need_no_token() {
    let (_state, control, _token) = control_with_state_file().await;
    let http = http();
    for path in ["/v1/services", "/v1/proxies", "/v1/config", "/metrics"] {
        let status = http
            .get(format!("{}{path}", control.url()))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 200, "GET {path}");
    }
    // Spans cannot change routing, and apps send them with stock exporters.
    let span = json!([{
        "traceId": "0123456789abcdef",
        "id": "0123456789abcdef",
        "name": "get /",
        "timestamp": 1_700_000_000_000_000u64,
        "duration": 1000,
        "localEndpoint": {"serviceName": "reviews"},
    }]);
    let status = http
        .post(format!("{}/api/v2/spans", control.url()))
        .json(&span)
        .send()
        .await
        .unwrap()
        .status();
    assert!(status.is_success(), "spans without a token: {status}");
    control.shutdown().await.unwrap();
}

#[tokio::test]
async fn sidecars_and_apply_work_with_the_token() {
    // mesh_testkit's mesh runs with a token, as `meshctl up` does: its
    // sidecars get MESH_CONTROL_TOKEN and its `apply` sends it.
    let mesh = mesh_testkit::Mesh::start().await.unwrap();
    let _reviews = mesh.instance("reviews", "v1").await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let services = mesh.services().await.unwrap();
        if services
            .iter()
            .any(|s| s.name == "reviews" && !s.endpoints.is_empty())
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the sidecar never registered: {services:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    mesh.apply(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews}\n\
         spec: {hosts: [reviews], http: [{route: [{destination: {host: reviews}}]}]}\n",
    )
    .await
    .unwrap();
    // And a write without it, at the same control plane, is refused.
    let status = http()
        .put(format!("{}/v1/proxies/rogue-1", mesh.control_url()))
        .json(&announce("rogue-1"))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 401);
}

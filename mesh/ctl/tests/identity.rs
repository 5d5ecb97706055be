//! End to end: every proxy that the real `meshctl up` starts (each sidecar and
//! the gateway) holds a workload certificate for exactly its own identity,
//! `meshctl get proxies` shows it, and `meshctl identity WORKLOAD` prints it.
//!
//! Like tests/up.rs it runs the real binaries, with the same harness
//! (tests/support): `cargo build --workspace --bins` first
//! (./scripts/test.sh does), with python3 and a JDK for the Guestbook.

use std::time::Duration;

use mesh_testkit::retry_until_ok;
use serde_json::Value;

mod support;

use support::Up;

/// A proxy asks for its certificate as it starts; the first announce that
/// carries it follows within a heartbeat or two.
const CERT_TIMEOUT: Duration = Duration::from_secs(60);

fn spiffe_id(service_account: &str) -> String {
    format!("spiffe://cluster.local/ns/default/sa/{service_account}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_proxy_meshctl_up_starts_holds_its_own_identity() {
    let mut up = Up::start("identity");
    up.wait_up().await;

    // Every proxy, the gateway included, announces the identity of the
    // certificate it holds, and it is its own: service account = service
    // locally, `ingressgateway` for the gateway.
    let proxies: Vec<Value> = retry_until_ok(
        "every proxy announces its certificate's identity",
        CERT_TIMEOUT,
        || {
            let out = up.meshctl(&["get", "proxies", "-o", "json"]);
            async move {
                let proxies: Vec<Value> = serde_json::from_slice(&out.stdout)?;
                let without: Vec<String> = proxies
                    .iter()
                    .filter(|p| p["identity"].as_str().is_none())
                    .map(|p| p["instance"].to_string())
                    .collect();
                anyhow::ensure!(
                    !proxies.is_empty() && without.is_empty(),
                    "no identity yet: {without:?}"
                );
                Ok(proxies)
            }
        },
    )
    .await
    .unwrap();
    for proxy in &proxies {
        assert_eq!(
            proxy["identity"].as_str().unwrap(),
            spiffe_id(proxy["service"].as_str().unwrap()),
            "{proxy}"
        );
    }
    assert!(
        proxies.iter().any(|p| p["mode"] == "gateway"),
        "the gateway is listed with its identity: {proxies:?}"
    );

    // The table a learner reads has the column.
    let table = up.meshctl_ok(&["get", "proxies"]);
    assert!(
        table.lines().next().unwrap().contains("SPIFFE ID"),
        "{table}"
    );
    assert!(table.contains(&spiffe_id("guestbook-service")), "{table}");

    // `meshctl identity` asks each instance's admin port for its certificate.
    let shown = up.meshctl_ok(&["identity", "guestbook-service"]);
    eprintln!("meshctl identity guestbook-service:\n{shown}");
    assert!(
        shown.contains(&format!(
            "SPIFFE ID      {}",
            spiffe_id("guestbook-service")
        )),
        "{shown}"
    );
    assert!(
        shown.matches("-----BEGIN CERTIFICATE-----").count() >= 2,
        "leaf and root in PEM: {shown}"
    );
    assert!(shown.contains("next rotation"), "{shown}");

    let gateway = up.meshctl_ok(&["identity", "ingressgateway", "--brief"]);
    assert!(
        gateway.contains(&format!("SPIFFE ID      {}", spiffe_id("ingressgateway"))),
        "{gateway}"
    );
    assert!(!gateway.contains("BEGIN CERTIFICATE"), "--brief: {gateway}");

    // The operator rotates the root: trusted first, then signing.
    let rotated = up.meshctl_ok(&["rotate-root"]);
    assert!(rotated.contains("A new root signs"), "{rotated}");
    assert!(!rotated.contains("warning"), "every proxy ACKed: {rotated}");
    // Traffic keeps flowing through the gateway and the sidecars behind it.
    let gateway_url = format!("http://127.0.0.1:{}/", up.gateway_port);
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let status = http.get(&gateway_url).send().await.unwrap().status();
    assert_eq!(status, 200, "the Guestbook after the rotation");

    // A workload that does not exist is an error that lists what does.
    let unknown = up.meshctl(&["identity", "no-such-workload"]);
    assert!(!unknown.status.success());
    let message = String::from_utf8_lossy(&unknown.stderr);
    assert!(message.contains("guestbook-service"), "{message}");
}

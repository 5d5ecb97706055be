//! What the two rotation tests (`mtls_rotation.rs`, certificates;
//! `root_rotation.rs`, the CA's root) set up alike: a client whose sidecar
//! talks mutual TLS to helloworld-service's, over connections that close
//! after 10 requests, so new handshakes keep happening under the load.

use std::time::Duration;

use mesh_testkit::{Instance, Mesh, retry_until_ok, wait_for_version};

/// Wait until `client`'s sidecar reaches `url` over mutual TLS (the server
/// sidecar writes `x-forwarded-client-cert` only for a TLS peer), then make
/// every connection to helloworld-service close after 10 requests.
pub async fn mtls_with_short_connections(
    mesh: &Mesh,
    client: &Instance,
    url: &str,
    wait: Duration,
) {
    retry_until_ok("mTLS between the sidecars", wait, || {
        let http = client.http();
        async move {
            let answer: serde_json::Value = http.get(url).send().await?.json().await?;
            anyhow::ensure!(
                answer["headers"].get("x-forwarded-client-cert").is_some(),
                "not mTLS yet: {answer}"
            );
            Ok(())
        }
    })
    .await
    .unwrap();
    mesh.apply(
        "
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: helloworld-service}
spec:
  host: helloworld-service
  trafficPolicy:
    connectionPool: {http: {maxRequestsPerConnection: 10}}
",
    )
    .await
    .unwrap();
    wait_for_version(
        &client.sidecar,
        mesh.version().expect("the control plane runs"),
    )
    .await
    .unwrap();
}

//! Retries end to end, through the control plane: a VirtualService's
//! `retries` reach the caller's sidecar, and with a single instance that
//! fails half its requests, success follows 1 - 0.5^(attempts + 1).

use anyhow::Result;
use mesh_testkit::{Mesh, assert_binomial, wait_for_version};

fn retries(attempts: u32) -> String {
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: helloworld-service
spec:
  hosts: [helloworld-service]
  http:
  - route:
    - destination: {{host: helloworld-service}}
    retries:
      attempts: {attempts}
      retryOn: 5xx
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn success_follows_the_number_of_attempts() -> Result<()> {
    let mesh = Mesh::start().await?;
    let client = mesh.client().await?;
    let flaky = mesh.instance("helloworld-service", "v1").await?;
    flaky.upstream.set_failure_rate(0.5);
    let http = client.http();

    // attempts 0: no retry at all; attempts 2: three tries in all.
    for attempts in [0u32, 2] {
        mesh.apply(&retries(attempts)).await?;
        wait_for_version(&client.sidecar, mesh.version().expect("running")).await?;
        let n = 1_000u64;
        let mut ok = 0;
        for _ in 0..n {
            let status = http
                .get("http://helloworld-service:8080/hello/ray")
                .send()
                .await?
                .status();
            if status == 200 {
                ok += 1;
            }
        }
        let p = 1.0 - 0.5f64.powi(attempts as i32 + 1);
        tracing::info!(attempts, ok, n, expected = p, "success with retries");
        assert_binomial(
            &format!("successes with attempts: {attempts}"),
            ok,
            n,
            p,
            4.0,
        );
    }
    Ok(())
}

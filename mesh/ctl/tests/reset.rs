//! `meshctl reset` against the real control plane: it removes every applied
//! VirtualService, DestinationRule and Gateway, in every namespace, names each
//! one it removed, and leaves the registry (the running instances) alone.
//!
//! It runs the `mesh-control` binary built beside meshctl: run
//! `cargo build --workspace --bins` first (./scripts/test.sh does).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use mesh_api::xds::{ProxyAnnounce, ProxyMode, ServiceStatus};
use serde_json::Value;

/// A mesh-control process; dropping it stops it, also when a check fails.
struct ControlPlane {
    child: Child,
    url: String,
    state_dir: PathBuf,
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.state_dir);
    }
}

impl ControlPlane {
    /// The write token the control plane made at start (it is up once it
    /// answers, and it makes the token before it answers anything).
    fn token(&self) -> String {
        let path = self.state_dir.join("control-token");
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("the control plane's token {}: {e}", path.display()))
            .trim()
            .to_string()
    }
}

fn meshctl_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_meshctl"))
}

fn start_control_plane() -> ControlPlane {
    let bin = meshctl_bin().with_file_name("mesh-control");
    assert!(
        bin.is_file(),
        "{} is not built: this test runs the real control plane; \
         run `cargo build --workspace --bins` first (./scripts/test.sh does)",
        bin.display()
    );
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let state_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "meshctl-reset-{}-{}",
        std::process::id(),
        fastrand::u32(..)
    ));
    let child = Command::new(&bin)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--state-dir")
        .arg(&state_dir)
        .args(["--dashboard-listen", "off"])
        // Its secure port's default (127.0.0.1:15012) is fixed: tests run
        // side by side, and no proxy here needs mutual TLS.
        .args(["--secure-listen", "off"])
        // The announced instance below must not expire during the test.
        .env("MESH_LEASE_MS", "600000")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mesh-control starts");
    ControlPlane {
        child,
        url: format!("http://127.0.0.1:{port}"),
        state_dir,
    }
}

fn meshctl(control: &ControlPlane, args: &[&str]) -> Output {
    Command::new(meshctl_bin())
        .args(args)
        .args(["--control-url", &control.url])
        .env("MESH_CONTROL_TOKEN", control.token())
        .env_remove("MESH_WORKDIR")
        .output()
        .expect("meshctl runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn describe(output: &Output) -> String {
    format!(
        "{}\n--- stdout ---\n{}--- stderr ---\n{}",
        output.status,
        stdout(output),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// What a learner leaves behind after two labs: subsets and a canary split,
/// a Gateway, and one resource outside `default`.
const LEFTOVERS: &str = "\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: helloworld-service
spec:
  host: helloworld-service
  subsets:
  - name: v1
    labels:
      version: v1
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: helloworld-service
spec:
  hosts:
  - helloworld-service
  http:
  - route:
    - destination:
        host: helloworld-service
        subset: v1
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: guestbook-gateway
spec:
  selector:
    istio: ingressgateway
  servers:
  - port:
      number: 80
      name: http
      protocol: HTTP
    hosts:
    - '*'
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
  namespace: team-b
spec:
  hosts:
  - reviews
  http:
  - route:
    - destination:
        host: reviews
";

#[tokio::test]
async fn reset_removes_every_applied_resource_and_only_those() {
    let control = start_control_plane();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();

    // Wait until the control plane answers (it binds at once; the state
    // directory is created first).
    let start = Instant::now();
    while http
        .get(format!("{}/v1/config", control.url))
        .send()
        .await
        .is_err()
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "mesh-control at {} did not answer within 30 s",
            control.url
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A running instance, as its sidecar announces it: reset must keep it.
    let instance = "helloworld-service-v1-reset";
    let announce = ProxyAnnounce {
        instance: instance.into(),
        mode: ProxyMode::Sidecar,
        service: "helloworld-service".into(),
        version: "v1".into(),
        address: "127.0.0.1:1".into(),
        ready: true,
        ..ProxyAnnounce::default()
    };
    // Writes need the token the control plane made in its state directory
    // (mesh/control/src/token.rs); meshctl is handed it the same way below.
    let answer = http
        .put(format!("{}/v1/proxies/{instance}", control.url))
        .bearer_auth(control.token())
        .json(&announce)
        .send()
        .await
        .unwrap();
    assert!(answer.status().is_success(), "announce: {answer:?}");

    let file = control.state_dir.with_extension("leftovers.yaml");
    std::fs::write(&file, LEFTOVERS).unwrap();
    let applied = meshctl(&control, &["apply", "-f", file.to_str().unwrap()]);
    std::fs::remove_file(&file).unwrap();
    assert!(applied.status.success(), "apply: {}", describe(&applied));

    // Reset names every resource it removed, kubectl's way, and counts them.
    let reset = meshctl(&control, &["reset"]);
    assert!(reset.status.success(), "reset: {}", describe(&reset));
    let out = stdout(&reset);
    for line in [
        "virtualservice.networking.istio.io/helloworld-service deleted",
        "virtualservice.networking.istio.io/reviews deleted",
        "destinationrule.networking.istio.io/helloworld-service deleted",
        "gateway.networking.istio.io/guestbook-gateway deleted",
        "Removed 4 resources",
    ] {
        assert!(out.contains(line), "reset does not say {line:?}:\n{out}");
    }

    // Nothing is applied any more, in any namespace...
    let config: Vec<Value> = http
        .get(format!("{}/v1/config", control.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(config.is_empty(), "left after reset: {config:#?}");

    // ...and the registry is as it was.
    let services: Vec<ServiceStatus> = http
        .get(format!("{}/v1/services", control.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let hello = services
        .iter()
        .find(|s| s.name == "helloworld-service")
        .unwrap_or_else(|| panic!("reset dropped the registered service: {services:#?}"));
    assert!(
        hello.endpoints.iter().any(|e| e.instance == instance),
        "reset dropped the instance: {hello:#?}"
    );

    // A second reset has nothing to do, and says so.
    let again = meshctl(&control, &["reset"]);
    assert!(again.status.success(), "reset again: {}", describe(&again));
    assert!(
        stdout(&again).contains("Nothing to reset"),
        "{}",
        describe(&again)
    );
}

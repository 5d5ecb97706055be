//! End to end: every proxy that the real `meshctl up` starts (each sidecar and
//! the gateway) holds a workload certificate for exactly its own identity,
//! `meshctl get proxies` shows it, and `meshctl identity WORKLOAD` prints it.
//!
//! Like tests/up.rs it runs the real binaries: `cargo build --workspace
//! --bins` first (./scripts/test.sh does), with python3 and a JDK for the
//! Guestbook. The control plane and the gateway get free ports, so it can
//! run beside another mesh. Every wait polls with a deadline.

use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

/// Starting the JVM on a busy two-core machine is the slow part.
const START_TIMEOUT: Duration = Duration::from_secs(240);
/// A proxy asks for its certificate as it starts; the first announce that
/// carries it follows within a heartbeat or two.
const CERT_TIMEOUT: Duration = Duration::from_secs(60);

/// A running `meshctl up`; dropping it stops the mesh.
struct Up {
    child: Option<Child>,
    workdir: PathBuf,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
}

impl Up {
    fn start() -> Up {
        let bin = meshctl_bin();
        let missing: Vec<_> = ["mesh-control", "mesh-proxy", "guestbook-ui"]
            .into_iter()
            .filter(|name| !bin.parent().unwrap().join(name).is_file())
            .collect();
        assert!(
            missing.is_empty(),
            "{missing:?} not built beside {}: this test runs the real binaries; \
             run `cargo build --workspace --bins` first (./scripts/test.sh does)",
            bin.display()
        );
        let workdir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "meshctl-identity-{}-{}",
            std::process::id(),
            fastrand::u32(..)
        ));
        let _ = std::fs::remove_dir_all(&workdir);
        std::fs::create_dir_all(&workdir).unwrap();
        let stdout_path = workdir.with_extension("stdout");
        let stderr_path = workdir.with_extension("stderr");
        let child = Command::new(&bin)
            .args(["up", "--control-port", &free_port().to_string()])
            .args(["--gateway-port", &free_port().to_string()])
            .arg("--workdir")
            .arg(&workdir)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout_path).unwrap())
            .stderr(std::fs::File::create(&stderr_path).unwrap())
            .spawn()
            .expect("meshctl starts");
        Up {
            child: Some(child),
            workdir,
            stdout_path,
            stderr_path,
        }
    }

    async fn wait_up(&mut self) {
        eventually("meshctl up reports the mesh is up", START_TIMEOUT, || {
            self.assert_running();
            let stdout = std::fs::read_to_string(&self.stdout_path).unwrap_or_default();
            async move {
                if stdout.contains("micromesh is up") {
                    Ok(())
                } else {
                    Err("not yet".to_string())
                }
            }
        })
        .await;
    }

    fn meshctl(&self, args: &[&str]) -> Output {
        Command::new(meshctl_bin())
            .args(args)
            .arg("--workdir")
            .arg(&self.workdir)
            .stdin(Stdio::null())
            .output()
            .expect("meshctl runs")
    }

    fn meshctl_ok(&self, args: &[&str]) -> String {
        let out = self.meshctl(args);
        assert!(
            out.status.success(),
            "meshctl {args:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn assert_running(&mut self) {
        let child = self.child.as_mut().unwrap();
        if let Some(status) = child.try_wait().unwrap() {
            let stderr = std::fs::read_to_string(&self.stderr_path).unwrap_or_default();
            panic!("meshctl up exited ({status}):\n{stderr}");
        }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if child.try_wait().ok().flatten().is_none() {
                let _ = self.meshctl(&["down"]);
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}

fn meshctl_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_meshctl"))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(e) if Instant::now() >= deadline => {
                panic!("{what}: not within {timeout:?}; last: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

fn spiffe_id(service_account: &str) -> String {
    format!("spiffe://cluster.local/ns/default/sa/{service_account}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_proxy_meshctl_up_starts_holds_its_own_identity() {
    let mut up = Up::start();
    up.wait_up().await;

    // Every proxy, the gateway included, announces the identity of the
    // certificate it holds, and it is its own: service account = service
    // locally, `ingressgateway` for the gateway.
    let proxies: Vec<Value> = eventually(
        "every proxy announces its certificate's identity",
        CERT_TIMEOUT,
        || {
            let out = up.meshctl(&["get", "proxies", "-o", "json"]);
            async move {
                let proxies: Vec<Value> =
                    serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
                let without: Vec<String> = proxies
                    .iter()
                    .filter(|p| p["identity"].as_str().is_none())
                    .map(|p| p["instance"].to_string())
                    .collect();
                if proxies.is_empty() || !without.is_empty() {
                    return Err(format!("no identity yet: {without:?}"));
                }
                Ok(proxies)
            }
        },
    )
    .await;
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

    // A workload that does not exist is an error that lists what does.
    let unknown = up.meshctl(&["identity", "no-such-workload"]);
    assert!(!unknown.status.success());
    let message = String::from_utf8_lossy(&unknown.stderr);
    assert!(message.contains("guestbook-service"), "{message}");
}

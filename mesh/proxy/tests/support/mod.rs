//! Shared helpers for the proxy's tests: a client that uses a sidecar as its
//! HTTP proxy, snapshots, a capture of the access log, and the `mesh-proxy`
//! binary run on a static snapshot ([`ProxyBinary`]). The fake apps and the
//! pollers come from mesh-testkit, re-exported here.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesh_api::snapshot::*;

// The fake app and the pollers are the suite's own, in mesh-testkit:
// `Upstream` (start, with, with_delay, hits, connections, last_request,
// endpoint), `wait_until`/`wait_for` for conditions (an error ends the wait)
// and `retry_until_ok` for actions that may fail while something comes up.
#[allow(unused_imports)] // each test binary uses some of them
pub use mesh_testkit::{Behaviour, Upstream, retry_until_ok, wait_for, wait_until};

/// An address nothing listens on (bound, then closed).
pub async fn refused_addr() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// An HTTP client that uses `proxy` as its HTTP proxy, like an app with
/// `HTTP_PROXY` set.
pub fn client_via(proxy: SocketAddr) -> reqwest::Client {
    reqwest::Client::builder()
        .proxy(reqwest::Proxy::http(format!("http://{proxy}")).unwrap())
        .build()
        .unwrap()
}

/// A client that talks to servers directly.
pub fn direct_client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

pub async fn get(client: &reqwest::Client, url: &str) -> Reply {
    let rsp = client.get(url).send().await.unwrap();
    Reply {
        status: rsp.status().as_u16(),
        headers: rsp.headers().clone(),
        body: rsp.text().await.unwrap(),
    }
}

/// One service `name` whose default route goes to one cluster.
pub fn service(name: &str, endpoints: Vec<Endpoint>) -> (VirtualHost, Cluster) {
    let vh = VirtualHost {
        name: name.into(),
        domains: vec![name.into(), format!("{name}:8080")],
        routes: vec![HttpRoute {
            name: "default".into(),
            destinations: vec![Destination {
                cluster: name.into(),
                weight: 100,
            }],
            retries: RetryPolicy::none(),
            ..Default::default()
        }],
    };
    let cluster = Cluster {
        name: name.into(),
        service: name.into(),
        endpoints,
        ..Default::default()
    };
    (vh, cluster)
}

pub fn snapshot(version: u64, services: Vec<(VirtualHost, Cluster)>) -> Snapshot {
    let (virtual_hosts, clusters) = services.into_iter().unzip();
    Snapshot {
        version,
        proxy: "test".into(),
        virtual_hosts,
        clusters,
        gateway: None,
        inbound: Default::default(),
        trust_bundle: Vec::new(),
    }
}

/// Captures `access` log lines for the current thread (use with a
/// current-thread runtime, `#[tokio::test]`'s default, so every task of the
/// test runs on this thread).
///
/// One global subscriber serves every test of the binary and hands each
/// line to the buffer of the thread that wrote it. (A per-test
/// `set_default` subscriber looks simpler, but tracing caches each
/// callsite's interest globally, so with tests running in parallel a line
/// could be filtered out by another test's subscriber: a rare, real flake.)
#[derive(Clone, Default)]
pub struct Logs(Arc<Mutex<Vec<u8>>>);

thread_local! {
    static CURRENT: std::cell::RefCell<Option<Logs>> = const { std::cell::RefCell::new(None) };
}

/// Stops the capture for this thread when dropped.
pub struct LogsGuard;

impl Drop for LogsGuard {
    fn drop(&mut self) {
        CURRENT.with(|current| current.borrow_mut().take());
    }
}

/// Writes to the capturing buffer of the current thread, if any.
struct ThreadWriter;

impl std::io::Write for ThreadWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        CURRENT.with(|current| {
            if let Some(logs) = current.borrow().as_ref() {
                logs.0.lock().unwrap().extend_from_slice(buf);
            }
        });
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    pub fn capture() -> (LogsGuard, Logs) {
        static INSTALL: std::sync::Once = std::sync::Once::new();
        INSTALL.call_once(|| {
            let subscriber = tracing_subscriber::fmt()
                .with_env_filter("access=info,mesh_proxy=debug")
                .with_ansi(false)
                .with_writer(|| ThreadWriter)
                .finish();
            tracing::subscriber::set_global_default(subscriber)
                .expect("no other global subscriber in the proxy's tests");
        });
        let logs = Logs::default();
        CURRENT.with(|current| *current.borrow_mut() = Some(logs.clone()));
        (LogsGuard, logs)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// Access-log lines (those the `access` target wrote).
    pub fn access_lines(&self) -> Vec<String> {
        self.text()
            .lines()
            .filter(|l| l.contains(" access:"))
            .map(str::to_string)
            .collect()
    }
}

// === impl ProxyBinary ===

/// The `mesh-proxy` binary of this build.
pub const PROXY_BIN: &str = env!("CARGO_BIN_EXE_mesh-proxy");

/// A `mesh-proxy` process serving a static snapshot (`MESH_SNAPSHOT_FILE`,
/// no control plane), as bench/ runs it; killed when dropped.
///
/// It starts with a clean environment: the snapshot file, an admin and an
/// outbound address picked here, `MESH_INBOUND_ADDR=127.0.0.1:0`,
/// `MESH_LOG=warn`, then `env` on top (a variable set there wins).
/// [`ProxyBinary::start`] returns once `/ready` answers 200.
pub struct ProxyBinary {
    pub child: tokio::process::Child,
    pub admin: SocketAddr,
    pub outbound: SocketAddr,
    _dir: tempfile::TempDir,
}

impl ProxyBinary {
    /// Run it on `snapshot` and wait until it is ready.
    pub async fn start(snapshot: &Snapshot, env: &[(&str, &str)], stderr: Stdio) -> ProxyBinary {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("snapshot.json");
        std::fs::write(&file, serde_json::to_string_pretty(snapshot).unwrap()).unwrap();
        let file = file.to_str().expect("a UTF-8 temp path").to_string();
        let mut with_file = vec![("MESH_SNAPSHOT_FILE", file.as_str())];
        with_file.extend_from_slice(env);
        let proxy = ProxyBinary::spawn(&with_file, stderr, dir).await;
        let client = direct_client();
        let ready = format!("http://{}/ready", proxy.admin);
        // The admin port refuses until the binary listens: retried.
        retry_until_ok(
            "the proxy binary to be ready",
            Duration::from_secs(20),
            async || {
                let status = client.get(&ready).send().await?.status();
                anyhow::ensure!(status == 200, "/ready answers {status}");
                Ok(())
            },
        )
        .await
        .unwrap();
        proxy
    }

    /// Run it with `env` (no snapshot file unless `env` names one) and
    /// return at once: a test of start-up waits for what it looks at.
    pub async fn spawn(env: &[(&str, &str)], stderr: Stdio, dir: tempfile::TempDir) -> ProxyBinary {
        let (admin, outbound) = (refused_addr().await, refused_addr().await);
        let child = tokio::process::Command::new(PROXY_BIN)
            .env_clear()
            .env("MESH_ADMIN_ADDR", admin.to_string())
            .env("MESH_OUTBOUND_ADDR", outbound.to_string())
            .env("MESH_INBOUND_ADDR", "127.0.0.1:0")
            .env("MESH_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .expect("the mesh-proxy binary starts");
        ProxyBinary {
            child,
            admin,
            outbound,
            _dir: dir,
        }
    }

    /// Send SIGTERM, as a kubelet does to stop a container.
    pub fn sigterm(&self) {
        let pid = self
            .child
            .id()
            .expect("the proxy is still running")
            .to_string();
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill(1) runs");
        assert!(sent.success(), "kill -TERM {pid}: {sent}");
    }

    /// Wait for the process to exit (10 s at most).
    pub async fn exit_status(&mut self) -> ExitStatus {
        tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .expect("the proxy exits within 10 s")
            .unwrap()
    }

    /// Everything it wrote to stderr (started with `Stdio::piped()`); read
    /// after it exited.
    pub async fn stderr(&mut self) -> String {
        let mut text = String::new();
        let pipe = self
            .child
            .stderr
            .as_mut()
            .expect("started with Stdio::piped() for stderr");
        tokio::io::AsyncReadExt::read_to_string(pipe, &mut text)
            .await
            .unwrap();
        text
    }
}

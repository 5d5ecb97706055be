//! Shared helpers for the proxy's in-process tests: upstream apps on
//! 127.0.0.1:0, a client that uses a sidecar as its HTTP proxy, snapshots,
//! and a capture of the access log.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_api::snapshot::*;

/// What an upstream answers: status and body, given the request and how
/// many requests it has seen before this one.
pub type Behaviour = Arc<dyn Fn(&http::request::Parts, usize) -> (u16, String) + Send + Sync>;

/// A tiny HTTP app on 127.0.0.1:0.
pub struct Upstream {
    pub addr: SocketAddr,
    pub name: String,
    hits: Arc<AtomicUsize>,
    connections: Arc<AtomicUsize>,
    pub last_request: Arc<Mutex<Option<http::request::Parts>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    /// Answers 200 with its own name.
    pub async fn start(name: &str) -> Upstream {
        let body = name.to_string();
        Upstream::with(name, Arc::new(move |_, _| (200, body.clone()))).await
    }

    pub async fn with(name: &str, behaviour: Behaviour) -> Upstream {
        Upstream::with_delay(name, behaviour, Duration::ZERO).await
    }

    pub async fn with_delay(name: &str, behaviour: Behaviour, delay: Duration) -> Upstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let connections = Arc::new(AtomicUsize::new(0));
        let accepted = connections.clone();
        let last_request = Arc::new(Mutex::new(None));
        let (h, l) = (hits.clone(), last_request.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                accepted.fetch_add(1, Ordering::SeqCst);
                let (hits, last, behaviour) = (h.clone(), l.clone(), behaviour.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let (hits, last, behaviour) =
                            (hits.clone(), last.clone(), behaviour.clone());
                        async move {
                            let (parts, body) = req.into_parts();
                            let _ = body.collect().await;
                            let n = hits.fetch_add(1, Ordering::SeqCst);
                            let (status, text) = behaviour(&parts, n);
                            *last.lock().unwrap() = Some(parts);
                            if !delay.is_zero() {
                                tokio::time::sleep(delay).await;
                            }
                            let mut rsp = http::Response::new(Full::new(Bytes::from(text)));
                            *rsp.status_mut() = http::StatusCode::from_u16(status).unwrap();
                            Ok::<_, Infallible>(rsp)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Upstream {
            addr,
            name: name.to_string(),
            hits,
            connections,
            last_request,
            task,
        }
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    pub fn endpoint(&self) -> Endpoint {
        Endpoint {
            instance: self.name.clone(),
            address: self.addr.to_string(),
            labels: BTreeMap::new(),
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

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

/// Poll the condition `check` until it holds, or panic when `deadline`
/// passes. It takes a `bool`, so nothing here can retry a failed request
/// away: a test that sends requests checks each one itself. (The same
/// semantics as `mesh_testkit::wait_until`, in the closure style these
/// tests use; `mesh_testkit::retry_until_ok` is the one that retries errors.)
pub async fn wait_until(what: &str, deadline: Duration, mut check: impl AsyncFnMut() -> bool) {
    let end = tokio::time::Instant::now() + deadline;
    loop {
        if check().await {
            return;
        }
        if tokio::time::Instant::now() > end {
            panic!("timed out waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

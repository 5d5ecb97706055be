//! What the edge tests share: an app that records every request exactly as
//! it arrived, a sidecar and a gateway in front of it, and a raw-socket
//! client that sends bytes no well-behaved HTTP client would.
//!
//! The three listeners under test all reach the same recording app:
//!
//! ```text
//! raw client --> sidecar outbound (route host `hw`) ----\
//! raw client --> gateway (route host `hw`) -------------+--> recording app
//! raw client --> sidecar inbound (MESH_APP_ADDR) -------/
//! ```
//!
//! The routes of `hw` match `prefix: /public` only, so a path that
//! normalizes to `/admin` is 404 at the outbound and the gateway (and the
//! app never sees it), while the inbound, which does not route, hands the
//! app the normalized path.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_api::snapshot::*;
use mesh_proxy::{Config, Proxy, ProxyHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One request as the app received it.
#[derive(Clone, Debug)]
pub struct Arrived {
    pub method: String,
    /// The request target as the app's server parsed it (origin form).
    pub target: String,
    pub version: http::Version,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Arrived {
    /// The one value of `name`, or `None`; panics if there are several.
    pub fn header(&self, name: &str) -> Option<String> {
        let values: Vec<_> = self.headers.get_all(name).iter().collect();
        assert!(
            values.len() <= 1,
            "{name} arrived {} times: {values:?}",
            values.len()
        );
        values.first().map(|v| v.to_str().unwrap().to_string())
    }
}

/// An app that answers 200 `ok` and keeps every request it got.
pub struct RecordingApp {
    pub addr: SocketAddr,
    arrived: Arc<Mutex<Vec<Arrived>>>,
    task: tokio::task::JoinHandle<()>,
}

impl RecordingApp {
    pub async fn start() -> RecordingApp {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let arrived = Arc::new(Mutex::new(Vec::new()));
        let record = arrived.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let record = record.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let record = record.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await.map(|b| b.to_bytes());
                            // Recorded before answering: once the client
                            // has a response, what arrived is known.
                            record.lock().unwrap().push(Arrived {
                                method: parts.method.to_string(),
                                target: parts.uri.to_string(),
                                version: parts.version,
                                headers: parts.headers,
                                body: body.unwrap_or_default(),
                            });
                            Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from("ok"))))
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        RecordingApp {
            addr,
            arrived,
            task,
        }
    }

    /// How many requests arrived so far.
    pub fn count(&self) -> usize {
        self.arrived.lock().unwrap().len()
    }

    /// Every request that arrived, in order.
    pub fn all(&self) -> Vec<Arrived> {
        self.arrived.lock().unwrap().clone()
    }

    /// The last request that arrived.
    pub fn last(&self) -> Option<Arrived> {
        self.arrived.lock().unwrap().last().cloned()
    }
}

impl Drop for RecordingApp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The `hw` service: one route, `prefix: /public`, to the recording app.
pub fn hw_service(app: SocketAddr) -> (VirtualHost, Cluster) {
    let vh = VirtualHost {
        name: "hw".into(),
        domains: vec!["hw".into(), "hw:8080".into()],
        routes: vec![public_route()],
    };
    let cluster = Cluster {
        name: "hw".into(),
        service: "hw".into(),
        endpoints: vec![Endpoint {
            instance: "hw-1".into(),
            address: app.to_string(),
            labels: BTreeMap::new(),
            identity: None,
            tls_mode: Default::default(),
        }],
        ..Default::default()
    };
    (vh, cluster)
}

fn public_route() -> HttpRoute {
    HttpRoute {
        name: "public".into(),
        matches: vec![RouteMatch {
            uri: Some(StringMatch::Prefix("/public".into())),
            ..Default::default()
        }],
        destinations: vec![Destination {
            cluster: "hw".into(),
            weight: 100,
        }],
        retries: RetryPolicy::none(),
        ..Default::default()
    }
}

/// A snapshot with `hw` for a sidecar's outbound side.
pub fn sidecar_snapshot(app: SocketAddr) -> Snapshot {
    let (vh, cluster) = hw_service(app);
    Snapshot {
        version: 1,
        proxy: "edge".into(),
        virtual_hosts: vec![vh],
        clusters: vec![cluster],
        gateway: None,
        inbound: Default::default(),
        trust_bundle: Vec::new(),
    }
}

/// A snapshot with `hw` served at a gateway, its endpoint at `endpoint`.
pub fn gateway_snapshot(endpoint: SocketAddr) -> Snapshot {
    let (vh, cluster) = hw_service(endpoint);
    Snapshot {
        version: 1,
        proxy: "edge-gateway".into(),
        virtual_hosts: vec![],
        clusters: vec![cluster],
        gateway: Some(GatewayConfig {
            gateways: vec!["default/edge".into()],
            virtual_hosts: vec![vh],
        }),
        inbound: Default::default(),
        trust_bundle: Vec::new(),
    }
}

/// A sidecar of `hw` whose outbound routes to the app and whose inbound
/// forwards to it; `tune` adjusts its settings first.
pub async fn sidecar(app: &RecordingApp, tune: impl FnOnce(&mut Config)) -> ProxyHandle {
    let mut config = Config::local_sidecar("hw", app.addr);
    tune(&mut config);
    let proxy = Proxy::start(config).await.unwrap();
    proxy.apply_snapshot(sidecar_snapshot(app.addr)).unwrap();
    proxy
}

/// A gateway serving `hw`, whose endpoint is `endpoint`.
pub async fn gateway(endpoint: SocketAddr, tune: impl FnOnce(&mut Config)) -> ProxyHandle {
    let mut config = Config::local_gateway();
    tune(&mut config);
    let proxy = Proxy::start(config).await.unwrap();
    proxy.apply_snapshot(gateway_snapshot(endpoint)).unwrap();
    proxy
}

/// A response read off a raw socket.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub head: String,
    pub body: String,
}

/// Send `request` as written and read the answer until the server closes
/// the connection (every request here says `Connection: close`, and a
/// refusal closes too). The bound on the read only keeps a broken proxy
/// from hanging the suite; nothing is timed.
pub async fn raw(addr: SocketAddr, request: &str) -> RawResponse {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut bytes = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut bytes))
        .await
        .unwrap_or_else(|_| panic!("no answer (or the connection stayed open) for {request:?}"))
        .unwrap_or_else(|e| panic!("reading the answer to {request:?}: {e}"));
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response to {request:?}: {text:?}"));
    RawResponse {
        status,
        head: head.to_string(),
        body: body.to_string(),
    }
}

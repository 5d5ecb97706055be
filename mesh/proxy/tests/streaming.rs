//! Bodies stream through the mesh: a 100 MiB upload and a 100 MiB download
//! cross the gateway and two sidecars (real `mesh-proxy` processes) while
//! each proxy's peak RSS stays a few megabytes; retries replay a small body
//! from the 64 KiB replay buffer on the second endpoint, while a body over
//! the buffer is sent once and the access log says why it was not retried;
//! a client that hangs up mid-upload ends the upstream request too.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_api::snapshot::*;
use mesh_proxy::{Config, Proxy};
use support::*;

const MIB: u64 = 1024 * 1024;
/// What each transfer carries through the mesh.
const BIG: u64 = 100 * MIB;
/// The most a proxy's resident memory may peak at while carrying `BIG`
/// bytes each way: a proxy idles at about 10 MB; one that held the body
/// would pass 100 MB.
const RSS_BOUND_KB: u64 = 32 * 1024;

// === an app that counts what it receives and sends what it is asked ===

/// What the app saw of one request body.
#[derive(Clone, Debug, Default)]
struct Received {
    bytes: u64,
    /// The body ended with an error (the sender went away mid-body).
    broken: bool,
}

/// `POST /upload` reads the body chunk by chunk and answers the byte count;
/// `GET /download?bytes=N` streams N bytes. Answers `status` to uploads.
struct App {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    received: Arc<Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

impl App {
    async fn start(status: u16) -> App {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let received = Arc::new(Mutex::new(Vec::new()));
        let (h, r) = (hits.clone(), received.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (hits, received) = (h.clone(), r.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let (hits, received) = (hits.clone(), received.clone());
                        async move {
                            hits.fetch_add(1, Ordering::SeqCst);
                            let download = req
                                .uri()
                                .query()
                                .and_then(|q| q.strip_prefix("bytes="))
                                .and_then(|n| n.parse::<u64>().ok());
                            if let Some(n) = download {
                                return Ok::<_, Infallible>(http::Response::new(
                                    generated(n).boxed(),
                                ));
                            }
                            let mut body = req.into_body();
                            let mut seen = Received::default();
                            while let Some(frame) = body.frame().await {
                                match frame {
                                    Ok(frame) => {
                                        if let Some(data) = frame.data_ref() {
                                            seen.bytes += data.len() as u64;
                                        }
                                    }
                                    Err(_) => {
                                        seen.broken = true;
                                        break;
                                    }
                                }
                            }
                            received.lock().unwrap().push(seen.clone());
                            let mut rsp = http::Response::new(
                                Full::new(Bytes::from(seen.bytes.to_string()))
                                    .map_err(|never| match never {})
                                    .boxed(),
                            );
                            *rsp.status_mut() = http::StatusCode::from_u16(status).unwrap();
                            Ok(rsp)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        App {
            addr,
            hits,
            received,
            task,
        }
    }

    fn endpoint(&self, name: &str) -> Endpoint {
        Endpoint {
            instance: name.into(),
            address: self.addr.to_string(),
            labels: Default::default(),
            identity: None,
            tls_mode: Default::default(),
        }
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `n` bytes in 64 KiB chunks, made as they are asked for (nothing held).
fn generated(
    n: u64,
) -> impl http_body::Body<Data = Bytes, Error = hyper::Error> + Send + Sync + 'static {
    const CHUNK: u64 = 64 * 1024;
    let chunk = Bytes::from(vec![b'x'; CHUNK as usize]);
    let stream = futures::stream::iter((0..n).step_by(CHUNK as usize).map(move |sent| {
        let len = CHUNK.min(n - sent);
        Ok::<_, hyper::Error>(Frame::data(chunk.slice(..len as usize)))
    }));
    // An exact length, so it goes out with Content-Length, like most uploads.
    Sized(StreamBody::new(stream), n)
}

/// A body with a known length.
struct Sized<B>(B, u64);

impl<B: http_body::Body + Unpin> http_body::Body for Sized<B> {
    type Data = B::Data;
    type Error = B::Error;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        std::pin::Pin::new(&mut self.0).poll_frame(cx)
    }
    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.1)
    }
}

/// One HTTP/1.1 connection to `addr`, as a client app opens it.
async fn connect(
    addr: SocketAddr,
) -> hyper::client::conn::http1::SendRequest<
    http_body_util::combinators::BoxBody<Bytes, hyper::Error>,
> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

// === real proxies ===

/// A `mesh-proxy` process on a static snapshot, its log on the test's
/// stderr.
async fn proxy_process(env: &[(&str, String)], snapshot: &Snapshot) -> ProxyBinary {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    ProxyBinary::start(snapshot, &env, Stdio::inherit()).await
}

/// `VmHWM` (peak resident set) or `VmRSS` of `proxy` from /proc, in KiB.
fn memory_kb(proxy: &ProxyBinary, field: &str) -> u64 {
    let pid = proxy.child.id().expect("the proxy is still running");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_else(|e| {
        panic!("this test reads /proc/{pid}/status (Linux only) to measure the proxy: {e}")
    });
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim_start_matches(':').trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

fn vhost(domains: &[&str], cluster: &str) -> VirtualHost {
    VirtualHost {
        name: cluster.into(),
        domains: domains.iter().map(|d| d.to_string()).collect(),
        routes: vec![HttpRoute {
            name: "default".into(),
            destinations: vec![Destination {
                cluster: cluster.into(),
                weight: 100,
            }],
            retries: RetryPolicy::none(),
            ..Default::default()
        }],
    }
}

fn cluster(name: &str, address: SocketAddr) -> Cluster {
    Cluster {
        name: name.into(),
        service: name.into(),
        endpoints: vec![Endpoint {
            instance: format!("{name}-1"),
            address: address.to_string(),
            labels: Default::default(),
            identity: None,
            tls_mode: Default::default(),
        }],
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_mib_upload_and_download_cross_the_gateway_and_two_sidecars_in_bounded_memory() {
    let app = App::start(200).await;
    // The chain: client -> gateway -> sidecar A (outbound, as an app's
    // HTTP proxy would be) -> sidecar B (inbound) -> the app. The gateway's
    // upstream is A's outbound listener, so one request crosses all three
    // kinds of listener with the same Host.
    let (a_outbound, b_inbound, gateway_addr) = (
        refused_addr().await,
        refused_addr().await,
        refused_addr().await,
    );
    let host = "hw.example.com";
    let b = proxy_process(
        &[
            ("MESH_SERVICE", "hw".into()),
            ("MESH_APP_ADDR", app.addr.to_string()),
            ("MESH_INBOUND_ADDR", b_inbound.to_string()),
            ("MESH_OUTBOUND_ADDR", "127.0.0.1:0".into()),
        ],
        &snapshot(1, vec![]),
    )
    .await;
    let mut a_snapshot = snapshot(1, vec![]);
    a_snapshot.virtual_hosts.push(vhost(&[host], "hw"));
    a_snapshot.clusters.push(cluster("hw", b_inbound));
    let a = proxy_process(
        &[
            ("MESH_SERVICE", "client".into()),
            // Its /ready waits for an app to answer; any will do.
            ("MESH_APP_ADDR", app.addr.to_string()),
            ("MESH_OUTBOUND_ADDR", a_outbound.to_string()),
            ("MESH_INBOUND_ADDR", "127.0.0.1:0".into()),
        ],
        &a_snapshot,
    )
    .await;
    let mut g_snapshot = snapshot(1, vec![]);
    g_snapshot.clusters.push(cluster("via-a", a_outbound));
    g_snapshot.gateway = Some(GatewayConfig {
        gateways: vec!["default/test".into()],
        virtual_hosts: vec![vhost(&[host], "via-a")],
    });
    let gateway = proxy_process(
        &[
            ("MESH_MODE", "gateway".into()),
            ("MESH_GATEWAY_ADDR", gateway_addr.to_string()),
        ],
        &g_snapshot,
    )
    .await;
    let proxies = [("gateway", &gateway), ("sidecar A", &a), ("sidecar B", &b)];
    let idle: Vec<u64> = proxies.iter().map(|(_, p)| memory_kb(p, "VmRSS")).collect();

    // Upload: 100 MiB with Content-Length, generated as it is sent.
    let started = Instant::now();
    let mut client = connect(gateway_addr).await;
    let upload = http::Request::post("/upload")
        .header("host", host)
        .body(generated(BIG).boxed())
        .unwrap();
    let rsp = client.send_request(upload).await.unwrap();
    assert_eq!(rsp.status(), 200);
    let answer = rsp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(answer, BIG.to_string(), "the app received every byte");
    let upload_time = started.elapsed();

    // Download: 100 MiB streamed back, counted as it arrives.
    let started = Instant::now();
    let download = http::Request::get(format!("/download?bytes={BIG}"))
        .header("host", host)
        .body(
            http_body_util::Empty::new()
                .map_err(|never| match never {})
                .boxed(),
        )
        .unwrap();
    client.ready().await.unwrap();
    let rsp = client.send_request(download).await.unwrap();
    assert_eq!(rsp.status(), 200);
    let mut body = rsp.into_body();
    let mut downloaded = 0u64;
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame.unwrap().data_ref() {
            downloaded += data.len() as u64;
        }
    }
    assert_eq!(downloaded, BIG, "every byte came back");
    let download_time = started.elapsed();

    for ((name, proxy), idle) in proxies.iter().zip(idle) {
        let peak = memory_kb(proxy, "VmHWM");
        eprintln!(
            "{name}: RSS {idle} kB idle, peak {peak} kB; 100 MiB up in {upload_time:?}, down in {download_time:?}"
        );
        assert!(
            peak <= RSS_BOUND_KB,
            "{name} peaked at {peak} kB of resident memory carrying 100 MiB each way \
             (bound {RSS_BOUND_KB} kB): is it holding bodies in memory?"
        );
    }
    assert_eq!(app.received().len(), 1);
}

// === retries and the replay buffer, in process ===

/// One service `hw` with the given endpoints (round robin, the default)
/// and a route that retries 5xx once.
fn retrying(endpoints: Vec<Endpoint>) -> Snapshot {
    let (mut vh, cluster) = service("hw", endpoints);
    vh.routes[0].retries = RetryPolicy {
        attempts: 1,
        per_try_timeout_ms: None,
        retry_on: vec!["5xx".into()],
        retriable_status_codes: vec![],
    };
    snapshot(1, vec![(vh, cluster)])
}

#[tokio::test]
async fn a_small_body_is_replayed_to_the_second_endpoint_and_one_over_the_buffer_is_not_retried() {
    let (_guard, logs) = Logs::capture();
    let (failing, healthy) = (App::start(503).await, App::start(200).await);
    let sidecar = Proxy::start(Config::local_sidecar("client", refused_addr().await))
        .await
        .unwrap();
    sidecar
        .apply_snapshot(retrying(vec![
            failing.endpoint("hw-failing"),
            healthy.endpoint("hw-healthy"),
        ]))
        .unwrap();
    let client = client_via(sidecar.outbound_addr().unwrap());
    let post = async |size: usize| {
        let rsp = client
            .post("http://hw:8080/upload")
            .body(vec![b'y'; size])
            .send()
            .await
            .unwrap();
        (rsp.status().as_u16(), rsp.text().await.unwrap())
    };

    // 1 KiB bodies: whichever endpoint the balancer picks first, every
    // request ends 200, with the whole body, on the healthy one. Round robin
    // over two endpoints sends at least one of four there second.
    const SMALL: usize = 1024;
    for _ in 0..4 {
        assert_eq!(post(SMALL).await, (200, SMALL.to_string()));
    }
    let retried = failing.hits.load(Ordering::SeqCst);
    assert!(
        retried >= 1,
        "some request went to the failing endpoint first"
    );
    assert_eq!(healthy.received().len(), 4);
    assert!(
        healthy.received().iter().all(|r| r.bytes == SMALL as u64),
        "each retry replayed the whole body: {:?}",
        healthy.received()
    );
    assert!(failing.received().iter().all(|r| r.bytes == SMALL as u64));

    // 1 MiB bodies, over the 64 KiB replay buffer: each is sent once. The
    // ones that met the failing endpoint get its 503, and say why.
    const LARGE: usize = 1024 * 1024;
    let mut unavailable = 0;
    for _ in 0..4 {
        let (status, body) = post(LARGE).await;
        assert_eq!(body, LARGE.to_string(), "the endpoint got the whole body");
        if status == 503 {
            unavailable += 1;
        } else {
            assert_eq!(status, 200);
        }
    }
    let failed_large = failing.hits.load(Ordering::SeqCst) - retried;
    assert!(
        failed_large >= 1,
        "some large request met the failing endpoint"
    );
    assert_eq!(
        unavailable, failed_large,
        "no large request was retried after its 503"
    );
    assert_eq!(healthy.received().len(), 4 + (4 - failed_large));
    let skipped: Vec<String> = logs
        .access_lines()
        .into_iter()
        .filter(|l| l.contains("retry_skipped=body_over_replay_buffer"))
        .collect();
    assert_eq!(skipped.len(), failed_large, "{:#?}", logs.access_lines());
    assert!(
        skipped.iter().all(|l| l.contains(" 503 - ")),
        "{skipped:#?}"
    );
    sidecar.shutdown().await;
}

#[tokio::test]
async fn a_client_that_hangs_up_mid_upload_ends_the_request_to_the_app() {
    let app = App::start(200).await;
    let server = Proxy::start(Config::local_sidecar("hw", app.addr))
        .await
        .unwrap();
    let client_sidecar = Proxy::start(Config::local_sidecar("client", refused_addr().await))
        .await
        .unwrap();
    let endpoint = Endpoint {
        instance: server.instance().to_string(),
        address: server.advertise_addr().unwrap().to_string(),
        labels: Default::default(),
        identity: None,
        tls_mode: Default::default(),
    };
    client_sidecar
        .apply_snapshot(snapshot(1, vec![service("hw", vec![endpoint])]))
        .unwrap();

    // Announce 100 MiB, send 4 MiB, hang up.
    let mut tcp = tokio::net::TcpStream::connect(client_sidecar.outbound_addr().unwrap())
        .await
        .unwrap();
    use tokio::io::AsyncWriteExt;
    tcp.write_all(
        format!(
            "POST http://hw:8080/upload HTTP/1.1\r\nhost: hw:8080\r\ncontent-length: {BIG}\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let chunk = vec![b'z'; 64 * 1024];
    let sent = AtomicU64::new(0);
    while sent.load(Ordering::Relaxed) < 4 * MIB {
        tcp.write_all(&chunk).await.unwrap();
        sent.fetch_add(chunk.len() as u64, Ordering::Relaxed);
    }
    wait_until(
        "the app is reading the body",
        Duration::from_secs(10),
        async || Ok(app.hits.load(Ordering::SeqCst) == 1),
    )
    .await
    .unwrap();
    drop(tcp);

    // The app's request body breaks off: nothing upstream waits for bytes
    // that will never come.
    wait_until(
        "the app sees the body end early",
        Duration::from_secs(10),
        async || Ok(!app.received().is_empty()),
    )
    .await
    .unwrap();
    let seen = &app.received()[0];
    assert!(seen.broken, "the body ended with an error: {seen:?}");
    assert!(seen.bytes < BIG, "{seen:?}");

    // And the path still works for the next client.
    let reply = client_via(client_sidecar.outbound_addr().unwrap())
        .post("http://hw:8080/upload")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 200);
    assert_eq!(reply.text().await.unwrap(), "5");
    client_sidecar.shutdown().await;
    server.shutdown().await;
}

//! The control-plane client against a fake control plane: announce, the
//! long-poll watch, ACK and NACK, leaving, and riding out an outage.

mod support;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_api::snapshot::Snapshot;
use mesh_api::xds::{AckRequest, ProxyAnnounce};
use mesh_proxy::control::{BACKOFF_MAX, BACKOFF_MIN};
use mesh_proxy::{Config, Proxy};
use support::*;

/// Records what proxies send and serves queued snapshots to the watch.
#[derive(Default)]
struct FakeControl {
    announces: Mutex<Vec<ProxyAnnounce>>,
    acks: Mutex<Vec<AckRequest>>,
    deletes: Mutex<Vec<String>>,
    snapshots: Mutex<VecDeque<Snapshot>>,
}

/// The fake control plane's server. [`FakeServer::stop`] makes it really
/// gone: the listener is closed (the port refuses) and every open
/// connection is dropped, including a watch long-poll in flight.
struct FakeServer {
    accept: tokio::task::JoinHandle<()>,
    connections: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl FakeServer {
    fn stop(&self) {
        self.accept.abort();
        for connection in self.connections.lock().unwrap().drain(..) {
            connection.abort();
        }
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn start_fake(fake: Arc<FakeControl>, listener: tokio::net::TcpListener) -> FakeServer {
    let connections = Arc::new(Mutex::new(Vec::new()));
    let open = connections.clone();
    let accept = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let fake = fake.clone();
            let connection = tokio::spawn(async move {
                let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let fake = fake.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body.collect().await.unwrap().to_bytes();
                        let path = parts.uri.path().to_string();
                        let (status, text) = match (parts.method.as_str(), path.as_str()) {
                            ("PUT", _) => {
                                fake.announces
                                    .lock()
                                    .unwrap()
                                    .push(serde_json::from_slice(&body).unwrap());
                                (200, r#"{"version":0,"leaseMs":1500}"#.to_string())
                            }
                            ("DELETE", p) => {
                                fake.deletes.lock().unwrap().push(p.to_string());
                                (200, "{}".to_string())
                            }
                            ("POST", p) if p.ends_with("/ack") => {
                                fake.acks
                                    .lock()
                                    .unwrap()
                                    .push(serde_json::from_slice(&body).unwrap());
                                (200, "{}".to_string())
                            }
                            ("GET", p) if p.ends_with("/snapshot") => {
                                let next = fake.snapshots.lock().unwrap().pop_front();
                                match next {
                                    Some(s) => (200, serde_json::to_string(&s).unwrap()),
                                    None => {
                                        // A short long-poll keeps the test quick.
                                        tokio::time::sleep(Duration::from_millis(50)).await;
                                        (304, String::new())
                                    }
                                }
                            }
                            _ => (404, "{}".to_string()),
                        };
                        let mut rsp = http::Response::new(Full::new(Bytes::from(text)));
                        *rsp.status_mut() = http::StatusCode::from_u16(status).unwrap();
                        Ok::<_, Infallible>(rsp)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
            open.lock().unwrap().push(connection.abort_handle());
        }
    });
    FakeServer {
        accept,
        connections,
    }
}

fn config_for(control: SocketAddr, app: SocketAddr) -> Config {
    let mut config = Config::local_sidecar("hw", app);
    config.control_url = Some(format!("http://{control}"));
    config.instance = "hw-v1-test1".into();
    config
}

#[tokio::test]
async fn the_proxy_announces_watches_acks_nacks_and_leaves() {
    let app = Upstream::start("hw-app").await;
    let upstream = Upstream::start("other-1").await;
    let fake = Arc::new(FakeControl::default());
    let good = snapshot(1, vec![service("other", vec![upstream.endpoint()])]);
    let mut bad = snapshot(2, vec![service("other", vec![upstream.endpoint()])]);
    bad.virtual_hosts[0].routes[0].destinations[0].cluster = "nope".into();
    fake.snapshots.lock().unwrap().extend([good, bad]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let control = listener.local_addr().unwrap();
    let server = start_fake(fake.clone(), listener).await;

    let proxy = Proxy::start(config_for(control, app.addr)).await.unwrap();

    wait_until("an ACK and a NACK", Duration::from_secs(10), async || {
        Ok(fake.acks.lock().unwrap().len() >= 2)
    })
    .await
    .unwrap();
    let acks = fake.acks.lock().unwrap().clone();
    assert_eq!((acks[0].version, acks[0].accepted), (1, true));
    assert_eq!((acks[1].version, acks[1].accepted), (2, false));
    assert!(acks[1].error.as_deref().unwrap().contains("nope"));
    // Version 2 is NACKed but applied in part: its one virtual host is
    // rejected, so the last good version of that host stays in use.
    let current = proxy.current_snapshot().unwrap();
    assert_eq!(current.version, 2);
    assert_eq!(
        current.virtual_hosts[0].routes[0].destinations[0].cluster, "other",
        "the rejected host keeps its last good route"
    );

    wait_until("a ready announce", Duration::from_secs(10), async || {
        Ok(fake.announces.lock().unwrap().iter().any(|a| a.ready))
    })
    .await
    .unwrap();
    let announce = fake.announces.lock().unwrap().last().unwrap().clone();
    assert_eq!(announce.instance, "hw-v1-test1");
    assert_eq!(announce.service, "hw");
    assert_eq!(announce.labels["app"], "hw");
    assert_eq!(
        announce.address,
        proxy.advertise_addr().unwrap().to_string()
    );
    assert_eq!(announce.admin_address, proxy.admin_addr().to_string());

    let reply = get(
        &client_via(proxy.outbound_addr().unwrap()),
        "http://other:8080/",
    )
    .await;
    assert_eq!(reply.body, "other-1");

    proxy.shutdown().await;
    assert_eq!(
        *fake.deletes.lock().unwrap(),
        vec!["/v1/proxies/hw-v1-test1".to_string()]
    );
    server.stop();
}

/// How long the proxy's watch back-off takes to climb from its first delay
/// to its cap (100, 200, 400 ... ms until 2 s): an outage longer than this
/// has the proxy failing, backing off and failing again at the capped delay.
fn backoff_ramp() -> Duration {
    let mut total = Duration::ZERO;
    let mut delay = BACKOFF_MIN;
    while delay < BACKOFF_MAX {
        total += delay;
        delay *= 2;
    }
    total + BACKOFF_MAX
}

#[tokio::test]
async fn the_proxy_serves_while_the_control_plane_is_away_and_resyncs() {
    let (_guard, logs) = Logs::capture();
    let app = Upstream::start("hw-app").await;
    let before = Upstream::start("other-1").await;
    let after = Upstream::start("other-2").await;
    // Reserve an address, start the proxy against it with nobody listening.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let control = listener.local_addr().unwrap();
    drop(listener);
    let proxy = Proxy::start(config_for(control, app.addr)).await.unwrap();

    let client = client_via(proxy.outbound_addr().unwrap());
    let reply = get(&client, "http://other:8080/").await;
    assert_eq!(reply.status, 503, "listeners run before the first snapshot");
    assert!(reply.body.contains("no config from the control plane yet"));

    // The control plane comes up: the proxy retries and gets its config.
    let fake = Arc::new(FakeControl::default());
    fake.snapshots
        .lock()
        .unwrap()
        .push_back(snapshot(5, vec![service("other", vec![before.endpoint()])]));
    let listener = tokio::net::TcpListener::bind(control).await.unwrap();
    let server = start_fake(fake.clone(), listener).await;
    wait_until("the first snapshot", Duration::from_secs(10), async || {
        Ok(proxy.current_snapshot().is_some())
    })
    .await
    .unwrap();
    assert_eq!(get(&client, "http://other:8080/").await.body, "other-1");

    // It goes away: listener closed, open connections (the watch's
    // long-poll among them) dropped, the port refusing. A gone control
    // plane is seen at once (reset, refused), so the watch's own 20 s
    // timeout, which is for a hung one, does not come into it; the outage
    // lasts the whole back-off ramp, and traffic flows throughout on the
    // last good snapshot.
    server.stop();
    let outage = backoff_ramp() + Duration::from_millis(500);
    let gone = tokio::time::Instant::now();
    assert!(
        tokio::net::TcpStream::connect(control).await.is_err(),
        "the fake control plane's port refuses connections"
    );
    let mut served = 0;
    while gone.elapsed() < outage {
        let reply = get(&client, "http://other:8080/").await;
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (200, "other-1"),
            "request {served} during the outage, {:?} in",
            gone.elapsed()
        );
        served += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(proxy.current_snapshot().unwrap().version, 5);
    // The watch saw the outage and backed off: it logs its 1st, 2nd, 4th...
    // failure, and the 4th comes only after 100 + 200 + 400 ms of back-off.
    let text = logs.text();
    assert!(
        text.contains("watch: control plane unreachable") && text.contains("failures=4"),
        "the watch noticed the outage and backed off:\n{text}"
    );

    // It returns at the same address with a new version: the proxy resyncs
    // and routes by it.
    fake.snapshots
        .lock()
        .unwrap()
        .push_back(snapshot(6, vec![service("other", vec![after.endpoint()])]));
    let listener = tokio::net::TcpListener::bind(control).await.unwrap();
    let _server = start_fake(fake.clone(), listener).await;
    wait_until(
        "the proxy to resync to version 6",
        BACKOFF_MAX + Duration::from_secs(5),
        async || Ok(proxy.current_snapshot().is_some_and(|s| s.version == 6)),
    )
    .await
    .unwrap();
    assert_eq!(get(&client, "http://other:8080/").await.body, "other-2");
    assert!(
        fake.acks
            .lock()
            .unwrap()
            .iter()
            .any(|a| a.version == 6 && a.accepted)
    );
    proxy.shutdown().await;
}

/// Makes a route's header operations invalid in one way.
type BreakOps = fn(&mut mesh_api::snapshot::HeaderOps);

#[tokio::test]
async fn a_snapshot_with_an_invalid_header_is_rejected_and_the_last_good_one_serves() {
    let upstream = Upstream::start("other-1").await;
    let config = Config::local_sidecar("hw", refused_addr().await);
    let proxy = Proxy::start(config).await.unwrap();
    proxy
        .apply_snapshot(snapshot(
            1,
            vec![service("other", vec![upstream.endpoint()])],
        ))
        .unwrap();
    let client = client_via(proxy.outbound_addr().unwrap());

    // A header name with a space (set, add or remove) and a value no HTTP
    // header can carry (a control character, BEL): each makes the proxy
    // reject the virtual host that carries it (the rest of the snapshot is
    // applied, and the host keeps its last good version).
    let bad_ops: [(&str, BreakOps); 4] = [
        ("x bad", |ops| {
            ops.set.insert("x bad".into(), "v".into());
        }),
        ("x bad", |ops| {
            ops.add.insert("x bad".into(), "v".into());
        }),
        ("x bad", |ops| {
            ops.remove.push("x bad".into());
        }),
        ("x-greeting: bell\u{7}", |ops| {
            ops.set.insert("x-greeting".into(), "bell\u{7}".into());
        }),
    ];
    for (version, (header, break_it)) in (2..).zip(bad_ops) {
        let mut bad = snapshot(version, vec![service("other", vec![upstream.endpoint()])]);
        break_it(&mut bad.virtual_hosts[0].routes[0].request_headers);
        let error = proxy
            .apply_snapshot(bad)
            .expect_err(&format!("a snapshot with header {header:?} is rejected"));
        assert!(
            matches!(&error, mesh_proxy::CompileError::PartlyApplied { .. }),
            "{error:?}"
        );
        let text = error.to_string();
        assert!(
            text.contains(&format!(
                "route \"default\": {header:?} is not a valid HTTP header"
            )),
            "the error names the route and says what is wrong: {text}"
        );
        // Nothing of the bad rule is in use: the host is version 1's.
        let current = proxy.current_snapshot().unwrap();
        assert_eq!(current.version, version);
        assert!(
            current.virtual_hosts[0].routes[0]
                .request_headers
                .is_empty()
        );
        let reply = get(&client, "http://other:8080/").await;
        assert_eq!((reply.status, reply.body.as_str()), (200, "other-1"));
    }
    proxy.shutdown().await;
}

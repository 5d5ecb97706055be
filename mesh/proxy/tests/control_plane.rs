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

async fn start_fake(
    fake: Arc<FakeControl>,
    listener: tokio::net::TcpListener,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let fake = fake.clone();
            tokio::spawn(async move {
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
        }
    })
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

    eventually("an ACK and a NACK", Duration::from_secs(10), async || {
        fake.acks.lock().unwrap().len() >= 2
    })
    .await;
    let acks = fake.acks.lock().unwrap().clone();
    assert_eq!((acks[0].version, acks[0].accepted), (1, true));
    assert_eq!((acks[1].version, acks[1].accepted), (2, false));
    assert!(acks[1].error.as_deref().unwrap().contains("nope"));
    assert_eq!(
        proxy.current_snapshot().unwrap().version,
        1,
        "the good one stays"
    );

    eventually("a ready announce", Duration::from_secs(10), async || {
        fake.announces.lock().unwrap().iter().any(|a| a.ready)
    })
    .await;
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
    server.abort();
}

#[tokio::test]
async fn the_proxy_serves_while_the_control_plane_is_away_and_resyncs() {
    let app = Upstream::start("hw-app").await;
    let upstream = Upstream::start("other-1").await;
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
    fake.snapshots.lock().unwrap().push_back(snapshot(
        5,
        vec![service("other", vec![upstream.endpoint()])],
    ));
    let listener = tokio::net::TcpListener::bind(control).await.unwrap();
    let server = start_fake(fake.clone(), listener).await;
    eventually("the first snapshot", Duration::from_secs(10), async || {
        proxy.current_snapshot().is_some()
    })
    .await;
    assert_eq!(get(&client, "http://other:8080/").await.body, "other-1");

    // It goes away again: the last good snapshot keeps serving.
    server.abort();
    assert_eq!(get(&client, "http://other:8080/").await.body, "other-1");
    proxy.shutdown().await;
}

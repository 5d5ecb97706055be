//! One bad rule must not freeze the mesh (issue 15, item 1).
//!
//! The control plane refuses at apply anything the proxy would reject, with
//! the same check (`mesh_api::check`). These tests play a control plane that
//! skipped it: they hand the sidecar crafted snapshots whose virtual host a
//! proxy must reject, and prove that the endpoint changes in the same
//! snapshot still arrive, and that traffic keeps flowing to the healthy
//! endpoint when the other one leaves.

mod support;

use std::collections::BTreeMap;

use mesh_api::snapshot::*;
use mesh_proxy::{Config, Proxy, ProxyHandle};
use support::*;

async fn sidecar(snapshot: Snapshot) -> ProxyHandle {
    let mut config = Config::local_sidecar("client", refused_addr().await);
    config.seed = Some(7);
    let proxy = Proxy::start(config).await.unwrap();
    proxy.apply_snapshot(snapshot).unwrap();
    proxy
}

/// A header match whose name is not an HTTP header name: the bad
/// VirtualService of the issue.
fn bad_header_match() -> RouteMatch {
    RouteMatch {
        headers: BTreeMap::from([("x bad name".to_string(), StringMatch::Exact("1".into()))]),
        ..Default::default()
    }
}

#[tokio::test]
async fn endpoint_changes_arrive_while_a_bad_virtual_host_is_held_back() {
    let a = Upstream::start("hw-a").await;
    let b = Upstream::start("hw-b").await;
    let other = Upstream::start("other-1").await;
    let proxy = sidecar(snapshot(
        1,
        vec![
            service("hw", vec![a.endpoint(), b.endpoint()]),
            service("other", vec![other.endpoint()]),
        ],
    ))
    .await;
    let client = client_via(proxy.outbound_addr().unwrap());

    // Version 2: endpoint hw-b leaves (and is stopped), and the same
    // snapshot carries a hw route the proxy must reject.
    drop(b);
    let (mut hw, hw_cluster) = service("hw", vec![a.endpoint()]);
    hw.routes[0].matches = vec![bad_header_match()];
    let mut next = snapshot(
        2,
        vec![(hw, hw_cluster), service("other", vec![other.endpoint()])],
    );
    // An unrelated change that must arrive too: a response header on `other`.
    next.virtual_hosts[1].routes[0]
        .response_headers
        .set
        .insert("x-version".into(), "2".into());
    let error = proxy.apply_snapshot(next).unwrap_err().to_string();
    assert!(
        error.contains("x bad name") && error.contains("applied without"),
        "the NACK names the held-back rule: {error}"
    );
    let (version, reason) = proxy.last_rejected().expect("version 2 is NACKed");
    assert_eq!((version, reason), (2, error));

    // Every request to hw reaches the endpoint still there: hw-b's removal
    // arrived, and hw's last good route (no header match) still serves.
    for _ in 0..20 {
        let reply = get(&client, "http://hw/").await;
        assert_eq!((reply.status, reply.body.as_str()), (200, "hw-a"));
    }
    // The other virtual host's change was applied with it.
    let reply = get(&client, "http://other/").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.headers["x-version"], "2");
}

#[tokio::test]
async fn a_bad_virtual_host_with_no_good_version_is_left_out_alone() {
    let hw = Upstream::start("hw-1").await;
    let other = Upstream::start("other-1").await;
    let proxy = sidecar(snapshot(1, vec![service("other", vec![other.endpoint()])])).await;
    let client = client_via(proxy.outbound_addr().unwrap());

    // Version 2 adds hw with an unusable route (a regex that does not
    // compile) and moves `other` to a new endpoint.
    let other_2 = Upstream::start("other-2").await;
    let (mut vh, cluster) = service("hw", vec![hw.endpoint()]);
    vh.routes[0].matches = vec![RouteMatch {
        uri: Some(StringMatch::Regex("(".into())),
        ..Default::default()
    }];
    let error = proxy
        .apply_snapshot(snapshot(
            2,
            vec![(vh, cluster), service("other", vec![other_2.endpoint()])],
        ))
        .unwrap_err();
    assert!(error.to_string().contains("regex"), "{error}");

    let reply = get(&client, "http://other/").await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "other-2"));
    // hw has no good version to keep: it is not routed at all (the
    // sidecar's 503 "no route", flag NR), not by a half-understood rule.
    let reply = get(&client, "http://hw/").await;
    assert_eq!(reply.status, 503, "{}", reply.body);
    assert!(reply.body.contains("no route"), "{}", reply.body);
    assert_eq!(hw.hits(), 0);
}

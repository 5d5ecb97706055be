//! The decision point: where the inbound sidecar (and a gateway that a
//! policy selects) asks `authz.rs` whether this caller may make this
//! request, before anything is sent to the app. Istio puts the same check
//! in the same place: the RBAC filter of the inbound Envoy's HTTP chain,
//! after TLS told it who the peer is and before the router.
//!
//! ```text
//! inbound listener: TLS (peer identity) -> admit.rs (the door, path
//!   normalized) -> authorize.rs (DENY, then ALLOW) -> app
//! gateway listener: admit.rs (the edge's door) -> authorize.rs (no peer
//!   identity: a user holds no certificate) -> route (outbound.rs)
//! ```
//!
//! At the gateway the policies are those of the root namespace that select
//! it (`selector: {matchLabels: {istio: ingressgateway}}`, or none:
//! mesh-wide), as for Istio's ingress gateway in `istio-system`
//! (mesh/control/src/compile.rs `inbound_policy`), and the port is the
//! gateway's own, 8080 (the container port of Istio's ingress gateway too).
//! Istio's gateway policies often name `ipBlocks` (the address that
//! connected: a user, or the load balancer in front) or `remoteIpBlocks`
//! (the user as `x-forwarded-for` names them, counting
//! `MESH_XFF_NUM_TRUSTED_HOPS` proxies in front as trusted;
//! [`remote_address`]).
//!
//! What the decision reads, and where each piece comes from:
//! - the peer's identity from its client certificate (`None` for a
//!   plaintext caller, which then matches no `principals` or `namespaces`);
//! - the method, and the host from the settled authority (`authority.rs`),
//!   compared case-insensitively;
//! - the path the door normalized. A workload that any AuthorizationPolicy
//!   selects has its path normalized with `DECODE_AND_MERGE_SLASHES`
//!   ([`edge_settings`]), whatever `MESH_PATH_NORMALIZATION` says, because
//!   a `DENY /admin*` is only as good as the path it reads: `//admin`,
//!   `/%2Fadmin` and `/x/..%2Fadmin` must all be `/admin` to it. The door
//!   rewrites the request's target in place, so the path decided on is the
//!   very path the app receives (no second spelling exists to disagree).
//!   The query is not part of it, and a `#fragment` never gets this far:
//!   `http::Uri` drops it while parsing the request line;
//! - the port: the workload port, 8080, the port every Guestbook app
//!   listens on in its pod and is called on (`http://NAME:8080`), the same
//!   port PeerAuthentication's `portLevelMtls` names. Istio's
//!   `destination.port` is the pod's target port too, never anything the
//!   caller wrote in `Host`. (Locally the apps listen on free ports, but
//!   policies are written for the pod's port, so they carry over.)
//! - the request headers, for `when: request.headers[...]`;
//! - the addresses: the connection's peer (`ipBlocks`, `source.ip`), and
//!   the original client (`remoteIpBlocks`, `remote.ip`), which
//!   [`remote_address`] reads from `x-forwarded-for` as Envoy does.
//!
//! A denied request never reaches the app: the sidecar answers 403
//! `RBAC: access denied` itself (`error.rs`; a gRPC caller reads
//! `PERMISSION_DENIED`), flags it `RBAC` in the access log and the
//! `response_flags` of its metrics, so `meshctl stat` and the dashboard
//! count it as an error. Which policy decided goes to the proxy's debug
//! log, never to the caller.

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;
use mesh_api::identity::Identity;
use mesh_api::snapshot::AppliedAuthorizationPolicy;

use crate::admit::EdgeSettings;
use crate::authz::{Policy, Request};
use crate::error::ProxyError;
use crate::log::Direction;
use crate::normalize::PathNormalization;
use crate::trust::X_FORWARDED_FOR;

/// Who is asking: the connection's peer, and the listener it came in on.
#[derive(Clone, Copy, Debug)]
pub struct Caller<'a> {
    /// The peer's identity, proven by its certificate; `None` for plaintext.
    pub identity: Option<&'a Identity>,
    /// The address that connected.
    pub address: SocketAddr,
    /// The listener: the gateway reads the original client differently.
    pub direction: Direction,
}

/// The original client's address (`remote.ip`), as Envoy determines it
/// from `x-forwarded-for` after the door (`trust.rs`) has written it. At
/// the gateway (Envoy's `use_remote_address: true`) the door wrote the
/// trusted hops' entries then the peer, so the client is the first entry.
/// At a sidecar (`use_remote_address: false`, no trusted hops) it is the
/// last entry, the address the previous hop saw. Without the header, or
/// with an entry that is not an address, it is the peer.
pub fn remote_address(direction: Direction, headers: &HeaderMap, peer: IpAddr) -> IpAddr {
    let mut entries = headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim);
    let entry = if direction == Direction::Gateway {
        entries.next()
    } else {
        entries.next_back()
    };
    entry.and_then(|e| e.parse().ok()).unwrap_or(peer)
}

/// The door's settings for a listener: once any policy applies, paths are
/// normalized with `DECODE_AND_MERGE_SLASHES` (the decision's path is the
/// upstream's path, see the module docs).
pub fn edge_settings(edge: &EdgeSettings, policies_apply: bool) -> EdgeSettings {
    let mut edge = *edge;
    if policies_apply {
        edge.path_normalization = PathNormalization::DecodeAndMergeSlashes;
    }
    edge
}

/// The snapshot's applied policies as the evaluator reads them.
pub fn applied(policies: &[AppliedAuthorizationPolicy]) -> impl Iterator<Item = Policy<'_>> + '_ {
    policies.iter().map(|p| Policy {
        name: &p.name,
        spec: &p.spec,
    })
}

/// Decide `req` (already through the door) against `policies`: `Ok` to go
/// on to the app, `Err(ProxyError::Denied)` to answer 403 instead.
/// `port` is the workload port ([module docs](self)).
pub fn authorize<'a, B>(
    policies: impl IntoIterator<Item = Policy<'a>>,
    caller: Caller<'_>,
    port: u16,
    req: &http::Request<B>,
) -> Result<(), ProxyError> {
    let mut policies = policies.into_iter().peekable();
    if policies.peek().is_none() {
        // No policy selects this workload: Istio allows everything, and the
        // common case costs nothing.
        return Ok(());
    }
    let principal = caller.identity.map(Identity::principal);
    let source_ip = caller.address.ip();
    let request = Request {
        principal: principal.as_deref(),
        method: req.method().as_str(),
        host: crate::route::authority_of(req),
        path: req.uri().path(),
        port,
        headers: req.headers(),
        source_ip,
        remote_ip: remote_address(caller.direction, req.headers(), source_ip),
    };
    let decision = crate::authz::evaluate(policies, &request);
    if !decision.audited_by.is_empty() {
        tracing::info!(
            audited_by = ?decision.audited_by,
            principal = request.principal.unwrap_or("-"),
            method = request.method,
            path = request.path,
            "AUDIT policy matched"
        );
    }
    if decision.allowed {
        tracing::trace!(reason = %decision.reason, "authorized");
        Ok(())
    } else {
        tracing::debug!(
            reason = %decision.reason,
            principal = request.principal.unwrap_or("(plaintext)"),
            method = request.method,
            path = request.path,
            "RBAC: access denied"
        );
        Err(ProxyError::Denied {
            reason: decision.reason,
        })
    }
}

#[cfg(test)]
mod tests {
    use mesh_api::config::authorization_policy::{
        Action, AuthorizationPolicy, Operation, Rule, Source,
    };

    use super::*;

    fn ui() -> Identity {
        Identity::new("default", "guestbook-ui")
    }

    fn get(path: &str) -> http::Request<()> {
        http::Request::get(path)
            .header("host", "Guestbook-Service:8080")
            .body(())
            .unwrap()
    }

    fn only_ui_may_get() -> AuthorizationPolicy {
        AuthorizationPolicy {
            selector: None,
            action: Action::Allow,
            rules: vec![Rule {
                from: vec![Source {
                    principals: vec!["cluster.local/ns/default/sa/guestbook-ui".into()],
                    ..Default::default()
                }],
                to: vec![Operation {
                    methods: vec!["GET".into()],
                    hosts: vec!["guestbook-service*".into()],
                    ..Default::default()
                }],
                when: vec![],
            }],
        }
    }

    fn from(identity: Option<&Identity>) -> Caller<'_> {
        Caller {
            identity,
            address: "127.0.0.1:40000".parse().unwrap(),
            direction: Direction::Inbound,
        }
    }

    fn named(spec: &AuthorizationPolicy) -> [Policy<'_>; 1] {
        [Policy {
            name: "default/viewers",
            spec,
        }]
    }

    #[test]
    fn no_policy_allows_everything_even_plaintext() {
        assert!(authorize([], from(None), 8080, &get("/admin")).is_ok());
    }

    #[test]
    fn the_peer_identity_method_and_host_decide() {
        let spec = only_ui_may_get();
        // The Host is compared case-insensitively.
        assert!(authorize(named(&spec), from(Some(&ui())), 8080, &get("/")).is_ok());
        let other = Identity::new("default", "loadgen");
        let denied = authorize(named(&spec), from(Some(&other)), 8080, &get("/")).unwrap_err();
        assert!(
            matches!(&denied, ProxyError::Denied { reason } if reason == "no ALLOW policy matched")
        );
        assert_eq!(denied.to_response().status(), 403);
        assert!(
            authorize(named(&spec), from(None), 8080, &get("/")).is_err(),
            "plaintext has no principal"
        );
        let post = http::Request::post("/")
            .header("host", "guestbook-service")
            .body(())
            .unwrap();
        assert!(authorize(named(&spec), from(Some(&ui())), 8080, &post).is_err());
    }

    #[test]
    fn the_original_client_is_the_first_entry_at_the_gateway_the_last_at_a_sidecar() {
        let peer: IpAddr = "10.0.0.9".parse().unwrap();
        let mut headers = HeaderMap::new();
        assert_eq!(remote_address(Direction::Gateway, &headers, peer), peer);
        assert_eq!(remote_address(Direction::Inbound, &headers, peer), peer);
        headers.append(X_FORWARDED_FOR, "203.0.113.7, 10.0.0.1".parse().unwrap());
        headers.append(X_FORWARDED_FOR, "10.0.0.2".parse().unwrap());
        assert_eq!(
            remote_address(Direction::Gateway, &headers, peer),
            "203.0.113.7".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            remote_address(Direction::Inbound, &headers, peer),
            "10.0.0.2".parse::<IpAddr>().unwrap()
        );
        let mut junk = HeaderMap::new();
        junk.append(X_FORWARDED_FOR, "unknown".parse().unwrap());
        assert_eq!(remote_address(Direction::Inbound, &junk, peer), peer);
    }

    #[test]
    fn policies_switch_the_door_to_decode_and_merge_slashes() {
        let edge = EdgeSettings::default();
        assert_eq!(edge_settings(&edge, false), edge);
        assert_eq!(
            edge_settings(&edge, true).path_normalization,
            PathNormalization::DecodeAndMergeSlashes
        );
    }

    #[test]
    fn a_denial_is_403_rbac_and_permission_denied_for_grpc() {
        let denied = ProxyError::Denied {
            reason: "denied by default/deny-admin".into(),
        };
        assert_eq!(denied.flags().to_string(), "RBAC");
        let rsp = denied.to_response();
        assert_eq!(rsp.status(), 403);
        let rsp = denied.to_grpc_response();
        assert_eq!(rsp.headers()["grpc-status"], "7");
        assert_eq!(rsp.headers()["grpc-message"], "RBAC: access denied");
    }
}

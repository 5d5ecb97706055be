//! The inbound listener: from other sidecars (and the gateway) to the local
//! app at `MESH_APP_ADDR`.
//!
//! Traffic arrives already routed, balanced and retried by the caller's
//! sidecar, so the inbound side only forwards: pooled keep-alive connections
//! to the app, bodies streamed both ways, an `x-request-id` if missing, the SERVER span (whose id the
//! app receives as the parent in the trace headers) and the
//! `reporter="destination"` metrics, one access-log line (`inbound`), and
//! WebSockets spliced to the app once it answers 101 (`upgrade.rs`). An app that refuses connections gives 503 `UF`, like Envoy's
//! inbound cluster.
//!
//! Authorization sits between the door and the app (`authorize.rs`): the
//! AuthorizationPolicies of this workload's snapshot decide each request
//! on the peer's identity, method, host, the door's normalized path (with
//! `DECODE_AND_MERGE_SLASHES` once a policy applies, so the path decided on
//! is the path the app gets), the app's port and the headers. A denied
//! request is answered here, 403 `RBAC`, and never reaches the app.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use hyper::body::Incoming;

use crate::body::{ReqBody, Rsp};
use crate::listener::Peer;
use crate::log::Direction;
use crate::outbound::{ensure_request_id, finish, strip_hop_by_hop, tunnel_of};
use crate::proxy::Shared;
use crate::route::authority_of;
use crate::telemetry::{Arrival, Exchange};
use crate::upgrade::Upgrade;

/// Handle one request on the inbound listener; `peer` is the calling
/// sidecar (or gateway).
pub async fn handle(
    shared: Arc<Shared>,
    connection: Peer,
    mut req: http::Request<Incoming>,
) -> Result<Rsp, Infallible> {
    let start = Instant::now();
    let peer = connection.address;
    // The policies that select this workload, from the snapshot in use.
    let table = shared.current.load_full();
    let policies = table
        .as_deref()
        .map_or(&[][..], |t| &t.snapshot.inbound.authorization_policies[..]);
    // The door (`admit.rs`), as on the outbound side; a caller that is not
    // a sidecar is outside the mesh (`trust.rs`). With policies to apply,
    // it normalizes the path as authorization needs it.
    let edge = crate::authorize::edge_settings(&shared.config.edge, !policies.is_empty());
    // A mutual-TLS peer proved it is a sidecar of the mesh.
    let proven = connection.certificate.is_some();
    let refused = crate::admit::admit_from(&edge, Direction::Inbound, peer, proven, &mut req).err();
    // The client certificate's details, as only this proxy can know them.
    let own = shared.mesh_tls.certified();
    crate::tls::set_forwarded_client_cert(
        req.headers_mut(),
        own.as_ref().map(|c| &c.identity),
        connection.certificate.as_deref(),
    );
    // Decided on the request as the door left it, before anything reads
    // its body or sends it on.
    let denied = match refused {
        Some(_) => None,
        None => crate::authorize::authorize(
            crate::authorize::applied(policies),
            crate::authorize::Caller {
                identity: connection.identity(),
                address: peer,
                direction: Direction::Inbound,
            },
            mesh_api::xds::ports::SERVICE,
            &req,
        )
        .err(),
    };
    let upgrade = Upgrade::take(&mut req);
    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    if let Some(upgrade) = &upgrade {
        upgrade.restore(&mut parts.headers);
    }
    let request_id = ensure_request_id(&mut parts.headers);
    let grpc = crate::error::is_grpc(&parts.headers);
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_else(|| "/".to_string());
    let head = http::Request::from_parts(parts, ());
    let authority = authority_of(&head).to_string();
    let (mut parts, ()) = head.into_parts();
    // Open the SERVER span; the app gets it as its parent in the trace
    // headers, and the caller's source headers are taken off.
    let mut exchange = Exchange::begin(
        &shared,
        Arrival {
            direction: Direction::Inbound,
            peer,
            start,
            method: parts.method.clone(),
            authority,
            path_and_query: path,
            request_id,
            headers: &mut parts.headers,
        },
    );
    if let Some(certificate) = &connection.certificate {
        exchange.mutual_tls(&certificate.spiffe_id);
    }
    let log = exchange.log.clone();

    let (cluster, endpoint) = &shared.app;
    let result = async {
        if let Some(refusal) = refused {
            return Err(crate::error::ProxyError::Refused(refusal));
        }
        if let Some(denied) = denied {
            return Err(denied);
        }
        // Streamed to the app as it arrives: nothing to retry here.
        let body = ReqBody::arriving(body, Some(log.clone()));
        let req = http::Request::from_parts(parts, body);
        log.record_cluster(cluster);
        log.record_endpoint(endpoint);
        crate::pool::send(cluster, endpoint, req).await
    }
    .await;

    let rsp = finish(result, &log, start, grpc);
    let rsp = match upgrade {
        Some(upgrade) => upgrade.respond(rsp, tunnel_of(&exchange, Direction::Inbound)),
        None => rsp,
    };
    Ok(exchange.respond(rsp))
}

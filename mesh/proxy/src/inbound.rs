//! The inbound listener: from other sidecars (and the gateway) to the local
//! app at `MESH_APP_ADDR`.
//!
//! Traffic arrives already routed, balanced and retried by the caller's
//! sidecar, so the inbound side only forwards: pooled keep-alive connections
//! to the app, an `x-request-id` if missing, one access-log line
//! (`inbound`). An app that refuses connections gives 503 `UF`, like Envoy's
//! inbound cluster. Later labs add mTLS and authorization here.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use hyper::body::Incoming;

use crate::body::{MAX_REQUEST_BODY, Rsp, buffer};
use crate::log::{AccessLog, Direction, RequestLog, Upstream};
use crate::outbound::{ensure_request_id, finish, strip_hop_by_hop};
use crate::proxy::Shared;
use crate::route::authority_of;

/// Handle one request on the inbound listener.
pub async fn handle(shared: Arc<Shared>, req: http::Request<Incoming>) -> Result<Rsp, Infallible> {
    let start = Instant::now();
    let log = RequestLog::new();
    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    let request_id = ensure_request_id(&mut parts.headers);
    let method = parts.method.clone();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_else(|| "/".to_string());
    let head = http::Request::from_parts(parts, ());
    let authority = authority_of(&head).to_string();
    let (parts, ()) = head.into_parts();

    let (cluster, endpoint) = &shared.app;
    let result = async {
        let body = buffer(body, MAX_REQUEST_BODY).await?;
        let req = http::Request::from_parts(parts, body);
        log.record_upstream(Upstream {
            address: endpoint.address.clone(),
            instance: endpoint.instance.clone(),
        });
        crate::pool::send(cluster, endpoint, req).await
    }
    .await;

    let rsp = finish(result, &log, start);
    AccessLog {
        direction: Direction::Inbound,
        method: &method,
        authority: &authority,
        path: &path,
        status: rsp.status().as_u16(),
        duration: start.elapsed(),
        request_id: &request_id,
        log: &log,
    }
    .emit();
    Ok(rsp)
}

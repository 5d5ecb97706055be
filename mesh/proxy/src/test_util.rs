//! Helpers for the layer tests: tower-test mocks that speak the proxy's
//! request, response and error types, and small clusters.

use std::collections::BTreeMap;
use std::sync::Arc;

use mesh_api::snapshot::{ConnectionPool, LoadBalancer, OutlierDetection};
use tower::ServiceExt;
use tower_test::mock;

use crate::body::{Req, Rsp, full};
use crate::cluster::{ClusterRt, EndpointRt};
use crate::error::ProxyError;

pub type Handle = mock::Handle<Req, Rsp>;

/// A mock inner service whose errors are `ProxyError`s (send them with
/// `handle.send_error(ProxyError::...)`).
pub fn mock() -> (impl crate::body::ProxyService, Handle) {
    let (service, handle) = mock::pair::<Req, Rsp>();
    let service = service.map_err(|e: Box<dyn std::error::Error + Send + Sync>| {
        match e.downcast::<ProxyError>() {
            Ok(e) => *e,
            Err(_) => ProxyError::Internal("mock error"),
        }
    });
    (boxed(service), handle)
}

/// Any tower service as a layer of the stack: its future boxed, as every
/// layer's is ([`crate::body::RspFuture`]).
pub fn boxed<S>(service: S) -> impl crate::body::ProxyService
where
    S: tower::Service<Req, Response = Rsp, Error = ProxyError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    service.map_future(|future| Box::pin(future) as crate::body::RspFuture)
}

pub fn request(path: &str) -> Req {
    http::Request::builder()
        .uri(path)
        .header("host", "hw:8080")
        .body(crate::body::ReqBody::empty())
        .unwrap()
}

pub fn response(status: u16) -> Rsp {
    let mut rsp = http::Response::new(full("ok"));
    *rsp.status_mut() = http::StatusCode::from_u16(status).unwrap();
    rsp
}

pub fn cluster(name: &str, endpoints: usize, lb: LoadBalancer) -> Arc<ClusterRt> {
    cluster_with(name, endpoints, lb, None, ConnectionPool::default())
}

pub fn cluster_with(
    name: &str,
    endpoints: usize,
    lb: LoadBalancer,
    outlier: Option<OutlierDetection>,
    pool: ConnectionPool,
) -> Arc<ClusterRt> {
    Arc::new(ClusterRt {
        name: name.into(),
        service: name.split('|').next().unwrap_or(name).into(),
        subset: name.split_once('|').map(|(_, subset)| subset.into()),
        load_balancer: lb,
        connection_pool: pool,
        outlier_detection: outlier,
        endpoints: (0..endpoints)
            .map(|i| {
                Arc::new(EndpointRt::new(
                    &format!("10.0.0.{i}:15006"),
                    &format!("{name}-{i}"),
                    BTreeMap::new(),
                    name,
                    Default::default(),
                ))
            })
            .collect(),
        state: Default::default(),
    })
}

/// The endpoint a request was sent to, by its address.
pub fn endpoint_of(req: &Req) -> Arc<str> {
    crate::body::ctx(req)
        .endpoint
        .as_ref()
        .expect("balance put an endpoint in the request")
        .address
        .clone()
}

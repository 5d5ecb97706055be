//! The route timeout: the whole request, all retries included, must finish
//! within the VirtualService's `http[].timeout` (Envoy's route timeout).
//!
//! Sits above the retry layer so the deadline covers every attempt and the
//! backoff between them; each attempt's own limit is `perTryTimeout`, in the
//! retry layer. When it fires, the client gets 504 "upstream request
//! timeout" with flag `UT`. Istio sets no route timeout unless asked.

use std::task::{Context, Poll};
use std::time::Duration;

use crate::body::{ProxyService, Req, Rsp, RspFuture};
use crate::error::ProxyError;

#[derive(Clone, Debug)]
pub struct Timeout<S> {
    inner: S,
    timeout: Option<Duration>,
}

impl<S> Timeout<S> {
    /// `timeout: None`: no deadline.
    pub fn new(inner: S, timeout: Option<Duration>) -> Self {
        Timeout { inner, timeout }
    }
}

impl<S: ProxyService> tower::Service<Req> for Timeout<S> {
    type Response = Rsp;
    type Error = ProxyError;
    type Future = RspFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> RspFuture {
        let future = self.inner.call(req);
        match self.timeout {
            None => Box::pin(future),
            Some(timeout) => Box::pin(async move {
                // The deadline covers the response headers, as Envoy's route
                // timeout does; a body still streaming is not cut off.
                match tokio::time::timeout(timeout, future).await {
                    Ok(result) => result,
                    Err(_elapsed) => Err(ProxyError::Timeout),
                }
            }),
        }
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::*;
    use tower::ServiceExt;

    #[tokio::test(start_paused = true)]
    async fn a_slow_upstream_gets_504_at_the_deadline() {
        let (inner, mut handle) = mock();
        let timeout = Timeout::new(inner, Some(Duration::from_millis(300)));
        let start = tokio::time::Instant::now();
        let call = tokio::spawn(timeout.oneshot(request("/")));
        // Upstream receives the request and never answers.
        let (_req, _send) = handle.next_request().await.unwrap();
        let err = call.await.unwrap().unwrap_err();
        assert!(matches!(err, ProxyError::Timeout));
        assert_eq!(start.elapsed(), Duration::from_millis(300));
        assert_eq!(err.to_response().status(), 504);
        assert_eq!(err.flags(), crate::log::ResponseFlags::UT);
    }

    #[tokio::test(start_paused = true)]
    async fn a_fast_answer_and_no_timeout_pass_through() {
        let (inner, mut handle) = mock();
        let timeout = Timeout::new(inner.clone(), Some(Duration::from_millis(300)));
        let call = tokio::spawn(timeout.oneshot(request("/")));
        let (_, send) = handle.next_request().await.unwrap();
        send.send_response(response(200));
        assert_eq!(call.await.unwrap().unwrap().status(), 200);

        // Without a timeout an hour-long answer is still awaited (Istio's default).
        let forever = Timeout::new(inner, None);
        let call = tokio::spawn(forever.oneshot(request("/")));
        let (_, send) = handle.next_request().await.unwrap();
        tokio::time::sleep(Duration::from_secs(3600)).await;
        send.send_response(response(200));
        assert_eq!(call.await.unwrap().unwrap().status(), 200);
    }
}

//! The route timeout: the whole request, all retries included, must finish
//! within the VirtualService's `http[].timeout` (Envoy's route timeout).
//!
//! Sits above the retry layer so the deadline covers every attempt and the
//! backoff between them; each attempt's own limit is `perTryTimeout`, in the
//! retry layer. When it fires, the client gets 504 "upstream request
//! timeout" with flag `UT`. Istio sets no route timeout unless asked.
//!
//! A gRPC client states its own deadline in `grpc-timeout` (`100m`: 100
//! milliseconds; units `H M S m u n`). As with Istio's Envoy, that deadline
//! is respected: the earlier of it and the route timeout applies.

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
        let deadline = match (self.timeout, grpc_timeout(req.headers())) {
            (Some(route), Some(grpc)) => Some(route.min(grpc)),
            (route, grpc) => route.or(grpc),
        };
        let future = self.inner.call(req);
        match deadline {
            None => future,
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

/// The deadline a gRPC client sent in `grpc-timeout`: at most 8 digits and
/// a unit (gRPC over HTTP/2's spec). A malformed value is ignored.
pub fn grpc_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
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

    #[test]
    fn grpc_timeouts_are_read_in_every_unit_and_bad_ones_ignored() {
        let read = |v: &str| {
            let mut headers = http::HeaderMap::new();
            headers.insert("grpc-timeout", http::HeaderValue::from_str(v).unwrap());
            grpc_timeout(&headers)
        };
        assert_eq!(read("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(read("3M"), Some(Duration::from_secs(180)));
        assert_eq!(read("1S"), Some(Duration::from_secs(1)));
        assert_eq!(read("250m"), Some(Duration::from_millis(250)));
        assert_eq!(read("7u"), Some(Duration::from_micros(7)));
        assert_eq!(read("9n"), Some(Duration::from_nanos(9)));
        for bad in ["", "m", "123456789m", "10x", "-1m", "1.5S"] {
            assert_eq!(read(bad), None, "{bad:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_grpc_deadline_shorter_than_the_route_timeout_wins() {
        let (inner, mut handle) = mock();
        let mut req = request("/demo.Greeter/Hello");
        req.headers_mut()
            .insert("grpc-timeout", http::HeaderValue::from_static("100m"));
        let start = tokio::time::Instant::now();
        let call = tokio::spawn(Timeout::new(inner, Some(Duration::from_secs(10))).oneshot(req));
        let (_req, _never_answered) = handle.next_request().await.unwrap();
        assert!(matches!(call.await.unwrap(), Err(ProxyError::Timeout)));
        assert_eq!(start.elapsed(), Duration::from_millis(100));
    }
}

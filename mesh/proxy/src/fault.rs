//! Fault injection: delay or abort a share of a route's requests, to test how
//! the callers cope (VirtualService `http[].fault`, Envoy's fault filter).
//!
//! Sits right under routing, before the timeout, retry and any upstream: an
//! aborted request never leaves the proxy, and a delay counts against the
//! route's timeout, as in Envoy. The delay comes first, then the abort, so a
//! rule with both delays and then aborts the unlucky requests.
//!
//! Istio: a fault with no percentage injects nothing (the control plane
//! writes 0 then), and a route with a fault gets no retries. Because this
//! layer is above the retry layer, an injected abort is never retried anyway.
//! Delayed requests get flag `DI`, aborted ones `FI`, and an abort's body is
//! Envoy's `fault filter abort`.
//!
//! An abort is written with `httpStatus` or with `grpcStatus` (Istio's
//! oneof). What the caller reads depends on the caller, as with every local
//! reply of Envoy's (`error.rs`):
//!
//! ```text
//!                         gRPC caller (application/grpc)      any other caller
//! httpStatus: 503         200, grpc-status 14 (mapped)        503 fault filter abort
//! grpcStatus: NOT_FOUND   200, grpc-status 5 (as written)     200 fault filter abort
//! ```
//!
//! The last cell surprises people, and it is Envoy's: with `grpc_status`
//! set, its fault filter aborts with HTTP 200 and the gRPC code, and the
//! local reply turns that into a gRPC answer only when the request was a
//! gRPC call. A plain HTTP caller gets a 200 whose body says `fault filter
//! abort`; the access log's `FI` flag is how to tell it from a real answer.

use std::task::{Context, Poll};
use std::time::Duration;

use mesh_api::snapshot::Fault as FaultSpec;

use crate::body::{ProxyService, Req, Rsp, RspFuture, text_response};
use crate::error::ProxyError;
use crate::log::ResponseFlags;
use crate::rng::Rng;
use crate::route::check_percentage;
use crate::table::CompileError;

/// A route's fault, compiled.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FaultPolicy {
    /// Delay and the percentage of requests delayed.
    pub delay: Option<(Duration, f64)>,
    /// What to answer and the percentage of requests aborted.
    pub abort: Option<(AbortReply, f64)>,
}

/// The answer of an aborted request.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AbortReply {
    /// The HTTP status: `httpStatus`, or 200 for a `grpcStatus` abort.
    pub status: http::StatusCode,
    /// `grpcStatus`'s code; `None` maps `status` the way Envoy does.
    pub grpc_status: Option<u16>,
}

impl AbortReply {
    /// The answer for this caller: a gRPC trailers-only answer to a gRPC
    /// call, a text answer to anyone else (the table at the top).
    fn respond(self, grpc: bool) -> Rsp {
        const BODY: &str = "fault filter abort";
        match (grpc, self.grpc_status) {
            (true, Some(code)) => crate::error::grpc_reply_with_code(code, BODY),
            (true, None) => crate::error::grpc_reply(self.status, BODY),
            (false, _) => text_response(self.status, BODY),
        }
    }
}

impl FaultPolicy {
    pub fn compile(route: &str, spec: &FaultSpec) -> Result<FaultPolicy, CompileError> {
        let delay = match &spec.delay {
            Some(d) => {
                check_percentage(route, "fault.delay.percentage", d.percentage)?;
                Some((Duration::from_millis(d.fixed_delay_ms), d.percentage))
            }
            None => None,
        };
        let abort = match &spec.abort {
            Some(a) => {
                check_percentage(route, "fault.abort.percentage", a.percentage)?;
                let status = http::StatusCode::from_u16(a.http_status)
                    .ok()
                    .filter(|_| (100..=599).contains(&a.http_status))
                    .ok_or_else(|| CompileError::BadAbortStatus {
                        route: route.to_string(),
                        status: a.http_status,
                    })?;
                if let Some(code) = a.grpc_status.filter(|c| !mesh_api::check::grpc_status(*c)) {
                    return Err(CompileError::BadAbortGrpcStatus {
                        route: route.to_string(),
                        status: code,
                    });
                }
                let reply = AbortReply {
                    status,
                    grpc_status: a.grpc_status,
                };
                Some((reply, a.percentage))
            }
            None => None,
        };
        Ok(FaultPolicy { delay, abort })
    }
}

/// Delays and aborts requests as the route's [`FaultPolicy`] says.
#[derive(Clone, Debug)]
pub struct Fault<S> {
    inner: S,
    policy: Option<FaultPolicy>,
    rng: Rng,
}

impl<S> Fault<S> {
    /// `policy: None` passes every request straight through.
    pub fn new(inner: S, policy: Option<FaultPolicy>, rng: Rng) -> Self {
        Fault { inner, policy, rng }
    }
}

impl<S: ProxyService> tower::Service<Req> for Fault<S> {
    type Response = Rsp;
    type Error = ProxyError;
    type Future = RspFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        match self.policy {
            // No fault on this route: the inner service takes the request
            // directly, its future passed on unboxed.
            None => self.inner.poll_ready(cx),
            // The inner service is made ready in the future, after the delay.
            Some(_) => Poll::Ready(Ok(())),
        }
    }

    fn call(&mut self, req: Req) -> RspFuture {
        let Some(policy) = self.policy else {
            return self.inner.call(req);
        };
        // Decide both now, with independent draws, like Envoy.
        let delay = policy
            .delay
            .filter(|(_, percent)| self.rng.chance(*percent))
            .map(|(delay, _)| delay);
        let abort = policy
            .abort
            .filter(|(_, percent)| self.rng.chance(*percent))
            .map(|(reply, _)| reply);
        let log = crate::body::ctx(&req).log.clone();
        // A gRPC caller gets the abort as a gRPC status (`AbortReply`).
        let grpc = crate::error::is_grpc(req.headers());
        let inner = self.inner.clone();
        Box::pin(async move {
            if let Some(delay) = delay {
                if let Some(log) = &log {
                    log.flag(ResponseFlags::DI);
                }
                tokio::time::sleep(delay).await;
            }
            if let Some(reply) = abort {
                if let Some(log) = &log {
                    log.flag(ResponseFlags::FI);
                }
                return Ok(reply.respond(grpc));
            }
            tower::ServiceExt::oneshot(inner, req).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::RequestLog;
    use crate::test_util::*;
    use std::sync::Arc;
    use std::time::Duration;
    use tower::ServiceExt;

    fn policy(delay: Option<(u64, f64)>, abort: Option<(u16, f64)>) -> Option<FaultPolicy> {
        Some(FaultPolicy {
            delay: delay.map(|(ms, p)| (Duration::from_millis(ms), p)),
            abort: abort.map(|(s, p)| {
                let reply = AbortReply {
                    status: http::StatusCode::from_u16(s).unwrap(),
                    grpc_status: None,
                };
                (reply, p)
            }),
        })
    }

    fn logged(path: &str) -> (Req, Arc<RequestLog>) {
        let mut req = request(path);
        let log = RequestLog::new();
        crate::body::ctx_mut(&mut req).log = Some(log.clone());
        (req, log)
    }

    #[tokio::test(start_paused = true)]
    async fn an_abort_answers_without_calling_upstream() {
        let (inner, mut handle) = mock();
        let (req, log) = logged("/");
        let fault = Fault::new(inner, policy(None, Some((503, 100.0))), Rng::seeded(1));
        let rsp = fault.oneshot(req).await.unwrap();
        assert_eq!(rsp.status(), 503);
        let body = http_body_util::BodyExt::collect(rsp.into_body())
            .await
            .unwrap();
        assert_eq!(body.to_bytes(), "fault filter abort");
        assert_eq!(log.flags(), ResponseFlags::FI);
        // Every clone of the mock is gone and it never saw a request.
        assert!(handle.next_request().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_grpc_status_abort_answers_each_caller_as_envoy_does() {
        // `grpcStatus: NOT_FOUND`, compiled: HTTP 200 and gRPC code 5.
        let reply = AbortReply {
            status: http::StatusCode::OK,
            grpc_status: Some(5),
        };
        let policy = Some(FaultPolicy {
            delay: None,
            abort: Some((reply, 100.0)),
        });

        // A gRPC caller reads the code as written, trailers-only.
        let (inner, _handle) = mock();
        let (mut req, log) = logged("/demo.Greeter/Hello");
        req.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/grpc"),
        );
        let rsp = Fault::new(inner, policy, Rng::seeded(1))
            .oneshot(req)
            .await
            .unwrap();
        assert_eq!(rsp.status(), 200);
        assert_eq!(rsp.headers()["grpc-status"], "5");
        assert_eq!(rsp.headers()["grpc-message"], "fault filter abort");
        assert_eq!(log.flags(), ResponseFlags::FI);

        // Anyone else gets Envoy's HTTP 200 with the abort's text: only the
        // flag tells it from a real answer.
        let (inner, _handle) = mock();
        let (req, log) = logged("/");
        let rsp = Fault::new(inner, policy, Rng::seeded(1))
            .oneshot(req)
            .await
            .unwrap();
        assert_eq!(rsp.status(), 200);
        assert!(rsp.headers().get("grpc-status").is_none());
        let body = http_body_util::BodyExt::collect(rsp.into_body())
            .await
            .unwrap();
        assert_eq!(body.to_bytes(), "fault filter abort");
        assert_eq!(log.flags(), ResponseFlags::FI);
    }

    #[test]
    fn a_grpc_status_out_of_range_is_refused_at_compile() {
        let spec = FaultSpec {
            delay: None,
            abort: Some(mesh_api::snapshot::FaultAbort {
                http_status: 200,
                grpc_status: Some(17),
                percentage: 100.0,
            }),
        };
        let err = FaultPolicy::compile("hw", &spec).unwrap_err();
        assert!(err.to_string().contains("grpcStatus 17"), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_delay_holds_the_request_then_sends_it() {
        let (inner, mut handle) = mock();
        let (req, log) = logged("/");
        let fault = Fault::new(inner, policy(Some((5_000, 100.0)), None), Rng::seeded(1));
        let start = tokio::time::Instant::now();
        let call = tokio::spawn(fault.oneshot(req));
        let (_, send) = handle.next_request().await.unwrap();
        assert_eq!(
            start.elapsed(),
            Duration::from_secs(5),
            "upstream saw it after the delay"
        );
        send.send_response(response(200));
        assert_eq!(call.await.unwrap().unwrap().status(), 200);
        assert_eq!(log.flags(), ResponseFlags::DI);
    }

    #[tokio::test]
    async fn half_the_requests_are_aborted_within_the_binomial_spread() {
        let upstream = boxed(tower::service_fn(|_req: Req| async {
            Ok::<_, ProxyError>(response(200))
        }));
        let fault = Fault::new(upstream, policy(None, Some((500, 50.0))), Rng::seeded(42));
        let n = 2_000;
        let mut aborted = 0;
        for _ in 0..n {
            if fault.clone().oneshot(request("/")).await.unwrap().status() == 500 {
                aborted += 1;
            }
        }
        mesh_testkit::assert_binomial("aborted requests", aborted, n, 0.5, 4.0);
    }

    #[tokio::test]
    async fn zero_percent_and_no_policy_inject_nothing() {
        let upstream = boxed(tower::service_fn(|_req: Req| async {
            Ok::<_, ProxyError>(response(200))
        }));
        let never = Fault::new(
            upstream.clone(),
            policy(Some((1_000, 0.0)), Some((500, 0.0))),
            Rng::seeded(3),
        );
        let none = Fault::new(upstream, None, Rng::seeded(3));
        for _ in 0..100 {
            let (req, log) = logged("/");
            assert_eq!(never.clone().oneshot(req).await.unwrap().status(), 200);
            assert!(log.flags().is_empty());
            assert_eq!(
                none.clone().oneshot(request("/")).await.unwrap().status(),
                200
            );
        }
    }
}

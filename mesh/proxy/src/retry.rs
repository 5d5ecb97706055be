//! Retries: try again when an attempt fails in a way the route says is worth
//! retrying (VirtualService `http[].retries`, Envoy's retry policy).
//!
//! Sits under the route timeout and above the split and balancer, so every
//! attempt picks again. For each attempt it:
//!
//! - sets `x-envoy-attempt-count: N` on the upstream request;
//! - bounds it by `perTryTimeout`, if set;
//! - classifies the result with `retryOn`: `5xx` (any 5xx, connection
//!   failure, reset or per-try timeout), `gateway-error` (502/503/504 and the
//!   same local failures), `connect-failure`, `reset`, `refused-stream` (an
//!   HTTP/2 condition that HTTP/1.1 never produces), and
//!   `retriable-status-codes` (the listed statuses), and Istio's gRPC
//!   conditions `cancelled`, `deadline-exceeded`, `internal`,
//!   `resource-exhausted`, `unavailable`: a gRPC answer whose
//!   `grpc-status` header says so (as in Envoy, only a trailers-only
//!   answer is looked at: a status in trailers comes after the body has
//!   gone to the client, too late to try again);
//! - waits a fully jittered exponential backoff before the next attempt:
//!   random in `[0, 25ms * 2^(n-1)]`, capped at 250 ms, Envoy's defaults.
//!
//! The balancer avoids endpoints earlier attempts used (Envoy's
//! previous-hosts predicate) through the request's shared `RequestLog`.
//! When the last allowed attempt still fails in a retriable way, the client
//! gets that failure with flag `URX`.
//!
//! Each attempt sends the same body: when a retry is possible at all
//! (`attempts > 0`), the body is first read ahead into the bounded replay
//! buffer (`body.rs`, 64 KiB as in linkerd2-proxy). A body that outgrows it
//! streams to the first attempt and is not retried: the failure goes back
//! to the client as it is, and the access log says
//! `retry_skipped=body_over_replay_buffer`. A route without retries never
//! reads ahead and never copies the request.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::HeaderName;
use mesh_api::snapshot::RetryPolicy;

use crate::body::{ProxyService, REPLAY_BUFFER, Req, Rsp, RspFuture, clone_request, number_value};
use crate::error::ProxyError;
use crate::log::ResponseFlags;
use crate::rng::Rng;
use crate::table::CompileError;

/// Envoy's base retry back-off interval.
pub const BACKOFF_BASE: Duration = Duration::from_millis(25);
/// Envoy's default cap: ten times the base.
pub const BACKOFF_MAX: Duration = Duration::from_millis(250);

pub const ATTEMPT_COUNT: HeaderName = HeaderName::from_static("x-envoy-attempt-count");

/// A route's retry policy, compiled: conditions as booleans.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RetryPolicyRt {
    /// Retries after the first attempt.
    pub attempts: u32,
    pub per_try_timeout: Option<Duration>,
    pub on_5xx: bool,
    pub on_gateway_error: bool,
    pub on_connect_failure: bool,
    pub on_reset: bool,
    pub on_status: Vec<u16>,
    /// gRPC status codes (`grpc-status`) worth another attempt.
    pub on_grpc: Vec<u16>,
}

/// gRPC's status codes that Envoy's `retry_on` can name.
const GRPC_CANCELLED: u16 = 1;
const GRPC_DEADLINE_EXCEEDED: u16 = 4;
const GRPC_RESOURCE_EXHAUSTED: u16 = 8;
const GRPC_INTERNAL: u16 = 13;
const GRPC_UNAVAILABLE: u16 = 14;

impl RetryPolicyRt {
    pub fn compile(route: &str, policy: &RetryPolicy) -> Result<RetryPolicyRt, CompileError> {
        let mut rt = RetryPolicyRt {
            attempts: policy.attempts,
            per_try_timeout: policy.per_try_timeout_ms.map(Duration::from_millis),
            ..Default::default()
        };
        for condition in &policy.retry_on {
            match condition.as_str() {
                "5xx" => rt.on_5xx = true,
                "gateway-error" => rt.on_gateway_error = true,
                "connect-failure" => rt.on_connect_failure = true,
                "reset" => rt.on_reset = true,
                "retriable-status-codes" => rt.on_status = policy.retriable_status_codes.clone(),
                "cancelled" => rt.on_grpc.push(GRPC_CANCELLED),
                "deadline-exceeded" => rt.on_grpc.push(GRPC_DEADLINE_EXCEEDED),
                "resource-exhausted" => rt.on_grpc.push(GRPC_RESOURCE_EXHAUSTED),
                "internal" => rt.on_grpc.push(GRPC_INTERNAL),
                "unavailable" => rt.on_grpc.push(GRPC_UNAVAILABLE),
                // Valid in Istio; not produced by micromesh's upstreams.
                "refused-stream" | "retriable-4xx" => {}
                other => {
                    return Err(CompileError::BadRetryOn {
                        route: route.to_string(),
                        condition: other.to_string(),
                    });
                }
            }
        }
        Ok(rt)
    }

    /// Whether this attempt's result is worth another attempt.
    pub fn is_retriable(&self, result: &Result<Rsp, ProxyError>) -> bool {
        match result {
            Ok(rsp) => {
                let status = rsp.status().as_u16();
                (self.on_5xx && (500..=599).contains(&status))
                    || (self.on_gateway_error && matches!(status, 502..=504))
                    || self.on_status.contains(&status)
                    || (!self.on_grpc.is_empty()
                        && rsp
                            .headers()
                            .get("grpc-status")
                            .and_then(|v| v.to_str().ok()?.parse::<u16>().ok())
                            .is_some_and(|code| self.on_grpc.contains(&code)))
            }
            Err(ProxyError::ConnectFailure { .. }) => {
                self.on_connect_failure || self.on_5xx || self.on_gateway_error || self.on_reset
            }
            Err(ProxyError::Reset { .. }) | Err(ProxyError::PerTryTimeout) => {
                self.on_5xx || self.on_gateway_error || self.on_reset
            }
            // Overflow, no healthy upstream, no route: trying again right
            // away cannot help (Envoy does not retry overflows either).
            Err(_) => false,
        }
    }
}

/// Tries the inner service up to `1 + attempts` times.
#[derive(Clone, Debug)]
pub struct Retry<S> {
    inner: S,
    policy: Arc<RetryPolicyRt>,
    rng: Rng,
}

impl<S> Retry<S> {
    pub fn new(inner: S, policy: Arc<RetryPolicyRt>, rng: Rng) -> Self {
        Retry { inner, policy, rng }
    }
}

/// Fully jittered exponential backoff before retry number `retry` (1-based).
pub fn backoff(retry: u32, rng: &Rng) -> Duration {
    let ceiling = BACKOFF_BASE
        .saturating_mul(1 << retry.saturating_sub(1).min(10))
        .min(BACKOFF_MAX);
    Duration::from_micros(rng.below(ceiling.as_micros() as u64 + 1))
}

impl<S: ProxyService> tower::Service<Req> for Retry<S> {
    type Response = Rsp;
    type Error = ProxyError;
    type Future = RspFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        // Each attempt readies its own clone of the inner service.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> RspFuture {
        let inner = self.inner.clone();
        let policy = self.policy.clone();
        let rng = self.rng.clone();
        Box::pin(async move {
            let log = crate::body::ctx(&req).log.clone();
            let tries = policy.attempts.saturating_add(1);
            // Only a request that may be retried waits to fill the replay
            // buffer; with no retries the body streams straight through.
            let req = if tries > 1 && !req.body().is_replayable() {
                let (parts, body) = req.into_parts();
                Req::from_parts(parts, body.replayable(REPLAY_BUFFER).await?)
            } else {
                req
            };
            let mut attempt = 1;
            let mut req = Some(req);
            loop {
                // The last attempt takes the request itself; earlier ones a
                // copy, kept for the next (one copy fewer per request, and
                // none at all when the route allows no retries). A body
                // over the replay buffer cannot be copied: the first
                // attempt takes the request, and is the only one.
                // The count goes on the request before it is copied: the
                // copy's header map is made to measure, and one more
                // header would grow (reallocate) it.
                if let Some(req) = &mut req {
                    req.headers_mut()
                        .insert(ATTEMPT_COUNT, number_value(u64::from(attempt)));
                }
                let try_req = match req.take() {
                    Some(last) if attempt >= tries => last,
                    Some(kept) => match clone_request(&kept) {
                        Some(copy) => {
                            req = Some(kept);
                            copy
                        }
                        None => kept,
                    },
                    None => unreachable!("the request is kept until the last attempt"),
                };
                let future = crate::body::call_now(inner.clone(), try_req);
                let result = match policy.per_try_timeout {
                    Some(limit) => tokio::time::timeout(limit, future)
                        .await
                        .unwrap_or(Err(ProxyError::PerTryTimeout)),
                    None => future.await,
                };
                if !policy.is_retriable(&result) {
                    return result;
                }
                if req.is_none() && attempt < tries {
                    // Worth retrying, but the body is gone: say why not.
                    if let Some(log) = &log {
                        log.skip_retry();
                    }
                    return result;
                }
                if attempt >= tries {
                    if policy.attempts > 0
                        && let Some(log) = &log
                    {
                        log.flag(ResponseFlags::URX);
                    }
                    return result;
                }
                // The failed response is dropped unread; its connection is
                // closed rather than reused (see pool.rs).
                drop(result);
                tokio::time::sleep(backoff(attempt, &rng)).await;
                attempt += 1;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::RequestLog;
    use crate::test_util::*;
    use tower::ServiceExt;

    fn policy(attempts: u32, retry_on: &[&str], codes: &[u16]) -> Arc<RetryPolicyRt> {
        let spec = RetryPolicy {
            attempts,
            per_try_timeout_ms: None,
            retry_on: retry_on.iter().map(|s| s.to_string()).collect(),
            retriable_status_codes: codes.to_vec(),
        };
        Arc::new(RetryPolicyRt::compile("test", &spec).unwrap())
    }

    #[test]
    fn the_proxy_knows_exactly_the_conditions_the_shared_check_accepts() {
        // `mesh_api::check::RETRY_ON` is what apply and the proxy accept;
        // `compile` gives each its meaning. The two lists must not drift.
        for condition in mesh_api::check::RETRY_ON {
            let spec = RetryPolicy {
                retry_on: vec![condition.to_string()],
                ..RetryPolicy::default()
            };
            assert!(
                RetryPolicyRt::compile("test", &spec).is_ok(),
                "{condition} is accepted at apply but has no meaning in the proxy"
            );
        }
        let unknown = RetryPolicy {
            retry_on: vec!["on-a-whim".to_string()],
            ..RetryPolicy::default()
        };
        assert!(RetryPolicyRt::compile("test", &unknown).is_err());
    }

    fn logged() -> (Req, Arc<RequestLog>) {
        let mut req = request("/");
        let log = RequestLog::new();
        crate::body::ctx_mut(&mut req).log = Some(log.clone());
        (req, log)
    }

    fn connect_failure() -> ProxyError {
        ProxyError::ConnectFailure {
            endpoint: "10.0.0.1:15006".into(),
            source: std::io::ErrorKind::ConnectionRefused.into(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn istios_default_retries_a_503_and_counts_attempts() {
        let (inner, mut handle) = mock();
        let istio = Arc::new(RetryPolicyRt::compile("test", &RetryPolicy::default()).unwrap());
        let (req, log) = logged();
        let call = tokio::spawn(Retry::new(inner, istio, Rng::seeded(1)).oneshot(req));

        let (first, send) = handle.next_request().await.unwrap();
        assert_eq!(first.headers()[ATTEMPT_COUNT], "1");
        send.send_response(response(503));
        let (second, send) = handle.next_request().await.unwrap();
        assert_eq!(second.headers()[ATTEMPT_COUNT], "2");
        send.send_response(response(200));

        assert_eq!(call.await.unwrap().unwrap().status(), 200);
        assert!(log.flags().is_empty(), "a retry that succeeds sets no flag");
    }

    #[tokio::test(start_paused = true)]
    async fn exhausted_retries_return_the_last_failure_with_urx() {
        let (inner, mut handle) = mock();
        let (req, log) = logged();
        let retry = Retry::new(inner, policy(3, &["5xx"], &[]), Rng::seeded(1));
        let call = tokio::spawn(retry.oneshot(req));
        for attempt in 1..=4 {
            let (req, send) = handle.next_request().await.unwrap();
            assert_eq!(req.headers()[ATTEMPT_COUNT], attempt.to_string().as_str());
            send.send_response(response(500));
        }
        assert_eq!(call.await.unwrap().unwrap().status(), 500);
        assert_eq!(log.flags(), ResponseFlags::URX);
    }

    #[tokio::test(start_paused = true)]
    async fn only_listed_conditions_are_retried() {
        let (inner, mut handle) = mock();
        // 500 is not in retriable-status-codes [503]: one attempt only.
        let retry = Retry::new(
            inner.clone(),
            policy(2, &["retriable-status-codes"], &[503]),
            Rng::seeded(1),
        );
        let call = tokio::spawn(retry.oneshot(request("/")));
        let (_, send) = handle.next_request().await.unwrap();
        send.send_response(response(500));
        assert_eq!(call.await.unwrap().unwrap().status(), 500);

        // A connection failure is retried under connect-failure...
        let retry = Retry::new(
            inner.clone(),
            policy(2, &["connect-failure"], &[]),
            Rng::seeded(1),
        );
        let call = tokio::spawn(retry.oneshot(request("/")));
        let (_, send) = handle.next_request().await.unwrap();
        send.send_error(connect_failure());
        let (_, send) = handle.next_request().await.unwrap();
        send.send_response(response(200));
        assert_eq!(call.await.unwrap().unwrap().status(), 200);

        // ...but an overflow never is: the breaker is there to shed load.
        let retry = Retry::new(
            inner,
            policy(2, &["5xx", "reset", "connect-failure"], &[]),
            Rng::seeded(1),
        );
        let call = tokio::spawn(retry.oneshot(request("/")));
        let (_, send) = handle.next_request().await.unwrap();
        send.send_error(ProxyError::Overflow {
            cluster: "hw".into(),
            limit: "test",
        });
        assert!(matches!(
            call.await.unwrap(),
            Err(ProxyError::Overflow { .. })
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_attempt_is_cut_by_the_per_try_timeout_and_retried() {
        let (inner, mut handle) = mock();
        let mut spec = (*policy(1, &["gateway-error"], &[])).clone();
        spec.per_try_timeout = Some(Duration::from_millis(100));
        let start = tokio::time::Instant::now();
        let call =
            tokio::spawn(Retry::new(inner, Arc::new(spec), Rng::seeded(1)).oneshot(request("/")));
        let (_hung, _never_answered) = handle.next_request().await.unwrap();
        let (_, send) = handle.next_request().await.unwrap();
        assert!(start.elapsed() >= Duration::from_millis(100));
        assert!(start.elapsed() <= Duration::from_millis(100) + BACKOFF_BASE);
        send.send_response(response(200));
        assert_eq!(call.await.unwrap().unwrap().status(), 200);
    }

    fn grpc_answer(code: &str) -> Rsp {
        let mut rsp = response(200);
        rsp.headers_mut()
            .insert("grpc-status", http::HeaderValue::from_str(code).unwrap());
        rsp
    }

    #[test]
    fn grpc_conditions_match_the_grpc_status_header_as_istio_names_them() {
        let istio = policy(
            2,
            &[
                "unavailable",
                "cancelled",
                "resource-exhausted",
                "deadline-exceeded",
            ],
            &[],
        );
        for code in ["14", "1", "8", "4"] {
            assert!(
                istio.is_retriable(&Ok(grpc_answer(code))),
                "grpc-status {code}"
            );
        }
        // OK, NOT_FOUND, INTERNAL (not listed): the answer stands.
        for code in ["0", "5", "13"] {
            assert!(
                !istio.is_retriable(&Ok(grpc_answer(code))),
                "grpc-status {code}"
            );
        }
        // Plain 5xx conditions do not read gRPC statuses.
        assert!(!policy(2, &["5xx"], &[]).is_retriable(&Ok(grpc_answer("14"))));
    }

    #[tokio::test(start_paused = true)]
    async fn an_unavailable_grpc_call_is_tried_again() {
        let (inner, mut handle) = mock();
        let retry = Retry::new(inner, policy(1, &["unavailable"], &[]), Rng::seeded(1));
        let call = tokio::spawn(retry.oneshot(request("/demo.Greeter/Hello")));
        let (_, send) = handle.next_request().await.unwrap();
        send.send_response(grpc_answer("14"));
        let (second, send) = handle.next_request().await.unwrap();
        assert_eq!(second.headers()[ATTEMPT_COUNT], "2");
        send.send_response(grpc_answer("0"));
        let rsp = call.await.unwrap().unwrap();
        assert_eq!(rsp.headers()["grpc-status"], "0");
    }

    #[test]
    fn backoff_is_jittered_under_envoys_ceiling() {
        let rng = Rng::seeded(9);
        for retry in 1..10 {
            let ceiling = (BACKOFF_BASE * 2u32.pow(retry - 1)).min(BACKOFF_MAX);
            for _ in 0..50 {
                assert!(backoff(retry, &rng) <= ceiling);
            }
        }
        let spread: std::collections::HashSet<_> = (0..50).map(|_| backoff(1, &rng)).collect();
        assert!(spread.len() > 10, "jittered, not fixed");
    }
}

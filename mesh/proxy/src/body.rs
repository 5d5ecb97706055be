//! Bodies and the request/response types every layer of the proxy speaks.
//!
//! Bodies stream through the proxy in both directions: a chunk is read from
//! one side only when the other side can take it (hyper's flow control on
//! HTTP/1.1 and HTTP/2), so a 100 MiB upload costs a few buffers of memory,
//! not 100 MiB, and the mesh sets no size limit of its own. An app that
//! hangs up mid-body ends its request: the upstream request is reset and
//! its connection closed, nothing is kept.
//!
//! Retries need the same bytes twice. As linkerd2-proxy does, the proxy
//! keeps a bounded replay buffer ([`REPLAY_BUFFER`], Linkerd's 64 KiB): only
//! a route that may retry (or mirror) reads up to that much ahead
//! ([`ReqBody::replayable`]); a body that ends within it is held in memory
//! and every attempt sends it again, a larger one streams on and is sent
//! once, and the access log says the retry was skipped
//! (`retry_skipped=body_over_replay_buffer`, see `log.rs`). Requests
//! without a body (most GETs) never wait for anything.
//!
//! The body also carries the request's [`RequestCtx`]: the request log, and
//! the cluster and endpoint the split and the balancer chose, which the
//! layers below read. They could ride in the request's `http::Extensions`
//! (they did), but that is a type-keyed map: a box for the map, a table,
//! one box per value, and all of it again for each copy a retry makes,
//! about eight allocations per request (callgrind). `ReqBody` is the one
//! part of `http::Request` that is the proxy's own type, so it holds them
//! as plain typed fields instead; [`ctx`] and [`ctx_mut`] reach them.

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use crate::cluster::{ClusterRt, EndpointRt};
use crate::error::ProxyError;
use crate::log::RequestLog;

/// The request every layer below the listener handles: headers plus a body
/// that streams, or sits in memory when a retry may need it again.
pub type Req = http::Request<ReqBody>;
/// A response streaming back to the client.
pub type Rsp = http::Response<ResponseBody>;
/// Either an upstream's streaming body or one the proxy made itself.
pub type ResponseBody = BoxBody<Bytes, hyper::Error>;

/// How much of a request body the proxy holds so a retry can send it again
/// (linkerd2-proxy's limit). A larger body is streamed and not retried.
pub const REPLAY_BUFFER: usize = 64 * 1024;

/// A request body on its way through the proxy, and the request's context.
#[derive(Debug)]
pub struct ReqBody {
    kind: Kind,
    /// What the layers tell each other about this request.
    pub ctx: RequestCtx,
}

/// What the layers tell each other about one request, as typed fields
/// (see the module's comment for why here and not in `http::Extensions`).
/// A retry's copy of the request gets a copy of it: the same log (shared,
/// so the balancer sees the endpoints earlier attempts used), and the
/// cluster and endpoint that attempt's split and balancer choose again.
#[derive(Clone, Debug, Default)]
pub struct RequestCtx {
    /// The request's shared record (`log.rs`): flags, attempts, bytes.
    pub log: Option<Arc<RequestLog>>,
    /// The cluster this attempt goes to, once the split chose it.
    pub cluster: Option<Arc<ClusterRt>>,
    /// The endpoint this attempt goes to, once the balancer chose it.
    pub endpoint: Option<Arc<EndpointRt>>,
}

/// The context of `req` (its log, cluster and endpoint).
pub fn ctx(req: &Req) -> &RequestCtx {
    &req.body().ctx
}

/// The context of `req`, to fill in.
pub fn ctx_mut(req: &mut Req) -> &mut RequestCtx {
    &mut req.body_mut().ctx
}

#[derive(Debug)]
enum Kind {
    /// All of it in memory (and the trailers, if any): cheap to copy, so
    /// every attempt can send it.
    Buffered {
        data: Option<Bytes>,
        trailers: Option<HeaderMap>,
    },
    /// Arriving from the client: what was read ahead (at most the replay
    /// buffer), then the rest as it comes.
    Streaming {
        prefix: Option<Bytes>,
        rest: Arriving,
    },
}

/// The client's body, counting the bytes read into the request's log
/// (telemetry's `request_bytes`).
#[derive(Debug)]
struct Arriving {
    inner: hyper::body::Incoming,
    log: Option<Arc<RequestLog>>,
}

impl Arriving {
    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let frame = std::task::ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if let (Some(Ok(frame)), Some(log)) = (&frame, &self.log)
            && let Some(data) = frame.data_ref()
        {
            log.add_request_bytes(data.len() as u64);
        }
        Poll::Ready(frame)
    }

    async fn frame(&mut self) -> Option<Result<Frame<Bytes>, hyper::Error>> {
        std::future::poll_fn(|cx| self.poll_frame(cx)).await
    }
}

impl ReqBody {
    /// A body already in memory.
    pub fn full(data: impl Into<Bytes>) -> ReqBody {
        let data: Bytes = data.into();
        ReqBody {
            kind: Kind::Buffered {
                data: (!data.is_empty()).then_some(data),
                trailers: None,
            },
            ctx: RequestCtx::default(),
        }
    }

    /// No body at all.
    pub fn empty() -> ReqBody {
        ReqBody::full(Bytes::new())
    }

    /// The client's body as hyper delivers it, streamed on as it arrives;
    /// the bytes read are counted in `log`, which is also the request's
    /// context's log. A body that is already over (a GET) is an empty
    /// buffered one, replayable for free.
    pub fn arriving(inner: hyper::body::Incoming, log: Option<Arc<RequestLog>>) -> ReqBody {
        let ctx = RequestCtx {
            log,
            ..RequestCtx::default()
        };
        if inner.is_end_stream() {
            let mut body = ReqBody::empty();
            body.ctx = ctx;
            return body;
        }
        ReqBody {
            kind: Kind::Streaming {
                prefix: None,
                rest: Arriving {
                    inner,
                    log: ctx.log.clone(),
                },
            },
            ctx,
        }
    }

    /// Whether the whole body is in memory, so [`try_clone`](Self::try_clone)
    /// works and a retry can resend it.
    pub fn is_replayable(&self) -> bool {
        matches!(self.kind, Kind::Buffered { .. })
    }

    /// A copy for another attempt, if the whole body is in memory.
    pub fn try_clone(&self) -> Option<ReqBody> {
        match &self.kind {
            Kind::Buffered { data, trailers } => Some(ReqBody {
                kind: Kind::Buffered {
                    data: data.clone(),
                    trailers: trailers.clone(),
                },
                ctx: self.ctx.clone(),
            }),
            Kind::Streaming { .. } => None,
        }
    }

    /// Read ahead up to `limit` bytes so the body can be replayed: a body
    /// that ends within the limit comes back buffered (replayable); a longer
    /// one comes back streaming, the bytes read so far first, and is not
    /// replayable. Only what was read ahead is held, never more than `limit`
    /// plus one chunk.
    pub async fn replayable(self, limit: usize) -> Result<ReqBody, ProxyError> {
        let ctx = self.ctx;
        let mut rest = match self.kind {
            kind @ Kind::Buffered { .. } => return Ok(ReqBody { kind, ctx }),
            // Read ahead once only; what was read is already the prefix.
            Kind::Streaming {
                prefix: Some(prefix),
                rest,
            } => {
                return Ok(ReqBody {
                    kind: Kind::Streaming {
                        prefix: Some(prefix),
                        rest,
                    },
                    ctx,
                });
            }
            Kind::Streaming { prefix: None, rest } => rest,
        };
        let mut chunks: Vec<Bytes> = Vec::new();
        let mut held = 0;
        let mut trailers = None;
        while held <= limit {
            match rest.frame().await {
                None => break,
                Some(Err(error)) => return Err(ProxyError::DownstreamBody(error)),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        held += data.len();
                        chunks.push(data);
                    }
                    Err(frame) => {
                        trailers = frame.into_trailers().ok();
                        break;
                    }
                },
            }
            if rest.inner.is_end_stream() {
                break;
            }
        }
        let data = concat(chunks, held);
        if held <= limit {
            return Ok(ReqBody {
                kind: Kind::Buffered {
                    data: (!data.is_empty()).then_some(data),
                    trailers,
                },
                ctx,
            });
        }
        Ok(ReqBody {
            kind: Kind::Streaming {
                prefix: Some(data),
                rest,
            },
            ctx,
        })
    }
}

/// One buffer from several chunks (no copy when there is only one).
fn concat(mut chunks: Vec<Bytes>, len: usize) -> Bytes {
    if chunks.len() <= 1 {
        return chunks.pop().unwrap_or_default();
    }
    let mut all = BytesMut::with_capacity(len);
    for chunk in chunks {
        all.extend_from_slice(&chunk);
    }
    all.freeze()
}

impl From<Bytes> for ReqBody {
    fn from(data: Bytes) -> ReqBody {
        ReqBody::full(data)
    }
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match &mut self.kind {
            Kind::Buffered { data, trailers } => Poll::Ready(match data.take() {
                Some(data) => Some(Ok(Frame::data(data))),
                None => trailers.take().map(|t| Ok(Frame::trailers(t))),
            }),
            Kind::Streaming { prefix, rest } => match prefix.take() {
                Some(prefix) => Poll::Ready(Some(Ok(Frame::data(prefix)))),
                None => rest.poll_frame(cx),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Buffered { data, trailers } => data.is_none() && trailers.is_none(),
            Kind::Streaming { prefix, rest } => prefix.is_none() && rest.inner.is_end_stream(),
        }
    }

    /// Exact when the client sent a `Content-Length` (hyper then forwards
    /// it as one, rather than switching to chunked).
    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Buffered { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Kind::Streaming { prefix, rest } => {
                let ahead = prefix.as_ref().map_or(0, |p| p.len() as u64);
                let hint = rest.inner.size_hint();
                let mut total = SizeHint::new();
                total.set_lower(hint.lower() + ahead);
                if let Some(upper) = hint.upper() {
                    total.set_upper(upper + ahead);
                }
                total
            }
        }
    }
}

/// A body the proxy writes itself.
pub fn full(bytes: impl Into<Bytes>) -> ResponseBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A response made by the proxy: `status`, a plain-text body.
pub fn text_response(status: http::StatusCode, body: impl Into<Bytes>) -> Rsp {
    let mut rsp = http::Response::new(full(body));
    *rsp.status_mut() = status;
    rsp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    rsp
}

/// A number as a header value. `HeaderValue::from(u64)` allocates twice;
/// the proxy writes two numbers on every request (`x-envoy-attempt-count`,
/// `x-envoy-upstream-service-time`), nearly always below 100, so those are
/// slices of one static string, and only larger ones are formatted.
pub fn number_value(n: u64) -> http::HeaderValue {
    const TWO_DIGITS: &str = "00010203040506070809101112131415161718192021222324252627282930313233343536373839404142434445464748495051525354555657585960616263646566676869707172737475767778798081828384858687888990919293949596979899";
    match usize::try_from(n) {
        Ok(i @ 0..=9) => http::HeaderValue::from_static(&TWO_DIGITS[2 * i + 1..2 * i + 2]),
        Ok(i @ 10..=99) => http::HeaderValue::from_static(&TWO_DIGITS[2 * i..2 * i + 2]),
        _ => http::HeaderValue::from(n),
    }
}

/// Copy a request whose body is in memory, its context and extensions
/// included (for retries and mirrors); `None` if its body is streaming.
pub fn clone_request(req: &Req) -> Option<Req> {
    let mut copy = http::Request::new(req.body().try_clone()?);
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    *copy.extensions_mut() = req.extensions().clone();
    Some(copy)
}

/// What every layer of the outbound stack is: a cloneable tower service from
/// a request to a streaming response, failing with a [`ProxyError`].
///
/// Every layer's response future is the same boxed [`RspFuture`], so a learner
/// reads `async` blocks, never named future types. A layer with nothing to do
/// for a request (no fault, no timeout, no outlier detection on the route)
/// hands the inner layer's future on as it is, rather than boxing it once
/// more: a box costs an allocation and a copy of the whole future below it,
/// per layer and per request (callgrind counted it).
pub trait ProxyService:
    tower::Service<Req, Response = Rsp, Error = ProxyError, Future = RspFuture> + Clone + Send + 'static
{
}

impl<S> ProxyService for S where
    S: tower::Service<Req, Response = Rsp, Error = ProxyError, Future = RspFuture>
        + Clone
        + Send
        + 'static
{
}

/// The future every layer returns.
pub type RspFuture = futures::future::BoxFuture<'static, Result<Rsp, ProxyError>>;

/// Hand `req` to `service` and return the service's own response future.
///
/// `tower::ServiceExt::oneshot` would do the same, but its future holds the
/// service and the request until the first poll, so a caller awaiting it
/// carries both in its own future, and every move of that future (into a
/// box, across layers) copies them (callgrind: a few hundred bytes per
/// layer, per request). Every layer of the proxy is ready at once (limits
/// are checked per request, never by waiting in `poll_ready`), so the
/// service is asked once, without waiting, and called at once; the caller
/// then holds only the boxed future. A service that is not ready at once
/// (a test's mock) is still waited for, through `oneshot`.
pub fn call_now<S: ProxyService>(mut service: S, req: Req) -> RspFuture {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    match service.poll_ready(&mut cx) {
        Poll::Ready(Ok(())) => service.call(req),
        Poll::Ready(Err(error)) => Box::pin(async move { Err(error) }),
        Poll::Pending => Box::pin(tower::ServiceExt::oneshot(service, req)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_written_in_decimal() {
        for n in [0u64, 1, 9, 10, 42, 99, 100, 12345, u64::MAX] {
            assert_eq!(number_value(n), n.to_string().as_str(), "{n}");
        }
    }
}

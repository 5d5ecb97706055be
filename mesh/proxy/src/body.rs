//! Bodies and the request/response types every layer of the proxy speaks.
//!
//! The proxy reads a request body completely before routing it (up to
//! [`MAX_REQUEST_BODY`]): a retry must be able to send the same bytes again,
//! and Envoy buffers for the same reason (its `per_connection_buffer_limit`).
//! Responses are streamed back as they arrive; only locally generated answers
//! (errors, fault aborts) are built in memory.

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};

use crate::error::ProxyError;

/// The request every layer below the listener handles: headers plus the
/// whole body, cheap to clone for a retry.
pub type Req = http::Request<Bytes>;
/// A response streaming back to the client.
pub type Rsp = http::Response<ResponseBody>;
/// Either an upstream's streaming body or one the proxy made itself.
pub type ResponseBody = BoxBody<Bytes, hyper::Error>;

/// Requests with a larger body are refused with 413 (Envoy's default buffer
/// limit is also 1 MiB).
pub const MAX_REQUEST_BODY: usize = 1024 * 1024;

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

/// Read a request body into memory, refusing more than `limit` bytes.
pub async fn buffer<B>(body: B, limit: usize) -> Result<Bytes, ProxyError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(ProxyError::BodyTooLarge { limit })
        }
        Err(e) => Err(ProxyError::BadRequest(format!(
            "could not read the request body: {e}"
        ))),
    }
}

/// Copy a buffered request, extensions included (for retries and mirrors).
pub fn clone_request(req: &Req) -> Req {
    let mut copy = http::Request::new(req.body().clone());
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    *copy.extensions_mut() = req.extensions().clone();
    copy
}

/// What every layer of the outbound stack is: a cloneable tower service from
/// a buffered request to a streaming response, failing with a [`ProxyError`].
///
/// Each layer's response future is boxed: one small allocation per layer per
/// request, in exchange for code a learner can read without naming futures.
pub trait ProxyService:
    tower::Service<Req, Response = Rsp, Error = ProxyError, Future: Send + 'static>
    + Clone
    + Send
    + 'static
{
}

impl<S> ProxyService for S where
    S: tower::Service<Req, Response = Rsp, Error = ProxyError, Future: Send + 'static>
        + Clone
        + Send
        + 'static
{
}

/// The future every layer returns.
pub type RspFuture = futures::future::BoxFuture<'static, Result<Rsp, ProxyError>>;

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

//! What a posted body is: how it is compressed (`Content-Encoding`) and
//! which format it is in (`Content-Type`), before any span is read.
//!
//! OpenTelemetry's exporters gzip by default, Zipkin's reporters may send
//! protobuf, and a sidecar sends plain JSON; all of them reach the same
//! decoders. Zipkin's server reads a body without a content type as JSON,
//! and so do we. A format we cannot read is a 415 that names the ones we
//! can, so the reporter's log says what to change.

use std::borrow::Cow;
use std::io::Read;

use axum::http::HeaderMap;
use axum::http::header::{CONTENT_ENCODING, CONTENT_TYPE};

/// A gzip body may not grow past this when inflated: a small hostile body
/// must not take the control plane's memory.
pub const MAX_INFLATED_BYTES: u64 = 64 * 1024 * 1024;

/// The formats a body can be in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Json,
    Protobuf,
}

/// Why a body was not read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IntakeError {
    /// 415: a content type or encoding the collector does not read.
    #[error("{0}")]
    Unsupported(String),
    /// 400: the body claims gzip but is not, or inflates too far.
    #[error("{0}")]
    Malformed(String),
}

/// The format named by `Content-Type`; none means JSON, as in Zipkin.
pub fn format(headers: &HeaderMap, route: &str) -> Result<Format, IntakeError> {
    let Some(value) = headers.get(CONTENT_TYPE) else {
        return Ok(Format::Json);
    };
    let text = value.to_str().unwrap_or("");
    // `application/json; charset=utf-8`: only the media type matters.
    let media = text.split(';').next().unwrap_or("").trim();
    match media.to_ascii_lowercase().as_str() {
        "" | "application/json" | "text/plain" => Ok(Format::Json),
        "application/x-protobuf" | "application/protobuf" => Ok(Format::Protobuf),
        _ => Err(IntakeError::Unsupported(format!(
            "{route}: Content-Type {text:?} is not supported; send application/json or \
             application/x-protobuf (Thrift and Zipkin v1 formats are not read here)"
        ))),
    }
}

/// The body with any `Content-Encoding: gzip` undone.
pub fn inflate<'a>(
    headers: &HeaderMap,
    body: &'a [u8],
    route: &str,
) -> Result<Cow<'a, [u8]>, IntakeError> {
    let encoding = headers
        .get(CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase())
        .unwrap_or_default();
    match encoding.as_str() {
        "" | "identity" => Ok(Cow::Borrowed(body)),
        // Zipkin sends nothing to inflate through the decoder: an empty
        // body is an empty batch whatever its encoding header says.
        "gzip" | "x-gzip" if body.is_empty() => Ok(Cow::Borrowed(body)),
        "gzip" | "x-gzip" => {
            let mut inflated = Vec::new();
            flate2::read::GzDecoder::new(body)
                .take(MAX_INFLATED_BYTES + 1)
                .read_to_end(&mut inflated)
                .map_err(|e| {
                    IntakeError::Malformed(format!(
                        "{route}: Content-Encoding: gzip but the body cannot be gunzipped ({e}); \
                         send it compressed with gzip, or drop the header"
                    ))
                })?;
            if inflated.len() as u64 > MAX_INFLATED_BYTES {
                return Err(IntakeError::Malformed(format!(
                    "{route}: the gzip body inflates past {MAX_INFLATED_BYTES} bytes; send \
                     smaller batches"
                )));
            }
            Ok(Cow::Owned(inflated))
        }
        other => Err(IntakeError::Unsupported(format!(
            "{route}: Content-Encoding {other:?} is not supported; send gzip or no encoding"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use axum::http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (k.parse().unwrap(), HeaderValue::from_static(v)))
            .collect()
    }

    #[test]
    fn content_types_choose_the_decoder() {
        assert_eq!(format(&headers(&[]), "r"), Ok(Format::Json));
        let json = headers(&[("content-type", "application/json; charset=utf-8")]);
        assert_eq!(format(&json, "r"), Ok(Format::Json));
        let proto = headers(&[("content-type", "application/x-protobuf")]);
        assert_eq!(format(&proto, "r"), Ok(Format::Protobuf));
        let thrift = headers(&[("content-type", "application/x-thrift")]);
        let Err(IntakeError::Unsupported(e)) = format(&thrift, "POST /api/v2/spans") else {
            panic!("thrift must be refused");
        };
        assert!(
            e.contains("application/x-protobuf") && e.contains("x-thrift"),
            "{e}"
        );
    }

    #[test]
    fn gzip_is_undone_and_a_false_claim_refused() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(b"[]").unwrap();
        let body = gz.finish().unwrap();
        let h = headers(&[("content-encoding", "gzip")]);
        assert_eq!(&*inflate(&h, &body, "r").unwrap(), b"[]");
        assert!(matches!(
            inflate(&h, b"[]", "r"),
            Err(IntakeError::Malformed(e)) if e.contains("cannot be gunzipped")
        ));
        let br = headers(&[("content-encoding", "br")]);
        assert!(matches!(
            inflate(&br, b"x", "r"),
            Err(IntakeError::Unsupported(_))
        ));
    }
}

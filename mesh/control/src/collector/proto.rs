//! Zipkin's protobuf encoding: `POST /api/v2/spans` with
//! `Content-Type: application/x-protobuf`.
//!
//! Zipkin's reporters (Brave, zipkin-go, OpenTelemetry's Zipkin exporter
//! when asked) can send a `ListOfSpans` message from openzipkin's
//! `zipkin.proto` instead of JSON: ids as raw bytes, times as fixed64. The
//! message types below are that file written as Rust with prost's derive
//! (the tag numbers are the `.proto`'s), so no `protoc` or build script is
//! needed. Each decoded span becomes the same [`Span`] the JSON path makes
//! and passes the same checks (`Span::normalize`).

use std::collections::BTreeMap;

use prost::Message;

use super::span::{Annotation, Endpoint, Kind, Span};

/// `zipkin.proto3.ListOfSpans`.
#[derive(Clone, PartialEq, Message)]
pub struct ListOfSpans {
    #[prost(message, repeated, tag = "1")]
    pub spans: Vec<ProtoSpan>,
}

/// `zipkin.proto3.Span`.
#[derive(Clone, PartialEq, Message)]
pub struct ProtoSpan {
    /// 8 or 16 bytes.
    #[prost(bytes = "vec", tag = "1")]
    pub trace_id: Vec<u8>,
    /// 8 bytes, or empty for a root span.
    #[prost(bytes = "vec", tag = "2")]
    pub parent_id: Vec<u8>,
    #[prost(bytes = "vec", tag = "3")]
    pub id: Vec<u8>,
    /// 0 unspecified, 1 CLIENT, 2 SERVER, 3 PRODUCER, 4 CONSUMER.
    #[prost(int32, tag = "4")]
    pub kind: i32,
    #[prost(string, tag = "5")]
    pub name: String,
    /// Microseconds since the epoch; 0 means absent.
    #[prost(fixed64, tag = "6")]
    pub timestamp: u64,
    #[prost(uint64, tag = "7")]
    pub duration: u64,
    #[prost(message, optional, tag = "8")]
    pub local_endpoint: Option<ProtoEndpoint>,
    #[prost(message, optional, tag = "9")]
    pub remote_endpoint: Option<ProtoEndpoint>,
    #[prost(message, repeated, tag = "10")]
    pub annotations: Vec<ProtoAnnotation>,
    #[prost(btree_map = "string, string", tag = "11")]
    pub tags: BTreeMap<String, String>,
    #[prost(bool, tag = "12")]
    pub debug: bool,
    #[prost(bool, tag = "13")]
    pub shared: bool,
}

/// `zipkin.proto3.Endpoint`: addresses as raw bytes (4 or 16).
#[derive(Clone, PartialEq, Message)]
pub struct ProtoEndpoint {
    #[prost(string, tag = "1")]
    pub service_name: String,
    #[prost(bytes = "vec", tag = "2")]
    pub ipv4: Vec<u8>,
    #[prost(bytes = "vec", tag = "3")]
    pub ipv6: Vec<u8>,
    #[prost(int32, tag = "4")]
    pub port: i32,
}

/// `zipkin.proto3.Annotation`.
#[derive(Clone, PartialEq, Message)]
pub struct ProtoAnnotation {
    #[prost(fixed64, tag = "1")]
    pub timestamp: u64,
    #[prost(string, tag = "2")]
    pub value: String,
}

/// Decode a `ListOfSpans` body into checked spans, all or nothing like the
/// JSON path.
pub fn parse_proto_batch(body: &[u8]) -> Result<Vec<Span>, String> {
    let list = ListOfSpans::decode(body).map_err(|e| {
        format!(
            "not a protobuf zipkin.proto3.ListOfSpans ({e}); send JSON with \
             Content-Type: application/json, or check the reporter's encoding"
        )
    })?;
    list.spans
        .into_iter()
        .enumerate()
        .map(|(index, span)| span.into_span().normalize(index).map_err(|e| e.to_string()))
        .collect()
}

// === impl ProtoSpan ===

impl ProtoSpan {
    /// The JSON model's span; `normalize` then applies Zipkin's id rules.
    fn into_span(self) -> Span {
        let kind = match self.kind {
            1 => Some(Kind::Client),
            2 => Some(Kind::Server),
            3 => Some(Kind::Producer),
            4 => Some(Kind::Consumer),
            _ => None,
        };
        Span {
            trace_id: hex(&self.trace_id),
            id: hex(&self.id),
            parent_id: (!self.parent_id.is_empty()).then(|| hex(&self.parent_id)),
            kind,
            name: non_empty(self.name),
            timestamp: (self.timestamp > 0).then_some(self.timestamp),
            duration: (self.duration > 0).then_some(self.duration),
            local_endpoint: self.local_endpoint.map(ProtoEndpoint::into_endpoint),
            remote_endpoint: self.remote_endpoint.map(ProtoEndpoint::into_endpoint),
            annotations: self
                .annotations
                .into_iter()
                .map(|a| Annotation {
                    timestamp: a.timestamp,
                    value: a.value,
                })
                .collect(),
            tags: self.tags,
            debug: self.debug.then_some(true),
            shared: self.shared.then_some(true),
        }
    }
}

impl ProtoEndpoint {
    fn into_endpoint(self) -> Endpoint {
        let ipv4 = <[u8; 4]>::try_from(self.ipv4.as_slice())
            .ok()
            .map(|b| std::net::Ipv4Addr::from(b).to_string());
        let ipv6 = <[u8; 16]>::try_from(self.ipv6.as_slice())
            .ok()
            .map(|b| std::net::Ipv6Addr::from(b).to_string());
        Endpoint {
            service_name: non_empty(self.service_name),
            ipv4,
            ipv6,
            port: u16::try_from(self.port).ok().filter(|p| *p > 0),
        }
    }
}

/// Lowercase hex of raw id bytes: the JSON model's spelling.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn non_empty(text: String) -> Option<String> {
    (!text.is_empty()).then_some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_of_spans_round_trips_into_the_json_model() {
        let list = ListOfSpans {
            spans: vec![ProtoSpan {
                trace_id: vec![0; 8].into_iter().chain([0xab; 8]).collect(),
                id: vec![0, 0, 0, 0, 0, 0, 0, 2],
                parent_id: vec![0; 8],
                kind: 2,
                name: "GET /hello".into(),
                timestamp: 1_700_000_000_000_000,
                duration: 1_500,
                local_endpoint: Some(ProtoEndpoint {
                    service_name: "HelloWorld-Service".into(),
                    ipv4: vec![10, 0, 0, 7],
                    port: 8080,
                    ..ProtoEndpoint::default()
                }),
                tags: [("http.method".to_string(), "GET".to_string())].into(),
                ..ProtoSpan::default()
            }],
        };
        let spans = parse_proto_batch(&list.encode_to_vec()).unwrap();
        let span = &spans[0];
        // 16 bytes with a zero upper half: the 64-bit id.
        assert_eq!(span.trace_id, "abababababababab");
        assert_eq!(span.id, "0000000000000002");
        // All-zero parent bytes: a root span.
        assert_eq!(span.parent_id, None);
        assert_eq!(span.kind, Some(Kind::Server));
        assert_eq!(span.service(), Some("helloworld-service"));
        let local = span.local_endpoint.as_ref().unwrap();
        assert_eq!(
            (local.ipv4.as_deref(), local.port),
            (Some("10.0.0.7"), Some(8080))
        );
        assert_eq!(span.tag("http.method"), Some("GET"));
    }

    #[test]
    fn garbage_is_refused_with_what_to_send_instead() {
        let e = parse_proto_batch(b"[{\"traceId\": \"a\"}]").unwrap_err();
        assert!(
            e.contains("ListOfSpans") && e.contains("application/json"),
            "{e}"
        );
    }
}

//! OpenTelemetry's trace intake: `POST /v1/traces` (OTLP/HTTP), protobuf
//! or JSON, into the same store as the sidecars' Zipkin spans.
//!
//! An app instrumented with an OpenTelemetry SDK exports its own spans
//! (say, "render page" inside guestbook-ui) to an OTLP endpoint. Pointed
//! here, they join the sidecars' traces: the SDK read the trace context the
//! sidecar wrote on the request (`traceparent`), so its spans carry the same
//! trace id and name the sidecar's SERVER span as their parent. Istio does
//! the same with an OpenTelemetry Collector in front of Zipkin or Jaeger.
//!
//! The mapping is the one OpenTelemetry's own Zipkin exporter specifies
//! ("Exporter to Zipkin" in the OpenTelemetry specification):
//!
//! ```text
//! OTLP                                   Zipkin
//! traceId (16 bytes), spanId (8)         traceId, id (lower hex)
//! parentSpanId                           parentId
//! kind SERVER/CLIENT/PRODUCER/CONSUMER   kind; INTERNAL and unspecified: none
//! startTimeUnixNano, endTimeUnixNano     timestamp, duration (µs)
//! resource service.name                  localEndpoint.serviceName
//! peer.service / server.address          remoteEndpoint.serviceName
//! attributes                             tags (arrays as JSON text)
//! status ERROR                           tag error = message; otel.status_code
//! events                                 annotations
//! scope name / version                   tags otel.scope.name / .version
//! ```
//!
//! The message types are OTLP's `.proto` files (opentelemetry-proto,
//! `collector/trace/v1`, `trace/v1`, `common/v1`, `resource/v1`) written as
//! Rust with prost's derive: no `protoc` or build script. OTLP's JSON form
//! is the protobuf JSON mapping with one exception the spec makes: ids are
//! hex, not base64. It is read into the same types, so both share one
//! mapping.

use std::collections::BTreeMap;

use prost::Message;
use serde::Deserialize;

use super::proto::hex;
use super::span::{Annotation, Endpoint, Kind, Span};

// === OTLP's protobuf messages ===

/// `opentelemetry.proto.collector.trace.v1.ExportTraceServiceRequest`.
#[derive(Clone, PartialEq, Message)]
pub struct ExportTraceServiceRequest {
    #[prost(message, repeated, tag = "1")]
    pub resource_spans: Vec<ResourceSpans>,
}

/// `opentelemetry.proto.trace.v1.ResourceSpans`: spans of one process.
#[derive(Clone, PartialEq, Message)]
pub struct ResourceSpans {
    #[prost(message, optional, tag = "1")]
    pub resource: Option<Resource>,
    #[prost(message, repeated, tag = "2")]
    pub scope_spans: Vec<ScopeSpans>,
}

/// `opentelemetry.proto.resource.v1.Resource`: `service.name` and friends.
#[derive(Clone, PartialEq, Message)]
pub struct Resource {
    #[prost(message, repeated, tag = "1")]
    pub attributes: Vec<KeyValue>,
}

/// `opentelemetry.proto.trace.v1.ScopeSpans`: spans of one library.
#[derive(Clone, PartialEq, Message)]
pub struct ScopeSpans {
    #[prost(message, optional, tag = "1")]
    pub scope: Option<InstrumentationScope>,
    #[prost(message, repeated, tag = "2")]
    pub spans: Vec<OtlpSpan>,
}

/// `opentelemetry.proto.common.v1.InstrumentationScope`.
#[derive(Clone, PartialEq, Message)]
pub struct InstrumentationScope {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub version: String,
}

/// `opentelemetry.proto.trace.v1.Span` (links and dropped counts left out:
/// Zipkin has no place for them, and prost skips unknown fields).
#[derive(Clone, PartialEq, Message)]
pub struct OtlpSpan {
    #[prost(bytes = "vec", tag = "1")]
    pub trace_id: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub span_id: Vec<u8>,
    #[prost(bytes = "vec", tag = "4")]
    pub parent_span_id: Vec<u8>,
    #[prost(string, tag = "5")]
    pub name: String,
    /// 0 unspecified, 1 INTERNAL, 2 SERVER, 3 CLIENT, 4 PRODUCER, 5 CONSUMER.
    #[prost(int32, tag = "6")]
    pub kind: i32,
    #[prost(fixed64, tag = "7")]
    pub start_time_unix_nano: u64,
    #[prost(fixed64, tag = "8")]
    pub end_time_unix_nano: u64,
    #[prost(message, repeated, tag = "9")]
    pub attributes: Vec<KeyValue>,
    #[prost(message, repeated, tag = "11")]
    pub events: Vec<Event>,
    #[prost(message, optional, tag = "15")]
    pub status: Option<Status>,
}

/// `opentelemetry.proto.trace.v1.Span.Event`.
#[derive(Clone, PartialEq, Message)]
pub struct Event {
    #[prost(fixed64, tag = "1")]
    pub time_unix_nano: u64,
    #[prost(string, tag = "2")]
    pub name: String,
    #[prost(message, repeated, tag = "3")]
    pub attributes: Vec<KeyValue>,
}

/// `opentelemetry.proto.trace.v1.Status`: code 0 unset, 1 ok, 2 error.
#[derive(Clone, PartialEq, Message)]
pub struct Status {
    #[prost(string, tag = "2")]
    pub message: String,
    #[prost(int32, tag = "3")]
    pub code: i32,
}

/// `opentelemetry.proto.common.v1.KeyValue`.
#[derive(Clone, PartialEq, Message)]
pub struct KeyValue {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(message, optional, tag = "2")]
    pub value: Option<AnyValue>,
}

/// `opentelemetry.proto.common.v1.AnyValue`: one of its kinds.
#[derive(Clone, PartialEq, Message)]
pub struct AnyValue {
    #[prost(oneof = "Value", tags = "1, 2, 3, 4, 5, 6, 7")]
    pub value: Option<Value>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Value {
    #[prost(string, tag = "1")]
    String(String),
    #[prost(bool, tag = "2")]
    Bool(bool),
    #[prost(int64, tag = "3")]
    Int(i64),
    #[prost(double, tag = "4")]
    Double(f64),
    #[prost(message, tag = "5")]
    Array(ArrayValue),
    #[prost(message, tag = "6")]
    KvList(KeyValueList),
    #[prost(bytes = "vec", tag = "7")]
    Bytes(Vec<u8>),
}

#[derive(Clone, PartialEq, Message)]
pub struct ArrayValue {
    #[prost(message, repeated, tag = "1")]
    pub values: Vec<AnyValue>,
}

#[derive(Clone, PartialEq, Message)]
pub struct KeyValueList {
    #[prost(message, repeated, tag = "1")]
    pub values: Vec<KeyValue>,
}

/// `google.rpc.Status`: the body of an OTLP/HTTP failure.
#[derive(Clone, PartialEq, Message)]
pub struct RpcStatus {
    #[prost(int32, tag = "1")]
    pub code: i32,
    #[prost(string, tag = "2")]
    pub message: String,
}

/// gRPC's INVALID_ARGUMENT, the code OTLP uses for a request it cannot read.
pub const INVALID_ARGUMENT: i32 = 3;

// === decoding ===

/// Decode an OTLP protobuf body into checked Zipkin spans.
pub fn parse_protobuf(body: &[u8]) -> Result<Vec<Span>, String> {
    let request = ExportTraceServiceRequest::decode(body).map_err(|e| {
        format!(
            "not a protobuf ExportTraceServiceRequest ({e}); for OTLP JSON send \
             Content-Type: application/json"
        )
    })?;
    to_spans(request)
}

/// Decode an OTLP JSON body into checked Zipkin spans.
pub fn parse_json(body: &[u8]) -> Result<Vec<Span>, String> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let request: json::ExportTraceServiceRequest =
        serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
            format!(
                "at {}: {} (the body must be OTLP JSON: {{\"resourceSpans\": [...]}})",
                e.path(),
                e.inner()
            )
        })?;
    to_spans(request.try_into()?)
}

/// The mapping in the module doc, span by span; the first bad span refuses
/// the batch with its position, as the Zipkin path does.
fn to_spans(request: ExportTraceServiceRequest) -> Result<Vec<Span>, String> {
    let mut spans = Vec::new();
    for resource_spans in request.resource_spans {
        let resource = resource_spans.resource.unwrap_or_default().attributes;
        let service = attribute(&resource, "service.name")
            .map(text)
            // The SDKs' own default when the app sets no name.
            .unwrap_or_else(|| "unknown_service".to_string());
        for scope_spans in resource_spans.scope_spans {
            let scope = scope_spans.scope.unwrap_or_default();
            for span in scope_spans.spans {
                let index = spans.len();
                let span = zipkin_span(span, &service, &scope)
                    .normalize(index)
                    .map_err(|e| format!("OTLP {e}"))?;
                spans.push(span);
            }
        }
    }
    Ok(spans)
}

fn zipkin_span(span: OtlpSpan, service: &str, scope: &InstrumentationScope) -> Span {
    let kind = match span.kind {
        2 => Some(Kind::Server),
        3 => Some(Kind::Client),
        4 => Some(Kind::Producer),
        5 => Some(Kind::Consumer),
        _ => None,
    };
    let micros = |nanos: u64| nanos / 1_000;
    let start = micros(span.start_time_unix_nano);
    let end = micros(span.end_time_unix_nano);
    let remote = ["peer.service", "server.address", "net.peer.name"]
        .iter()
        .find_map(|key| attribute(&span.attributes, key))
        .map(text)
        .filter(|_| matches!(kind, Some(Kind::Client | Kind::Producer)));

    let mut tags: BTreeMap<String, String> = span
        .attributes
        .iter()
        .map(|kv| {
            (
                kv.key.clone(),
                kv.value.as_ref().map(text).unwrap_or_default(),
            )
        })
        .collect();
    if !scope.name.is_empty() {
        tags.insert("otel.scope.name".into(), scope.name.clone());
    }
    if !scope.version.is_empty() {
        tags.insert("otel.scope.version".into(), scope.version.clone());
    }
    match span.status {
        Some(Status { code: 2, message }) => {
            tags.insert("otel.status_code".into(), "ERROR".into());
            tags.insert("error".into(), message);
        }
        Some(Status { code: 1, .. }) => {
            tags.insert("otel.status_code".into(), "OK".into());
        }
        _ => {}
    }
    let annotations = span
        .events
        .into_iter()
        .map(|event| Annotation {
            timestamp: micros(event.time_unix_nano),
            value: event_value(event),
        })
        .collect();

    Span {
        trace_id: hex(&span.trace_id),
        id: hex(&span.span_id),
        parent_id: (!span.parent_span_id.is_empty()).then(|| hex(&span.parent_span_id)),
        kind,
        name: (!span.name.is_empty()).then_some(span.name),
        timestamp: (start > 0).then_some(start),
        duration: (start > 0 && end > start).then(|| end - start),
        local_endpoint: Some(Endpoint {
            service_name: Some(service.to_string()),
            ..Endpoint::default()
        }),
        remote_endpoint: remote.map(|name| Endpoint {
            service_name: Some(name),
            ..Endpoint::default()
        }),
        annotations,
        tags,
        debug: None,
        shared: None,
    }
}

/// The exporter's rule: an event with attributes becomes
/// `{"name":{"attr":"value"}}`, one without just its name.
fn event_value(event: Event) -> String {
    if event.attributes.is_empty() {
        return event.name;
    }
    let attributes: serde_json::Map<String, serde_json::Value> = event
        .attributes
        .iter()
        .map(|kv| {
            let value = kv.value.as_ref().map(text).unwrap_or_default();
            (kv.key.clone(), serde_json::Value::String(value))
        })
        .collect();
    serde_json::json!({ event.name: attributes }).to_string()
}

fn attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a AnyValue> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
}

/// An attribute as Zipkin tag text: scalars as themselves, arrays and maps
/// as JSON, bytes as base64-free hex (Zipkin's tags are plain strings).
fn text(value: &AnyValue) -> String {
    match &value.value {
        Some(Value::String(s)) => s.clone(),
        Some(other) => to_json(other).to_string(),
        None => String::new(),
    }
}

fn to_json(value: &Value) -> serde_json::Value {
    use serde_json::Value as J;
    match value {
        Value::String(s) => J::String(s.clone()),
        Value::Bool(b) => J::Bool(*b),
        Value::Int(i) => J::from(*i),
        Value::Double(d) => J::from(*d),
        Value::Bytes(b) => J::String(hex(b)),
        Value::Array(a) => J::Array(
            a.values
                .iter()
                .map(|v| v.value.as_ref().map(to_json).unwrap_or(J::Null))
                .collect(),
        ),
        Value::KvList(kvs) => J::Object(
            kvs.values
                .iter()
                .map(|kv| {
                    let v = kv.value.as_ref().and_then(|v| v.value.as_ref());
                    (kv.key.clone(), v.map(to_json).unwrap_or(J::Null))
                })
                .collect(),
        ),
    }
}

// === OTLP's JSON form ===

/// OTLP JSON (the protobuf JSON mapping, lowerCamelCase names, 64-bit
/// integers as decimal strings or numbers, enums as numbers, ids as hex),
/// read into the protobuf types above.
mod json {
    use serde::Deserialize;

    #[derive(Deserialize, Default)]
    #[serde(rename_all = "camelCase", default)]
    pub struct ExportTraceServiceRequest {
        pub resource_spans: Vec<ResourceSpans>,
    }

    #[derive(Deserialize, Default)]
    #[serde(rename_all = "camelCase", default)]
    pub struct ResourceSpans {
        pub resource: Option<Resource>,
        pub scope_spans: Vec<ScopeSpans>,
    }

    #[derive(Deserialize, Default)]
    #[serde(rename_all = "camelCase", default)]
    pub struct Resource {
        pub attributes: Vec<KeyValue>,
    }

    #[derive(Deserialize, Default)]
    #[serde(rename_all = "camelCase", default)]
    pub struct ScopeSpans {
        pub scope: Option<Scope>,
        pub spans: Vec<Span>,
    }

    #[derive(Deserialize, Default)]
    #[serde(rename_all = "camelCase", default)]
    pub struct Scope {
        pub name: String,
        pub version: String,
    }

    #[derive(Deserialize, Default)]
    #[serde(rename_all = "camelCase", default)]
    pub struct Span {
        pub trace_id: String,
        pub span_id: String,
        pub parent_span_id: String,
        pub name: String,
        pub kind: super::JsonInt,
        pub start_time_unix_nano: super::JsonInt,
        pub end_time_unix_nano: super::JsonInt,
        pub attributes: Vec<KeyValue>,
        pub events: Vec<Event>,
        pub status: Option<Status>,
    }

    #[derive(Deserialize, Default)]
    #[serde(rename_all = "camelCase", default)]
    pub struct Event {
        pub time_unix_nano: super::JsonInt,
        pub name: String,
        pub attributes: Vec<KeyValue>,
    }

    #[derive(Deserialize, Default)]
    #[serde(rename_all = "camelCase", default)]
    pub struct Status {
        pub message: String,
        pub code: super::JsonInt,
    }

    #[derive(Deserialize, Default)]
    #[serde(rename_all = "camelCase", default)]
    pub struct KeyValue {
        pub key: String,
        pub value: Option<AnyValue>,
    }

    #[derive(Deserialize, Default)]
    #[serde(rename_all = "camelCase", default)]
    pub struct AnyValue {
        pub string_value: Option<String>,
        pub bool_value: Option<bool>,
        pub int_value: Option<super::JsonInt>,
        pub double_value: Option<f64>,
        pub array_value: Option<ArrayValue>,
        pub kvlist_value: Option<KeyValueList>,
        /// base64, as the protobuf JSON mapping writes bytes.
        pub bytes_value: Option<String>,
    }

    #[derive(Deserialize, Default)]
    #[serde(default)]
    pub struct ArrayValue {
        pub values: Vec<AnyValue>,
    }

    #[derive(Deserialize, Default)]
    #[serde(default)]
    pub struct KeyValueList {
        pub values: Vec<KeyValue>,
    }
}

/// A protobuf-JSON integer: a number, or its decimal text (how 64-bit
/// values travel so JavaScript does not round them), or for an enum its
/// name (`"SPAN_KIND_SERVER"`), which some exporters write.
#[derive(Default)]
pub struct JsonInt(i128);

impl<'de> Deserialize<'de> for JsonInt {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::Number(n) => n
                .as_i64()
                .map(i128::from)
                .or_else(|| n.as_u64().map(i128::from))
                .map(JsonInt)
                .ok_or_else(|| D::Error::custom(format!("{n} is not a whole number"))),
            serde_json::Value::String(s) => match s.as_str() {
                "SPAN_KIND_UNSPECIFIED" | "STATUS_CODE_UNSET" => Ok(JsonInt(0)),
                "SPAN_KIND_INTERNAL" | "STATUS_CODE_OK" => Ok(JsonInt(1)),
                "SPAN_KIND_SERVER" | "STATUS_CODE_ERROR" => Ok(JsonInt(2)),
                "SPAN_KIND_CLIENT" => Ok(JsonInt(3)),
                "SPAN_KIND_PRODUCER" => Ok(JsonInt(4)),
                "SPAN_KIND_CONSUMER" => Ok(JsonInt(5)),
                _ => s.parse().map(JsonInt).map_err(|_| {
                    D::Error::custom(format!("{s:?} is not a whole number or an enum name"))
                }),
            },
            serde_json::Value::Null => Ok(JsonInt(0)),
            other => Err(D::Error::custom(format!("{other} is not a whole number"))),
        }
    }
}

impl JsonInt {
    fn unsigned(&self) -> u64 {
        u64::try_from(self.0).unwrap_or(0)
    }
    fn int32(&self) -> i32 {
        i32::try_from(self.0).unwrap_or(0)
    }
}

/// OTLP JSON ids are hex (the one place OTLP JSON departs from the
/// protobuf mapping, which would use base64).
fn id_bytes(field: &str, hex_id: &str) -> Result<Vec<u8>, String> {
    if !hex_id.len().is_multiple_of(2) || !hex_id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "OTLP JSON {field} {hex_id:?} is not hex: OTLP JSON writes ids as hex \
             (32 characters for a trace id, 16 for a span id), not base64"
        ));
    }
    (0..hex_id.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex_id[i..i + 2], 16).map_err(|e| e.to_string()))
        .collect()
}

impl TryFrom<json::ExportTraceServiceRequest> for ExportTraceServiceRequest {
    type Error = String;

    fn try_from(request: json::ExportTraceServiceRequest) -> Result<Self, String> {
        let resource_spans = request
            .resource_spans
            .into_iter()
            .map(|rs| {
                let scope_spans = rs
                    .scope_spans
                    .into_iter()
                    .map(|ss| {
                        let spans = ss
                            .spans
                            .into_iter()
                            .map(OtlpSpan::try_from)
                            .collect::<Result<_, _>>()?;
                        let scope = ss.scope.map(|s| InstrumentationScope {
                            name: s.name,
                            version: s.version,
                        });
                        Ok(ScopeSpans { scope, spans })
                    })
                    .collect::<Result<_, String>>()?;
                Ok(ResourceSpans {
                    resource: rs.resource.map(|r| Resource {
                        attributes: key_values(r.attributes),
                    }),
                    scope_spans,
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(ExportTraceServiceRequest { resource_spans })
    }
}

impl TryFrom<json::Span> for OtlpSpan {
    type Error = String;

    fn try_from(span: json::Span) -> Result<Self, String> {
        Ok(OtlpSpan {
            trace_id: id_bytes("traceId", &span.trace_id)?,
            span_id: id_bytes("spanId", &span.span_id)?,
            parent_span_id: id_bytes("parentSpanId", &span.parent_span_id)?,
            name: span.name,
            kind: span.kind.int32(),
            start_time_unix_nano: span.start_time_unix_nano.unsigned(),
            end_time_unix_nano: span.end_time_unix_nano.unsigned(),
            attributes: key_values(span.attributes),
            events: span
                .events
                .into_iter()
                .map(|e| Event {
                    time_unix_nano: e.time_unix_nano.unsigned(),
                    name: e.name,
                    attributes: key_values(e.attributes),
                })
                .collect(),
            status: span.status.map(|s| Status {
                message: s.message,
                code: s.code.int32(),
            }),
        })
    }
}

fn key_values(kvs: Vec<json::KeyValue>) -> Vec<KeyValue> {
    kvs.into_iter()
        .map(|kv| KeyValue {
            key: kv.key,
            value: kv.value.map(any_value),
        })
        .collect()
}

fn any_value(v: json::AnyValue) -> AnyValue {
    let value = if let Some(s) = v.string_value {
        Some(Value::String(s))
    } else if let Some(b) = v.bool_value {
        Some(Value::Bool(b))
    } else if let Some(i) = v.int_value {
        Some(Value::Int(i64::try_from(i.0).unwrap_or(i64::MAX)))
    } else if let Some(d) = v.double_value {
        Some(Value::Double(d))
    } else if let Some(a) = v.array_value {
        Some(Value::Array(ArrayValue {
            values: a.values.into_iter().map(any_value).collect(),
        }))
    } else if let Some(kvs) = v.kvlist_value {
        Some(Value::KvList(KeyValueList {
            values: key_values(kvs.values),
        }))
    } else {
        // Bytes stay as the base64 text they came as.
        v.bytes_value.map(Value::String)
    };
    AnyValue { value }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, value: Value) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue { value: Some(value) }),
        }
    }

    #[test]
    fn an_sdk_span_maps_like_opentelemetrys_zipkin_exporter() {
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![kv("service.name", Value::String("Guestbook-UI".into()))],
                }),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "guestbook".into(),
                        version: "1.0".into(),
                    }),
                    spans: vec![OtlpSpan {
                        trace_id: vec![0x4b; 16],
                        span_id: vec![0, 0, 0, 0, 0, 0, 0, 9],
                        parent_span_id: vec![0, 0, 0, 0, 0, 0, 0, 8],
                        name: "call backend".into(),
                        kind: 3,
                        start_time_unix_nano: 1_700_000_000_000_000_000,
                        end_time_unix_nano: 1_700_000_000_002_500_000,
                        attributes: vec![
                            kv("peer.service", Value::String("helloworld-service".into())),
                            kv("http.response.status_code", Value::Int(503)),
                            kv(
                                "tags",
                                Value::Array(ArrayValue {
                                    values: vec![AnyValue {
                                        value: Some(Value::Bool(true)),
                                    }],
                                }),
                            ),
                        ],
                        events: vec![Event {
                            time_unix_nano: 1_700_000_000_001_000_000,
                            name: "retry".into(),
                            attributes: vec![],
                        }],
                        status: Some(Status {
                            message: "upstream failed".into(),
                            code: 2,
                        }),
                    }],
                }],
            }],
        };
        let spans = parse_protobuf(&request.encode_to_vec()).unwrap();
        let span = &spans[0];
        assert_eq!(span.trace_id, "4b".repeat(16));
        assert_eq!(span.id, "0000000000000009");
        assert_eq!(span.parent_id.as_deref(), Some("0000000000000008"));
        assert_eq!(span.kind, Some(Kind::Client));
        assert_eq!(span.service(), Some("guestbook-ui"));
        assert_eq!(span.remote_service(), Some("helloworld-service"));
        assert_eq!(
            span.interval(),
            Some((1_700_000_000_000_000, 1_700_000_000_002_500))
        );
        assert_eq!(span.tag("http.response.status_code"), Some("503"));
        assert_eq!(span.tag("tags"), Some("[true]"));
        assert_eq!(span.tag("error"), Some("upstream failed"));
        assert_eq!(span.tag("otel.scope.name"), Some("guestbook"));
        assert_eq!(span.annotations[0].value, "retry");
        assert_eq!(span.annotations[0].timestamp, 1_700_000_000_001_000);
    }

    #[test]
    fn otlp_json_reads_hex_ids_string_integers_and_enum_names() {
        let body = br#"{"resourceSpans": [{
            "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "web"}}]},
            "scopeSpans": [{"spans": [{
                "traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174",
                "name": "render", "kind": "SPAN_KIND_INTERNAL",
                "startTimeUnixNano": "1544712660000000000", "endTimeUnixNano": 1544712661000000000,
                "attributes": [{"key": "items", "value": {"intValue": "3"}}]
            }]}]
        }]}"#;
        let spans = parse_json(body).unwrap();
        let span = &spans[0];
        assert_eq!(span.trace_id, "5b8efff798038103d269b633813fc60c");
        assert_eq!(span.kind, None, "INTERNAL has no Zipkin kind");
        assert_eq!(span.service(), Some("web"));
        assert_eq!(span.duration, Some(1_000_000));
        assert_eq!(span.tag("items"), Some("3"));

        let e = parse_json(
            br#"{"resourceSpans": [{"scopeSpans": [{"spans": [
            {"traceId": "W46/95gDgQPSabYzgT/GDA==", "spanId": "eee19b7ec3c1b174"}]}]}]}"#,
        )
        .unwrap_err();
        assert!(e.contains("traceId") && e.contains("not base64"), "{e}");
    }
}

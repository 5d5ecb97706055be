//! A Zipkin v2 span, and the checks a span passes before the collector
//! stores it.
//!
//! Every sidecar reports two spans per request it sees: a SERVER span on its
//! inbound side and a CLIENT span on its outbound side (the gateway reports
//! one CLIENT span). They arrive as Zipkin v2 JSON, the format Envoy's
//! Zipkin tracer sends too, so the same sidecar can report to a real Zipkin
//! or Jaeger instead. The field names and rules follow the Zipkin API
//! (zipkin-api's `zipkin2-api.yaml`); what micromesh's sidecars put in the
//! tags is written down in `docs/telemetry-contract.md`.
//!
//! The id rules are Zipkin's own (`zipkin2.Span` in openzipkin/zipkin), so
//! a client that works against Zipkin works here:
//!
//! - ids are lowercase hex with no prefix; `4BF9...` is refused, as Zipkin
//!   refuses it, rather than silently stored under another spelling;
//! - a short id is left-padded with zeros to 16 or 32 characters;
//! - an all-zero trace id or span id is refused; an all-zero `parentId`
//!   means "no parent" (some tracers send that for a root span);
//! - a 128-bit trace id whose upper 64 bits are zero *is* the 64-bit id:
//!   it is stored, and found, as its 16-character form. Zipkin compares
//!   trace ids as strings, so this is what joins a B3 64-bit id to the same
//!   id arriving padded in W3C's `traceparent` or OTLP's 16 bytes.
//!
//! A timestamp or duration of zero or below is treated as absent (Zipkin's
//! builder does the same), and a tag value may be a JSON number or boolean:
//! it is kept as its text, since Zipkin's tags are strings.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A span, as Zipkin's API sends and receives it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Span {
    pub trace_id: String,
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<Kind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Start, in microseconds since the Unix epoch.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "positive_or_absent"
    )]
    pub timestamp: Option<u64>,
    /// In microseconds.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "positive_or_absent"
    )]
    pub duration: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_endpoint: Option<Endpoint>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_endpoint: Option<Endpoint>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub annotations: Vec<Annotation>,
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "tag_values_as_text"
    )]
    pub tags: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debug: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared: Option<bool>,
}

/// Which side of a call a span records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Kind {
    /// The caller's side: a sidecar's outbound listener, or the gateway.
    Client,
    /// The callee's side: a sidecar's inbound listener.
    Server,
    Producer,
    Consumer,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Annotation {
    pub timestamp: u64,
    pub value: String,
}

/// A span the collector refuses, and why.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("span {index} (traceId {trace_id:?}, id {id:?}): {field}: {message}")]
pub struct SpanError {
    /// Position in the posted array.
    pub index: usize,
    pub trace_id: String,
    pub id: String,
    pub field: &'static str,
    pub message: String,
}

// === impl Span ===

impl Span {
    /// `localEndpoint.serviceName`: the workload that recorded the span.
    pub fn service(&self) -> Option<&str> {
        self.local_endpoint
            .as_ref()
            .and_then(|e| e.service_name.as_deref())
    }

    /// `remoteEndpoint.serviceName`: for a CLIENT span, who was called.
    pub fn remote_service(&self) -> Option<&str> {
        self.remote_endpoint
            .as_ref()
            .and_then(|e| e.service_name.as_deref())
    }

    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags.get(key).map(String::as_str)
    }

    /// The proxy instance that recorded the span (tag `instance`).
    pub fn instance(&self) -> Option<&str> {
        self.tag("instance")
    }

    /// Start and end in microseconds, when both are known.
    pub fn interval(&self) -> Option<(u64, u64)> {
        let start = self.timestamp?;
        Some((start, start.saturating_add(self.duration.unwrap_or(0))))
    }

    /// Whether the span records a failure: Envoy's `error` tag, or a 5xx.
    pub fn is_error(&self) -> bool {
        self.tags.contains_key("error")
            || self
                .tag("http.status_code")
                .and_then(|c| c.parse::<u16>().ok())
                .is_some_and(|c| c >= 500 || c == 0)
    }

    /// Check a posted span and bring it to the form the store keeps: ids
    /// padded, service and span names lowercased (Zipkin does both), an
    /// empty or all-zero `parentId` taken as none.
    pub fn normalize(mut self, index: usize) -> Result<Span, SpanError> {
        let error = |span: &Span, field: &'static str, message: String| SpanError {
            index,
            trace_id: span.trace_id.clone(),
            id: span.id.clone(),
            field,
            message,
        };
        self.trace_id = match normalize_trace_id(&self.trace_id) {
            Ok(id) => id,
            Err(message) => return Err(error(&self, "traceId", message)),
        };
        self.id = match normalize_span_id(&self.id) {
            Ok(id) => id,
            Err(message) => return Err(error(&self, "id", message)),
        };
        // An empty parentId is none (micromesh's sidecars never send one,
        // but hand-written reporters do); Zipkin refuses it, we are lenient.
        self.parent_id = match self.parent_id.take().filter(|p| !p.is_empty()) {
            None => None,
            Some(parent) => match normalize_parent_id(&parent) {
                Ok(parent) => parent,
                Err(message) => return Err(error(&self, "parentId", message)),
            },
        };
        if self.parent_id.as_deref() == Some(self.id.as_str()) {
            return Err(error(
                &self,
                "parentId",
                "equals the span's own id: a span cannot be its own parent (Zipkin's B3 shares \
                 ids between a client and its server span; micromesh gives each span its own)"
                    .into(),
            ));
        }
        for endpoint in [&mut self.local_endpoint, &mut self.remote_endpoint]
            .into_iter()
            .flatten()
        {
            if let Some(name) = &mut endpoint.service_name {
                *name = name.to_lowercase();
            }
            // Zipkin drops an address it cannot parse, and a port of 0,
            // rather than refusing the span; the API promises readers
            // well-formed addresses.
            endpoint.ipv4 = endpoint
                .ipv4
                .take()
                .filter(|ip| ip.parse::<std::net::Ipv4Addr>().is_ok());
            endpoint.ipv6 = endpoint
                .ipv6
                .take()
                .filter(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok());
            endpoint.port = endpoint.port.filter(|p| *p > 0);
            endpoint.service_name = endpoint.service_name.take().filter(|n| !n.is_empty());
        }
        if let Some(name) = &mut self.name {
            *name = name.to_lowercase();
        }
        // Zipkin keeps annotations sorted by time, each one once: the API
        // promises readers unique items.
        self.annotations
            .sort_by(|a, b| (a.timestamp, &a.value).cmp(&(b.timestamp, &b.value)));
        self.annotations.dedup();
        Ok(self)
    }
}

/// Zipkin accepts 1 to 32 hex characters: up to 16 means a 64-bit id, more
/// a 128-bit one; either is left-padded to its full width, and a 128-bit id
/// whose upper half is zero becomes its 64-bit form.
pub fn normalize_trace_id(id: &str) -> Result<String, String> {
    check_hex(id, 32)?;
    if all_zeros(id) {
        return Err("is all zeros, which W3C and B3 reserve for \"no trace\"".into());
    }
    let width = if id.len() <= 16 { 16 } else { 32 };
    let id = pad(id, width);
    match id.split_at(16) {
        (high, low) if width == 32 && all_zeros(high) => Ok(low.to_string()),
        _ => Ok(id),
    }
}

fn normalize_span_id(id: &str) -> Result<String, String> {
    check_hex(id, 16)?;
    if all_zeros(id) {
        return Err("is all zeros, which W3C and B3 reserve for \"no span\"".into());
    }
    Ok(pad(id, 16))
}

/// A parent id of all zeros is how some tracers write "root span".
fn normalize_parent_id(id: &str) -> Result<Option<String>, String> {
    check_hex(id, 16)?;
    Ok((!all_zeros(id)).then(|| pad(id, 16)))
}

fn all_zeros(id: &str) -> bool {
    id.bytes().all(|b| b == b'0')
}

fn check_hex(id: &str, max: usize) -> Result<(), String> {
    if id.is_empty() {
        return Err("is missing or empty".into());
    }
    if id.len() > max {
        return Err(format!(
            "{:?} has {} characters, at most {max} hex characters are allowed",
            id,
            id.len()
        ));
    }
    if !id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(format!(
            "{id:?} is not lowercase hexadecimal (Zipkin's ids are lower-hex with no prefix, \
             e.g. 4bf92f3577b34da6)"
        ));
    }
    Ok(())
}

fn pad(id: &str, width: usize) -> String {
    format!("{id:0>width$}")
}

/// Zipkin's builder keeps a timestamp or duration only when it is above
/// zero: `0` and negatives mean "not known", never an error.
fn positive_or_absent<'de, D>(deserializer: D) -> Result<Option<u64>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let value: Option<i64> = Option::deserialize(deserializer)?;
    Ok(value.filter(|v| *v > 0).map(|v| v as u64))
}

/// Tag values are strings in Zipkin's model, but its JSON reader also takes
/// a number (`"http.status_code": 200`), keeping the number's text; so do we,
/// and booleans too. `null` or an object is refused.
fn tag_values_as_text<'de, D>(deserializer: D) -> Result<BTreeMap<String, String>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    use serde::de::Error;
    let raw: BTreeMap<String, serde_json::Value> = BTreeMap::deserialize(deserializer)?;
    raw.into_iter()
        .map(|(key, value)| match value {
            serde_json::Value::String(text) => Ok((key, text)),
            serde_json::Value::Number(n) => Ok((key, n.to_string())),
            serde_json::Value::Bool(b) => Ok((key, b.to_string())),
            other => Err(D::Error::custom(format!(
                "tag {key:?} has value {other}; a tag value is a string (or a number)"
            ))),
        })
        .collect()
}

/// Parse a posted body: a JSON array of spans, each checked and
/// normalised. All or nothing: the first bad span rejects the batch, with
/// its position and field, so the reporter's log says what to fix.
pub fn parse_batch(body: &[u8]) -> Result<Vec<Span>, String> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let spans: Vec<Span> = serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            format!("expected a JSON array of Zipkin v2 spans: {inner}")
        } else {
            format!("at {path}: {inner} (the body must be a JSON array of Zipkin v2 spans)")
        }
    })?;
    spans
        .into_iter()
        .enumerate()
        .map(|(index, span)| span.normalize(index).map_err(|e| e.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sidecar_span_parses_with_its_tags() {
        let body = br#"[{
            "traceId": "4bf92f3577b34da6a3ce929d0e0e4736", "id": "00f067aa0ba902b7",
            "parentId": "a2fb4a1d1a96d312", "kind": "CLIENT",
            "name": "helloworld-service:8080/hello/ray",
            "timestamp": 1718000000123456, "duration": 3210,
            "localEndpoint": {"serviceName": "Guestbook-UI", "ipv4": "127.0.0.1"},
            "remoteEndpoint": {"serviceName": "helloworld-service", "port": 40123},
            "tags": {"http.status_code": "503", "instance": "guestbook-ui-v1-1a2b3"}
        }]"#;
        let spans = parse_batch(body).unwrap();
        let span = &spans[0];
        assert_eq!(span.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(span.kind, Some(Kind::Client));
        assert_eq!(span.service(), Some("guestbook-ui"));
        assert_eq!(span.remote_service(), Some("helloworld-service"));
        assert_eq!(span.instance(), Some("guestbook-ui-v1-1a2b3"));
        assert_eq!(span.interval(), Some((1718000000123456, 1718000000126666)));
        assert!(span.is_error());
    }

    #[test]
    fn short_ids_are_padded_like_zipkin_does() {
        let spans = parse_batch(br#"[{"traceId": "abc", "id": "1", "parentId": ""}]"#).unwrap();
        assert_eq!(spans[0].trace_id, "0000000000000abc");
        assert_eq!(spans[0].id, "0000000000000001");
        assert_eq!(spans[0].parent_id, None);
        let long = parse_batch(br#"[{"traceId": "1234567890abcdef1", "id": "2"}]"#).unwrap();
        assert_eq!(long[0].trace_id, "0000000000000001234567890abcdef1");
    }

    #[test]
    fn zipkins_id_rules() {
        // A 128-bit id with a zero upper half is its 64-bit form.
        let spans = parse_batch(br#"[{"traceId": "0000000000000000a3ce929d0e0e4736", "id": "1"}]"#)
            .unwrap();
        assert_eq!(spans[0].trace_id, "a3ce929d0e0e4736");
        // An all-zero parent is a root; an all-zero trace id is refused.
        let spans =
            parse_batch(br#"[{"traceId": "a", "id": "1", "parentId": "0000000000000000"}]"#)
                .unwrap();
        assert_eq!(spans[0].parent_id, None);
        let e = parse_batch(br#"[{"traceId": "00000000000000000000000000000000", "id": "1"}]"#)
            .unwrap_err();
        assert!(e.contains("traceId") && e.contains("all zeros"), "{e}");
        // Uppercase hex is refused, as Zipkin refuses it.
        let e = parse_batch(br#"[{"traceId": "a", "id": "00F067AA0BA902B7"}]"#).unwrap_err();
        assert!(e.contains("lowercase"), "{e}");
    }

    #[test]
    fn non_positive_times_are_absent_and_numeric_tags_are_text() {
        let body = br#"[{"traceId": "a", "id": "1", "timestamp": -5, "duration": 0,
            "tags": {"http.status_code": 200, "retry": true, "ratio": 0.5}}]"#;
        let span = &parse_batch(body).unwrap()[0];
        assert_eq!((span.timestamp, span.duration), (None, None));
        assert_eq!(span.tag("http.status_code"), Some("200"));
        assert_eq!(span.tag("retry"), Some("true"));
        assert_eq!(span.tag("ratio"), Some("0.5"));
        let twice = br#"[{"traceId": "a", "id": "1", "annotations": [
            {"timestamp": 2, "value": "retry"}, {"timestamp": 1, "value": "sent"},
            {"timestamp": 2, "value": "retry"}]}]"#;
        let values: Vec<_> = parse_batch(twice).unwrap()[0]
            .annotations
            .iter()
            .map(|a| (a.timestamp, a.value.clone()))
            .collect();
        assert_eq!(values, [(1, "sent".into()), (2, "retry".into())]);
        let e = parse_batch(br#"[{"traceId": "a", "id": "1", "tags": {"k": null}}]"#).unwrap_err();
        assert!(e.contains("tags") && e.contains("\"k\""), "{e}");
    }

    #[test]
    fn bad_spans_are_refused_with_their_position_and_field() {
        let e = parse_batch(br#"[{"traceId": "a", "id": "1"}, {"traceId": "xyz", "id": "1"}]"#)
            .unwrap_err();
        assert!(
            e.contains("span 1") && e.contains("traceId") && e.contains("not lowercase hex"),
            "{e}"
        );
        let e = parse_batch(br#"[{"traceId": "a", "id": "0000"}]"#).unwrap_err();
        assert!(e.contains("all zeros"), "{e}");
        let e = parse_batch(br#"[{"traceId": "a", "id": "1", "parentId": "1"}]"#).unwrap_err();
        assert!(e.contains("its own parent"), "{e}");
        let e = parse_batch(br#"{"traceId": "a"}"#).unwrap_err();
        assert!(e.contains("JSON array"), "{e}");
        let e = parse_batch(br#"[{"traceId": "a", "id": "1", "kind": "SIDEWAYS"}]"#).unwrap_err();
        assert!(e.contains("[0].kind"), "{e}");
        let e = parse_batch(br#"[{"traceId": "a", "id": "12345678901234567"}]"#).unwrap_err();
        assert!(e.contains("at most 16"), "{e}");
    }
}

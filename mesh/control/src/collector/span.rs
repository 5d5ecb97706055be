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
//! Like Zipkin, we *normalise* ids rather than reject them: hex is
//! lowercased, and a short id is left-padded with zeros. A 64-bit trace id
//! stays 64-bit (16 hex): Zipkin compares trace ids as strings.

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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<u64>,
    /// In microseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_endpoint: Option<Endpoint>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_endpoint: Option<Endpoint>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub annotations: Vec<Annotation>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
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
    /// lowercased and padded, service names lowercased (Zipkin does both),
    /// an empty `parentId` taken as none.
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
        self.parent_id = match self.parent_id.take().filter(|p| !p.is_empty()) {
            None => None,
            Some(parent) => match normalize_span_id(&parent) {
                Ok(parent) => Some(parent),
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
        if self.timestamp == Some(0) {
            self.timestamp = None;
        }
        for endpoint in [&mut self.local_endpoint, &mut self.remote_endpoint]
            .into_iter()
            .flatten()
        {
            if let Some(name) = &mut endpoint.service_name {
                *name = name.to_lowercase();
            }
        }
        if let Some(name) = &mut self.name {
            *name = name.to_lowercase();
        }
        Ok(self)
    }
}

/// Zipkin accepts 1 to 32 hex characters: up to 16 means a 64-bit id, more
/// a 128-bit one; either is left-padded to its full width.
fn normalize_trace_id(id: &str) -> Result<String, String> {
    check_hex(id, 32)?;
    let width = if id.len() <= 16 { 16 } else { 32 };
    Ok(pad(id, width))
}

fn normalize_span_id(id: &str) -> Result<String, String> {
    check_hex(id, 16)?;
    let id = pad(id, 16);
    if id.bytes().all(|b| b == b'0') {
        return Err("is all zeros, which W3C and B3 reserve for \"no span\"".into());
    }
    Ok(id)
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
    if !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("{id:?} is not hexadecimal"));
    }
    Ok(())
}

fn pad(id: &str, width: usize) -> String {
    format!("{:0>width$}", id.to_ascii_lowercase())
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
            "traceId": "4BF92F3577B34DA6A3CE929D0E0E4736", "id": "00f067aa0ba902b7",
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
    fn bad_spans_are_refused_with_their_position_and_field() {
        let e = parse_batch(br#"[{"traceId": "a", "id": "1"}, {"traceId": "xyz", "id": "1"}]"#)
            .unwrap_err();
        assert!(
            e.contains("span 1") && e.contains("traceId") && e.contains("not hex"),
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

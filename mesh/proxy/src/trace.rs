//! Tracing: continue or start a trace on every request, propagate it, and
//! describe this proxy's part of it as a span (Zipkin v2).
//!
//! A trace is a tree of spans, one per hop and side, that share a trace id.
//! A proxy learns where it is in the tree from the request's headers; it
//! reads, in this order, the first that parses:
//!
//! ```text
//! traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01   (W3C)
//! x-b3-traceid: 4bf9...  x-b3-spanid: 00f0...  x-b3-sampled: 1         (B3 multi)
//! b3: 4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1                (B3 single)
//! ```
//!
//! The span id found there is the *parent* of the span this proxy opens: as
//! in Envoy with `shared_span_context: false`, every span has its own id, so
//! a SERVER span's parent is the caller's CLIENT span. The proxy then writes
//! **all** the formats (W3C and B3 multi) on the request it sends on, naming
//! its own span as the parent: whichever format the next hop (or the app's
//! tracing library) reads, it continues the same tree. A malformed header
//! is ignored, never an error: the request goes on with a new trace.
//!
//! Whether a trace is recorded (sampled) is decided once, at its root, with
//! `MESH_TRACE_SAMPLING` percent, and travels in the sampled flag; an
//! unsampled request records no span but still carries the headers, so the
//! decision holds all along the chain. Istio samples 1% by default; the
//! workshop samples everything.
//!
//! Apps must copy these headers from the request they received to the
//! requests they make: a proxy cannot tell which outgoing call belongs to
//! which incoming one. An app that does not gets a new, separate trace for
//! its calls, and the control plane's broken-chain analysis reports it.
//!
//! A span over a mutual-TLS hop also says who was at each end, as the
//! certificates proved it: tags `source.principal` and
//! `destination.principal`, the SPIFFE IDs (Envoy has no such tag; the names
//! are Istio's Mixer attributes, see `write_tags`).
//!
//! Every request pays for this file, so parts of it are written for speed
//! (callgrind, README's benchmark): the headers' values are slices of one
//! buffer (`inject`), ids and numbers are written as bytes without a
//! formatter, the span's JSON by hand, with this proxy's own fields
//! rendered once (`LocalService::new`).

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};

use crate::log::ResponseFlags;
use crate::rng::Rng;

pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
pub const B3_TRACE_ID: HeaderName = HeaderName::from_static("x-b3-traceid");
pub const B3_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-spanid");
pub const B3_PARENT_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
pub const B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
pub const B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");
pub const B3_SINGLE: HeaderName = HeaderName::from_static("b3");

// === ids ===

/// A trace id: 128 bits, or 64 when it came that way from outside.
///
/// As Zipkin does, a 128-bit id whose upper half is zero *is* the 64-bit id:
/// a 64-bit B3 id travels in `traceparent` left-padded with zeros and comes
/// back out as the same 16 hex digits, so every span of the trace carries the
/// same `traceId` string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TraceId {
    high: u64,
    low: u64,
}

impl TraceId {
    /// A new 128-bit id (its upper half is never zero, so it stays 128-bit).
    pub fn random() -> Self {
        TraceId {
            high: fastrand::u64(1..),
            low: fastrand::u64(..),
        }
    }

    /// 32 hex digits, as `traceparent` needs them.
    pub fn to_w3c(self) -> String {
        format!("{:016x}{:016x}", self.high, self.low)
    }

    /// 16 or 32 hex digits, either case; `None` for anything else or zero.
    pub fn parse(text: &str) -> Option<TraceId> {
        let id = match text.len() {
            16 => TraceId {
                high: 0,
                low: parse_hex64(text)?,
            },
            32 => TraceId {
                high: parse_hex64(&text[..16])?,
                low: parse_hex64(&text[16..])?,
            },
            _ => return None,
        };
        (id.high != 0 || id.low != 0).then_some(id)
    }
}

impl TraceId {
    /// The id as lowercase hex into `out` (32 bytes): the digits written,
    /// 16 for a 64-bit id, 32 for a 128-bit one.
    fn hex<'a>(&self, out: &'a mut [u8; 32]) -> &'a [u8] {
        if self.high == 0 {
            hex64(self.low, &mut out[..16])
        } else {
            hex64(self.high, &mut out[..16]);
            hex64(self.low, &mut out[16..]);
            out
        }
    }
}

impl fmt::Display for TraceId {
    /// 16 lowercase hex digits for a 64-bit id, 32 for a 128-bit one.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(std::str::from_utf8(self.hex(&mut [0; 32])).expect("hex digits are ASCII"))
    }
}

/// A span id: 64 bits, never zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SpanId(u64);

impl SpanId {
    pub fn random() -> Self {
        SpanId(fastrand::u64(1..))
    }

    /// Exactly 16 hex digits, either case, not all zero.
    pub fn parse(text: &str) -> Option<SpanId> {
        parse_hex64(text).filter(|&id| id != 0).map(SpanId)
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(std::str::from_utf8(hex64(self.0, &mut [0; 16])).expect("hex digits are ASCII"))
    }
}

/// `n` as 16 lowercase hex digits into `out` (16 bytes). Every request
/// writes five ids into its headers and three into its span: done by hand,
/// it costs a few instructions per digit, where `format!("{:016x}")` costs
/// a formatter and an allocation each. Bytes, not `&str`: the JSON and the
/// headers want bytes, and `str::from_utf8` would check every digit again.
fn hex64(n: u64, out: &mut [u8]) -> &[u8] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (pair, byte) in out[..16].chunks_exact_mut(2).zip(n.to_be_bytes()) {
        pair[0] = HEX[usize::from(byte >> 4)];
        pair[1] = HEX[usize::from(byte & 0xf)];
    }
    &out[..16]
}

/// 16 hex digits and nothing else (`from_str_radix` alone would also take a
/// leading `+`).
fn parse_hex64(text: &str) -> Option<u64> {
    if text.len() == 16 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        u64::from_str_radix(text, 16).ok()
    } else {
        None
    }
}

// === reading the headers ===

/// What an incoming request says about its trace.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Incoming {
    /// The trace and the caller's span, if the request carried them.
    pub parent: Option<(TraceId, SpanId)>,
    /// The root's sampling decision, if it travelled with the request.
    pub sampled: Option<bool>,
    /// B3's debug flag: record whatever the sampling rate.
    pub debug: bool,
}

impl Incoming {
    /// The first of W3C, B3 multi and B3 single that parses; nothing found
    /// (or only malformed headers) is a request without trace context.
    pub fn from_headers(headers: &HeaderMap) -> Incoming {
        if !carries_trace_headers(headers) {
            return Incoming::default();
        }
        let text = |name: HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
        text(TRACEPARENT)
            .and_then(parse_traceparent)
            .or_else(|| parse_b3_multi(&text))
            .or_else(|| text(B3_SINGLE).and_then(parse_b3_single))
            .unwrap_or_default()
    }
}

/// Whether `headers` has any trace header at all, in one pass over its
/// names. A request without trace context (the root of every trace) is
/// then read and written without a lookup or removal per header name, each
/// of which hashes the name: nine per request, about 1k instructions.
fn carries_trace_headers(headers: &HeaderMap) -> bool {
    headers.keys().any(|name| {
        let name = name.as_str();
        name == "traceparent" || name == "b3" || name.starts_with("x-b3-")
    })
}

/// `00-{32 hex trace}-{16 hex parent}-{2 hex flags}` (W3C Trace Context).
pub fn parse_traceparent(value: &str) -> Option<Incoming> {
    let mut fields = value.trim().split('-');
    let (version, trace, parent, flags) = (
        fields.next()?,
        fields.next()?,
        fields.next()?,
        fields.next()?,
    );
    // Version 00 has exactly four fields; a later version may append more,
    // and "ff" is forbidden. W3C ids are lowercase.
    let lower_hex = |s: &str, len: usize| {
        s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    if !lower_hex(version, 2) || version == "ff" || (version == "00" && fields.next().is_some()) {
        return None;
    }
    if !lower_hex(trace, 32) || !lower_hex(parent, 16) || !lower_hex(flags, 2) {
        return None;
    }
    let trace = TraceId::parse(trace)?;
    let parent = SpanId::parse(parent)?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some(Incoming {
        parent: Some((trace, parent)),
        sampled: Some(flags & 1 == 1),
        debug: false,
    })
}

/// `x-b3-traceid`, `x-b3-spanid`, `x-b3-sampled`, `x-b3-flags`.
fn parse_b3_multi<'a>(text: &impl Fn(HeaderName) -> Option<&'a str>) -> Option<Incoming> {
    let sampled = text(B3_SAMPLED).and_then(|s| match s.trim() {
        "1" | "true" => Some(true),
        "0" | "false" => Some(false),
        _ => None,
    });
    let debug = text(B3_FLAGS).is_some_and(|f| f.trim() == "1");
    let parent = match (text(B3_TRACE_ID), text(B3_SPAN_ID)) {
        (Some(trace), Some(span)) => {
            Some((TraceId::parse(trace.trim())?, SpanId::parse(span.trim())?))
        }
        // A trace id without a span id (or the reverse) is malformed.
        (Some(_), None) | (None, Some(_)) => return None,
        (None, None) => None,
    };
    if parent.is_none() && sampled.is_none() && !debug {
        return None;
    }
    Some(Incoming {
        parent,
        sampled,
        debug,
    })
}

/// `b3: {trace}-{span}[-{sampled}[-{parent}]]`, or only a decision: `0`,
/// `1` or `d` (debug).
pub fn parse_b3_single(value: &str) -> Option<Incoming> {
    let decision = |s: &str| match s {
        "0" => Some((false, false)),
        "1" => Some((true, false)),
        "d" => Some((true, true)),
        _ => None,
    };
    let value = value.trim();
    if let Some((sampled, debug)) = decision(value) {
        return Some(Incoming {
            parent: None,
            sampled: Some(sampled),
            debug,
        });
    }
    let mut fields = value.split('-');
    let trace = TraceId::parse(fields.next()?)?;
    let span = SpanId::parse(fields.next()?)?;
    let (sampled, debug) = match fields.next() {
        Some(s) => {
            let (sampled, debug) = decision(s)?;
            (Some(sampled), debug)
        }
        None => (None, false),
    };
    if let Some(parent) = fields.next() {
        SpanId::parse(parent)?;
    }
    if fields.next().is_some() {
        return None;
    }
    Some(Incoming {
        parent: Some((trace, span)),
        sampled,
        debug,
    })
}

// === the span this proxy opens ===

/// This proxy's span of a request: where it sits in the trace, and whether
/// it is recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpanContext {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    /// The caller's span; `None` at the root of a trace.
    pub parent_id: Option<SpanId>,
    pub sampled: bool,
    pub debug: bool,
}

impl SpanContext {
    /// Open a span for a request carrying `incoming`: a child of the
    /// caller's span, or the root of a new trace. The sampling decision is
    /// the one that came with the request, else drawn with `percent`.
    pub fn open(incoming: Incoming, percent: f64, rng: &Rng) -> SpanContext {
        let sampled = incoming.debug || incoming.sampled.unwrap_or_else(|| rng.chance(percent));
        let (trace_id, parent_id) = match incoming.parent {
            Some((trace, parent)) => (trace, Some(parent)),
            None => (TraceId::random(), None),
        };
        SpanContext {
            trace_id,
            span_id: SpanId::random(),
            parent_id,
            sampled,
            debug: incoming.debug,
        }
    }

    /// Write this span as the parent of the request being sent on, in every
    /// format. `tracestate` (vendor data) passes through untouched; a `b3`
    /// single header is removed, since it would name the previous span.
    ///
    /// Every id is written once, into one buffer, and each header's value
    /// is a slice of it: `traceparent` already holds the trace id and the
    /// span id in hex, so `x-b3-traceid` and `x-b3-spanid` are its middle,
    /// and the parent's id follows it. That buffer is one allocation
    /// (`Bytes::from_owner`: the counter and the bytes in one box), shared by
    /// every header and by the retry layer's copy of the request; a
    /// `HeaderValue` per header would copy each value into its own buffer,
    /// and the copy of the request would then allocate again for each to
    /// share it (eight allocations per request, instead of one).
    pub fn inject(&self, headers: &mut HeaderMap) {
        // Headers to remove can only be there if some trace header is.
        let carried = carries_trace_headers(headers);
        // `00-{32 hex trace}-{16 hex span}-{flags}`, then the parent span.
        let mut ids = *b"00-00000000000000000000000000000000-0000000000000000-000000000000000000";
        hex64(self.trace_id.high, &mut ids[3..19]);
        hex64(self.trace_id.low, &mut ids[19..35]);
        hex64(self.span_id.0, &mut ids[36..52]);
        if self.sampled {
            ids[54] = b'1';
        }
        if let Some(parent) = self.parent_id {
            hex64(parent.0, &mut ids[55..71]);
        }
        let ids = Bytes::from_owner(ids);
        let value = |range: std::ops::Range<usize>| {
            HeaderValue::from_maybe_shared(ids.slice(range))
                .expect("hex digits are a valid header value")
        };
        headers.insert(TRACEPARENT, value(0..55));
        // B3 multi: the same ids, the trace id as long as it came (a
        // 64-bit id is the lower half, the last 16 digits).
        let trace_start = if self.trace_id.high == 0 { 19 } else { 3 };
        headers.insert(B3_TRACE_ID, value(trace_start..35));
        headers.insert(B3_SPAN_ID, value(36..52));
        match self.parent_id {
            Some(_) => {
                headers.insert(B3_PARENT_SPAN_ID, value(55..71));
            }
            None if carried => {
                headers.remove(B3_PARENT_SPAN_ID);
            }
            None => {}
        }
        headers.insert(
            B3_SAMPLED,
            HeaderValue::from_static(if self.sampled { "1" } else { "0" }),
        );
        if self.debug {
            headers.insert(B3_FLAGS, HeaderValue::from_static("1"));
        } else if carried {
            headers.remove(B3_FLAGS);
        }
        if carried {
            headers.remove(B3_SINGLE);
        }
    }
}

// === the span, as Zipkin v2 JSON ===

/// Zipkin's span kinds; a proxy records only these two.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The side that received the request (inbound).
    Server,
    /// The side that sent it (outbound, gateway).
    Client,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Server => "SERVER",
            Kind::Client => "CLIENT",
        }
    }
}

/// Who this proxy is, the same for every span it records.
///
/// Every span's JSON repeats the same `localEndpoint` and first four tags:
/// they are written once, here, and each span copies the bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalService {
    /// The workload, lowercase (`localEndpoint.serviceName`,
    /// `istio.canonical_service`).
    pub service: Arc<str>,
    pub version: Arc<str>,
    pub instance: Arc<str>,
    pub ip: Option<std::net::IpAddr>,
    /// `{"serviceName":...,"ipv4":...}`.
    endpoint_json: Box<[u8]>,
    /// `{"istio.canonical_service":...,...,"component":"proxy"`: the tags
    /// object, opened, with this proxy's own tags.
    tags_json: Box<[u8]>,
}

impl LocalService {
    /// `service` is lowercased, as Zipkin and Istio's canonical names are.
    pub fn new(service: &str, version: &str, instance: &str, ip: Option<std::net::IpAddr>) -> Self {
        let service: Arc<str> = service.to_ascii_lowercase().into();
        let mut endpoint_json = Vec::new();
        json_endpoint(&mut endpoint_json, Some(&service), ip, None);
        let mut tags_json = vec![b'{'];
        json_tag(
            &mut tags_json,
            "istio.canonical_service",
            &[service.as_bytes()],
        );
        json_tag(
            &mut tags_json,
            "istio.canonical_revision",
            &[version.as_bytes()],
        );
        json_tag(&mut tags_json, "instance", &[instance.as_bytes()]);
        json_tag(&mut tags_json, "component", &[b"proxy"]);
        LocalService {
            service,
            version: version.into(),
            instance: instance.into(),
            ip,
            endpoint_json: endpoint_json.into(),
            tags_json: tags_json.into(),
        }
    }
}

/// The other end of the span: the endpoint reached (CLIENT) or the caller
/// (SERVER).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Remote {
    pub service: Option<Arc<str>>,
    pub address: Option<SocketAddr>,
}

/// One finished span. Strings are kept as the request gave them and turned
/// into Zipkin's fields (name, url, tags) only when the reporter serialises
/// the batch, off the request path.
#[derive(Clone, Debug, PartialEq)]
pub struct Span {
    pub context: SpanContext,
    pub kind: Kind,
    pub local: Arc<LocalService>,
    pub remote: Option<Remote>,
    /// Start, microseconds since the Unix epoch.
    pub timestamp_us: u64,
    /// Microseconds, at least 1.
    pub duration_us: u64,
    pub method: http::Method,
    pub authority: String,
    pub path_and_query: String,
    pub status: u16,
    pub flags: ResponseFlags,
    /// `outbound|8080|v2|helloworld-service`, `inbound|8080||helloworld-service`.
    pub upstream_cluster: UpstreamCluster,
    /// CLIENT: the endpoint `ip:port` the (last) attempt went to.
    pub upstream_address: Option<Arc<str>>,
    /// Who connected to this proxy's listener.
    pub peer: Option<SocketAddr>,
    pub request_id: String,
    pub user_agent: Option<String>,
    pub retries: u32,
    pub request_size: u64,
    pub response_size: u64,
    /// The SPIFFE IDs of the hop's two ends, `(source, destination)`, as
    /// its mutual TLS proved them; `None` over plain text. The tags
    /// `source.principal` and `destination.principal` (see `write_tags`).
    pub principals: Option<(Arc<str>, Arc<str>)>,
}

/// The Envoy cluster a span's request went to, kept as its parts: the name
/// is written only when the reporter serialises the span, so the request
/// path formats (and allocates) nothing for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UpstreamCluster {
    /// `inbound|{port}||{service}`: the app behind an inbound sidecar.
    Inbound { port: u16, service: Arc<str> },
    /// `outbound|{port}|{subset}|{service}`, the subset empty when none.
    Outbound {
        port: u16,
        subset: Option<Arc<str>>,
        service: Arc<str>,
    },
    /// No route, so no cluster: `-`, as Envoy prints it.
    None,
}

impl UpstreamCluster {
    /// The name's parts, for `json_str_parts`; `port` holds the digits.
    fn parts<'a>(&'a self, port: &'a mut [u8; 20]) -> [&'a [u8]; 6] {
        match self {
            UpstreamCluster::Inbound { port: p, service } => [
                b"inbound|",
                decimal(u64::from(*p), port),
                b"||",
                service.as_bytes(),
                b"",
                b"",
            ],
            UpstreamCluster::Outbound {
                port: p,
                subset,
                service,
            } => [
                b"outbound|",
                decimal(u64::from(*p), port),
                b"|",
                subset.as_deref().unwrap_or("").as_bytes(),
                b"|",
                service.as_bytes(),
            ],
            UpstreamCluster::None => [b"-", b"", b"", b"", b"", b""],
        }
    }
}

impl Span {
    /// `{authority}{path}`, lowercase, as Zipkin stores names.
    pub fn name(&self) -> String {
        format!("{}{}", self.authority, self.path()).to_ascii_lowercase()
    }

    /// The path without the query.
    pub fn path(&self) -> &str {
        match self.path_and_query.split_once('?') {
            Some((path, _)) => path,
            None => &self.path_and_query,
        }
    }
}

// === Zipkin v2 JSON, written by hand ===
//
// The reporter turns every recorded span into about 900 bytes of JSON. With
// serde's generic map serializer that cost more than the whole request
// through the proxy (callgrind: ~20k instructions per span, each tag value
// first formatted into its own String, every byte run through the escaper).
// Here the ids, numbers and fixed names are written straight into the
// batch's buffer, and only text that came from a request (authority, path,
// request id, user agent) is escaped, with a fast path for the usual case of
// nothing to escape.

impl Span {
    /// This span as one Zipkin v2 JSON object, appended to `out`:
    /// <https://zipkin.io/zipkin-api/#/default/post_spans>.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        let mut hex = [0u8; 32];
        out.extend_from_slice(b"{\"traceId\":\"");
        out.extend_from_slice(self.context.trace_id.hex(&mut hex));
        out.extend_from_slice(b"\",\"id\":\"");
        out.extend_from_slice(hex64(self.context.span_id.0, &mut hex));
        if let Some(parent) = self.context.parent_id {
            out.extend_from_slice(b"\",\"parentId\":\"");
            out.extend_from_slice(hex64(parent.0, &mut hex));
        }
        out.extend_from_slice(b"\",\"kind\":\"");
        out.extend_from_slice(self.kind.as_str().as_bytes());
        // `{authority}{path}`, lowercase, as Zipkin stores names.
        out.extend_from_slice(b"\",\"name\":");
        let name_at = out.len();
        json_str_parts(out, &[self.authority.as_bytes(), self.path().as_bytes()]);
        out[name_at..].make_ascii_lowercase();
        out.extend_from_slice(b",\"timestamp\":");
        json_u64(out, self.timestamp_us);
        out.extend_from_slice(b",\"duration\":");
        json_u64(out, self.duration_us.max(1));
        if self.context.debug {
            out.extend_from_slice(b",\"debug\":true");
        }
        out.extend_from_slice(b",\"localEndpoint\":");
        out.extend_from_slice(&self.local.endpoint_json);
        if let Some(remote) = &self.remote {
            out.extend_from_slice(b",\"remoteEndpoint\":");
            json_endpoint(
                out,
                remote.service.as_deref(),
                remote.address.map(|a| a.ip()),
                remote.address.map(|a| a.port()),
            );
        }
        out.extend_from_slice(b",\"tags\":");
        self.write_tags(out);
        out.push(b'}');
    }

    /// The `tags` object: every value a string, as Zipkin requires.
    fn write_tags(&self, out: &mut Vec<u8>) {
        let tag = json_tag;
        let mut number = [0u8; 20];
        // `{` and this proxy's own tags, written once (`LocalService::new`).
        out.extend_from_slice(&self.local.tags_json);
        tag(out, "guid:x-request-id", &[self.request_id.as_bytes()]);
        tag(out, "http.method", &[self.method.as_str().as_bytes()]);
        tag(
            out,
            "http.url",
            &[
                b"http://",
                self.authority.as_bytes(),
                self.path_and_query.as_bytes(),
            ],
        );
        tag(out, "http.path", &[self.path().as_bytes()]);
        tag(
            out,
            "http.status_code",
            &[decimal(u64::from(self.status), &mut number)],
        );
        // Flag names are letters and commas: nothing to escape.
        out.extend_from_slice(b",\"response_flags\":\"");
        {
            use std::io::Write;
            let _ = write!(out, "{}\"", self.flags);
        }
        tag(
            out,
            "upstream_cluster",
            &self.upstream_cluster.parts(&mut number),
        );
        if let Some(address) = &self.upstream_address {
            tag(out, "upstream_address", &[address.as_bytes()]);
        }
        if let Some(peer) = self.peer {
            // An address is digits, dots, colons and brackets: nothing to escape.
            out.extend_from_slice(b",\"peer.address\":\"");
            match peer {
                SocketAddr::V4(v4) => {
                    write_ipv4(out, *v4.ip());
                    out.push(b':');
                    json_u64(out, u64::from(v4.port()));
                }
                SocketAddr::V6(v6) => {
                    use std::io::Write;
                    let _ = write!(out, "{v6}");
                }
            }
            out.push(b'"');
        }
        // Envoy's spans carry no identity tag. Istio's Mixer, in the talk's
        // days, named these facts `source.principal` and
        // `destination.principal` (its attribute vocabulary; its tracespan
        // template tagged spans with `source.principal`), and
        // AuthorizationPolicy's `when` still reads `source.principal`: so
        // these names, with the SPIFFE ID as `source_principal` and
        // `destination_principal` label the metrics. On a SERVER span the
        // source is the caller, on a CLIENT span this proxy. A plain-text
        // hop proved no identity, and its span has neither tag.
        if let Some((source, destination)) = &self.principals {
            tag(out, "source.principal", &[source.as_bytes()]);
            tag(out, "destination.principal", &[destination.as_bytes()]);
        }
        if self.retries > 0 {
            tag(
                out,
                "retry.count",
                &[decimal(u64::from(self.retries), &mut number)],
            );
        }
        tag(
            out,
            "request_size",
            &[decimal(self.request_size, &mut number)],
        );
        tag(
            out,
            "response_size",
            &[decimal(self.response_size, &mut number)],
        );
        if let Some(agent) = &self.user_agent {
            tag(out, "user_agent", &[agent.as_bytes()]);
        }
        if self.status == 0 || self.status >= 500 {
            tag(out, "error", &[b"true"]);
        }
        out.push(b'}');
    }
}

/// `"key":"parts"` of a tags object, after a comma unless it is the first.
fn json_tag(out: &mut Vec<u8>, key: &str, parts: &[&[u8]]) {
    if out.last() != Some(&b'{') {
        out.push(b',');
    }
    out.push(b'"');
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\":");
    json_str_parts(out, parts);
}

/// A batch of spans as the JSON array Zipkin's `POST /api/v2/spans` takes.
pub fn spans_json(spans: &[Span]) -> Vec<u8> {
    let mut out = Vec::with_capacity(spans.len() * 1024 + 2);
    out.push(b'[');
    for (i, span) in spans.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        span.write_json(&mut out);
    }
    out.push(b']');
    out
}

/// An endpoint object: `{"serviceName": ..., "ipv4": ..., "port": ...}`.
fn json_endpoint(
    out: &mut Vec<u8>,
    service: Option<&str>,
    ip: Option<std::net::IpAddr>,
    port: Option<u16>,
) {
    use std::io::Write;
    let mut first = true;
    let mut key = |out: &mut Vec<u8>, name: &[u8]| {
        out.extend_from_slice(if first { b"{\"" } else { b",\"" });
        first = false;
        out.extend_from_slice(name);
        out.extend_from_slice(b"\":");
    };
    if let Some(service) = service {
        key(out, b"serviceName");
        let at = out.len();
        json_str_parts(out, &[service.as_bytes()]);
        out[at..].make_ascii_lowercase();
    }
    // Writing into a Vec cannot fail.
    match ip {
        Some(std::net::IpAddr::V4(ip)) => {
            key(out, b"ipv4");
            out.push(b'"');
            write_ipv4(out, ip);
            out.push(b'"');
        }
        Some(std::net::IpAddr::V6(ip)) => {
            key(out, b"ipv6");
            let _ = write!(out, "\"{ip}\"");
        }
        None => {}
    }
    if let Some(port) = port {
        key(out, b"port");
        json_u64(out, u64::from(port));
    }
    if first {
        out.push(b'{');
    }
    out.push(b'}');
}

/// `a.b.c.d`, without the formatter (`Ipv4Addr`'s `Display` pads and
/// buffers, several hundred instructions per address).
fn write_ipv4(out: &mut Vec<u8>, ip: std::net::Ipv4Addr) {
    for (i, octet) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            out.push(b'.');
        }
        json_u64(out, u64::from(octet));
    }
}

/// `n` in decimal, into `buf` (bytes, like `hex64`).
fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &buf[at..]
}

fn json_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(decimal(n, &mut [0; 20]));
}

/// One JSON string made of `parts`, escaped as JSON requires: `"` and `\`
/// and control characters. Text needing none (nearly all) is copied as is.
fn json_str_parts(out: &mut Vec<u8>, parts: &[&[u8]]) {
    out.push(b'"');
    for &bytes in parts {
        // One pass without early exit (the compiler vectorises it) to find
        // whether anything needs escaping at all; usually nothing does.
        let clean = bytes.iter().fold(true, |clean, &b| {
            clean & (b >= 0x20) & (b != b'"') & (b != b'\\')
        });
        if clean {
            out.extend_from_slice(bytes);
            continue;
        }
        let mut copied = 0;
        for (i, &b) in bytes.iter().enumerate() {
            let escape: &[u8] = match b {
                b'"' => b"\\\"",
                b'\\' => b"\\\\",
                b'\n' => b"\\n",
                b'\r' => b"\\r",
                b'\t' => b"\\t",
                0..=0x1f => b"",
                _ => continue,
            };
            out.extend_from_slice(&bytes[copied..i]);
            copied = i + 1;
            if escape.is_empty() {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 0xf)]);
            } else {
                out.extend_from_slice(escape);
            }
        }
        out.extend_from_slice(&bytes[copied..]);
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    http::HeaderName::from_static(k),
                    HeaderValue::from_static(v),
                )
            })
            .collect()
    }

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const SPAN: &str = "00f067aa0ba902b7";

    fn ids(incoming: Incoming) -> Option<(String, String)> {
        incoming.parent.map(|(t, s)| (t.to_string(), s.to_string()))
    }

    #[test]
    fn w3c_traceparent_is_read() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let incoming = Incoming::from_headers(&headers(&[("traceparent", tp)]));
        assert_eq!(ids(incoming), Some((TRACE.into(), SPAN.into())));
        assert_eq!(incoming.sampled, Some(true));
        let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        let incoming = Incoming::from_headers(&headers(&[("traceparent", unsampled)]));
        assert_eq!(incoming.sampled, Some(false));
        // A later version may add fields; version 00 may not.
        assert!(parse_traceparent(&format!("01-{TRACE}-{SPAN}-01-extra")).is_some());
        assert!(parse_traceparent(&format!("00-{TRACE}-{SPAN}-01-extra")).is_none());
    }

    #[test]
    fn malformed_traceparents_are_ignored() {
        for bad in [
            "",
            "garbage",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01", // zero trace
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", // zero span
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", // upper case
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", // version ff
            "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01", // misplaced dash
            "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", // sign
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-zz",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad:?}");
        }
        // A broken traceparent falls through to B3.
        let incoming = Incoming::from_headers(&headers(&[
            ("traceparent", "garbage"),
            ("x-b3-traceid", TRACE),
            ("x-b3-spanid", SPAN),
        ]));
        assert_eq!(ids(incoming), Some((TRACE.into(), SPAN.into())));
    }

    #[test]
    fn b3_multi_is_read_with_64_and_128_bit_ids() {
        let incoming = Incoming::from_headers(&headers(&[
            ("x-b3-traceid", "a2fb4a1d1a96d312"),
            ("x-b3-spanid", SPAN),
            ("x-b3-parentspanid", "0020000000000001"),
            ("x-b3-sampled", "0"),
        ]));
        assert_eq!(
            ids(incoming),
            Some(("a2fb4a1d1a96d312".into(), SPAN.into())),
            "a 64-bit id stays 16 hex, never padded"
        );
        assert_eq!(incoming.sampled, Some(false));

        let incoming =
            Incoming::from_headers(&headers(&[("x-b3-traceid", TRACE), ("x-b3-spanid", SPAN)]));
        assert_eq!(ids(incoming), Some((TRACE.into(), SPAN.into())));
        assert_eq!(incoming.sampled, None, "deferred: this proxy decides");

        let debug = Incoming::from_headers(&headers(&[
            ("x-b3-traceid", TRACE),
            ("x-b3-spanid", SPAN),
            ("x-b3-flags", "1"),
        ]));
        assert!(debug.debug);
    }

    #[test]
    fn malformed_b3_multi_is_ignored() {
        for pairs in [
            &[("x-b3-traceid", TRACE)][..],
            &[("x-b3-spanid", SPAN)][..],
            &[("x-b3-traceid", "abc"), ("x-b3-spanid", SPAN)][..],
            &[("x-b3-traceid", TRACE), ("x-b3-spanid", "0000000000000000")][..],
            &[
                ("x-b3-traceid", TRACE),
                ("x-b3-spanid", "00f067aa0ba902b7ff"),
            ][..],
        ] {
            assert_eq!(
                Incoming::from_headers(&headers(pairs)),
                Incoming::default(),
                "{pairs:?}"
            );
        }
        // A sampling decision alone still counts.
        let only = Incoming::from_headers(&headers(&[("x-b3-sampled", "0")]));
        assert_eq!(only.parent, None);
        assert_eq!(only.sampled, Some(false));
    }

    #[test]
    fn b3_single_is_read() {
        let full = format!("{TRACE}-{SPAN}-1-a2fb4a1d1a96d312");
        let incoming = parse_b3_single(&full).unwrap();
        assert_eq!(ids(incoming), Some((TRACE.into(), SPAN.into())));
        assert_eq!(incoming.sampled, Some(true));
        let short = parse_b3_single(&format!("a2fb4a1d1a96d312-{SPAN}")).unwrap();
        assert_eq!(ids(short), Some(("a2fb4a1d1a96d312".into(), SPAN.into())));
        assert_eq!(short.sampled, None);
        assert!(parse_b3_single(&format!("{TRACE}-{SPAN}-d")).unwrap().debug);
        assert_eq!(parse_b3_single("0").unwrap().sampled, Some(false));
        assert!(parse_b3_single("d").unwrap().debug);
        for bad in [
            "",
            "x",
            "2",
            TRACE,
            &format!("{TRACE}-{SPAN}-7"),
            &format!("{TRACE}-{SPAN}-1-bad"),
            &format!("{TRACE}-{SPAN}-1-{SPAN}-more"),
        ] {
            assert_eq!(parse_b3_single(bad), None, "{bad:?}");
        }
        // Used when neither traceparent nor B3 multi is there.
        let incoming = Incoming::from_headers(&{
            let mut h = HeaderMap::new();
            h.insert("b3", HeaderValue::try_from(full).unwrap());
            h
        });
        assert_eq!(ids(incoming), Some((TRACE.into(), SPAN.into())));
    }

    #[test]
    fn w3c_wins_over_b3() {
        let tp = "00-11111111111111111111111111111111-2222222222222222-01";
        let incoming = Incoming::from_headers(&headers(&[
            ("traceparent", tp),
            ("x-b3-traceid", TRACE),
            ("x-b3-spanid", SPAN),
        ]));
        assert_eq!(
            ids(incoming),
            Some((
                "11111111111111111111111111111111".into(),
                "2222222222222222".into()
            ))
        );
    }

    #[test]
    fn a_child_span_names_the_callers_span_as_parent_in_every_format() {
        let incoming = Incoming::from_headers(&headers(&[
            ("x-b3-traceid", TRACE),
            ("x-b3-spanid", SPAN),
            ("x-b3-sampled", "1"),
            ("b3", "stale-single-header"),
            ("tracestate", "vendor=opaque"),
        ]));
        let span = SpanContext::open(incoming, 0.0, &Rng::seeded(1));
        assert_eq!(span.trace_id.to_string(), TRACE);
        assert_eq!(span.parent_id.unwrap().to_string(), SPAN);
        assert_ne!(span.span_id.to_string(), SPAN, "spans are not shared");
        assert!(span.sampled, "the root's decision wins over the local rate");

        let mut out = headers(&[("b3", "stale"), ("tracestate", "vendor=opaque")]);
        span.inject(&mut out);
        let id = span.span_id.to_string();
        assert_eq!(out["traceparent"], format!("00-{TRACE}-{id}-01").as_str());
        assert_eq!(out["x-b3-traceid"], TRACE);
        assert_eq!(out["x-b3-spanid"], id.as_str());
        assert_eq!(out["x-b3-parentspanid"], SPAN);
        assert_eq!(out["x-b3-sampled"], "1");
        assert_eq!(out["tracestate"], "vendor=opaque", "passed through");
        assert!(!out.contains_key("b3"), "the stale single header is gone");

        // The next hop reads what we wrote and continues the same tree.
        let next = Incoming::from_headers(&out);
        assert_eq!(next.parent, Some((span.trace_id, span.span_id)));
    }

    #[test]
    fn a_64_bit_trace_survives_the_trip_through_traceparent() {
        let incoming = Incoming::from_headers(&headers(&[
            ("x-b3-traceid", "a2fb4a1d1a96d312"),
            ("x-b3-spanid", SPAN),
        ]));
        let span = SpanContext::open(incoming, 100.0, &Rng::seeded(1));
        let mut out = HeaderMap::new();
        span.inject(&mut out);
        assert_eq!(
            out["traceparent"].to_str().unwrap()[3..35],
            *"0000000000000000a2fb4a1d1a96d312",
            "W3C needs 32 digits: padded on the wire"
        );
        assert_eq!(out["x-b3-traceid"], "a2fb4a1d1a96d312");
        // Read back (traceparent first), it is the 16-digit id again.
        let next = Incoming::from_headers(&out);
        assert_eq!(next.parent.unwrap().0.to_string(), "a2fb4a1d1a96d312");
    }

    #[test]
    fn a_root_span_starts_a_128_bit_trace_and_has_no_parent_header() {
        let span = SpanContext::open(Incoming::default(), 100.0, &Rng::seeded(1));
        assert_eq!(span.parent_id, None);
        assert_eq!(span.trace_id.to_string().len(), 32);
        assert!(span.sampled);
        let mut out = headers(&[("x-b3-parentspanid", SPAN)]);
        span.inject(&mut out);
        assert!(!out.contains_key("x-b3-parentspanid"));
        assert_eq!(out["x-b3-sampled"], "1");
    }

    #[test]
    fn unsampled_requests_still_propagate() {
        let span = SpanContext::open(Incoming::default(), 0.0, &Rng::seeded(1));
        assert!(!span.sampled);
        let mut out = HeaderMap::new();
        span.inject(&mut out);
        assert!(out["traceparent"].to_str().unwrap().ends_with("-00"));
        assert_eq!(out["x-b3-sampled"], "0");
        // ...and the next hop keeps the decision even at 100%.
        let next = SpanContext::open(Incoming::from_headers(&out), 100.0, &Rng::seeded(2));
        assert!(!next.sampled);
    }

    #[test]
    fn sampling_follows_the_rate_within_the_binomial_spread() {
        let rng = Rng::seeded(42);
        let n = 20_000;
        let p = 0.25;
        let sampled = (0..n)
            .filter(|_| SpanContext::open(Incoming::default(), p * 100.0, &rng).sampled)
            .count() as u64;
        mesh_testkit::assert_binomial("sampled requests", sampled, n, p, 4.0);
        // A B3 debug flag records whatever the rate.
        let debug = Incoming {
            debug: true,
            ..Incoming::default()
        };
        assert!(SpanContext::open(debug, 0.0, &rng).sampled);
    }

    #[test]
    fn ids_are_lowercase_hex_and_never_zero() {
        for _ in 0..1000 {
            let span = SpanId::random().to_string();
            assert_eq!(span.len(), 16);
            assert_ne!(span, "0000000000000000");
            assert!(span.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
            assert_eq!(TraceId::random().to_string().len(), 32);
        }
    }

    /// A span as the reporter writes it, read back as JSON.
    fn as_json(span: &Span) -> serde_json::Value {
        let mut out = Vec::new();
        span.write_json(&mut out);
        serde_json::from_slice(&out).expect("the span is valid JSON")
    }

    fn span() -> Span {
        let incoming = parse_b3_single(&format!("{TRACE}-a2fb4a1d1a96d312-1")).unwrap();
        let mut context = SpanContext::open(incoming, 100.0, &Rng::seeded(1));
        context.span_id = SpanId::parse(SPAN).unwrap();
        Span {
            context,
            kind: Kind::Client,
            local: Arc::new(LocalService::new(
                "guestbook-ui",
                "v1",
                "guestbook-ui-v1-1a2b3",
                Some("127.0.0.1".parse().unwrap()),
            )),
            remote: Some(Remote {
                service: Some("helloworld-service".into()),
                address: Some("127.0.0.1:40123".parse().unwrap()),
            }),
            timestamp_us: 1_718_000_000_123_456,
            duration_us: 3210,
            method: http::Method::GET,
            authority: "Helloworld-Service:8080".into(),
            path_and_query: "/hello/Ray?x=1".into(),
            status: 200,
            flags: ResponseFlags::empty(),
            upstream_cluster: UpstreamCluster::Outbound {
                port: 8080,
                subset: Some("v1".into()),
                service: "helloworld-service".into(),
            },
            upstream_address: Some("127.0.0.1:40123".into()),
            peer: Some("127.0.0.1:51234".parse().unwrap()),
            request_id: "9c1f5d8e-6c0b-4c53-9a57-0f3b8d1c2e4a".into(),
            user_agent: None,
            retries: 0,
            request_size: 0,
            response_size: 12,
            principals: None,
        }
    }

    #[test]
    fn spans_serialise_as_zipkin_v2() {
        let json = as_json(&span());
        assert_eq!(
            json,
            serde_json::json!({
                "traceId": TRACE,
                "id": SPAN,
                "parentId": "a2fb4a1d1a96d312",
                "kind": "CLIENT",
                "name": "helloworld-service:8080/hello/ray",
                "timestamp": 1_718_000_000_123_456u64,
                "duration": 3210,
                "localEndpoint": { "serviceName": "guestbook-ui", "ipv4": "127.0.0.1" },
                "remoteEndpoint": {
                    "serviceName": "helloworld-service", "ipv4": "127.0.0.1", "port": 40123
                },
                "tags": {
                    "istio.canonical_service": "guestbook-ui",
                    "istio.canonical_revision": "v1",
                    "instance": "guestbook-ui-v1-1a2b3",
                    "component": "proxy",
                    "guid:x-request-id": "9c1f5d8e-6c0b-4c53-9a57-0f3b8d1c2e4a",
                    "http.method": "GET",
                    "http.url": "http://Helloworld-Service:8080/hello/Ray?x=1",
                    "http.path": "/hello/Ray",
                    "http.status_code": "200",
                    "response_flags": "-",
                    "upstream_cluster": "outbound|8080|v1|helloworld-service",
                    "upstream_address": "127.0.0.1:40123",
                    "peer.address": "127.0.0.1:51234",
                    "request_size": "0",
                    "response_size": "12"
                }
            })
        );
    }

    #[test]
    fn text_from_the_request_is_escaped_and_survives_the_trip() {
        // The JSON is written by hand: whatever a client puts in its user
        // agent or request id must come out as the same string.
        let mut odd = span();
        // Quotes and backslashes alone; then control characters too.
        odd.user_agent = Some("curl \"quoted\" back\\slash é".into());
        odd.request_id = "id-\n-\r-\"-\t-\u{1}".into();
        let json = as_json(&odd);
        assert_eq!(
            json["tags"]["user_agent"],
            odd.user_agent.as_deref().unwrap()
        );
        assert_eq!(json["tags"]["guid:x-request-id"], odd.request_id.as_str());
        let batch = spans_json(&[span(), odd]);
        let parsed: serde_json::Value = serde_json::from_slice(&batch).unwrap();
        assert_eq!(parsed.as_array().map(Vec::len), Some(2));
        assert_eq!(spans_json(&[]), b"[]");
    }

    #[test]
    fn an_mtls_hop_tags_both_principals_and_plain_text_neither() {
        let mut mtls = span();
        mtls.principals = Some((
            "spiffe://cluster.local/ns/default/sa/guestbook-ui".into(),
            "spiffe://cluster.local/ns/default/sa/helloworld-service".into(),
        ));
        let tags = &as_json(&mtls)["tags"];
        assert_eq!(
            tags["source.principal"],
            "spiffe://cluster.local/ns/default/sa/guestbook-ui"
        );
        assert_eq!(
            tags["destination.principal"],
            "spiffe://cluster.local/ns/default/sa/helloworld-service"
        );
        let plain = as_json(&span());
        assert!(plain["tags"].get("source.principal").is_none(), "{plain}");
        assert!(plain["tags"].get("destination.principal").is_none());
    }

    #[test]
    fn failed_spans_carry_error_and_roots_have_no_parent() {
        let mut failed = span();
        failed.status = 0;
        failed.flags = ResponseFlags::UF.union(ResponseFlags::URX);
        failed.duration_us = 0;
        failed.context.parent_id = None;
        failed.retries = 2;
        let json = as_json(&failed);
        assert_eq!(json["tags"]["error"], "true");
        assert_eq!(json["tags"]["http.status_code"], "0");
        assert_eq!(json["tags"]["response_flags"], "UF,URX");
        assert_eq!(json["tags"]["retry.count"], "2");
        assert_eq!(json["duration"], 1, "at least one microsecond");
        assert!(json.get("parentId").is_none(), "omitted, not null");
        let mut ok = span();
        ok.status = 404;
        assert!(as_json(&ok)["tags"].get("error").is_none());
    }
}

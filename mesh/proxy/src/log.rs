//! What happened to one request, and the access-log line that reports it.
//!
//! Every listener creates a [`RequestLog`] when a request arrives and puts it
//! in the request's context (`body.rs`'s `RequestCtx`); the layers below write into it (the chosen
//! endpoint, the endpoints already tried, response flags) and the request's
//! exchange (`telemetry.rs`) prints one line when the response has ended,
//! as Envoy does, target `access`:
//!
//! ```text
//! 2026-12-07T04:16:38.120934Z outbound GET helloworld-service:8080/hello/ray 200 - 3ms upstream=127.0.0.1:40123 (helloworld-service-v1-1a2b3)
//! ```
//!
//! The flags are Envoy's: the same two letters appear in an Istio sidecar's
//! access log, so what a learner reads here transfers directly. Status,
//! flags and duration always sit side by side (`503 FI 0ms`), so
//! `grep ' 503 FI '` finds a fault and scripts can split on whitespace.
//!
//! One note is not Envoy's: when a route would have retried a failure but
//! the request body had outgrown the replay buffer (64 KiB, see `body.rs`),
//! the line ends with `retry_skipped=body_over_replay_buffer` (the JSON
//! field `retry_skipped`, `-` otherwise), so an unretried 503 explains
//! itself.
//!
//! A gRPC call's status, when the answer's headers carry it (a trailers-only
//! answer: every error the proxy answers itself, see `error.rs`, and a
//! server's call that failed before any message), ends the line as
//! `grpc_status=14` (the JSON field `grpc_status`, Envoy's
//! `%GRPC_STATUS_NUMBER%`; `-` otherwise). The line is written when the
//! response headers leave; a status that comes later, in the trailers after
//! the messages, is counted in the metrics' `grpc_response_status` and the
//! span instead (Envoy writes its line at the stream's end and so has both).
//!
//! One format, two encodings, chosen like Istio's
//! `meshConfig.accessLogEncoding` with `MESH_ACCESS_LOG_ENCODING`:
//!
//! - `text` (the default): the short line above, about 140 characters for a
//!   typical request, so it fits a projector without wrapping;
//! - `json`: one JSON object per request with the fields behind the line,
//!   named as in Istio's JSON access log (`response_code`,
//!   `response_flags`, `duration`, `upstream_host`, `upstream_cluster`,
//!   `request_id`...), for `jq` and log pipelines. Locally,
//!   `meshctl up --access-log-encoding json` sets it for every sidecar and
//!   the gateway.
//!
//! [`subscriber`] builds the binary's logging: access lines through
//! [`AccessLogFormat`], every other line through tracing's usual format.
//!
//! The same record feeds telemetry (`telemetry.rs`): the cluster and endpoint
//! of the last attempt give the span's `upstream_cluster` and the metrics'
//! `destination_workload` / `destination_version`.

use std::fmt;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::time::Duration;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;

use crate::cluster::{ClusterRt, EndpointRt};

/// The tracing target of access lines (`MESH_LOG=info,access=off` hides them).
pub const ACCESS_TARGET: &str = "access";

/// Which listener a request came through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// From the local app, to another service.
    Outbound,
    /// From another sidecar or the gateway, to the local app.
    Inbound,
    /// From a user, into the mesh.
    Gateway,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
            Direction::Gateway => "gateway",
        })
    }
}

/// Envoy's response flags: why a response is what it is. Several can be set
/// at once (`UF,URX`: connection failures, retries exhausted).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ResponseFlags(u16);

impl ResponseFlags {
    /// No healthy upstream: the cluster has no endpoint to pick.
    pub const UH: ResponseFlags = ResponseFlags(1);
    /// Upstream request timeout (the route's `timeout`).
    pub const UT: ResponseFlags = ResponseFlags(1 << 1);
    /// Upstream connection failure.
    pub const UF: ResponseFlags = ResponseFlags(1 << 2);
    /// Upstream connection terminated before the response.
    pub const UC: ResponseFlags = ResponseFlags(1 << 3);
    /// Upstream overflow: the circuit breaker refused the request.
    pub const UO: ResponseFlags = ResponseFlags(1 << 4);
    /// No route for the request.
    pub const NR: ResponseFlags = ResponseFlags(1 << 5);
    /// The fault filter delayed the request.
    pub const DI: ResponseFlags = ResponseFlags(1 << 6);
    /// The fault filter aborted the request.
    pub const FI: ResponseFlags = ResponseFlags(1 << 7);
    /// Retries exhausted on a retriable failure.
    pub const URX: ResponseFlags = ResponseFlags(1 << 8);
    /// The downstream (the caller) went away before the response was sent.
    pub const DC: ResponseFlags = ResponseFlags(1 << 9);
    /// An AuthorizationPolicy denied the request (Envoy's RBAC filter,
    /// `authorize.rs`).
    pub const RBAC: ResponseFlags = ResponseFlags(1 << 10);

    /// Envoy's order when it prints several.
    const NAMES: [(ResponseFlags, &'static str); 11] = [
        (Self::UH, "UH"),
        (Self::UT, "UT"),
        (Self::UF, "UF"),
        (Self::UC, "UC"),
        (Self::UO, "UO"),
        (Self::NR, "NR"),
        (Self::DI, "DI"),
        (Self::FI, "FI"),
        (Self::URX, "URX"),
        (Self::DC, "DC"),
        (Self::RBAC, "RBAC"),
    ];

    pub fn empty() -> Self {
        ResponseFlags(0)
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn contains(self, other: ResponseFlags) -> bool {
        self.0 & other.0 == other.0
    }

    pub fn union(self, other: ResponseFlags) -> Self {
        ResponseFlags(self.0 | other.0)
    }
}

impl fmt::Display for ResponseFlags {
    /// `-` when no flag is set, like Envoy; else `UF,URX`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("-");
        }
        let mut first = true;
        for (flag, name) in Self::NAMES {
            if self.contains(flag) {
                if !first {
                    f.write_str(",")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        Ok(())
    }
}

/// The endpoint a request was (last) sent to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upstream {
    pub address: Arc<str>,
    pub instance: Arc<str>,
}

/// Where a request's latest attempt went, as far as it got.
#[derive(Debug, Default)]
pub struct Attempt {
    pub cluster: Option<Arc<ClusterRt>>,
    pub endpoint: Option<Arc<EndpointRt>>,
    /// The server's SPIFFE ID, as the attempt's mutual-TLS connection
    /// proved it; `None`: plain text, or no connection was reached.
    pub upstream_identity: Option<Arc<str>>,
}

/// Shared record of one request, in its context as `Arc<RequestLog>`.
///
/// Retries copy the request but share this record, so the balancer can see
/// which endpoints earlier attempts used (Envoy's previous-hosts predicate).
#[derive(Debug, Default)]
pub struct RequestLog {
    flags: AtomicU16,
    /// Request body bytes read from the client so far (the body streams,
    /// so this grows while the request is in flight).
    request_bytes: AtomicU64,
    /// A retry was due but skipped: the body had outgrown the replay buffer.
    retry_skipped: AtomicBool,
    /// `grpc-status` of the answer's headers, plus one; 0: none.
    grpc_status: AtomicU16,
    // Only this request's own attempts touch the lock, one at a time; it is
    // never contended and never shared between requests.
    state: Mutex<LogState>,
}

#[derive(Debug, Default)]
struct LogState {
    /// The endpoint of the latest attempt that picked one.
    last: Option<Upstream>,
    /// The endpoints of the attempts before it. Kept apart from `last` so
    /// that a request tried once (nearly all) allocates no list.
    earlier: Vec<Upstream>,
    /// The cluster of the latest attempt (or the route's first destination
    /// before an attempt picks one).
    cluster: Option<Arc<ClusterRt>>,
    /// The endpoint of the latest attempt, if it got as far as one.
    endpoint: Option<Arc<EndpointRt>>,
    /// The server identity the latest attempt's connection proved (mutual
    /// TLS only): telemetry's `destination_principal`.
    upstream_identity: Option<Arc<str>>,
}

impl RequestLog {
    pub fn new() -> Arc<Self> {
        Arc::new(RequestLog::default())
    }

    pub fn flag(&self, flags: ResponseFlags) {
        self.flags.fetch_or(flags.0, Ordering::Relaxed);
    }

    pub fn flags(&self) -> ResponseFlags {
        ResponseFlags(self.flags.load(Ordering::Relaxed))
    }

    /// Count request body bytes read from the client.
    pub fn add_request_bytes(&self, n: u64) {
        self.request_bytes.fetch_add(n, Ordering::Relaxed);
    }

    /// Request body bytes read from the client so far.
    pub fn request_bytes(&self) -> u64 {
        self.request_bytes.load(Ordering::Relaxed)
    }

    /// Record that a retry the route allowed was not made because the
    /// request body was larger than the replay buffer (`body.rs`).
    pub fn skip_retry(&self) {
        self.retry_skipped.store(true, Ordering::Relaxed);
    }

    /// Whether a retry was skipped for the body's size.
    pub fn retry_skipped(&self) -> bool {
        self.retry_skipped.load(Ordering::Relaxed)
    }

    /// Record the gRPC status the answer's headers carry.
    pub fn record_grpc_status(&self, status: u16) {
        self.grpc_status
            .store(status.saturating_add(1), Ordering::Relaxed);
    }

    /// The gRPC status of the answer's headers, if any.
    pub fn grpc_status(&self) -> Option<u16> {
        match self.grpc_status.load(Ordering::Relaxed) {
            0 => None,
            n => Some(n - 1),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, LogState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Record that an attempt goes to `upstream`.
    pub fn record_upstream(&self, upstream: Upstream) {
        self.state().push_upstream(upstream);
    }

    /// Record the cluster an attempt (or, before any, the route) aims at;
    /// forgets the previous attempt's endpoint.
    pub fn record_cluster(&self, cluster: &Arc<ClusterRt>) {
        let mut state = self.state();
        state.cluster = Some(cluster.clone());
        state.endpoint = None;
        state.upstream_identity = None;
    }

    /// Record the endpoint the latest attempt goes to (with its address,
    /// as [`record_upstream`](Self::record_upstream) does).
    pub fn record_endpoint(&self, endpoint: &Arc<EndpointRt>) {
        let mut state = self.state();
        state.push_upstream(Upstream {
            address: endpoint.address.clone(),
            instance: endpoint.instance.clone(),
        });
        state.endpoint = Some(endpoint.clone());
        state.upstream_identity = None;
    }

    /// Record the SPIFFE ID the latest attempt's connection proved in its
    /// mutual-TLS handshake (`pool.rs`, `h2.rs`; made once per connection).
    pub fn record_upstream_identity(&self, spiffe_id: &Arc<str>) {
        self.state().upstream_identity = Some(spiffe_id.clone());
    }

    /// The cluster and endpoint of the latest attempt, as far as it got.
    pub fn target(&self) -> (Option<Arc<ClusterRt>>, Option<Arc<EndpointRt>>) {
        let state = self.state();
        (state.cluster.clone(), state.endpoint.clone())
    }

    /// The latest attempt, as far as it got: [`target`](Self::target), with
    /// the server identity its connection proved.
    pub fn attempt(&self) -> Attempt {
        let state = self.state();
        Attempt {
            cluster: state.cluster.clone(),
            endpoint: state.endpoint.clone(),
            upstream_identity: state.upstream_identity.clone(),
        }
    }

    /// The endpoint of the latest attempt.
    pub fn upstream(&self) -> Option<Upstream> {
        self.state().last.clone()
    }

    /// Whether an earlier attempt of this request went to `address`.
    pub fn tried(&self, address: &str) -> bool {
        let state = self.state();
        state
            .last
            .iter()
            .chain(&state.earlier)
            .any(|u| &*u.address == address)
    }

    /// How many attempts picked an endpoint.
    pub fn attempts(&self) -> usize {
        let state = self.state();
        usize::from(state.last.is_some()) + state.earlier.len()
    }
}

impl LogState {
    fn push_upstream(&mut self, upstream: Upstream) {
        if let Some(previous) = self.last.replace(upstream) {
            self.earlier.push(previous);
        }
    }
}

/// The fields of one access-log line.
pub struct AccessLog<'a> {
    pub direction: Direction,
    pub method: &'a http::Method,
    pub authority: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub duration: Duration,
    pub request_id: &'a str,
    pub log: &'a RequestLog,
}

impl AccessLog<'_> {
    /// Record the request at info level, target `access`: the short line as
    /// the message, the same facts as fields (Istio's JSON names). Which of
    /// the two gets printed is the subscriber's choice ([`AccessLogFormat`]).
    pub fn emit(&self) {
        let upstream = self.log.upstream();
        let (address, instance) = match &upstream {
            Some(u) => (&*u.address, &*u.instance),
            None => ("-", "-"),
        };
        let (cluster, _) = self.log.target();
        let cluster = cluster.as_ref().map_or("-", |c| &*c.name);
        let flags = self.log.flags();
        // Not one of Envoy's flags (Envoy has none for this): a separate
        // field, appended to the text line only when it applies.
        let (retry_skipped, skipped_note) = if self.log.retry_skipped() {
            (RETRY_SKIPPED, " retry_skipped=body_over_replay_buffer")
        } else {
            ("-", "")
        };
        let grpc_status = self.log.grpc_status();
        let grpc_note = GrpcNote(grpc_status);
        tracing::info!(
            target: ACCESS_TARGET,
            direction = %self.direction,
            method = %self.method,
            authority = self.authority,
            path = self.path,
            response_code = self.status,
            response_flags = %flags,
            duration = self.duration.as_millis() as u64,
            upstream_host = address,
            upstream_cluster = cluster,
            upstream_instance = instance,
            request_id = self.request_id,
            retry_skipped,
            grpc_status = %GrpcStatusField(grpc_status),
            "{} {} {}{} {} {} {}ms upstream={} ({}){}{}",
            self.direction,
            self.method,
            self.authority,
            self.path,
            self.status,
            flags,
            self.duration.as_millis(),
            address,
            instance,
            skipped_note,
            grpc_note,
        );
    }
}

/// The JSON field `grpc_status`: the number, or `-`.
struct GrpcStatusField(Option<u16>);

impl fmt::Display for GrpcStatusField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(code) => write!(f, "{code}"),
            None => f.write_str("-"),
        }
    }
}

/// The text line's ` grpc_status=N` ending, empty when there is none.
struct GrpcNote(Option<u16>);

impl fmt::Display for GrpcNote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(code) => write!(f, " grpc_status={code}"),
            None => Ok(()),
        }
    }
}

/// The access log's `retry_skipped` value when a retriable failure was not
/// retried because the request body outgrew the replay buffer.
pub const RETRY_SKIPPED: &str = "body_over_replay_buffer";

// === the access log's encodings ===

/// How access lines are printed (`MESH_ACCESS_LOG_ENCODING`, after Istio's
/// `meshConfig.accessLogEncoding`: `TEXT` or `JSON`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AccessLogEncoding {
    /// The short line, one per request.
    #[default]
    Text,
    /// One JSON object per request, with every field.
    Json,
}

impl std::str::FromStr for AccessLogEncoding {
    type Err = String;

    /// `text` or `json`, in any case (Istio writes `TEXT` and `JSON`).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.to_ascii_lowercase().as_str() {
            "text" => Ok(AccessLogEncoding::Text),
            "json" => Ok(AccessLogEncoding::Json),
            _ => Err("expected `text` (the short line, the default) or `json`".into()),
        }
    }
}

/// Formats `access` events: `TIME LINE` for text, a JSON object for json.
/// Level and target are left out: every access line is `INFO access`, and
/// its first word (`inbound`, `outbound`, `gateway`) already tells it apart
/// from the proxy's other log lines.
#[derive(Clone, Copy, Debug, Default)]
pub struct AccessLogFormat {
    pub encoding: AccessLogEncoding,
}

impl<S, N> FormatEvent<S, N> for AccessLogFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut time = String::new();
        SystemTime.format_time(&mut Writer::new(&mut time))?;
        let mut fields = JsonFields::default();
        event.record(&mut fields);
        match self.encoding {
            AccessLogEncoding::Text => writeln!(writer, "{time} {}", fields.message),
            AccessLogEncoding::Json => {
                fields
                    .map
                    .insert("start_time".into(), serde_json::Value::String(time));
                writeln!(writer, "{}", serde_json::Value::Object(fields.map))
            }
        }
    }
}

/// An event's fields as JSON values; the message apart.
#[derive(Default)]
struct JsonFields {
    message: String,
    map: serde_json::Map<String, serde_json::Value>,
}

impl Visit for JsonFields {
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.map.insert(field.name().into(), value.into());
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.map.insert(field.name().into(), value.into());
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.map.insert(field.name().into(), value.into());
    }

    /// `%display` fields and the message arrive here.
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let text = format!("{value:?}");
        if field.name() == "message" {
            self.message = text;
        } else {
            self.map.insert(field.name().into(), text.into());
        }
    }
}

/// The proxy binary's logging: `filter` (MESH_LOG) over everything; access
/// lines in `encoding`, every other line in tracing's usual format (with
/// colours if `ansi`: on a terminal, not in a log file), both to `writer`
/// (stderr in the binary, like Envoy's).
pub fn subscriber<W>(
    filter: EnvFilter,
    encoding: AccessLogEncoding,
    ansi: bool,
    writer: W,
) -> impl Subscriber + Send + Sync
where
    W: for<'w> MakeWriter<'w> + Clone + Send + Sync + 'static,
{
    let access = tracing_subscriber::fmt::layer()
        .event_format(AccessLogFormat { encoding })
        .with_writer(writer.clone())
        .with_filter(filter_fn(|meta| meta.target() == ACCESS_TARGET));
    let others = tracing_subscriber::fmt::layer()
        .with_ansi(ansi)
        .with_writer(writer)
        .with_filter(filter_fn(|meta| meta.target() != ACCESS_TARGET));
    tracing_subscriber::registry()
        .with(filter)
        .with(access)
        .with(others)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_print_like_envoy() {
        assert_eq!(ResponseFlags::empty().to_string(), "-");
        let flags = ResponseFlags::URX.union(ResponseFlags::UF);
        assert_eq!(flags.to_string(), "UF,URX");
        assert_eq!(
            ResponseFlags::DI.union(ResponseFlags::FI).to_string(),
            "DI,FI"
        );
    }

    /// A `MakeWriter` into a shared buffer.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'w> MakeWriter<'w> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'w self) -> Buffer {
            self.clone()
        }
    }

    /// The lines the binary's subscriber prints for one typical request
    /// (the ui calling helloworld, as in lab 01) and one other log line.
    fn printed(encoding: AccessLogEncoding) -> Vec<String> {
        let buffer = Buffer::default();
        let subscriber = subscriber(EnvFilter::new("info"), encoding, false, buffer.clone());
        tracing::subscriber::with_default(subscriber, || {
            let log = RequestLog::new();
            log.record_upstream(Upstream {
                address: "127.0.0.1:40123".into(),
                instance: "helloworld-service-v1-1a2b3".into(),
            });
            AccessLog {
                direction: Direction::Outbound,
                method: &http::Method::GET,
                authority: "helloworld-service:8080",
                path: "/hello/Ray",
                status: 200,
                duration: Duration::from_micros(3_400),
                request_id: "5f0c8a4e-8c1d-4a5e-9b7e-2f3d4c5b6a79",
                log: &log,
            }
            .emit();
            tracing::info!(target: "mesh_proxy::control", "connected to the control plane");
        });
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        text.lines().map(str::to_string).collect()
    }

    #[test]
    fn the_default_access_line_is_short_and_keeps_status_flags_duration_together() {
        let lines = printed(AccessLogEncoding::Text);
        let access = &lines[0];
        // Issue 11: the line was ~400 characters (the short form, then every
        // field again as key=value) and wrapped on a projector.
        assert!(access.len() < 160, "{} characters: {access}", access.len());
        let (time, line) = access.split_once(' ').unwrap();
        assert!(
            time.len() == 27 && time.ends_with('Z'),
            "an RFC 3339 UTC time first: {time}"
        );
        assert_eq!(
            line,
            "outbound GET helloworld-service:8080/hello/Ray 200 - 3ms upstream=127.0.0.1:40123 (helloworld-service-v1-1a2b3)"
        );
        assert!(!access.contains("request_id"), "{access}");
        // Lab checks grep `<status> <flags> <duration>` as adjacent words.
        let words: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(words[3..6], ["200", "-", "3ms"]);
        // Other log lines keep tracing's usual format, level and target.
        assert!(
            lines[1].contains("INFO mesh_proxy::control: connected"),
            "{lines:?}"
        );
    }

    #[test]
    fn json_mode_prints_every_field_with_istios_names() {
        let lines = printed(AccessLogEncoding::Json);
        let access: serde_json::Value = serde_json::from_str(&lines[0])
            .unwrap_or_else(|e| panic!("one JSON object per line ({e}): {}", lines[0]));
        let expected = serde_json::json!({
            "direction": "outbound",
            "method": "GET",
            "authority": "helloworld-service:8080",
            "path": "/hello/Ray",
            "response_code": 200,
            "response_flags": "-",
            "duration": 3,
            "upstream_host": "127.0.0.1:40123",
            "upstream_cluster": "-",
            "upstream_instance": "helloworld-service-v1-1a2b3",
            "request_id": "5f0c8a4e-8c1d-4a5e-9b7e-2f3d4c5b6a79",
        });
        for (key, value) in expected.as_object().unwrap() {
            assert_eq!(&access[key], value, "{key} in {access}");
        }
        assert!(
            access["start_time"]
                .as_str()
                .is_some_and(|t| t.ends_with('Z')),
            "{access}"
        );
        assert!(
            access.get("message").is_none(),
            "no short line inside: {access}"
        );
        assert!(
            lines[1].contains("INFO mesh_proxy::control: connected"),
            "{lines:?}"
        );
    }

    #[test]
    fn the_encoding_reads_istios_spelling() {
        assert_eq!("JSON".parse(), Ok(AccessLogEncoding::Json));
        assert_eq!("text".parse(), Ok(AccessLogEncoding::Text));
        assert!(
            "yaml"
                .parse::<AccessLogEncoding>()
                .unwrap_err()
                .contains("`json`")
        );
    }

    #[test]
    fn the_log_remembers_every_endpoint_tried() {
        let log = RequestLog::new();
        log.record_upstream(Upstream {
            address: "127.0.0.1:1".into(),
            instance: "a".into(),
        });
        log.record_upstream(Upstream {
            address: "127.0.0.1:2".into(),
            instance: "b".into(),
        });
        assert!(log.tried("127.0.0.1:1"));
        assert!(!log.tried("127.0.0.1:3"));
        assert_eq!(&*log.upstream().unwrap().instance, "b");
        assert_eq!(log.attempts(), 2);
    }
}

//! The trace collector: Zipkin's HTTP API on the control plane's port, and
//! OpenTelemetry's OTLP/HTTP trace intake beside it.
//!
//! Every sidecar sends its spans here (`POST /api/v2/spans`, Zipkin v2
//! JSON), and the dashboard and `meshctl traces` read them back. Istio ships
//! no collector of its own: its proxies report to a Zipkin or Jaeger that
//! you install next to it. micromesh embeds a small one so the workshop
//! needs nothing else, and speaks Zipkin's API as Zipkin's own server does
//! (openzipkin's `zipkin2-api.yaml`, and its server's rules where the spec
//! is silent), so a real Zipkin or Jaeger can take its place by changing one
//! address (`MESH_ZIPKIN_URL` on the sidecars), and Zipkin's own UI or any
//! Zipkin client can read this one.
//!
//! ```text
//! POST /api/v2/spans                      Zipkin v2 JSON or protobuf, gzip or not -> 202
//! POST /v1/traces                         OTLP/HTTP, protobuf or JSON, gzip or not -> 200
//! GET  /api/v2/services                   service names
//! GET  /api/v2/spans?serviceName=S        span names of S
//! GET  /api/v2/remoteServices?serviceName=S
//! GET  /api/v2/traces?serviceName=&spanName=&annotationQuery=&minDuration=&maxDuration=&endTs=&lookback=&limit=
//!                                         a list of traces, each a list of spans, newest first
//! GET  /api/v2/trace/{traceId}            one trace's spans
//! GET  /api/v2/traceMany?traceIds=A,B     several traces at once
//! GET  /api/v2/dependencies?endTs=&lookback=   the service graph (dependencies.rs)
//! GET  /api/v2/autocompleteKeys           tag keys the UI offers to search by
//! GET  /api/v2/autocompleteValues?key=K   the values seen for one of them
//! ```
//!
//! and micromesh's own reading of them (see `analysis.rs`):
//!
//! ```text
//! GET  /api/v1/traces?serviceName=&limit=&broken=true   summaries with broken-chain findings
//! GET  /api/v1/traces/{traceId}/analysis  the waterfall (spans as a tree) and its problems
//! GET  /api/v1/collector                  how many traces and spans are kept, dropped, evicted
//! ```
//!
//! A posted body goes: `intake.rs` (gzip, content type) -> a decoder
//! (`span.rs` JSON, `proto.rs` Zipkin protobuf, `otlp.rs` OpenTelemetry)
//! -> `Span::normalize` (Zipkin's id rules) -> the store. Every route
//! answers browsers from other origins as Zipkin does (`cors.rs`).

mod analysis;
mod cors;
mod dependencies;
mod intake;
pub mod otlp;
mod proto;
mod span;
mod store;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use prost::Message;
use serde::Deserialize;

pub use analysis::{Problem, ProblemKind, TraceAnalysis, WaterfallSpan, analyze};
pub use dependencies::{DependencyLink, Linker};
pub use intake::{Format, IntakeError};
pub use proto::{ListOfSpans, ProtoAnnotation, ProtoEndpoint, ProtoSpan, parse_proto_batch};
pub use span::{Annotation, Endpoint, Kind, Span, SpanError, normalize_trace_id, parse_batch};
pub use store::{CollectorSettings, CollectorStats, Store, TraceQuery};

use crate::api::{ApiFailure, Pretty, QueryParams};

/// The tag keys `GET /api/v2/autocompleteKeys` offers: the sidecars' tags
/// a learner searches by (docs/telemetry-contract.md, 1.3). Zipkin reads
/// this list from `AUTOCOMPLETE_KEYS`; ours is fixed.
pub const AUTOCOMPLETE_KEYS: [&str; 6] = [
    "http.method",
    "http.status_code",
    "istio.canonical_revision",
    "istio.canonical_service",
    "response_flags",
    "upstream_cluster",
];

/// The collector: a bounded in-memory [`Store`] behind a lock. Every
/// operation holds the lock only for in-memory work (no I/O, no await).
#[derive(Debug)]
pub struct Collector {
    store: Mutex<Store>,
}

impl Collector {
    pub fn new(settings: CollectorSettings) -> Collector {
        Collector {
            store: Mutex::new(Store::new(settings)),
        }
    }

    pub fn store(&self) -> MutexGuard<'_, Store> {
        // A panic while holding this lock would be a bug in the store's
        // plain data-structure code; the data itself stays usable.
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Store a posted Zipkin JSON batch, or say which span was wrong.
    pub fn post(&self, body: &[u8]) -> Result<usize, String> {
        let spans = parse_batch(body)?;
        Ok(self.accept(spans))
    }

    /// Store spans already checked by a decoder.
    pub fn accept(&self, spans: Vec<Span>) -> usize {
        let count = spans.len();
        if count > 0 {
            self.store().insert(spans, Instant::now());
        }
        count
    }
}

/// Milliseconds since the Unix epoch, the unit of Zipkin's `endTs`.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The collector's routes, Zipkin's, OpenTelemetry's and micromesh's.
pub fn router(collector: Arc<Collector>) -> Router {
    Router::new()
        .route("/api/v2/spans", get(span_names).post(post_spans))
        .route("/v1/traces", post(post_otlp))
        .route("/api/v2/services", get(services))
        .route("/api/v2/remoteServices", get(remote_services))
        .route("/api/v2/traces", get(traces))
        .route("/api/v2/trace/{trace_id}", get(trace))
        .route("/api/v2/traceMany", get(trace_many))
        .route("/api/v2/dependencies", get(dependencies))
        .route("/api/v2/autocompleteKeys", get(autocomplete_keys))
        .route("/api/v2/autocompleteValues", get(autocomplete_values))
        .route("/api/v1/traces", get(summaries))
        .route("/api/v1/traces/{trace_id}/analysis", get(trace_analysis))
        .route("/api/v1/collector", get(stats))
        .layer(axum::middleware::from_fn(cors::cors))
        .with_state(collector)
}

// === intake ===

impl IntoResponse for IntakeError {
    fn into_response(self) -> Response {
        let status = match self {
            IntakeError::Unsupported(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            IntakeError::Malformed(_) => StatusCode::BAD_REQUEST,
        };
        ApiFailure::new(status, self.to_string()).into_response()
    }
}

/// `POST /api/v2/spans`: 202 Accepted, like Zipkin; 400 names the bad span;
/// 415 for a format it does not read.
async fn post_spans(
    State(collector): State<Arc<Collector>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    const ROUTE: &str = "POST /api/v2/spans";
    let decoded = intake::format(&headers, ROUTE).and_then(|format| {
        let body = intake::inflate(&headers, &body, ROUTE)?;
        Ok(match format {
            // Zipkin takes an empty body as an empty batch.
            _ if body.is_empty() => Ok(Vec::new()),
            Format::Json => parse_batch(&body),
            Format::Protobuf => parse_proto_batch(&body),
        })
    });
    match decoded {
        Err(refused) => refused.into_response(),
        Ok(Ok(spans)) => {
            let count = collector.accept(spans);
            tracing::trace!(count, "spans accepted");
            StatusCode::ACCEPTED.into_response()
        }
        Ok(Err(message)) => {
            tracing::debug!("spans refused: {message}");
            ApiFailure::bad_request(format!(
                "{ROUTE}: {message}; nothing from this batch was stored"
            ))
            .into_response()
        }
    }
}

/// `POST /v1/traces`: OTLP/HTTP. Success is 200 with an empty
/// `ExportTraceServiceResponse` in the request's format; a body that
/// cannot be read is 400 with a `google.rpc.Status`, as the OTLP spec asks.
async fn post_otlp(
    State(collector): State<Arc<Collector>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    const ROUTE: &str = "POST /v1/traces";
    let format = match intake::format(&headers, ROUTE) {
        Ok(format) => format,
        Err(refused) => return refused.into_response(),
    };
    let decoded = intake::inflate(&headers, &body, ROUTE)
        .map_err(|e| e.to_string())
        .and_then(|body| match format {
            Format::Json => otlp::parse_json(&body),
            Format::Protobuf => otlp::parse_protobuf(&body),
        });
    let (status, message) = match decoded {
        Ok(spans) => {
            let count = collector.accept(spans);
            tracing::trace!(count, "OTLP spans accepted");
            (StatusCode::OK, None)
        }
        Err(message) => {
            tracing::debug!("OTLP spans refused: {message}");
            let message = format!("{ROUTE}: {message}; nothing from this request was stored");
            (StatusCode::BAD_REQUEST, Some(message))
        }
    };
    let (content_type, body) = match (format, message) {
        (Format::Protobuf, None) => ("application/x-protobuf", Vec::new()),
        (Format::Json, None) => ("application/json", b"{}".to_vec()),
        (Format::Protobuf, Some(message)) => (
            "application/x-protobuf",
            otlp::RpcStatus {
                code: otlp::INVALID_ARGUMENT,
                message,
            }
            .encode_to_vec(),
        ),
        (Format::Json, Some(message)) => (
            "application/json",
            serde_json::json!({ "code": otlp::INVALID_ARGUMENT, "message": message })
                .to_string()
                .into_bytes(),
        ),
    };
    (
        status,
        [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
        body,
    )
        .into_response()
}

// === Zipkin's API: names ===

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ServiceQuery {
    service_name: Option<String>,
}

impl ServiceQuery {
    /// Zipkin: the parameter is required (400 without it), but an empty
    /// value is a service with no names: `[]`, as the UI asks before a
    /// service is chosen.
    fn service(self, route: &str) -> Result<String, ApiFailure> {
        self.service_name.map(|s| s.to_lowercase()).ok_or_else(|| {
            ApiFailure::bad_request(format!(
                "{route} needs ?serviceName=NAME; GET /api/v2/services lists the names"
            ))
        })
    }
}

async fn services(State(collector): State<Arc<Collector>>) -> Json<Vec<String>> {
    Json(collector.store().services())
}

async fn span_names(
    State(collector): State<Arc<Collector>>,
    QueryParams(query): QueryParams<ServiceQuery>,
) -> Result<Json<Vec<String>>, ApiFailure> {
    let service = query.service("GET /api/v2/spans")?;
    Ok(Json(collector.store().span_names(&service)))
}

async fn remote_services(
    State(collector): State<Arc<Collector>>,
    QueryParams(query): QueryParams<ServiceQuery>,
) -> Result<Json<Vec<String>>, ApiFailure> {
    let service = query.service("GET /api/v2/remoteServices")?;
    Ok(Json(collector.store().remote_services(&service)))
}

/// `GET /api/v2/autocompleteKeys`: the fixed list, sorted.
async fn autocomplete_keys() -> Json<Vec<&'static str>> {
    Json(AUTOCOMPLETE_KEYS.to_vec())
}

#[derive(Debug, Deserialize)]
struct AutocompleteQuery {
    key: Option<String>,
}

/// `GET /api/v2/autocompleteValues?key=`: the values stored spans have for
/// an autocomplete key, sorted; `[]` for any other key, as in Zipkin.
async fn autocomplete_values(
    State(collector): State<Arc<Collector>>,
    QueryParams(query): QueryParams<AutocompleteQuery>,
) -> Result<Json<Vec<String>>, ApiFailure> {
    let key = query.key.ok_or_else(|| {
        ApiFailure::bad_request(
            "GET /api/v2/autocompleteValues needs ?key=KEY; GET /api/v2/autocompleteKeys \
             lists the keys",
        )
    })?;
    if !AUTOCOMPLETE_KEYS.contains(&key.as_str()) {
        return Ok(Json(Vec::new()));
    }
    let store = collector.store();
    let values: BTreeSet<&str> = store
        .find(&TraceQuery {
            limit: usize::MAX,
            ..TraceQuery::all(now_ms())
        })
        .into_iter()
        .filter_map(|id| store.get(id))
        .flat_map(|trace| trace.spans.iter())
        .filter_map(|span| span.tag(&key))
        .collect();
    Ok(Json(values.into_iter().map(String::from).collect()))
}

// === Zipkin's API: traces ===

/// The query string of `GET /api/v2/traces`, as Zipkin names it.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TracesQuery {
    service_name: Option<String>,
    remote_service_name: Option<String>,
    span_name: Option<String>,
    annotation_query: Option<String>,
    min_duration: Option<u64>,
    max_duration: Option<u64>,
    end_ts: Option<u64>,
    lookback: Option<u64>,
    limit: Option<usize>,
}

impl TracesQuery {
    /// Zipkin's defaults (`endTs` now, `lookback` all the way back to the
    /// epoch, `limit` 10) and Zipkin's 400s (`QueryRequest.Builder.build`):
    /// `endTs`, `limit` and `lookback` above zero, `minDuration` above zero,
    /// `maxDuration` only with `minDuration` and not below it. An empty
    /// value means "not given", as the Zipkin UI sends `spanName=` for "all".
    fn into_query(self) -> Result<TraceQuery, ApiFailure> {
        let bad = |what: &str| {
            ApiFailure::bad_request(format!("GET /api/v2/traces: {what} (Zipkin's rule)"))
        };
        if self.end_ts == Some(0) {
            return Err(bad("endTs must be above 0 (epoch milliseconds)"));
        }
        if self.limit == Some(0) {
            return Err(bad("limit must be above 0"));
        }
        if self.lookback == Some(0) {
            return Err(bad("lookback must be above 0 (milliseconds before endTs)"));
        }
        match (self.min_duration, self.max_duration) {
            (Some(0), _) => return Err(bad("minDuration must be above 0 (microseconds)")),
            (None, Some(_)) => {
                return Err(bad(
                    "maxDuration is only valid with minDuration; add minDuration",
                ));
            }
            (Some(min), Some(max)) if max < min => {
                return Err(bad(&format!(
                    "maxDuration {max} is below minDuration {min}; swap them"
                )));
            }
            _ => {}
        }
        let given = |v: Option<String>| v.filter(|s| !s.is_empty() && s != "all");
        let end_ts_ms = self.end_ts.unwrap_or_else(now_ms);
        Ok(TraceQuery {
            service_name: given(self.service_name),
            remote_service_name: given(self.remote_service_name),
            span_name: given(self.span_name),
            annotation_query: self
                .annotation_query
                .map(|q| TraceQuery::parse_annotation_query(&q))
                .unwrap_or_default(),
            min_duration: self.min_duration,
            max_duration: self.max_duration,
            end_ts_ms,
            lookback_ms: self.lookback.unwrap_or(end_ts_ms),
            limit: self.limit.unwrap_or(10),
        })
    }
}

async fn traces(
    State(collector): State<Arc<Collector>>,
    QueryParams(query): QueryParams<TracesQuery>,
) -> Result<Json<Vec<Vec<Span>>>, ApiFailure> {
    let query = query.into_query()?;
    let store = collector.store();
    let traces = store
        .find(&query)
        .into_iter()
        .filter_map(|id| store.get(id))
        .map(|trace| sorted_spans(&trace.spans))
        .collect();
    Ok(Json(traces))
}

async fn trace(
    State(collector): State<Arc<Collector>>,
    Path(trace_id): Path<String>,
) -> Result<Json<Vec<Span>>, ApiFailure> {
    let id = trace_key(&trace_id)?;
    let store = collector.store();
    match store.get(&id) {
        Some(trace) => Ok(Json(sorted_spans(&trace.spans))),
        None => Err(not_found(&trace_id)),
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TraceManyQuery {
    trace_ids: Option<String>,
}

/// `GET /api/v2/traceMany?traceIds=A,B`: the traces found, in the order
/// asked, missing ones left out. Zipkin's 400s: no ids, an id given twice,
/// or only one (that is `/api/v2/trace/{traceId}`'s job).
async fn trace_many(
    State(collector): State<Arc<Collector>>,
    QueryParams(query): QueryParams<TraceManyQuery>,
) -> Result<Json<Vec<Vec<Span>>>, ApiFailure> {
    const ROUTE: &str = "GET /api/v2/traceMany";
    let raw = query.trace_ids.unwrap_or_default();
    if raw.is_empty() {
        return Err(ApiFailure::bad_request(format!(
            "{ROUTE} needs ?traceIds=ID,ID (two or more trace ids, comma-separated)"
        )));
    }
    let mut ids: Vec<String> = Vec::new();
    for raw_id in raw.split(',') {
        let id = trace_key(raw_id)?;
        if ids.contains(&id) {
            return Err(ApiFailure::bad_request(format!(
                "{ROUTE}: trace id {raw_id} is given twice; list each trace once"
            )));
        }
        ids.push(id);
    }
    if ids.len() == 1 {
        return Err(ApiFailure::bad_request(format!(
            "{ROUTE}: one trace id given; use GET /api/v2/trace/{raw} for a single trace"
        )));
    }
    let store = collector.store();
    Ok(Json(
        ids.iter()
            .filter_map(|id| store.get(id))
            .map(|trace| sorted_spans(&trace.spans))
            .collect(),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DependenciesQuery {
    end_ts: Option<u64>,
    lookback: Option<u64>,
}

/// `GET /api/v2/dependencies?endTs=&lookback=`: links from the traces whose
/// spans all fall in the window (the same window as `/api/v2/traces`).
async fn dependencies(
    State(collector): State<Arc<Collector>>,
    QueryParams(query): QueryParams<DependenciesQuery>,
) -> Result<Json<Vec<DependencyLink>>, ApiFailure> {
    const ROUTE: &str = "GET /api/v2/dependencies";
    let end_ts_ms = match query.end_ts {
        None => {
            return Err(ApiFailure::bad_request(format!(
                "{ROUTE} needs ?endTs=EPOCH_MILLIS (and optionally &lookback=MILLIS)"
            )));
        }
        Some(0) => {
            return Err(ApiFailure::bad_request(format!(
                "{ROUTE}: endTs must be above 0 (epoch milliseconds)"
            )));
        }
        Some(end) => end,
    };
    if query.lookback == Some(0) {
        return Err(ApiFailure::bad_request(format!(
            "{ROUTE}: lookback must be above 0 (milliseconds before endTs)"
        )));
    }
    let window = TraceQuery {
        end_ts_ms,
        lookback_ms: query.lookback.unwrap_or(end_ts_ms),
        limit: usize::MAX,
        ..TraceQuery::all(end_ts_ms)
    };
    let store = collector.store();
    let mut linker = Linker::default();
    for trace in store
        .find(&window)
        .into_iter()
        .filter_map(|id| store.get(id))
    {
        linker.put_trace(&trace.spans);
    }
    Ok(Json(linker.links()))
}

fn sorted_spans(spans: &[Span]) -> Vec<Span> {
    let mut spans = spans.to_vec();
    spans.sort_by_key(|s| (s.timestamp.unwrap_or(u64::MAX), s.id.clone()));
    spans
}

/// A trace id from a URL, normalised the way stored ids are (a 128-bit id
/// with a zero upper half is looked up by its 64-bit form).
fn trace_key(raw: &str) -> Result<String, ApiFailure> {
    normalize_trace_id(raw.trim())
        .map_err(|e| ApiFailure::bad_request(format!("trace id {raw:?}: {e}")))
}

fn not_found(trace_id: &str) -> ApiFailure {
    ApiFailure::new(
        StatusCode::NOT_FOUND,
        format!(
            "trace {trace_id} not found: the collector keeps only the most recent traces \
             (GET /api/v1/collector shows how many); GET /api/v2/traces lists them"
        ),
    )
}

// === micromesh's reading of the traces ===

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SummaryQuery {
    service_name: Option<String>,
    limit: Option<usize>,
    /// Only traces whose chain broke.
    #[serde(default)]
    broken: bool,
}

/// `GET /api/v1/traces`: the newest traces with their findings, no spans.
async fn summaries(
    State(collector): State<Arc<Collector>>,
    QueryParams(query): QueryParams<SummaryQuery>,
) -> Pretty<Vec<TraceAnalysis>> {
    let now = Instant::now();
    let store = collector.store();
    let limit = query.limit.unwrap_or(20);
    let mut find = TraceQuery::all(now_ms());
    find.service_name = query.service_name.filter(|s| !s.is_empty());
    // Broken traces may be rare: look at more of them, then cut.
    find.limit = if query.broken { usize::MAX } else { limit };
    let mut found: Vec<TraceAnalysis> = store
        .find(&find)
        .into_iter()
        .filter_map(|id| analyze(&store, id, now, false))
        .filter(|a| !query.broken || a.broken)
        .collect();
    found.truncate(limit);
    Pretty(found)
}

/// `GET /api/v1/traces/{traceId}/analysis`: the waterfall and its problems.
async fn trace_analysis(
    State(collector): State<Arc<Collector>>,
    Path(trace_id): Path<String>,
) -> Result<Pretty<TraceAnalysis>, ApiFailure> {
    let id = trace_key(&trace_id)?;
    let store = collector.store();
    analyze(&store, &id, Instant::now(), true)
        .map(Pretty)
        .ok_or_else(|| not_found(&trace_id))
}

async fn stats(State(collector): State<Arc<Collector>>) -> Pretty<CollectorStats> {
    Pretty(collector.store().stats())
}

//! The trace collector: Zipkin's HTTP API on the control plane's port.
//!
//! Every sidecar sends its spans here (`POST /api/v2/spans`, Zipkin v2
//! JSON), and the dashboard and `meshctl traces` read them back. Istio ships
//! no collector of its own: its proxies report to a Zipkin or Jaeger that
//! you install next to it. micromesh embeds a small one so the workshop
//! needs nothing else, and speaks Zipkin's API so a real Zipkin or Jaeger
//! can take its place by changing one address (`MESH_ZIPKIN_URL` on the
//! sidecars).
//!
//! ```text
//! POST /api/v2/spans                      a JSON array of spans -> 202
//! GET  /api/v2/services                   service names
//! GET  /api/v2/spans?serviceName=S        span names of S
//! GET  /api/v2/remoteServices?serviceName=S
//! GET  /api/v2/traces?serviceName=&spanName=&annotationQuery=&minDuration=&maxDuration=&endTs=&lookback=&limit=
//!                                         a list of traces, each a list of spans, newest first
//! GET  /api/v2/trace/{traceId}            one trace's spans
//! ```
//!
//! and micromesh's own reading of them (see `analysis.rs`):
//!
//! ```text
//! GET  /api/v1/traces?serviceName=&limit=&broken=true   summaries with broken-chain findings
//! GET  /api/v1/traces/{traceId}/analysis  the waterfall (spans as a tree) and its problems
//! GET  /api/v1/collector                  how many traces and spans are kept, dropped, evicted
//! ```

mod analysis;
mod span;
mod store;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use serde::Deserialize;

pub use analysis::{Problem, ProblemKind, TraceAnalysis, WaterfallSpan, analyze};
pub use span::{Annotation, Endpoint, Kind, Span, SpanError, parse_batch};
pub use store::{CollectorSettings, CollectorStats, Store, TraceQuery};

use crate::api::{ApiFailure, Pretty, QueryParams};

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

    /// Store a posted batch, or say which span was wrong.
    pub fn post(&self, body: &[u8]) -> Result<usize, String> {
        let spans = parse_batch(body)?;
        let count = spans.len();
        self.store().insert(spans, Instant::now());
        Ok(count)
    }
}

/// Milliseconds since the Unix epoch, the unit of Zipkin's `endTs`.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The collector's routes, Zipkin's and micromesh's.
pub fn router(collector: Arc<Collector>) -> Router {
    Router::new()
        .route("/api/v2/spans", get(span_names).post(post_spans))
        .route("/api/v2/services", get(services))
        .route("/api/v2/remoteServices", get(remote_services))
        .route("/api/v2/traces", get(traces))
        .route("/api/v2/trace/{trace_id}", get(trace))
        .route("/api/v1/traces", get(summaries))
        .route("/api/v1/traces/{trace_id}/analysis", get(trace_analysis))
        .route("/api/v1/collector", get(stats))
        .with_state(collector)
}

// === Zipkin's API ===

/// `POST /api/v2/spans`: 202 Accepted, like Zipkin; 400 names the bad span.
async fn post_spans(State(collector): State<Arc<Collector>>, body: Bytes) -> Response {
    match collector.post(&body) {
        Ok(count) => {
            tracing::trace!(count, "spans accepted");
            StatusCode::ACCEPTED.into_response()
        }
        Err(message) => {
            tracing::debug!("spans refused: {message}");
            ApiFailure::bad_request(format!(
                "POST /api/v2/spans: {message}; nothing from this batch was stored"
            ))
            .into_response()
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ServiceQuery {
    service_name: Option<String>,
}

impl ServiceQuery {
    fn required(self, route: &str) -> Result<String, ApiFailure> {
        self.service_name
            .filter(|s| !s.is_empty())
            .map(|s| s.to_lowercase())
            .ok_or_else(|| {
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
    let service = query.required("GET /api/v2/spans")?;
    Ok(Json(collector.store().span_names(&service)))
}

async fn remote_services(
    State(collector): State<Arc<Collector>>,
    QueryParams(query): QueryParams<ServiceQuery>,
) -> Result<Json<Vec<String>>, ApiFailure> {
    let service = query.required("GET /api/v2/remoteServices")?;
    Ok(Json(collector.store().remote_services(&service)))
}

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
    /// Zipkin's defaults: `endTs` now, `lookback` all the way back
    /// (`endTs`), `limit` 10. An empty value means "not given", as the
    /// Zipkin UI sends `spanName=` for "all".
    fn into_query(self) -> TraceQuery {
        let given = |v: Option<String>| v.filter(|s| !s.is_empty() && s != "all");
        let end_ts_ms = self.end_ts.unwrap_or_else(now_ms);
        TraceQuery {
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
        }
    }
}

async fn traces(
    State(collector): State<Arc<Collector>>,
    QueryParams(query): QueryParams<TracesQuery>,
) -> Json<Vec<Vec<Span>>> {
    let query = query.into_query();
    let store = collector.store();
    let traces = store
        .find(&query)
        .into_iter()
        .filter_map(|id| store.get(id))
        .map(|trace| sorted_spans(&trace.spans))
        .collect();
    Json(traces)
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

fn sorted_spans(spans: &[Span]) -> Vec<Span> {
    let mut spans = spans.to_vec();
    spans.sort_by_key(|s| (s.timestamp.unwrap_or(u64::MAX), s.id.clone()));
    spans
}

/// A trace id from a URL, normalised the way stored ids are.
fn trace_key(raw: &str) -> Result<String, ApiFailure> {
    Span {
        trace_id: raw.to_string(),
        id: "1".into(),
        ..Span::default()
    }
    .normalize(0)
    .map(|span| span.trace_id)
    .map_err(|e| ApiFailure::bad_request(format!("trace id {raw:?}: {}", e.message)))
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

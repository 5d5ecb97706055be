//! The collector's memory: the most recent traces, bounded, and the Zipkin
//! queries over them.
//!
//! A real Zipkin keeps spans in Elasticsearch or Cassandra; for a workshop a
//! few thousand recent traces in memory are plenty, as long as the memory
//! stays bounded whatever the traffic: at most `max_traces` traces (the
//! least recently updated one goes first) and at most `max_spans_per_trace`
//! spans in each (later ones are dropped and counted).
//!
//! Two small interval indexes serve the broken-chain analysis
//! (`analysis.rs`): SERVER spans by the proxy instance that recorded them,
//! and CLIENT spans by the service they called. They answer "which span of
//! this instance was open while that one ran?" without scanning every trace.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::span::{Kind, Span};

/// How the collector bounds its memory.
#[derive(Clone, Debug)]
pub struct CollectorSettings {
    /// Traces kept; the least recently updated is evicted first.
    pub max_traces: usize,
    /// Spans kept per trace; later spans of a full trace are dropped.
    pub max_spans_per_trace: usize,
    /// How long a trace must go without a new span before a missing parent
    /// counts as a broken chain. A caller's CLIENT span ends after its
    /// callee's SERVER span, so it is normal for a child to arrive first:
    /// the sidecars send a batch every 500 ms.
    pub settle: Duration,
}

impl Default for CollectorSettings {
    fn default() -> Self {
        CollectorSettings {
            max_traces: 1_000,
            max_spans_per_trace: 1_000,
            settle: Duration::from_secs(2),
        }
    }
}

/// Counters for `GET /api/v1/collector`.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CollectorStats {
    pub traces: usize,
    pub spans: usize,
    pub spans_accepted: u64,
    pub spans_dropped: u64,
    pub traces_evicted: u64,
    pub max_traces: usize,
    pub max_spans_per_trace: usize,
}

/// One stored trace.
#[derive(Debug)]
pub struct Trace {
    /// Position in the recency order.
    seq: u64,
    pub spans: Vec<Span>,
    /// When the last span arrived.
    pub updated: Instant,
    /// Spans refused because the trace was full.
    pub dropped: u64,
}

impl Trace {
    /// Earliest span start (µs since the epoch), if any span has one.
    pub fn start(&self) -> Option<u64> {
        self.spans.iter().filter_map(|s| s.timestamp).min()
    }

    /// From the earliest start to the latest end, in µs.
    pub fn duration(&self) -> u64 {
        let start = self.start().unwrap_or(0);
        let end = self
            .spans
            .iter()
            .filter_map(Span::interval)
            .map(|(_, end)| end)
            .max()
            .unwrap_or(start);
        end.saturating_sub(start)
    }
}

/// A span found in an index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Located {
    pub trace_id: String,
    pub span_id: String,
    pub start: u64,
    pub end: u64,
}

/// Spans with a known interval, grouped by a key (an instance, a service).
#[derive(Debug, Default)]
struct IntervalIndex {
    by_key: HashMap<String, BTreeMap<(u64, String, String), u64>>,
}

impl IntervalIndex {
    fn insert(&mut self, key: &str, span: &Span) {
        if let Some((start, end)) = span.interval() {
            self.by_key
                .entry(key.to_string())
                .or_default()
                .insert((start, span.trace_id.clone(), span.id.clone()), end);
        }
    }

    fn remove(&mut self, key: &str, span: &Span) {
        if let (Some(entries), Some((start, _))) = (self.by_key.get_mut(key), span.interval()) {
            entries.remove(&(start, span.trace_id.clone(), span.id.clone()));
            if entries.is_empty() {
                self.by_key.remove(key);
            }
        }
    }

    /// Spans under `key` whose interval contains `[start, end]`, give or
    /// take `slack` µs, newest start first. Only spans that started at most
    /// `lookback` µs before `start` are considered.
    fn containing(
        &self,
        key: &str,
        start: u64,
        end: u64,
        slack: u64,
        lookback: u64,
    ) -> Vec<Located> {
        let Some(entries) = self.by_key.get(key) else {
            return Vec::new();
        };
        let from = (start.saturating_sub(lookback), String::new(), String::new());
        let to = (start.saturating_add(slack), String::new(), String::new());
        entries
            .range(from..to)
            .rev()
            .filter(|(_, outer_end)| outer_end.saturating_add(slack) >= end)
            .map(|((outer_start, trace_id, span_id), outer_end)| Located {
                trace_id: trace_id.clone(),
                span_id: span_id.clone(),
                start: *outer_start,
                end: *outer_end,
            })
            .collect()
    }
}

impl IntervalIndex {
    /// Spans under `key` that lie inside `[start, end]`, give or take `slack`.
    fn within(&self, key: &str, start: u64, end: u64, slack: u64) -> Vec<Located> {
        let Some(entries) = self.by_key.get(key) else {
            return Vec::new();
        };
        let from = (start.saturating_sub(slack), String::new(), String::new());
        let to = (end.saturating_add(slack), String::new(), String::new());
        entries
            .range(from..to)
            .filter(|(_, inner_end)| **inner_end <= end.saturating_add(slack))
            .map(|((inner_start, trace_id, span_id), inner_end)| Located {
                trace_id: trace_id.clone(),
                span_id: span_id.clone(),
                start: *inner_start,
                end: *inner_end,
            })
            .collect()
    }
}

/// Everything the collector holds.
#[derive(Debug)]
pub struct Store {
    settings: CollectorSettings,
    traces: HashMap<String, Trace>,
    /// seq -> trace id, oldest first.
    recency: BTreeMap<u64, String>,
    next_seq: u64,
    servers_by_instance: IntervalIndex,
    clients_by_remote: IntervalIndex,
    /// CLIENT spans without a parent (trace roots), by instance.
    client_roots_by_instance: IntervalIndex,
    spans: usize,
    accepted: u64,
    dropped: u64,
    evicted: u64,
}

// === impl Store ===

impl Store {
    pub fn new(settings: CollectorSettings) -> Store {
        Store {
            settings,
            traces: HashMap::new(),
            recency: BTreeMap::new(),
            next_seq: 0,
            servers_by_instance: IntervalIndex::default(),
            clients_by_remote: IntervalIndex::default(),
            client_roots_by_instance: IntervalIndex::default(),
            spans: 0,
            accepted: 0,
            dropped: 0,
            evicted: 0,
        }
    }

    pub fn settings(&self) -> &CollectorSettings {
        &self.settings
    }

    /// Store a batch of normalised spans (see `span::parse_batch`).
    pub fn insert(&mut self, spans: Vec<Span>, now: Instant) {
        for span in spans {
            self.insert_one(span, now);
        }
        while self.traces.len() > self.settings.max_traces {
            let Some((_, oldest)) = self.recency.pop_first() else {
                break;
            };
            if let Some(trace) = self.traces.remove(&oldest) {
                for span in &trace.spans {
                    self.unindex(span);
                }
                self.spans -= trace.spans.len();
                self.evicted += 1;
            }
        }
    }

    fn insert_one(&mut self, span: Span, now: Instant) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let trace = self
            .traces
            .entry(span.trace_id.clone())
            .or_insert_with(|| Trace {
                seq,
                spans: Vec::new(),
                updated: now,
                dropped: 0,
            });
        // Most recently updated goes to the back of the eviction queue.
        self.recency.remove(&trace.seq);
        trace.seq = seq;
        trace.updated = now;
        self.recency.insert(seq, span.trace_id.clone());

        // The same span sent twice (a retried batch) replaces itself.
        let duplicate = trace
            .spans
            .iter()
            .position(|s| s.id == span.id && s.kind == span.kind);
        if let Some(at) = duplicate {
            let old = std::mem::replace(&mut trace.spans[at], span.clone());
            self.unindex(&old);
            self.index(&span);
            self.accepted += 1;
            return;
        }
        if trace.spans.len() >= self.settings.max_spans_per_trace {
            trace.dropped += 1;
            self.dropped += 1;
            return;
        }
        trace.spans.push(span.clone());
        self.spans += 1;
        self.accepted += 1;
        self.index(&span);
    }

    fn index(&mut self, span: &Span) {
        match span.kind {
            Some(Kind::Server) => {
                if let Some(instance) = span.instance() {
                    self.servers_by_instance.insert(instance, span);
                }
            }
            Some(Kind::Client) => {
                if let Some(remote) = span.remote_service() {
                    self.clients_by_remote.insert(remote, span);
                }
                if let (None, Some(instance)) = (&span.parent_id, span.instance()) {
                    self.client_roots_by_instance.insert(instance, span);
                }
            }
            _ => {}
        }
    }

    fn unindex(&mut self, span: &Span) {
        match span.kind {
            Some(Kind::Server) => {
                if let Some(instance) = span.instance() {
                    self.servers_by_instance.remove(instance, span);
                }
            }
            Some(Kind::Client) => {
                if let Some(remote) = span.remote_service() {
                    self.clients_by_remote.remove(remote, span);
                }
                if let (None, Some(instance)) = (&span.parent_id, span.instance()) {
                    self.client_roots_by_instance.remove(instance, span);
                }
            }
            _ => {}
        }
    }

    pub fn stats(&self) -> CollectorStats {
        CollectorStats {
            traces: self.traces.len(),
            spans: self.spans,
            spans_accepted: self.accepted,
            spans_dropped: self.dropped,
            traces_evicted: self.evicted,
            max_traces: self.settings.max_traces,
            max_spans_per_trace: self.settings.max_spans_per_trace,
        }
    }

    pub fn get(&self, trace_id: &str) -> Option<&Trace> {
        self.traces.get(trace_id)
    }

    /// SERVER spans recorded by `instance` that were open during `[start, end]`.
    pub fn servers_containing(&self, instance: &str, start: u64, end: u64) -> Vec<Located> {
        self.servers_by_instance
            .containing(instance, start, end, SLACK_US, LOOKBACK_US)
    }

    /// CLIENT spans that called `service` and were open during `[start, end]`.
    pub fn clients_containing(&self, service: &str, start: u64, end: u64) -> Vec<Located> {
        self.clients_by_remote
            .containing(service, start, end, SLACK_US, LOOKBACK_US)
    }

    /// CLIENT root spans recorded by `instance` during `[start, end]`:
    /// calls its app made that started a trace of their own.
    pub fn client_roots_within(&self, instance: &str, start: u64, end: u64) -> Vec<Located> {
        self.client_roots_by_instance
            .within(instance, start, end, SLACK_US)
    }

    // === Zipkin queries ===

    /// `GET /api/v2/services`: every local service name, sorted.
    pub fn services(&self) -> Vec<String> {
        let names: BTreeSet<&str> = self.all_spans().filter_map(Span::service).collect();
        names.into_iter().map(String::from).collect()
    }

    /// `GET /api/v2/spans?serviceName=`: the span names of a service.
    pub fn span_names(&self, service: &str) -> Vec<String> {
        let names: BTreeSet<&str> = self
            .all_spans()
            .filter(|s| s.service() == Some(service))
            .filter_map(|s| s.name.as_deref())
            .collect();
        names.into_iter().map(String::from).collect()
    }

    /// `GET /api/v2/remoteServices?serviceName=`: who a service called.
    pub fn remote_services(&self, service: &str) -> Vec<String> {
        let names: BTreeSet<&str> = self
            .all_spans()
            .filter(|s| s.service() == Some(service))
            .filter_map(Span::remote_service)
            .collect();
        names.into_iter().map(String::from).collect()
    }

    fn all_spans(&self) -> impl Iterator<Item = &Span> {
        self.traces.values().flat_map(|t| t.spans.iter())
    }

    /// `GET /api/v2/traces`: the traces that match, newest first, at most
    /// `query.limit`. Returns trace ids; see [`Store::get`].
    pub fn find(&self, query: &TraceQuery) -> Vec<&str> {
        let window_end = query.end_ts_ms.saturating_mul(1_000);
        let window_start = window_end.saturating_sub(query.lookback_ms.saturating_mul(1_000));
        let mut found: Vec<(u64, &str)> = self
            .traces
            .iter()
            .filter(|(_, trace)| {
                // Zipkin: every span's timestamp within [endTs - lookback, endTs].
                trace
                    .spans
                    .iter()
                    .filter_map(|s| s.timestamp)
                    .all(|ts| ts >= window_start && ts <= window_end)
            })
            .filter(|(_, trace)| query.matches(&trace.spans))
            .map(|(id, trace)| (trace.start().unwrap_or(0), id.as_str()))
            .collect();
        // Newest first; equal starts by id so the order is stable.
        found.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
        found.truncate(query.limit);
        found.into_iter().map(|(_, id)| id).collect()
    }
}

/// How close two clocks' readings of "contains" must be: spans of one
/// instance share a clock, but timestamps are rounded to microseconds and a
/// sidecar may stamp its SERVER span a hair after the app's first call.
const SLACK_US: u64 = 1_000;
/// How far back to look for a span that contains another: five minutes.
const LOOKBACK_US: u64 = 300_000_000;

/// The query of `GET /api/v2/traces`, with Zipkin's defaults applied.
#[derive(Clone, Debug, PartialEq)]
pub struct TraceQuery {
    pub service_name: Option<String>,
    pub remote_service_name: Option<String>,
    pub span_name: Option<String>,
    /// `http.method=GET and error`: tag equality, or a tag key / annotation
    /// value that must be present.
    pub annotation_query: Vec<(String, Option<String>)>,
    pub min_duration: Option<u64>,
    pub max_duration: Option<u64>,
    /// Milliseconds since the epoch.
    pub end_ts_ms: u64,
    pub lookback_ms: u64,
    pub limit: usize,
}

impl TraceQuery {
    /// Everything, as of `now_ms`, with Zipkin's default limit of 10.
    pub fn all(now_ms: u64) -> TraceQuery {
        TraceQuery {
            service_name: None,
            remote_service_name: None,
            span_name: None,
            annotation_query: Vec::new(),
            min_duration: None,
            max_duration: None,
            end_ts_ms: now_ms,
            lookback_ms: now_ms,
            limit: 10,
        }
    }

    /// Parse Zipkin's `annotationQuery`: terms joined by ` and `.
    pub fn parse_annotation_query(text: &str) -> Vec<(String, Option<String>)> {
        text.split(" and ")
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(|term| match term.split_once('=') {
                Some((k, v)) => (k.trim().to_string(), Some(v.trim().to_string())),
                None => (term.to_string(), None),
            })
            .collect()
    }

    /// Zipkin's rule: one span of the trace must satisfy every condition
    /// given together with the service name (span name, tags, duration).
    fn matches(&self, spans: &[Span]) -> bool {
        spans.iter().any(|span| self.matches_span(span))
    }

    fn matches_span(&self, span: &Span) -> bool {
        // Zipkin stores names lowercased, and so compares them.
        let differs = |wanted: &Option<String>, actual: Option<&str>| {
            wanted
                .as_ref()
                .is_some_and(|w| actual != Some(w.to_lowercase().as_str()))
        };
        if differs(&self.service_name, span.service())
            || differs(&self.remote_service_name, span.remote_service())
            || differs(&self.span_name, span.name.as_deref())
        {
            return false;
        }
        let duration = span.duration.unwrap_or(0);
        if self.min_duration.is_some_and(|min| duration < min)
            || self.max_duration.is_some_and(|max| duration > max)
        {
            return false;
        }
        self.annotation_query
            .iter()
            .all(|(key, value)| match value {
                Some(value) => span.tag(key) == Some(value.as_str()),
                None => {
                    span.tags.contains_key(key) || span.annotations.iter().any(|a| &a.value == key)
                }
            })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::collector::span::Endpoint;

    /// A hand-made span: `kind` `SERVER`/`CLIENT`, times in µs.
    pub fn span(trace: &str, id: &str, parent: Option<&str>, kind: Kind, service: &str) -> Span {
        Span {
            trace_id: trace.to_string(),
            id: id.to_string(),
            parent_id: parent.map(String::from),
            kind: Some(kind),
            name: Some(format!("{service}:8080/")),
            timestamp: Some(1_000_000),
            duration: Some(1_000),
            local_endpoint: Some(Endpoint {
                service_name: Some(service.to_string()),
                ..Endpoint::default()
            }),
            tags: [("instance".to_string(), format!("{service}-v1-00001"))].into(),
            ..Span::default()
        }
        .normalize(0)
        .unwrap()
    }

    fn settings(max_traces: usize, max_spans: usize) -> CollectorSettings {
        CollectorSettings {
            max_traces,
            max_spans_per_trace: max_spans,
            settle: Duration::from_secs(2),
        }
    }

    #[test]
    fn the_least_recently_updated_trace_is_evicted_first() {
        let now = Instant::now();
        let mut store = Store::new(settings(2, 10));
        store.insert(vec![span("a", "1", None, Kind::Client, "x")], now);
        store.insert(vec![span("b", "1", None, Kind::Client, "x")], now);
        // "a" gets a new span: "b" is now the oldest.
        store.insert(vec![span("a", "2", Some("1"), Kind::Server, "y")], now);
        store.insert(vec![span("c", "1", None, Kind::Client, "x")], now);
        assert!(store.get("000000000000000a").is_some());
        assert!(store.get("000000000000000b").is_none());
        assert!(store.get("000000000000000c").is_some());
        let stats = store.stats();
        assert_eq!((stats.traces, stats.spans, stats.traces_evicted), (2, 3, 1));
    }

    #[test]
    fn a_full_trace_drops_and_counts_further_spans() {
        let now = Instant::now();
        let mut store = Store::new(settings(10, 2));
        let spans = (1..=5)
            .map(|i| span("a", &i.to_string(), None, Kind::Client, "x"))
            .collect();
        store.insert(spans, now);
        let trace = store.get("000000000000000a").unwrap();
        assert_eq!((trace.spans.len(), trace.dropped), (2, 3));
        assert_eq!(store.stats().spans_dropped, 3);
    }

    #[test]
    fn a_span_sent_twice_is_stored_once() {
        let now = Instant::now();
        let mut store = Store::new(settings(10, 10));
        let s = span("a", "1", None, Kind::Server, "x");
        store.insert(vec![s.clone(), s], now);
        assert_eq!(store.get("000000000000000a").unwrap().spans.len(), 1);
        assert_eq!(
            store
                .servers_containing("x-v1-00001", 1_000_100, 1_000_200)
                .len(),
            1
        );
    }

    #[test]
    fn eviction_also_empties_the_indexes() {
        let now = Instant::now();
        let mut store = Store::new(settings(1, 10));
        store.insert(vec![span("a", "1", None, Kind::Server, "x")], now);
        store.insert(vec![span("b", "1", None, Kind::Client, "y")], now);
        assert!(
            store
                .servers_containing("x-v1-00001", 1_000_100, 1_000_200)
                .is_empty()
        );
    }

    #[test]
    fn zipkin_queries_filter_by_service_name_tags_duration_and_time() {
        let now = Instant::now();
        let mut store = Store::new(settings(10, 10));
        let mut slow = span("a", "1", None, Kind::Server, "helloworld-service");
        slow.duration = Some(50_000);
        slow.tags.insert("http.status_code".into(), "503".into());
        slow.tags.insert("error".into(), "true".into());
        let mut later = span("b", "1", None, Kind::Server, "guestbook-ui");
        later.timestamp = Some(2_000_000);
        store.insert(vec![slow, later], now);

        assert_eq!(store.services(), ["guestbook-ui", "helloworld-service"]);
        assert_eq!(
            store.span_names("helloworld-service"),
            ["helloworld-service:8080/"]
        );

        // Newest first, all of them.
        let all = TraceQuery::all(10_000);
        assert_eq!(store.find(&all), ["000000000000000b", "000000000000000a"]);
        let mut q = all.clone();
        q.service_name = Some("Helloworld-Service".into());
        assert_eq!(store.find(&q), ["000000000000000a"]);
        q.annotation_query = TraceQuery::parse_annotation_query("error and http.status_code=503");
        assert_eq!(store.find(&q).len(), 1);
        q.annotation_query = TraceQuery::parse_annotation_query("http.status_code=200");
        assert!(store.find(&q).is_empty());
        let mut q = all.clone();
        q.min_duration = Some(10_000);
        assert_eq!(store.find(&q), ["000000000000000a"]);
        // endTs 1.5 s, lookback 1 s: only the trace that started at 1 s.
        let mut q = all.clone();
        q.end_ts_ms = 1_500;
        q.lookback_ms = 1_000;
        assert_eq!(store.find(&q), ["000000000000000a"]);
        let mut q = all;
        q.limit = 1;
        assert_eq!(store.find(&q).len(), 1);
    }
}

//! Reading a trace: its waterfall (spans as a tree, in time order) and the
//! places where its chain broke.
//!
//! A sidecar can only continue a trace if the request it sees carries the
//! trace headers. On the inbound side that is the caller sidecar's job; on
//! the outbound side it is the **app's** job: the app receives
//! `traceparent` / `x-b3-*` on its incoming request and must copy them onto
//! the requests it makes while serving it. Istio says the same ("Although
//! Istio proxies are able to automatically send spans, they need some hints
//! to tie together the entire trace"): an app that does not forward them
//! splits one user request into several unrelated traces.
//!
//! That leaves fingerprints we can find after the fact:
//!
//! ```text
//! trace A:  ingressgateway CLIENT -> guestbook-ui SERVER          (no children: suspicious)
//! trace B:  guestbook-ui CLIENT (no parent!) -> helloworld-service SERVER
//!           ^ recorded by the same guestbook-ui instance, *while* its SERVER span of A was open
//! ```
//!
//! - **headersNotForwarded**: a CLIENT span with no parent, whose instance
//!   was serving a request of another trace at that moment. Reported on the
//!   new trace (B) and, as **brokenDownstream**, on the trace it came from (A).
//! - **missingParent**: a span names a parent that no span of its trace has
//!   (a hop that does not report to this collector, or lost spans).
//! - **contextNotPropagated**: a SERVER span with no parent while a CLIENT
//!   span of another trace was calling that service at that moment: the
//!   caller's proxy did not pass the context on.
//!
//! A child's span usually arrives before its parent's (the parent ends
//! last), so a trace is only judged once it is **settled**: either it is
//! [complete](is_complete) (nothing can be missing), or no span has arrived
//! for `settle`. Until then a missing parent is reported as `pending` and
//! the trace is "in progress".

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Instant;

use serde::Serialize;

use super::span::{Kind, Span};
use super::store::{Located, Store, Trace};

/// One trace, read: what the dashboard's waterfall and `meshctl traces` show.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TraceAnalysis {
    pub trace_id: String,
    /// Earliest span start, µs since the epoch.
    pub start: u64,
    /// µs from the earliest start to the latest end.
    pub duration: u64,
    pub span_count: usize,
    /// The services that recorded a span, in order of first appearance.
    pub services: Vec<String>,
    /// The first root's service and name: what the trace is "about".
    pub root_service: String,
    pub root_name: String,
    /// Some span failed (5xx, `error` tag).
    pub error: bool,
    /// Every span arrived ([`is_complete`]).
    pub complete: bool,
    /// Complete, or no span arrived for the settle time: missing parents
    /// are final. A trace that is not settled is "in progress".
    pub settled: bool,
    /// Spans the collector dropped because the trace was full.
    pub dropped_spans: u64,
    /// The chain broke somewhere (a problem that is not pending).
    pub broken: bool,
    pub problems: Vec<Problem>,
    /// Depth-first, children in start order; empty in trace lists.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub spans: Vec<WaterfallSpan>,
}

/// A span in the waterfall.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WaterfallSpan {
    #[serde(flatten)]
    pub span: Span,
    /// 0 for a root.
    pub depth: usize,
    /// µs after the trace's start.
    pub offset: u64,
    /// The kinds of the problems found at this span.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<ProblemKind>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum ProblemKind {
    HeadersNotForwarded,
    BrokenDownstream,
    MissingParent,
    ContextNotPropagated,
}

/// Where and why a chain broke.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Problem {
    pub kind: ProblemKind,
    /// The span where it shows.
    pub span_id: String,
    /// The service the span belongs to.
    pub service: String,
    /// The other trace involved, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub related_trace_id: Option<String>,
    /// Not final yet: the trace is still receiving spans.
    pub pending: bool,
    pub message: String,
}

/// Analyse one stored trace, as of `now`. `with_spans`: include the
/// waterfall (a trace list leaves it out).
pub fn analyze(
    store: &Store,
    trace_id: &str,
    now: Instant,
    with_spans: bool,
) -> Option<TraceAnalysis> {
    let trace = store.get(trace_id)?;
    let complete = is_complete(&trace.spans);
    let settled =
        complete || now.saturating_duration_since(trace.updated) >= store.settings().settle;
    let start = trace.start().unwrap_or(0);
    let ids: HashSet<&str> = trace.spans.iter().map(|s| s.id.as_str()).collect();

    let mut problems = Vec::new();
    for span in &trace.spans {
        find_problems(store, trace_id, span, &ids, settled, &mut problems);
    }
    let mut services = Vec::new();
    let mut seen = BTreeSet::new();
    for service in sorted(trace.spans.iter())
        .into_iter()
        .filter_map(Span::service)
    {
        if seen.insert(service) {
            services.push(service.to_string());
        }
    }
    let order = waterfall(trace);
    let root = order.first().map(|(span, _)| *span);
    let spans = if with_spans {
        order
            .iter()
            .map(|(span, depth)| WaterfallSpan {
                span: (*span).clone(),
                depth: *depth,
                offset: span.timestamp.unwrap_or(start).saturating_sub(start),
                problems: problems
                    .iter()
                    .filter(|p| p.span_id == span.id)
                    .map(|p| p.kind)
                    .collect(),
            })
            .collect()
    } else {
        Vec::new()
    };
    Some(TraceAnalysis {
        trace_id: trace_id.to_string(),
        start,
        duration: trace.duration(),
        span_count: trace.spans.len(),
        services,
        root_service: root.and_then(Span::service).unwrap_or("").to_string(),
        root_name: root.and_then(|s| s.name.clone()).unwrap_or_default(),
        error: trace.spans.iter().any(Span::is_error),
        complete,
        settled,
        dropped_spans: trace.dropped,
        broken: problems.iter().any(|p| !p.pending),
        problems,
        spans,
    })
}

/// A trace is **complete** when all of its spans have arrived, which we
/// can tell without waiting when:
///
/// - it has a root (a span with no parent): the gateway's or the first
///   caller's span, which ends last and so arrives last;
/// - every span's parent is in the trace;
/// - every CLIENT span that reached an endpoint (tag `upstream_address`)
///   has a span under it: the callee's SERVER span.
///
/// A sidecar sends its spans in the order they ended and a parent ends
/// after its children, so nothing can be missing then. A call to a host
/// that reports no spans here (outside the mesh) never gets its SERVER
/// span: such a trace is not complete and settles after the quiet time.
pub fn is_complete(spans: &[Span]) -> bool {
    let ids: HashSet<&str> = spans.iter().map(|s| s.id.as_str()).collect();
    let parents: HashSet<&str> = spans
        .iter()
        .filter_map(|s| s.parent_id.as_deref())
        .collect();
    let has_root = spans.iter().any(|s| s.parent_id.is_none());
    let parents_present = parents.iter().all(|p| ids.contains(p));
    let calls_answered = spans
        .iter()
        .filter(|s| s.kind == Some(Kind::Client) && s.tag("upstream_address").is_some())
        .all(|s| parents.contains(s.id.as_str()));
    has_root && parents_present && calls_answered
}

fn find_problems(
    store: &Store,
    trace_id: &str,
    span: &Span,
    ids: &HashSet<&str>,
    settled: bool,
    problems: &mut Vec<Problem>,
) {
    let service = span.service().unwrap_or("an unnamed service").to_string();
    let instance = span.instance();
    let interval = span.interval();
    let other = |found: Vec<Located>| -> Option<Located> {
        // The tightest enclosing span of *another* trace is the likeliest.
        found.into_iter().find(|l| l.trace_id != trace_id)
    };

    match (&span.parent_id, span.kind) {
        // A parent that is not there.
        (Some(parent), kind) if !ids.contains(parent.as_str()) => {
            let message = if !settled {
                format!(
                    "trace {trace_id}: span {} of {service} names parent {parent}, which has not \
                     arrived yet (sidecars report in batches; the parent's span ends last)",
                    span.id
                )
            } else if kind == Some(Kind::Client) {
                format!(
                    "trace {trace_id}: span {} of {service} names a parent {parent} that no span in \
                     the trace has: the chain broke inside {service}, whose own SERVER span was not \
                     reported (was it dropped by a full queue, or does {service}'s sidecar report \
                     to another collector?)",
                    span.id
                )
            } else {
                let caller = interval
                    .and_then(|(s, e)| other(store.clients_containing(&service, s, e)))
                    .and_then(|l| caller_service(store, &l));
                let between = match &caller {
                    Some(caller) => format!("between {caller} and {service}"),
                    None => format!("between {service}'s caller and {service}"),
                };
                format!(
                    "trace {trace_id}: span {} of service {service} names a parent {parent} that no \
                     span in the trace has: the chain broke {between} (did {service}'s caller \
                     forward traceparent / x-b3-* headers, and does its sidecar report spans here?)",
                    span.id
                )
            };
            problems.push(Problem {
                kind: ProblemKind::MissingParent,
                span_id: span.id.clone(),
                service: service.clone(),
                related_trace_id: None,
                pending: !settled,
                message,
            });
        }
        // A call that started a new trace while its app was serving another.
        (None, Some(Kind::Client)) => {
            let (Some(instance), Some((s, e))) = (instance, interval) else {
                return;
            };
            if let Some(outer) = other(store.servers_containing(instance, s, e)) {
                let callee = span.remote_service().unwrap_or("another service");
                problems.push(Problem {
                    kind: ProblemKind::HeadersNotForwarded,
                    span_id: span.id.clone(),
                    related_trace_id: Some(outer.trace_id.clone()),
                    pending: false,
                    message: format!(
                        "trace {trace_id} starts with a call from {service} to {callee} (span {}), \
                         made while {service} ({instance}) was serving trace {} (span {}): \
                         {service}'s app did not forward the trace headers (traceparent / x-b3-*) \
                         of its incoming request, so its sidecar started a new trace; the chain \
                         broke between {service} and {callee}",
                        span.id, outer.trace_id, outer.span_id
                    ),
                    service: service.clone(),
                });
            }
        }
        // A server span that starts a trace while someone was calling it.
        (None, Some(Kind::Server)) => {
            let Some((s, e)) = interval else { return };
            if let Some(outer) = other(store.clients_containing(&service, s, e)) {
                let caller = caller_service(store, &outer).unwrap_or_else(|| "a caller".into());
                problems.push(Problem {
                    kind: ProblemKind::ContextNotPropagated,
                    span_id: span.id.clone(),
                    related_trace_id: Some(outer.trace_id.clone()),
                    pending: false,
                    message: format!(
                        "trace {trace_id}: span {} of {service} has no parent, but {caller} was \
                         calling {service} at that moment in trace {} (span {}): the request \
                         reached {service} without trace context; the chain broke between \
                         {caller} and {service} (does {caller}'s proxy propagate traceparent / \
                         x-b3-*?)",
                        span.id, outer.trace_id, outer.span_id
                    ),
                    service: service.clone(),
                });
            }
        }
        _ => {}
    }

    // The other side of headersNotForwarded: while this SERVER span was
    // open, its instance made calls that started traces of their own.
    if let (Some(Kind::Server), Some(instance), Some((s, e))) = (span.kind, instance, interval) {
        let mut reported = HashSet::new();
        for inner in store.client_roots_within(instance, s, e) {
            if inner.trace_id == trace_id || !reported.insert(inner.trace_id.clone()) {
                continue;
            }
            let callee = store
                .get(&inner.trace_id)
                .and_then(|t| t.spans.iter().find(|c| c.id == inner.span_id))
                .and_then(Span::remote_service)
                .unwrap_or("another service")
                .to_string();
            problems.push(Problem {
                kind: ProblemKind::BrokenDownstream,
                span_id: span.id.clone(),
                related_trace_id: Some(inner.trace_id.clone()),
                pending: false,
                message: format!(
                    "trace {trace_id}: while serving span {}, {service} ({instance}) called \
                     {callee} in a new trace {}: {service}'s app did not forward the trace \
                     headers (traceparent / x-b3-*), so the chain broke between {service} and \
                     {callee}",
                    span.id, inner.trace_id
                ),
                service: service.clone(),
            });
        }
    }
}

/// The service that recorded a located span.
fn caller_service(store: &Store, located: &Located) -> Option<String> {
    store
        .get(&located.trace_id)?
        .spans
        .iter()
        .find(|s| s.id == located.span_id)?
        .service()
        .map(String::from)
}

fn sorted<'a>(spans: impl Iterator<Item = &'a Span>) -> Vec<&'a Span> {
    let mut spans: Vec<&Span> = spans.collect();
    spans.sort_by(|a, b| {
        a.timestamp
            .unwrap_or(u64::MAX)
            .cmp(&b.timestamp.unwrap_or(u64::MAX))
            .then(a.id.cmp(&b.id))
    });
    spans
}

/// The spans depth-first: each root (a span whose parent is absent or not
/// in the trace) then its children, all in start order.
fn waterfall(trace: &Trace) -> Vec<(&Span, usize)> {
    let ids: HashSet<&str> = trace.spans.iter().map(|s| s.id.as_str()).collect();
    let mut children: HashMap<&str, Vec<&Span>> = HashMap::new();
    let mut roots = Vec::new();
    for span in sorted(trace.spans.iter()) {
        match span.parent_id.as_deref() {
            Some(parent) if ids.contains(parent) => children.entry(parent).or_default().push(span),
            _ => roots.push(span),
        }
    }
    let mut out = Vec::with_capacity(trace.spans.len());
    let mut visited = HashSet::new();
    let mut stack: Vec<(&Span, usize)> = roots.into_iter().rev().map(|s| (s, 0)).collect();
    while let Some((span, depth)) = stack.pop() {
        // Two spans with the same id (a client and a server sharing one, in
        // Zipkin's B3 style) must not loop.
        if !visited.insert((span.id.as_str(), span.kind)) {
            continue;
        }
        out.push((span, depth));
        if let Some(kids) = children.get(span.id.as_str()) {
            stack.extend(kids.iter().rev().map(|k| (*k, depth + 1)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::collector::span::Endpoint;
    use crate::collector::store::CollectorSettings;
    use crate::collector::store::tests::span;

    fn at(mut s: Span, start: u64, duration: u64) -> Span {
        s.timestamp = Some(start);
        s.duration = Some(duration);
        s
    }

    fn calling(mut s: Span, remote: &str) -> Span {
        s.remote_endpoint = Some(Endpoint {
            service_name: Some(remote.to_string()),
            ..Endpoint::default()
        });
        s
    }

    fn store_with(spans: Vec<Span>) -> (Store, Instant) {
        let now = Instant::now();
        let mut store = Store::new(CollectorSettings::default());
        store.insert(spans, now);
        (store, now + Duration::from_secs(3))
    }

    /// gateway -> guestbook-ui -> helloworld-service, every header forwarded.
    fn whole_chain(trace: &str) -> Vec<Span> {
        vec![
            calling(
                at(
                    span(trace, "a1", None, Kind::Client, "ingressgateway"),
                    1_000,
                    900,
                ),
                "guestbook-ui",
            ),
            at(
                span(trace, "b1", Some("a1"), Kind::Server, "guestbook-ui"),
                1_050,
                800,
            ),
            calling(
                at(
                    span(trace, "b2", Some("b1"), Kind::Client, "guestbook-ui"),
                    1_100,
                    500,
                ),
                "helloworld-service",
            ),
            at(
                span(trace, "c1", Some("b2"), Kind::Server, "helloworld-service"),
                1_150,
                400,
            ),
        ]
    }

    #[test]
    fn a_whole_chain_is_one_tree_with_no_problem() {
        let (store, later) = store_with(whole_chain("e1"));
        let a = analyze(&store, "00000000000000e1", later, true).unwrap();
        assert!(a.problems.is_empty(), "{:#?}", a.problems);
        assert!(!a.broken && a.settled);
        let tree: Vec<(String, usize)> = a
            .spans
            .iter()
            .map(|w| (w.span.service().unwrap().to_string(), w.depth))
            .collect();
        assert_eq!(
            tree,
            [
                ("ingressgateway".to_string(), 0),
                ("guestbook-ui".to_string(), 1),
                ("guestbook-ui".to_string(), 2),
                ("helloworld-service".to_string(), 3)
            ]
        );
        assert_eq!(
            a.services,
            ["ingressgateway", "guestbook-ui", "helloworld-service"]
        );
        assert_eq!((a.start, a.duration), (1_000, 900));
        assert_eq!(a.spans[3].offset, 150);
        assert_eq!(a.root_service, "ingressgateway");
    }

    /// A CLIENT span as a sidecar reports it when it reached an endpoint.
    fn answered_by(mut s: Span, address: &str) -> Span {
        s.tags
            .insert("upstream_address".to_string(), address.to_string());
        s
    }

    #[test]
    fn a_trace_is_complete_once_its_root_and_every_answered_call_arrived() {
        // The sidecars' batches, in the order they arrive: the callee's
        // span ends first, the gateway's root last.
        let chain = whole_chain("e7");
        let (gateway, ui_server, ui_client, hw_server) = (
            answered_by(chain[0].clone(), "127.0.0.1:8081"),
            chain[1].clone(),
            answered_by(chain[2].clone(), "127.0.0.1:9091"),
            chain[3].clone(),
        );
        let id = "00000000000000e7";
        let now = Instant::now();
        let mut store = Store::new(CollectorSettings::default());
        let status = |store: &Store| {
            let a = analyze(store, id, now, false).unwrap();
            (a.complete, a.settled)
        };

        // guestbook-ui's batch first: its call to helloworld-service was
        // answered, but the callee's SERVER span is not here yet.
        store.insert(vec![ui_client.clone(), ui_server.clone()], now);
        assert_eq!(status(&store), (false, false), "the root is missing");
        store.insert(vec![gateway.clone()], now);
        assert_eq!(
            status(&store),
            (false, false),
            "helloworld-service's SERVER span is missing"
        );
        // The last span: complete at once, no quiet time to wait.
        store.insert(vec![hw_server.clone()], now);
        assert_eq!(status(&store), (true, true));
        let a = analyze(&store, id, now, false).unwrap();
        assert!(a.problems.is_empty() && !a.broken, "{:#?}", a.problems);

        // Each rule on its own.
        assert!(is_complete(&[
            gateway.clone(),
            ui_server.clone(),
            ui_client.clone(),
            hw_server.clone()
        ]));
        assert!(
            !is_complete(&[ui_server.clone(), ui_client.clone(), hw_server.clone()]),
            "no root"
        );
        assert!(
            !is_complete(&[gateway.clone(), ui_client.clone(), hw_server.clone()]),
            "a parent is missing"
        );
        assert!(
            !is_complete(&[gateway, ui_server, ui_client]),
            "an answered call has no SERVER span under it"
        );
    }

    #[test]
    fn a_call_outside_the_mesh_settles_after_the_quiet_time() {
        // guestbook-ui calls a host with no sidecar: its CLIENT span was
        // answered and no SERVER span will ever come.
        let outside = vec![
            span("e8", "b1", None, Kind::Server, "guestbook-ui"),
            answered_by(
                span("e8", "b2", Some("b1"), Kind::Client, "guestbook-ui"),
                "203.0.113.7:443",
            ),
        ];
        let now = Instant::now();
        let mut store = Store::new(CollectorSettings::default());
        store.insert(outside, now);
        let id = "00000000000000e8";
        let early = analyze(&store, id, now, false).unwrap();
        assert!(!early.complete && !early.settled);
        let later = analyze(&store, id, now + store.settings().settle, false).unwrap();
        assert!(!later.complete && later.settled && !later.broken);
    }

    #[test]
    fn an_app_that_drops_the_headers_is_named_on_both_traces() {
        // guestbook-ui's app did not forward: its sidecar's outbound call
        // became the root of a new trace (e2), inside the SERVER span of e1.
        let e1 = vec![
            calling(
                at(
                    span("e1", "a1", None, Kind::Client, "ingressgateway"),
                    1_000,
                    900,
                ),
                "guestbook-ui",
            ),
            at(
                span("e1", "b1", Some("a1"), Kind::Server, "guestbook-ui"),
                1_050,
                800,
            ),
        ];
        let e2 = vec![
            calling(
                at(
                    span("e2", "b2", None, Kind::Client, "guestbook-ui"),
                    1_100,
                    500,
                ),
                "helloworld-service",
            ),
            at(
                span("e2", "c1", Some("b2"), Kind::Server, "helloworld-service"),
                1_150,
                400,
            ),
        ];
        let (store, later) = store_with([e1, e2].concat());

        let new_trace = analyze(&store, "00000000000000e2", later, true).unwrap();
        assert!(new_trace.broken);
        let p = &new_trace.problems[0];
        assert_eq!(p.kind, ProblemKind::HeadersNotForwarded);
        assert_eq!(p.service, "guestbook-ui");
        assert_eq!(p.related_trace_id.as_deref(), Some("00000000000000e1"));
        assert!(
            p.message.contains("guestbook-ui's app did not forward")
                && p.message
                    .contains("between guestbook-ui and helloworld-service"),
            "{}",
            p.message
        );
        assert_eq!(
            new_trace.spans[0].problems,
            [ProblemKind::HeadersNotForwarded]
        );

        let old_trace = analyze(&store, "00000000000000e1", later, false).unwrap();
        assert!(old_trace.broken);
        assert_eq!(old_trace.problems[0].kind, ProblemKind::BrokenDownstream);
        assert_eq!(
            old_trace.problems[0].related_trace_id.as_deref(),
            Some("00000000000000e2")
        );
        assert!(old_trace.spans.is_empty(), "lists leave the waterfall out");
    }

    #[test]
    fn a_call_outside_any_request_is_a_legitimate_root() {
        // A gateway's span, or an app's own timer-driven call: a CLIENT root
        // with no SERVER span of its instance around it.
        let (store, later) = store_with(vec![calling(
            at(
                span("e3", "a1", None, Kind::Client, "guestbook-ui"),
                5_000,
                100,
            ),
            "helloworld-service",
        )]);
        let a = analyze(&store, "00000000000000e3", later, false).unwrap();
        assert!(a.problems.is_empty() && !a.broken);
    }

    #[test]
    fn a_missing_parent_is_pending_then_broken_and_names_the_caller() {
        // guestbook-ui's CLIENT span of trace e4 was lost; helloworld's
        // SERVER span names it. Another trace shows who was calling.
        let e4 = vec![
            at(
                span("e4", "b1", None, Kind::Server, "guestbook-ui"),
                1_000,
                900,
            ),
            at(
                span("e4", "c1", Some("b2"), Kind::Server, "helloworld-service"),
                1_150,
                400,
            ),
        ];
        let now = Instant::now();
        let mut store = Store::new(CollectorSettings::default());
        store.insert(e4, now);
        let early = analyze(&store, "00000000000000e4", now, false).unwrap();
        assert!(!early.settled && !early.broken);
        assert!(early.problems[0].pending);
        assert!(early.problems[0].message.contains("has not arrived yet"));

        let later = now + Duration::from_secs(3);
        let a = analyze(&store, "00000000000000e4", later, false).unwrap();
        assert!(a.broken);
        let p = &a.problems[0];
        assert_eq!(
            (p.kind, p.service.as_str()),
            (ProblemKind::MissingParent, "helloworld-service")
        );
        assert!(
            p.message.contains("span 00000000000000c1 of service helloworld-service names a parent 00000000000000b2")
                && p.message.contains("no span in the trace has")
                && p.message.contains("between helloworld-service's caller and helloworld-service"),
            "{}",
            p.message
        );

        // With the caller's CLIENT span in view (another trace), it is named.
        store.insert(
            vec![calling(
                at(
                    span("e5", "d1", None, Kind::Client, "guestbook-ui"),
                    1_100,
                    500,
                ),
                "helloworld-service",
            )],
            now,
        );
        let a = analyze(&store, "00000000000000e4", later, false).unwrap();
        let p = a
            .problems
            .iter()
            .find(|p| p.kind == ProblemKind::MissingParent)
            .unwrap();
        assert!(
            p.message
                .contains("between guestbook-ui and helloworld-service"),
            "{}",
            p.message
        );
    }

    #[test]
    fn a_server_root_called_from_another_trace_means_a_proxy_did_not_propagate() {
        let (store, later) = store_with(vec![
            calling(
                at(
                    span("e6", "a1", None, Kind::Client, "guestbook-ui"),
                    1_000,
                    900,
                ),
                "helloworld-service",
            ),
            at(
                span("e7", "c1", None, Kind::Server, "helloworld-service"),
                1_100,
                500,
            ),
        ]);
        let a = analyze(&store, "00000000000000e7", later, false).unwrap();
        assert_eq!(a.problems[0].kind, ProblemKind::ContextNotPropagated);
        assert!(
            a.problems[0]
                .message
                .contains("between guestbook-ui and helloworld-service")
        );
    }
}

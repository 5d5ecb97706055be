//! `GET /api/v2/dependencies`: the service graph Zipkin's UI draws,
//! computed from the stored traces the way Zipkin's `DependencyLinker`
//! does it.
//!
//! Each RPC becomes one link `parent -> child`, counted once even though
//! two spans describe it (the caller's CLIENT span and the callee's SERVER
//! span). The rule: a CLIENT span that has children is skipped (its SERVER
//! child will speak for the call, with the server's own name); a SERVER span
//! links from its nearest ancestor that has a kind (the caller) to itself; a
//! CLIENT span without children (the callee did not report, like a call
//! leaving the mesh) links to its `remoteEndpoint`. A link's `errorCount`
//! counts the spans tagged `error`, looking at the CLIENT span too when the
//! SERVER span does not say. micromesh's own traffic graph (`graph.rs`)
//! comes from metrics instead; this one comes only from sampled traces.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;

use super::span::{Kind, Span};

/// One edge of the service graph, as Zipkin's API names its fields.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DependencyLink {
    pub parent: String,
    pub child: String,
    pub call_count: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub error_count: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Counts calls per `(parent, child)` over any number of traces.
#[derive(Debug, Default)]
pub struct Linker {
    counts: BTreeMap<(String, String), (u64, u64)>,
}

impl Linker {
    /// Add one trace's links.
    pub fn put_trace(&mut self, spans: &[Span]) {
        let by_id: HashMap<&str, Vec<&Span>> = spans.iter().fold(HashMap::new(), |mut m, s| {
            m.entry(s.id.as_str()).or_default().push(s);
            m
        });
        // Spans some other span names as its parent; and CLIENT spans
        // whose SERVER side shares their id (Zipkin's B3 shared spans).
        let mut has_children: HashSet<&str> = spans
            .iter()
            .filter_map(|s| s.parent_id.as_deref())
            .collect();
        for s in spans {
            if s.kind == Some(Kind::Server) && by_id[s.id.as_str()].len() > 1 {
                has_children.insert(s.id.as_str());
            }
        }

        for span in spans {
            let (service, remote) = (span.service(), span.remote_service());
            let kind = match span.kind {
                Some(kind) => kind,
                // Zipkin: a span of no kind that names both sides is a call.
                None if service.is_some() && remote.is_some() => Kind::Client,
                None => continue,
            };
            if kind == Kind::Client && has_children.contains(span.id.as_str()) {
                continue;
            }
            let (mut parent, child) = match kind {
                Kind::Server | Kind::Consumer => (remote, service),
                Kind::Client | Kind::Producer => (service, remote),
            };
            let mut error = span.tags.contains_key("error");
            if matches!(kind, Kind::Producer | Kind::Consumer) {
                if let (Some(parent), Some(child)) = (parent, child) {
                    self.add(parent, child, error);
                }
                continue;
            }
            match remote_ancestor(span, &by_id) {
                Some(ancestor) => {
                    if let Some(ancestor_name) = ancestor.service() {
                        // A CLIENT span whose service differs from the caller
                        // above it: the hop between them was not reported.
                        if kind == Kind::Client && service.is_some_and(|s| s != ancestor_name) {
                            self.add(ancestor_name, service.unwrap_or_default(), false);
                        }
                        if kind == Kind::Server || parent.is_none() {
                            parent = Some(ancestor_name);
                        }
                        if !error && ancestor.kind == Some(Kind::Client) {
                            error = ancestor.tags.contains_key("error");
                        }
                    }
                }
                // The root SERVER span: nobody called it from inside.
                None if kind == Kind::Server && parent.is_none() => continue,
                None => {}
            }
            if let (Some(parent), Some(child)) = (parent, child) {
                self.add(parent, child, error);
            }
        }
    }

    fn add(&mut self, parent: &str, child: &str, error: bool) {
        let entry = self
            .counts
            .entry((parent.to_string(), child.to_string()))
            .or_default();
        entry.0 += 1;
        entry.1 += u64::from(error);
    }

    /// The links, sorted by parent then child.
    pub fn links(self) -> Vec<DependencyLink> {
        self.counts
            .into_iter()
            .map(
                |((parent, child), (call_count, error_count))| DependencyLink {
                    parent,
                    child,
                    call_count,
                    error_count,
                },
            )
            .collect()
    }
}

/// The nearest span above `span` that has a kind: for a SERVER span, the
/// CLIENT span that called it (the same id for a shared span, else the
/// parent). Bounded by the trace's size, so a cycle of parent ids ends.
fn remote_ancestor<'a>(span: &'a Span, by_id: &HashMap<&str, Vec<&'a Span>>) -> Option<&'a Span> {
    if span.kind == Some(Kind::Server) {
        let shared_client = by_id[span.id.as_str()]
            .iter()
            .find(|s| s.kind == Some(Kind::Client));
        if let Some(client) = shared_client {
            return Some(client);
        }
    }
    let mut next = span.parent_id.as_deref();
    for _ in 0..by_id.len() {
        let candidates = by_id.get(next?)?;
        // A shared id names the SERVER side as the node below the client.
        let parent = candidates
            .iter()
            .find(|s| s.kind == Some(Kind::Server))
            .unwrap_or(&candidates[0]);
        if parent.kind.is_some() {
            return Some(parent);
        }
        next = parent.parent_id.as_deref();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collector::store::tests::span;

    fn calls(mut s: Span, remote: &str) -> Span {
        s.remote_endpoint = Some(crate::collector::Endpoint {
            service_name: Some(remote.into()),
            ..Default::default()
        });
        s
    }

    #[test]
    fn a_call_counts_once_and_an_unreported_callee_still_shows() {
        let mut failed = span("a", "4", Some("3"), Kind::Server, "helloworld-service");
        failed.tags.insert("error".into(), "true".into());
        let trace = vec![
            calls(
                span("a", "1", None, Kind::Client, "ingressgateway"),
                "guestbook-ui",
            ),
            span("a", "2", Some("1"), Kind::Server, "guestbook-ui"),
            calls(
                span("a", "3", Some("2"), Kind::Client, "guestbook-ui"),
                "helloworld-service",
            ),
            failed,
            // A call leaving the mesh: nobody reported its server side.
            calls(
                span("a", "5", Some("2"), Kind::Client, "guestbook-ui"),
                "sentiment-service",
            ),
        ];
        let mut linker = Linker::default();
        linker.put_trace(&trace);
        linker.put_trace(&trace);
        let link = |p: &str, c: &str, calls, errors| DependencyLink {
            parent: p.into(),
            child: c.into(),
            call_count: calls,
            error_count: errors,
        };
        assert_eq!(
            linker.links(),
            [
                link("guestbook-ui", "helloworld-service", 2, 2),
                link("guestbook-ui", "sentiment-service", 2, 0),
                link("ingressgateway", "guestbook-ui", 2, 0),
            ]
        );
    }
}

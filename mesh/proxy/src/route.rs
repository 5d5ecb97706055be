//! Routing: which virtual host, which route, and what the route changes in the
//! request before it goes on (Istio's VirtualService `http[]` rules, Envoy's
//! route table).
//!
//! ```text
//! authority --(exact domain, then host without port, then "*")--> virtual host
//!           --(first route whose match holds)--> route
//!           --> request headers set/add/remove, URI rewrite, mirror
//!           --> the route's own stack: fault -> timeout -> retry -> split -> ...
//!           --> response headers set/add/remove
//! ```
//!
//! A `match` entry holds when every condition in it holds (AND); a route
//! matches when any of its entries holds (OR), or when it has none. String
//! matches are Istio's `exact`, `prefix` and `regex`; a regex must match the
//! whole value, as in Envoy (RE2 full match), so `regex: ".*Chrome.*"` is
//! needed to find Chrome anywhere in a user agent.
//!
//! Everything here is compiled once per snapshot ([`RouteTable::compile`]):
//! regexes are built and header names parsed before the snapshot is accepted,
//! so a bad one NACKs the snapshot instead of failing requests.

use std::collections::HashMap;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use mesh_api::snapshot::{HeaderOps, HttpRoute, RouteMatch, StringMatch, VirtualHost};
use tower::ServiceExt;

use crate::body::{
    ProxyService, REPLAY_BUFFER, Req, Rsp, RspFuture, call_now, clone_request, ctx, ctx_mut,
};
use crate::cluster::ClusterRt;
use crate::error::ProxyError;
use crate::fault::FaultPolicy;
use crate::log::Direction;
use crate::retry::RetryPolicyRt;
use crate::rng::Rng;
use crate::split::WeightedCluster;
use crate::table::CompileError;

// === compiled types ===

/// The virtual hosts of one listener, indexed by domain.
#[derive(Debug, Default)]
pub struct RouteTable {
    domains: HashMap<String, usize>,
    wildcard: Option<usize>,
    virtual_hosts: Vec<VirtualHostRt>,
}

#[derive(Debug)]
pub struct VirtualHostRt {
    pub name: String,
    pub routes: Vec<Arc<RouteRt>>,
}

/// One compiled route: its matches and everything its stack needs.
#[derive(Debug)]
pub struct RouteRt {
    pub name: String,
    matches: Vec<MatchRt>,
    pub destinations: Arc<[WeightedCluster]>,
    pub fault: Option<FaultPolicy>,
    pub timeout: Option<Duration>,
    pub retry: Arc<RetryPolicyRt>,
    request_headers: HeaderOpsRt,
    response_headers: HeaderOpsRt,
    rewrite_uri: Option<String>,
    mirror: Option<(Arc<ClusterRt>, f64)>,
}

#[derive(Debug)]
enum Matcher {
    Exact(String),
    Prefix(String),
    Regex(regex::Regex),
}

#[derive(Debug, Default)]
struct MatchRt {
    uri: Option<Matcher>,
    method: Option<Matcher>,
    headers: Vec<(HeaderName, Matcher)>,
    without_headers: Vec<(HeaderName, Matcher)>,
    query_params: Vec<(String, Matcher)>,
}

#[derive(Debug, Default)]
struct HeaderOpsRt {
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
}

// === compile ===

impl RouteTable {
    /// Compile virtual hosts; `clusters` resolves route destinations.
    pub fn compile(
        virtual_hosts: &[VirtualHost],
        clusters: &HashMap<String, Arc<ClusterRt>>,
    ) -> Result<RouteTable, CompileError> {
        let mut table = RouteTable::default();
        for vh in virtual_hosts {
            let index = table.virtual_hosts.len();
            for domain in &vh.domains {
                let domain = domain.to_ascii_lowercase();
                if domain == "*" {
                    if table.wildcard.replace(index).is_some() {
                        return Err(CompileError::DuplicateDomain { domain });
                    }
                } else if table.domains.insert(domain.clone(), index).is_some() {
                    // Envoy rejects a route table with a domain in two
                    // virtual hosts: which one would win is unclear.
                    return Err(CompileError::DuplicateDomain { domain });
                }
            }
            let routes = vh
                .routes
                .iter()
                .map(|route| compile_route(route, clusters).map(Arc::new))
                .collect::<Result<_, _>>()?;
            table.virtual_hosts.push(VirtualHostRt {
                name: vh.name.clone(),
                routes,
            });
        }
        Ok(table)
    }

    /// The virtual host for `authority`: exact domain, then the host without
    /// its port, then `*`.
    pub fn find(&self, authority: &str) -> Option<&VirtualHostRt> {
        // Authorities are case-insensitive; only allocate for the rare one
        // that is not already lower case.
        let lowered;
        let authority = if authority.bytes().any(|b| b.is_ascii_uppercase()) {
            lowered = authority.to_ascii_lowercase();
            lowered.as_str()
        } else {
            authority
        };
        let index = self
            .domains
            .get(authority)
            .or_else(|| {
                let host = strip_port(authority);
                (host.len() != authority.len())
                    .then(|| self.domains.get(host))
                    .flatten()
            })
            .or(self.wildcard.as_ref())?;
        self.virtual_hosts.get(*index)
    }
}

/// `host:port` -> `host` (IPv6 `[::1]:80` -> `[::1]`).
fn strip_port(authority: &str) -> &str {
    match authority.rfind(':') {
        Some(i) if !authority[i..].contains(']') => &authority[..i],
        _ => authority,
    }
}

fn compile_route(
    route: &HttpRoute,
    clusters: &HashMap<String, Arc<ClusterRt>>,
) -> Result<RouteRt, CompileError> {
    let name = &route.name;
    if route.destinations.is_empty() {
        return Err(CompileError::NoDestinations {
            route: name.clone(),
        });
    }
    let mut destinations = Vec::with_capacity(route.destinations.len());
    for d in &route.destinations {
        let cluster = clusters
            .get(&d.cluster)
            .ok_or_else(|| CompileError::UnknownCluster {
                route: name.clone(),
                cluster: d.cluster.clone(),
            })?;
        destinations.push(WeightedCluster {
            cluster: cluster.clone(),
            weight: d.weight,
        });
    }
    if destinations.iter().all(|d| d.weight == 0) {
        return Err(CompileError::ZeroWeight {
            route: name.clone(),
        });
    }
    let matches = route
        .matches
        .iter()
        .map(|m| compile_match(name, m))
        .collect::<Result<_, _>>()?;
    let mirror = match &route.mirror {
        Some(mirror) => {
            let cluster =
                clusters
                    .get(&mirror.cluster)
                    .ok_or_else(|| CompileError::UnknownCluster {
                        route: name.clone(),
                        cluster: mirror.cluster.clone(),
                    })?;
            check_percentage(name, "mirror.percentage", mirror.percentage)?;
            Some((cluster.clone(), mirror.percentage))
        }
        None => None,
    };
    Ok(RouteRt {
        name: name.clone(),
        matches,
        destinations: destinations.into(),
        fault: route
            .fault
            .as_ref()
            .map(|f| FaultPolicy::compile(name, f))
            .transpose()?,
        timeout: route.timeout_ms.map(Duration::from_millis),
        retry: Arc::new(RetryPolicyRt::compile(name, &route.retries)?),
        request_headers: compile_header_ops(name, &route.request_headers)?,
        response_headers: compile_header_ops(name, &route.response_headers)?,
        rewrite_uri: route.rewrite_uri.clone(),
        mirror,
    })
}

pub(crate) fn check_percentage(
    route: &str,
    field: &'static str,
    value: f64,
) -> Result<(), CompileError> {
    if (0.0..=100.0).contains(&value) {
        Ok(())
    } else {
        Err(CompileError::BadPercentage {
            route: route.to_string(),
            field,
            value,
        })
    }
}

fn compile_matcher(route: &str, field: &str, m: &StringMatch) -> Result<Matcher, CompileError> {
    Ok(match m {
        StringMatch::Exact(s) => Matcher::Exact(s.clone()),
        StringMatch::Prefix(s) => Matcher::Prefix(s.clone()),
        // Anchored: Envoy (and so Istio) require the regex to match the
        // whole value, not a part of it.
        StringMatch::Regex(pattern) => {
            Matcher::Regex(regex::Regex::new(&format!("^(?:{pattern})$")).map_err(|e| {
                CompileError::BadRegex {
                    route: route.to_string(),
                    field: field.to_string(),
                    pattern: pattern.clone(),
                    error: e.to_string(),
                }
            })?)
        }
    })
}

fn header_name(route: &str, name: &str) -> Result<HeaderName, CompileError> {
    HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()).map_err(|_| {
        CompileError::BadHeader {
            route: route.to_string(),
            header: name.to_string(),
        }
    })
}

fn compile_match(route: &str, m: &RouteMatch) -> Result<MatchRt, CompileError> {
    let headers = |map: &std::collections::BTreeMap<String, StringMatch>, what: &str| {
        map.iter()
            .map(|(name, m)| {
                Ok((
                    header_name(route, name)?,
                    compile_matcher(route, &format!("{what}.{name}"), m)?,
                ))
            })
            .collect::<Result<Vec<_>, CompileError>>()
    };
    Ok(MatchRt {
        uri: m
            .uri
            .as_ref()
            .map(|u| compile_matcher(route, "uri", u))
            .transpose()?,
        method: m
            .method
            .as_ref()
            .map(|u| compile_matcher(route, "method", u))
            .transpose()?,
        headers: headers(&m.headers, "headers")?,
        without_headers: headers(&m.without_headers, "withoutHeaders")?,
        query_params: m
            .query_params
            .iter()
            .map(|(name, q)| {
                Ok((
                    name.clone(),
                    compile_matcher(route, &format!("queryParams.{name}"), q)?,
                ))
            })
            .collect::<Result<_, CompileError>>()?,
    })
}

fn compile_header_ops(route: &str, ops: &HeaderOps) -> Result<HeaderOpsRt, CompileError> {
    let pairs = |map: &std::collections::BTreeMap<String, String>| {
        map.iter()
            .map(|(name, value)| {
                let value = HeaderValue::from_str(value).map_err(|_| CompileError::BadHeader {
                    route: route.to_string(),
                    header: format!("{name}: {value}"),
                })?;
                Ok((header_name(route, name)?, value))
            })
            .collect::<Result<Vec<_>, CompileError>>()
    };
    Ok(HeaderOpsRt {
        set: pairs(&ops.set)?,
        add: pairs(&ops.add)?,
        remove: ops
            .remove
            .iter()
            .map(|name| header_name(route, name))
            .collect::<Result<_, _>>()?,
    })
}

// === matching ===

impl Matcher {
    fn matches(&self, value: &str) -> bool {
        match self {
            Matcher::Exact(s) => value == s,
            Matcher::Prefix(s) => value.starts_with(s.as_str()),
            Matcher::Regex(re) => re.is_match(value),
        }
    }
}

impl MatchRt {
    fn matches(&self, req: &Req) -> bool {
        if let Some(uri) = &self.uri
            && !uri.matches(req.uri().path())
        {
            return false;
        }
        if let Some(method) = &self.method
            && !method.matches(req.method().as_str())
        {
            return false;
        }
        let header_matches = |name: &HeaderName, m: &Matcher| {
            req.headers()
                .get_all(name)
                .iter()
                .any(|v| v.to_str().is_ok_and(|v| m.matches(v)))
        };
        if !self.headers.iter().all(|(n, m)| header_matches(n, m)) {
            return false;
        }
        if self
            .without_headers
            .iter()
            .any(|(n, m)| header_matches(n, m))
        {
            return false;
        }
        self.query_params.iter().all(|(name, m)| {
            req.uri().query().is_some_and(|query| {
                query.split('&').any(|pair| {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    k == name && m.matches(v)
                })
            })
        })
    }
}

impl VirtualHostRt {
    /// The first route that matches, and which of its `match` entries did
    /// (`None`: a route without matches).
    pub fn route_for(&self, req: &Req) -> Option<(&Arc<RouteRt>, Option<usize>)> {
        self.routes.iter().find_map(|route| {
            if route.matches.is_empty() {
                return Some((route, None));
            }
            route
                .matches
                .iter()
                .position(|m| m.matches(req))
                .map(|i| (route, Some(i)))
        })
    }
}

impl HeaderOpsRt {
    fn apply(&self, headers: &mut http::HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
    }
}

impl RouteRt {
    /// Istio's `rewrite.uri`: replaces the matched prefix when the route
    /// matched by prefix, else the whole path; the query string stays.
    fn rewrite(&self, req: &mut Req, matched: Option<usize>) {
        let Some(rewrite) = &self.rewrite_uri else {
            return;
        };
        let path = req.uri().path();
        let prefix = matched
            .and_then(|i| self.matches[i].uri.as_ref())
            .and_then(|m| match m {
                Matcher::Prefix(p) => Some(p.as_str()),
                _ => None,
            });
        let mut new_path = match prefix {
            Some(prefix) => format!("{rewrite}{}", &path[prefix.len()..]),
            None => rewrite.clone(),
        };
        if let Some(query) = req.uri().query() {
            new_path.push('?');
            new_path.push_str(query);
        }
        let mut parts = req.uri().clone().into_parts();
        match new_path.parse() {
            Ok(pq) => parts.path_and_query = Some(pq),
            Err(_) => return,
        }
        if let Ok(uri) = http::Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
    }
}

// === impl Router ===

/// The authority of a request: from an absolute-form URI, else `Host`.
pub fn authority_of(req: &http::Request<impl Sized>) -> &str {
    req.uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| req.headers().get(http::header::HOST)?.to_str().ok())
        .unwrap_or("")
}

/// Finds the route for a request and hands it to that route's stack, built
/// by `new_stack` (linkerd2-proxy builds its per-route stacks the same way).
#[derive(Clone)]
pub struct Router<N> {
    table: Arc<crate::table::Compiled>,
    direction: Direction,
    rng: Rng,
    new_stack: N,
}

impl<N, S> Router<N>
where
    N: Fn(&Arc<RouteRt>) -> S,
    S: ProxyService,
{
    pub fn new(
        table: Arc<crate::table::Compiled>,
        direction: Direction,
        rng: Rng,
        new_stack: N,
    ) -> Self {
        Router {
            table,
            direction,
            rng,
            new_stack,
        }
    }
}

impl<N, S> tower::Service<Req> for Router<N>
where
    N: Fn(&Arc<RouteRt>) -> S,
    S: ProxyService,
{
    type Response = Rsp;
    type Error = ProxyError;
    type Future = RspFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Req) -> RspFuture {
        let routes = match self.direction {
            Direction::Gateway => self.table.gateway.as_ref(),
            _ => Some(&self.table.outbound),
        };
        let Some(vhost) = routes.and_then(|t| t.find(authority_of(&req))) else {
            let error = ProxyError::NoRoute {
                authority: authority_of(&req).to_string(),
                direction: self.direction,
            };
            return Box::pin(async move { Err(error) });
        };
        let Some((route, matched)) = vhost.route_for(&req) else {
            let error = ProxyError::NoRouteMatch {
                virtual_host: vhost.name.clone(),
                path: req.uri().path().to_string(),
            };
            return Box::pin(async move { Err(error) });
        };
        let route = route.clone();
        // Until the split picks one, the request aims at the route's first
        // destination: telemetry names it when a fault aborts the request.
        if let (Some(log), Some(first)) = (&ctx(&req).log, route.destinations.first()) {
            log.record_cluster(&first.cluster);
        }
        route.request_headers.apply(req.headers_mut());
        route.rewrite(&mut req, matched);

        let mirror_to = match &route.mirror {
            Some((cluster, percentage)) if self.rng.chance(*percentage) => Some(cluster.clone()),
            _ => None,
        };
        let rng = self.rng.clone();

        let stack = (self.new_stack)(&route);
        Box::pin(async move {
            if let Some(cluster) = mirror_to {
                // The copy needs the body in memory: read ahead into the
                // replay buffer (a larger body is not mirrored).
                let (parts, body) = req.into_parts();
                req = Req::from_parts(parts, body.replayable(REPLAY_BUFFER).await?);
                mirror(&req, cluster, rng);
            }
            let mut rsp = call_now(stack, req).await?;
            route.response_headers.apply(rsp.headers_mut());
            Ok(rsp)
        })
    }
}

/// Istio's `mirror`: send a copy to another cluster and forget it. As in
/// Envoy, the copy's Host gets `-shadow` appended so the receiver can tell.
fn mirror(req: &Req, cluster: Arc<ClusterRt>, rng: Rng) {
    let Some(mut copy) = clone_request(req) else {
        tracing::debug!(
            cluster = %cluster.name,
            "not mirrored: the request body is larger than the replay buffer"
        );
        return;
    };
    ctx_mut(&mut copy).log = None;
    if let Some(host) = copy
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
    {
        let shadow = match host.split_once(':') {
            Some((h, port)) => format!("{h}-shadow:{port}"),
            None => format!("{host}-shadow"),
        };
        if let Ok(value) = HeaderValue::from_str(&shadow) {
            copy.headers_mut().insert(http::header::HOST, value);
        }
    }
    ctx_mut(&mut copy).cluster = Some(cluster);
    tokio::spawn(async move {
        let stack = crate::balance::Balance::new(crate::pool::Pool::new(), rng);
        if let Err(error) = stack.oneshot(copy).await {
            tracing::debug!(%error, "mirrored request failed (ignored)");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::*;
    use mesh_api::snapshot::{Destination, Mirror};
    use std::collections::BTreeMap;

    fn clusters() -> HashMap<String, Arc<ClusterRt>> {
        ["hw|v1", "hw|v2", "shadow"]
            .into_iter()
            .map(|name| (name.to_string(), cluster(name, 1, Default::default())))
            .collect()
    }

    fn route_to(name: &str, cluster: &str, matches: Vec<RouteMatch>) -> HttpRoute {
        HttpRoute {
            name: name.into(),
            matches,
            destinations: vec![Destination {
                cluster: cluster.into(),
                weight: 100,
            }],
            ..Default::default()
        }
    }

    fn table(routes: Vec<HttpRoute>) -> RouteTable {
        let vh = VirtualHost {
            name: "hw".into(),
            domains: vec!["hw".into(), "hw:8080".into()],
            routes,
        };
        RouteTable::compile(&[vh], &clusters()).unwrap()
    }

    fn req(path: &str, headers: &[(&str, &str)]) -> Req {
        let mut builder = http::Request::builder().uri(path).header("host", "hw:8080");
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        builder.body(crate::body::ReqBody::empty()).unwrap()
    }

    fn routed(table: &RouteTable, req: &Req) -> Option<String> {
        let vh = table.find(authority_of(req))?;
        vh.route_for(req).map(|(r, _)| r.name.clone())
    }

    fn header_match(name: &str, m: StringMatch) -> RouteMatch {
        RouteMatch {
            headers: BTreeMap::from([(name.to_string(), m)]),
            ..Default::default()
        }
    }

    #[test]
    fn chrome_users_get_v2_and_everyone_else_v1() {
        // The talk's canary: `user-agent` regex `.*Chrome.*` -> v2.
        let table = table(vec![
            route_to(
                "chrome",
                "hw|v2",
                vec![header_match(
                    "user-agent",
                    StringMatch::Regex(".*Chrome.*".into()),
                )],
            ),
            route_to("default", "hw|v1", vec![]),
        ]);
        let chrome =
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/120.0 Safari/537.36";
        assert_eq!(
            routed(&table, &req("/", &[("user-agent", chrome)])).unwrap(),
            "chrome"
        );
        assert_eq!(
            routed(&table, &req("/", &[("user-agent", "curl/8.0")])).unwrap(),
            "default"
        );
        assert_eq!(routed(&table, &req("/", &[])).unwrap(), "default");
    }

    #[test]
    fn a_regex_must_match_the_whole_value() {
        let table = table(vec![route_to(
            "chrome",
            "hw|v2",
            vec![header_match(
                "user-agent",
                StringMatch::Regex("Chrome".into()),
            )],
        )]);
        assert!(routed(&table, &req("/", &[("user-agent", "Mozilla Chrome/1")])).is_none());
        assert!(routed(&table, &req("/", &[("user-agent", "Chrome")])).is_some());
    }

    #[test]
    fn uri_method_query_and_without_headers_all_must_hold() {
        let m = RouteMatch {
            uri: Some(StringMatch::Prefix("/hello".into())),
            method: Some(StringMatch::Exact("GET".into())),
            query_params: BTreeMap::from([("debug".to_string(), StringMatch::Exact("1".into()))]),
            without_headers: BTreeMap::from([(
                "x-skip".to_string(),
                StringMatch::Prefix("".into()),
            )]),
            ..Default::default()
        };
        let table = table(vec![route_to("r", "hw|v1", vec![m])]);
        assert!(routed(&table, &req("/hello/ray?debug=1", &[])).is_some());
        assert!(routed(&table, &req("/hello/ray?debug=2", &[])).is_none());
        assert!(routed(&table, &req("/bye?debug=1", &[])).is_none());
        assert!(routed(&table, &req("/hello?debug=1", &[("x-skip", "yes")])).is_none());
        let mut post = req("/hello?debug=1", &[]);
        *post.method_mut() = http::Method::POST;
        assert!(routed(&table, &post).is_none());
    }

    #[test]
    fn domains_are_exact_then_without_port_then_wildcard() {
        let vhs = [
            VirtualHost {
                name: "exact".into(),
                domains: vec!["hw:8080".into()],
                routes: vec![route_to("a", "hw|v1", vec![])],
            },
            VirtualHost {
                name: "hostonly".into(),
                domains: vec!["hw".into()],
                routes: vec![route_to("b", "hw|v1", vec![])],
            },
            VirtualHost {
                name: "any".into(),
                domains: vec!["*".into()],
                routes: vec![route_to("c", "hw|v1", vec![])],
            },
        ];
        let table = RouteTable::compile(&vhs, &clusters()).unwrap();
        assert_eq!(table.find("hw:8080").unwrap().name, "exact");
        assert_eq!(table.find("hw:9090").unwrap().name, "hostonly");
        assert_eq!(table.find("elsewhere").unwrap().name, "any");
    }

    #[tokio::test]
    async fn the_router_rewrites_sets_headers_and_calls_the_routes_stack() {
        let mut rule = route_to(
            "rewrite",
            "hw|v1",
            vec![RouteMatch {
                uri: Some(StringMatch::Prefix("/old".into())),
                ..Default::default()
            }],
        );
        rule.rewrite_uri = Some("/new".into());
        rule.request_headers
            .set
            .insert("x-canary".into(), "yes".into());
        rule.request_headers.remove.push("x-remove-me".into());
        rule.response_headers
            .add
            .insert("x-served-by".into(), "mesh".into());
        let compiled = Arc::new(crate::table::Compiled {
            snapshot: Default::default(),
            outbound: table(vec![rule]),
            gateway: None,
            clusters: clusters(),
        });
        let (inner, mut handle) = mock();
        let router = Router::new(
            compiled.clone(),
            Direction::Outbound,
            Rng::seeded(1),
            move |_: &Arc<RouteRt>| inner.clone(),
        );
        let call = tokio::spawn(router.oneshot(req("/old/page?q=1", &[("x-remove-me", "1")])));
        let (upstream, send) = handle.next_request().await.unwrap();
        assert_eq!(upstream.uri().path_and_query().unwrap(), "/new/page?q=1");
        assert_eq!(upstream.headers()["x-canary"], "yes");
        assert!(!upstream.headers().contains_key("x-remove-me"));
        send.send_response(response(200));
        let rsp = call.await.unwrap().unwrap();
        assert_eq!(rsp.headers()["x-served-by"], "mesh");

        // No route matches: 404 NR; unknown authority: 503 NR.
        let router = Router::new(
            compiled,
            Direction::Outbound,
            Rng::seeded(1),
            |_: &Arc<RouteRt>| {
                boxed(tower::service_fn(|_req: Req| async {
                    Ok::<_, ProxyError>(response(200))
                }))
            },
        );
        let err = router
            .clone()
            .oneshot(req("/other", &[]))
            .await
            .unwrap_err();
        assert_eq!(err.to_response().status(), 404);
        let mut unknown = req("/", &[]);
        unknown
            .headers_mut()
            .insert("host", HeaderValue::from_static("nope:8080"));
        let err = router.oneshot(unknown).await.unwrap_err();
        assert_eq!(err.to_response().status(), 503);
        assert_eq!(err.flags(), crate::log::ResponseFlags::NR);
    }

    #[test]
    fn a_mirror_to_an_unknown_cluster_is_rejected() {
        let mut rule = route_to("m", "hw|v1", vec![]);
        rule.mirror = Some(Mirror {
            cluster: "nowhere".into(),
            percentage: 100.0,
        });
        let vh = VirtualHost {
            name: "hw".into(),
            domains: vec!["hw".into()],
            routes: vec![rule],
        };
        let err = RouteTable::compile(&[vh], &clusters()).unwrap_err();
        assert!(matches!(err, CompileError::UnknownCluster { .. }));
    }
}

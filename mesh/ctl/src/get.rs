//! `meshctl get`: what the control plane knows, as kubectl-style tables (or
//! JSON / YAML).
//!
//! - `services`, `endpoints`: the registry, built from what every sidecar
//!   announces (Kubernetes: Services and EndpointSlices);
//! - `proxies`: every connected proxy, its inbound and admin addresses, and
//!   the config version it accepted
//!   (`istioctl proxy-status`);
//! - `virtualservices`, `destinationrules`, `gateways`: the applied Istio
//!   resources, with the `meshctl analyze` findings that concern them.

use std::collections::BTreeMap;
use std::fmt;
use std::process::ExitCode;
use std::str::FromStr;

use anyhow::{Result, bail};
use mesh_api::config::{self, Diagnostic};
use mesh_api::xds::{ProxyStatus, ServiceStatus};
use serde::Serialize;
use serde_json::Value;

use crate::cli::Ctx;
use crate::table::Table;

#[derive(Debug, clap::Args)]
pub struct GetArgs {
    /// services (svc), endpoints (ep), proxies, virtualservices (vs),
    /// destinationrules (dr) or gateways (gw).
    pub kind: Kind,
    /// Only this one: a service name (services, endpoints), a proxy instance,
    /// or a resource name.
    pub name: Option<String>,
    /// Output format instead of a table.
    #[arg(short, long, value_enum)]
    pub output: Option<Output>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Json,
    Yaml,
}

/// What `meshctl get` lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Services,
    Endpoints,
    Proxies,
    /// An applied Istio kind (VirtualService, DestinationRule, Gateway).
    Resource(config::Kind),
}

impl FromStr for Kind {
    type Err = String;

    /// kubectl's spellings: plural, singular and short name, any case.
    fn from_str(text: &str) -> Result<Self, String> {
        Ok(match text.to_ascii_lowercase().as_str() {
            "services" | "service" | "svc" => Kind::Services,
            "endpoints" | "endpoint" | "ep" => Kind::Endpoints,
            "proxies" | "proxy" => Kind::Proxies,
            _ => Kind::Resource(config::Kind::parse(text).map_err(|_| {
                format!(
                    "unknown kind {text:?}; meshctl can get services (svc), endpoints (ep), proxies, \
                     virtualservices (vs), destinationrules (dr), gateways (gw)"
                )
            })?),
        })
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Services => "services",
            Kind::Endpoints => "endpoints",
            Kind::Proxies => "proxies",
            Kind::Resource(kind) => kind.plural(),
        })
    }
}

pub async fn run(ctx: &Ctx, args: GetArgs) -> Result<ExitCode> {
    let control = ctx.control();
    let name = args.name.as_deref();
    match args.kind {
        Kind::Services | Kind::Endpoints => {
            let mut services: Vec<ServiceStatus> = control.get("/v1/services").await?;
            if let Some(name) = name {
                services.retain(|s| s.name == name);
                if services.is_empty() {
                    bail!(
                        "service {name:?} not found; `meshctl get services` lists what is registered"
                    );
                }
            }
            match args.output {
                Some(format) => print_structured(&services, format)?,
                None if args.kind == Kind::Services => print_table(services_table(&services))?,
                None => print_table(endpoints_table(&services))?,
            }
        }
        Kind::Proxies => {
            let mut proxies: Vec<ProxyStatus> = control.get("/v1/proxies").await?;
            if let Some(name) = name {
                proxies.retain(|p| p.announce.instance == name);
                if proxies.is_empty() {
                    bail!(
                        "proxy {name:?} not found; `meshctl get proxies` lists the connected ones"
                    );
                }
            }
            match args.output {
                Some(format) => print_structured(&proxies, format)?,
                None => print_table(proxies_table(&proxies))?,
            }
        }
        Kind::Resource(kind) => {
            let mut resources: Vec<Value> = control.get(&format!("/v1/config?kind={kind}")).await?;
            if let Some(name) = name {
                resources.retain(|r| ResourceView(r).name() == name);
                if resources.is_empty() {
                    bail!("{} {name:?} not found", args.kind);
                }
            }
            // The findings that concern what is listed; a failing analysis
            // must not hide the listing itself.
            let diagnostics: Vec<Diagnostic> = control.get("/v1/analyze").await.unwrap_or_default();
            // How rules for one host combine (MERGED); a control plane
            // without this endpoint just shows no column.
            let merges: BTreeMap<String, Vec<String>> =
                control.get("/v1/merges").await.unwrap_or_default();
            let relevant = diagnostics_for(&resources, &diagnostics);
            match (args.output, name) {
                (Some(format), Some(_)) => print_structured(&resources[0], format)?,
                (Some(Output::Yaml), None) => print_yaml_documents(&resources)?,
                (Some(Output::Json), None) => print_structured(&resources, Output::Json)?,
                (None, _) => {
                    if resources.is_empty() {
                        println!("No {} applied.", args.kind);
                    } else {
                        print_table(resources_table(kind, &resources, &merges))?;
                    }
                }
            }
            if !relevant.is_empty() {
                eprintln!();
                for d in relevant {
                    eprintln!("{d}");
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_table(table: Table) -> Result<()> {
    Ctx::emit(&table.render()).map(drop)
}

fn print_structured<T: Serialize + ?Sized>(value: &T, format: Output) -> Result<()> {
    let text = match format {
        Output::Json => serde_json::to_string_pretty(value)? + "\n",
        Output::Yaml => serde_yaml::to_string(value)?,
    };
    Ctx::emit(&text).map(drop)
}

/// Several resources as one multi-document YAML stream: `meshctl get vs -o
/// yaml > saved.yaml` can be applied again as it is.
fn print_yaml_documents(resources: &[Value]) -> Result<()> {
    let mut text = String::new();
    for (i, r) in resources.iter().enumerate() {
        if i > 0 {
            text.push_str("---\n");
        }
        text.push_str(&serde_yaml::to_string(r)?);
    }
    Ctx::emit(&text).map(drop)
}

// === tables ===

pub fn services_table(services: &[ServiceStatus]) -> Table {
    let mut table = Table::new(["NAME", "PORT", "VERSIONS", "ENDPOINTS"]);
    for s in services {
        let healthy = s.endpoints.iter().filter(|e| e.healthy).count();
        table.row([
            s.name.clone(),
            s.port.to_string(),
            dash_if_empty(s.versions.join(",")),
            format!("{healthy}/{}", s.endpoints.len()),
        ]);
    }
    table
}

pub fn endpoints_table(services: &[ServiceStatus]) -> Table {
    let mut table = Table::new(["SERVICE", "INSTANCE", "VERSION", "ADDRESS", "HEALTHY"]);
    for s in services {
        for e in &s.endpoints {
            table.row([
                s.name.clone(),
                e.instance.clone(),
                e.version.clone(),
                e.address.clone(),
                if e.healthy { "true" } else { "false" }.to_string(),
            ]);
        }
    }
    table
}

/// Every proxy, its identity and whether it took the latest config.
///
/// Two addresses, because a proxy listens on both: INBOUND is where other
/// sidecars send this workload's traffic (`-` for a gateway, which nobody
/// inside the mesh calls), ADMIN is its admin port (Envoy's :15000), where
/// `/config_dump`, `/ready` and `/stats/prometheus` answer. SPIFFE ID is
/// the workload identity of the certificate the proxy holds (`-` until its
/// first certificate arrives, or for a proxy started without a bootstrap
/// token); `meshctl identity WORKLOAD` shows the certificate itself.
pub fn proxies_table(proxies: &[ProxyStatus]) -> Table {
    let mut table = Table::new([
        "NAME",
        "MODE",
        "SERVICE",
        "VERSION",
        "INBOUND",
        "ADMIN",
        "SPIFFE ID",
        "READY",
        "LIVE",
        "ACKED",
        "LAST SEEN",
        "REJECTED",
    ]);
    for p in proxies {
        let a = &p.announce;
        let mode = serde_json::to_value(a.mode)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        table.row([
            a.instance.clone(),
            mode,
            a.service.clone(),
            dash_if_empty(a.version.clone()),
            dash_if_empty(a.address.clone()),
            dash_if_empty(a.admin_address.clone()),
            a.identity
                .as_ref()
                .map_or("-".to_string(), |identity| identity.spiffe_id()),
            a.ready.to_string(),
            p.live.to_string(),
            p.acked_version.map_or("-".to_string(), |v| v.to_string()),
            format_age(p.last_seen_ms),
            p.rejected
                .clone()
                .map_or("-".to_string(), |r| ellipsize(&r, 60)),
        ]);
    }
    table
}

/// VirtualService: hosts and gateways; DestinationRule: host and subsets;
/// Gateway: selector and server hosts. The NAMESPACE column appears only
/// when some resource is outside `default`, MERGED only when some resource
/// shares its host with another (`merges`, from `GET /v1/merges`): at a
/// gateway Istio merges the VirtualServices of a host, the sidecars use the
/// oldest only, and DestinationRules of a host are merged.
pub fn resources_table(
    kind: config::Kind,
    resources: &[Value],
    merges: &BTreeMap<String, Vec<String>>,
) -> Table {
    let namespaced = resources
        .iter()
        .any(|r| ResourceView(r).namespace() != "default");
    let merged = resources
        .iter()
        .any(|r| merges.contains_key(&ResourceView(r).id()));
    let columns: &[&str] = match kind {
        config::Kind::VirtualService => &["NAME", "GATEWAYS", "HOSTS"],
        config::Kind::DestinationRule => &["NAME", "HOST", "SUBSETS"],
        config::Kind::Gateway => &["NAME", "SELECTOR", "HOSTS"],
        // What `kubectl get` prints for them with Istio's CRDs.
        config::Kind::PeerAuthentication => &["NAME", "MODE"],
        config::Kind::AuthorizationPolicy => &["NAME", "ACTION"],
    };
    let mut headers: Vec<&str> = Vec::new();
    if namespaced {
        headers.push("NAMESPACE");
    }
    headers.extend(columns);
    if merged {
        headers.push("MERGED");
    }
    let mut table = Table::new(headers);
    for r in resources {
        let view = ResourceView(r);
        let spec = r.get("spec").unwrap_or(&Value::Null);
        let mut row: Vec<String> = Vec::new();
        if namespaced {
            row.push(view.namespace().to_string());
        }
        row.push(view.name().to_string());
        match kind {
            config::Kind::VirtualService => {
                row.push(list(spec.get("gateways")));
                row.push(list(spec.get("hosts")));
            }
            config::Kind::DestinationRule => {
                row.push(dash_if_empty(str_of(spec.get("host")).to_string()));
                let subsets: Vec<&str> = spec
                    .get("subsets")
                    .and_then(Value::as_array)
                    .map(|subsets| {
                        subsets
                            .iter()
                            .filter_map(|s| s.get("name").and_then(Value::as_str))
                            .collect()
                    })
                    .unwrap_or_default();
                row.push(dash_if_empty(subsets.join(",")));
            }
            config::Kind::Gateway => {
                let selector: Vec<String> = spec
                    .get("selector")
                    .and_then(Value::as_object)
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                            .collect()
                    })
                    .unwrap_or_default();
                row.push(dash_if_empty(selector.join(",")));
                let hosts: Vec<&str> = spec
                    .get("servers")
                    .and_then(Value::as_array)
                    .map(|servers| {
                        servers
                            .iter()
                            .filter_map(|s| s.get("hosts").and_then(Value::as_array))
                            .flatten()
                            .filter_map(Value::as_str)
                            .collect()
                    })
                    .unwrap_or_default();
                row.push(dash_if_empty(hosts.join(",")));
            }
            config::Kind::PeerAuthentication => {
                row.push(dash_if_empty(
                    str_of(spec.get("mtls").and_then(|m| m.get("mode"))).to_string(),
                ));
            }
            config::Kind::AuthorizationPolicy => {
                // Istio's default action is ALLOW.
                let action = str_of(spec.get("action"));
                row.push(if action.is_empty() { "ALLOW" } else { action }.to_string());
            }
        }
        if merged {
            let notes = merges
                .get(&view.id())
                .map(|notes| notes.join("; "))
                .unwrap_or_default();
            row.push(dash_if_empty(notes));
        }
        table.row(row);
    }
    table
}

/// The diagnostics whose resource is one of `resources`
/// (`VirtualService default/guestbook-ui`).
pub fn diagnostics_for<'a>(
    resources: &[Value],
    diagnostics: &'a [Diagnostic],
) -> Vec<&'a Diagnostic> {
    let ids: Vec<String> = resources.iter().map(|r| ResourceView(r).id()).collect();
    diagnostics
        .iter()
        .filter(|d| ids.contains(&d.resource))
        .collect()
}

/// Reads an applied resource in its Istio shape (`kind`, `metadata`, `spec`).
struct ResourceView<'a>(&'a Value);

impl ResourceView<'_> {
    fn kind(&self) -> &str {
        str_of(self.0.get("kind"))
    }
    fn name(&self) -> &str {
        str_of(self.0.pointer("/metadata/name"))
    }
    fn namespace(&self) -> &str {
        match str_of(self.0.pointer("/metadata/namespace")) {
            "" => "default",
            ns => ns,
        }
    }
    /// How diagnostics name a resource.
    fn id(&self) -> String {
        format!("{} {}/{}", self.kind(), self.namespace(), self.name())
    }
}

fn str_of(value: Option<&Value>) -> &str {
    value.and_then(Value::as_str).unwrap_or("")
}

fn list(value: Option<&Value>) -> String {
    let items: Vec<&str> = value
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    dash_if_empty(items.join(","))
}

fn dash_if_empty(text: String) -> String {
    if text.is_empty() {
        "-".to_string()
    } else {
        text
    }
}

fn ellipsize(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_string()
    } else {
        format!("{}…", text.chars().take(max - 1).collect::<String>())
    }
}

/// `250ms`, `3.2s`, `4m`, like kubectl's ages but finer (leases are short).
pub fn format_age(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms}ms"),
        1_000..60_000 => format!("{:.1}s", ms as f64 / 1000.0),
        60_000..3_600_000 => format!("{}m", ms / 60_000),
        _ => format!("{}h", ms / 3_600_000),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_api::xds::{EndpointStatus, ProxyAnnounce, ProxyMode};
    use serde_json::json;

    fn hello() -> ServiceStatus {
        ServiceStatus {
            name: "helloworld-service".into(),
            port: 8080,
            versions: vec!["v1".into(), "v2".into()],
            endpoints: vec![
                EndpointStatus {
                    instance: "helloworld-service-v1-aaaaa".into(),
                    version: "v1".into(),
                    address: "127.0.0.1:40001".into(),
                    healthy: true,
                },
                EndpointStatus {
                    instance: "helloworld-service-v2-bbbbb".into(),
                    version: "v2".into(),
                    address: "127.0.0.1:40002".into(),
                    healthy: false,
                },
            ],
        }
    }

    fn words(table: &Table) -> Vec<Vec<String>> {
        table
            .render()
            .lines()
            .map(|l| l.split_whitespace().map(str::to_string).collect())
            .collect()
    }

    #[test]
    fn kinds_accept_kubectl_spellings() {
        for (text, kind) in [
            ("svc", Kind::Services),
            ("Services", Kind::Services),
            ("ep", Kind::Endpoints),
            ("proxies", Kind::Proxies),
            ("vs", Kind::Resource(config::Kind::VirtualService)),
            (
                "virtualservice",
                Kind::Resource(config::Kind::VirtualService),
            ),
            ("dr", Kind::Resource(config::Kind::DestinationRule)),
            ("gw", Kind::Resource(config::Kind::Gateway)),
        ] {
            assert_eq!(text.parse::<Kind>().unwrap(), kind, "{text}");
        }
        let err = "pods".parse::<Kind>().unwrap_err();
        assert!(err.contains("virtualservices (vs)"), "{err}");
    }

    #[test]
    fn services_count_healthy_endpoints() {
        assert_eq!(
            words(&services_table(&[hello()])),
            [
                vec!["NAME", "PORT", "VERSIONS", "ENDPOINTS"],
                vec!["helloworld-service", "8080", "v1,v2", "1/2"]
            ]
        );
    }

    #[test]
    fn endpoints_list_every_instance() {
        let rows = words(&endpoints_table(&[hello()]));
        assert_eq!(
            rows[0],
            ["SERVICE", "INSTANCE", "VERSION", "ADDRESS", "HEALTHY"]
        );
        assert_eq!(
            rows[2],
            [
                "helloworld-service",
                "helloworld-service-v2-bbbbb",
                "v2",
                "127.0.0.1:40002",
                "false"
            ]
        );
    }

    #[test]
    fn proxies_show_sync_state() {
        let gateway = ProxyStatus {
            announce: ProxyAnnounce {
                instance: "ingressgateway-12345".into(),
                mode: ProxyMode::Gateway,
                service: "ingressgateway".into(),
                ready: true,
                admin_address: "127.0.0.1:41000".into(),
                ..Default::default()
            },
            acked_version: Some(7),
            rejected: None,
            last_seen_ms: 120,
            live: true,
        };
        let sidecar = ProxyStatus {
            announce: ProxyAnnounce {
                instance: "helloworld-service-v1-aaaaa".into(),
                mode: ProxyMode::Sidecar,
                service: "helloworld-service".into(),
                version: "v1".into(),
                address: "127.0.0.1:40001".into(),
                admin_address: "127.0.0.1:40003".into(),
                ready: true,
                identity: Some(mesh_api::identity::Identity::new(
                    "default",
                    "helloworld-service",
                )),
                ..Default::default()
            },
            acked_version: Some(7),
            rejected: None,
            last_seen_ms: 80,
            live: true,
        };
        let rows = words(&proxies_table(&[gateway, sidecar]));
        assert_eq!(
            rows[0],
            [
                "NAME", "MODE", "SERVICE", "VERSION", "INBOUND", "ADMIN", "SPIFFE", "ID", "READY",
                "LIVE", "ACKED", "LAST", "SEEN", "REJECTED"
            ]
        );
        // Lab 01 curls /config_dump on the ADMIN address: it must be the
        // admin port, not the inbound one (where /config_dump is a 404).
        assert_eq!(rows[2][4], "127.0.0.1:40001", "INBOUND");
        assert_eq!(rows[2][5], "127.0.0.1:40003", "ADMIN");
        // The identity its certificate proves; the gateway here has none yet.
        assert_eq!(
            rows[2][6], "spiffe://cluster.local/ns/default/sa/helloworld-service",
            "SPIFFE ID"
        );
        assert_eq!(
            rows[1],
            [
                "ingressgateway-12345",
                "gateway",
                "ingressgateway",
                "-",
                "-",
                "127.0.0.1:41000",
                "-",
                "true",
                "true",
                "7",
                "120ms",
                "-"
            ]
        );
    }

    #[test]
    fn resources_render_istio_columns() {
        let vs = json!({
            "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "guestbook-ui"},
            "spec": {"hosts": ["*"], "gateways": ["guestbook-gateway"], "http": []}
        });
        assert_eq!(
            words(&resources_table(
                config::Kind::VirtualService,
                &[vs],
                &BTreeMap::new()
            )),
            [
                vec!["NAME", "GATEWAYS", "HOSTS"],
                vec!["guestbook-ui", "guestbook-gateway", "*"]
            ]
        );
        let dr = json!({
            "kind": "DestinationRule",
            "metadata": {"name": "helloworld-service", "namespace": "labs"},
            "spec": {"host": "helloworld-service", "subsets": [{"name": "v1"}, {"name": "v2"}]}
        });
        assert_eq!(
            words(&resources_table(
                config::Kind::DestinationRule,
                &[dr],
                &BTreeMap::new()
            )),
            [
                vec!["NAMESPACE", "NAME", "HOST", "SUBSETS"],
                vec!["labs", "helloworld-service", "helloworld-service", "v1,v2"]
            ]
        );
        let gw = json!({
            "kind": "Gateway", "metadata": {"name": "guestbook-gateway"},
            "spec": {"selector": {"istio": "ingressgateway"},
                     "servers": [{"port": {"number": 80}, "hosts": ["*"]}]}
        });
        assert_eq!(
            words(&resources_table(
                config::Kind::Gateway,
                &[gw],
                &BTreeMap::new()
            ))[1],
            ["guestbook-gateway", "istio=ingressgateway", "*"]
        );
    }

    #[test]
    fn virtual_services_merged_at_a_gateway_show_a_merged_column() {
        // Two files for host `*` at one gateway, applied one after the
        // other: the control plane's `merges()` feeds the column.
        let files = [
            "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: gw}\nspec:\n  selector: {istio: ingressgateway}\n  servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ['*']}]\n",
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: b-messages}\nspec:\n  hosts: ['*']\n  gateways: [gw]\n  http: [{match: [{uri: {prefix: /messages}}], route: [{destination: {host: guestbook-service}}]}]\n",
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: a-hello}\nspec:\n  hosts: ['*']\n  gateways: [gw]\n  http: [{match: [{uri: {prefix: /hello}}], route: [{destination: {host: helloworld-service}}]}]\n",
        ];
        let set = files
            .iter()
            .fold(config::ConfigSet::default(), |set, text| {
                let parsed = config::ConfigSet::parse(&[config::SourceFile {
                    name: "t.yaml".into(),
                    content: text.to_string(),
                }])
                .expect("valid test YAML");
                set.apply(parsed).0
            });
        let listed: Vec<Value> = set
            .list(Some("vs"))
            .iter()
            .map(|r| serde_json::to_value(r).expect("a resource serializes"))
            .collect();
        let rendered =
            resources_table(config::Kind::VirtualService, &listed, &set.merges()).render();
        let lines: Vec<&str> = rendered.lines().collect();
        assert!(lines[0].ends_with("MERGED"), "{rendered}");
        // Listed by name, merged by age: b-messages was applied first.
        assert!(
            lines[1].starts_with("a-hello")
                && lines[1].ends_with("gateway *: 2 of 2 (b-messages + a-hello)"),
            "{rendered}"
        );
        assert!(
            lines[2].starts_with("b-messages")
                && lines[2].ends_with("gateway *: 1 of 2 (b-messages + a-hello)"),
            "{rendered}"
        );
    }

    #[test]
    fn only_diagnostics_of_listed_resources_are_shown() {
        let vs = json!({"kind": "VirtualService", "metadata": {"name": "helloworld-service"}});
        let diagnostic = |resource: &str| Diagnostic {
            level: "Warning".into(),
            code: "ReferencedResourceNotFound".into(),
            resource: resource.into(),
            field: String::new(),
            message: "m".into(),
        };
        let all = [
            diagnostic("VirtualService default/helloworld-service"),
            diagnostic("VirtualService default/other"),
            diagnostic("DestinationRule default/helloworld-service"),
        ];
        let shown = diagnostics_for(&[vs], &all);
        assert_eq!(shown.len(), 1);
        assert_eq!(
            shown[0].resource,
            "VirtualService default/helloworld-service"
        );
    }

    #[test]
    fn ages_read_naturally() {
        assert_eq!(format_age(250), "250ms");
        assert_eq!(format_age(3_240), "3.2s");
        assert_eq!(format_age(240_000), "4m");
        assert_eq!(format_age(7_200_000), "2h");
    }
}

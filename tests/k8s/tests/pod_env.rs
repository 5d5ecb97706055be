//! The settings a cluster would hand each mesh binary, fed to the binary's
//! own parser: what the kubelet would put in a container's environment
//! (downward-API fields filled in, `$(VAR)` references expanded, as the
//! kubelet does), then `mesh_proxy::config::Config` for every sidecar and
//! the gateway, and mesh-control's command line for the control plane.
//!
//! This catches what schema validation cannot: a sidecar whose inbound port
//! is not the one its Service targets, an app address that is not the app's
//! port, probes or scrape annotations on the wrong port, a control-plane URL
//! that names no Service port, a variable the control plane does not read.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;

use clap::CommandFactory;
use k8s_openapi::api::core::v1::{Container, EnvVar, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_tests::{Manifests, SIDECAR, Workload, render};
use mesh_proxy::config::Config;

/// The pod IP the kubelet would report (any address works; it is checked
/// to come back in the advertised address).
const POD_IP: &str = "10.244.0.17";

fn kind_manifests() -> Manifests {
    let yaml = render("kind").unwrap_or_else(|e| panic!("{e}"));
    Manifests::parse("kind", &yaml).unwrap_or_else(|e| panic!("{e}"))
}

/// A container's environment as the kubelet builds it for pod `pod_name`.
fn kubelet_env(w: &Workload, pod_name: &str, container: &Container) -> HashMap<String, String> {
    let labels = w
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let service_account = w
        .template
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .unwrap_or_else(|| "default".into());
    let mut env: HashMap<String, String> = HashMap::new();
    for EnvVar {
        name,
        value,
        value_from,
    } in container.env.iter().flatten()
    {
        let resolved = match (value, value_from) {
            (Some(value), _) => expand(value, &env),
            (None, Some(from)) => {
                let path = &from
                    .field_ref
                    .as_ref()
                    .unwrap_or_else(|| {
                        panic!(
                            "{}: {name} reads something other than a pod field",
                            w.object.describe()
                        )
                    })
                    .field_path;
                field(path, pod_name, &w.namespace, &labels, &service_account).unwrap_or_else(
                    || {
                        panic!(
                            "{}: {name} reads {path}, which the downward API does not offer",
                            w.object.describe()
                        )
                    },
                )
            }
            (None, None) => String::new(),
        };
        env.insert(name.clone(), resolved);
    }
    env
}

/// A downward-API field (`fieldRef.fieldPath`).
fn field(
    path: &str,
    pod: &str,
    ns: &str,
    labels: &BTreeMap<String, String>,
    sa: &str,
) -> Option<String> {
    if let Some(key) = path
        .strip_prefix("metadata.labels['")
        .and_then(|k| k.strip_suffix("']"))
    {
        // A label the pod lacks is an empty string, as in Kubernetes.
        return Some(labels.get(key).cloned().unwrap_or_default());
    }
    Some(match path {
        "metadata.name" => pod.into(),
        "metadata.namespace" => ns.into(),
        "spec.serviceAccountName" => sa.into(),
        "status.podIP" => POD_IP.into(),
        _ => return None,
    })
}

/// `$(VAR)` expanded from the variables defined before it; an unknown
/// reference stays as written (Kubernetes' rule).
fn expand(value: &str, env: &HashMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("$(") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after.find(')') {
            Some(end) if env.contains_key(&after[..end]) => {
                out.push_str(&env[&after[..end]]);
                rest = &after[end + 1..];
            }
            _ => {
                out.push_str("$(");
                rest = after;
            }
        }
    }
    out + rest
}

fn port_number(container: &Container, port: &IntOrString) -> Option<i32> {
    match port {
        IntOrString::Int(n) => Some(*n),
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name))
            .map(|p| p.container_port),
    }
}

fn probe_port(
    container: &Container,
    probe: &Option<k8s_openapi::api::core::v1::Probe>,
) -> Option<i32> {
    let probe = probe.as_ref()?;
    let port = probe
        .http_get
        .as_ref()
        .map(|h| &h.port)
        .or(probe.tcp_socket.as_ref().map(|t| &t.port))?;
    port_number(container, port)
}

fn named_port(container: &Container, name: &str) -> Option<u16> {
    port_number(container, &IntOrString::String(name.into())).map(|p| p as u16)
}

fn annotation<'a>(t: &'a PodTemplateSpec, key: &str) -> Option<&'a str> {
    t.metadata
        .as_ref()?
        .annotations
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

/// The control plane's API as the manifests expose it: `host:port` of the
/// Service port named `http-api`.
fn control_plane_address(m: &Manifests) -> String {
    let (object, service) = m
        .services
        .iter()
        .find(|(o, _)| o.name == "mesh-control")
        .expect("a mesh-control Service");
    let port = service
        .spec
        .as_ref()
        .unwrap()
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some("http-api"))
        .expect("port http-api")
        .port;
    format!(
        "mesh-control.{}.svc:{port}",
        object.namespace.as_deref().unwrap()
    )
}

#[test]
fn every_sidecar_gets_settings_the_proxy_accepts_and_they_agree_with_the_pod() {
    let m = kind_manifests();
    let control = control_plane_address(&m);
    let mut sidecars = 0;
    for w in m.workloads() {
        let pod = w.template.spec.as_ref().unwrap();
        let Some(sidecar) = pod
            .init_containers
            .iter()
            .flatten()
            .find(|c| c.name == SIDECAR)
        else {
            continue;
        };
        sidecars += 1;
        let what = w.object.describe();
        let pod_name = format!("{}-7d9c5b6f4-x2x9q", w.object.name);
        let config = Config::from_strings(&kubelet_env(&w, &pod_name, sidecar))
            .unwrap_or_else(|e| panic!("{what}: mesh-proxy would refuse to start: {e}"));
        let labels = w
            .template
            .metadata
            .as_ref()
            .unwrap()
            .labels
            .as_ref()
            .unwrap();

        assert_eq!(
            config.service, labels["app"],
            "{what}: the sidecar's service is its app label"
        );
        assert_eq!(
            config.version, labels["version"],
            "{what}: the sidecar's version is its version label"
        );
        assert_eq!(
            config.instance, pod_name,
            "{what}: the instance is the pod's name"
        );
        assert_eq!(
            config.control_url.as_deref(),
            Some(format!("http://{control}").as_str()),
            "{what}: the control-plane URL must name the mesh-control Service's API port"
        );
        // Inbound: the sidecar listens where its Service sends traffic (the
        // port named `http`), and advertises the pod IP with that port.
        let inbound = named_port(sidecar, "http")
            .unwrap_or_else(|| panic!("{what}: the sidecar declares no port `http`"));
        assert_eq!(
            config.inbound_addr.port(),
            inbound,
            "{what}: MESH_INBOUND_ADDR vs the sidecar's port `http`"
        );
        assert_eq!(
            config.advertise_addr,
            Some(SocketAddr::new(POD_IP.parse().unwrap(), inbound)),
            "{what}: advertised address"
        );
        // The app: on loopback, at the port the sidecar forwards to.
        let app = &pod.containers[0];
        let app_env = kubelet_env(&w, &pod_name, app);
        let app_port = named_port(app, "app-http")
            .unwrap_or_else(|| panic!("{what}: the app declares no port `app-http`"));
        assert_eq!(
            config.app_addr,
            SocketAddr::from(([127, 0, 0, 1], app_port)),
            "{what}: MESH_APP_ADDR"
        );
        assert_eq!(
            app_env.get("HOST").map(String::as_str),
            Some("127.0.0.1"),
            "{what}: the app listens on loopback"
        );
        assert_eq!(
            app_env.get("PORT").map(|p| p.parse::<u16>().ok()),
            Some(Some(app_port)),
            "{what}: the app's PORT"
        );
        assert_eq!(
            app_env.get("HTTP_PROXY").map(String::as_str),
            Some(format!("http://127.0.0.1:{}", config.outbound_addr.port()).as_str()),
            "{what}: HTTP_PROXY must be the sidecar's outbound port"
        );
        assert_eq!(
            app_env.get("VERSION"),
            Some(&labels["version"]),
            "{what}: the app's VERSION"
        );
        // Admin: not loopback (the kubelet and Prometheus come from outside),
        // and the port the probes and the scrape annotation name.
        assert!(
            config.admin_addr.ip().is_unspecified(),
            "{what}: the admin port must listen on 0.0.0.0"
        );
        let admin = i32::from(config.admin_addr.port());
        assert_eq!(
            probe_port(sidecar, &sidecar.startup_probe),
            Some(admin),
            "{what}: startup probe port"
        );
        assert_eq!(
            probe_port(sidecar, &sidecar.readiness_probe),
            Some(admin),
            "{what}: readiness probe port"
        );
        assert_eq!(
            annotation(w.template, "prometheus.io/port"),
            Some(admin.to_string().as_str()),
            "{what}: scrape port"
        );
    }
    assert_eq!(
        sidecars, 6,
        "six Guestbook Deployments, each with a sidecar"
    );
}

#[test]
fn the_gateway_gets_settings_the_proxy_accepts_on_its_service_port() {
    let m = kind_manifests();
    let w = m
        .workloads()
        .into_iter()
        .find(|w| w.object.name == "ingressgateway")
        .expect("the gateway Deployment");
    let container = &w.template.spec.as_ref().unwrap().containers[0];
    let config = Config::from_strings(&kubelet_env(&w, "ingressgateway-5f7b9-abcde", container))
        .unwrap_or_else(|e| panic!("the gateway's mesh-proxy would refuse to start: {e}"));
    assert_eq!(config.mode, mesh_api::xds::ProxyMode::Gateway);
    assert_eq!(
        config.gateway_addr.port(),
        named_port(container, "http").unwrap(),
        "MESH_GATEWAY_ADDR vs port http"
    );
    assert!(
        config.gateway_addr.ip().is_unspecified(),
        "the gateway must listen beyond loopback"
    );
    assert_eq!(
        config.labels.get("istio").map(String::as_str),
        Some("ingressgateway"),
        "Gateway resources select istio=ingressgateway"
    );
    assert_eq!(
        probe_port(container, &container.readiness_probe),
        Some(i32::from(config.admin_addr.port()))
    );
    assert_eq!(
        config.control_url.as_deref(),
        Some(format!("http://{}", control_plane_address(&m)).as_str())
    );
}

#[test]
fn the_control_plane_reads_every_variable_and_flag_it_is_given() {
    let m = kind_manifests();
    let w = m
        .workloads()
        .into_iter()
        .find(|w| w.object.name == "mesh-control")
        .expect("the mesh-control Deployment");
    let container = &w.template.spec.as_ref().unwrap().containers[0];
    let env = kubelet_env(&w, "mesh-control-6c8f9-abcde", container);
    // Every variable must be one of mesh-control's settings: turn each into
    // its flag, so the parse below sees exactly what the manifest says.
    let command = mesh_control::Args::command();
    let mut argv = vec!["mesh-control".to_string()];
    argv.extend(container.args.iter().flatten().cloned());
    for (name, value) in &env {
        let arg = command
            .get_arguments()
            .find(|a| a.get_env().is_some_and(|e| e == name.as_str()))
            .unwrap_or_else(|| {
                panic!(
                    "mesh-control reads no variable {name}; the manifest's setting would be ignored"
                )
            });
        argv.push(format!(
            "--{}={value}",
            arg.get_long().expect("env settings have a long flag")
        ));
    }
    let args = <mesh_control::Args as clap::Parser>::try_parse_from(&argv);
    let args =
        args.unwrap_or_else(|e| panic!("mesh-control would refuse its command line {argv:?}: {e}"));
    assert_eq!(args.source, Some(mesh_control::SourceKind::Kubernetes));
    assert_eq!(
        args.namespace, "guestbook",
        "the control plane must serve the Guestbook's namespace"
    );
    let ports: Vec<(String, i32)> = container
        .ports
        .iter()
        .flatten()
        .map(|p| (p.name.clone().unwrap(), p.container_port))
        .collect();
    let port = |name: &str| {
        ports
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, p)| *p as u16)
            .unwrap_or_else(|| panic!("no port {name}"))
    };
    assert_eq!(
        args.listen,
        SocketAddr::from(([0, 0, 0, 0], port("api"))),
        "the API listens on the pod's port `api`"
    );
    assert_eq!(
        args.dashboard_listen.as_deref(),
        Some(format!("0.0.0.0:{}", port("dashboard")).as_str())
    );
    assert_eq!(
        probe_port(container, &container.readiness_probe),
        Some(i32::from(port("api")))
    );
}

#[test]
fn the_kubelet_expansion_rules_hold() {
    let env = HashMap::from([("IP".to_string(), "10.0.0.1".to_string())]);
    assert_eq!(expand("$(IP):15006", &env), "10.0.0.1:15006");
    assert_eq!(expand("$(NOPE):1", &env), "$(NOPE):1");
    assert_eq!(expand("plain", &env), "plain");
}

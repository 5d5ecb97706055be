//! The observability addons (k8s/addons, k8s/overlays/*-addons,
//! scripts/addons-up.sh), checked offline as the rest of k8s/:
//!
//! - both addons overlays render and every object validates strictly
//!   against Kubernetes 1.29 and 1.37; selectors, ports, references and
//!   sidecars hold together as in the core overlays; each addon image is
//!   pinned by tag and pulled `IfNotPresent`;
//! - the addons' requests are counted apart from the core budget, and equal
//!   what scripts/addons-up.sh prints;
//! - every sidecar and the gateway report spans to the addons' Zipkin, and
//!   only in the addons overlays (`MESH_ZIPKIN_URL`);
//! - the rendered Prometheus config passes `promtool check config` and
//!   scrapes every namespace with annotated pods;
//! - Grafana's provisioning files parse, name the Prometheus Service, and
//!   look for dashboards where the dashboards' ConfigMap is mounted;
//! - scripts/addons-dashboards.sh makes that ConfigMap from a directory of
//!   dashboards (a fixture here; Istio's own in scripts/conformance.sh) and
//!   refuses a file that is not a dashboard.
//!
//! Needs kubectl, kubernetes-validate and promtool
//! (scripts/setup-test-machine.sh installs or names them).

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use k8s_tests::{
    Manifests, Requests, SIDECAR, built_images, check_images, check_ports, check_references,
    check_resources, check_selectors, check_sidecars, parse_quantity, render, repo_root,
};
use serde_json::Value;

const ADDON_OVERLAYS: [(&str, &str); 2] =
    [("kind-addons", "kind"), ("minikube-addons", "minikube")];
const ADDONS: [&str; 4] = ["prometheus", "grafana", "kiali", "zipkin"];
/// What the four addons may request together, apart from the core budget.
const ADDONS_CPU_BUDGET_MILLIS: u64 = 500;
const ADDONS_MEMORY_BUDGET_BYTES: u64 = 1 << 30;

fn manifests(overlay: &str) -> Manifests {
    let yaml = render(overlay).unwrap_or_else(|e| panic!("{e}"));
    Manifests::parse(overlay, &yaml).unwrap_or_else(|e| panic!("{e}"))
}

/// The addons' own objects: the four Deployments and what they use.
fn is_addon(name: &str, namespace: Option<&str>) -> bool {
    namespace == Some("mesh-system") && ADDONS.iter().any(|a| name.starts_with(a))
}

fn addons_only(m: &Manifests) -> Manifests {
    Manifests {
        objects: m.objects.clone(),
        deployments: m
            .deployments
            .iter()
            .filter(|(o, _)| is_addon(&o.name, o.namespace.as_deref()))
            .cloned()
            .collect(),
        services: m.services.clone(),
    }
}

fn core_only(m: &Manifests) -> Manifests {
    Manifests {
        objects: m.objects.clone(),
        deployments: m
            .deployments
            .iter()
            .filter(|(o, _)| !is_addon(&o.name, o.namespace.as_deref()))
            .cloned()
            .collect(),
        services: m.services.clone(),
    }
}

fn object<'a>(m: &'a Manifests, kind: &str, namespace: &str, name: &str) -> &'a Value {
    &m.objects
        .iter()
        .find(|o| o.kind == kind && o.name == name && o.namespace.as_deref() == Some(namespace))
        .unwrap_or_else(|| panic!("no {kind} {namespace}/{name} in the addons overlay"))
        .json
}

#[test]
fn the_addons_overlays_render_validate_and_hold_together() {
    let script = std::fs::read_to_string(repo_root().join("scripts/build-images.sh")).unwrap();
    let built = built_images(&script);
    let version = env!("CARGO_PKG_VERSION");
    let dir = tempfile::tempdir().unwrap();
    for (overlay, core) in ADDON_OVERLAYS {
        let m = manifests(overlay);
        for addon in ADDONS {
            assert!(
                m.has("Deployment", "mesh-system", addon),
                "{overlay}: no {addon}"
            );
            assert!(
                m.has("Service", "mesh-system", addon),
                "{overlay}: no Service {addon}"
            );
        }
        let mut problems = check_selectors(&m);
        problems.extend(check_ports(&m));
        problems.extend(check_references(&m));
        problems.extend(check_sidecars(&m));
        // The mesh's own images as the core overlays have them...
        problems.extend(check_images(&core_only(&m), &built, version));
        // ...and the addons' public images pinned by tag.
        for (o, d) in &addons_only(&m).deployments {
            let pod = d.spec.template.spec.as_ref().unwrap();
            for c in &pod.containers {
                let image = c.image.as_deref().unwrap_or_default();
                let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or_default();
                if tag.is_empty() || tag == "latest" || tag.contains('/') {
                    problems.push(format!(
                        "{}: image {image} is not pinned by tag",
                        o.describe()
                    ));
                }
                if c.image_pull_policy.as_deref() != Some("IfNotPresent") {
                    problems.push(format!("{}: pull {image} IfNotPresent", o.describe()));
                }
            }
        }
        assert!(
            problems.is_empty(),
            "{overlay}:\n  {}",
            problems.join("\n  ")
        );

        // Strict schema validation, as the core overlays.
        let path = dir.path().join(format!("{overlay}.yaml"));
        std::fs::write(&path, render(overlay).unwrap()).unwrap();
        for k8s in ["1.29.0", "1.37.0"] {
            let out = Command::new("kubernetes-validate")
                .args(["--strict", "--quiet", "-k", k8s])
                .arg(&path)
                .output()
                .expect("kubernetes-validate runs (pip install kubernetes-validate)");
            assert!(
                out.status.success(),
                "{overlay} does not validate against Kubernetes {k8s}:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }

        // The addons change nothing of the core install but the reporter.
        let plain = manifests(core);
        assert_eq!(
            core_only(&m).deployments.len(),
            plain.deployments.len(),
            "{overlay} must hold every Deployment of {core}"
        );
    }
}

/// `125m` / `576Mi` as the script writes them.
fn script_value(script: &str, name: &str) -> String {
    script
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("scripts/addons-up.sh sets no {name}"))
        .to_string()
}

#[test]
fn the_addons_requests_are_counted_apart_and_printed_right() {
    let m = manifests("kind-addons");
    let (core, core_problems) = check_resources(&core_only(&m));
    assert!(core_problems.is_empty(), "{core_problems:?}");
    let (addons, problems) = check_resources(&addons_only(&m));
    // check_resources holds its input to the core budget; the addons alone
    // stay far under it, and under their own.
    assert!(problems.is_empty(), "{problems:?}");
    assert!(addons.cpu_millis <= ADDONS_CPU_BUDGET_MILLIS, "{addons:?}");
    assert!(
        addons.memory_bytes <= ADDONS_MEMORY_BUDGET_BYTES,
        "{addons:?}"
    );
    eprintln!(
        "core: {}m CPU, {} MiB; addons: {}m CPU, {} MiB (limits {} MiB)",
        core.cpu_millis,
        core.memory_bytes >> 20,
        addons.cpu_millis,
        addons.memory_bytes >> 20,
        addons.memory_limit_bytes >> 20
    );
    let script = std::fs::read_to_string(repo_root().join("scripts/addons-up.sh")).unwrap();
    let printed = Requests {
        cpu_millis: parse_quantity(&script_value(&script, "ADDONS_CPU"), true).unwrap(),
        memory_bytes: parse_quantity(&script_value(&script, "ADDONS_MEMORY"), false).unwrap(),
        memory_limit_bytes: addons.memory_limit_bytes,
    };
    assert_eq!(
        printed, addons,
        "scripts/addons-up.sh prints ADDONS_CPU/ADDONS_MEMORY; they must be the rendered addons' requests"
    );
}

/// Every mesh-proxy container of an overlay: (workload, MESH_ZIPKIN_URL values).
fn reporters(m: &Manifests) -> Vec<(String, Vec<String>)> {
    let mut found = Vec::new();
    for (o, d) in &m.deployments {
        let pod = d.spec.template.spec.as_ref().unwrap();
        let containers = pod
            .containers
            .iter()
            .chain(pod.init_containers.iter().flatten());
        for c in containers.filter(|c| {
            c.name == SIDECAR
                || c.image
                    .as_deref()
                    .unwrap_or_default()
                    .contains("mesh-proxy")
        }) {
            let urls = c
                .env
                .iter()
                .flatten()
                .filter(|e| e.name == "MESH_ZIPKIN_URL")
                .filter_map(|e| e.value.clone())
                .collect();
            found.push((o.describe(), urls));
        }
    }
    found
}

#[test]
fn with_the_addons_every_proxy_reports_to_zipkin_and_only_then() {
    let m = manifests("kind-addons");
    let proxies = reporters(&m);
    assert!(
        proxies.len() >= 7,
        "six Guestbook sidecars and the gateway: {proxies:?}"
    );
    for (workload, urls) in &proxies {
        assert_eq!(
            urls.as_slice(),
            ["http://zipkin.mesh-system:9411/api/v2/spans"],
            "{workload} must report to the addons' Zipkin, once"
        );
    }
    // The URL names a Service and port that exist.
    let zipkin = object(&m, "Service", "mesh-system", "zipkin");
    assert!(
        zipkin["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["port"] == 9411),
        "{zipkin}"
    );
    // Without the addons the sidecars use the control plane's collector.
    for (workload, urls) in reporters(&manifests("kind")) {
        assert!(urls.is_empty(), "{workload} in k8s/overlays/kind: {urls:?}");
    }
}

#[test]
fn the_rendered_prometheus_config_passes_promtool_and_scrapes_every_annotated_namespace() {
    let m = manifests("kind-addons");
    let config = object(&m, "ConfigMap", "mesh-system", "prometheus")["data"]["prometheus.yml"]
        .as_str()
        .expect("the prometheus ConfigMap has prometheus.yml")
        .to_string();
    // Debian's promtool (the one scripts/setup-test-machine.sh installs) is
    // built without Kubernetes service discovery and refuses the
    // `kubernetes_sd_configs` block by name; the image's Prometheus has it.
    // So promtool checks the rest (relabelling, regexes, the scrape job)
    // with the discovery swapped for a static target, and the discovery
    // block itself is checked by the assertions below.
    let mut for_promtool: serde_yaml::Value = serde_yaml::from_str(&config).unwrap();
    let job = &mut for_promtool["scrape_configs"][0];
    let job = job.as_mapping_mut().expect("a scrape job");
    assert!(
        job.remove("kubernetes_sd_configs").is_some(),
        "the scrape job discovers pods: {config}"
    );
    job.insert(
        "static_configs".into(),
        serde_yaml::from_str("[{targets: ['pod.example:15000']}]").unwrap(),
    );
    let for_promtool = serde_yaml::to_string(&for_promtool).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("prometheus.yml");
    std::fs::write(&path, &for_promtool).unwrap();
    let out = Command::new("promtool")
        .args(["check", "config"])
        .arg(&path)
        .output()
        .unwrap_or_else(|e| {
            panic!("promtool could not run ({e}); apt-get install prometheus, or run scripts/setup-test-machine.sh")
        });
    assert!(
        out.status.success(),
        "promtool check config refuses the rendered prometheus.yml:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Every namespace whose pods ask to be scraped is one Prometheus lists.
    let parsed: Value = serde_yaml::from_str(&config).unwrap();
    let listed: BTreeSet<&str> =
        parsed["scrape_configs"][0]["kubernetes_sd_configs"][0]["namespaces"]["names"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
    let annotated: BTreeSet<String> = m
        .deployments
        .iter()
        .filter(|(_, d)| {
            let annotations = d
                .spec
                .template
                .metadata
                .as_ref()
                .and_then(|m| m.annotations.as_ref());
            annotations
                .and_then(|a| a.get("prometheus.io/scrape"))
                .map(String::as_str)
                == Some("true")
        })
        .map(|(o, _)| o.namespace.clone().unwrap_or_default())
        .collect();
    assert!(
        annotated.contains("guestbook") && annotated.contains("mesh-system"),
        "{annotated:?}"
    );
    for ns in &annotated {
        assert!(
            listed.contains(ns.as_str()),
            "Prometheus does not list namespace {ns}: {listed:?}"
        );
    }
    // And its Roles let it list pods there.
    for ns in &annotated {
        let role = object(&m, "Role", ns, "prometheus");
        assert!(role.to_string().contains("\"pods\""), "{role}");
    }
}

#[test]
fn grafanas_provisioning_parses_and_points_at_prometheus_and_the_dashboards() {
    let m = manifests("kind-addons");
    let data = &object(&m, "ConfigMap", "mesh-system", "grafana-provisioning")["data"];
    let datasources: Value = serde_yaml::from_str(data["datasources.yaml"].as_str().unwrap())
        .expect("datasources.yaml parses");
    let providers: Value = serde_yaml::from_str(data["dashboards.yaml"].as_str().unwrap())
        .expect("dashboards.yaml parses");
    assert_eq!(datasources["apiVersion"], 1);
    assert_eq!(providers["apiVersion"], 1);
    let source = &datasources["datasources"][0];
    assert_eq!(source["type"], "prometheus");
    assert_eq!(source["url"], "http://prometheus.mesh-system:9090");
    let prometheus = object(&m, "Service", "mesh-system", "prometheus");
    assert!(
        prometheus["spec"]["ports"].to_string().contains("9090"),
        "{prometheus}"
    );

    // The provider reads the directory where the dashboards' ConfigMap is mounted.
    let path = providers["providers"][0]["options"]["path"]
        .as_str()
        .unwrap();
    let grafana = object(&m, "Deployment", "mesh-system", "grafana");
    let pod = &grafana["spec"]["template"]["spec"];
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["configMap"]["name"] == "istio-grafana-dashboards")
        .expect("grafana mounts the ConfigMap istio-grafana-dashboards");
    assert_eq!(
        volume["configMap"]["optional"], true,
        "Grafana must start before the dashboards are loaded"
    );
    let mount = pod["containers"][0]["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == volume["name"])
        .unwrap();
    assert_eq!(mount["mountPath"], path);
}

fn dashboards_configmap(dir: &Path) -> std::process::Output {
    Command::new("bash")
        .arg(repo_root().join("scripts/addons-dashboards.sh"))
        .arg(dir)
        .output()
        .expect("bash runs")
}

#[test]
fn the_dashboards_configmap_is_made_from_a_directory_of_dashboards() {
    let fixture = repo_root().join("tests/k8s/fixtures/dashboards");
    let out = dashboards_configmap(&fixture);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cm: Value = serde_yaml::from_slice(&out.stdout).unwrap();
    assert_eq!(cm["kind"], "ConfigMap");
    // The name and namespace Grafana mounts.
    assert_eq!(cm["metadata"]["name"], "istio-grafana-dashboards");
    assert_eq!(cm["metadata"]["namespace"], "mesh-system");
    let original = std::fs::read_to_string(fixture.join("tiny-dashboard.json")).unwrap();
    assert_eq!(
        cm["data"]["tiny-dashboard.json"].as_str(),
        Some(original.as_str())
    );
    let dashboard: Value = serde_json::from_str(&original).unwrap();
    assert!(dashboard["panels"].is_array());

    // Something that is not a dashboard (an error page saved as .json) is refused, by name.
    let broken = tempfile::tempdir().unwrap();
    std::fs::write(
        broken.path().join("istio-mesh-dashboard.gen.json"),
        "<html>404</html>",
    )
    .unwrap();
    let out = dashboards_configmap(broken.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("istio-mesh-dashboard.gen.json is not a Grafana dashboard"),
        "{stderr}"
    );
    // An empty directory too.
    let empty = tempfile::tempdir().unwrap();
    let out = dashboards_configmap(empty.path());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no *.json file"));
}

//! Lab 09's gRPC demo on a cluster (k8s/grpc-demo, k8s/overlays/*-grpc),
//! checked offline like the rest of k8s/:
//!
//! - the overlays with the demo render, hold together (selectors, ports,
//!   images, references, native sidecars) and every object validates
//!   strictly against Kubernetes 1.29 and 1.37; the core install stays in
//!   its budget and the demo, counted apart as the addons are, in its own
//!   (four pods with sidecars would not fit the core's 1 GiB of limits);
//! - the demo is what the lab needs: three server replicas behind a Service
//!   whose port says gRPC (name and appProtocol) and reaches the sidecar,
//!   and an idle client whose calls leave through its sidecar;
//! - it is opt-in: the default overlays (what kind-up.sh and minikube-up.sh
//!   apply) do not contain it, and `kubectl apply -k k8s/grpc-demo` on its
//!   own adds only the demo's objects, each labelled so it can be found.
//!
//! Needs kubectl and kubernetes-validate, as tests/manifests.rs.

use std::process::Command;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, Service};
use k8s_tests::{
    Manifests, OVERLAYS, SIDECAR, built_images, check_images, check_ports, check_references,
    check_resources, check_selectors, check_sidecars, render, repo_root, validate_strictly,
};

const GRPC_OVERLAYS: [&str; 2] = ["kind-grpc", "minikube-grpc"];
const PART_OF: &str = "grpc-demo";
/// What the demo's four pods (app and sidecar each) may request and be
/// limited to together, apart from the core budget; k8s/README.md says it.
const DEMO_CPU_BUDGET_MILLIS: u64 = 100;
const DEMO_MEMORY_BUDGET_BYTES: u64 = 256 << 20;
const DEMO_MEMORY_LIMIT_BUDGET_BYTES: u64 = 512 << 20;

fn is_demo(d: &Deployment) -> bool {
    d.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("app.kubernetes.io/part-of"))
        .map(String::as_str)
        == Some(PART_OF)
}

/// The same objects, with only the demo's Deployments (or only the others).
fn split(m: &Manifests, demo: bool) -> Manifests {
    Manifests {
        objects: m.objects.clone(),
        deployments: m
            .deployments
            .iter()
            .filter(|(_, d)| is_demo(d) == demo)
            .cloned()
            .collect(),
        services: m.services.clone(),
    }
}

fn manifests(overlay: &str) -> (String, Manifests) {
    let yaml = render(overlay).unwrap_or_else(|e| panic!("{e}"));
    let m = Manifests::parse(overlay, &yaml).unwrap_or_else(|e| panic!("{e}"));
    (yaml, m)
}

fn deployment<'a>(m: &'a Manifests, name: &str) -> &'a Deployment {
    m.deployments
        .iter()
        .find(|(o, _)| o.name == name && o.namespace.as_deref() == Some("guestbook"))
        .map(|(_, d)| d)
        .unwrap_or_else(|| panic!("no Deployment guestbook/{name} in the gRPC demo"))
}

fn service<'a>(m: &'a Manifests, name: &str) -> &'a Service {
    m.services
        .iter()
        .find(|(o, _)| o.name == name && o.namespace.as_deref() == Some("guestbook"))
        .map(|(_, s)| s)
        .unwrap_or_else(|| panic!("no Service guestbook/{name} in the gRPC demo"))
}

fn app_container<'a>(d: &'a Deployment, name: &str) -> &'a Container {
    let pod = d.spec.template.spec.as_ref();
    pod.and_then(|p| p.containers.iter().find(|c| c.name == name))
        .unwrap_or_else(|| panic!("no container {name} in the Deployment"))
}

fn sidecar(d: &Deployment) -> &Container {
    let pod = d.spec.template.spec.as_ref();
    pod.and_then(|p| {
        p.init_containers
            .iter()
            .flatten()
            .find(|c| c.name == SIDECAR)
    })
    .expect("the demo's pods carry the injected sidecar")
}

fn env<'a>(c: &'a Container, name: &str) -> Option<&'a str> {
    c.env
        .iter()
        .flatten()
        .find(|e| e.name == name)
        .and_then(|e| e.value.as_deref())
}

#[test]
fn the_overlays_with_the_demo_render_and_hold_together() {
    let script = std::fs::read_to_string(repo_root().join("scripts/build-images.sh"))
        .expect("scripts/build-images.sh exists");
    let built = built_images(&script);
    assert!(
        built.contains("hello-grpc"),
        "scripts/build-images.sh must build micromesh/hello-grpc (docker/hello-grpc.Dockerfile)"
    );
    for overlay in GRPC_OVERLAYS {
        let (_, m) = manifests(overlay);
        assert_eq!(
            split(&m, true).deployments.len(),
            2,
            "{overlay}: the demo's two Deployments"
        );
        let mut problems = check_selectors(&m);
        problems.extend(check_ports(&m));
        problems.extend(check_images(&m, &built, env!("CARGO_PKG_VERSION")));
        problems.extend(check_references(&m));
        problems.extend(check_sidecars(&m));
        // The core in its budget, as without the demo...
        problems.extend(check_resources(&split(&m, false)).1);
        // ...and the demo (every container with requests and limits) in its own.
        let (demo, demo_problems) = check_resources(&split(&m, true));
        problems.extend(demo_problems);
        if demo.cpu_millis > DEMO_CPU_BUDGET_MILLIS
            || demo.memory_bytes > DEMO_MEMORY_BUDGET_BYTES
            || demo.memory_limit_bytes > DEMO_MEMORY_LIMIT_BUDGET_BYTES
        {
            problems.push(format!(
                "the gRPC demo requests {}m CPU and {} MiB, limits {} MiB; its budget is \
                 {DEMO_CPU_BUDGET_MILLIS}m, {} MiB and {} MiB (k8s/README.md)",
                demo.cpu_millis,
                demo.memory_bytes >> 20,
                demo.memory_limit_bytes >> 20,
                DEMO_MEMORY_BUDGET_BYTES >> 20,
                DEMO_MEMORY_LIMIT_BUDGET_BYTES >> 20
            ));
        }
        assert!(
            problems.is_empty(),
            "k8s/overlays/{overlay} has problems:\n  {}",
            problems.join("\n  ")
        );
    }
}

#[test]
fn every_object_of_the_demo_overlays_validates_strictly() {
    let dir = tempfile::tempdir().expect("a temp dir");
    for overlay in GRPC_OVERLAYS {
        let problems = validate_strictly(dir.path(), overlay, &manifests(overlay).0);
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }
}

#[test]
fn three_servers_behind_a_grpc_service_that_reaches_their_sidecars() {
    let (_, m) = manifests("kind-grpc");
    let servers = deployment(&m, "hello-grpc-v1");
    assert_eq!(
        servers.spec.replicas,
        Some(3),
        "three endpoints, so per-call balancing has something to spread over"
    );
    let app = app_container(servers, "hello-grpc");
    assert_eq!(
        app.image.as_deref(),
        Some(concat!("micromesh/hello-grpc:", env!("CARGO_PKG_VERSION")))
    );
    // Injected: the app on loopback only, its calls through the sidecar.
    assert_eq!(env(app, "HOST"), Some("127.0.0.1"));
    assert_eq!(
        env(sidecar(servers), "MESH_APP_ADDR"),
        Some("127.0.0.1:8080")
    );

    let spec = service(&m, "hello-grpc")
        .spec
        .as_ref()
        .expect("a Service spec");
    let ports = spec.ports.as_ref().expect("the Service has ports");
    assert_eq!(ports.len(), 1);
    let port = &ports[0];
    assert_eq!(
        port.name.as_deref(),
        Some("grpc"),
        "Istio reads the protocol from the name"
    );
    assert_eq!(port.app_protocol.as_deref(), Some("grpc"));
    assert_eq!(port.port, 8080, "the lab calls hello-grpc:8080");
    // The Service targets the sidecar's inbound port (named `http` by
    // injection), never the app: kube-proxy's one pod per connection is then
    // each pod's sidecar, which forwards to its app on loopback.
    let target = format!("{:?}", port.target_port);
    let sidecar_port = sidecar(servers)
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some("http"))
        .expect("the sidecar has the port named http");
    assert!(target.contains("\"http\""), "targetPort {target}");
    assert_eq!(sidecar_port.container_port, 15006);
}

#[test]
fn the_client_idles_and_its_calls_leave_through_its_sidecar() {
    let (_, m) = manifests("kind-grpc");
    let client = deployment(&m, "hello-grpc-client-v1");
    assert_eq!(client.spec.replicas, Some(1));
    let app = app_container(client, "hello-grpc-client");
    assert_eq!(
        app.command.as_deref(),
        Some(&["python3".to_string(), "/app/client.py".to_string()][..])
    );
    // `--serve` as an argument, not HELLO_GRPC_CLIENT_MODE: `kubectl exec`
    // runs with the container's environment, and the variable would turn
    // the lab's `client.py --calls 30` into a second idle server.
    assert_eq!(app.args.as_deref(), Some(&["--serve".to_string()][..]));
    assert_eq!(env(app, "HELLO_GRPC_CLIENT_MODE"), None);
    assert_eq!(env(app, "HTTP_PROXY"), Some("http://127.0.0.1:15001"));
    sidecar(client);
}

#[test]
fn the_demo_is_opt_in_and_applies_on_its_own() {
    for overlay in OVERLAYS {
        let (yaml, _) = manifests(overlay);
        assert!(
            !yaml.contains("hello-grpc"),
            "k8s/overlays/{overlay} (what the up scripts apply) must not contain the gRPC demo"
        );
    }
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(repo_root().join("k8s/grpc-demo"))
        .output()
        .expect("kubectl runs (tests/manifests.rs says how to install it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let alone = Manifests::parse("grpc-demo", &String::from_utf8_lossy(&out.stdout))
        .unwrap_or_else(|e| panic!("{e}"));
    let mut names: Vec<String> = alone.objects.iter().map(|o| o.describe()).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "Deployment guestbook/hello-grpc-client-v1",
            "Deployment guestbook/hello-grpc-v1",
            "Service guestbook/hello-grpc",
            "ServiceAccount guestbook/hello-grpc",
            "ServiceAccount guestbook/hello-grpc-client",
        ],
        "`kubectl apply -k k8s/grpc-demo` adds the demo and nothing else (no namespace, \
         no mesh): it goes on top of what kind-up.sh installed"
    );
    for o in &alone.objects {
        assert_eq!(
            o.json
                .pointer("/metadata/labels/app.kubernetes.io~1part-of")
                .and_then(|v| v.as_str()),
            Some(PART_OF),
            "{} lacks the label app.kubernetes.io/part-of: {PART_OF}",
            o.describe()
        );
    }
}

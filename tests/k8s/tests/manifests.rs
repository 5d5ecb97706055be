//! The overlays in `k8s/`, rendered and checked offline as a cluster would
//! take them. Needs `kubectl` (for `kubectl kustomize`) and
//! `kubernetes-validate` (pip); scripts/setup-test-machine.sh installs or
//! names both. A missing tool fails the test with that message: a check that
//! cannot run is never counted as passed.

use k8s_tests::{
    Manifests, OVERLAYS, built_images, check_all, check_resources, render, repo_root,
    validate_strictly,
};

fn rendered(overlay: &str) -> String {
    render(overlay).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn every_overlay_renders_and_holds_together() {
    let script = std::fs::read_to_string(repo_root().join("scripts/build-images.sh"))
        .expect("scripts/build-images.sh exists");
    let built = built_images(&script);
    // The manifests use the workspace's version as the image tag.
    let version = env!("CARGO_PKG_VERSION");
    for overlay in OVERLAYS {
        let manifests =
            Manifests::parse(overlay, &rendered(overlay)).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            manifests.deployments.len() >= 8,
            "{overlay}: expected the control plane, the gateway and six Guestbook Deployments, found {}",
            manifests.deployments.len()
        );
        let problems = check_all(&manifests, &built, version);
        assert!(
            problems.is_empty(),
            "k8s/overlays/{overlay} has problems:\n  {}",
            problems.join("\n  ")
        );
        let (total, _) = check_resources(&manifests);
        eprintln!(
            "{overlay}: {} objects, requests {}m CPU and {} MiB in total",
            manifests.objects.len(),
            total.cpu_millis,
            total.memory_bytes >> 20
        );
    }
}

#[test]
fn every_rendered_object_validates_strictly_against_the_kubernetes_schema() {
    let dir = tempfile::tempdir().expect("a temp dir");
    for overlay in OVERLAYS {
        let problems = validate_strictly(dir.path(), overlay, &rendered(overlay));
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }
}

#[test]
fn kinds_port_mapping_reaches_the_gateways_node_port() {
    let cluster: serde_json::Value = serde_yaml::from_str(
        &std::fs::read_to_string(repo_root().join("k8s/kind-cluster.yaml"))
            .expect("k8s/kind-cluster.yaml"),
    )
    .expect("kind-cluster.yaml is YAML");
    let mapping = &cluster["nodes"][0]["extraPortMappings"][0];
    assert_eq!(
        mapping["hostPort"], 8080,
        "the README promises http://localhost:8080"
    );
    let manifests = Manifests::parse("kind", &rendered("kind")).unwrap();
    let (_, gateway) = manifests
        .services
        .iter()
        .find(|(o, _)| o.name == "ingressgateway")
        .expect("the kind overlay has the ingressgateway Service");
    let spec = gateway.spec.as_ref().unwrap();
    assert_eq!(spec.type_.as_deref(), Some("NodePort"));
    let node_port = spec.ports.as_ref().unwrap()[0].node_port;
    assert_eq!(
        node_port.map(i64::from),
        mapping["containerPort"].as_i64(),
        "kind maps container port {} but the gateway's nodePort is {node_port:?}",
        mapping["containerPort"]
    );
}

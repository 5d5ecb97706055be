//! The kind overlay's pods, run: what `kubectl apply -k k8s/overlays/kind`
//! would start on a learner's cluster, started here as containers.
//!
//! No cluster can run on this project's machines, so the test renders the
//! overlay (`kubectl kustomize`), parses it with k8s-openapi, and plays the
//! kubelet for every Deployment (`containers_tests::kubelet`): images,
//! commands, ports, env with the downward API and `$(VAR)` expansion,
//! security contexts, memory limits, native sidecars started first with their
//! startup probe awaited, app containers in the sidecar's network namespace,
//! Service names as Docker network aliases. Then it drives the Guestbook the
//! way a learner's browser would, through the ingress gateway's Service, and
//! checks from the sidecars' access logs that every hop went through one.
//!
//! One change to the manifests, and only one: no API server runs here, so
//! the control plane runs in local-registry mode (`--source local`: the
//! sidecars announce themselves) instead of the overlay's `--source
//! kubernetes`, which would watch Services and Endpoints. The rest of its
//! Deployment (image, env, ports, probes, limits) is used as rendered.
//!
//! The images are the offline-built ones (`scripts/build-offline-images.sh`,
//! tag `dev`), tagged with the overlay's tag (the project's version) so the
//! manifests' image names are run as written.
//!
//!     cargo test -p containers-tests --test kind_pods

use std::collections::BTreeSet;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use containers_tests::images::TAG;
use containers_tests::kubelet::{Cluster, docker};
use containers_tests::pods::{PATIENCE, retry_until_ok};
use containers_tests::runner::{self, Test};
use k8s_tests::Manifests;

/// The local-registry control plane's write token, shared with every proxy.
const CONTROL_TOKEN: &str = "kindpodstestcontroltoken0123456789abcdef";

fn main() -> ExitCode {
    const TESTS: &[Test] = &[("the_kind_overlay_runs_the_guestbook", || {
        Box::pin(the_kind_overlay_runs_the_guestbook())
    })];
    runner::main(TESTS)
}

/// The sidecar's container name in every injected pod.
const SIDECAR: &str = "mesh-proxy";

fn render_kind() -> Manifests {
    let yaml = k8s_tests::render("kind").unwrap_or_else(|e| {
        panic!("could not render k8s/overlays/kind: {e}; this test needs kubectl on PATH")
    });
    Manifests::parse("kind", &yaml).unwrap_or_else(|e| panic!("the kind overlay parses: {e}"))
}

/// Tags each offline-built `micromesh/<name>:dev` image with the tag the
/// manifests ask for.
fn tag_images(m: &Manifests) {
    let images: BTreeSet<String> = m
        .workloads()
        .iter()
        .filter_map(|w| w.template.spec.as_ref())
        .flat_map(|s| {
            s.init_containers
                .iter()
                .flatten()
                .chain(s.containers.iter())
        })
        .filter_map(|c| c.image.clone())
        .collect();
    for image in images {
        let (repo, _) = image
            .rsplit_once(':')
            .unwrap_or_else(|| panic!("image {image} has no tag"));
        let built = format!("{repo}:{TAG}");
        docker(&["tag".into(), built.clone(), image.clone()]).unwrap_or_else(|e| {
            panic!(
                "the manifests run {image}, but {built} was not built by \
                 scripts/build-offline-images.sh: {e}"
            )
        });
    }
}

/// The page at `url`, if it answers 200 (an error otherwise, saying what
/// came instead).
async fn page(http: &reqwest::Client, url: &str) -> anyhow::Result<String> {
    let response = http.get(url).send().await?;
    let status = response.status();
    let body = response.text().await?;
    anyhow::ensure!(status == 200, "HTTP {status}: {body}");
    Ok(body)
}

async fn the_kind_overlay_runs_the_guestbook() {
    let manifests = render_kind();
    tag_images(&manifests);
    let run = format!("mm-kind-{}", std::process::id());
    let mut cluster = Cluster::new(&run, &manifests).expect("a Docker network for the pods");
    cluster.issue_tokens_for(CONTROL_TOKEN);

    // The control plane first (every sidecar's startup probe waits for its
    // first snapshot), then the gateway, then the Guestbook as rendered.
    let mut workloads = manifests.workloads();
    workloads.sort_by_key(|w| match w.object.name.as_str() {
        "mesh-control" => 0,
        "ingressgateway" => 1,
        _ => 2,
    });
    assert!(
        workloads.len() >= 8,
        "the overlay has the control plane, the gateway and six Guestbook Deployments"
    );
    let started = Instant::now();
    for w in &workloads {
        assert_eq!(w.replicas, 1, "{}: one replica each", w.object.name);
        let local_registry = w.object.name == "mesh-control";
        cluster
            .run_pod(w, |spec| {
                if local_registry {
                    // See the module docs: no API server here.
                    spec.containers[0].args = Some(vec!["--source".into(), "local".into()]);
                }
                // A local-registry control plane takes announces only with
                // its write token (mesh/control/src/token.rs): give it one,
                // and every proxy that talks to it the same, as `meshctl up`
                // does. (On a real cluster there is none: announces cannot
                // become endpoints there.)
                let containers = spec.containers.iter_mut();
                for c in containers.chain(spec.init_containers.iter_mut().flatten()) {
                    let talks_to_control =
                        c.env.iter().flatten().any(|e| e.name == "MESH_CONTROL_URL");
                    if local_registry || talks_to_control {
                        c.env.get_or_insert_with(Vec::new).push(
                            k8s_openapi::api::core::v1::EnvVar {
                                name: "MESH_CONTROL_TOKEN".into(),
                                value: Some(CONTROL_TOKEN.into()),
                                ..Default::default()
                            },
                        );
                    }
                }
            })
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", w.object.name));
    }
    cluster
        .await_ready(PATIENCE)
        .await
        .unwrap_or_else(|e| panic!("a pod never became ready: {e}"));
    eprintln!(
        "kind_pods: {} pods running and ready after {:?}",
        cluster.pods.len(),
        started.elapsed()
    );

    // Each sidecar got the env the manifests declare, filled in as the
    // kubelet would: its workload name from the `app` label, its advertised
    // address from its pod IP through `$(MESH_POD_IP)`.
    let ui = cluster.pods_of("guestbook-ui")[0].clone();
    let env = docker(&[
        "inspect".into(),
        "--format".into(),
        "{{range .Config.Env}}{{println .}}{{end}}".into(),
        ui.docker_name(SIDECAR).into(),
    ])
    .unwrap();
    for expected in [
        "MESH_SERVICE=guestbook-ui".to_string(),
        format!("MESH_INSTANCE={}", ui.name),
        "MESH_NAMESPACE=guestbook".to_string(),
        format!("MESH_ADVERTISE_ADDR={}:15006", ui.ip),
    ] {
        assert!(
            env.lines().any(|l| l == expected),
            "{expected} in the ui sidecar's env:\n{env}"
        );
    }

    // The app listens on the pod's loopback only: from outside the pod,
    // its port refuses, and the sidecar's inbound port is the one way in.
    assert!(
        tokio::net::TcpStream::connect((ui.ip, 8080)).await.is_err(),
        "guestbook-ui's app port 8080 answers from outside the pod; it should listen on \
         127.0.0.1 (HOST) behind its sidecar"
    );

    // A browser on the gateway's Service.
    let gateway = cluster.service_addr("mesh-system", "ingressgateway", "http");
    let http = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let url = format!("http://{gateway}/");
    let first = retry_until_ok(
        "the Guestbook page with a greeting, through the gateway",
        async || {
            let page = page(&http, &url).await?;
            anyhow::ensure!(
                page.contains("from helloworld-service <strong>"),
                "no greeting:\n{page}"
            );
            Ok(page)
        },
    )
    .await;
    assert!(first.contains("Hello"), "the greeting:\n{first}");

    // Ready pods are not yet endpoints everywhere: a sidecar announces its
    // instance once its app is ready, and guestbook-service's sidecar learns
    // of sentiment-service's with its next snapshot (on a cluster the same
    // gap is EndpointSlice propagation). Sign only once that snapshot holds
    // the sentiment pod's inbound address, as `meshctl get endpoints` would
    // show; before it, the call answers 503 UH and the message is stored
    // `unknown`, which is the mesh behaving, not the wiring under test.
    let sentiment = cluster.pods_of("sentiment-service")[0].clone();
    let store = cluster.pods_of("guestbook-service")[0].clone();
    let dump = format!("http://{}:15000/config_dump", store.ip);
    let inbound = format!("{}:15006", sentiment.ip);
    retry_until_ok(
        "sentiment-service's endpoint in guestbook-service's sidecar snapshot",
        async || {
            let body = http.get(&dump).send().await?.text().await?;
            anyhow::ensure!(body.contains(&inbound), "not in the snapshot yet");
            Ok(())
        },
    )
    .await;

    // Sign it: ui -> guestbook-service -> sentiment-service, then stored.
    let signed = http
        .post(format!("http://{gateway}/greet"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("name=kind&message=I+love+this+cluster")
        .send()
        .await
        .expect("the gateway answers a post");
    assert_eq!(signed.status(), 303, "signing redirects back to the page");
    let with_message = retry_until_ok("the message with its sentiment", async || {
        let page = page(&http, &url).await?;
        anyhow::ensure!(page.contains("I love this cluster"), "not listed:\n{page}");
        Ok(page)
    })
    .await;
    assert!(
        with_message.contains(r#"class="tag positive""#),
        "sentiment-service called the message positive:\n{with_message}"
    );

    // Every hop through sidecars, read from their access logs:
    // gateway -> ui's sidecar -> ui -> ui's sidecar -> helloworld's and
    // guestbook-service's sidecars -> ... -> sentiment-service's sidecar.
    let sidecar_log = |app: &str| -> String {
        cluster
            .pods_of(app)
            .iter()
            .map(|p| p.logs(SIDECAR))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let hops = [
        (
            "guestbook-ui",
            "inbound GET",
            "the gateway's request for the page",
        ),
        (
            "guestbook-ui",
            "outbound GET helloworld-service",
            "the ui's call for the greeting",
        ),
        (
            "guestbook-ui",
            "outbound POST guestbook-service",
            "the ui's call to sign",
        ),
        ("helloworld-service", "inbound GET", "the greeting request"),
        ("guestbook-service", "inbound POST", "the signing request"),
        (
            "guestbook-service",
            "outbound POST sentiment-service",
            "the call for the sentiment",
        ),
        ("sentiment-service", "inbound POST", "the sentiment request"),
    ];
    for (app, needle, what) in hops {
        let log = sidecar_log(app);
        assert!(
            log.lines().any(|l| l.contains(needle)),
            "{what} is not in {app}'s sidecar access log (looked for {needle:?}):\n{log}"
        );
    }
    let gateway_log = cluster.pods_of("ingressgateway")[0].logs(SIDECAR);
    assert!(
        gateway_log
            .lines()
            .any(|l| l.contains("POST") && l.contains("/greet")),
        "the post is in the gateway's access log:\n{gateway_log}"
    );
}

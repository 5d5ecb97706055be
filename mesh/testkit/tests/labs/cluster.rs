//! The labs' cluster blocks, checked offline.
//!
//! A lab's steps on a cluster (kind or minikube, `k8s/`) are fenced
//! ```` ```sh cluster ```` in the same README, beside the local blocks. The
//! runner cannot run them here (no cluster), so it checks that they can
//! work against what `k8s/` deploys:
//! - every file a `kubectl apply -f` / `kubectl delete -f` names exists, and
//!   each of its documents validates with micromesh's own validation (what
//!   the validating webhook runs, `meshctl validate`) and is a kind and
//!   version the CRDs in `k8s/crds/` serve;
//! - every object a kubectl command names (`deployment/x`, `deployment x`,
//!   `service/x`, `svc/x`, a namespace with `-n`) exists in the rendered
//!   kind overlay (`kubectl kustomize k8s/overlays/kind`, `kind-addons`
//!   for the observability addons, or `kind-grpc` for lab 09's gRPC demo);
//! - every meshctl command is one meshctl runs against a cluster (`get`,
//!   `analyze`, `stat`, `traces`, `dashboard`, and the ones that need no
//!   control plane); `meshctl apply` and the other local-only commands are
//!   refused there (`meshctl --help`, mesh/ctl/src/cli.rs `MODE_HELP`).
//!
//! A lab whose cluster steps drift from `k8s/` (a renamed Deployment, a
//! file moved) fails here, as a local step fails when it stops working.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use mesh_api::config::{ConfigSet, SourceFile};
use serde::Deserialize;

/// The info string that marks a block as a cluster step.
pub const CLUSTER_FENCE: &str = "```sh cluster";

/// What `k8s/` deploys and serves, as the checks need it.
#[derive(Debug, Default)]
pub struct Cluster {
    /// `kind/namespace/name`, lower-case kind (`deployment`, `service`,
    /// `namespace` with an empty namespace).
    pub objects: BTreeSet<String>,
    /// `group/version/Kind` every CRD serves.
    pub served: BTreeSet<String>,
}

impl Cluster {
    /// Read the rendered kind overlay and the CRDs from the repository.
    /// Needs kubectl (its built-in kustomize); without it, fails saying so.
    pub fn from_repo(root: &Path) -> Cluster {
        let mut cluster = Cluster::default();
        // The mesh as kind-up.sh applies it, with the observability
        // addons (scripts/addons-up.sh) that lab 08 opens, and with the gRPC
        // demo (k8s/grpc-demo) that lab 09 applies.
        for overlay in [
            "k8s/overlays/kind",
            "k8s/overlays/kind-addons",
            "k8s/overlays/kind-grpc",
        ] {
            let output = Command::new("kubectl")
                .args(["kustomize", overlay])
                .current_dir(root)
                .output()
                .unwrap_or_else(|e| {
                    panic!(
                        "cannot run `kubectl kustomize {overlay}` ({e}): the labs' cluster \
                         blocks are checked against the rendered overlay; install kubectl \
                         (scripts/setup-test-machine.sh does)"
                    )
                });
            assert!(
                output.status.success(),
                "`kubectl kustomize {overlay}` failed:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
            cluster.add_objects(&String::from_utf8_lossy(&output.stdout));
        }
        let crds = std::fs::read_to_string(root.join("k8s/crds/istio-networking.yaml"))
            .expect("k8s/crds/istio-networking.yaml, the generated CRDs, is missing");
        cluster.add_crds(&crds);
        cluster
    }

    /// Record every object of a multi-document manifest.
    pub fn add_objects(&mut self, manifests: &str) {
        for doc in documents(manifests) {
            let kind = doc["kind"]
                .as_str()
                .unwrap_or_default()
                .to_ascii_lowercase();
            let name = doc["metadata"]["name"].as_str().unwrap_or_default();
            let namespace = doc["metadata"]["namespace"].as_str().unwrap_or_default();
            self.objects.insert(format!("{kind}/{namespace}/{name}"));
        }
    }

    /// Record what each CustomResourceDefinition serves.
    pub fn add_crds(&mut self, crds: &str) {
        for doc in documents(crds) {
            if doc["kind"] != "CustomResourceDefinition" {
                continue;
            }
            let spec = &doc["spec"];
            let group = spec["group"].as_str().unwrap_or_default();
            let kind = spec["names"]["kind"].as_str().unwrap_or_default();
            for version in spec["versions"].as_array().into_iter().flatten() {
                if version["served"] == true {
                    let name = version["name"].as_str().unwrap_or_default();
                    self.served.insert(format!("{group}/{name}/{kind}"));
                }
            }
        }
    }
}

/// Every non-empty document of a YAML stream, as JSON values.
fn documents(text: &str) -> Vec<serde_json::Value> {
    serde_yaml::Deserializer::from_str(text)
        .filter_map(|d| serde_json::to_value(serde_yaml::Value::deserialize(d).ok()?).ok())
        .filter(|v| !v.is_null())
        .collect()
}

/// The cluster blocks of a README, in order.
pub fn cluster_blocks(readme: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut lines = readme.lines();
    while let Some(line) = lines.next() {
        if line.trim() == CLUSTER_FENCE {
            let block: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
            blocks.push(block.join("\n"));
        }
    }
    blocks
}

/// Check one cluster block; every problem, each saying what and where.
pub fn check_block(block: &str, root: &Path, cluster: &Cluster) -> Vec<String> {
    let mut problems = Vec::new();
    for line in block.lines() {
        // `kubectl apply -f talk-era.yaml || echo "rejected..."`: the lab
        // shows a refusal, so the file must be refused.
        let refusal = line.contains("||");
        // Commands joined with `&&`, `;` or `|` are checked one by one.
        for command in line.split(['|', ';', '&']) {
            let words: Vec<&str> = command.split_whitespace().collect();
            match words.first() {
                Some(&"kubectl") => {
                    check_kubectl(&words[1..], refusal, root, cluster, &mut problems)
                }
                Some(&"meshctl") => check_meshctl(&words[1..], &mut problems),
                _ => {}
            }
        }
    }
    problems
}

fn check_kubectl(
    args: &[&str],
    refusal: bool,
    root: &Path,
    cluster: &Cluster,
    problems: &mut Vec<String>,
) {
    let mut namespace = "default".to_string();
    let mut files = Vec::new();
    let mut positional = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let arg = args[i];
        let value = args.get(i + 1).copied().unwrap_or_default();
        match arg {
            "-n" | "--namespace" => {
                namespace = value.to_string();
                i += 1;
            }
            "-f" | "--filename" => {
                files.push(value.to_string());
                i += 1;
            }
            // Flags with a value we do not need.
            "-l" | "--selector" | "-o" | "--output" | "--replicas" | "-c" | "--container"
            | "--context" | "--for" | "--timeout" | "--tail" => i += 1,
            _ if arg.starts_with("--namespace=") => {
                namespace = arg["--namespace=".len()..].to_string();
            }
            _ if arg.starts_with("--replicas=") || arg.starts_with('-') => {}
            _ => positional.push(arg),
        }
        i += 1;
    }
    if !cluster.objects.contains(&format!("namespace//{namespace}")) && namespace != "default" {
        problems.push(format!(
            "`kubectl {}`: namespace {namespace} is not in k8s/overlays/kind",
            args.join(" ")
        ));
    }
    for file in files {
        check_path(&file, refusal, root, cluster, problems);
    }
    // `kubectl VERB TYPE/NAME` or `kubectl VERB TYPE NAME`; only the kinds
    // the labs name are checked.
    let Some((verb, rest)) = positional.split_first() else {
        return;
    };
    if !matches!(
        *verb,
        "get"
            | "describe"
            | "scale"
            | "rollout"
            | "set"
            | "logs"
            | "port-forward"
            | "delete"
            | "edit"
    ) {
        return;
    }
    let rest: Vec<&str> = match (*verb, rest) {
        ("rollout" | "set", [_action, tail @ ..]) => tail.to_vec(),
        _ => rest.to_vec(),
    };
    let named: Vec<String> = match rest.as_slice() {
        [kind, names @ ..] if !kind.contains('/') => {
            names.iter().map(|n| format!("{kind}/{n}")).collect()
        }
        many => many
            .iter()
            .filter(|w| w.contains('/'))
            .map(|w| w.to_string())
            .collect(),
    };
    for kind_name in &named {
        let (kind, name) = kind_name.split_once('/').unwrap();
        let Some(kind) = canonical_kind(kind) else {
            continue;
        };
        let key = match kind {
            "namespace" => format!("namespace//{name}"),
            _ => format!("{kind}/{namespace}/{name}"),
        };
        if !cluster.objects.contains(&key) {
            problems.push(format!(
                "`kubectl {}` names {kind} {name} in namespace {namespace}, which \
                 k8s/overlays/kind does not deploy; fix the lab or k8s/ so they agree",
                args.join(" ")
            ));
        }
    }
}

/// What meshctl does against a cluster: it reads the control plane through
/// the API server (`mesh/ctl/src/cluster.rs`)...
pub const MESHCTL_ON_A_CLUSTER: &[&str] = &["get", "analyze", "stat", "traces", "dashboard"];
/// ...and these need no control plane at all (files, HTTP to the gateway).
pub const MESHCTL_ANYWHERE: &[&str] = &["validate", "inject", "load", "help"];
/// The commands meshctl keeps to the local mesh (`MODE_HELP` names them).
pub const MESHCTL_LOCAL_ONLY: &[&str] = &[
    "apply", "delete", "reset", "up", "down", "scale", "restart", "logs", "exec", "identity",
];

fn check_meshctl(args: &[&str], problems: &mut Vec<String>) {
    // Global flags may come first: `meshctl --context kind-micromesh get svc`.
    let mut words = args.iter();
    let command = loop {
        match words.next() {
            Some(&("--context" | "--kubeconfig" | "--workdir" | "--root")) => {
                words.next();
            }
            Some(flag) if flag.starts_with('-') => {}
            Some(command) => break *command,
            None => return,
        }
    };
    if MESHCTL_ON_A_CLUSTER.contains(&command) || MESHCTL_ANYWHERE.contains(&command) {
        return;
    }
    let instead = match command {
        "apply" | "delete" => format!("`kubectl -n guestbook {command} -f FILE`"),
        "reset" => "`kubectl -n guestbook delete virtualservices,destinationrules,gateways --all`"
            .to_string(),
        "scale" | "restart" => {
            "`kubectl -n guestbook scale deployment ...` or `kubectl rollout restart`".to_string()
        }
        "logs" => "`kubectl -n guestbook logs deployment/NAME -c mesh-proxy`".to_string(),
        _ => "`./scripts/kind-up.sh` and kubectl".to_string(),
    };
    let why = if MESHCTL_LOCAL_ONLY.contains(&command) {
        "acts on the local mesh only"
    } else {
        "is not a meshctl command"
    };
    problems.push(format!(
        "`meshctl {}`: meshctl {command} {why}; on a cluster use {instead}",
        args.join(" ")
    ));
}

fn canonical_kind(kind: &str) -> Option<&'static str> {
    Some(match kind.to_ascii_lowercase().as_str() {
        "deployment" | "deployments" | "deploy" => "deployment",
        "service" | "services" | "svc" => "service",
        "namespace" | "namespaces" | "ns" => "namespace",
        "serviceaccount" | "serviceaccounts" | "sa" => "serviceaccount",
        _ => return None,
    })
}

/// `-f` takes a file or a directory (every YAML file in it, as kubectl).
fn check_path(
    file: &str,
    refusal: bool,
    root: &Path,
    cluster: &Cluster,
    problems: &mut Vec<String>,
) {
    let path = root.join(file);
    if !path.is_dir() {
        return check_file(file, refusal, root, cluster, problems);
    }
    let mut files: Vec<String> = std::fs::read_dir(&path)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .map(|p| p.strip_prefix(root).unwrap().to_string_lossy().to_string())
        .collect();
    files.sort();
    for file in files {
        check_file(&file, refusal, root, cluster, problems);
    }
}

fn check_file(
    file: &str,
    refusal: bool,
    root: &Path,
    cluster: &Cluster,
    problems: &mut Vec<String>,
) {
    let path = root.join(file);
    let Ok(content) = std::fs::read_to_string(&path) else {
        problems.push(format!("`-f {file}`: no such file in the repository"));
        return;
    };
    let source = SourceFile {
        name: file.to_string(),
        content: content.clone(),
    };
    match ConfigSet::parse(&[source]) {
        Err(errors) if !refusal => problems.push(format!(
            "`-f {file}` does not validate (the webhook would refuse it):\n{errors}"
        )),
        Ok(_) if refusal => problems.push(format!(
            "`-f {file}` is shown being refused (`|| ...`), but it validates"
        )),
        _ => {}
    }
    for doc in documents(&content) {
        let api_version = doc["apiVersion"].as_str().unwrap_or_default();
        let kind = doc["kind"].as_str().unwrap_or_default();
        if !cluster.served.contains(&format!("{api_version}/{kind}")) {
            problems.push(format!(
                "`-f {file}`: {kind} {api_version} is not served by the CRDs in k8s/crds"
            ));
        }
    }
}

// === tests ===

/// A cluster with a little of what k8s/ deploys.
fn tiny_cluster() -> Cluster {
    let mut cluster = Cluster::default();
    cluster.add_objects(
        "kind: Namespace\nmetadata: {name: guestbook}\n---\n\
         kind: Deployment\nmetadata: {name: helloworld-service-v2, namespace: guestbook}\n---\n\
         kind: Service\nmetadata: {name: helloworld-service, namespace: guestbook}\n",
    );
    cluster.add_crds(
        "kind: CustomResourceDefinition\nspec:\n  group: networking.istio.io\n  names: {kind: DestinationRule}\n  \
         versions: [{name: v1, served: true}]\n",
    );
    cluster
}

#[test]
fn a_broken_reference_in_a_cluster_block_fails_the_check() {
    let root = super::repo_root();
    let cluster = tiny_cluster();
    let good = "kubectl -n guestbook scale deployment helloworld-service-v2 --replicas=2\n\
                kubectl get -n guestbook svc/helloworld-service\n\
                kubectl apply -n guestbook -f labs/03-canary/destination-rule.yaml";
    assert_eq!(check_block(good, &root, &cluster), Vec::<String>::new());

    // A Deployment k8s/ does not have, in either spelling.
    for broken in [
        "kubectl -n guestbook scale deployment helloworld-service-v3 --replicas=2",
        "kubectl -n guestbook rollout status deployment/helloworld-service-v3",
    ] {
        let problems = check_block(broken, &root, &cluster);
        assert_eq!(problems.len(), 1, "{broken}: {problems:?}");
        assert!(
            problems[0].contains("helloworld-service-v3"),
            "{problems:?}"
        );
    }
    // The right name in the wrong namespace.
    let problems = check_block(
        "kubectl get deployment/helloworld-service-v2",
        &root,
        &cluster,
    );
    assert!(problems[0].contains("namespace default"), "{problems:?}");
    // A file that is not there, and one that does not validate.
    let problems = check_block("kubectl apply -f labs/03-canary/nope.yaml", &root, &cluster);
    assert!(problems[0].contains("no such file"), "{problems:?}");
    let problems = check_block(
        "kubectl apply -f labs/05-fault-injection/talk-era-delay.yaml",
        &root,
        &cluster,
    );
    assert!(
        problems.iter().any(|p| p.contains("does not validate")),
        "{problems:?}"
    );
    // A refusal the lab shows must be one.
    let problems = check_block(
        "kubectl apply -f labs/03-canary/destination-rule.yaml || echo rejected",
        &root,
        &cluster,
    );
    assert!(problems[0].contains("but it validates"), "{problems:?}");
    // A kind and version no CRD serves (here: no VirtualService CRD at all).
    let problems = check_block(
        "kubectl apply -f labs/03-canary/all-v1.yaml",
        &root,
        &cluster,
    );
    assert!(
        problems.iter().any(|p| p.contains("not served")),
        "{problems:?}"
    );
}

#[test]
fn a_meshctl_command_in_a_cluster_block_must_work_on_a_cluster() {
    let root = super::repo_root();
    let cluster = tiny_cluster();
    let good = "meshctl get proxies\n\
                meshctl --context kind-micromesh analyze\n\
                meshctl stat && meshctl traces --service sentiment-service --limit 1\n\
                meshctl dashboard &\n\
                meshctl validate -f labs/03-canary/all-v1.yaml";
    assert_eq!(check_block(good, &root, &cluster), Vec::<String>::new());

    let problems = check_block(
        "meshctl apply -f labs/03-canary/all-v1.yaml",
        &root,
        &cluster,
    );
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains("local mesh only"), "{problems:?}");
    assert!(
        problems[0].contains("kubectl -n guestbook apply -f"),
        "{problems:?}"
    );
    let problems = check_block(
        "kubectl get svc -n guestbook; meshctl scale a=2",
        &root,
        &cluster,
    );
    assert!(problems[0].contains("meshctl scale"), "{problems:?}");
    let problems = check_block("meshctl frobnicate", &root, &cluster);
    assert!(
        problems[0].contains("not a meshctl command"),
        "{problems:?}"
    );
}

#[test]
fn the_local_only_commands_are_the_ones_meshctl_help_names() {
    // meshctl's --help says which commands stay local; this list and it
    // must agree, or a lab could show a command meshctl refuses.
    let root = super::repo_root();
    let cli = std::fs::read_to_string(root.join("mesh/ctl/src/cli.rs")).unwrap();
    let sentence = cli
        .split("Kubernetes objects: `kubectl apply -f`")
        .nth(1)
        .and_then(|rest| rest.split("act on the local").next())
        .and_then(|rest| rest.rsplit("meshctl ").next())
        .expect("mesh/ctl/src/cli.rs MODE_HELP names the local-only commands");
    let named: BTreeSet<&str> = sentence
        .split([',', ' ', '\n', '\\'])
        .map(str::trim)
        .filter(|w| !w.is_empty() && *w != "and")
        .collect();
    let ours: BTreeSet<&str> = MESHCTL_LOCAL_ONLY.iter().copied().collect();
    assert_eq!(named, ours, "MODE_HELP: {sentence:?}");
    for command in MESHCTL_ON_A_CLUSTER {
        assert!(
            cli.contains("On a cluster, get, analyze, stat, traces and dashboard"),
            "MODE_HELP does not name {command} among the cluster commands"
        );
    }
}

#[test]
fn every_labs_cluster_blocks_agree_with_k8s() {
    let root = super::repo_root();
    let cluster = Cluster::from_repo(&root);
    assert!(
        cluster
            .objects
            .contains("deployment/guestbook/helloworld-service-v2"),
        "the rendered overlay looks wrong: {:?}",
        cluster.objects
    );
    let mut labs: Vec<_> = std::fs::read_dir(root.join("labs"))
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("README.md").exists())
        .collect();
    labs.sort();
    let mut checked = 0;
    let mut problems = Vec::new();
    for lab in labs {
        let name = lab.file_name().unwrap().to_string_lossy().to_string();
        let readme = std::fs::read_to_string(lab.join("README.md")).unwrap();
        for block in cluster_blocks(&readme) {
            checked += 1;
            problems.extend(
                check_block(&block, &root, &cluster)
                    .into_iter()
                    .map(|p| format!("lab {name}: {p}")),
            );
        }
    }
    assert!(checked > 0, "no lab has a ```sh cluster block");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

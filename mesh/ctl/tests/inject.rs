//! `meshctl inject`, run as a user runs it, against golden files.
//!
//! Each `tests/inject/NAME.yaml` is an input; `tests/inject/NAME.out.yaml`
//! is what meshctl must print for it. After a deliberate change to the
//! injection, regenerate the golden files with
//! `UPDATE_GOLDEN=1 cargo test -p meshctl --test inject` and read the diff.
//!
//! The last test holds the Guestbook's committed, injected manifests
//! (`k8s/base/guestbook.yaml`) to what `meshctl inject` makes of their
//! source today, so the cluster never runs a stale sidecar.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/inject")
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn meshctl(args: &[&str], stdin: Option<&str>) -> Output {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("meshctl starts");
    let mut pipe = child.stdin.take().expect("stdin is piped");
    pipe.write_all(stdin.unwrap_or("").as_bytes())
        .expect("meshctl reads stdin");
    drop(pipe);
    child.wait_with_output().expect("meshctl runs")
}

fn inject_ok(path: &Path) -> String {
    let out = meshctl(&["inject", "-f", path.to_str().unwrap()], None);
    assert!(
        out.status.success(),
        "meshctl inject -f {} failed: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("YAML is UTF-8")
}

/// Compares meshctl's output for `NAME.yaml` with `NAME.out.yaml`.
fn golden(name: &str) -> String {
    let input = dir().join(format!("{name}.yaml"));
    let expected_path = dir().join(format!("{name}.out.yaml"));
    let actual = inject_ok(&input);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&expected_path, &actual).expect("golden file written");
    }
    let expected = std::fs::read_to_string(&expected_path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; create it with UPDATE_GOLDEN=1 cargo test -p meshctl --test inject",
            expected_path.display()
        )
    });
    assert_eq!(
        actual,
        expected,
        "meshctl inject -f {} differs from {}; if the change is intended, regenerate with \
         UPDATE_GOLDEN=1 cargo test -p meshctl --test inject",
        input.display(),
        expected_path.display()
    );
    actual
}

fn docs(yaml: &str) -> Vec<serde_json::Value> {
    use serde::Deserialize;
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| serde_json::Value::deserialize(d).expect("valid YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

#[test]
fn a_deployment_gets_a_native_sidecar_and_its_service_passes_through() {
    let out = docs(&golden("deployment"));
    assert_eq!(out.len(), 2);
    let pod = &out[0]["spec"]["template"]["spec"];
    assert_eq!(pod["initContainers"][0]["name"], "mesh-proxy");
    assert_eq!(pod["initContainers"][0]["restartPolicy"], "Always");
    // The Service is printed as it came.
    assert_eq!(
        out[1],
        docs(&std::fs::read_to_string(dir().join("deployment.yaml")).unwrap())[1]
    );
}

#[test]
fn a_statefulset_keeps_its_own_init_container_after_the_sidecar() {
    let out = docs(&golden("statefulset"));
    let init = out[0]["spec"]["template"]["spec"]["initContainers"]
        .as_array()
        .unwrap();
    let names: Vec<_> = init.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["mesh-proxy", "migrate"]);
    // The unnamed port stays unnamed; the sidecar's inbound port is `http`.
    assert_eq!(init[0]["ports"][0]["name"], "http");
    assert_eq!(
        out[0]["spec"]["volumeClaimTemplates"],
        docs(&std::fs::read_to_string(dir().join("statefulset.yaml")).unwrap())[0]["spec"]["volumeClaimTemplates"]
    );
}

#[test]
fn in_a_two_container_pod_both_use_the_proxy_and_only_the_app_moves_to_loopback() {
    let out = docs(&golden("two-containers"));
    let containers = out[0]["spec"]["containers"].as_array().unwrap();
    let env = |i: usize, name: &str| {
        containers[i]["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name)
            .map(|v| v["value"].clone())
    };
    assert_eq!(env(0, "HOST"), Some("127.0.0.1".into()));
    assert_eq!(env(1, "HOST"), None);
    assert_eq!(env(0, "HTTP_PROXY"), Some("http://127.0.0.1:15001".into()));
    assert_eq!(env(1, "HTTP_PROXY"), Some("http://127.0.0.1:15001".into()));
    assert_eq!(containers[1]["ports"][0]["name"], "metrics");
}

#[test]
fn an_injected_workload_is_left_as_it_is() {
    let once = inject_ok(&dir().join("deployment.yaml"));
    assert_eq!(golden("already-injected"), once);
}

#[test]
fn an_opted_out_pod_is_left_as_it_is() {
    let out = golden("opted-out");
    assert_eq!(
        docs(&out),
        docs(&std::fs::read_to_string(dir().join("opted-out.yaml")).unwrap())
    );
}

#[test]
fn stdin_gives_the_same_as_a_file() {
    let text = std::fs::read_to_string(dir().join("deployment.yaml")).unwrap();
    let out = meshctl(&["inject", "-f", "-"], Some(&text));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        inject_ok(&dir().join("deployment.yaml"))
    );
}

#[test]
fn invalid_yaml_fails_naming_the_document_and_prints_nothing() {
    let path = dir().join("invalid.yaml");
    let out = meshctl(&["inject", "-f", path.to_str().unwrap()], None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        out.stdout.is_empty(),
        "nothing is printed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        stderr.contains("invalid.yaml: document 1 is not valid YAML"),
        "{stderr}"
    );
}

#[test]
fn a_workload_that_cannot_be_injected_fails_with_the_reason() {
    let path = dir().join("no-port.yaml");
    let out = meshctl(&["inject", "-f", path.to_str().unwrap()], None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    assert!(
        stderr.contains(
            "no-port.yaml: document 1: Deployment jobs/worker: no container declares a port"
        ) && stderr.contains("named `http`"),
        "{stderr}"
    );
}

#[test]
fn a_missing_file_says_how_to_read_stdin() {
    let out = meshctl(&["inject", "-f", "/nonexistent/app.yaml"], None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("cannot read /nonexistent/app.yaml") && stderr.contains("-f -"),
        "{stderr}"
    );
}

#[test]
fn the_committed_guestbook_manifests_are_what_meshctl_inject_makes_of_their_source() {
    let root = repo_root();
    let committed_path = root.join("k8s/base/guestbook.yaml");
    let committed =
        std::fs::read_to_string(&committed_path).expect("k8s/base/guestbook.yaml exists");
    // The file opens with a comment saying it is generated; the rest is
    // meshctl's output, byte for byte.
    let body: String = committed
        .split_inclusive('\n')
        .skip_while(|line| line.starts_with('#'))
        .collect();
    let fresh = inject_ok(&root.join("k8s/guestbook/source.yaml"));
    assert!(
        body == fresh,
        "k8s/base/guestbook.yaml is stale: it is not what `meshctl inject -f \
         k8s/guestbook/source.yaml` prints today; regenerate it as k8s/README.md says"
    );
}

#[test]
fn the_committed_grpc_demo_manifests_are_what_meshctl_inject_makes_of_their_source() {
    // Lab 09's gRPC demo on a cluster (k8s/grpc-demo), injected the
    // Guestbook's way: committed, and held to its source the same way.
    let root = repo_root();
    let committed = std::fs::read_to_string(root.join("k8s/grpc-demo/hello-grpc.yaml"))
        .expect("k8s/grpc-demo/hello-grpc.yaml exists");
    let body: String = committed
        .split_inclusive('\n')
        .skip_while(|line| line.starts_with('#'))
        .collect();
    let fresh = inject_ok(&root.join("k8s/grpc-demo/source.yaml"));
    assert!(
        body == fresh,
        "k8s/grpc-demo/hello-grpc.yaml is stale: it is not what `meshctl inject -f \
         k8s/grpc-demo/source.yaml` prints today; regenerate it as k8s/README.md says"
    );
}

//! The cluster scripts, run where they must refuse to start: a laptop
//! without kind (or minikube), or with one too old for native sidecars.
//! Each must fail at once, before building or creating anything, with a
//! message that names what to install. They also pass `shellcheck`.
//!
//! The scripts run with a PATH of their own: the few system tools they use
//! before their checks (bash, sed, sort...) linked in, and fakes for docker,
//! kubectl, kind and minikube that answer the version questions and record
//! every other call, so the test sees that nothing was built or applied.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use k8s_tests::repo_root;

const SCRIPTS: [&str; 4] = [
    "kind-up.sh",
    "minikube-up.sh",
    "down.sh",
    "cluster-common.sh",
];

/// System tools the scripts use before (and while) checking prerequisites.
const SYSTEM_TOOLS: [&str; 9] = [
    "bash", "env", "sed", "sort", "head", "grep", "dirname", "seq", "cat",
];

fn find_on_path(tool: &str) -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(tool))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{tool} is not on PATH; the script tests need it"))
}

/// A bin directory with the system tools and the given fakes, nothing else.
struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    fn new(fakes: &[(&str, &str)]) -> Sandbox {
        let dir = tempfile::tempdir().expect("a temp dir");
        for tool in SYSTEM_TOOLS {
            std::os::unix::fs::symlink(find_on_path(tool), dir.path().join(tool)).expect("symlink");
        }
        for (name, script) in fakes {
            let path = dir.path().join(name);
            // Every fake records how it was called, then does what it was told.
            let body = format!("#!/bin/bash\necho \"{name} $*\" >> \"$CALLS\"\n{script}\n");
            std::fs::write(&path, body).expect("fake written");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        Sandbox { dir }
    }

    fn calls_file(&self) -> PathBuf {
        self.dir.path().join("calls.log")
    }

    fn run(&self, script: &str, args: &[&str]) -> (Output, Duration, String) {
        self.run_with(script, args, &[])
    }

    fn run_with(
        &self,
        script: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> (Output, Duration, String) {
        let started = Instant::now();
        let out = Command::new(self.dir.path().join("bash"))
            .arg(repo_root().join("scripts").join(script))
            .args(args)
            .env_clear()
            .envs(env.iter().copied())
            .env("PATH", self.dir.path())
            .env("CALLS", self.calls_file())
            .env("HOME", self.dir.path())
            .output()
            .expect("bash runs");
        let calls = std::fs::read_to_string(self.calls_file()).unwrap_or_default();
        (out, started.elapsed(), calls)
    }
}

/// A docker that is installed and answers, and a current kubectl.
const DOCKER: (&str, &str) = (
    "docker",
    r#"case "$1" in version) echo 27.3.1;; info) exit 0;; *) exit 0;; esac"#,
);
const KUBECTL: (&str, &str) = (
    "kubectl",
    r#"[ "$1" = version ] && echo "Client Version: v1.31.2""#,
);

/// Exit status, stderr, and that the script stopped before doing anything.
fn assert_refused(script: &str, (out, took, calls): (Output, Duration, String), expected: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "{script} must fail; stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    for text in expected {
        assert!(
            stderr.contains(text),
            "{script}'s message lacks {text:?}:\n{stderr}"
        );
    }
    assert!(
        took < Duration::from_secs(10),
        "{script} took {took:?} to refuse; it must fail at once"
    );
    for action in ["build", "create", "start", "load", "apply", "delete"] {
        assert!(
            !calls
                .lines()
                .any(|l| l.split_whitespace().nth(1) == Some(action)),
            "{script} ran `{action}` before refusing:\n{calls}"
        );
    }
}

#[test]
fn kind_up_without_kind_names_it_and_how_to_install_it() {
    let sandbox = Sandbox::new(&[DOCKER, KUBECTL]);
    assert_refused(
        "kind-up.sh",
        sandbox.run("kind-up.sh", &[]),
        &["kind is missing", "kind.sigs.k8s.io", "0.21.0"],
    );
}

#[test]
fn kind_up_with_a_kind_too_old_for_native_sidecars_says_so() {
    let old_kind = (
        "kind",
        r#"[ "$1" = version ] && echo "kind v0.17.0 go1.19.2 linux/amd64""#,
    );
    let sandbox = Sandbox::new(&[DOCKER, KUBECTL, old_kind]);
    assert_refused(
        "kind-up.sh",
        sandbox.run("kind-up.sh", &[]),
        &["kind 0.17.0 is too old", "1.29", "install a newer kind"],
    );
}

#[test]
fn kind_up_reports_every_missing_tool_at_once() {
    let sandbox = Sandbox::new(&[]);
    assert_refused(
        "kind-up.sh",
        sandbox.run("kind-up.sh", &[]),
        &[
            "3 prerequisite(s) missing",
            "docker is missing",
            "kind is missing",
            "kubectl is missing",
        ],
    );
}

#[test]
fn minikube_up_without_minikube_or_with_an_old_one_refuses() {
    let sandbox = Sandbox::new(&[DOCKER, KUBECTL]);
    assert_refused(
        "minikube-up.sh",
        sandbox.run("minikube-up.sh", &[]),
        &["minikube is missing", "minikube.sigs.k8s.io"],
    );
    let old = ("minikube", r#"[ "$1" = version ] && echo "v1.30.1""#);
    let sandbox = Sandbox::new(&[DOCKER, KUBECTL, old]);
    assert_refused(
        "minikube-up.sh",
        sandbox.run("minikube-up.sh", &[]),
        &["minikube 1.30.1 is too old", "1.33.0"],
    );
}

#[test]
fn kind_up_goes_past_its_checks_when_everything_is_there() {
    // The control for the tests above: with a current kind the checks pass
    // and the script goes on to the cluster (the fake kind then fails the
    // creation, which ends the run).
    let kind = (
        "kind",
        r#"case "$1" in version) echo "kind v0.27.0 go1.23.4 linux/amd64";; get) exit 0;; *) exit 1;; esac"#,
    );
    let sandbox = Sandbox::new(&[DOCKER, KUBECTL, kind]);
    let (out, _, calls) = sandbox.run("kind-up.sh", &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("docker 27.3.1, kind 0.27.0, kubectl 1.31.2"),
        "{stdout}"
    );
    assert!(
        calls.contains("kind create cluster --config k8s/kind-cluster.yaml"),
        "{calls}"
    );
    assert!(!out.status.success());
}

#[test]
fn down_says_what_it_needs() {
    let sandbox = Sandbox::new(&[]);
    assert_refused(
        "down.sh",
        sandbox.run("down.sh", &[]),
        &["usage: scripts/down.sh kind|minikube"],
    );
    assert_refused(
        "down.sh",
        sandbox.run("down.sh", &["kind"]),
        &["kind is not installed"],
    );
    // Twice in a row on a machine where the cluster is already gone: fine.
    let kind = ("kind", r#"[ "$1" = get ] && exit 0; exit 0"#);
    let sandbox = Sandbox::new(&[kind]);
    for _ in 0..2 {
        let (out, _, _) = sandbox.run("down.sh", &["kind"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            String::from_utf8_lossy(&out.stdout)
                .contains("no kind cluster micromesh; nothing to remove")
        );
    }
}

#[test]
fn the_scripts_pass_shellcheck() {
    let paths: Vec<PathBuf> = SCRIPTS
        .iter()
        .map(|s| repo_root().join("scripts").join(s))
        .collect();
    let out = Command::new("shellcheck")
        .args(&paths)
        .output()
        .unwrap_or_else(|e| {
            panic!("shellcheck could not run ({e}); install it (Debian: apt-get install shellcheck) or run scripts/setup-test-machine.sh")
        });
    assert!(
        out.status.success(),
        "shellcheck found problems:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn kind_up_runs_through_twice_on_an_existing_cluster() {
    // Every tool answers as on a laptop where the cluster already exists
    // and the images are built: the whole flow runs, twice, and never
    // creates a cluster again.
    let kind = (
        "kind",
        r#"case "$1" in version) echo "kind v0.27.0 go1.23.4 linux/amd64";; get) echo micromesh;; *) exit 0;; esac"#,
    );
    let kubectl = (
        "kubectl",
        r#"case "$*" in
  "version --client") echo "Client Version: v1.31.2";;
  *"get deployments -o name"*) echo deployment.apps/one; echo deployment.apps/two;;
  *) exit 0;;
esac"#,
    );
    let curl = (
        "curl",
        r#"echo '<html><title>Guestbook (v1)</title></html>'"#,
    );
    let sandbox = Sandbox::new(&[DOCKER, kubectl, kind, curl]);
    for run in 1..=2 {
        let (out, _, calls) = sandbox.run_with("kind-up.sh", &[], &[("SKIP_BUILD", "1")]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "run {run} failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains("cluster micromesh exists; reusing it"),
            "{stdout}"
        );
        // One progress line per Deployment, in both namespaces.
        assert!(stdout.contains("[1/4] mesh-system/one"), "{stdout}");
        assert!(stdout.contains("[4/4] guestbook/two"), "{stdout}");
        assert!(
            stdout.contains("the Guestbook answers at http://localhost:8080/"),
            "{stdout}"
        );
        assert!(
            stdout.contains("scripts/down.sh kind"),
            "next steps: {stdout}"
        );
        assert!(!calls.contains("kind create"), "{calls}");
        assert!(
            calls.contains("kubectl --context kind-micromesh apply -k k8s/overlays/kind"),
            "{calls}"
        );
        assert!(
            calls.contains("kind load docker-image --name micromesh micromesh/mesh-proxy:"),
            "{calls}"
        );
    }
}

#[test]
fn minikube_up_runs_through_and_prints_the_node_port_url() {
    let minikube = (
        "minikube",
        r#"case "$*" in
  "version --short") echo v1.34.0;;
  "-p micromesh ip") echo 192.168.49.2;;
  *) exit 0;;
esac"#,
    );
    let kubectl = (
        "kubectl",
        r#"case "$*" in
  "version --client") echo "Client Version: v1.31.2";;
  *"get deployments -o name"*) echo deployment.apps/one;;
  *"get service ingressgateway"*) printf 31234;;
  *) exit 0;;
esac"#,
    );
    let curl = (
        "curl",
        r#"echo '<html><title>Guestbook (v1)</title></html>'"#,
    );
    let sandbox = Sandbox::new(&[DOCKER, kubectl, minikube, curl]);
    let (out, _, calls) = sandbox.run_with("minikube-up.sh", &[], &[("SKIP_BUILD", "1")]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("profile micromesh is running; reusing it"),
        "{stdout}"
    );
    assert!(
        stdout.contains("the Guestbook answers at http://192.168.49.2:31234/"),
        "{stdout}"
    );
    assert!(!calls.contains("minikube -p micromesh start"), "{calls}");
    assert!(
        calls.contains("minikube -p micromesh image load micromesh/sentiment-service:"),
        "{calls}"
    );
    assert!(
        calls.contains("kubectl --context micromesh apply -k k8s/overlays/minikube"),
        "{calls}"
    );
}

// === the observability addons (scripts/addons-up.sh, addons-dashboards.sh) ===

#[test]
fn the_addons_scripts_pass_shellcheck() {
    let scripts = repo_root().join("scripts");
    let out = Command::new("shellcheck")
        .arg("-x")
        .args(["addons-up.sh", "addons-dashboards.sh", "cluster-common.sh"])
        .current_dir(&scripts)
        .output()
        .unwrap_or_else(|e| {
            panic!("shellcheck could not run ({e}); install it (Debian: apt-get install shellcheck) or run scripts/setup-test-machine.sh")
        });
    assert!(
        out.status.success(),
        "shellcheck:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn addons_up_without_its_tools_names_each_one() {
    let sandbox = Sandbox::new(&[]);
    assert_refused(
        "addons-up.sh",
        sandbox.run("addons-up.sh", &[]),
        &[
            "kubectl is missing",
            "curl is missing",
            "sha256sum (or shasum) is missing",
        ],
    );
    let sandbox = Sandbox::new(&[KUBECTL]);
    assert_refused(
        "addons-up.sh",
        sandbox.run("addons-up.sh", &["kind3"]),
        &["usage: scripts/addons-up.sh [kind|minikube]"],
    );
}

/// A tool that is the real one, called through the sandbox's PATH.
fn real(tool: &'static str) -> (&'static str, String) {
    (
        tool,
        format!("exec {} \"$@\"", find_on_path(tool).display()),
    )
}

#[test]
fn addons_up_refuses_a_dashboard_whose_checksum_differs_and_applies_nothing() {
    let kubectl = (
        "kubectl",
        r#"case "$*" in
  "version --client") echo "Client Version: v1.31.2";;
  "config get-contexts -o name") echo kind-micromesh;;
  *) exit 0;;
esac"#
            .to_string(),
    );
    // A download that is not the pinned file (an error page, a newer release).
    let curl = (
        "curl",
        r#"while [ $# -gt 0 ]; do [ "$1" = -o ] && { echo '<html>not it</html>' > "$2"; }; shift; done"#
            .to_string(),
    );
    let tools = [
        kubectl,
        curl,
        real("sha256sum"),
        real("mktemp"),
        real("cut"),
        real("rm"),
    ];
    let fakes: Vec<(&str, &str)> = tools.iter().map(|(n, s)| (*n, s.as_str())).collect();
    let sandbox = Sandbox::new(&fakes);
    let (out, _, calls) = sandbox.run("addons-up.sh", &["kind"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("istio-mesh-dashboard.gen.json from Istio 1.29.6 has sha256"),
        "{stderr}"
    );
    assert!(stderr.contains("refusing it"), "{stderr}");
    assert!(calls.contains("curl -fsSL"), "{calls}");
    assert!(
        calls.contains("raw.githubusercontent.com/istio/istio/1.29.6/manifests/addons/dashboards/"),
        "{calls}"
    );
    assert!(
        !calls.lines().any(|l| l.contains(" apply")),
        "nothing may be applied after a bad download:\n{calls}"
    );

    // Without the cluster's context: bring the cluster up first.
    let kubectl = (
        "kubectl",
        r#"case "$*" in "version --client") echo "Client Version: v1.31.2";; *) exit 0;; esac"#,
    );
    let curl = ("curl", "exit 0");
    let sandbox = Sandbox::new(&[kubectl, curl, ("sha256sum", "exit 0")]);
    assert_refused(
        "addons-up.sh",
        sandbox.run("addons-up.sh", &["minikube"]),
        &["no context micromesh", "scripts/minikube-up.sh"],
    );
}

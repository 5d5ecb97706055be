//! `meshctl apply`'s contract against a real control plane: the exit status
//! says whether the change was made; what analysis finds comes with it as a
//! warning (issue 11: it printed `Error [ReferencedResourceNotFound]` and
//! exited 0, and the learner could not tell which to believe).
//!
//! It runs the real `mesh-control` binary beside meshctl: run
//! `cargo build -p mesh-control --bins` first (./scripts/test.sh builds
//! every binary).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A control plane on a free port with its own state dir; killed on drop.
struct ControlPlane {
    child: Child,
    url: String,
    dir: PathBuf,
}

impl ControlPlane {
    fn start() -> ControlPlane {
        let meshctl = PathBuf::from(env!("CARGO_BIN_EXE_meshctl"));
        let binary = meshctl.parent().unwrap().join("mesh-control");
        assert!(
            binary.is_file(),
            "{} is not built: this test runs the real control plane; \
             run `cargo build -p mesh-control --bins` first (./scripts/test.sh does)",
            binary.display()
        );
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "meshctl-apply-{}-{}",
            std::process::id(),
            fastrand::u32(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(&binary)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--state-dir")
            .arg(dir.join("state"))
            .args(["--dashboard-listen", "off"])
            // Its secure port's default (127.0.0.1:15012) is fixed: tests
            // run side by side, and no proxy here needs mutual TLS.
            .args(["--secure-listen", "off"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("control.log")).unwrap())
            .spawn()
            .expect("mesh-control starts");
        let control = ControlPlane {
            child,
            url: format!("http://127.0.0.1:{port}"),
            dir,
        };
        // Ready when `meshctl get services` gets an answer.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !control.meshctl(&["get", "services"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "mesh-control did not answer at {} within 30s; its log:\n{}",
                control.url,
                std::fs::read_to_string(control.dir.join("control.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        control
    }

    /// `meshctl ARGS` against this control plane.
    fn meshctl(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_meshctl"))
            .args(args)
            .env("MESH_CONTROL_URL", &self.url)
            .env("MESH_WORKDIR", &self.dir)
            .stdin(Stdio::null())
            .output()
            .expect("meshctl runs")
    }

    fn file(&self, name: &str, content: &str) -> String {
        let path = self.dir.join(name);
        std::fs::write(&path, content).unwrap();
        path.display().to_string()
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

const VS_TO_V2: &str = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: helloworld-service\n\
    spec:\n  hosts: [helloworld-service]\n  http:\n  - route:\n    - destination:\n        host: helloworld-service\n        subset: v2\n";

#[test]
fn apply_exits_0_with_warnings_when_applied_and_1_only_when_refused() {
    let control = ControlPlane::start();

    // --- a route to a subset no DestinationRule defines: Istio applies it ---
    let vs = control.file("vs.yaml", VS_TO_V2);
    let out = control.meshctl(&["apply", "-f", &vs]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(
        out.status.success(),
        "applied, so exit 0: {}\n{stdout}{stderr}",
        out.status
    );
    assert!(
        stdout.contains("virtualservice.networking.istio.io/helloworld-service created"),
        "{stdout}"
    );
    assert!(
        stderr.lines().any(|l| l.starts_with(
            "Warning [ReferencedResourceNotFound] VirtualService default/helloworld-service"
        )),
        "the finding comes as a warning:\n{stderr}"
    );
    assert!(
        !stderr.lines().any(|l| l.starts_with("Error")),
        "nothing labelled Error on a command that exits 0:\n{stderr}"
    );

    // --- `meshctl analyze` is where that finding is an error ---
    let out = control.meshctl(&["analyze"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("Error [ReferencedResourceNotFound]"),
        "{}",
        text(&out.stdout)
    );

    // --- a file the control plane refuses: exit 1, nothing changed ---
    let old = control.file(
        "old.yaml",
        &VS_TO_V2
            .replace("networking.istio.io/v1\n", "networking.istio.io/v1alpha3\n")
            .replace("  - route:", "  - fault:\n      abort:\n        percent: 50\n        httpStatus: 503\n    route:"),
    );
    let out = control.meshctl(&["apply", "-f", &old]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "refused, so exit 1:\n{stderr}");
    assert!(stderr.contains("Nothing was changed"), "{stderr}");
    let listed = control.meshctl(&["get", "vs", "-o", "json"]);
    assert!(
        !text(&listed.stdout).contains("percent"),
        "the refused version was not stored: {}",
        text(&listed.stdout)
    );

    // --- the contract is in `meshctl apply --help` ---
    let help = text(&control.meshctl(&["apply", "--help"]).stdout);
    assert!(
        help.contains("Exit status:") && help.contains("0  The change was made"),
        "{help}"
    );
    assert!(help.contains("1  Nothing was changed"), "{help}");
    let _ = std::fs::remove_dir_all(&control.dir);
}

/// Issue 15 item 1: a VirtualService a proxy would reject once froze every
/// proxy (each NACKed every later snapshot). Each kind of field the proxy
/// checks (`mesh_api::check`) is refused by `meshctl validate` offline and
/// by `meshctl apply` at the control plane, with where it is and what to do.
#[test]
fn every_field_a_proxy_would_reject_is_refused_by_validate_and_apply() {
    let control = ControlPlane::start();
    let rule = |http: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: hw\n\
             spec:\n  hosts: [helloworld-service]\n  http:\n{http}"
        )
    };
    let route = "    route:\n    - destination: {host: helloworld-service}\n";
    // (what, the http rule, the field the error must point at)
    let cases = [
        (
            "header name with spaces",
            format!("  - match:\n    - headers: {{\"x bad name\": {{exact: \"1\"}}}}\n{route}"),
            "x bad name",
        ),
        (
            "withoutHeaders name",
            format!("  - match:\n    - withoutHeaders: {{\"a:b\": {{exact: \"1\"}}}}\n{route}"),
            "a:b",
        ),
        (
            "uri regex",
            format!("  - match:\n    - uri: {{regex: \"(\"}}\n{route}"),
            "uri",
        ),
        (
            "header regex",
            format!("  - match:\n    - headers: {{x-a: {{regex: \"[\"}}}}\n{route}"),
            "x-a",
        ),
        (
            "set header name",
            format!("  - headers: {{request: {{set: {{\"x y\": \"1\"}}}}}}\n{route}"),
            "x y",
        ),
        (
            "header value control character",
            format!("  - headers: {{response: {{add: {{x-a: \"a\\u0001b\"}}}}}}\n{route}"),
            "control character",
        ),
        (
            "remove header name",
            format!("  - headers: {{request: {{remove: [\"(x)\"]}}}}\n{route}"),
            "(x)",
        ),
        (
            "mirror percentage",
            format!(
                "  - mirror: {{host: helloworld-service}}\n    mirrorPercentage: {{value: 150}}\n{route}"
            ),
            "150",
        ),
        (
            "fault percentage",
            format!("  - fault: {{delay: {{fixedDelay: 1s, percentage: {{value: -1}}}}}}\n{route}"),
            "percentage",
        ),
        (
            "abort status",
            format!("  - fault: {{abort: {{httpStatus: 99}}}}\n{route}"),
            "99",
        ),
        (
            "retryOn",
            format!("  - retries: {{attempts: 1, retryOn: \"bogus\"}}\n{route}"),
            "bogus",
        ),
    ];
    for (i, (what, http, field)) in cases.iter().enumerate() {
        let file = control.file(&format!("bad-{i}.yaml"), &rule(http));
        for verb in ["validate", "apply"] {
            let out = control.meshctl(&[verb, "-f", &file]);
            let output = format!("{}{}", text(&out.stdout), text(&out.stderr));
            assert_eq!(
                out.status.code(),
                Some(1),
                "{what}: {verb} must refuse it:\n{output}"
            );
            assert!(
                output.contains(field),
                "{what}: {verb} names {field:?}:\n{output}"
            );
        }
    }
    let listed = control.meshctl(&["get", "vs", "-o", "json"]);
    assert!(
        !text(&listed.stdout).contains("\"hw\""),
        "no refused rule was stored: {}",
        text(&listed.stdout)
    );
    let _ = std::fs::remove_dir_all(&control.dir);
}

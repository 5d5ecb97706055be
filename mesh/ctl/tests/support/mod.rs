//! The harness both end-to-end tests of meshctl use (tests/up.rs,
//! tests/identity.rs): a real `meshctl up` as a child process, in its own
//! work dir, with the control plane and the gateway on free ports, so it
//! can run beside another mesh.
//!
//! It needs every binary of the workspace beside meshctl: run
//! `cargo build --workspace --bins` first (./scripts/test.sh does), and
//! python3 and a JDK, like `meshctl up` itself. Every wait polls with a
//! deadline.

// Each test crate uses part of this module; the rest is not dead code.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use mesh_testkit::wait_until;
use serde_json::Value;

/// Starting the JVM (compiling Sentiment.java) on a busy two-core CI machine
/// is the slow part.
pub const START_TIMEOUT: Duration = Duration::from_secs(240);

/// A running `meshctl up`. Dropping it (also when a check fails) stops the
/// mesh, so a failing test leaves no process behind.
pub struct Up {
    pub child: Option<Child>,
    pub workdir: PathBuf,
    pub control_port: u16,
    pub gateway_port: u16,
    pub stdout_path: PathBuf,
    pub stderr_path: PathBuf,
}

impl Up {
    /// `meshctl up` in a new work dir (named after `test`), on free ports.
    pub fn start(test: &str) -> Up {
        let workdir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "meshctl-{test}-{}-{}",
            std::process::id(),
            fastrand::u32(..)
        ));
        let _ = std::fs::remove_dir_all(&workdir);
        std::fs::create_dir_all(&workdir).unwrap();
        Up::start_in(workdir, free_port(), free_port(), &[])
    }

    /// `meshctl up` in `workdir` (which a previous run may have used), with
    /// the control plane and the gateway on these ports, and `extra` flags.
    pub fn start_in(workdir: PathBuf, control_port: u16, gateway_port: u16, extra: &[&str]) -> Up {
        let bin = meshctl_bin();
        let missing: Vec<_> = [
            "mesh-control",
            "mesh-proxy",
            "guestbook-ui",
            "guestbook-service",
        ]
        .into_iter()
        .filter(|name| !bin.parent().unwrap().join(name).is_file())
        .collect();
        assert!(
            missing.is_empty(),
            "{missing:?} not built beside {}: this test runs the real binaries; \
             run `cargo build --workspace --bins` first (./scripts/test.sh does)",
            bin.display()
        );

        let stdout_path = workdir.with_extension("stdout");
        let stderr_path = workdir.with_extension("stderr");
        let child = Command::new(&bin)
            .args(["up", "--control-port", &control_port.to_string()])
            .args(["--gateway-port", &gateway_port.to_string()])
            .args(extra)
            .arg("--workdir")
            .arg(&workdir)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout_path).unwrap())
            .stderr(std::fs::File::create(&stderr_path).unwrap())
            .spawn()
            .expect("meshctl starts");
        Up {
            child: Some(child),
            workdir,
            control_port,
            gateway_port,
            stdout_path,
            stderr_path,
        }
    }

    /// Wait until `meshctl up` prints that the mesh is up.
    pub async fn wait_up(&mut self) {
        wait_until("meshctl up reports the mesh is up", START_TIMEOUT, || {
            self.assert_running();
            let stdout = std::fs::read_to_string(&self.stdout_path).unwrap_or_default();
            async move { Ok(stdout.contains("micromesh is up")) }
        })
        .await
        .unwrap();
    }

    pub fn gateway(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.gateway_port)
    }

    /// `meshctl ARGS` against this mesh's work dir.
    pub fn meshctl(&self, args: &[&str]) -> Output {
        Command::new(meshctl_bin())
            .args(args)
            .arg("--workdir")
            .arg(&self.workdir)
            .stdin(Stdio::null())
            .output()
            .expect("meshctl runs")
    }

    /// `meshctl ARGS`, which must succeed; returns its stdout.
    pub fn meshctl_ok(&self, args: &[&str]) -> String {
        let out = self.meshctl(args);
        assert!(
            out.status.success(),
            "meshctl {args:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// The run file `meshctl up` keeps current.
    pub fn run_file(&self) -> Value {
        let text = std::fs::read_to_string(self.workdir.join("run/up.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.workdir.join("logs").join(format!("{name}.log")))
            .unwrap_or_default()
    }

    /// What `meshctl up` printed, for failure messages.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Fail at once, with its output, if `meshctl up` is gone.
    pub fn assert_running(&mut self) {
        let child = self.child.as_mut().unwrap();
        if let Some(status) = child.try_wait().unwrap() {
            panic!("meshctl up exited ({status}):\n{}", self.output());
        }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if child.try_wait().ok().flatten().is_none() {
                let _ = self.meshctl(&["down"]);
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}

pub fn meshctl_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_meshctl"))
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

//! Child processes of `meshctl up`: start one with its output in a log file,
//! notice when it exits, stop it gracefully.
//!
//! Stopping follows Kubernetes' pod termination: SIGTERM first, so a sidecar
//! can leave the registry and finish its in-flight requests, then SIGKILL once
//! the grace period is over (Kubernetes' `terminationGracePeriodSeconds`).
//!
//! Every child runs in a process group of its own. A Ctrl-C in the terminal
//! signals the whole foreground group; if the children were in ours they would
//! all die at once, in no order. Instead only `meshctl up` gets it, and stops
//! them in order: gateway, workloads, control plane last.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::Command;
use tokio::sync::{mpsc, watch};

/// What to start.
#[derive(Clone, Debug)]
pub struct Spec {
    /// Shown in messages and in `--follow` prefixes: an instance name, or
    /// `<instance>.sidecar`, or `mesh-control`.
    pub name: String,
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub env: Vec<(String, String)>,
    pub cwd: Option<PathBuf>,
    /// stdout and stderr both go here, appended.
    pub log: PathBuf,
}

/// Sent when a child exits while nobody asked it to stop.
#[derive(Clone, Debug)]
pub struct Exited {
    pub name: String,
    pub pid: u32,
    pub status: String,
    pub log: PathBuf,
}

/// A running (or exited) child.
#[derive(Debug)]
pub struct Proc {
    pub name: String,
    pub pid: u32,
    /// The program's file name, kept in the run file so `meshctl down` can
    /// tell our process from an unrelated one that reused its pid.
    pub program: String,
    pub log: PathBuf,
    stopping: Arc<AtomicBool>,
    exit: watch::Receiver<Option<String>>,
}

/// Environment variables a child must not inherit from the user's shell.
///
/// A proxy setting would send the apps' calls to the user's corporate proxy
/// instead of their sidecar (or the sidecars' calls to the control plane
/// through it); a stray `MESH_*` would reconfigure a sidecar.
fn scrubbed(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    matches!(
        upper.as_str(),
        "HTTP_PROXY" | "HTTPS_PROXY" | "ALL_PROXY" | "NO_PROXY"
    ) || upper.starts_with("MESH_")
}

impl Proc {
    /// Start `spec`; `exits` hears about it if it ends unexpectedly.
    pub fn spawn(spec: Spec, exits: mpsc::UnboundedSender<Exited>) -> Result<Proc> {
        if let Some(dir) = spec.log.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create the log directory {}", dir.display()))?;
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spec.log)
            .with_context(|| format!("cannot open the log file {}", spec.log.display()))?;
        let log_err = log.try_clone()?;

        let mut command = Command::new(&spec.program);
        command
            .args(&spec.args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .process_group(0)
            // If meshctl itself dies unexpectedly (a panic unwinds the
            // runtime), the child is killed rather than left behind.
            .kill_on_drop(true);
        for (name, _) in std::env::vars_os() {
            if name.to_str().is_some_and(scrubbed) {
                command.env_remove(&name);
            }
        }
        // Logs go to files: no terminal colour codes in them
        // (https://no-color.org; tracing-subscriber honours it).
        command.env("NO_COLOR", "1");
        command.envs(spec.env.iter().map(|(k, v)| (k, v)));
        if let Some(cwd) = &spec.cwd {
            command.current_dir(cwd);
        }

        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start {} ({})", spec.name, spec.program.display()))?;
        // A freshly spawned child always has a pid (it is None only after wait).
        let pid = child.id().expect("a running child has a pid");

        let stopping = Arc::new(AtomicBool::new(false));
        let (exit_tx, exit) = watch::channel(None);
        let watcher = Exited {
            name: spec.name.clone(),
            pid,
            status: String::new(),
            log: spec.log.clone(),
        };
        let expected = stopping.clone();
        tokio::spawn(async move {
            let status = match child.wait().await {
                Ok(status) => describe(status),
                Err(e) => format!("lost track of it: {e}"),
            };
            if !expected.load(Ordering::SeqCst) {
                let _ = exits.send(Exited {
                    status: status.clone(),
                    ..watcher
                });
            }
            let _ = exit_tx.send(Some(status));
        });

        Ok(Proc {
            name: spec.name,
            pid,
            program: file_name(&spec.program),
            log: spec.log,
            stopping,
            exit,
        })
    }

    /// A handle that reports the exit without owning the process.
    pub fn exit_watch(&self) -> watch::Receiver<Option<String>> {
        self.exit.clone()
    }

    /// SIGKILL at once, without waiting (for a half-started instance).
    pub fn kill_now(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        signal(self.pid, Signal::SIGKILL);
    }

    /// SIGTERM, then SIGKILL after `grace`; returns once the process is gone.
    pub async fn stop(&self, grace: Duration) {
        self.stopping.store(true, Ordering::SeqCst);
        let mut exit = self.exit.clone();
        if exit.borrow().is_some() {
            return;
        }
        signal(self.pid, Signal::SIGTERM);
        let exited = tokio::time::timeout(grace, exit.wait_for(Option::is_some))
            .await
            .is_ok();
        if !exited {
            tracing::warn!(name = %self.name, pid = self.pid, "did not stop within {grace:?} of SIGTERM; sending SIGKILL");
            signal(self.pid, Signal::SIGKILL);
            // SIGKILL cannot be ignored; the watcher reaps the child at once.
            let _ = exit.wait_for(Option::is_some).await;
        }
    }
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(sig)) => match Signal::try_from(sig) {
            Ok(name) => format!("killed by signal {sig} ({})", name.as_str()),
            Err(_) => format!("killed by signal {sig}"),
        },
        _ => status.to_string(),
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

// === pids ===

/// Send `signal` to `pid`; false if there is no such process.
pub fn signal(pid: u32, signal: Signal) -> bool {
    i32::try_from(pid).is_ok_and(|pid| kill(Pid::from_raw(pid), signal).is_ok())
}

/// Whether a process with this pid exists (signal 0 checks without sending).
pub fn is_alive(pid: u32) -> bool {
    i32::try_from(pid).is_ok_and(|pid| match kill(Pid::from_raw(pid), None) {
        Ok(()) => true,
        // It exists but belongs to someone else.
        Err(nix::errno::Errno::EPERM) => true,
        Err(_) => false,
    })
}

/// Whether `pid` is alive and still runs `program`: after a reboot or a long
/// time, a recorded pid may belong to an unrelated process, which `meshctl
/// down` must never kill.
pub fn runs_program(pid: u32, program: &str) -> bool {
    if !is_alive(pid) {
        return false;
    }
    let command_line = match std::fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).replace('\0', " "),
        // No /proc (macOS): ask ps.
        Err(_) => match std::process::Command::new("ps")
            .args(["-o", "args=", "-p", &pid.to_string()])
            .output()
        {
            Ok(out) => String::from_utf8_lossy(&out.stdout).into_owned(),
            // Cannot tell: trust the pid rather than leave a process behind.
            Err(_) => return true,
        },
    };
    command_line.contains(program)
}

/// The last `lines` lines of a log file, for error messages.
pub fn tail(path: &Path, lines: usize) -> String {
    // Read at most the last 64 KiB: enough for any tail we print.
    const WINDOW: u64 = 64 * 1024;
    let Ok(mut file) = File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(WINDOW)));
    let mut bytes = Vec::new();
    let _ = file.read_to_end(&mut bytes);
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_path(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!(
            "meshctl-process-{name}-{}-{}.log",
            std::process::id(),
            fastrand::u32(..)
        ))
    }

    #[test]
    fn scrubs_proxy_and_mesh_variables() {
        for name in [
            "HTTP_PROXY",
            "http_proxy",
            "no_proxy",
            "MESH_CONTROL_URL",
            "ALL_PROXY",
        ] {
            assert!(scrubbed(name), "{name}");
        }
        for name in ["PATH", "HOME", "JAVA_HOME", "PROXY_PASS"] {
            assert!(!scrubbed(name), "{name}");
        }
    }

    #[tokio::test]
    async fn stop_terminates_and_reports_nothing_unexpected() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let log = log_path("stop");
        let proc = Proc::spawn(
            Spec {
                name: "sleeper".into(),
                program: "sleep".into(),
                args: vec!["30".into()],
                env: vec![],
                cwd: None,
                log: log.clone(),
            },
            tx,
        )
        .unwrap();
        assert!(is_alive(proc.pid));
        // Right after exec the kernel may not have set the new command line
        // up yet; wait for it.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !runs_program(proc.pid, "sleep") {
            assert!(
                tokio::time::Instant::now() < deadline,
                "sleep never showed up as running"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!runs_program(proc.pid, "mesh-control"));
        assert_eq!(proc.exit_watch().borrow().clone(), None);

        proc.stop(Duration::from_secs(5)).await;
        let status = proc.exit_watch().borrow().clone().unwrap();
        assert!(status.contains("SIGTERM"), "{status}");
        assert!(rx.try_recv().is_err(), "an asked-for stop is not reported");
        let _ = std::fs::remove_file(log);
    }

    #[tokio::test]
    async fn unexpected_exit_is_reported_with_its_log() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let log = log_path("exit");
        let proc = Proc::spawn(
            Spec {
                name: "crasher".into(),
                program: "sh".into(),
                args: vec![
                    "-c".into(),
                    "echo \"$GREETING\"; echo boom >&2; exit 3".into(),
                ],
                env: vec![("GREETING".into(), "Hola".into())],
                cwd: None,
                log: log.clone(),
            },
            tx,
        )
        .unwrap();
        let exited = rx.recv().await.unwrap();
        assert_eq!(exited.name, "crasher");
        assert_eq!(exited.pid, proc.pid);
        assert_eq!(exited.status, "exit status 3");
        assert_eq!(tail(&log, 1), "boom");
        assert_eq!(tail(&log, 5), "Hola\nboom");
        let _ = std::fs::remove_file(log);
    }
}

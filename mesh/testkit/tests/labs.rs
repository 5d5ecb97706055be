//! Runs every lab from its own README, the way a workshop attendee does, so
//! the labs never go stale.
//!
//! A lab is `labs/NN-topic/README.md`. The runner executes, in order:
//! - every fenced ```` ```sh ```` block, in bash with `set -eu`,
//!   from the repository root, with the freshly built binaries first on
//!   `PATH`. A block that runs `meshctl up` is started in the background
//!   (the attendee runs it in a second terminal) and the runner waits until
//!   the Guestbook answers;
//! - every `<!-- lab:check ... -->` comment (invisible on GitHub): a shell
//!   check that must succeed; it is retried for a few seconds, because a
//!   rule takes a moment to reach every proxy.
//!
//! At the end of a lab the runner stops the mesh with `meshctl down`.
//!
//! Run one lab: `LAB=03 cargo test -p mesh-testkit --test labs -- --nocapture`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One step of a lab.
#[derive(Debug, PartialEq)]
enum Step {
    /// A command block the attendee types.
    Run(String),
    /// A command block the attendee runs in a second terminal (`meshctl up`).
    Background(String),
    /// A hidden check that must pass (retried until `CHECK_DEADLINE`).
    Check(String),
}

const CHECK_DEADLINE: Duration = Duration::from_secs(15);
const STEP_TIMEOUT: Duration = Duration::from_secs(120);

fn parse(readme: &str) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut lines = readme.lines();
    while let Some(line) = lines.next() {
        let trimmed = line.trim();
        if trimmed == "```sh" {
            let block: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
            let block = block.join("\n");
            if block
                .lines()
                .any(|l| l.trim_start().starts_with("meshctl up"))
            {
                steps.push(Step::Background(block));
            } else {
                steps.push(Step::Run(block));
            }
        } else if let Some(rest) = trimmed.strip_prefix("<!-- lab:check") {
            let mut body = vec![rest.to_string()];
            if !rest.contains("-->") {
                body.extend(
                    lines
                        .by_ref()
                        .take_while(|l| !l.contains("-->"))
                        .map(String::from),
                );
            }
            let text = body.join("\n").replace("-->", "");
            steps.push(Step::Check(text.trim().to_string()));
        }
    }
    steps
}

struct Lab {
    name: String,
    root: PathBuf,
    bin: PathBuf,
    workdir: tempfile::TempDir,
    background: Vec<Child>,
}

impl Lab {
    /// bash for one step. Steps run as a learner's shell would (`set -eu`,
    /// but no `pipefail`: `curl ... | head` is fine there); checks add
    /// `pipefail` so a failing command in a pipe fails the check.
    fn command(&self, script: &str) -> Command {
        let path = format!(
            "{}:{}",
            self.bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut command = Command::new("bash");
        command
            .arg("-c")
            .arg(format!("set -eu\n{script}"))
            .current_dir(&self.root)
            .env("PATH", path)
            .env("MESH_WORKDIR", self.workdir.path())
            .env_remove("HTTP_PROXY")
            .env_remove("http_proxy");
        command
    }

    /// Run a script to completion within the step timeout; Err with its output.
    fn run(&self, script: &str) -> Result<String, String> {
        let output_file = self.workdir.path().join("step.out");
        let out = fs::File::create(&output_file).map_err(|e| e.to_string())?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let mut child = self
            .command(script)
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot start bash: {e}"))?;
        let start = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
                break status;
            }
            if start.elapsed() > STEP_TIMEOUT {
                let _ = child.kill();
                let _ = child.wait();
                let output = fs::read_to_string(&output_file).unwrap_or_default();
                return Err(format!("timed out after {STEP_TIMEOUT:?}\n{output}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let output = fs::read_to_string(&output_file).unwrap_or_default();
        if status.success() {
            Ok(output)
        } else {
            Err(format!("{status}\n{output}"))
        }
    }

    fn start_background(&mut self, script: &str) {
        let log = fs::File::create(self.workdir.path().join("up.out")).expect("creating up.out");
        let child = self
            .command(script)
            .stdout(log.try_clone().expect("cloning a file handle"))
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("starting the background block");
        self.background.push(child);
        // `meshctl up` prints "micromesh is up." once the page answers.
        let start = Instant::now();
        loop {
            let out = fs::read_to_string(self.workdir.path().join("up.out")).unwrap_or_default();
            if out.contains("micromesh is up") {
                println!("{out}");
                return;
            }
            let exited = self
                .background
                .last_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || start.elapsed() > Duration::from_secs(180) {
                panic!(
                    "lab {}: `{script}` did not come up ({exited:?}):\n{out}",
                    self.name
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn check(&self, script: &str) {
        let start = Instant::now();
        loop {
            match self.run(&format!("set -o pipefail\n{script}")) {
                Ok(_) => return,
                Err(output) if start.elapsed() > CHECK_DEADLINE => {
                    panic!(
                        "lab {}: check failed:\n{script}\n--- output ---\n{output}",
                        self.name
                    )
                }
                Err(_) => std::thread::sleep(Duration::from_millis(250)),
            }
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = self.run("meshctl down");
        for child in &mut self.background {
            let start = Instant::now();
            while child.try_wait().ok().flatten().is_none()
                && start.elapsed() < Duration::from_secs(20)
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repo root")
}

/// Where cargo put the binaries: this test runs from `target/debug/deps/`.
fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/debug")
        .to_path_buf();
    for bin in [
        "meshctl",
        "mesh-control",
        "mesh-proxy",
        "guestbook-ui",
        "guestbook-service",
    ] {
        assert!(
            dir.join(bin).exists(),
            "{} is missing: the labs run the real binaries; build them first with \
             `cargo build --workspace --bins` (./scripts/test.sh does)",
            dir.join(bin).display()
        );
    }
    dir
}

#[test]
fn every_lab_runs_as_written() {
    let root = repo_root();
    let bin = bin_dir();
    let only = std::env::var("LAB").ok();
    let mut labs: Vec<PathBuf> = fs::read_dir(root.join("labs"))
        .expect("labs/ exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("README.md").exists())
        .collect();
    labs.sort();
    assert!(!labs.is_empty(), "no labs found under labs/");
    let mut ran = 0;
    for dir in labs {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        if only.as_deref().is_some_and(|only| !name.starts_with(only)) {
            continue;
        }
        let readme = fs::read_to_string(dir.join("README.md")).expect("reading the lab");
        let steps = parse(&readme);
        assert!(
            steps.iter().any(|s| matches!(s, Step::Check(_))),
            "lab {name} checks nothing"
        );
        println!("=== lab {name}: {} steps", steps.len());
        let mut lab = Lab {
            name: name.clone(),
            root: root.clone(),
            bin: bin.clone(),
            workdir: tempfile::tempdir().expect("a temp dir"),
            background: Vec::new(),
        };
        for step in steps {
            match step {
                Step::Background(script) => lab.start_background(&script),
                Step::Run(script) => match lab.run(&script) {
                    Ok(output) => println!("$ {script}\n{output}"),
                    Err(output) => {
                        panic!("lab {name}: step failed:\n{script}\n--- output ---\n{output}")
                    }
                },
                Step::Check(script) => lab.check(&script),
            }
        }
        ran += 1;
    }
    assert!(ran > 0, "LAB={only:?} matched no lab");
}

#[test]
fn the_runner_reads_blocks_and_checks() {
    let readme = "# Lab\n```sh\nmeshctl up --with a@v2\n```\ntext\n```sh\nmeshctl apply -f x.yaml\n```\n\
                  <!-- lab:check\ncurl -s localhost:8080 | grep -q Hola\n-->\n<!-- lab:check true -->\n```yaml\nkind: X\n```\n";
    assert_eq!(
        parse(readme),
        vec![
            Step::Background("meshctl up --with a@v2".into()),
            Step::Run("meshctl apply -f x.yaml".into()),
            Step::Check("curl -s localhost:8080 | grep -q Hola".into()),
            Step::Check("true".into()),
        ]
    );
}

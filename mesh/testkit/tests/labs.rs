//! Runs every lab from its own README, the way a workshop attendee does, so
//! the labs never go stale.
//!
//! A lab is `labs/NN-topic/README.md`. The runner executes, in order:
//! - every fenced ```` ```sh ```` block, in bash with `set -eu`,
//!   from the repository root, with the freshly built binaries first on
//!   `PATH`. A block that runs `meshctl up` is started in the background
//!   (the attendee runs it in a second terminal) and the runner waits until
//!   the Guestbook answers;
//! - three kinds of hidden comments (invisible on GitHub), kept apart on
//!   purpose so a retry never turns a measurement into a second chance:
//!   - `<!-- lab:wait ... -->`: a condition the mesh reaches within moments
//!     (a rule arrived at the proxies, spans were flushed). Retried until it
//!     holds, for at most `WAIT_DEADLINE`;
//!   - `<!-- lab:check ... -->`: a property that must hold now. Run once;
//!   - `<!-- lab:share draws=N p=P ... -->`: a measurement. The script draws
//!     `$DRAWS` requests and prints how many matched on its last line; the
//!     runner runs it once and accepts the count only within four binomial
//!     standard deviations of `N * P` (`mesh_testkit::assert_binomial`: a
//!     correct mesh fails about once in 16,000 runs).
//!
//! After the last step the runner reads the control plane's state file, the
//! one the next `meshctl up` loads, and fails the lab if any VirtualService,
//! DestinationRule or Gateway is left: applied config outlives `meshctl
//! down`, so a lab that forgets one breaks the next. Then it stops the mesh.
//!
//! Run one lab: `LAB=03 cargo test -p mesh-testkit --test labs -- --nocapture`.
//!
//! Blocks fenced ```` ```sh cluster ```` are the lab's steps on a cluster
//! (`k8s/`); this runner does not run them, `labs/cluster.rs` checks them
//! offline against the rendered kind overlay and the CRDs.

#[path = "labs/cluster.rs"]
mod cluster;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mesh_control::store::Store;
use mesh_testkit::assert_binomial;

/// One step of a lab.
#[derive(Debug, PartialEq)]
enum Step {
    /// A command block the attendee types.
    Run(String),
    /// A command block the attendee runs in a second terminal (`meshctl up`).
    Background(String),
    /// A hidden condition the mesh reaches within moments: retried until it
    /// holds, for at most `WAIT_DEADLINE`.
    Wait(String),
    /// A hidden check that must pass, run once.
    Check(String),
    /// A hidden measurement, run once: `draws` requests, each matching with
    /// probability `p`; the script prints the count of matches.
    Share { draws: u64, p: f64, script: String },
}

const WAIT_DEADLINE: Duration = Duration::from_secs(15);
const STEP_TIMEOUT: Duration = Duration::from_secs(120);
/// Binomial standard deviations a share may stray: four fail a correct mesh
/// about once in 16,000 runs.
const SHARE_SIGMAS: f64 = 4.0;

fn parse(readme: &str) -> Result<Vec<Step>, String> {
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
        } else if let Some(rest) = trimmed.strip_prefix("<!-- lab:") {
            // `<!-- lab:KIND HEADER` then the script, up to `-->`.
            let (head, body) = if let Some((head, _)) = rest.split_once("-->") {
                (head.to_string(), String::new())
            } else {
                let body: Vec<&str> = lines.by_ref().take_while(|l| !l.contains("-->")).collect();
                (rest.to_string(), body.join("\n"))
            };
            let (kind, header) = head.split_once(' ').unwrap_or((head.as_str(), ""));
            let header = header.trim();
            let body = body.trim();
            // A wait or check is one line (`<!-- lab:check true -->`) or a
            // block below its opening line; a share's first line is its header.
            let script = match (kind, body.is_empty(), header.is_empty()) {
                ("share", false, _) | (_, false, true) => body.to_string(),
                ("share", true, _) => {
                    return Err(format!(
                        "`<!-- lab:share {header}` has no script: put it on the lines below"
                    ));
                }
                (_, true, false) => header.to_string(),
                (_, true, true) => return Err(format!("an empty `lab:{kind}` checks nothing")),
                (_, false, false) => {
                    return Err(format!(
                        "`<!-- lab:{kind} {header}`: put the script on the first line or below it, not both"
                    ));
                }
            };
            steps.push(match kind {
                "wait" => Step::Wait(script),
                "check" => Step::Check(script),
                "share" => {
                    let (draws, p) = share_header(header)
                        .map_err(|e| format!("`<!-- lab:share {header}`: {e}"))?;
                    Step::Share { draws, p, script }
                }
                other => {
                    return Err(format!(
                        "unknown hidden step `lab:{other}`; a lab has lab:wait, lab:check and lab:share"
                    ));
                }
            });
        }
    }
    Ok(steps)
}

/// `draws=400 p=0.2`, both required.
fn share_header(header: &str) -> Result<(u64, f64), String> {
    let mut draws = None;
    let mut p = None;
    for word in header.split_whitespace() {
        match word.split_once('=') {
            Some(("draws", n)) => {
                draws = Some(n.parse::<u64>().map_err(|e| format!("draws={n}: {e}"))?)
            }
            Some(("p", v)) => p = Some(v.parse::<f64>().map_err(|e| format!("p={v}: {e}"))?),
            _ => return Err(format!("`{word}` is neither draws=N nor p=P")),
        }
    }
    match (draws, p) {
        (Some(draws), Some(p)) if draws > 0 && (0.0..=1.0).contains(&p) => Ok((draws, p)),
        _ => Err("write `draws=N p=P` with N > 0 and 0 <= P <= 1".to_string()),
    }
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
    /// but no `pipefail`: `curl ... | head` is fine there); hidden steps add
    /// `pipefail` so a failing command in a pipe fails the step.
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

    /// bash for a hidden step: `pipefail`, so a failing command in a pipe
    /// fails the step. So a hidden step reads a big answer to the end
    /// (`curl ... | grep X >/dev/null`): `grep -q` stops at its first match
    /// and a `curl` still writing then fails with "write error" (23).
    fn hidden(&self, script: &str) -> Result<String, String> {
        self.run(&format!("set -o pipefail\n{script}"))
    }

    /// Retry until the condition holds, for at most `WAIT_DEADLINE`.
    fn wait(&self, script: &str) {
        let start = Instant::now();
        loop {
            match self.hidden(script) {
                Ok(_) => return,
                Err(output) if start.elapsed() > WAIT_DEADLINE => panic!(
                    "lab {}: waited {WAIT_DEADLINE:?} and this never held:\n{script}\n--- output ---\n{output}",
                    self.name
                ),
                Err(_) => std::thread::sleep(Duration::from_millis(250)),
            }
        }
    }

    /// Once: the property holds now, or the lab fails.
    fn check(&self, script: &str) {
        if let Err(output) = self.hidden(script) {
            panic!(
                "lab {}: check failed:\n{script}\n--- output ---\n{output}",
                self.name
            )
        }
    }

    /// Once: run the measurement, read the count, judge it.
    fn share(&self, draws: u64, p: f64, script: &str) {
        let output = self
            .hidden(&format!("DRAWS={draws}\n{script}"))
            .unwrap_or_else(|output| {
                panic!(
                    "lab {}: measurement failed:\n{script}\n--- output ---\n{output}",
                    self.name
                )
            });
        let count: u64 = output
            .lines()
            .last()
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or_else(|| {
                panic!(
                    "lab {}: a lab:share script must print the count of matches on its last line:\n\
                     {script}\n--- output ---\n{output}",
                    self.name
                )
            });
        println!("lab {}: {count} of {draws} (expected p = {p})", self.name);
        assert_binomial(
            &format!("lab {}: {}", self.name, script.lines().last().unwrap_or("")),
            count,
            draws,
            p,
            SHARE_SIGMAS,
        );
    }

    /// The Istio resources the next `meshctl up` would load from this lab's
    /// work dir: what the lab leaves behind.
    fn leftovers(&self) -> Vec<String> {
        leftovers(self.workdir.path())
    }
}

/// The resources in a work dir's persisted config (`state/config.json`, the
/// file the control plane loads on start), as `Kind namespace/name`.
fn leftovers(workdir: &Path) -> Vec<String> {
    let state = workdir.join("state");
    let loaded = Store::open(&state)
        .and_then(|store| store.load())
        .unwrap_or_else(|e| panic!("cannot read the mesh's state in {}: {e}", state.display()));
    loaded
        .config
        .config
        .list(None)
        .iter()
        .map(|r| r.id())
        .collect()
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
        let steps = parse(&readme).unwrap_or_else(|e| panic!("lab {name}: {e}"));
        assert!(
            steps
                .iter()
                .any(|s| matches!(s, Step::Check(_) | Step::Share { .. })),
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
                Step::Wait(script) => lab.wait(&script),
                Step::Check(script) => lab.check(&script),
                Step::Share { draws, p, script } => lab.share(draws, p, &script),
            }
        }
        // Applied config survives `meshctl down`; what a lab leaves, the
        // next lab inherits.
        let left = lab.leftovers();
        assert!(
            left.is_empty(),
            "lab {name} leaves {} behind for the next lab: {}; its clean-up must delete \
             every resource it applies (`meshctl delete -f ...`, or `meshctl reset`)",
            left.len(),
            left.join(", ")
        );
        ran += 1;
    }
    assert!(ran > 0, "LAB={only:?} matched no lab");
}

#[test]
fn the_runner_reads_blocks_waits_checks_and_shares() {
    let readme = "# Lab\n```sh\nmeshctl up --with a@v2\n```\ntext\n```sh\nmeshctl apply -f x.yaml\n```\n\
                  <!-- lab:wait\ncurl -s localhost:8080 | grep -q Hola\n-->\n<!-- lab:check true -->\n\
                  <!-- lab:share draws=400 p=0.2\nfor i in $(seq $DRAWS); do curl -s x; done | grep -c Hola\n-->\n\
                  ```yaml\nkind: X\n```\n";
    assert_eq!(
        parse(readme).unwrap(),
        vec![
            Step::Background("meshctl up --with a@v2".into()),
            Step::Run("meshctl apply -f x.yaml".into()),
            Step::Wait("curl -s localhost:8080 | grep -q Hola".into()),
            Step::Check("true".into()),
            Step::Share {
                draws: 400,
                p: 0.2,
                script: "for i in $(seq $DRAWS); do curl -s x; done | grep -c Hola".into()
            },
        ]
    );
}

#[test]
fn a_malformed_hidden_step_is_an_error_not_a_skipped_check() {
    let typo = parse("<!-- lab:chek true -->\n").unwrap_err();
    assert!(typo.contains("lab:chek"), "{typo}");
    let no_p = parse("<!-- lab:share draws=400\ntrue\n-->\n").unwrap_err();
    assert!(no_p.contains("draws=N p=P"), "{no_p}");
    let bad_p = parse("<!-- lab:share draws=400 p=20\ntrue\n-->\n").unwrap_err();
    assert!(bad_p.contains("0 <= P <= 1"), "{bad_p}");
    let no_script = parse("<!-- lab:share draws=400 p=0.2 -->\n").unwrap_err();
    assert!(no_script.contains("has no script"), "{no_script}");
    let both = parse("<!-- lab:check true\nfalse\n-->\n").unwrap_err();
    assert!(both.contains("not both"), "{both}");
    let empty = parse("<!-- lab:wait -->\n").unwrap_err();
    assert!(empty.contains("checks nothing"), "{empty}");
}

#[test]
fn leftovers_are_read_from_the_state_the_next_up_loads() {
    use mesh_api::config::{ConfigSet, SourceFile};
    use mesh_control::store::ConfigFile;

    let workdir = tempfile::tempdir().unwrap();
    // A work dir where the mesh never ran leaves nothing.
    assert!(leftovers(workdir.path()).is_empty());

    // A lab that applied a DestinationRule and deleted only its VirtualService.
    let dr = SourceFile {
        name: "destination-rule.yaml".into(),
        content: fs::read_to_string(repo_root().join("labs/03-canary/destination-rule.yaml"))
            .unwrap(),
    };
    let (config, _) = ConfigSet::default().apply(ConfigSet::parse(&[dr]).unwrap());
    let store = Store::open(workdir.path().join("state")).unwrap();
    store
        .save_config(&ConfigFile {
            config_version: 7,
            config,
        })
        .unwrap();
    assert_eq!(
        leftovers(workdir.path()),
        ["DestinationRule default/helloworld-service"]
    );
}

/// The index lists every lab in order, and each lab's "Next:" link leads to
/// the following one (the last back to the index).
#[test]
fn the_labs_are_indexed_and_linked_in_order() {
    let labs_dir = repo_root().join("labs");
    let index = fs::read_to_string(labs_dir.join("README.md"))
        .expect("labs/README.md, the index of the labs, is missing");
    let mut labs: Vec<String> = fs::read_dir(&labs_dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("README.md").exists())
        .map(|p| p.file_name().unwrap().to_string_lossy().to_string())
        .collect();
    labs.sort();
    let mut position = 0;
    for (i, lab) in labs.iter().enumerate() {
        let link = format!("({lab}/README.md)");
        let found = index[position..].find(&link).unwrap_or_else(|| {
            panic!("labs/README.md does not link {link} after the labs before it")
        });
        position += found + link.len();

        let text = fs::read_to_string(labs_dir.join(lab).join("README.md")).unwrap();
        let next = text
            .rfind("Next:")
            .map(|at| text[at..].replace('\n', " "))
            .unwrap_or_else(|| panic!("lab {lab} does not end with a \"Next:\" link"));
        let expected = match labs.get(i + 1) {
            Some(following) => format!("(../{following}/README.md)"),
            None => "(../README.md)".to_string(),
        };
        assert!(
            next.contains(&expected),
            "lab {lab}'s \"Next:\" link should go to {expected}: {next}"
        );
    }
}

//! `meshctl logs` (and `meshctl up --follow`): the log files of the processes
//! `meshctl up` started, one per process in `<workdir>/logs/`.
//!
//! Like `kubectl logs POD -c istio-proxy`, an instance has two logs: its app
//! (`<instance>.log`) and its sidecar (`<instance>.sidecar.log`, `-c sidecar`).
//! The sidecars' logs hold one access line per request, on both the inbound
//! and the outbound side, so following all of them shows every hop of a
//! request through the mesh.

use std::collections::BTreeMap;
use std::fs::File;
use std::hash::{Hash, Hasher};
use std::io::{IsTerminal, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::cli::Ctx;

#[derive(Debug, clap::Args)]
pub struct LogsArgs {
    /// Instance name, or a unique prefix of one (`mesh-control` for the
    /// control plane). Every process when omitted.
    pub instance: Option<String>,
    /// Which process of the instance: its app or its sidecar proxy.
    #[arg(short = 'c', long, value_enum, default_value_t = Container::App)]
    pub container: Container,
    /// Keep printing new lines as they are written.
    #[arg(short, long)]
    pub follow: bool,
    /// Lines to show from the end of each log [default: all for one
    /// instance, 10 each for every process].
    #[arg(long, value_name = "N")]
    pub tail: Option<usize>,
}

/// kubectl's `-c`: the app container or the `istio-proxy` sidecar.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Container {
    App,
    Sidecar,
}

const SIDECAR_SUFFIX: &str = ".sidecar";

pub async fn run(ctx: &Ctx, args: LogsArgs) -> Result<ExitCode> {
    let dir = ctx.workdir().join("logs");
    let stems = log_stems(&dir)?;
    if stems.is_empty() {
        bail!(
            "no logs in {}; start the mesh with `meshctl up` (or pass the --workdir it uses)",
            Ctx::show(&dir)
        );
    }
    match &args.instance {
        Some(query) => {
            let stem = resolve(&stems, query, args.container)?;
            let path = dir.join(format!("{stem}.log"));
            if !Ctx::emit(&read_tail(&path, args.tail)?)? {
                return Ok(ExitCode::SUCCESS);
            }
            if args.follow {
                let offset = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                let mut follower = Follower::new(dir, Some(stem), false);
                follower.files.insert(path, Tracked::at(offset));
                follower.run().await;
            }
        }
        None => {
            let tail = args.tail.unwrap_or(10);
            let color = color_enabled();
            let mut text = String::new();
            for stem in &stems {
                let path = dir.join(format!("{stem}.log"));
                for line in read_tail(&path, Some(tail))?.lines() {
                    text.push_str(&format!("{} {line}\n", prefix(stem, color)));
                }
            }
            if !Ctx::emit(&text)? {
                return Ok(ExitCode::SUCCESS);
            }
            if args.follow {
                follow_dir(&dir).await;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The names of the logs in `dir` (file names without `.log`), sorted.
pub fn log_stems(dir: &Path) -> Result<Vec<String>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", dir.display())),
    };
    let mut stems: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".log"))
                .map(str::to_string)
        })
        .collect();
    stems.sort();
    Ok(stems)
}

/// Which log `query` means: an exact instance name or a unique prefix.
pub fn resolve(stems: &[String], query: &str, container: Container) -> Result<String> {
    let of_container = |stem: &&String| match container {
        Container::Sidecar => stem.ends_with(SIDECAR_SUFFIX),
        Container::App => !stem.ends_with(SIDECAR_SUFFIX),
    };
    let query = query.strip_suffix(SIDECAR_SUFFIX).unwrap_or(query);
    let exact = match container {
        Container::Sidecar => format!("{query}{SIDECAR_SUFFIX}"),
        Container::App => query.to_string(),
    };
    if stems.contains(&exact) {
        return Ok(exact);
    }
    let matches: Vec<&String> = stems
        .iter()
        .filter(of_container)
        .filter(|s| s.starts_with(query))
        .collect();
    match matches.as_slice() {
        [one] => Ok(one.to_string()),
        [] => {
            let known: Vec<&str> = stems
                .iter()
                .filter(|s| !s.ends_with(SIDECAR_SUFFIX))
                .map(String::as_str)
                .collect();
            bail!(
                "no {} log for {query:?}; instances with logs: {}",
                match container {
                    Container::App => "app",
                    Container::Sidecar => "sidecar",
                },
                known.join(", ")
            )
        }
        many => bail!(
            "{query:?} matches several: {}; give more of the name",
            many.iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// The last `lines` lines of a file (all of it for `None`).
fn read_tail(path: &Path, lines: Option<usize>) -> Result<String> {
    let text = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let text = String::from_utf8_lossy(&text);
    Ok(match lines {
        None => text.into_owned(),
        Some(n) => {
            let all: Vec<&str> = text.lines().collect();
            let mut tail = all[all.len().saturating_sub(n)..].join("\n");
            if !tail.is_empty() {
                tail.push('\n');
            }
            tail
        }
    })
}

// === following ===

/// Print every line appended to a log in `dir` from now on, prefixed with
/// `[name]`, including the logs of processes started later (by `meshctl
/// scale`), which are shown from their start. Runs until the process exits.
pub async fn follow_dir(dir: &Path) {
    let mut follower = Follower::new(dir.to_path_buf(), None, true);
    for stem in log_stems(dir).unwrap_or_default() {
        let path = dir.join(format!("{stem}.log"));
        let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        follower.files.insert(path, Tracked::at(len));
    }
    follower.run().await;
}

/// A file being followed: how far it has been printed, and a line not yet
/// finished (the writer may be mid-line when we read).
#[derive(Debug, Default)]
struct Tracked {
    offset: u64,
    partial: Vec<u8>,
}

impl Tracked {
    fn at(offset: u64) -> Self {
        Tracked {
            offset,
            partial: Vec::new(),
        }
    }
}

/// Polls log files for appended bytes. Polling every 200 ms is simple, works
/// the same on Linux and macOS, and costs nothing at a workshop's log volume.
struct Follower {
    dir: PathBuf,
    /// Follow only this log; `None`: every log in `dir`, prefixed.
    only: Option<String>,
    prefixed: bool,
    color: bool,
    files: BTreeMap<PathBuf, Tracked>,
}

impl Follower {
    fn new(dir: PathBuf, only: Option<String>, prefixed: bool) -> Self {
        Follower {
            dir,
            only,
            prefixed,
            color: color_enabled(),
            files: BTreeMap::new(),
        }
    }

    /// Until the reader of our output goes away.
    async fn run(&mut self) {
        while self.poll() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Print what is new; false once stdout is closed.
    fn poll(&mut self) -> bool {
        if self.only.is_none() {
            // New processes (scale, restart) get a log of their own.
            for stem in log_stems(&self.dir).unwrap_or_default() {
                self.files
                    .entry(self.dir.join(format!("{stem}.log")))
                    .or_default();
            }
        }
        let mut text = String::new();
        for (path, tracked) in &mut self.files {
            let Some(bytes) = read_new(path, tracked) else {
                continue;
            };
            tracked.partial.extend_from_slice(&bytes);
            let Some(end) = tracked.partial.iter().rposition(|b| *b == b'\n') else {
                continue;
            };
            let complete: Vec<u8> = tracked.partial.drain(..=end).collect();
            let stem = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            for line in String::from_utf8_lossy(&complete).lines() {
                if self.prefixed {
                    text.push_str(&prefix(&stem, self.color));
                    text.push(' ');
                }
                text.push_str(line);
                text.push('\n');
            }
        }
        text.is_empty() || Ctx::emit(&text).unwrap_or(false)
    }
}

/// Bytes appended since the last read; starts over if the file was truncated
/// (a new `meshctl up` clears the logs).
fn read_new(path: &Path, tracked: &mut Tracked) -> Option<Vec<u8>> {
    let mut file = File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    if len < tracked.offset {
        tracked.offset = 0;
        tracked.partial.clear();
    }
    if len == tracked.offset {
        return None;
    }
    file.seek(SeekFrom::Start(tracked.offset)).ok()?;
    let mut bytes = Vec::new();
    file.take(len - tracked.offset)
        .read_to_end(&mut bytes)
        .ok()?;
    tracked.offset += bytes.len() as u64;
    Some(bytes)
}

/// Colors on a terminal, unless NO_COLOR is set (https://no-color.org).
fn color_enabled() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

/// `[helloworld-service-v1-7f3c2]`, colored by instance so an app and its
/// sidecar share a color.
pub fn prefix(stem: &str, color: bool) -> String {
    let label = format!("[{stem}]");
    if !color {
        return label;
    }
    // Red is left out: it reads as an error.
    const COLORS: [u8; 5] = [32, 33, 34, 35, 36];
    let instance = stem.strip_suffix(SIDECAR_SUFFIX).unwrap_or(stem);
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    instance.hash(&mut hasher);
    let code = COLORS[(hasher.finish() % COLORS.len() as u64) as usize];
    format!("\x1b[{code}m{label}\x1b[0m")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stems() -> Vec<String> {
        [
            "guestbook-ui-v1-aaaaa",
            "guestbook-ui-v1-aaaaa.sidecar",
            "helloworld-service-v1-11111",
            "helloworld-service-v1-11111.sidecar",
            "helloworld-service-v1-22222",
            "helloworld-service-v1-22222.sidecar",
            "mesh-control",
        ]
        .map(String::from)
        .to_vec()
    }

    #[test]
    fn resolves_exact_names_prefixes_and_sidecars() {
        let stems = stems();
        assert_eq!(
            resolve(&stems, "mesh-control", Container::App).unwrap(),
            "mesh-control"
        );
        assert_eq!(
            resolve(&stems, "guestbook-ui", Container::App).unwrap(),
            "guestbook-ui-v1-aaaaa"
        );
        assert_eq!(
            resolve(&stems, "guestbook-ui-v1-aaaaa", Container::Sidecar).unwrap(),
            "guestbook-ui-v1-aaaaa.sidecar"
        );
        assert_eq!(
            resolve(
                &stems,
                "helloworld-service-v1-22222.sidecar",
                Container::Sidecar
            )
            .unwrap(),
            "helloworld-service-v1-22222.sidecar"
        );
        let err = resolve(&stems, "helloworld", Container::App)
            .unwrap_err()
            .to_string();
        assert!(err.contains("matches several"), "{err}");
        let err = resolve(&stems, "reviews", Container::App)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("instances with logs: guestbook-ui-v1-aaaaa, "),
            "{err}"
        );
        assert!(!err.contains(".sidecar"), "{err}");
    }

    #[test]
    fn prefixes_share_a_color_per_instance() {
        assert_eq!(prefix("mesh-control", false), "[mesh-control]");
        let app = prefix("x-v1-1", true);
        let sidecar = prefix("x-v1-1.sidecar", true);
        assert_eq!(app[..5], sidecar[..5], "same color code");
        assert!(app.ends_with("[x-v1-1]\x1b[0m"));
    }

    #[test]
    fn reads_only_whole_new_lines() {
        let dir = std::env::temp_dir().join(format!(
            "meshctl-logs-{}-{}",
            std::process::id(),
            fastrand::u32(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.log");
        std::fs::write(&path, "one\ntw").unwrap();
        let mut tracked = Tracked::default();
        assert_eq!(read_new(&path, &mut tracked).unwrap(), b"one\ntw");
        assert_eq!(read_new(&path, &mut tracked), None);
        std::fs::write(&path, "x\n").unwrap();
        // Truncated (shorter than what was read): start over.
        assert_eq!(read_new(&path, &mut tracked).unwrap(), b"x\n");
        assert_eq!(read_tail(&path, Some(5)).unwrap(), "x\n");
        assert_eq!(log_stems(&dir).unwrap(), ["a"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

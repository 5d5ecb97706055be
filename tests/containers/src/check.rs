//! Static checks of the Dockerfiles in `docker/` against the workspace, so
//! the learner-facing images cannot rot unseen.
//!
//! A workshop attendee builds these files on their own laptop; nothing on
//! this project's machines can (no registry to pull the bases from). So each
//! file is read and checked for what makes such builds fail:
//!
//! - every `COPY`/`ADD` source from the build context exists in the
//!   repository and is not left out by `.dockerignore`;
//! - every `COPY --from=<stage>` names an earlier stage that produces that
//!   path, and a binary copied out of a `cargo build` stage is a real binary
//!   of a package that stage builds;
//! - a `cargo build` stage copies every workspace member (cargo refuses to
//!   load a workspace with a member missing) and builds only real packages;
//! - every final image runs as a non-root user and says what to run;
//! - no `# syntax=` line (BuildKit pulls that frontend image);
//! - the build scripts know every image, and the offline script's hand-made
//!   contexts hold every file the shared Dockerfiles copy.

use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;

use crate::dockerfile::{Dockerfile, Stage};
use crate::ignore::{DockerIgnore, wildcard};
use crate::workspace::Workspace;

/// One problem, located in a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// Path relative to the repository root.
    pub file: String,
    pub line: usize,
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.line, self.message)
    }
}

/// What the checks compare a Dockerfile against.
pub struct Context<'a> {
    pub workspace: &'a Workspace,
    /// The build context's root (the repository root for docker/*).
    pub root: &'a Path,
    pub ignore: &'a DockerIgnore,
}

/// Checks one Dockerfile; `file` is its path relative to the root, for messages.
pub fn check_dockerfile(file: &str, text: &str, cx: &Context<'_>) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut report = |line: usize, message: String| {
        out.push(Finding {
            file: file.to_string(),
            line,
            message,
        })
    };
    let docker = match Dockerfile::parse(text) {
        Ok(d) => d,
        Err(e) => {
            report(
                e.line,
                format!("cannot read this Dockerfile: {}", e.message),
            );
            return out;
        }
    };

    if let Some(syntax) = docker.directives.get("syntax") {
        report(
            1,
            format!(
                "remove `# syntax={syntax}`: BuildKit pulls that frontend image, which a \
                 machine without a registry cannot; the built-in frontend reads this file"
            ),
        );
    }

    let mut used_as_source = BTreeSet::new();
    for stage in &docker.stages {
        // The base: an earlier stage, scratch, or an image whose ARGs resolve.
        let earlier = docker.stages[..stage.index]
            .iter()
            .any(|s| s.name.as_deref() == Some(stage.base.as_str()));
        if !earlier && stage.base.contains('$') {
            report(
                stage.line,
                format!(
                    "FROM {}: every ARG used here needs a default (`ARG NAME=image:tag` \
                     before the first FROM), so the file builds without --build-arg",
                    stage.base_raw
                ),
            );
        }

        for copy in stage.copies() {
            match &copy.from {
                Some(reference) => match docker.stage(reference) {
                    Some(source) if source.index < stage.index => {
                        used_as_source.insert(source.index);
                        for path in &copy.sources {
                            if let Some(problem) = not_produced(source, path, cx.workspace) {
                                report(copy.line, problem);
                            }
                        }
                    }
                    Some(_) => report(
                        copy.line,
                        format!(
                            "{} --from={reference}: that stage comes later; a stage can only \
                             copy from stages above it",
                            copy.keyword
                        ),
                    ),
                    None => report(
                        copy.line,
                        format!(
                            "{} --from={reference}: no stage is called '{reference}' (an image \
                             here would have to be pulled); name a stage with `FROM ... AS \
                             {reference}`",
                            copy.keyword
                        ),
                    ),
                },
                None => {
                    for path in &copy.sources {
                        if let Some(problem) = missing_in_context(path, cx) {
                            report(copy.line, format!("{} {path}: {problem}", copy.keyword));
                        }
                    }
                }
            }
        }

        if let Some(run) = cargo_build(stage) {
            for package in cargo_packages(&run.args) {
                match cx.workspace.packages.get(&package) {
                    None => report(
                        run.line,
                        format!(
                            "cargo build -p {package}: the workspace has no package '{package}'"
                        ),
                    ),
                    Some(p) if p.bins.is_empty() => report(
                        run.line,
                        format!(
                            "cargo build -p {package}: that package has no binary to put in an image"
                        ),
                    ),
                    Some(_) => {}
                }
            }
            let copied: Vec<String> = stage
                .copies()
                .iter()
                .filter(|c| c.from.is_none())
                .flat_map(|c| c.sources.clone())
                .collect();
            for required in ["Cargo.toml", "Cargo.lock"] {
                if !copied.iter().any(|s| covers(s, required)) {
                    report(
                        run.line,
                        format!(
                            "{} builds with cargo but never copies {required}",
                            stage.label()
                        ),
                    );
                }
            }
            for package in cx.workspace.packages.values() {
                let dir = package.dir.to_string_lossy().replace('\\', "/");
                if !copied.iter().any(|s| covers(s, &dir)) {
                    report(
                        stage.line,
                        format!(
                            "{} does not copy the workspace member {dir} (package {}); cargo \
                             refuses to load a workspace with a member missing: add \
                             `COPY {top} {top}`",
                            stage.label(),
                            package.name,
                            top = dir.split('/').next().unwrap_or(&dir),
                        ),
                    );
                }
            }
        }
    }

    // Final images: stages nobody copies from.
    for stage in docker
        .stages
        .iter()
        .filter(|s| !used_as_source.contains(&s.index))
    {
        match stage.all("USER").last() {
            None => report(
                stage.line,
                format!(
                    "{} runs as root: add `USER 10001:10001` (an unprivileged user, like \
                     every micromesh image)",
                    stage.label()
                ),
            ),
            Some(user) => {
                let name = user.args.split(':').next().unwrap_or("").trim();
                if name == "root" || name == "0" {
                    report(
                        user.line,
                        format!(
                            "{} sets USER {}: use an unprivileged user",
                            stage.label(),
                            user.args
                        ),
                    );
                }
            }
        }
        if stage.all("ENTRYPOINT").next().is_none() && stage.all("CMD").next().is_none() {
            report(
                stage.line,
                format!(
                    "{} has no ENTRYPOINT or CMD: the image would not know what to run",
                    stage.label()
                ),
            );
        }
        // An image holding one binary built by cargo is named after it: the
        // offline script relies on that (`cargo build -p <stage>`).
        for copy in stage.copies() {
            let Some(source) = copy.from.as_deref().and_then(|r| docker.stage(r)) else {
                continue;
            };
            if cargo_build(source).is_none() {
                continue;
            }
            for path in &copy.sources {
                if !path.starts_with("/out/") {
                    report(
                        copy.line,
                        format!(
                            "COPY --from={} {path}: copy from /out/ only; the offline build \
                             (scripts/build-offline-images.sh) reads `--from=build /out/X` as `X`",
                            source.label()
                        ),
                    );
                }
                if let Some(bin) = binary_name(path)
                    && stage.name.as_deref() != Some(bin)
                {
                    report(
                        stage.line,
                        format!(
                            "{} holds the binary {bin}: name the stage `{bin}`, the offline \
                             build finds package, binary and image by that one name",
                            stage.label()
                        ),
                    );
                }
            }
        }
    }
    out
}

/// The `RUN` of a stage that runs `cargo build`, if any.
fn cargo_build(stage: &Stage) -> Option<&crate::dockerfile::Instruction> {
    stage.all("RUN").find(|r| r.args.contains("cargo build"))
}

/// Package names given to `cargo build` with `-p NAME`, `-pNAME`,
/// `--package NAME` or `--package=NAME`; other commands of the same RUN
/// (`mkdir -p ...`) are not cargo's.
pub fn cargo_packages(run: &str) -> Vec<String> {
    let mut out = Vec::new();
    for command in run.split([';', '&', '|']) {
        let words: Vec<&str> = command.split_whitespace().collect();
        let Some(cargo) = words.iter().position(|w| *w == "cargo") else {
            continue;
        };
        if words.get(cargo + 1) != Some(&"build") {
            continue;
        }
        for (i, w) in words.iter().enumerate().skip(cargo + 2) {
            if (*w == "-p" || *w == "--package")
                && let Some(next) = words.get(i + 1)
            {
                out.push(next.to_string());
            } else if let Some(name) = w.strip_prefix("--package=") {
                out.push(name.to_string());
            } else if let Some(name) = w.strip_prefix("-p").filter(|n| !n.is_empty()) {
                out.push(name.to_string());
            }
        }
    }
    out
}

/// The binary a path in a build stage names: the file name of a path with a
/// `bin` directory in it (`/out/bin/mesh-proxy`).
fn binary_name(path: &str) -> Option<&str> {
    let mut parts = path.rsplit('/');
    let name = parts.next()?;
    parts.any(|p| p == "bin").then_some(name)
}

/// Why `path`, copied out of stage `source`, would not be there; `None` when
/// the stage visibly makes it.
fn not_produced(source: &Stage, path: &str, workspace: &Workspace) -> Option<String> {
    let made: Vec<&str> = source
        .instructions
        .iter()
        .filter(|i| matches!(i.keyword.as_str(), "RUN" | "WORKDIR" | "COPY" | "ADD"))
        .map(|i| i.args.as_str())
        .collect();
    // The path or one of its directories (not `/`) must appear in what the
    // stage runs or where it copies and works.
    let trimmed = path.trim_end_matches('/');
    let mut prefixes = vec![trimmed];
    let mut cur = trimmed;
    while let Some((parent, _)) = cur.rsplit_once('/') {
        if parent.is_empty() {
            break;
        }
        prefixes.push(parent);
        cur = parent;
    }
    if !prefixes.iter().any(|p| made.iter().any(|m| m.contains(p))) {
        return Some(format!(
            "{path} is copied from {} but nothing there creates it",
            source.label()
        ));
    }
    if let Some(run) = cargo_build(source)
        && let Some(bin) = binary_name(path)
    {
        let built = cargo_packages(&run.args);
        let known = built
            .iter()
            .filter_map(|p| workspace.packages.get(p))
            .any(|p| p.bins.contains(bin));
        if !known {
            let owner = workspace
                .package_with_bin(bin)
                .map(|p| format!(" (it belongs to package {}: add `-p {}`)", p.name, p.name))
                .unwrap_or_else(|| " (no workspace package has a binary of that name)".into());
            return Some(format!(
                "{path}: {} does not build a binary called {bin}{owner}",
                source.label()
            ));
        }
    }
    None
}

/// Whether a COPY source brings `path` (relative to the context) along.
fn covers(source: &str, path: &str) -> bool {
    let source = source.trim_start_matches("./").trim_end_matches('/');
    if source.is_empty() || source == "." {
        return true;
    }
    let source_parts: Vec<&str> = source.split('/').collect();
    let path_parts: Vec<&str> = path.split('/').collect();
    source_parts.len() <= path_parts.len()
        && source_parts
            .iter()
            .zip(&path_parts)
            .all(|(s, p)| wildcard(s, p))
}

/// Why a context path would fail `COPY`; `None` when it is fine.
fn missing_in_context(path: &str, cx: &Context<'_>) -> Option<String> {
    if path.contains("://") {
        return Some(
            "downloads at build time, which a machine without the internet cannot; vendor the file"
                .into(),
        );
    }
    let rel = path.trim_start_matches("./");
    if rel.starts_with('/') || rel.split('/').any(|p| p == "..") {
        return Some("must be a path inside the build context (the repository root)".into());
    }
    let matches = expand(cx.root, rel);
    if matches.is_empty() {
        return Some(format!(
            "no such file in the repository (the build context is {})",
            cx.root.display()
        ));
    }
    if matches.iter().all(|m| cx.ignore.excludes(m)) {
        return Some("left out of the build context by .dockerignore".into());
    }
    None
}

/// The relative paths a COPY source (with `*` and `?`) names under `root`.
fn expand(root: &Path, rel: &str) -> Vec<String> {
    let mut found = vec![String::new()];
    for segment in rel.split('/').filter(|s| !s.is_empty() && *s != ".") {
        let mut next = Vec::new();
        for base in &found {
            let dir = root.join(base);
            let join = |name: &str| {
                if base.is_empty() {
                    name.to_string()
                } else {
                    format!("{base}/{name}")
                }
            };
            if segment.contains(['*', '?']) {
                if let Ok(entries) = std::fs::read_dir(&dir) {
                    for entry in entries.flatten() {
                        let name = entry.file_name().to_string_lossy().to_string();
                        if wildcard(segment, &name) {
                            next.push(join(&name));
                        }
                    }
                }
            } else if dir.join(segment).exists() {
                next.push(join(segment));
            }
        }
        found = next;
    }
    if rel.trim_matches(|c| c == '.' || c == '/').is_empty() {
        return vec![".".into()];
    }
    found
}

// === the build scripts ===

/// The image names of a Dockerfile: its final stages' names.
pub fn images(text: &str) -> Vec<String> {
    let Ok(docker) = Dockerfile::parse(text) else {
        return Vec::new();
    };
    let sources: BTreeSet<usize> = docker
        .stages
        .iter()
        .flat_map(|s| s.copies())
        .filter_map(|c| c.from.and_then(|r| docker.stage(&r).map(|s| s.index)))
        .collect();
    docker
        .stages
        .iter()
        .filter(|s| !sources.contains(&s.index))
        .filter_map(|s| s.name.clone())
        .collect()
}

/// scripts/build-images.sh must map every image to its Dockerfile
/// (`[name]=docker/file`), and build-offline-images.sh must bring every file
/// the non-Rust Dockerfiles copy (it makes their build contexts by hand).
pub fn check_scripts(
    dockerfiles: &[(String, String)],
    build_images: &str,
    build_offline: &str,
) -> Vec<Finding> {
    let mut out = Vec::new();
    for (file, text) in dockerfiles {
        let final_stages = images(text);
        if final_stages.is_empty() {
            out.push(Finding {
                file: file.clone(),
                line: 1,
                message: "no named final stage: name it after its image (`FROM base AS name`), \
                          scripts/build-images.sh builds it with --target name"
                    .into(),
            });
        }
        for name in final_stages {
            if !build_images.contains(&format!("[{name}]={file}")) {
                out.push(Finding {
                    file: "scripts/build-images.sh".into(),
                    line: 1,
                    message: format!("image {name} ({file}) is missing: add `[{name}]={file}` to DOCKERFILE and ALL"),
                });
            }
        }
        let Ok(docker) = Dockerfile::parse(text) else {
            continue;
        };
        let is_rust = docker.stages.iter().any(|s| cargo_build(s).is_some());
        if is_rust {
            if !build_offline.contains(file.as_str()) {
                out.push(Finding {
                    file: "scripts/build-offline-images.sh".into(),
                    line: 1,
                    message: format!("never reads {file}, whose final stages it should build"),
                });
            }
            continue;
        }
        for stage in &docker.stages {
            for copy in stage.copies().iter().filter(|c| c.from.is_none()) {
                for path in &copy.sources {
                    if !build_offline.contains(path.as_str()) {
                        out.push(Finding {
                            file: "scripts/build-offline-images.sh".into(),
                            line: 1,
                            message: format!(
                                "{file} copies {path}, which the offline build context never \
                                 gets: add it to that image's service_context line"
                            ),
                        });
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    use crate::workspace::Package;

    fn workspace() -> Workspace {
        let mut packages = BTreeMap::new();
        for (name, dir, bins) in [
            ("mesh-proxy", "mesh/proxy", vec!["mesh-proxy"]),
            ("mesh-api", "mesh/api", vec![]),
        ] {
            packages.insert(
                name.to_string(),
                Package {
                    name: name.into(),
                    dir: PathBuf::from(dir),
                    bins: bins.into_iter().map(str::to_string).collect(),
                },
            );
        }
        Workspace {
            root: PathBuf::from("/w"),
            packages,
        }
    }

    /// A throwaway build context with the given files.
    fn context(files: &[&str]) -> tempdir::TempDir {
        let dir = tempdir::TempDir::new();
        for f in files {
            let path = dir.path().join(f);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, "x").unwrap();
        }
        dir
    }

    const GOOD: &str = "\
ARG RUST_IMAGE=rust:1
FROM ${RUST_IMAGE} AS build
COPY Cargo.toml Cargo.lock ./
COPY mesh mesh
RUN cargo build --release -p mesh-proxy && mkdir -p /out/bin && cp target/release/mesh-proxy /out/bin/
FROM scratch AS mesh-proxy
COPY --from=build /out/bin/mesh-proxy /usr/local/bin/mesh-proxy
USER 10001:10001
ENTRYPOINT [\"/usr/local/bin/mesh-proxy\"]
";

    fn run(text: &str, files: &[&str], ignore: &str) -> Vec<String> {
        let ws = workspace();
        let dir = context(files);
        let ignore = DockerIgnore::parse(ignore);
        let cx = Context {
            workspace: &ws,
            root: dir.path(),
            ignore: &ignore,
        };
        check_dockerfile("docker/x.Dockerfile", text, &cx)
            .into_iter()
            .map(|f| f.message)
            .collect()
    }

    const FILES: &[&str] = &[
        "Cargo.toml",
        "Cargo.lock",
        "mesh/proxy/Cargo.toml",
        "mesh/api/Cargo.toml",
    ];

    #[test]
    fn a_sound_file_has_no_findings() {
        assert_eq!(run(GOOD, FILES, "target\n"), Vec::<String>::new());
    }

    #[test]
    fn a_missing_context_file_is_reported() {
        let found = run(GOOD, &["Cargo.toml", "mesh/proxy/Cargo.toml"], "");
        assert!(
            found
                .iter()
                .any(|m| m.starts_with("COPY Cargo.lock: no such file")),
            "{found:?}"
        );
    }

    #[test]
    fn an_ignored_context_file_is_reported() {
        let found = run(GOOD, FILES, "mesh\n");
        assert!(
            found
                .iter()
                .any(|m| m.contains("left out of the build context by .dockerignore")),
            "{found:?}"
        );
    }

    #[test]
    fn an_unknown_binary_or_package_is_reported() {
        let text = GOOD.replace("/out/bin/mesh-proxy /usr", "/out/bin/mesh-prxy /usr");
        let found = run(&text, FILES, "");
        assert!(
            found
                .iter()
                .any(|m| m.contains("does not build a binary called mesh-prxy")),
            "{found:?}"
        );
        let text = GOOD.replace("-p mesh-proxy", "-p mesh-prox");
        let found = run(&text, FILES, "");
        assert!(
            found
                .iter()
                .any(|m| m.contains("has no package 'mesh-prox'")),
            "{found:?}"
        );
        let text = GOOD.replace("-p mesh-proxy", "-p mesh-api");
        let found = run(&text, FILES, "");
        assert!(
            found.iter().any(|m| m.contains("has no binary")),
            "{found:?}"
        );
    }

    #[test]
    fn a_member_left_out_of_the_cargo_stage_is_reported() {
        let text = GOOD.replace("COPY mesh mesh\n", "COPY mesh/proxy mesh/proxy\n");
        let found = run(&text, FILES, "");
        assert!(
            found
                .iter()
                .any(|m| m.contains("does not copy the workspace member mesh/api")),
            "{found:?}"
        );
    }

    #[test]
    fn root_users_syntax_lines_and_bad_stage_refs_are_reported() {
        let text = format!(
            "# syntax=docker/dockerfile:1\n{}",
            GOOD.replace("USER 10001:10001\n", "")
        );
        let found = run(&text, FILES, "");
        assert!(
            found.iter().any(|m| m.starts_with("remove `# syntax=")),
            "{found:?}"
        );
        assert!(
            found.iter().any(|m| m.contains("runs as root")),
            "{found:?}"
        );
        let text = GOOD.replace("--from=build", "--from=builder");
        let found = run(&text, FILES, "");
        assert!(
            found
                .iter()
                .any(|m| m.contains("no stage is called 'builder'")),
            "{found:?}"
        );
        let text = GOOD.replace("ARG RUST_IMAGE=rust:1", "ARG RUST_IMAGE");
        let found = run(&text, FILES, "");
        assert!(
            found.iter().any(|m| m.contains("needs a default")),
            "{found:?}"
        );
    }

    #[test]
    fn a_stage_must_be_named_after_its_binary() {
        let text = GOOD.replace("AS mesh-proxy", "AS proxy");
        let found = run(&text, FILES, "");
        assert!(
            found
                .iter()
                .any(|m| m.contains("name the stage `mesh-proxy`")),
            "{found:?}"
        );
    }

    #[test]
    fn reads_cargo_package_flags() {
        assert_eq!(
            cargo_packages(
                "mkdir -p /out; cargo build -p a --package b --package=c -pd && cp -p x y"
            ),
            ["a", "b", "c", "d"]
        );
    }

    #[test]
    fn scripts_must_know_every_image_and_file() {
        let files = vec![
            ("docker/rust.Dockerfile".to_string(), GOOD.to_string()),
            (
                "docker/py.Dockerfile".to_string(),
                "FROM python AS hello\nCOPY services/hello.py /app/\nUSER 1\nCMD [\"x\"]\n"
                    .to_string(),
            ),
        ];
        let ok = check_scripts(
            &files,
            "[mesh-proxy]=docker/rust.Dockerfile [hello]=docker/py.Dockerfile",
            "docker/rust.Dockerfile service_context hello services/hello.py",
        );
        assert_eq!(ok, vec![]);
        let bad = check_scripts(
            &files,
            "[mesh-proxy]=docker/rust.Dockerfile",
            "docker/rust.Dockerfile",
        );
        let messages: Vec<_> = bad.iter().map(|f| f.message.as_str()).collect();
        assert!(
            messages.iter().any(|m| m.starts_with("image hello")),
            "{messages:?}"
        );
        assert!(
            messages
                .iter()
                .any(|m| m.contains("copies services/hello.py")),
            "{messages:?}"
        );
    }

    /// A directory removed on drop; std has none and one helper does not
    /// justify a dependency.
    mod tempdir {
        use std::path::{Path, PathBuf};
        use std::sync::atomic::{AtomicUsize, Ordering};

        pub struct TempDir(PathBuf);

        impl TempDir {
            pub fn new() -> TempDir {
                static NEXT: AtomicUsize = AtomicUsize::new(0);
                let dir = std::env::temp_dir().join(format!(
                    "containers-tests-{}-{}",
                    std::process::id(),
                    NEXT.fetch_add(1, Ordering::Relaxed)
                ));
                std::fs::create_dir_all(&dir).unwrap();
                TempDir(dir)
            }
            pub fn path(&self) -> &Path {
                &self.0
            }
        }

        impl Drop for TempDir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }
}

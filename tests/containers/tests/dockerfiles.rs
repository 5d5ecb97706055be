//! Every learner-facing Dockerfile, checked against the workspace without
//! building anything (see `containers_tests::check` for the rules).
//!
//! Workshop attendees build these images on their laptops from public base
//! images; this project's machines cannot pull those bases, so the files are
//! never built here. This test is what notices when a COPY source moves, a
//! binary is renamed or a new workspace member is missing from the Rust
//! builder stage.

use std::path::Path;

use containers_tests::check::{Context, check_dockerfile, check_scripts, images};
use containers_tests::ignore::DockerIgnore;
use containers_tests::workspace::{Workspace, repo_root};

/// `docker/*.Dockerfile`, as (path relative to the root, text).
fn dockerfiles(root: &Path) -> Vec<(String, String)> {
    let mut files: Vec<(String, String)> = std::fs::read_dir(root.join("docker"))
        .expect("docker/ exists at the repository root")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|name| name.ends_with(".Dockerfile") || name == "Dockerfile")
        .map(|name| {
            let rel = format!("docker/{name}");
            let text = std::fs::read_to_string(root.join(&rel)).expect("readable Dockerfile");
            (rel, text)
        })
        .collect();
    files.sort();
    files
}

fn read(root: &Path, rel: &str) -> String {
    std::fs::read_to_string(root.join(rel)).unwrap_or_else(|e| panic!("cannot read {rel}: {e}"))
}

#[test]
fn every_dockerfile_matches_the_workspace() {
    let root = repo_root();
    let workspace = Workspace::this().expect("cargo metadata describes the workspace");
    let ignore = DockerIgnore::parse(&read(&root, ".dockerignore"));
    let cx = Context {
        workspace: &workspace,
        root: &root,
        ignore: &ignore,
    };
    let files = dockerfiles(&root);
    let mut findings = Vec::new();
    for (rel, text) in &files {
        findings.extend(check_dockerfile(rel, text, &cx));
    }
    findings.extend(check_scripts(
        &files,
        &read(&root, "scripts/build-images.sh"),
        &read(&root, "scripts/build-offline-images.sh"),
    ));
    let report: Vec<String> = findings.iter().map(ToString::to_string).collect();
    assert!(
        report.is_empty(),
        "the Dockerfiles have drifted from the workspace:\n  {}",
        report.join("\n  ")
    );
}

#[test]
fn there_is_an_image_for_every_service_and_mesh_binary() {
    // The images the issue promises: changing this list is a decision, not
    // a refactoring.
    let root = repo_root();
    let mut all: Vec<String> = dockerfiles(&root)
        .iter()
        .flat_map(|(_, text)| images(text))
        .collect();
    all.sort();
    assert_eq!(
        all,
        [
            "guestbook-service",
            "guestbook-ui",
            "hello-grpc",
            "helloworld-service",
            "mesh-control",
            "mesh-proxy",
            "sentiment-service"
        ]
    );
}

#[test]
fn the_build_context_leaves_out_build_output() {
    // Sending target/ (gigabytes) to the Docker daemon would make every
    // build crawl; a learner would blame Docker.
    let ignore = DockerIgnore::parse(&read(&repo_root(), ".dockerignore"));
    for path in [
        "target/debug/mesh-proxy",
        "target/x86_64-unknown-linux-gnu/release/mesh-proxy",
        ".git/HEAD",
    ] {
        assert!(
            ignore.excludes(path),
            "{path} should be left out of the build context"
        );
    }
    for path in [
        "Cargo.toml",
        "mesh/proxy/src/main.rs",
        "services/helloworld-service/helloworld.py",
    ] {
        assert!(
            !ignore.excludes(path),
            "{path} must stay in the build context"
        );
    }
}

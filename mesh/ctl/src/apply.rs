//! `meshctl apply`, `delete` and `validate`: Istio YAML in, kubectl's answers out.
//!
//! `apply` and `delete` send the files as they are (`ApplyRequest`) to the
//! control plane, which parses and validates every document before it changes
//! anything: all or nothing, like a Kubernetes admission webhook refusing a
//! bad VirtualService. `validate` runs the very same parser here, offline, so
//! CI and editors can check a lab's YAML without a running mesh.
//!
//! ```text
//! $ meshctl apply -f labs/04-canary/
//! destinationrule.networking.istio.io/helloworld-service created
//! virtualservice.networking.istio.io/helloworld-service created
//! ```

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use mesh_api::config::{
    ApplyRequest, ApplyResponse, Change, ConfigError, ConfigErrors, ConfigSet, SourceFile,
};

use crate::analyze::format_diagnostic;
use crate::cli::Ctx;
use crate::client::Validated;

#[derive(Debug, clap::Args)]
pub struct FileArgs {
    /// A YAML file, a directory (its *.yaml and *.yml files, in name order),
    /// or - for standard input. Repeatable.
    #[arg(
        short = 'f',
        long = "filename",
        value_name = "FILE|DIR|-",
        required = true
    )]
    pub files: Vec<PathBuf>,
}

/// The name standard input gets in messages.
const STDIN: &str = "<stdin>";

/// Expand `-f` arguments into the files to read, in order: a directory
/// contributes its `*.yaml`/`*.yml` files sorted by name (not recursively,
/// like `kubectl apply -f DIR`).
pub fn expand(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for path in paths {
        if path.as_os_str() == "-" {
            files.push(path.clone());
        } else if path.is_dir() {
            let mut yaml: Vec<PathBuf> = std::fs::read_dir(path)
                .with_context(|| format!("cannot read the directory {}", path.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file())
                .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
                .collect();
            if yaml.is_empty() {
                bail!("{} has no .yaml or .yml files", path.display());
            }
            yaml.sort();
            files.extend(yaml);
        } else if path.exists() {
            files.push(path.clone());
        } else {
            bail!("{} does not exist", path.display());
        }
    }
    Ok(files)
}

/// Read every file; standard input at most once.
pub fn read_sources(paths: &[PathBuf]) -> Result<Vec<SourceFile>> {
    let mut sources = Vec::new();
    let mut stdin_read = false;
    for path in expand(paths)? {
        if path.as_os_str() == "-" {
            if stdin_read {
                bail!("- (standard input) is given twice; it can be read only once");
            }
            stdin_read = true;
            let mut content = String::new();
            std::io::stdin()
                .read_to_string(&mut content)
                .context("cannot read standard input")?;
            sources.push(SourceFile {
                name: STDIN.to_string(),
                content,
            });
        } else {
            let content = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            sources.push(SourceFile {
                name: path.display().to_string(),
                content,
            });
        }
    }
    Ok(sources)
}

pub async fn apply(ctx: &Ctx, args: FileArgs) -> Result<ExitCode> {
    send(ctx, args, "/v1/config/apply").await
}

pub async fn delete(ctx: &Ctx, args: FileArgs) -> Result<ExitCode> {
    send(ctx, args, "/v1/config/delete").await
}

async fn send(ctx: &Ctx, args: FileArgs, path: &str) -> Result<ExitCode> {
    let request = ApplyRequest {
        files: read_sources(&args.files)?,
    };
    match ctx
        .control()
        .post_validated::<_, ApplyResponse>(path, &request)
        .await?
    {
        Validated::Ok(response) => {
            for change in &response.changes {
                println!("{}", describe_change(change));
            }
            // Like kubectl's admission warnings: the change is made, but
            // something will not work as written.
            for d in &response.diagnostics {
                eprintln!("Warning: {}", format_diagnostic(d));
            }
            Ok(ExitCode::SUCCESS)
        }
        Validated::Rejected(errors) => {
            print_errors(&errors);
            eprintln!("Nothing was changed: fix the errors above and apply again.");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// `meshctl validate`: parse and validate each file here, with no control plane.
pub fn validate(args: FileArgs) -> Result<ExitCode> {
    let sources = read_sources(&args.files)?;
    let mut failed = false;
    for source in &sources {
        match ConfigSet::parse(std::slice::from_ref(source)) {
            Ok(resources) => println!(
                "{}: OK ({} resource{})",
                source.name,
                resources.len(),
                if resources.len() == 1 { "" } else { "s" }
            ),
            Err(errors) => {
                failed = true;
                print_errors(&errors);
            }
        }
    }
    // Each file may be fine alone and still clash with another (the same
    // resource defined twice); the control plane would see them together.
    if !failed
        && sources.len() > 1
        && let Err(errors) = ConfigSet::parse(&sources)
    {
        failed = true;
        print_errors(&errors);
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn print_errors(errors: &ConfigErrors) {
    for e in &errors.errors {
        eprintln!("{}", format_error(e));
    }
}

/// `labs/04/vs.yaml: VirtualService default/helloworld-service: spec.http[0].fault.abort.percent: message`
pub fn format_error(e: &ConfigError) -> String {
    [
        e.file.as_str(),
        e.resource.as_str(),
        e.field.as_str(),
        e.message.as_str(),
    ]
    .into_iter()
    .filter(|part| !part.is_empty())
    .collect::<Vec<_>>()
    .join(": ")
}

/// `virtualservice.networking.istio.io/guestbook-ui configured`
pub fn describe_change(change: &Change) -> String {
    let kind = change.kind.to_ascii_lowercase();
    let group = api_group(&change.kind);
    if group.is_empty() {
        format!("{kind}/{} {}", change.name, change.action)
    } else {
        format!("{kind}.{group}/{} {}", change.name, change.action)
    }
}

/// The API group of an Istio kind, as kubectl prints it.
fn api_group(kind: &str) -> &'static str {
    match kind {
        "VirtualService" | "DestinationRule" | "Gateway" | "ServiceEntry" | "Sidecar" => {
            "networking.istio.io"
        }
        "PeerAuthentication" | "AuthorizationPolicy" | "RequestAuthentication" => {
            "security.istio.io"
        }
        "Telemetry" => "telemetry.istio.io",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scratch directory with files.
    fn scratch_dir(files: &[(&str, &str)]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "meshctl-apply-{}-{}",
            std::process::id(),
            fastrand::u32(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        for (name, content) in files {
            let path = dir.join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, content).unwrap();
        }
        dir
    }

    #[test]
    fn a_directory_expands_to_its_yaml_in_name_order() {
        let dir = scratch_dir(&[
            ("b.yml", "b"),
            ("a.yaml", "a"),
            ("notes.md", "no"),
            ("nested/c.yaml", "not recursive"),
        ]);
        let single = dir.join("a.yaml");
        let files = expand(&[dir.clone(), single.clone(), "-".into()]).unwrap();
        assert_eq!(
            files,
            [dir.join("a.yaml"), dir.join("b.yml"), single, "-".into()]
        );

        let sources = read_sources(std::slice::from_ref(&dir)).unwrap();
        let contents: Vec<_> = sources.iter().map(|s| s.content.as_str()).collect();
        assert_eq!(contents, ["a", "b"]);
        assert!(sources[0].name.ends_with("a.yaml"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn empty_directories_and_missing_files_are_errors() {
        let dir = scratch_dir(&[("readme.txt", "x")]);
        let err = expand(std::slice::from_ref(&dir)).unwrap_err().to_string();
        assert!(err.contains("has no .yaml or .yml files"), "{err}");
        let err = expand(&[dir.join("missing.yaml")]).unwrap_err().to_string();
        assert!(err.contains("does not exist"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn changes_print_like_kubectl() {
        let change = |kind: &str, action: &str| Change {
            kind: kind.into(),
            namespace: "default".into(),
            name: "guestbook-ui".into(),
            action: action.into(),
        };
        assert_eq!(
            describe_change(&change("VirtualService", "configured")),
            "virtualservice.networking.istio.io/guestbook-ui configured"
        );
        assert_eq!(
            describe_change(&change("AuthorizationPolicy", "created")),
            "authorizationpolicy.security.istio.io/guestbook-ui created"
        );
        assert_eq!(
            describe_change(&change("Thing", "deleted")),
            "thing/guestbook-ui deleted"
        );
    }

    #[test]
    fn errors_name_file_resource_and_field() {
        let e = ConfigError {
            file: "labs/05/fault.yaml".into(),
            resource: "VirtualService default/helloworld-service".into(),
            field: "spec.http[0].fault.abort.percent".into(),
            message: "`percent` is the v1alpha3 field; write `percentage: {value: 50}`".into(),
        };
        assert_eq!(
            format_error(&e),
            "labs/05/fault.yaml: VirtualService default/helloworld-service: \
             spec.http[0].fault.abort.percent: `percent` is the v1alpha3 field; write `percentage: {value: 50}`"
        );
        let no_field = ConfigError {
            field: String::new(),
            ..e
        };
        assert_eq!(
            format_error(&no_field),
            "labs/05/fault.yaml: VirtualService default/helloworld-service: `percent` is the v1alpha3 field; write `percentage: {value: 50}`"
        );
    }
}

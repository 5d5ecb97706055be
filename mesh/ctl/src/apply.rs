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
    ApplyRequest, ApplyResponse, ConfigErrors, ConfigSet, Kind, NETWORKING_GROUP, SourceFile,
};

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

/// `meshctl delete -f FILE` or `meshctl delete KIND NAME...`, as kubectl.
#[derive(Debug, clap::Args)]
pub struct DeleteArgs {
    /// A YAML file, a directory, or - for standard input (repeatable): delete
    /// what it defines (only apiVersion, kind and metadata are read).
    #[arg(short = 'f', long = "filename", value_name = "FILE|DIR|-")]
    pub files: Vec<PathBuf>,
    /// Instead of files: the kind (vs, dr, gw...) and names to delete.
    #[arg(
        value_name = "KIND",
        conflicts_with = "files",
        required_unless_present = "files"
    )]
    pub kind: Option<String>,
    #[arg(value_name = "NAME", requires = "kind")]
    pub names: Vec<String>,
    /// Namespace of the named resources.
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
}

pub async fn apply(ctx: &Ctx, args: FileArgs) -> Result<ExitCode> {
    send(ctx, read_sources(&args.files)?, "/v1/config/apply").await
}

pub async fn delete(ctx: &Ctx, args: DeleteArgs) -> Result<ExitCode> {
    let files = match &args.kind {
        None => read_sources(&args.files)?,
        Some(kind) => vec![reference_file(kind, &args.names, &args.namespace)?],
    };
    send(ctx, files, "/v1/config/delete").await
}

/// `meshctl delete vs a b` as the YAML `kubectl delete` would read: one
/// document per name with only apiVersion, kind and metadata, which is all
/// the control plane looks at to delete.
fn reference_file(kind: &str, names: &[String], namespace: &str) -> Result<SourceFile> {
    let kind = Kind::parse(kind)?;
    if names.is_empty() {
        bail!(
            "name the {} to delete: meshctl delete {} NAME...",
            kind.plural(),
            kind.short_name()
        );
    }
    let content = names
        .iter()
        .map(|name| {
            format!(
                "apiVersion: {NETWORKING_GROUP}/v1\nkind: {}\nmetadata:\n  name: {}\n  namespace: {}\n",
                kind.as_str(),
                yaml_string(name),
                yaml_string(namespace)
            )
        })
        .collect::<Vec<_>>()
        .join("---\n");
    Ok(SourceFile {
        name: "<command line>".to_string(),
        content,
    })
}

/// A name as a YAML string, quoted so no name can change the document.
fn yaml_string(text: &str) -> String {
    serde_json::to_string(text).expect("a string serializes")
}

async fn send(ctx: &Ctx, files: Vec<SourceFile>, path: &str) -> Result<ExitCode> {
    let request = ApplyRequest { files };
    match ctx
        .control()
        .post_validated::<_, ApplyResponse>(path, &request)
        .await?
    {
        Validated::Ok(response) => {
            // `virtualservice.networking.istio.io/guestbook-ui configured`
            for change in &response.changes {
                println!("{change}");
            }
            // Like kubectl's admission warnings: the change is made, but
            // something will not work as written (`meshctl analyze` again).
            for d in &response.diagnostics {
                eprintln!("{d}");
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

/// `FILE: Kind ns/name: field: message`, one line per error.
fn print_errors(errors: &ConfigErrors) {
    for e in &errors.errors {
        eprintln!("{e}");
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
    fn delete_by_name_writes_reference_documents() {
        let file = reference_file("vs", &["a".into(), "b".into()], "default").unwrap();
        assert_eq!(
            file.content,
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: \"a\"\n  namespace: \"default\"\n\
             ---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: \"b\"\n  namespace: \"default\"\n"
        );
        // The control plane reads it with the same parser delete uses.
        let resources = ConfigSet::parse_identities(&[file]).unwrap();
        let ids: Vec<_> = resources.iter().map(|r| r.id()).collect();
        assert_eq!(
            ids,
            ["VirtualService default/a", "VirtualService default/b"]
        );

        assert!(reference_file("pods", &["a".into()], "default").is_err());
        let err = reference_file("dr", &[], "default")
            .unwrap_err()
            .to_string();
        assert!(err.contains("meshctl delete dr NAME"), "{err}");
    }

    #[test]
    fn validate_reports_each_file() {
        let dir = scratch_dir(&[
            (
                "good.yaml",
                "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: helloworld-service\nspec:\n  host: helloworld-service\n  subsets:\n  - name: v1\n    labels:\n      version: v1\n",
            ),
            (
                "old.yaml",
                "apiVersion: networking.istio.io/v1alpha3\nkind: VirtualService\nmetadata:\n  name: hw\nspec:\n  hosts: [helloworld-service]\n  http:\n  - fault:\n      abort:\n        percent: 50\n        httpStatus: 503\n    route:\n    - destination:\n        host: helloworld-service\n",
            ),
        ]);
        let good = FileArgs {
            files: vec![dir.join("good.yaml")],
        };
        assert_eq!(validate(good).unwrap(), ExitCode::SUCCESS);
        let all = FileArgs {
            files: vec![dir.clone()],
        };
        assert_eq!(validate(all).unwrap(), ExitCode::FAILURE);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

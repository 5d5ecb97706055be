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
//!
//! The contract (also in `meshctl apply --help`, [`APPLY_HELP`]): the exit
//! status says whether the change was made. Istio applies a VirtualService
//! that routes to a subset nobody defines and lets the request fail at run
//! time; so does micromesh, and the cross-reference analysis that comes back
//! with the change is printed as warnings, the way `kubectl apply` prints an
//! admission webhook's warnings: applied, exit 0, `Warning [CODE] ...`.
//! Only a refusal (a file that does not parse or validate: nothing changed)
//! exits 1. `meshctl analyze` is where an Error-level finding fails the
//! command. `validate` keeps the same contract offline, and analyzes the
//! files it is given together, so a VirtualService and the DestinationRule
//! it needs can be checked side by side before anything is applied.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use mesh_api::config::{
    ApplyRequest, ApplyResponse, ConfigErrors, ConfigSet, Diagnostic, Kind, SourceFile,
};

use crate::analyze::is_error;
use crate::catalog;
use crate::cli::Ctx;
use crate::client::Validated;

/// `meshctl apply --help`, after the options: what the exit status and the
/// messages mean.
pub const APPLY_HELP: &str = "\
Exit status:
  0  The change was made. The control plane analyzes the whole mesh with it
     (the checks of `meshctl analyze`) and each finding is printed on stderr
     as a warning, like `kubectl apply` prints an admission webhook's:
       Warning [ReferencedResourceNotFound] VirtualService default/x spec.http[0]...: ...
     Istio applies such config too, and the requests it touches fail at run
     time (a 503 for a subset nobody defines): fix the YAML and apply again.
     `meshctl analyze` lists the findings and exits 1 while one is an error.
  1  Nothing was changed: a file does not parse or is not valid (one line per
     problem: FILE: KIND ns/name: field: message), or the control plane
     cannot be reached.
On a cluster (see `meshctl --help`, local or cluster) meshctl does not apply:
use `kubectl apply -f FILE`; the control plane's admission webhook refuses an
invalid resource with the messages above. `meshctl validate` works anywhere.";

/// `meshctl validate --help`, after the options.
pub const VALIDATE_HELP: &str = "\
Checks the files the way `meshctl apply` would, with no control plane: each
file alone, then all of them together (a resource defined twice), then the
cross-reference analysis `apply` runs, across the files given and the
Guestbook's services (give a VirtualService and its DestinationRule together).

Exit status, as for apply: 0 when apply would accept the files, with each
analysis finding printed as a warning; 1 when apply would refuse them.";

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
    refuse_on_a_cluster(ctx, "apply", &args.files)?;
    send(ctx, read_sources(&args.files)?, "/v1/config/apply").await
}

/// One way per mode: on a cluster, kubectl writes the Istio resources.
fn refuse_on_a_cluster(ctx: &Ctx, verb: &str, files: &[PathBuf]) -> Result<()> {
    if let crate::cli::Mode::Cluster(target) = ctx.mode() {
        let files: Vec<String> = files
            .iter()
            .map(|f| format!("-f {}", f.display()))
            .collect();
        let files = if files.is_empty() {
            "KIND NAME...".to_string()
        } else {
            files.join(" ")
        };
        bail!(
            "meshctl talks to the cluster of {} (see `meshctl --help`, local or cluster), \
             where the Istio resources are Kubernetes objects: run `kubectl {verb} {files}` \
             (the control plane's admission webhook validates them as `meshctl validate` does)",
            target.describe()
        );
    }
    Ok(())
}

pub async fn delete(ctx: &Ctx, args: DeleteArgs) -> Result<ExitCode> {
    refuse_on_a_cluster(ctx, "delete", &args.files)?;
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
                "apiVersion: {}\nkind: {}\nmetadata:\n  name: {}\n  namespace: {}\n",
                kind.api_version(),
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
            for line in warnings(&response.diagnostics, Reporter::Apply) {
                eprintln!("{line}");
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

/// Which command reports the analysis: it decides the closing line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reporter {
    /// `apply`: the change was made.
    Apply,
    /// `validate`: nothing was applied; apply would accept the files.
    Validate,
}

/// The analysis that comes back with a change, as the warnings they are
/// for `apply`: the change was made, so nothing here is labelled an error
/// (the exit status is 0). When an Error-level finding is among them
/// (requests it touches will fail), a closing line says so and what to do.
pub fn warnings(diagnostics: &[Diagnostic], reporter: Reporter) -> Vec<String> {
    let mut lines: Vec<String> = diagnostics
        .iter()
        .map(|d| {
            // Info findings (a fault that injects nothing...) are no warning.
            let label = if d.level.eq_ignore_ascii_case("info") {
                "Info"
            } else {
                "Warning"
            };
            let mut line = format!("{label} [{}] {}", d.code, d.resource);
            if !d.field.is_empty() {
                line.push(' ');
                line.push_str(&d.field);
            }
            line.push_str(": ");
            line.push_str(&d.message);
            line
        })
        .collect();
    let errors = diagnostics.iter().filter(|d| is_error(d)).count();
    if errors > 0 {
        let (done, again) = match reporter {
            Reporter::Apply => ("Applied anyway, as Istio would", "apply again"),
            Reporter::Validate => (
                "`meshctl apply` would accept this, as Istio would",
                "validate again",
            ),
        };
        lines.push(format!(
            "{done}; {errors} of these will fail requests as written \
             (`meshctl analyze` counts them as errors): fix the YAML and {again}."
        ));
    }
    lines
}

/// What `validate` found: the lines to print and whether apply would refuse.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Validation {
    /// `FILE: OK (N resources)`, for stdout.
    pub ok: Vec<String>,
    /// Errors and warnings, for stderr.
    pub problems: Vec<String>,
    /// Whether `meshctl apply` would refuse these files.
    pub refused: bool,
}

/// Validate `sources` as the control plane would on apply, then analyze
/// them together against the Guestbook's services (`catalog.rs`): offline,
/// the catalog is the registry.
pub fn check_sources(sources: &[SourceFile]) -> Validation {
    let mut result = Validation::default();
    for source in sources {
        match ConfigSet::parse(std::slice::from_ref(source)) {
            Ok(resources) => result.ok.push(format!(
                "{}: OK ({} resource{})",
                source.name,
                resources.len(),
                if resources.len() == 1 { "" } else { "s" }
            )),
            Err(errors) => {
                result.refused = true;
                result.problems.extend(error_lines(&errors));
            }
        }
    }
    if result.refused {
        return result;
    }
    // Each file may be fine alone and still clash with another (the same
    // resource defined twice), and a VirtualService's subsets may be defined
    // by a DestinationRule in another file: the control plane sees them
    // together, and so do we.
    match ConfigSet::parse(sources) {
        Err(errors) => {
            result.refused = true;
            result.problems.extend(error_lines(&errors));
        }
        Ok(resources) => {
            // The set the control plane would hold if this mesh had no other
            // config: these files, applied to an empty one.
            let (set, _) = ConfigSet::default().apply(resources);
            let services: Vec<String> = catalog::CATALOG
                .iter()
                .map(|s| s.name.to_string())
                .collect();
            result
                .problems
                .extend(warnings(&set.analyze(&services), Reporter::Validate));
        }
    }
    result
}

/// `meshctl validate`: parse, validate and analyze the files here, with no
/// control plane.
pub fn validate(args: FileArgs) -> Result<ExitCode> {
    let validation = check_sources(&read_sources(&args.files)?);
    for line in &validation.ok {
        println!("{line}");
    }
    for line in &validation.problems {
        eprintln!("{line}");
    }
    Ok(if validation.refused {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// `FILE: Kind ns/name: field: message`, one line per error.
fn error_lines(errors: &ConfigErrors) -> Vec<String> {
    errors.errors.iter().map(|e| e.to_string()).collect()
}

/// The same lines on stderr, for a refused apply or delete.
fn print_errors(errors: &ConfigErrors) {
    for line in error_lines(errors) {
        eprintln!("{line}");
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

    const VS_TO_V2: &str = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: helloworld-service\n\
        spec:\n  hosts: [helloworld-service]\n  http:\n  - route:\n    - destination:\n        host: helloworld-service\n        subset: v2\n";
    const DR_V1_V2: &str = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: helloworld-service\n\
        spec:\n  host: helloworld-service\n  subsets:\n  - name: v1\n    labels:\n      version: v1\n  - name: v2\n    labels:\n      version: v2\n";

    fn source(name: &str, content: &str) -> SourceFile {
        SourceFile {
            name: name.into(),
            content: content.into(),
        }
    }

    #[test]
    fn validate_analyzes_the_files_together_as_apply_would() {
        // Alone, the VirtualService routes to a subset nothing defines:
        // apply would accept it (exit 0) and warn, and so does validate.
        let alone = check_sources(&[source("vs.yaml", VS_TO_V2)]);
        assert!(!alone.refused, "{alone:?}");
        assert_eq!(alone.ok, ["vs.yaml: OK (1 resource)"]);
        let finding = alone
            .problems
            .iter()
            .find(|l| l.contains("[ReferencedResourceNotFound]"))
            .unwrap_or_else(|| panic!("the missing subset is reported: {alone:?}"));
        assert!(
            finding.starts_with(
                "Warning [ReferencedResourceNotFound] VirtualService default/helloworld-service"
            ),
            "{finding}"
        );
        assert!(finding.contains("v2"), "names the subset: {finding}");

        // With the DestinationRule beside it, the reference resolves.
        let together = check_sources(&[source("dr.yaml", DR_V1_V2), source("vs.yaml", VS_TO_V2)]);
        assert!(!together.refused, "{together:?}");
        assert!(
            !together
                .problems
                .iter()
                .any(|l| l.contains("ReferencedResourceNotFound")),
            "{together:?}"
        );

        // The same resource twice is what apply refuses: exit 1.
        let twice = check_sources(&[source("a.yaml", DR_V1_V2), source("b.yaml", DR_V1_V2)]);
        assert!(twice.refused, "{twice:?}");
    }

    #[test]
    fn apply_labels_analysis_as_warnings_because_the_change_was_made() {
        let finding = |level: &str, code: &str| Diagnostic {
            level: level.into(),
            code: code.into(),
            resource: "VirtualService default/helloworld-service".into(),
            field: "spec.http[0].route[0].destination.subset".into(),
            message: "subset \"v2\" is not defined".into(),
        };
        let lines = warnings(
            &[
                finding("Error", "ReferencedResourceNotFound"),
                finding("Warning", "SubsetSelectsNoInstances"),
                finding("Info", "FaultInjectsNothing"),
            ],
            Reporter::Apply,
        );
        assert_eq!(
            lines[0],
            "Warning [ReferencedResourceNotFound] VirtualService default/helloworld-service \
             spec.http[0].route[0].destination.subset: subset \"v2\" is not defined"
        );
        assert!(
            lines[1].starts_with("Warning [SubsetSelectsNoInstances] "),
            "{lines:?}"
        );
        assert!(
            lines[2].starts_with("Info [FaultInjectsNothing] "),
            "{lines:?}"
        );
        assert!(
            lines.iter().all(|l| !l.starts_with("Error")),
            "exit 0 and an `Error` label disagree: {lines:?}"
        );
        assert!(
            lines[3].starts_with("Applied anyway")
                && lines[3].contains("1 of these will fail requests"),
            "{lines:?}"
        );
        // validate applied nothing, and says so.
        let lines = warnings(&[finding("Error", "X")], Reporter::Validate);
        assert!(
            lines[1].starts_with("`meshctl apply` would accept this"),
            "{lines:?}"
        );
        // Nothing that fails: no closing line.
        assert_eq!(
            warnings(&[finding("Warning", "X")], Reporter::Apply).len(),
            1
        );
    }
}

//! The committed CRDs (`k8s/crds/istio-networking.yaml`) are exactly what
//! `mesh-crdgen` generates from the Rust types, and Kubernetes takes them.
//!
//! ```text
//! cargo test -p mesh-control --test crds
//! # when it fails because the types changed:
//! cargo run -p mesh-control --bin mesh-crdgen > k8s/crds/istio-networking.yaml
//! ```

use std::path::PathBuf;
use std::process::Command;

use mesh_control::kubernetes::crd::{CRD_FILE, render};

fn committed() -> (PathBuf, String) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(CRD_FILE);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    (path, text)
}

#[test]
fn committed_crds_are_current() {
    let (path, text) = committed();
    assert!(
        text == render(),
        "{} is stale: the Rust types changed since it was generated. Regenerate it with\n  \
         cargo run -p mesh-control --bin mesh-crdgen > {CRD_FILE}\nand commit it.",
        path.display()
    );
}

#[test]
fn committed_crds_validate_strictly_against_the_kubernetes_schema() {
    let (path, _) = committed();
    // The oldest Kubernetes the cluster path supports (native sidecars) and
    // kubernetes-validate's newest.
    for version in ["1.29.0", "1.37.0"] {
        let out = Command::new("kubernetes-validate")
            .args(["--strict", "--quiet", "-k", version])
            .arg(&path)
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "kubernetes-validate could not run ({e}); install it with \
                     `python3 -m pip install kubernetes-validate` or run \
                     scripts/setup-test-machine.sh"
                )
            });
        assert!(
            out.status.success(),
            "{} does not validate against Kubernetes {version}:\n{}{}",
            path.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

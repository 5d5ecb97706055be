//! `mesh-crdgen`: writes the CRDs of Istio's networking kinds, generated
//! from micromesh's Rust types (`mesh_control::kubernetes::crd`).
//!
//! ```text
//! cargo run -p mesh-control --bin mesh-crdgen > k8s/crds/istio-networking.yaml
//! ```
//!
//! The test `committed_crds_are_current` (tests/kubernetes.rs) fails when
//! the committed file differs from this output.

fn main() {
    print!("{}", mesh_control::kubernetes::crd::render());
}

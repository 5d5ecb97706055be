//! micromesh control plane (library).

pub mod compile;

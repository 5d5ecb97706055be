//! micromesh as containers.
//!
//! Two kinds of test live in this crate:
//!
//! - `tests/dockerfiles.rs` reads every Dockerfile in `docker/` and checks it
//!   against the workspace ([`check`]): the learner-facing images are built
//!   on laptops that can pull public bases, never on this project's machines,
//!   so nothing else would notice a COPY of a file that moved or a binary
//!   that was renamed.
//! - `tests/pods.rs` runs the Guestbook as pods of containers ([`pods`]):
//!   images built offline ([`images`]), started through testcontainers on a
//!   Docker network, driven through the gateway and the control plane's API.
//! - `tests/kind_pods.rs` runs the kind overlay's rendered pod specs as
//!   containers ([`kubelet`]): what a cluster would run, without a cluster.
//!
//! The rest is what those tests need: a small Dockerfile reader
//! ([`dockerfile`]), `.dockerignore` rules ([`ignore`]), the workspace as
//! `cargo metadata` describes it ([`workspace`]), the Docker Engine and an
//! API version shim ([`engine`]), and a test runner ([`runner`]).

pub mod check;
pub mod dockerfile;
pub mod engine;
pub mod ignore;
pub mod images;
pub mod kubelet;
pub mod pods;
pub mod runner;
pub mod workspace;

//! micromesh as containers.
//!
//! Two kinds of test live in this crate:
//!
//! - `tests/dockerfiles.rs` reads every Dockerfile in `docker/` and checks it
//!   against the workspace ([`check`]): the learner-facing images are built
//!   on laptops that can pull public bases, never on this project's machines,
//!   so nothing else would notice a COPY of a file that moved or a binary
//!   that was renamed.
//! - the pod tests run the Guestbook as containers built offline by
//!   `scripts/build-offline-images.sh`.
//!
//! The library holds what those tests share: a small Dockerfile reader
//! ([`dockerfile`]), `.dockerignore` rules ([`ignore`]) and the workspace as
//! `cargo metadata` describes it ([`workspace`]).

pub mod check;
pub mod dockerfile;
pub mod ignore;
pub mod workspace;

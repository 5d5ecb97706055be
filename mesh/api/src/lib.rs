//! Types shared by everyone in micromesh, with no I/O.
//!
//! - [`snapshot`]: the config one proxy runs with (compiled by the control plane).
//! - [`check`]: the one check of a snapshot, run by the control plane before
//!   it commits a change and by the proxy when a snapshot arrives.
//! - [`xds`]: the control plane's HTTP API (announce, watch, ack), as types.
//! - [`identity`]: a workload's SPIFFE identity, parsed once into a type.
//! - [`config`]: Istio's resources as learners write them (VirtualService,
//!   DestinationRule, Gateway), parsed, validated and analysed.

pub mod check;
pub mod config;
pub mod identity;
pub mod snapshot;
pub mod xds;

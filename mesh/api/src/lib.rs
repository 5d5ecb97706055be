//! Types shared by everyone in micromesh, with no I/O.
//!
//! - [`snapshot`]: the config one proxy runs with (compiled by the control plane).
//! - [`xds`]: the control plane's HTTP API (announce, watch, ack), as types.
//! - [`config`]: Istio's resources as learners write them (VirtualService,
//!   DestinationRule, Gateway), parsed, validated and analysed.

pub mod config;
pub mod snapshot;
pub mod xds;

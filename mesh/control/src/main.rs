//! `mesh-control`: the control plane binary. Everything lives in the
//! library (see `args.rs` for the flags and `server.rs` for what runs), so
//! tests start the very same server in-process.
//!
//! ```text
//! cargo run -p mesh-control -- --listen 127.0.0.1:15010 --state-dir .mesh/state
//! curl -s localhost:15010/v1/services
//! ```

use mesh_control::Args;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    Args::parse_and_run().await?;
    Ok(())
}

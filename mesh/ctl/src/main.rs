//! meshctl, micromesh's command line: `meshctl up` runs the whole mesh on a
//! laptop; the other commands inspect and configure it, the way kubectl and
//! istioctl do for Istio. See `cli.rs` for the commands, one module each.

mod analyze;
mod apply;
mod catalog;
mod cli;
mod client;
mod cluster;
mod cluster_dashboard;
mod dashboard;
mod exec;
mod get;
mod identity;
mod inject;
mod load;
mod locate;
mod logs;
mod process;
mod reset;
mod runfile;
mod runtime;
mod scale;
mod stat;
mod supervisor;
mod table;
mod token;
mod traces;
mod up;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // meshctl's own diagnostics (MESHCTL_LOG=debug); its output is println!.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MESHCTL_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    cli::Args::parse_and_run().await
}

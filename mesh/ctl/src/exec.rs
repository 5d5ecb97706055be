//! `meshctl exec INSTANCE -- COMMAND...`: run a command as one instance's app
//! would, its calls going through that instance's sidecar.
//!
//! On a cluster you would `kubectl exec deploy/sleep -- curl ...`: the
//! command runs in the pod, so its traffic leaves through the pod's sidecar
//! and the mesh sees the pod's identity. Locally an instance is two
//! processes, not a pod, so "inside" means the environment the mesh gives
//! the instance's app: `HTTP_PROXY` (and `http_proxy`) set to its sidecar's
//! outbound port. Everything else is the caller's shell environment. Lab 09
//! runs its gRPC client this way, in the idle `hello-grpc-client` instance.

use std::process::ExitCode;

use anyhow::{Context, Result, anyhow, bail};

use crate::cli::Ctx;
use crate::runfile::{InstanceRecord, RunState};

#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    /// An instance name (`meshctl get endpoints`), or a service name for its
    /// first instance.
    #[arg(value_name = "INSTANCE|SERVICE")]
    pub target: String,
    /// The command to run and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

pub async fn run(ctx: &Ctx, args: ExecArgs) -> Result<ExitCode> {
    let state = ctx
        .run_state()?
        .filter(|s| crate::process::is_alive(s.pid))
        .ok_or_else(|| {
            anyhow!(
                "no `meshctl up` runs with the work dir {}; start the mesh first \
                 (lab 09: `meshctl up --grpc-demo`)",
                Ctx::show(&ctx.workdir())
            )
        })?;
    let instance = find(&state, &args.target)?;
    let proxy = format!("http://127.0.0.1:{}", instance.outbound_port);
    let (program, rest) = args
        .command
        .split_first()
        .context("no command given; write meshctl exec INSTANCE -- COMMAND [ARGS...]")?;
    // The command runs in the foreground and meshctl only waits for it; a
    // blocking wait is all this process has to do.
    let status = std::process::Command::new(program)
        .args(rest)
        .env("HTTP_PROXY", &proxy)
        .env("http_proxy", &proxy)
        .status()
        .with_context(|| format!("cannot run {program:?}; is it installed and on PATH?"))?;
    Ok(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        None => ExitCode::FAILURE, // killed by a signal
    })
}

/// The instance named `target`, or the first instance of the service
/// `target`; an error lists what runs.
fn find<'a>(state: &'a RunState, target: &str) -> Result<&'a InstanceRecord> {
    if let Some(instance) = state.instances.iter().find(|i| i.instance == target) {
        return Ok(instance);
    }
    if let Some(instance) = state.instances.iter().find(|i| i.service == target) {
        return Ok(instance);
    }
    let mut running: Vec<&str> = state
        .instances
        .iter()
        .map(|i| i.instance.as_str())
        .collect();
    running.sort();
    if running.is_empty() {
        bail!("no instance runs in this mesh, so none is called {target:?}");
    }
    bail!(
        "no instance or service {target:?} runs in this mesh; running instances: {}{}",
        running.join(", "),
        if target.starts_with("hello-grpc") {
            " (the gRPC demo runs with `meshctl up --grpc-demo`)"
        } else {
            ""
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(service: &str, name: &str, outbound_port: u16) -> InstanceRecord {
        InstanceRecord {
            service: service.into(),
            version: "v1".into(),
            instance: name.into(),
            outbound_port,
            ..Default::default()
        }
    }

    #[test]
    fn an_instance_is_found_by_its_name_or_its_service() {
        let state = RunState {
            instances: vec![
                instance("hello-grpc", "hello-grpc-v1-aaaaa", 4001),
                instance("hello-grpc-client", "hello-grpc-client-v1-bbbbb", 4002),
            ],
            ..Default::default()
        };
        assert_eq!(
            find(&state, "hello-grpc-client").unwrap().outbound_port,
            4002
        );
        assert_eq!(
            find(&state, "hello-grpc-v1-aaaaa").unwrap().outbound_port,
            4001
        );
        let err = find(&state, "sleep").unwrap_err().to_string();
        assert!(
            err.contains("hello-grpc-client-v1-bbbbb, hello-grpc-v1-aaaaa"),
            "{err}"
        );
        let err = find(&RunState::default(), "hello-grpc-client")
            .unwrap_err()
            .to_string();
        assert!(err.contains("no instance runs"), "{err}");
    }
}

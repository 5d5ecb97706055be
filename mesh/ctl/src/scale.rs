//! `meshctl scale` and `meshctl restart`: change a running `meshctl up` from
//! another shell, the way `kubectl scale deployment` and deleting a pod do.
//!
//! Both find the supervisor of `meshctl up` in its run file and ask it; it
//! starts new instances (and waits until they are ready) or stops instances
//! gracefully: the sidecar first, so it leaves the registry before its app
//! goes away and no request is sent to an instance that is gone.

use std::process::ExitCode;

use anyhow::{Context, Result};

use crate::catalog::Replicas;
use crate::cli::Ctx;
use crate::client::Client;
use crate::runfile::RunState;
use crate::supervisor::{RestartReply, RestartRequest, ScaleReply, ScaleRequest};

#[derive(Debug, clap::Args)]
pub struct ScaleArgs {
    /// SERVICE[@VERSION]=N, for example helloworld-service=3 or helloworld-service@v2=1.
    #[arg(value_name = "SERVICE[@VERSION]=N")]
    pub target: Replicas,
}

#[derive(Debug, clap::Args)]
pub struct RestartArgs {
    /// control-plane, ingressgateway, or an instance name (see `meshctl up`'s table).
    pub name: String,
}

/// The supervisor of the `meshctl up` that uses this work dir.
fn supervisor(ctx: &Ctx) -> Result<Client> {
    let workdir = ctx.workdir();
    let state = ctx.run_state()?.with_context(|| {
        format!(
            "meshctl up is not running with work dir {} (there is no {}); start the mesh with `meshctl up`, \
             or pass --workdir if it runs with another one",
            Ctx::show(&workdir),
            Ctx::show(&RunState::path(&workdir))
        )
    })?;
    Ok(Client::supervisor(&state.supervisor))
}

pub async fn scale(ctx: &Ctx, args: ScaleArgs) -> Result<ExitCode> {
    let request = ScaleRequest {
        service: args.target.service,
        version: args.target.version,
        replicas: args.target.count,
    };
    let reply: ScaleReply = supervisor(ctx)?.post("/v1/scale", &request).await?;
    println!("{}", describe_scale(&reply));
    Ok(ExitCode::SUCCESS)
}

fn describe_scale(reply: &ScaleReply) -> String {
    let mut text = format!(
        "{}@{} scaled to {}",
        reply.service, reply.version, reply.replicas
    );
    if !reply.started.is_empty() {
        text.push_str(&format!(", started (ready): {}", reply.started.join(", ")));
    }
    if !reply.stopped.is_empty() {
        text.push_str(&format!(", stopped: {}", reply.stopped.join(", ")));
    }
    if reply.started.is_empty() && reply.stopped.is_empty() {
        text.push_str(" (unchanged)");
    }
    text
}

pub async fn restart(ctx: &Ctx, args: RestartArgs) -> Result<ExitCode> {
    let request = RestartRequest { name: args.name };
    let reply: RestartReply = supervisor(ctx)?.post("/v1/restart", &request).await?;
    let pids: Vec<String> = reply.pids.iter().map(u32::to_string).collect();
    println!("{} restarted (pid {})", reply.name, pids.join(", "));
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_what_scaling_did() {
        let mut reply = ScaleReply {
            service: "helloworld-service".into(),
            version: "v1".into(),
            replicas: 3,
            started: vec!["a".into(), "b".into()],
            stopped: vec![],
        };
        assert_eq!(
            describe_scale(&reply),
            "helloworld-service@v1 scaled to 3, started (ready): a, b"
        );
        reply.started.clear();
        assert_eq!(
            describe_scale(&reply),
            "helloworld-service@v1 scaled to 3 (unchanged)"
        );
        reply.replicas = 1;
        reply.stopped = vec!["c".into()];
        assert_eq!(
            describe_scale(&reply),
            "helloworld-service@v1 scaled to 1, stopped: c"
        );
    }
}

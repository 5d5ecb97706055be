//! `meshctl dashboard`: where the mesh's dashboard is, and (with `--open`)
//! open it in a browser.
//!
//! The dashboard belongs to the control plane (`mesh/control/src/dashboard.rs`,
//! port 15014 by default), like Kiali next to istiod; `istioctl dashboard
//! kiali` does the same job for Istio. We ask the control plane where its
//! dashboard listens (`GET /api/v1/dashboard`) rather than guess the port:
//! it may have been moved with `--dashboard-listen`, or be off.
//!
//! On a cluster (see `cli.rs` for the rule) the dashboard is in a pod: we
//! serve it on a local port and relay each request through the API server
//! until Ctrl-C (`cluster_dashboard.rs`), as `istioctl dashboard` does.

use std::process::{ExitCode, Stdio};

use anyhow::{Result, bail};
use serde::Deserialize;

use crate::cli::Ctx;
use crate::client::Client;
use crate::cluster_dashboard;

#[derive(Debug, clap::Args)]
pub struct DashboardArgs {
    /// Also open it in the default browser (xdg-open, or open on macOS).
    #[arg(long)]
    pub open: bool,
    /// On a cluster: the local port to serve the dashboard on (0: any free one).
    #[arg(long, default_value_t = mesh_api::xds::ports::DASHBOARD)]
    pub port: u16,
}

/// What `GET /api/v1/dashboard` answers.
#[derive(Debug, Default, Deserialize)]
pub struct DashboardInfo {
    pub url: Option<String>,
    pub error: Option<String>,
}

/// The dashboard's URL, or why there is none.
pub async fn locate(control: &Client) -> Result<String> {
    let info: DashboardInfo = control.get("/api/v1/dashboard").await?;
    match (info.url, info.error) {
        (Some(url), _) => Ok(url),
        (None, Some(error)) => bail!("the control plane runs no dashboard: {error}"),
        (None, None) => bail!("the control plane runs no dashboard (it gave no reason)"),
    }
}

/// For `meshctl up`'s summary: the URL, or a short reason.
pub async fn summary_line(control: &Client) -> String {
    match locate(control).await {
        Ok(url) => url,
        Err(e) => format!("not running ({e:#})"),
    }
}

pub async fn run(ctx: &Ctx, args: DashboardArgs) -> Result<ExitCode> {
    let control = ctx.control();
    if let Some(proxy) = control.cluster() {
        // Ask first: a control plane that runs no dashboard says why.
        locate(&control).await?;
        let listen = std::net::SocketAddr::from(([127, 0, 0, 1], args.port));
        cluster_dashboard::serve(proxy.clone(), listen, |url| {
            println!("{url}");
            eprintln!(
                "The dashboard of {}, relayed through its API server; Ctrl-C to stop.",
                proxy.target().describe()
            );
            if args.open {
                let _ = open(&url);
            }
        })
        .await?;
        return Ok(ExitCode::SUCCESS);
    }
    let url = locate(&control).await?;
    Ctx::emit(&format!("{url}\n"))?;
    if args.open {
        open(&url)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Hand the URL to the desktop's opener. No browser is not an error worth
/// failing for in a terminal session: the URL is printed above.
fn open(url: &str) -> Result<()> {
    let opener = if cfg!(target_os = "macos") {
        "open"
    } else {
        "xdg-open"
    };
    let started = std::process::Command::new(opener)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    match started {
        Ok(_) => Ok(()),
        Err(e) => {
            eprintln!("could not run {opener} to open a browser ({e}); open {url} yourself");
            Ok(())
        }
    }
}

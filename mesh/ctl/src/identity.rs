//! `meshctl identity WORKLOAD`: who a workload is to the mesh, like
//! `istioctl proxy-config secret`.
//!
//! Each sidecar keeps a short-lived certificate whose only name is its
//! SPIFFE ID (mesh/proxy/src/identity.rs). This command finds the
//! workload's proxies in the control plane's registry (their admin
//! addresses), asks each one's admin port for `GET /certs`, and prints the
//! SPIFFE ID, the validity, when it renews and the chain (PEM, leaf first):
//!
//! ```text
//! $ meshctl identity guestbook-service
//! guestbook-service-v1-7f3c2
//!   SPIFFE ID      spiffe://cluster.local/ns/default/sa/guestbook-service
//!   valid          for 23h 59m more (issued 1m ago, lifetime 24h 1m)
//!   next rotation  in 12h 0m
//!   chain          2 certificates (leaf, root), below
//! -----BEGIN CERTIFICATE-----
//! ```

use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use mesh_api::identity::WorkloadCerts;
use mesh_api::xds::ProxyStatus;

use crate::cli::Ctx;

#[derive(Debug, clap::Args)]
pub struct IdentityArgs {
    /// An instance name (`meshctl get proxies`), or a service: every one of
    /// its instances.
    pub workload: String,
    /// Leave out the PEM chain.
    #[arg(long)]
    pub brief: bool,
}

/// `meshctl rotate-root`: `POST /v1/ca/rotate` (mesh/control/src/ca.rs),
/// and what it did, in a learner's words.
pub async fn rotate_root(ctx: &Ctx) -> Result<ExitCode> {
    let rotation: serde_json::Value = ctx.control().post("/v1/ca/rotate", &()).await?;
    let retires = rotation["oldRootRetiresAtMs"].as_u64().unwrap_or(0);
    let in_s = (UNIX_EPOCH + Duration::from_millis(retires))
        .duration_since(SystemTime::now())
        .map_or(0, |d| d.as_secs());
    println!("A new root signs every certificate from now on; each proxy trusted it first.");
    println!(
        "Proxies move to certificates of the new root as they renew (at half-life). The old root \
         stays trusted until its last certificate expires, in {in_s}s, then leaves every proxy's \
         trust bundle."
    );
    if let Some(late) = rotation["lateProxies"].as_array().filter(|l| !l.is_empty()) {
        println!(
            "warning: these proxies had not acknowledged the new trust bundle when it started \
             signing: {late:?} (`meshctl get proxies` shows their state)"
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn run(ctx: &Ctx, args: IdentityArgs) -> Result<ExitCode> {
    let proxies: Vec<ProxyStatus> = ctx.control().get("/v1/proxies").await?;
    let chosen: Vec<&ProxyStatus> = {
        let by_instance: Vec<_> = proxies
            .iter()
            .filter(|p| p.announce.instance == args.workload)
            .collect();
        if by_instance.is_empty() {
            proxies
                .iter()
                .filter(|p| p.announce.service == args.workload && p.live)
                .collect()
        } else {
            by_instance
        }
    };
    if chosen.is_empty() {
        let mut names: Vec<&str> = proxies
            .iter()
            .map(|p| p.announce.instance.as_str())
            .collect();
        names.sort();
        bail!(
            "no running proxy is named or serves {:?}; the proxies are: {}",
            args.workload,
            if names.is_empty() {
                "(none)".to_string()
            } else {
                names.join(", ")
            }
        );
    }
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()?;
    let mut out = String::new();
    for proxy in chosen {
        let admin = &proxy.announce.admin_address;
        let url = format!("http://{admin}/certs");
        let certs: WorkloadCerts = http
            .get(&url)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .with_context(|| {
                format!(
                    "cannot read {}'s certificate at {url}",
                    proxy.announce.instance
                )
            })?
            .json()
            .await
            .with_context(|| format!("{url} did not answer a certificate description"))?;
        out.push_str(&render(
            &proxy.announce.instance,
            &certs,
            SystemTime::now(),
            args.brief,
        ));
    }
    Ctx::emit(&out)?;
    Ok(ExitCode::SUCCESS)
}

/// One proxy's certificate as text.
fn render(instance: &str, certs: &WorkloadCerts, now: SystemTime, brief: bool) -> String {
    let Some(identity) = &certs.identity else {
        return format!(
            "{instance}\n  no certificate: {}\n",
            certs.reason.as_deref().unwrap_or("(no reason given)")
        );
    };
    let at = |ms: u64| UNIX_EPOCH + Duration::from_millis(ms);
    let (not_before, not_after, renew) = (
        at(certs.not_before_ms),
        at(certs.not_after_ms),
        at(certs.renew_at_ms),
    );
    let valid = match not_after.duration_since(now) {
        Ok(left) => format!(
            "for {} more (issued {} ago, lifetime {})",
            span(left),
            span(now.duration_since(not_before).unwrap_or_default()),
            span(not_after.duration_since(not_before).unwrap_or_default()),
        ),
        Err(_) => "EXPIRED".to_string(),
    };
    let rotation = match renew.duration_since(now) {
        Ok(wait) => format!("in {}", span(wait)),
        Err(_) => "due now".to_string(),
    };
    let mut text = format!(
        "{instance}\n  SPIFFE ID      {identity}\n  valid          {valid}\n  \
         next rotation  {rotation}\n  chain          {} certificate(s), leaf first\n",
        certs.cert_chain.len()
    );
    if !brief {
        for pem in &certs.cert_chain {
            text.push_str(pem.trim_end());
            text.push('\n');
        }
    }
    text
}

/// `23h 59m`, `4m 10s`, `12s`.
fn span(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        _ => format!("{}h {}m", s / 3600, s % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_reads_as_identity_validity_and_rotation() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let ms = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
        let certs = WorkloadCerts {
            identity: Some(
                "spiffe://cluster.local/ns/default/sa/reviews"
                    .parse()
                    .unwrap(),
            ),
            reason: None,
            cert_chain: vec!["LEAF PEM\n".into(), "ROOT PEM\n".into()],
            trust_bundle: vec!["ROOT PEM\n".into()],
            not_before_ms: ms(now - Duration::from_secs(60)),
            not_after_ms: ms(now + Duration::from_secs(24 * 3600)),
            renew_at_ms: ms(now + Duration::from_secs(12 * 3600)),
        };
        let text = render("reviews-v1-1", &certs, now, false);
        assert!(
            text.contains("SPIFFE ID      spiffe://cluster.local/ns/default/sa/reviews"),
            "{text}"
        );
        assert!(
            text.contains("for 24h 0m more (issued 1m 0s ago, lifetime 24h 1m)"),
            "{text}"
        );
        assert!(text.contains("next rotation  in 12h 0m"), "{text}");
        assert!(text.contains("LEAF PEM\nROOT PEM\n"), "{text}");
        assert!(!render("r", &certs, now, true).contains("LEAF PEM"));

        let later = now + Duration::from_secs(25 * 3600);
        assert!(render("r", &certs, later, true).contains("EXPIRED"));
    }

    #[test]
    fn a_proxy_without_a_certificate_says_why() {
        let certs = WorkloadCerts {
            reason: Some("started without MESH_IDENTITY_TOKEN".into()),
            ..Default::default()
        };
        let text = render("gw", &certs, SystemTime::now(), false);
        assert_eq!(
            text,
            "gw\n  no certificate: started without MESH_IDENTITY_TOKEN\n"
        );
    }
}

//! The control plane's write token, as meshctl finds and hands it on.
//!
//! mesh-control makes the token at its first start and keeps it in its state
//! directory, `.mesh/state/control-token`, readable only by the user who runs
//! the mesh (mesh/control/src/token.rs). meshctl reads it there and:
//!
//! - sends it with every change it asks of the control plane (`apply`,
//!   `delete`, `reset`, forgetting a previous run's instances) as
//!   `Authorization: Bearer <token>`;
//! - hands it to each sidecar and gateway `meshctl up` starts, as
//!   `MESH_CONTROL_TOKEN`, so their announces are accepted.
//!
//! `MESH_CONTROL_TOKEN` in meshctl's own environment wins (a control plane
//! started elsewhere, with its token given the same way). The file's token
//! is only ever sent to a control plane on this machine (a loopback URL):
//! `--control-url http://elsewhere` must not carry the local mesh's secret
//! away.

use std::path::Path;

/// The file mesh-control keeps its token in, inside its state directory.
pub const TOKEN_FILE: &str = "control-token";

/// The variable that carries a token to meshctl and to the proxies.
pub const TOKEN_ENV: &str = "MESH_CONTROL_TOKEN";

/// The token to send to the control plane at `url`: `MESH_CONTROL_TOKEN`,
/// else (for a loopback URL) the one in `workdir/state/control-token`.
pub fn for_control_plane(url: &str, workdir: &Path) -> Option<String> {
    if let Some(token) = std::env::var(TOKEN_ENV)
        .ok()
        .filter(|t| !t.trim().is_empty())
    {
        return Some(token.trim().to_string());
    }
    if !is_loopback(url) {
        return None;
    }
    read(&workdir.join("state")).ok()
}

/// The token in a state directory; the error says where it was looked for.
pub fn read(state_dir: &Path) -> Result<String, String> {
    let path = state_dir.join(TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => Ok(text.trim().to_string()),
        Ok(_) => Err(format!("{} is empty", path.display())),
        Err(e) => Err(format!(
            "cannot read the control plane's token in {}: {e}",
            path.display()
        )),
    }
}

/// `http://127.0.0.1:15010`, `http://localhost:...`, `http://[::1]:...`.
fn is_loopback(url: &str) -> bool {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .unwrap_or(url);
    let authority = rest.split('/').next().unwrap_or("");
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_control_planes_get_the_local_token() {
        assert!(is_loopback("http://127.0.0.1:15010"));
        assert!(is_loopback("http://localhost:15010/"));
        assert!(is_loopback("http://[::1]:15010"));
        assert!(!is_loopback("http://10.0.0.5:15010"));
        assert!(!is_loopback("http://mesh-control.mesh-system:15010"));
    }

    #[test]
    fn the_token_is_read_from_the_state_directory() {
        let dir = std::env::temp_dir().join(format!("meshctl-token-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("state")).unwrap();
        std::fs::write(dir.join("state").join(TOKEN_FILE), "abc123\n").unwrap();
        assert_eq!(read(&dir.join("state")).unwrap(), "abc123");
        let missing = read(&dir.join("nowhere")).unwrap_err();
        assert!(missing.contains("control-token"), "{missing}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

//! The control plane's write token: who may change the mesh.
//!
//! Every request that changes something (apply and delete config, a proxy's
//! announce, heartbeat, ACK and leave) must carry
//! `Authorization: Bearer <token>`. Without it anyone who can reach the API
//! could register an endpoint for any service and draw its traffic (issue 15
//! item 10). Reads (`GET`: the dashboard, `meshctl get`, a proxy's snapshot
//! long-poll) stay open, and the API listens on loopback by default.
//!
//! ```text
//! mesh-control start  -> .mesh/state/control-token (mode 0600, made once, kept across restarts)
//! meshctl             -> reads it, sends it on apply/delete, hands it to every
//!                        sidecar and gateway it starts (MESH_CONTROL_TOKEN)
//! mesh-proxy          -> sends it on announce/heartbeat/ack/leave
//! a write without it  -> 401 {"error": "... the token is in .mesh/state/control-token ..."}
//! ```
//!
//! Decisions, and why:
//! - **The file is the secret's home**: mode 0600 lets only the user who runs
//!   the mesh read it, the way `~/.kube/config` and istiod's local CA key are
//!   protected. A token file readable by others is refused at start.
//! - **Spans are not writes**: `POST /api/v2/spans` and OTLP's `/v1/traces`
//!   stay open. They cannot change routing or endpoints, only what the trace
//!   view shows, and apps (not only sidecars) send them with stock Zipkin and
//!   OpenTelemetry exporters that know nothing of our token.
//! - **On Kubernetes** (`--source kubernetes`) there is no token: config is
//!   read from the API server only (an apply here answers 409), and an
//!   announce can never become an endpoint (only EndpointSlices do,
//!   `state.rs`), so an announce only records a proxy's ACKs and admin
//!   address. Who a proxy is, there, is proven by its service-account token
//!   when it asks for a certificate (`kubernetes/token_review.rs`).
//!
//! Istio has no such token: istiod's xDS port is authenticated by the
//! proxies' mTLS certificates (or a JWT on first contact). This token is the
//! local stand-in until that exists, and it also bootstraps the identities:
//! see `ca.rs`.

use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

use crate::api::ApiFailure;
use crate::state::Shared;

/// The token file's name in the state directory.
pub const TOKEN_FILE: &str = "control-token";

/// The environment variable that hands a token to a control plane (instead
/// of the file) and to the proxies and meshctl.
pub const TOKEN_ENV: &str = "MESH_CONTROL_TOKEN";

/// How the control plane guards its writes (`Settings::write_token`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum WriteToken {
    /// The binary's default: the token in `state_dir/control-token`, made
    /// (mode 0600) if the file does not exist yet.
    #[default]
    StateFile,
    /// A token given from outside (`MESH_CONTROL_TOKEN`: containers, tests).
    Given(String),
    /// No token: every write is accepted. Only for a control plane that
    /// nothing else can reach (an in-process test on a free loopback port),
    /// and on Kubernetes, where writes cannot draw traffic (see above).
    Open,
}

/// Why the token could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot {action} the control plane's token file {path}: {error}")]
    Io {
        action: &'static str,
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(
        "the control plane's token file {path} can be read by other users (mode {mode:o}); \
         run `chmod 600 {path}` or delete it to have a new one made"
    )]
    TooOpen { path: PathBuf, mode: u32 },
    #[error(
        "the control plane's token {origin} is not usable: {reason}; delete the file to have a \
         new one made, or set MESH_CONTROL_TOKEN to 32 or more letters and digits"
    )]
    Malformed { origin: String, reason: String },
    #[error("no secure random numbers for the token: {0}")]
    Random(String),
}

/// The token a running control plane checks, and where it lives (for the
/// 401's message).
#[derive(Clone)]
pub struct ControlToken {
    secret: String,
    /// Where a user finds it: a file path, or "MESH_CONTROL_TOKEN".
    origin: String,
}

impl std::fmt::Debug for ControlToken {
    /// Never print the secret (the settings are logged at debug level).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlToken")
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

impl ControlToken {
    /// Resolve `how` for a control plane whose state is in `state_dir`.
    pub fn resolve(how: &WriteToken, state_dir: &Path) -> Result<Option<ControlToken>, TokenError> {
        match how {
            WriteToken::Open => Ok(None),
            WriteToken::Given(secret) => {
                check_shape(secret, TOKEN_ENV)?;
                Ok(Some(ControlToken {
                    secret: secret.clone(),
                    origin: format!("the {TOKEN_ENV} the control plane was started with"),
                }))
            }
            WriteToken::StateFile => {
                let path = state_dir.join(TOKEN_FILE);
                let secret = read_or_create(&path)?;
                Ok(Some(ControlToken {
                    secret,
                    origin: path.display().to_string(),
                }))
            }
        }
    }

    /// Whether an `Authorization` header value carries this token. The
    /// comparison takes the same time wherever the first difference is, so
    /// timing a wrong guess tells nothing about the right one.
    pub fn accepts(&self, authorization: Option<&HeaderValue>) -> bool {
        let Some(given) = authorization
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        else {
            return false;
        };
        constant_time_eq(given.trim().as_bytes(), self.secret.as_bytes())
    }

    /// Where the token lives, as the 401 says it.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The secret itself: the key bootstrap tokens are derived with
    /// (`ca.rs`, `mesh_api::identity::bootstrap_token`).
    pub(crate) fn secret(&self) -> &str {
        &self.secret
    }
}

/// Read the token file, or make it: 32 random bytes as 64 hex digits, in a
/// file created with mode 0600 (never a moment with wider permissions).
pub fn read_or_create(path: &Path) -> Result<String, TokenError> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            check_private(path)?;
            let secret = text.trim().to_string();
            check_shape(&secret, &path.display().to_string())?;
            Ok(secret)
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {
            let secret = random_hex(32)?;
            let io = |action, error| TokenError::Io {
                action,
                path: path.to_path_buf(),
                error,
            };
            let mut file = private_file(path).map_err(|e| io("create", e))?;
            file.write_all(format!("{secret}\n").as_bytes())
                .and_then(|()| file.sync_all())
                .map_err(|e| io("write", e))?;
            tracing::info!(path = %path.display(), "made the control plane's write token");
            Ok(secret)
        }
        Err(error) => Err(TokenError::Io {
            action: "read",
            path: path.to_path_buf(),
            error,
        }),
    }
}

/// A new file only its owner can read and write.
pub fn private_file(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}

/// Refuse a secret file that group or others can read.
pub fn check_private(path: &Path) -> Result<(), TokenError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .map_err(|error| TokenError::Io {
                action: "inspect",
                path: path.to_path_buf(),
                error,
            })?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(TokenError::TooOpen {
                path: path.to_path_buf(),
                mode: mode & 0o777,
            });
        }
    }
    Ok(())
}

fn check_shape(secret: &str, origin: &str) -> Result<(), TokenError> {
    let reason = if secret.len() < 32 {
        Some(format!(
            "{} characters, fewer than 32 can be guessed",
            secret.len()
        ))
    } else if !secret.bytes().all(|b| b.is_ascii_alphanumeric()) {
        Some("only letters and digits fit an HTTP header unchanged".to_string())
    } else {
        None
    };
    match reason {
        Some(reason) => Err(TokenError::Malformed {
            origin: origin.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

/// `n` bytes from the operating system's secure generator, as hex.
pub fn random_hex(n: usize) -> Result<String, TokenError> {
    let mut bytes = vec![0u8; n];
    tokio_rustls::rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|e| TokenError::Random(format!("{e:?}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether a request changes something. GET and HEAD read; OPTIONS asks
/// what is allowed; everything else writes.
fn is_write(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// The middleware on the API's routes (`api.rs`): a write without the
/// token is answered 401 and never reaches its handler.
pub async fn require_for_writes(
    State(shared): State<Arc<Shared>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(token) = &shared.token else {
        return next.run(request).await;
    };
    if !is_write(request.method()) || token.accepts(request.headers().get(header::AUTHORIZATION)) {
        return next.run(request).await;
    }
    // On the secure port a proxy's client certificate proves more than the
    // token would: who it is (`secure.rs`, whose guard holds it to that).
    if request.extensions().get::<crate::secure::Peer>().is_some()
        && request.uri().path().starts_with("/v1/proxies/")
    {
        return next.run(request).await;
    }
    let presented = request.headers().contains_key(header::AUTHORIZATION);
    tracing::warn!(
        method = %request.method(),
        path = request.uri().path(),
        presented,
        "write refused: no valid control plane token"
    );
    let what = if presented {
        "the token sent is not this control plane's"
    } else {
        "no token was sent"
    };
    let mut response = ApiFailure::new(
        StatusCode::UNAUTHORIZED,
        format!(
            "{} {} changes the mesh and needs the control plane's token as \
             `Authorization: Bearer <token>`, but {what}; the token is in {} \
             (meshctl reads it from there; proxies get it as {TOKEN_ENV})",
            request.method(),
            request.uri().path(),
            token.origin()
        ),
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_token_file_is_private_and_kept_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(TOKEN_FILE);
        let first = read_or_create(&path).unwrap();
        assert_eq!(first.len(), 64);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");
        }
        // A restart reads the same token: the running proxies keep theirs.
        assert_eq!(read_or_create(&path).unwrap(), first);
    }

    #[cfg(unix)]
    #[test]
    fn a_token_file_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(TOKEN_FILE);
        read_or_create(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let message = read_or_create(&path).unwrap_err().to_string();
        assert!(message.contains("chmod 600"), "{message}");
    }

    #[test]
    fn only_the_exact_bearer_token_is_accepted() {
        let token = ControlToken::resolve(&WriteToken::Given("a".repeat(40)), Path::new("/x"))
            .unwrap()
            .unwrap();
        let header = |v: &str| HeaderValue::from_str(v).unwrap();
        assert!(token.accepts(Some(&header(&format!("Bearer {}", "a".repeat(40))))));
        assert!(!token.accepts(None));
        assert!(!token.accepts(Some(&header(&format!("Bearer {}", "a".repeat(39))))));
        assert!(!token.accepts(Some(&header(&format!("Bearer {}b", "a".repeat(39))))));
        assert!(!token.accepts(Some(&header(&format!("Basic {}", "a".repeat(40))))));
    }

    #[test]
    fn a_short_given_token_is_refused_with_what_to_do() {
        let error = ControlToken::resolve(&WriteToken::Given("short".into()), Path::new("/x"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("32 or more"), "{error}");
    }
}

//! The Docker Engine the pod tests talk to: find it, ask its API version,
//! and bridge the gap when testcontainers speaks a newer API than it does.
//!
//! testcontainers 0.28 sends every request as Docker API 1.53 (bollard's
//! default) and never negotiates down. An engine rejects any version newer
//! than its own ("client version 1.53 is too new. Maximum supported API
//! version is 1.41" from Debian 12's Docker 20.10), so on such an engine no
//! container would start. The Docker CLI solves the same problem with
//! version negotiation or `DOCKER_API_VERSION`; here a small shim does it:
//! a Unix socket that forwards every request to the engine with the version
//! in its path lowered to the engine's own. The calls the tests make
//! (networks, create, start, stop, inspect, logs, remove) have kept their
//! shape across those versions, so the engine understands them.
//!
//! testcontainers finds the shim through `DOCKER_HOST`, which it reads from
//! the environment; the test binary therefore runs itself again as a child
//! process with `DOCKER_HOST` pointing at the shim (see tests/pods.rs).

use std::path::{Path, PathBuf};

use http_body_util::{BodyExt, Empty};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::{UnixListener, UnixStream};

/// The API version testcontainers (through bollard) asks for.
pub fn client_api_version() -> ApiVersion {
    let v = testcontainers::bollard::API_DEFAULT_VERSION;
    ApiVersion(v.major_version as u32, v.minor_version as u32)
}

/// A Docker API version, `1.41`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ApiVersion(pub u32, pub u32);

impl std::fmt::Display for ApiVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.0, self.1)
    }
}

impl std::str::FromStr for ApiVersion {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        let (major, minor) = s.split_once('.').ok_or(())?;
        Ok(ApiVersion(
            major.parse().map_err(|_| ())?,
            minor.parse().map_err(|_| ())?,
        ))
    }
}

/// Why the engine could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(
        "the container tests need a running Docker Engine, and none answers on {socket}: {source}. \
         Start it (`systemctl start docker`, or Docker Desktop) and run the tests again"
    )]
    Unreachable {
        socket: PathBuf,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("the Docker Engine on {socket} answered /version with something unexpected: {detail}")]
    BadVersion { socket: PathBuf, detail: String },
    #[error("could not listen on {path} for the Docker API shim: {source}")]
    Shim {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A Docker Engine reachable on a Unix socket.
#[derive(Clone, Debug)]
pub struct Engine {
    pub socket: PathBuf,
    /// The newest API version the engine speaks.
    pub api_version: ApiVersion,
    /// The engine's own version, for messages (`20.10.24+dfsg1`).
    pub version: String,
}

impl Engine {
    /// The engine `DOCKER_HOST` names, or the default socket. `None` when
    /// `DOCKER_HOST` is not a Unix socket (tcp://, ssh://): the shim cannot
    /// sit in front of those, so the tests use them as they are.
    pub fn socket_from_env() -> Option<PathBuf> {
        match std::env::var("DOCKER_HOST") {
            Ok(host) if !host.is_empty() => host.strip_prefix("unix://").map(PathBuf::from),
            _ => Some(PathBuf::from("/var/run/docker.sock")),
        }
    }

    /// Asks the engine on `socket` for its version.
    pub async fn connect(socket: &Path) -> Result<Engine, EngineError> {
        let unreachable = |e: Box<dyn std::error::Error + Send + Sync>| EngineError::Unreachable {
            socket: socket.to_path_buf(),
            source: e,
        };
        let stream = UnixStream::connect(socket)
            .await
            .map_err(|e| unreachable(e.into()))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| unreachable(e.into()))?;
        tokio::spawn(conn);
        let request = Request::get("/version")
            .header("host", "docker")
            .body(Empty::<Bytes>::new())
            .expect("a static request is valid");
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| unreachable(e.into()))?;
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| unreachable(e.into()))?
            .to_bytes();
        let bad = |detail: String| EngineError::BadVersion {
            socket: socket.to_path_buf(),
            detail,
        };
        let json: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| bad(format!("{e}: {}", String::from_utf8_lossy(&body))))?;
        let api_version = json["ApiVersion"]
            .as_str()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| bad(format!("no ApiVersion in {json}")))?;
        Ok(Engine {
            socket: socket.to_path_buf(),
            api_version,
            version: json["Version"].as_str().unwrap_or("unknown").to_string(),
        })
    }
}

/// Rewrites `/v1.53/containers/create` to `/v1.41/containers/create` when
/// the path asks for a version newer than `engine`; anything else is kept.
pub fn lower_version(uri: &Uri, engine: ApiVersion) -> Uri {
    let path = uri.path();
    let Some(rest) = path.strip_prefix("/v") else {
        return uri.clone();
    };
    let (version, tail) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match version.parse::<ApiVersion>() {
        Ok(asked) if asked > engine => {
            let query = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
            format!("/v{engine}{tail}{query}")
                .parse()
                .unwrap_or_else(|_| uri.clone())
        }
        _ => uri.clone(),
    }
}

/// A Unix socket that forwards Docker API requests to `engine` with the
/// version lowered. It serves until the runtime it was started on stops.
pub async fn serve_shim(engine: Engine, path: PathBuf) -> Result<(), EngineError> {
    // A socket file left by an earlier run with the same pid would block bind.
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).map_err(|source| EngineError::Shim {
        path: path.clone(),
        source,
    })?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let engine = engine.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| forward(req, engine.clone()));
                // Errors here are one connection's (the client went away);
                // the client sees them itself.
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(())
}

/// One request, forwarded on its own connection to the engine; bodies stream
/// both ways (container logs are a response that never ends on its own).
async fn forward(
    req: Request<Incoming>,
    engine: Engine,
) -> Result<Response<Incoming>, Box<dyn std::error::Error + Send + Sync>> {
    let (mut parts, body) = req.into_parts();
    parts.uri = lower_version(&parts.uri, engine.api_version);
    let stream = UnixStream::connect(&engine.socket).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender
        .send_request(Request::from_parts(parts, body))
        .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowers_only_newer_versions() {
        let engine = ApiVersion(1, 41);
        let cases = [
            (
                "/v1.53/containers/create?name=x",
                "/v1.41/containers/create?name=x",
            ),
            ("/v1.41/networks", "/v1.41/networks"),
            ("/v1.24/version", "/v1.24/version"),
            ("/_ping", "/_ping"),
            ("/volumes", "/volumes"),
        ];
        for (given, expected) in cases {
            let uri: Uri = given.parse().unwrap();
            assert_eq!(lower_version(&uri, engine).to_string(), expected, "{given}");
        }
    }

    #[test]
    fn orders_versions_numerically() {
        assert!(ApiVersion(1, 53) > ApiVersion(1, 41));
        assert!(ApiVersion(1, 9) < ApiVersion(1, 41));
        assert_eq!("1.41".parse(), Ok(ApiVersion(1, 41)));
        assert!("1".parse::<ApiVersion>().is_err());
    }
}

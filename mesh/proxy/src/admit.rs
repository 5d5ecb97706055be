//! The door: what a request head may carry into the mesh, checked once as
//! it arrives at any listener, before the proxy reads anything from it.
//!
//! hyper has already refused what cannot be parsed (a bad request line, two
//! different `Content-Length`s, `Transfer-Encoding` on HTTP/1.0 or not
//! ending in `chunked`: 400). Here, in this order:
//!
//! 1. headers from outside the mesh that only the mesh may write are
//!    removed or replaced (`trust.rs`); this never refuses;
//! 2. transfer codings: a request body must be framed by `chunked` alone.
//!    `Transfer-Encoding: gzip, chunked` would reach the app as a decoded
//!    chunked body that lost its `gzip` meaning, so any coding the proxy
//!    does not implement is 501, as RFC 9112 section 6.1 says and Envoy
//!    does;
//! 3. the request target's form, and the one authority (`authority.rs`);
//! 4. the path, normalized as `MESH_PATH_NORMALIZATION` says
//!    (`normalize.rs`): routing and the upstream see the normalized path.
//!    A target is `/path`, an absolute URL, `*` (OPTIONS only), or, for
//!    CONNECT, an authority; anything else is 400.
//!
//! A refusal is answered by the listener like any failed request (one
//! access-log line, the metrics), with `Connection: close` on HTTP/1: a
//! client whose head the proxy cannot trust may frame what follows wrongly
//! too. Envoy flags these `DPE` (downstream protocol error).

use std::net::SocketAddr;

use http::header::{CONNECTION, TRANSFER_ENCODING};
use http::{HeaderValue, Method, StatusCode, Version};

use crate::body::{Rsp, text_response};
use crate::config::{ConfigError, Strings};
use crate::log::Direction;
use crate::normalize::{PathNormalization, normalize_path};
use crate::trust::TrustSettings;

/// The door's settings: `MESH_PATH_NORMALIZATION`,
/// `MESH_XFF_NUM_TRUSTED_HOPS`, `MESH_TRUST_CLIENT_TRACE`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EdgeSettings {
    pub path_normalization: PathNormalization,
    pub trust: TrustSettings,
}

impl EdgeSettings {
    pub fn from_strings(strings: &impl Strings) -> Result<EdgeSettings, ConfigError> {
        let path_normalization = match strings.get("MESH_PATH_NORMALIZATION") {
            None => PathNormalization::default(),
            Some(text) => text.parse().map_err(|reason| ConfigError {
                var: "MESH_PATH_NORMALIZATION",
                value: text.clone(),
                reason,
            })?,
        };
        let xff_trusted_hops = match strings.get("MESH_XFF_NUM_TRUSTED_HOPS") {
            None => 0,
            Some(text) => text.trim().parse::<u32>().map_err(|_| ConfigError {
                var: "MESH_XFF_NUM_TRUSTED_HOPS",
                value: text.clone(),
                reason: "expected how many proxies in front of the mesh add trusted \
                         x-forwarded-for entries: 0 (none, the default) or 1 (a load balancer)"
                    .into(),
            })?,
        };
        let client_trace = match strings.get("MESH_TRUST_CLIENT_TRACE").as_deref() {
            None | Some("0" | "false" | "off") => false,
            Some("1" | "true" | "on") => true,
            Some(other) => {
                return Err(ConfigError {
                    var: "MESH_TRUST_CLIENT_TRACE",
                    value: other.to_string(),
                    reason: "expected 1 (a client outside the mesh may decide that its \
                             trace is recorded) or 0 (the proxy decides; the default)"
                        .into(),
                });
            }
        };
        Ok(EdgeSettings {
            path_normalization,
            trust: TrustSettings {
                xff_trusted_hops,
                client_trace,
            },
        })
    }
}

/// A request head refused at the door: 400, or 501 for a transfer coding.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Refusal {
    pub status: StatusCode,
    pub reason: String,
    /// Close the (HTTP/1) connection after the answer.
    pub close: bool,
}

impl Refusal {
    fn bad_request(reason: impl ToString) -> Refusal {
        Refusal {
            status: StatusCode::BAD_REQUEST,
            reason: reason.to_string(),
            close: false,
        }
    }

    /// The answer: the status, the reason as text, `Connection: close`.
    pub fn to_response(&self) -> Rsp {
        let mut rsp = text_response(self.status, format!("{}\n", self.reason));
        if self.close {
            rsp.headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        rsp
    }
}

/// Check and settle a request head arriving at `direction`'s listener from
/// `peer`, in place. On `Err`, the request must be answered with the
/// refusal and go nowhere (its headers are already sanitized).
pub fn admit<B>(
    settings: &EdgeSettings,
    direction: Direction,
    peer: SocketAddr,
    req: &mut http::Request<B>,
) -> Result<(), Refusal> {
    admit_from(settings, direction, peer, false, req)
}

/// [`admit`], for a request whose sender proved it is a sidecar of the
/// mesh (`proven`: a mutual-TLS peer with a mesh certificate, `tls.rs`):
/// its headers are the mesh's own, whatever it claims or does not.
pub fn admit_from<B>(
    settings: &EdgeSettings,
    direction: Direction,
    peer: SocketAddr,
    proven: bool,
    req: &mut http::Request<B>,
) -> Result<(), Refusal> {
    let sender = match proven {
        true => crate::trust::Sender::Mesh,
        false => crate::trust::sender(direction, req.headers()),
    };
    crate::trust::sanitize(sender, &settings.trust, peer, req.headers_mut());
    let close = req.version() < Version::HTTP_2;
    let result = check(settings, req);
    result.map_err(|mut refusal| {
        refusal.close = close;
        refusal
    })
}

fn check<B>(settings: &EdgeSettings, req: &mut http::Request<B>) -> Result<(), Refusal> {
    transfer_coding(req.headers())?;
    crate::authority::settle(req).map_err(Refusal::bad_request)?;
    path(settings.path_normalization, req)
}

/// `Transfer-Encoding`, if present, must be exactly `chunked` (hyper has
/// decoded it; the header is still there). Empty list elements are
/// allowed (RFC 9110 5.6.1), several lines are one list.
fn transfer_coding(headers: &http::HeaderMap) -> Result<(), Refusal> {
    let mut codings = headers
        .get_all(TRANSFER_ENCODING)
        .iter()
        .flat_map(|value| value.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|coding| !coding.is_empty());
    match (codings.next(), codings.next()) {
        (None, _) => Ok(()),
        (Some(coding), None) if coding.eq_ignore_ascii_case(b"chunked") => Ok(()),
        _ => {
            let written: Vec<&str> = headers
                .get_all(TRANSFER_ENCODING)
                .iter()
                .map(|v| v.to_str().unwrap_or("(not text)"))
                .collect();
            Err(Refusal {
                status: StatusCode::NOT_IMPLEMENTED,
                reason: format!(
                    "Transfer-Encoding {:?} is not implemented: the mesh frames request \
                     bodies with `chunked` alone (RFC 9112 section 6.1). Send the body \
                     uncompressed, or say `Content-Encoding: gzip` instead",
                    written.join(", ")
                ),
                close: false,
            })
        }
    }
}

/// The target's form, and its path normalized in place.
fn path<B>(mode: PathNormalization, req: &mut http::Request<B>) -> Result<(), Refusal> {
    if req.method() == Method::CONNECT {
        return Ok(());
    }
    let uri = req.uri();
    let path = uri.path();
    if path == "*" {
        return if req.method() == Method::OPTIONS {
            Ok(())
        } else {
            Err(Refusal::bad_request(format!(
                "the request target `*` is for OPTIONS only, not {}: send a path such as /",
                req.method()
            )))
        };
    }
    if !path.starts_with('/') {
        // `http::Uri` gives "" for a target with neither path nor authority.
        return Err(Refusal::bad_request(format!(
            "the request target {uri} is neither a path (/hello) nor an absolute URL \
             (http://service:8080/hello)"
        )));
    }
    let normal = normalize_path(path, mode).map_err(Refusal::bad_request)?;
    if normal == path {
        return Ok(());
    }
    let path_and_query = match uri.query() {
        Some(query) => format!("{normal}?{query}"),
        None => normal.into_owned(),
    };
    let mut rebuilt = http::Uri::builder();
    if let Some(scheme) = uri.scheme() {
        rebuilt = rebuilt.scheme(scheme.clone());
    }
    if let Some(authority) = uri.authority() {
        rebuilt = rebuilt.authority(authority.clone());
    }
    let normal = rebuilt
        .path_and_query(path_and_query)
        .build()
        .map_err(|e| Refusal::bad_request(format!("the normalized path is not a URI: {e}")))?;
    tracing::debug!(from = %req.uri(), to = %normal, "path normalized");
    *req.uri_mut() = normal;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn request(method: &str, target: &str, headers: &[(&str, &str)]) -> http::Request<()> {
        let mut builder = http::Request::builder().method(method).uri(target);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap()
    }

    fn admitted(
        direction: Direction,
        mut req: http::Request<()>,
    ) -> Result<http::Request<()>, Refusal> {
        let peer = "198.51.100.9:5000".parse().unwrap();
        admit(&EdgeSettings::default(), direction, peer, &mut req).map(|()| req)
    }

    #[test]
    fn transfer_codings_other_than_chunked_are_501() {
        for te in [
            "gzip, chunked",
            "chunked, chunked",
            "x-custom, chunked",
            "chunked;ext=1",
        ] {
            let req = request("POST", "/", &[("host", "hw"), ("transfer-encoding", te)]);
            let refusal = admitted(Direction::Inbound, req).unwrap_err();
            assert_eq!(refusal.status, StatusCode::NOT_IMPLEMENTED, "{te}");
            assert!(refusal.reason.contains("chunked` alone"), "{refusal}");
            assert!(refusal.close);
        }
        // Two lines are one list.
        let req = request(
            "POST",
            "/",
            &[
                ("host", "hw"),
                ("transfer-encoding", "gzip"),
                ("transfer-encoding", "chunked"),
            ],
        );
        assert_eq!(
            admitted(Direction::Inbound, req).unwrap_err().status,
            StatusCode::NOT_IMPLEMENTED
        );
        for te in ["chunked", "Chunked", " chunked ", ", chunked"] {
            let req = request("POST", "/", &[("host", "hw"), ("transfer-encoding", te)]);
            assert!(admitted(Direction::Inbound, req).is_ok(), "{te:?}");
        }
    }

    #[test]
    fn paths_are_normalized_for_routing_and_the_query_kept() {
        let req = request("GET", "/public/%2e%2e/admin?x=/../y", &[("host", "hw")]);
        let req = admitted(Direction::Outbound, req).unwrap();
        assert_eq!(req.uri(), "/admin?x=/../y");
        // Absolute form keeps its scheme and authority.
        let req = request("GET", "http://hw:8080/public\\..\\admin", &[]);
        let req = admitted(Direction::Outbound, req).unwrap();
        assert_eq!(req.uri(), "http://hw:8080/admin");
        assert_eq!(req.headers()["host"], "hw:8080");
    }

    #[test]
    fn targets_that_are_not_paths_are_400() {
        let req = request("GET", "*", &[("host", "hw")]);
        let refusal = admitted(Direction::Gateway, req).unwrap_err();
        assert_eq!(refusal.status, StatusCode::BAD_REQUEST);
        assert!(refusal.reason.contains("OPTIONS only"), "{refusal}");
        let req = request("OPTIONS", "*", &[("host", "hw")]);
        assert!(admitted(Direction::Gateway, req).is_ok());
        let req = request("GET", "/a%zz", &[("host", "hw")]);
        assert!(
            admitted(Direction::Gateway, req)
                .unwrap_err()
                .reason
                .contains("%25")
        );
    }

    #[test]
    fn authority_refusals_are_400_and_close_http1() {
        let req = request("GET", "/", &[("host", "a@b")]);
        let refusal = admitted(Direction::Gateway, req).unwrap_err();
        assert_eq!(refusal.status, StatusCode::BAD_REQUEST);
        assert!(refusal.close);
        let rsp = refusal.to_response();
        assert_eq!(rsp.headers()["connection"], "close");
        let mut h2 = request("GET", "http://hw/", &[("host", "other")]);
        *h2.version_mut() = Version::HTTP_2;
        let refusal = admitted(Direction::Gateway, h2).unwrap_err();
        assert!(!refusal.close, "HTTP/2 has no Connection header");
        assert!(!refusal.to_response().headers().contains_key("connection"));
    }

    #[test]
    fn a_refused_request_is_still_sanitized() {
        let req = request("GET", "/", &[("x-envoy-retry-on", "5xx")]);
        let mut req = req;
        let peer = "198.51.100.9:5000".parse().unwrap();
        assert!(admit(&EdgeSettings::default(), Direction::Gateway, peer, &mut req).is_err());
        assert!(!req.headers().contains_key("x-envoy-retry-on"));
    }

    #[test]
    fn settings_from_the_environment() {
        let none: HashMap<&str, &str> = HashMap::new();
        assert_eq!(
            EdgeSettings::from_strings(&none).unwrap(),
            EdgeSettings::default()
        );
        let set = HashMap::from([
            ("MESH_PATH_NORMALIZATION", "merge_slashes"),
            ("MESH_XFF_NUM_TRUSTED_HOPS", "1"),
            ("MESH_TRUST_CLIENT_TRACE", "1"),
        ]);
        let edge = EdgeSettings::from_strings(&set).unwrap();
        assert_eq!(edge.path_normalization, PathNormalization::MergeSlashes);
        assert_eq!(edge.trust.xff_trusted_hops, 1);
        assert!(edge.trust.client_trace);
        for (var, value, says) in [
            (
                "MESH_PATH_NORMALIZATION",
                "FULL",
                "DECODE_AND_MERGE_SLASHES",
            ),
            ("MESH_XFF_NUM_TRUSTED_HOPS", "-1", "load balancer"),
            ("MESH_TRUST_CLIENT_TRACE", "yes", "expected 1"),
        ] {
            let error = EdgeSettings::from_strings(&HashMap::from([(var, value)])).unwrap_err();
            assert_eq!(error.var, var);
            assert!(error.to_string().contains(says), "{error}");
        }
    }
}

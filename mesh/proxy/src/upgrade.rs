//! WebSocket: an HTTP request that turns into a byte tunnel.
//!
//! A WebSocket starts as an ordinary GET carrying `Connection: upgrade` and
//! `Upgrade: websocket`. Envoy (with Istio's `upgrade_configs`, websocket on
//! by default) treats it like any request until the upstream agrees: it is
//! routed by the same rules, balanced, retried and timed like a GET, and
//! the two hop-by-hop headers that every other request loses are put back
//! for the next hop. When the upstream answers `101 Switching Protocols`,
//! each side's connection is handed over from HTTP to a plain byte splice
//! ([`tunnel`]) and the proxy stops understanding what flows: no more
//! routing, so a rule changed while the tunnel is open does not cut it.
//! When either side closes, one access-log line reports the tunnel
//! (`tunnel` target `access`: duration, bytes each way).
//!
//! Only `websocket` is upgraded, as in Istio; any other `Upgrade` (such as
//! `h2c`) is dropped like any hop-by-hop header and the request goes on as
//! plain HTTP. `CONNECT` is refused in `outbound.rs`.

use std::time::Instant;

use http::{HeaderValue, StatusCode};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use crate::body::Rsp;
use crate::log::{ACCESS_TARGET, Direction};

/// The one upgrade protocol the mesh carries (Istio's default).
pub const WEBSOCKET: &str = "websocket";

/// A request that asked to become a WebSocket: the client's side of the
/// connection, once hyper hands it over after the 101.
#[derive(Debug)]
pub struct Upgrade {
    protocol: HeaderValue,
    downstream: OnUpgrade,
}

/// Whether `headers` ask for a WebSocket (`Connection` lists `upgrade`,
/// `Upgrade` names `websocket`), and if so its `Upgrade` value.
fn websocket_requested(headers: &http::HeaderMap) -> Option<HeaderValue> {
    let connection_upgrade = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    let upgrade = headers.get(http::header::UPGRADE)?;
    let websocket = upgrade
        .to_str()
        .ok()?
        .split(',')
        .any(|p| p.trim().eq_ignore_ascii_case(WEBSOCKET));
    (connection_upgrade && websocket).then(|| upgrade.clone())
}

impl Upgrade {
    /// Take the client's upgrade from a request that asks for a WebSocket
    /// (before its hop-by-hop headers are stripped); `None` for every other
    /// request.
    pub fn take<B>(req: &mut http::Request<B>) -> Option<Upgrade> {
        let protocol = websocket_requested(req.headers())?;
        Some(Upgrade {
            protocol,
            downstream: hyper::upgrade::on(req),
        })
    }

    /// Put the upgrade headers back on the request for the next hop (the
    /// hop-by-hop strip removed them).
    pub fn restore(&self, headers: &mut http::HeaderMap) {
        headers.insert(
            http::header::CONNECTION,
            HeaderValue::from_static("upgrade"),
        );
        headers.insert(http::header::UPGRADE, self.protocol.clone());
    }

    /// The upstream's answer, already through `finish` (hop-by-hop
    /// stripped). A 101 gets its upgrade headers back and the tunnel starts
    /// once the client has it; any other answer goes back as it is (the
    /// WebSocket was refused; the client's connection stays HTTP).
    pub fn respond(self, mut rsp: Rsp, tunnel: Tunnel) -> Rsp {
        if rsp.status() != StatusCode::SWITCHING_PROTOCOLS {
            return rsp;
        }
        let upstream = hyper::upgrade::on(&mut rsp);
        rsp.headers_mut().insert(
            http::header::CONNECTION,
            HeaderValue::from_static("upgrade"),
        );
        rsp.headers_mut()
            .insert(http::header::UPGRADE, self.protocol.clone());
        tokio::spawn(tunnel.run(self.downstream, upstream));
        rsp
    }
}

/// What the tunnel's access-log line names.
#[derive(Debug)]
pub struct Tunnel {
    pub direction: Direction,
    pub authority: String,
    pub path: String,
    pub request_id: String,
    pub upstream: String,
}

impl Tunnel {
    /// Splice the two upgraded connections until either side closes, then
    /// log the tunnel.
    async fn run(self, downstream: OnUpgrade, upstream: OnUpgrade) {
        let start = Instant::now();
        let (client, server) = match tokio::try_join!(downstream, upstream) {
            Ok(both) => both,
            Err(error) => {
                tracing::debug!(%error, authority = %self.authority, "upgrade did not complete");
                return;
            }
        };
        let (mut client, mut server) = (TokioIo::new(client), TokioIo::new(server));
        let (sent, received, error) =
            match tokio::io::copy_bidirectional(&mut client, &mut server).await {
                Ok((sent, received)) => (sent, received, None),
                Err(error) => (0, 0, Some(error)),
            };
        let duration = start.elapsed();
        tracing::info!(
            target: ACCESS_TARGET,
            direction = %self.direction,
            authority = self.authority.as_str(),
            path = self.path.as_str(),
            response_code = 101u16,
            tunnel_duration = duration.as_millis() as u64,
            bytes_sent = sent,
            bytes_received = received,
            upstream_host = self.upstream.as_str(),
            request_id = self.request_id.as_str(),
            "{} tunnel {}{} closed after {}ms: {} bytes up, {} bytes down upstream={}{}",
            self.direction,
            self.authority,
            self.path,
            duration.as_millis(),
            sent,
            received,
            self.upstream,
            match &error {
                Some(e) => format!(" ({e})"),
                None => String::new(),
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> http::HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn only_a_websocket_upgrade_is_carried() {
        let ws = headers(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "WebSocket"),
        ]);
        assert_eq!(websocket_requested(&ws).unwrap(), "WebSocket");
        // h2c and friends go on as plain HTTP.
        let h2c = headers(&[("connection", "upgrade"), ("upgrade", "h2c")]);
        assert!(websocket_requested(&h2c).is_none());
        // `Upgrade` without `Connection: upgrade` is not a request to switch.
        let bare = headers(&[("upgrade", "websocket")]);
        assert!(websocket_requested(&bare).is_none());
    }
}

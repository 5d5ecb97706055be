//! Gateway: what the mesh's edge proxy serves to the outside (Istio's
//! `networking.istio.io` Gateway, the part micromesh implements).
//!
//! A Gateway selects gateway proxies by label (`istio: ingressgateway`, which
//! micromesh's gateway announces) and lists servers: a port, a protocol and
//! the hosts served there. VirtualServices bind to it by name and provide
//! the routes.
//!
//! How ports map: Istio opens one Envoy listener per server port. micromesh's
//! gateway has a single HTTP listener (8080 locally, 80 in a cluster through
//! a port mapping), so every `HTTP` server, whatever its port number, is
//! served on that one listener; only the hosts of the servers matter. Other
//! protocols (HTTPS, TLS, TCP, GRPC, HTTP2) are refused as not implemented.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_yaml::Value;

use super::decode::{Decoder, Path, Shape, Unsupported};
use super::host::{check_host, is_dns_label};

/// A validated Gateway spec.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Gateway {
    /// Labels a gateway proxy must all have; empty selects every gateway proxy.
    pub selector: BTreeMap<String, String>,
    pub servers: Vec<Server>,
}

impl Gateway {
    pub fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        self.selector.iter().all(|(k, v)| labels.get(k) == Some(v))
    }

    /// Every host of every server, without Istio's `namespace/` prefix.
    pub fn hosts(&self) -> impl Iterator<Item = &str> {
        self.servers
            .iter()
            .flat_map(|s| s.hosts.iter())
            .map(|h| strip_namespace(h))
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Server {
    pub port: ServerPort,
    /// As written; may carry a `namespace/` prefix (`./*`, `*/example.com`).
    pub hosts: Vec<String>,
    pub name: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerPort {
    pub number: u16,
    pub name: String,
    /// Always `HTTP` (upper case) once validated.
    pub protocol: String,
}

/// Istio lets a server host say which namespace's VirtualServices may bind
/// (`ns/host`, `./host`, `*/host`); micromesh has one namespace.
pub fn strip_namespace(host: &str) -> &str {
    host.split_once('/').map_or(host, |(_, h)| h)
}

// === shapes ===

pub(crate) const SPEC: Shape = Shape {
    what: "a Gateway spec",
    fields: &["selector", "servers"],
    istio_only: &[],
};

pub(crate) const SERVER: Shape = Shape {
    what: "a server",
    fields: &["port", "hosts", "name"],
    istio_only: &[
        (
            "tls",
            Unsupported::NotImplemented(
                "terminates TLS (HTTPS) or passes it through; micromesh's gateway serves plain HTTP",
            ),
        ),
        (
            "bind",
            Unsupported::NotImplemented("binds the listener to one IP address or Unix socket"),
        ),
        (
            "defaultEndpoint",
            Unsupported::NotImplemented("forwards a sidecar's inbound traffic to a fixed address"),
        ),
    ],
};

pub(crate) const PORT: Shape = Shape {
    what: "a server port",
    fields: &["number", "name", "protocol"],
    istio_only: &[(
        "targetPort",
        Unsupported::NotImplemented("listens on another port than the one clients use"),
    )],
};

// === decode ===

pub(crate) fn decode(d: &mut Decoder, spec: &Value) -> Option<Gateway> {
    let path = Path::root("spec");
    let object = d.object(&path, spec, &SPEC)?;
    let selector = object
        .get("selector")
        .and_then(|(p, v)| d.string_map(&p, v))
        .unwrap_or_default();
    let servers = object
        .required(d, "servers", "[{port: {number: 80, name: http, protocol: HTTP}, hosts: ['*']}]")
        .and_then(|(p, v)| {
            let empty = matches!(v, Value::Sequence(s) if s.is_empty());
            let servers = d.list(&p, v, decode_server)?;
            if empty {
                d.error(&p, "a Gateway needs at least one server, like `{port: {number: 80, name: http, protocol: HTTP}, hosts: ['*']}`");
            }
            Some(servers)
        })
        .unwrap_or_default();
    Some(Gateway { selector, servers })
}

fn decode_server(d: &mut Decoder, path: &Path, value: &Value) -> Option<Server> {
    let object = d.object(path, value, &SERVER)?;
    let port = object
        .required(d, "port", "{number: 80, name: http, protocol: HTTP}")
        .and_then(|(p, v)| decode_port(d, &p, v));
    let hosts = object.required(d, "hosts", "['*']").and_then(|(p, v)| {
        let empty = matches!(v, Value::Sequence(s) if s.is_empty());
        let hosts = d.list(&p, v, |d, p, v| {
            let host = d.string(p, v)?;
            if let Some((namespace, _)) = host.split_once('/')
                && !(namespace == "*" || namespace == "." || is_dns_label(namespace)) {
                    d.error(p, format!("`{namespace}` in `{host}` is not a namespace; write `*/host`, `./host` or just the host"));
                    return None;
                }
            check_host(strip_namespace(&host), true)
                .map_err(|m| d.error(p, m))
                .ok()?;
            Some(host)
        })?;
        if empty {
            d.error(&p, "a server needs at least one host; `'*'` serves every host");
        }
        Some(hosts)
    });
    let name = object.get("name").and_then(|(p, v)| d.name(&p, v));
    Some(Server {
        port: port?,
        hosts: hosts?,
        name,
    })
}

fn decode_port(d: &mut Decoder, path: &Path, value: &Value) -> Option<ServerPort> {
    let object = d.object(path, value, &PORT)?;
    let number = object
        .required(d, "number", "80")
        .and_then(|(p, v)| d.integer(&p, v, 1, 65535));
    let name = object
        .required(d, "name", "http")
        .and_then(|(p, v)| d.name(&p, v));
    let protocol = object
        .required(d, "protocol", "HTTP")
        .and_then(|(p, v)| {
            let protocol = d.string(&p, v)?;
            // Istio parses protocols case-insensitively.
            match protocol.to_ascii_uppercase().as_str() {
                "HTTP" => Some("HTTP".to_string()),
                "HTTPS" | "TLS" | "TCP" | "GRPC" | "GRPC-WEB" | "HTTP2" | "MONGO" | "REDIS" | "MYSQL" => {
                    d.error(
                        &p,
                        format!("micromesh's gateway does not implement `{protocol}` servers (Istio does); it serves plain HTTP: write `protocol: HTTP`"),
                    );
                    None
                }
                _ => {
                    d.error(&p, format!("`{protocol}` is not a protocol; write `protocol: HTTP`"));
                    None
                }
            }
        });
    Some(ServerPort {
        number: number? as u16,
        name: name?,
        protocol: protocol?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_yaml(text: &str) -> (Option<Gateway>, Vec<(String, String)>) {
        let value: Value = serde_yaml::from_str(text).unwrap();
        let mut d = Decoder::default();
        let gw = decode(&mut d, &value);
        (
            gw,
            d.errors.into_iter().map(|e| (e.path, e.message)).collect(),
        )
    }

    #[test]
    fn an_http_gateway_decodes_and_selects_by_label() {
        let (gw, errors) = decode_yaml(
            "selector: {istio: ingressgateway}\nservers:\n- port: {number: 80, name: http, protocol: http}\n  hosts: ['*', './guestbook.example.com']\n",
        );
        assert_eq!(errors, vec![]);
        let gw = gw.unwrap();
        assert_eq!(gw.servers[0].port.protocol, "HTTP");
        assert_eq!(
            gw.hosts().collect::<Vec<_>>(),
            vec!["*", "guestbook.example.com"]
        );
        let ingress = [("istio".to_string(), "ingressgateway".to_string())].into();
        assert!(gw.selects(&ingress));
        assert!(!gw.selects(&BTreeMap::new()));
    }

    #[test]
    fn https_and_tls_are_refused_by_name() {
        let (_, errors) = decode_yaml(
            "servers:\n- port: {number: 443, name: https, protocol: HTTPS}\n  hosts: ['*']\n  tls: {mode: SIMPLE}\n",
        );
        let paths: Vec<&str> = errors.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            vec!["spec.servers[0].tls", "spec.servers[0].port.protocol"]
        );
        assert!(errors[1].1.contains("write `protocol: HTTP`"));
    }
}

//! PeerAuthentication: whether a workload's sidecar requires mutual TLS from
//! its callers (Istio's `security.istio.io` PeerAuthentication).
//!
//! A sidecar's inbound port accepts, by mode: `STRICT` only mutual TLS
//! (plaintext is refused), `PERMISSIVE` both (the sidecar peeks at the first
//! bytes: a TLS ClientHello or not), `DISABLE` only plaintext. `UNSET`
//! (or no `mtls` at all) inherits from the level above.
//!
//! Where a policy applies, as in Istio:
//! - in the root namespace, without a selector: the whole mesh. micromesh's
//!   root namespace is [`ROOT_NAMESPACE`], `istio-system`, Istio's default
//!   `meshConfig.rootNamespace`, so Istio's documented mesh-wide YAML works
//!   unchanged, locally and on a cluster;
//! - in a workload's namespace, without a selector: that namespace;
//! - with a `selector`: the workloads whose labels it matches, in its
//!   namespace; only such a policy may set `portLevelMtls` (Istio refuses
//!   port-level settings without a selector too).
//!
//! The most specific level wins (workload, then namespace, then mesh); when
//! two policies sit at one level the oldest wins, as istiod orders configs by
//! creation time. A port in `portLevelMtls` overrides the workload's mode for
//! that port. With no policy at all the mode is `PERMISSIVE`, Istio's
//! default. The resolution is [`effective_mtls`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_yaml::Value;

use super::decode::{Decoder, Path, Shape};

/// The namespace whose selector-less PeerAuthentication (and
/// AuthorizationPolicy) applies to the whole mesh: Istio's default root
/// namespace.
pub const ROOT_NAMESPACE: &str = "istio-system";

/// A validated PeerAuthentication spec.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerAuthentication {
    /// `selector.matchLabels`; `None` when the policy has no selector
    /// (namespace or mesh wide). An empty `matchLabels` also selects every
    /// workload of the namespace, but counts as a workload policy.
    pub selector: Option<BTreeMap<String, String>>,
    /// `mtls.mode`; [`MtlsMode::Unset`] when absent.
    pub mode: MtlsMode,
    /// `portLevelMtls`: the mode per inbound (workload) port.
    pub port_level_mtls: BTreeMap<u16, MtlsMode>,
}

impl PeerAuthentication {
    /// Whether a workload policy selects a workload with these labels.
    pub fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        self.selector
            .as_ref()
            .is_some_and(|s| s.iter().all(|(k, v)| labels.get(k) == Some(v)))
    }
}

/// Istio's `PeerAuthentication.MutualTLS.Mode`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MtlsMode {
    /// Inherit from the level above (PERMISSIVE at the top).
    #[default]
    Unset,
    /// Plaintext only.
    Disable,
    /// Mutual TLS and plaintext on the same port.
    Permissive,
    /// Mutual TLS only.
    Strict,
}

impl MtlsMode {
    pub fn as_str(self) -> &'static str {
        match self {
            MtlsMode::Unset => "UNSET",
            MtlsMode::Disable => "DISABLE",
            MtlsMode::Permissive => "PERMISSIVE",
            MtlsMode::Strict => "STRICT",
        }
    }

    /// `self`, or `parent` when `self` is UNSET.
    pub fn or(self, parent: MtlsMode) -> MtlsMode {
        if self == MtlsMode::Unset {
            parent
        } else {
            self
        }
    }
}

/// The mode a workload's inbound side runs with, resolved.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EffectiveMtls {
    /// For every port not in `ports`: never UNSET.
    pub mode: MtlsMode,
    /// Ports whose mode differs from `mode` (portLevelMtls).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ports: BTreeMap<u16, MtlsMode>,
}

impl EffectiveMtls {
    /// The mode of one inbound port.
    pub fn for_port(&self, port: u16) -> MtlsMode {
        self.ports.get(&port).copied().unwrap_or(self.mode)
    }
}

/// One applied policy, as [`effective_mtls`] reads it.
#[derive(Clone, Copy, Debug)]
pub struct PolicyRef<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub spec: &'a PeerAuthentication,
}

/// Istio's resolution of the inbound mTLS mode of a workload in `namespace`
/// with `labels`, from every applied policy, oldest first. Returns the
/// result and the policies that decided it (mesh, namespace, workload), for
/// `/config_dump` and analysis.
pub fn effective_mtls<'a>(
    policies: impl IntoIterator<Item = PolicyRef<'a>>,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> (EffectiveMtls, Vec<PolicyRef<'a>>) {
    let (mut mesh, mut ns, mut workload) = (None, None, None);
    for policy in policies {
        let slot = match (&policy.spec.selector, policy.namespace) {
            (None, n) if n == ROOT_NAMESPACE => &mut mesh,
            (None, n) if n == namespace => &mut ns,
            (Some(_), n) if n == namespace && policy.spec.selects(labels) => &mut workload,
            _ => continue,
        };
        // Oldest first: the first one at a level wins.
        slot.get_or_insert(policy);
    }
    let mut mode = MtlsMode::Permissive;
    for level in [mesh, ns, workload].iter().flatten() {
        mode = level.spec.mode.or(mode);
    }
    let ports = workload
        .map(|w| {
            w.spec
                .port_level_mtls
                .iter()
                .map(|(port, m)| (*port, m.or(mode)))
                .filter(|(_, m)| *m != mode)
                .collect()
        })
        .unwrap_or_default();
    let from = [mesh, ns, workload].into_iter().flatten().collect();
    (EffectiveMtls { mode, ports }, from)
}

// === shapes ===

pub(crate) const SPEC: Shape = Shape {
    what: "a PeerAuthentication spec",
    fields: &["selector", "mtls", "portLevelMtls"],
    istio_only: &[],
};

pub(crate) const SELECTOR: Shape = Shape {
    what: "a workload selector",
    fields: &["matchLabels"],
    istio_only: &[],
};

pub(crate) const MTLS: Shape = Shape {
    what: "mutual TLS settings",
    fields: &["mode"],
    istio_only: &[],
};

// === decode ===

pub(crate) fn decode(d: &mut Decoder, spec: &Value) -> Option<PeerAuthentication> {
    let path = Path::root("spec");
    // `spec: {}` (or no fields) is valid: mode UNSET, inherit everything.
    if spec.is_null() {
        return Some(PeerAuthentication::default());
    }
    let object = d.object(&path, spec, &SPEC)?;
    let selector = object
        .get("selector")
        .and_then(|(p, v)| decode_selector(d, &p, v));
    let mode = object
        .get("mtls")
        .and_then(|(p, v)| {
            let mtls = d.object(&p, v, &MTLS)?;
            let (p, v) = mtls.get("mode")?;
            decode_mode(d, &p, v)
        })
        .unwrap_or_default();
    let mut port_level_mtls = BTreeMap::new();
    if let Some((p, v)) = object.get("portLevelMtls") {
        if selector.is_none() {
            d.error(
                &p,
                "`portLevelMtls` needs a `selector`: port-level settings are per workload (Istio refuses them on a namespace or mesh-wide policy); add `selector: {matchLabels: {app: ...}}`",
            );
        }
        // YAML reads `8080:` as a number key; Istio's JSON form has "8080".
        match v {
            Value::Mapping(map) => {
                for (key, v) in map {
                    let key = match key {
                        Value::Number(n) => n.to_string(),
                        Value::String(s) => s.clone(),
                        other => format!("{other:?}"),
                    };
                    let p = p.field(&key);
                    let port = match key.parse::<u16>() {
                        Ok(port) if port > 0 => port,
                        _ => {
                            d.error(
                                &p,
                                format!("`{key}` is not a port number; the keys of `portLevelMtls` are the workload's ports, 1..=65535, like `8080`"),
                            );
                            continue;
                        }
                    };
                    let Some(mtls) = d.object(&p, v, &MTLS) else {
                        continue;
                    };
                    let mode = match mtls.get("mode") {
                        Some((p, v)) => decode_mode(d, &p, v),
                        None => Some(MtlsMode::Unset),
                    };
                    if let Some(mode) = mode {
                        port_level_mtls.insert(port, mode);
                    }
                }
            }
            other => d.error(
                &p,
                format!(
                    "expected a mapping of ports to settings, like `portLevelMtls: {{8080: {{mode: DISABLE}}}}`, found {}",
                    super::decode::describe(other)
                ),
            ),
        }
    }
    Some(PeerAuthentication {
        selector,
        mode,
        port_level_mtls,
    })
}

/// `selector: {matchLabels: {...}}`, shared with AuthorizationPolicy.
pub(crate) fn decode_selector(
    d: &mut Decoder,
    path: &Path,
    value: &Value,
) -> Option<BTreeMap<String, String>> {
    let selector = d.object(path, value, &SELECTOR)?;
    Some(
        selector
            .get("matchLabels")
            .and_then(|(p, v)| d.string_map(&p, v))
            .unwrap_or_default(),
    )
}

fn decode_mode(d: &mut Decoder, path: &Path, value: &Value) -> Option<MtlsMode> {
    let text = d.string(path, value)?;
    let mode = match text.as_str() {
        "UNSET" => MtlsMode::Unset,
        "DISABLE" => MtlsMode::Disable,
        "PERMISSIVE" => MtlsMode::Permissive,
        "STRICT" => MtlsMode::Strict,
        other => {
            let upper = other.to_ascii_uppercase();
            let hint = if ["UNSET", "DISABLE", "PERMISSIVE", "STRICT"].contains(&upper.as_str()) {
                format!("; write `{upper}`")
            } else {
                String::new()
            };
            d.error(
                path,
                format!(
                    "`{other}` is not an mTLS mode; use STRICT, PERMISSIVE, DISABLE or UNSET{hint}"
                ),
            );
            return None;
        }
    };
    Some(mode)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_yaml(text: &str) -> (Option<PeerAuthentication>, Vec<(String, String)>) {
        let value: Value = serde_yaml::from_str(text).unwrap();
        let mut d = Decoder::default();
        let pa = decode(&mut d, &value);
        (
            pa,
            d.errors.into_iter().map(|e| (e.path, e.message)).collect(),
        )
    }

    fn labels(app: &str) -> BTreeMap<String, String> {
        [("app".to_string(), app.to_string())].into()
    }

    #[test]
    fn modes_selector_and_ports_decode() {
        let (pa, errors) = decode_yaml(
            "selector: {matchLabels: {app: guestbook-service}}\nmtls: {mode: STRICT}\nportLevelMtls:\n  8080: {mode: DISABLE}\n  9090: {}\n",
        );
        assert_eq!(errors, vec![]);
        let pa = pa.unwrap();
        assert_eq!(pa.mode, MtlsMode::Strict);
        assert_eq!(pa.port_level_mtls[&8080], MtlsMode::Disable);
        assert_eq!(pa.port_level_mtls[&9090], MtlsMode::Unset);
        assert!(pa.selects(&labels("guestbook-service")));
        assert!(!pa.selects(&labels("guestbook-ui")));
    }

    #[test]
    fn mistakes_are_named() {
        let (_, errors) =
            decode_yaml("mtls: {mode: strict}\nportLevelMtls:\n  http: {mode: STRICT}\n");
        let paths: Vec<&str> = errors.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            vec![
                "spec.mtls.mode",
                "spec.portLevelMtls",
                "spec.portLevelMtls.http"
            ]
        );
        assert!(errors[0].1.contains("write `STRICT`"));
        assert!(errors[1].1.contains("needs a `selector`"));
        assert!(errors[2].1.contains("not a port number"));
    }

    #[test]
    fn the_most_specific_level_wins_and_unset_inherits() {
        let mesh = PeerAuthentication {
            mode: MtlsMode::Strict,
            ..Default::default()
        };
        let ns_unset = PeerAuthentication::default();
        let workload = PeerAuthentication {
            selector: Some(labels("guestbook-service")),
            mode: MtlsMode::Unset,
            port_level_mtls: [(8080, MtlsMode::Permissive), (9090, MtlsMode::Strict)].into(),
        };
        let policies = [
            PolicyRef {
                namespace: ROOT_NAMESPACE,
                name: "mesh",
                spec: &mesh,
            },
            PolicyRef {
                namespace: "default",
                name: "ns",
                spec: &ns_unset,
            },
            PolicyRef {
                namespace: "default",
                name: "gs",
                spec: &workload,
            },
        ];
        let (service, from) = effective_mtls(policies, "default", &labels("guestbook-service"));
        assert_eq!(
            service.mode,
            MtlsMode::Strict,
            "UNSET twice: the mesh's STRICT"
        );
        assert_eq!(service.for_port(8080), MtlsMode::Permissive);
        assert_eq!(service.for_port(9090), MtlsMode::Strict);
        assert_eq!(
            service.ports.len(),
            1,
            "a port equal to the mode is not listed"
        );
        assert_eq!(from.len(), 3);

        let (ui, _) = effective_mtls(policies, "default", &labels("guestbook-ui"));
        assert_eq!(
            ui,
            EffectiveMtls {
                mode: MtlsMode::Strict,
                ports: BTreeMap::new()
            }
        );

        let (nothing, from) = effective_mtls([], "default", &labels("x"));
        assert_eq!(nothing.mode, MtlsMode::Permissive, "Istio's default");
        assert!(from.is_empty());

        // A policy in another (non-root) namespace applies to nothing here.
        let other = [PolicyRef {
            namespace: "other",
            name: "x",
            spec: &mesh,
        }];
        assert_eq!(
            effective_mtls(other, "default", &labels("x")).0.mode,
            MtlsMode::Permissive
        );
    }

    #[test]
    fn the_oldest_policy_of_a_level_wins() {
        let disable = PeerAuthentication {
            mode: MtlsMode::Disable,
            ..Default::default()
        };
        let strict = PeerAuthentication {
            mode: MtlsMode::Strict,
            ..Default::default()
        };
        let policies = [
            PolicyRef {
                namespace: "default",
                name: "older",
                spec: &disable,
            },
            PolicyRef {
                namespace: "default",
                name: "newer",
                spec: &strict,
            },
        ];
        let (mtls, from) = effective_mtls(policies, "default", &labels("x"));
        assert_eq!(mtls.mode, MtlsMode::Disable);
        assert_eq!(from[0].name, "older");
    }
}

//! Which `apiVersion`/`kind` pairs micromesh accepts, and what it says about
//! the others.
//!
//! Kubernetes finds a resource's schema by group, version and kind; Istio's
//! networking group `networking.istio.io` still serves `v1alpha3` and
//! `v1beta1` next to `v1`, with the same schema, so all three are accepted
//! and the apiVersion is stored as written. Kinds from the talk's era that
//! Istio has since removed (Mixer's `config.istio.io`, `rbac.istio.io`) get an
//! explanation of what replaced them; Istio kinds micromesh does not
//! implement yet are refused by name.
//!
//! The security kinds live in `security.istio.io`, which Istio serves at
//! `v1` and `v1beta1` with one schema; they are accepted at both.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The networking group and the versions Istio serves for its kinds.
pub const NETWORKING_GROUP: &str = "networking.istio.io";
pub const NETWORKING_VERSIONS: &[&str] = &["v1", "v1beta1", "v1alpha3"];

/// The security group (PeerAuthentication, AuthorizationPolicy) and the
/// versions Istio serves for it.
pub const SECURITY_GROUP: &str = "security.istio.io";
pub const SECURITY_VERSIONS: &[&str] = &["v1", "v1beta1"];

/// The resource kinds micromesh implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Kind {
    VirtualService,
    DestinationRule,
    Gateway,
    PeerAuthentication,
    AuthorizationPolicy,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::VirtualService,
        Kind::DestinationRule,
        Kind::Gateway,
        Kind::PeerAuthentication,
        Kind::AuthorizationPolicy,
    ];

    /// The API group: `networking.istio.io` or `security.istio.io`.
    pub fn group(self) -> &'static str {
        match self {
            Kind::VirtualService | Kind::DestinationRule | Kind::Gateway => NETWORKING_GROUP,
            Kind::PeerAuthentication | Kind::AuthorizationPolicy => SECURITY_GROUP,
        }
    }

    /// The versions Istio serves for this kind, `v1` first.
    pub fn versions(self) -> &'static [&'static str] {
        match self.group() {
            SECURITY_GROUP => SECURITY_VERSIONS,
            _ => NETWORKING_VERSIONS,
        }
    }

    /// `networking.istio.io/v1` or `security.istio.io/v1`.
    pub fn api_version(self) -> String {
        format!("{}/v1", self.group())
    }

    /// The kind as YAML writes it: `VirtualService`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::VirtualService => "VirtualService",
            Kind::DestinationRule => "DestinationRule",
            Kind::Gateway => "Gateway",
            Kind::PeerAuthentication => "PeerAuthentication",
            Kind::AuthorizationPolicy => "AuthorizationPolicy",
        }
    }

    /// kubectl's plural resource name: `virtualservices`.
    pub fn plural(self) -> &'static str {
        match self {
            Kind::VirtualService => "virtualservices",
            Kind::DestinationRule => "destinationrules",
            Kind::Gateway => "gateways",
            Kind::PeerAuthentication => "peerauthentications",
            Kind::AuthorizationPolicy => "authorizationpolicies",
        }
    }

    /// Istio's short name: `vs`, `dr`, `gw`, `pa`, `ap`.
    pub fn short_name(self) -> &'static str {
        match self {
            Kind::VirtualService => "vs",
            Kind::DestinationRule => "dr",
            Kind::Gateway => "gw",
            Kind::PeerAuthentication => "pa",
            Kind::AuthorizationPolicy => "ap",
        }
    }

    /// How kubectl names it in output: `virtualservice.networking.istio.io`.
    pub fn qualified_name(self) -> String {
        format!("{}.{}", self.as_str().to_ascii_lowercase(), self.group())
    }

    /// The kind from what a user types on the command line, as kubectl
    /// accepts it: `VirtualService`, `virtualservice`, `virtualservices`,
    /// `vs`, `virtualservice.networking.istio.io`..., case-insensitive.
    ///
    /// ```
    /// use mesh_api::config::Kind;
    /// assert_eq!(Kind::parse("vs"), Ok(Kind::VirtualService));
    /// assert_eq!(Kind::parse("DestinationRules"), Ok(Kind::DestinationRule));
    /// assert_eq!(Kind::parse("gateway.networking.istio.io"), Ok(Kind::Gateway));
    /// assert_eq!(Kind::parse("ap"), Ok(Kind::AuthorizationPolicy));
    /// assert!(Kind::parse("pods").is_err());
    /// ```
    pub fn parse(text: &str) -> Result<Kind, UnknownKind> {
        let lower = text.trim().to_ascii_lowercase();
        Kind::ALL
            .into_iter()
            .find(|kind| {
                let base = lower
                    .strip_suffix(&format!(".{}", kind.group()))
                    .unwrap_or(&lower);
                let singular = kind.as_str().to_ascii_lowercase();
                base == singular || base == kind.plural() || base == kind.short_name()
            })
            .ok_or_else(|| UnknownKind(text.to_string()))
    }

    /// The kind exactly as YAML must spell it (kinds are case-sensitive).
    pub(crate) fn from_yaml(kind: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == kind)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Kind {
    type Err = UnknownKind;

    fn from_str(s: &str) -> Result<Kind, UnknownKind> {
        Kind::parse(s)
    }
}

/// A kind name meshctl could not map to a micromesh kind.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{0}` is not a kind micromesh serves; use virtualservices (vs), destinationrules (dr), gateways (gw), peerauthentications (pa) or authorizationpolicies (ap)"
)]
pub struct UnknownKind(pub String);

// === classify ===

/// Istio networking kinds micromesh does not implement yet, and what they do.
const NETWORKING_NOT_YET: &[(&str, &str)] = &[
    (
        "ServiceEntry",
        "adds hosts outside the mesh (like `*.debian.org`) to Istio's registry so sidecars may call them",
    ),
    (
        "Sidecar",
        "limits which services a sidecar sees and configures its listeners",
    ),
    (
        "EnvoyFilter",
        "patches the Envoy configuration istiod generates",
    ),
    (
        "WorkloadEntry",
        "registers a VM or another non-Kubernetes workload",
    ),
    ("WorkloadGroup", "templates WorkloadEntries for VMs"),
    ("ProxyConfig", "tunes the Envoy proxies of some workloads"),
];

/// Istio kinds outside networking, and what they do.
const OTHER_ISTIO: &[(&str, &str, &str)] = &[
    (
        "security.istio.io",
        "RequestAuthentication",
        "validates end-user JWTs; AuthorizationPolicy's `requestPrincipals` needs it",
    ),
    (
        "telemetry.istio.io",
        "Telemetry",
        "configures metrics, access logs and tracing per workload",
    ),
    (
        "extensions.istio.io",
        "WasmPlugin",
        "loads WebAssembly filters into the proxies",
    ),
];

/// Check `apiVersion` and `kind`. The error is `(field, message)`.
pub(crate) fn classify(api_version: &str, kind: &str) -> Result<Kind, (&'static str, String)> {
    let (group, version) = match api_version.rsplit_once('/') {
        Some((group, version)) => (group, version),
        None => ("", api_version),
    };

    match group {
        NETWORKING_GROUP => {
            if let Some(k) = Kind::from_yaml(kind).filter(|k| k.group() == NETWORKING_GROUP) {
                if NETWORKING_VERSIONS.contains(&version) {
                    return Ok(k);
                }
                return Err((
                    "apiVersion",
                    format!(
                        "`{api_version}` is not a version Istio serves for {kind}; write `apiVersion: {NETWORKING_GROUP}/v1` (v1beta1 and v1alpha3 are accepted too)"
                    ),
                ));
            }
            if let Some((name, what)) = NETWORKING_NOT_YET.iter().find(|(n, _)| *n == kind) {
                return Err((
                    "kind",
                    format!(
                        "{name} is not implemented by micromesh yet (Istio's {name} {what}); remove this document"
                    ),
                ));
            }
            Err(("kind", unknown_kind_in(kind, NETWORKING_GROUP)))
        }
        SECURITY_GROUP if Kind::from_yaml(kind).is_some_and(|k| k.group() == SECURITY_GROUP) => {
            if SECURITY_VERSIONS.contains(&version) {
                // `from_yaml` found it in the guard.
                return Kind::from_yaml(kind).ok_or(("kind", String::new()));
            }
            Err((
                "apiVersion",
                format!(
                    "`{api_version}` is not a version Istio serves for {kind}; write `apiVersion: {SECURITY_GROUP}/v1` (v1beta1 is accepted too)"
                ),
            ))
        }
        "config.istio.io" => Err(("kind", mixer_message(kind))),
        "rbac.istio.io" => Err((
            "kind",
            format!(
                "{kind} (rbac.istio.io) was Istio's first authorization API: deprecated in Istio 1.4 and removed in Istio 1.6. Write a security.istio.io/v1 AuthorizationPolicy instead: `rules[].from[].source.principals` names who may call, `rules[].to[].operation.methods` and `paths` what they may do"
            ),
        )),
        "authentication.istio.io" => Err((
            "kind",
            format!(
                "{kind} (authentication.istio.io) was removed in Istio 1.6; current Istio uses security.istio.io/v1 PeerAuthentication (mutual TLS) and RequestAuthentication (JWT), both security.istio.io/v1: PeerAuthentication is what micromesh implements (RequestAuthentication is not implemented yet)"
            ),
        )),
        _ => {
            if let Some((g, name, what)) = OTHER_ISTIO
                .iter()
                .find(|(g, n, _)| *n == kind && (*g == group))
            {
                return Err((
                    "kind",
                    format!(
                        "{name} ({g}) is not implemented by micromesh yet (Istio's {name} {what}); remove this document"
                    ),
                ));
            }
            if group.ends_with("istio.io") {
                return Err((
                    "apiVersion",
                    format!(
                        "`{api_version}` {kind} is not an Istio API micromesh knows; micromesh takes {NETWORKING_GROUP}/v1 VirtualService, DestinationRule and Gateway, and {SECURITY_GROUP}/v1 PeerAuthentication and AuthorizationPolicy"
                    ),
                ));
            }
            if group.is_empty() && version.is_empty() {
                return Err((
                    "apiVersion",
                    format!("`apiVersion` is empty; write `apiVersion: {NETWORKING_GROUP}/v1`"),
                ));
            }
            Err((
                "apiVersion",
                format!(
                    "`{api_version}` {kind} is not an Istio resource; micromesh's config API takes Istio's VirtualService, DestinationRule and Gateway ({NETWORKING_GROUP}/v1), PeerAuthentication and AuthorizationPolicy ({SECURITY_GROUP}/v1). Kubernetes objects are applied with kubectl in the Kubernetes labs"
                ),
            ))
        }
    }
}

fn unknown_kind_in(kind: &str, group: &str) -> String {
    if let Some(k) = Kind::ALL
        .into_iter()
        .find(|k| k.as_str().eq_ignore_ascii_case(kind))
    {
        if k.group() != group {
            return format!(
                "{} is in {}, not {group}: write `apiVersion: {}`",
                k.as_str(),
                k.group(),
                k.api_version()
            );
        }
        return format!("kinds are case-sensitive: write `kind: {}`", k.as_str());
    }
    format!(
        "`{kind}` is not a kind of {group}; micromesh implements VirtualService, DestinationRule and Gateway ({NETWORKING_GROUP}), PeerAuthentication and AuthorizationPolicy ({SECURITY_GROUP})"
    )
}

/// Mixer's adapters, templates and rules, and what to write now.
fn mixer_message(kind: &str) -> String {
    let replacement = match kind {
        "denier" | "listchecker" | "listentry" | "checknothing" | "rule" | "handler"
        | "instance" | "authorization" => {
            "write a security.istio.io/v1 AuthorizationPolicy instead (`action: DENY` with a rule that matches the callers does what a denier rule did)"
        }
        "memquota" | "redisquota" | "quota" | "QuotaSpec" | "QuotaSpecBinding" => {
            "rate limits are now Envoy's local or global rate limit filters; micromesh does not implement them"
        }
        "metric" | "prometheus" | "logentry" | "stdio" | "tracespan" | "attributemanifest" => {
            "telemetry now comes from the proxies themselves (micromesh's sidecars export Istio's metric names on /stats/prometheus)"
        }
        _ => "its job moved into the proxies; see Istio's AuthorizationPolicy and Telemetry APIs",
    };
    format!(
        "`{kind}` (config.istio.io) is a Mixer resource. Mixer was deprecated in Istio 1.5 and removed in Istio 1.8; {replacement}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_three_networking_versions_are_served() {
        for version in ["v1", "v1beta1", "v1alpha3"] {
            assert_eq!(
                classify(&format!("networking.istio.io/{version}"), "VirtualService"),
                Ok(Kind::VirtualService)
            );
        }
        let (field, message) = classify("networking.istio.io/v2", "Gateway").unwrap_err();
        assert_eq!(field, "apiVersion");
        assert!(message.contains("networking.istio.io/v1"), "{message}");
    }

    #[test]
    fn removed_and_missing_kinds_are_explained() {
        let (_, mixer) = classify("config.istio.io/v1alpha2", "denier").unwrap_err();
        assert!(mixer.contains("removed in Istio 1.8") && mixer.contains("AuthorizationPolicy"));
        let (_, rbac) = classify("rbac.istio.io/v1alpha1", "RbacConfig").unwrap_err();
        assert!(rbac.contains("removed in Istio 1.6") && rbac.contains("AuthorizationPolicy"));
        let (_, se) = classify("networking.istio.io/v1alpha3", "ServiceEntry").unwrap_err();
        assert!(se.starts_with("ServiceEntry is not implemented by micromesh yet"));
        assert_eq!(
            classify("security.istio.io/v1beta1", "AuthorizationPolicy"),
            Ok(Kind::AuthorizationPolicy)
        );
        assert_eq!(
            classify("security.istio.io/v1", "PeerAuthentication"),
            Ok(Kind::PeerAuthentication)
        );
        let (field, old) =
            classify("security.istio.io/v1alpha1", "PeerAuthentication").unwrap_err();
        assert_eq!(field, "apiVersion");
        assert!(old.contains("security.istio.io/v1"), "{old}");
        let (_, ra) = classify("security.istio.io/v1", "RequestAuthentication").unwrap_err();
        assert!(ra.contains("not implemented by micromesh yet"), "{ra}");
        let (_, wrong_group) =
            classify("networking.istio.io/v1", "AuthorizationPolicy").unwrap_err();
        assert!(
            wrong_group.contains("write `apiVersion: security.istio.io/v1`"),
            "{wrong_group}"
        );
        let (_, case) = classify("networking.istio.io/v1", "virtualservice").unwrap_err();
        assert!(case.contains("write `kind: VirtualService`"));
        let (field, k8s) = classify("apps/v1", "Deployment").unwrap_err();
        assert_eq!(field, "apiVersion");
        assert!(k8s.contains("not an Istio resource"));
    }

    #[test]
    fn command_line_kinds_normalise() {
        for text in [
            "vs",
            "VS",
            "virtualservice",
            "VirtualServices",
            "virtualservice.networking.istio.io",
        ] {
            assert_eq!(Kind::parse(text), Ok(Kind::VirtualService), "{text}");
        }
        assert_eq!("dr".parse::<Kind>(), Ok(Kind::DestinationRule));
        assert_eq!(Kind::parse("gw"), Ok(Kind::Gateway));
        assert_eq!(Kind::parse("pa"), Ok(Kind::PeerAuthentication));
        assert_eq!(
            Kind::parse("authorizationpolicies.security.istio.io"),
            Ok(Kind::AuthorizationPolicy)
        );
        assert!(Kind::parse("authorizationpolicies.networking.istio.io").is_err());
        assert_eq!(
            Kind::AuthorizationPolicy.qualified_name(),
            "authorizationpolicy.security.istio.io"
        );
        assert_eq!(
            Kind::VirtualService.qualified_name(),
            "virtualservice.networking.istio.io"
        );
        let err = Kind::parse("svc").unwrap_err();
        assert!(err.to_string().contains("virtualservices (vs)"));
    }
}

//! Workload identities: who a sidecar is, as a type.
//!
//! Istio names every workload with a SPIFFE ID, the only name in its
//! certificate (a URI subject alternative name):
//!
//! ```text
//! spiffe://cluster.local/ns/guestbook/sa/guestbook-ui
//!          \___________/    \_______/    \__________/
//!          trust domain     namespace    service account
//! ```
//!
//! On a cluster the service account is the pod's; locally (`meshctl up`) it
//! is the service's name. AuthorizationPolicy writes the same identity as a
//! *principal*, without the scheme: `cluster.local/ns/guestbook/sa/guestbook-ui`.
//!
//! Like ztunnel (Istio's Rust data plane), micromesh parses an identity once,
//! where it enters (a certificate, a CSR, a policy), and passes this type
//! around, never the string: two spellings of one identity cannot disagree,
//! and a malformed one is refused at the door with the reason.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Istio's default trust domain (`meshConfig.trustDomain`).
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

/// The URI scheme of a SPIFFE ID.
pub const SPIFFE_SCHEME: &str = "spiffe://";

/// One workload identity: `spiffe://<trust_domain>/ns/<namespace>/sa/<service_account>`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Identity {
    pub trust_domain: String,
    pub namespace: String,
    pub service_account: String,
}

/// Why a string is not an identity.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "{text:?} is not a workload identity: {reason}; write \
     spiffe://cluster.local/ns/NAMESPACE/sa/SERVICE_ACCOUNT"
)]
pub struct IdentityError {
    pub text: String,
    pub reason: String,
}

impl Identity {
    /// An identity in Istio's default trust domain.
    pub fn new(namespace: &str, service_account: &str) -> Identity {
        Identity {
            trust_domain: DEFAULT_TRUST_DOMAIN.to_string(),
            namespace: namespace.to_string(),
            service_account: service_account.to_string(),
        }
    }

    /// The SPIFFE ID, the certificate's URI SAN (same as `Display`).
    pub fn spiffe_id(&self) -> String {
        self.to_string()
    }

    /// Istio's principal form, as AuthorizationPolicy's `principals` writes
    /// it and `x-forwarded-client-cert` carries it: the SPIFFE ID without
    /// `spiffe://`.
    pub fn principal(&self) -> String {
        format!(
            "{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }

    /// Parse the principal form (`cluster.local/ns/NS/sa/SA`).
    pub fn from_principal(text: &str) -> Result<Identity, IdentityError> {
        parse_path(text, text)
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SPIFFE_SCHEME}{}", self.principal())
    }
}

impl FromStr for Identity {
    type Err = IdentityError;

    /// Parse a SPIFFE ID. The scheme is case-insensitive (RFC 3986); the
    /// rest is compared exactly, as Istio does.
    fn from_str(text: &str) -> Result<Identity, IdentityError> {
        let rest = text
            .get(..SPIFFE_SCHEME.len())
            .filter(|scheme| scheme.eq_ignore_ascii_case(SPIFFE_SCHEME))
            .map(|_| &text[SPIFFE_SCHEME.len()..])
            .ok_or_else(|| error(text, "it does not start with spiffe://"))?;
        parse_path(text, rest)
    }
}

/// `TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT`, every part non-empty.
fn parse_path(text: &str, rest: &str) -> Result<Identity, IdentityError> {
    let parts: Vec<&str> = rest.split('/').collect();
    let [trust_domain, ns, namespace, sa, service_account] = parts[..] else {
        return Err(error(
            text,
            "it needs exactly TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT",
        ));
    };
    if ns != "ns" || sa != "sa" {
        return Err(error(
            text,
            "the path must read /ns/NAMESPACE/sa/SERVICE_ACCOUNT",
        ));
    }
    for (what, part) in [
        ("trust domain", trust_domain),
        ("namespace", namespace),
        ("service account", service_account),
    ] {
        if part.is_empty() {
            return Err(error(text, &format!("the {what} is empty")));
        }
        // SPIFFE allows letters, digits, `.`, `-` and `_` in path segments
        // (and lower-case trust domains); anything else (a space, `%`, `?`,
        // `#`) would make two spellings of one name.
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
        if !part.chars().all(allowed) {
            return Err(error(
                text,
                &format!("the {what} {part:?} has characters other than letters, digits, . - _"),
            ));
        }
    }
    if trust_domain.chars().any(|c| c.is_ascii_uppercase()) {
        return Err(error(text, "the trust domain must be lower case"));
    }
    Ok(Identity {
        trust_domain: trust_domain.to_string(),
        namespace: namespace.to_string(),
        service_account: service_account.to_string(),
    })
}

fn error(text: &str, reason: &str) -> IdentityError {
    IdentityError {
        text: text.to_string(),
        reason: reason.to_string(),
    }
}

// === the certificate API (POST /v1/certificates) ===

/// What a proxy sends to get a certificate: a PKCS#10 request (PEM) for the
/// key it made and keeps, and the identity it claims. The control plane
/// signs only if the caller's credential proves that identity (`Authorization:
/// Bearer`, see [`bootstrap_token`] and mesh/control/src/ca.rs).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CertificateRequest {
    pub identity: Identity,
    /// `-----BEGIN CERTIFICATE REQUEST-----...`
    pub csr: String,
}

/// The control plane's answer: the chain (leaf first, PEM) and the roots a
/// peer's chain must end at.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CertificateResponse {
    pub cert_chain: Vec<String>,
    pub trust_bundle: Vec<String>,
    /// The leaf's validity, milliseconds since 1970 (for rotation and
    /// `meshctl identity`).
    pub not_before_ms: u64,
    pub not_after_ms: u64,
}

/// What a proxy's admin port tells about its certificate (`GET /certs`,
/// read by `meshctl identity`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadCerts {
    /// `None`: this proxy has no certificate (no CA, or not yet).
    pub identity: Option<Identity>,
    /// Why there is none, when there is none.
    pub reason: Option<String>,
    pub cert_chain: Vec<String>,
    pub trust_bundle: Vec<String>,
    pub not_before_ms: u64,
    pub not_after_ms: u64,
    /// When the proxy will ask for the next one.
    pub renew_at_ms: u64,
}

/// The credential a process started by `meshctl up` proves its identity
/// with, before it has a certificate: HMAC-SHA256 of the SPIFFE ID, keyed
/// with the control plane's write token, as hex.
///
/// Why derived and not a random one-time token: it is bound to one identity
/// (the token of `reviews` is worth nothing for `ratings`), the control plane
/// keeps no table of tokens that a restart would lose, and a proxy can renew
/// (and restart) with it. Only who holds the write token, the user who runs
/// the mesh, can mint one; meshctl hands each proxy its own in
/// `MESH_IDENTITY_TOKEN`. On a cluster the pod's service-account token
/// plays this part instead (TokenReview).
pub fn bootstrap_token(write_token: &str, identity: &Identity) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, write_token.as_bytes());
    let tag = ring::hmac::sign(&key, identity.spiffe_id().as_bytes());
    tag.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `presented` is the bootstrap token of `identity`; the
/// comparison takes the same time wherever the first difference is.
pub fn verify_bootstrap_token(write_token: &str, identity: &Identity, presented: &str) -> bool {
    let Some(tag) = (0..presented.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(presented.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()
    else {
        return false;
    };
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, write_token.as_bytes());
    ring::hmac::verify(&key, identity.spiffe_id().as_bytes(), &tag).is_ok()
}

// === serde: the SPIFFE ID string ===

impl Serialize for Identity {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Identity {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spiffe_id_round_trips_through_the_type() {
        let text = "spiffe://cluster.local/ns/guestbook/sa/guestbook-ui";
        let identity: Identity = text.parse().unwrap();
        assert_eq!(identity, Identity::new("guestbook", "guestbook-ui"));
        assert_eq!(identity.to_string(), text);
        assert_eq!(
            identity.principal(),
            "cluster.local/ns/guestbook/sa/guestbook-ui"
        );
        assert_eq!(
            Identity::from_principal(&identity.principal()).unwrap(),
            identity
        );
        let json = serde_json::to_string(&identity).unwrap();
        assert_eq!(json, format!("\"{text}\""));
        assert_eq!(serde_json::from_str::<Identity>(&json).unwrap(), identity);
    }

    #[test]
    fn a_bootstrap_token_proves_one_identity_only() {
        let reviews = Identity::new("default", "reviews");
        let ratings = Identity::new("default", "ratings");
        let token = bootstrap_token("write-token-1", &reviews);
        assert!(verify_bootstrap_token("write-token-1", &reviews, &token));
        assert!(!verify_bootstrap_token("write-token-1", &ratings, &token));
        assert!(!verify_bootstrap_token("write-token-2", &reviews, &token));
        assert!(!verify_bootstrap_token("write-token-1", &reviews, "zz"));
        assert!(!verify_bootstrap_token("write-token-1", &reviews, ""));
    }

    #[test]
    fn the_scheme_is_case_insensitive_and_nothing_else_is() {
        let upper: Identity = "SPIFFE://example.org/ns/a/sa/b".parse().unwrap();
        assert_eq!(upper.trust_domain, "example.org");
        assert_eq!(upper.to_string(), "spiffe://example.org/ns/a/sa/b");
        assert!(
            "spiffe://Example.org/ns/a/sa/b"
                .parse::<Identity>()
                .is_err()
        );
    }

    #[test]
    fn malformed_identities_say_what_is_wrong() {
        for (text, reason) in [
            ("https://cluster.local/ns/a/sa/b", "spiffe://"),
            ("spiffe://cluster.local/ns/a", "exactly"),
            ("spiffe://cluster.local/ns/a/sa/b/extra", "exactly"),
            ("spiffe://cluster.local/namespace/a/sa/b", "/ns/"),
            ("spiffe://cluster.local/ns//sa/b", "namespace is empty"),
            ("spiffe:///ns/a/sa/b", "trust domain is empty"),
            ("spiffe://cluster.local/ns/a/sa/b%2f", "characters"),
            ("spiffe://cluster.local/ns/a/sa/b c", "characters"),
        ] {
            let message = text.parse::<Identity>().unwrap_err().to_string();
            assert!(message.contains(reason), "{text}: {message}");
            assert!(
                message.contains("spiffe://cluster.local/ns/NAMESPACE"),
                "{message}"
            );
        }
    }
}

//! The mesh's certificate authority: the control plane signs each sidecar's
//! workload certificate, as istiod's built-in CA (Citadel) does.
//!
//! ```text
//! proxy: makes a key (it never leaves the proxy), sends a CSR
//!   POST /v1/certificates {identity, csr}   Authorization: Bearer <bootstrap token>
//! control plane:
//!   1. who is asking?  the bootstrap token proves one identity (mesh_api::identity)
//!   2. the CSR's signature proves the caller holds the key
//!   3. the CSR may name no identity but that one (else 403)
//!   4. a fresh leaf: the CSR's public key, the one URI SAN, not a CA, short-lived
//!   <- {certChain: [leaf, root], trustBundle: [root], notBeforeMs, notAfterMs}
//! ```
//!
//! Only two things are taken from the CSR: its public key and (checked, not
//! trusted) the identity it names. Everything else (basic constraints asking
//! for CA rights, key usages, a subject, extra names) is ignored: the leaf's
//! fields are the CA's decision, so a CSR asking to be a CA gets a plain
//! leaf, as Istio's CA does.
//!
//! The root is made at the first start and kept: locally in the state
//! directory (`ca-key.pem` with mode 0600, `ca-cert.pem`), so certificates
//! issued before a restart still verify after it. Leaves live 24 hours
//! (Istio's `DEFAULT_WORKLOAD_CERT_TTL`); `MESH_CERT_TTL` shortens it down to
//! seconds for tests, and proxies renew at half-life.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::post;
use mesh_api::identity::{CertificateRequest, CertificateResponse, Identity};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};

use crate::api::{ApiFailure, JsonBody, Pretty};
use crate::state::Shared;
use crate::token::{check_private, private_file};

/// Istio's default workload certificate lifetime.
pub const DEFAULT_CERT_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// How far back a leaf's validity starts: a peer whose clock is a little
/// behind must not see a certificate from the future.
const CLOCK_SKEW: Duration = Duration::from_secs(60);

const KEY_FILE: &str = "ca-key.pem";
const CERT_FILE: &str = "ca-cert.pem";

/// Why the CA could not start or would not sign.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("cannot {action} the mesh CA's {path}: {error}")]
    Io {
        action: &'static str,
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(
        "the mesh CA's files in {dir} are unusable ({reason}); move ca-key.pem and ca-cert.pem \
         away to have a new root made (every workload then needs a new certificate)"
    )]
    BadRoot { dir: PathBuf, reason: String },
    #[error(transparent)]
    TooOpen(#[from] crate::token::TokenError),
    #[error("the mesh CA's root in the Secret {secret}: {reason}")]
    RootSecret { secret: String, reason: String },
    #[error(
        "the certificate signing request is not valid: {0}; send a PEM PKCS#10 request signed by the key it names"
    )]
    BadCsr(String),
    #[error(
        "the certificate signing request asks for {asked}, but the caller proved {authenticated}: \
         a workload gets a certificate for its own identity only"
    )]
    OtherIdentity {
        asked: String,
        authenticated: String,
    },
    #[error("signing failed: {0}")]
    Sign(String),
}

/// An issued certificate, ready to send.
#[derive(Clone, Debug)]
pub struct Issued {
    pub leaf_pem: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

/// The mesh's root key and certificate, and how long leaves live.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    root_pem: String,
    ttl: Duration,
}

impl std::fmt::Debug for Ca {
    /// Never print the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl Ca {
    /// A new root (its subject names the trust domain).
    pub fn generate(trust_domain: &str, ttl: Duration) -> Result<Ca, CaError> {
        let key = KeyPair::generate().map_err(|e| CaError::Sign(e.to_string()))?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::OrganizationName, trust_domain);
        name.push(DnType::CommonName, "micromesh root CA");
        params.distinguished_name = name;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = SystemTime::now();
        params.not_before = (now - CLOCK_SKEW).into();
        params.not_after = (now + Duration::from_secs(10 * 365 * 24 * 60 * 60)).into();
        let cert = params
            .self_signed(&key)
            .map_err(|e| CaError::Sign(e.to_string()))?;
        Ok(Ca {
            root_pem: cert.pem(),
            issuer: Issuer::new(params, key),
            ttl,
        })
    }

    /// A root kept as PEM (the state directory's files, or a Secret's keys).
    pub fn from_pem(cert_pem: &str, key_pem: &str, ttl: Duration) -> Result<Ca, String> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| format!("the key: {e}"))?;
        let issuer =
            Issuer::from_ca_cert_pem(cert_pem, key).map_err(|e| format!("the certificate: {e}"))?;
        Ok(Ca {
            issuer,
            root_pem: cert_pem.to_string(),
            ttl,
        })
    }

    /// The root in `dir`, or a new one written there (the key with mode
    /// 0600) at the first start.
    pub fn load_or_create(dir: &Path, trust_domain: &str, ttl: Duration) -> Result<Ca, CaError> {
        let key_path = dir.join(KEY_FILE);
        let cert_path = dir.join(CERT_FILE);
        let io = |action, path: &Path, error| CaError::Io {
            action,
            path: path.to_path_buf(),
            error,
        };
        if key_path.exists() {
            check_private(&key_path)?;
            let key = std::fs::read_to_string(&key_path).map_err(|e| io("read", &key_path, e))?;
            let cert =
                std::fs::read_to_string(&cert_path).map_err(|e| io("read", &cert_path, e))?;
            return Ca::from_pem(&cert, &key, ttl).map_err(|reason| CaError::BadRoot {
                dir: dir.to_path_buf(),
                reason,
            });
        }
        let ca = Ca::generate(trust_domain, ttl)?;
        // The certificate first: a crash between the two leaves no key
        // without its certificate (the key's presence means "made").
        std::fs::write(&cert_path, &ca.root_pem).map_err(|e| io("write", &cert_path, e))?;
        let mut file = private_file(&key_path).map_err(|e| io("create", &key_path, e))?;
        use std::io::Write;
        file.write_all(ca.issuer.key().serialize_pem().as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| io("write", &key_path, e))?;
        tracing::info!(dir = %dir.display(), "made the mesh's root CA");
        Ok(ca)
    }

    /// The root's private key (PEM), for the Secret that keeps it
    /// (`kubernetes/ca_root.rs`).
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// The root certificate (PEM): the trust bundle proxies verify with.
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// The roots proxies trust, PEM, newest first: what every snapshot
    /// carries (`watch.rs`) and every CSR's answer.
    pub fn trust_bundle(&self) -> Vec<String> {
        vec![self.root_pem.clone()]
    }

    /// How long a leaf lives.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Sign the public key of `csr_pem` for `identity`, which the caller
    /// has proven. Refused if the CSR names any other identity.
    pub fn sign(&self, csr_pem: &str, identity: &Identity) -> Result<Issued, CaError> {
        // Parsing checks the CSR's signature: the caller holds the key.
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| CaError::BadCsr(e.to_string()))?;
        let spiffe_id = identity.spiffe_id();
        for san in &csr.params.subject_alt_names {
            let asked = match san {
                SanType::URI(uri) if uri.as_str() == spiffe_id => continue,
                SanType::URI(uri) => format!("URI {}", uri.as_str()),
                SanType::DnsName(name) => format!("DNS {}", name.as_str()),
                other => format!("{other:?}"),
            };
            return Err(CaError::OtherIdentity {
                asked,
                authenticated: spiffe_id,
            });
        }

        // The CA decides every field; the CSR only lends its public key.
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(
            spiffe_id
                .clone()
                .try_into()
                .map_err(|e: rcgen::Error| CaError::Sign(e.to_string()))?,
        )];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let serial = crate::token::random_hex(16).map_err(|e| CaError::Sign(e.to_string()))?;
        let mut serial = (0..serial.len())
            .step_by(2)
            .filter_map(|i| u8::from_str_radix(&serial[i..i + 2], 16).ok())
            .collect::<Vec<u8>>();
        serial[0] &= 0x7f; // a positive number, as RFC 5280 wants
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        let now = SystemTime::now();
        let not_before = now - CLOCK_SKEW;
        let not_after = now + self.ttl;
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        let leaf = params
            .signed_by(&csr.public_key, &self.issuer)
            .map_err(|e| CaError::Sign(e.to_string()))?;
        tracing::info!(%identity, ttl_s = self.ttl.as_secs(), "issued a workload certificate");
        Ok(Issued {
            leaf_pem: leaf.pem(),
            not_before,
            not_after,
        })
    }

    /// A certificate for the control plane itself (its secure port,
    /// `secure.rs`): a key made here, never written anywhere, and the same
    /// kind of leaf a proxy gets. Returns the leaf and the key (PKCS#8 DER).
    pub fn issue_own(&self, identity: &Identity) -> Result<(Issued, Vec<u8>), CaError> {
        let key = KeyPair::generate().map_err(|e| CaError::Sign(e.to_string()))?;
        let csr = CertificateParams::default()
            .serialize_request(&key)
            .and_then(|csr| csr.pem())
            .map_err(|e| CaError::Sign(e.to_string()))?;
        let issued = self.sign(&csr, identity)?;
        Ok((issued, key.serialize_der()))
    }

    /// The answer of `POST /v1/certificates`.
    pub fn response(&self, issued: &Issued) -> CertificateResponse {
        CertificateResponse {
            cert_chain: vec![issued.leaf_pem.clone(), self.root_pem.clone()],
            trust_bundle: self.trust_bundle(),
            not_before_ms: unix_ms(issued.not_before),
            not_after_ms: unix_ms(issued.not_after),
        }
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `MESH_CERT_TTL`: `24h`, `90m`, `30s`, or a number of seconds.
pub fn parse_ttl(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (digits, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?}: write a lifetime like 24h, 90m or 30s"))?;
    let seconds = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(format!("{text:?}: the unit must be s, m or h")),
    };
    if seconds < 2 {
        return Err(format!(
            "{text:?}: a certificate must live at least 2s (proxies renew at half-life)"
        ));
    }
    Ok(Duration::from_secs(seconds))
}

// === POST /v1/certificates ===

/// The CSR endpoint. It is not behind the write token (`token.rs`): the
/// caller proves one identity with its bootstrap token instead.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/certificates", post(certificates))
        .with_state(shared)
}

async fn certificates(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    JsonBody(request): JsonBody<CertificateRequest>,
) -> Result<Pretty<CertificateResponse>, ApiFailure> {
    let Some(ca) = &shared.ca else {
        return Err(ApiFailure::new(
            StatusCode::NOT_FOUND,
            "this control plane runs without a CA (it has neither a write token nor the \
             Kubernetes API to bootstrap identities from); start it with meshctl up or \
             --source kubernetes to have one",
        ));
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let mut proven = shared.token.as_ref().is_some_and(|token| {
        mesh_api::identity::verify_bootstrap_token(token.secret(), &request.identity, presented)
    });
    // On a cluster the proof is the pod's service-account token, minted for
    // audience istio-ca, which the API server's TokenReview vouches for.
    if let (false, Some(source)) = (proven, &shared.settings.kubernetes)
        && !presented.is_empty()
    {
        match crate::kubernetes::token_review::review(source.client.clone(), presented).await {
            Ok(identity) if identity == request.identity => proven = true,
            Ok(identity) => {
                tracing::warn!(asked = %request.identity, token = %identity, "certificate refused");
                return Err(ApiFailure::new(
                    StatusCode::FORBIDDEN,
                    format!(
                        "the service-account token sent is {identity}'s, but the request is for \
                         {}: a workload gets a certificate for its own identity only",
                        request.identity
                    ),
                ));
            }
            Err(error) => {
                tracing::warn!(identity = %request.identity, %error, "certificate refused");
                return Err(ApiFailure::new(
                    StatusCode::UNAUTHORIZED,
                    format!(
                        "a certificate for {} needs a service-account token of that identity: \
                         {error}",
                        request.identity
                    ),
                ));
            }
        }
    }
    if !proven {
        tracing::warn!(identity = %request.identity, "certificate refused: no proof of identity");
        return Err(ApiFailure::new(
            StatusCode::UNAUTHORIZED,
            format!(
                "a certificate for {} needs that identity's bootstrap token as `Authorization: \
                 Bearer`; meshctl up hands each proxy its own (MESH_IDENTITY_TOKEN)",
                request.identity
            ),
        ));
    }
    let issued = ca.sign(&request.csr, &request.identity).map_err(|e| {
        let status = match e {
            CaError::OtherIdentity { .. } => StatusCode::FORBIDDEN,
            CaError::BadCsr(_) => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        tracing::warn!(identity = %request.identity, error = %e, "certificate refused");
        ApiFailure::new(status, e.to_string())
    })?;
    Ok(Pretty(ca.response(&issued)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes_read_like_istios() {
        assert_eq!(parse_ttl("24h").unwrap(), DEFAULT_CERT_TTL);
        assert_eq!(parse_ttl("90m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_ttl("3").unwrap(), Duration::from_secs(3));
        assert!(parse_ttl("1s").unwrap_err().contains("at least 2s"));
        assert!(parse_ttl("3d").unwrap_err().contains("unit"));
        assert!(parse_ttl("soon").unwrap_err().contains("24h"));
    }
}

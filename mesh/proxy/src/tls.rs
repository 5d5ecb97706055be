//! Mutual TLS between sidecars: rustls configs made from the identity
//! worker's current key (`identity.rs`) and the mesh's trust bundle, with
//! verifiers that check what a mesh needs.
//!
//! rustls's default verifier checks a server's DNS name. A mesh names its
//! workloads with SPIFFE IDs instead (a URI SAN), so both directions use our
//! own verifiers, with webpki for the chain:
//!
//! ```text
//! client sidecar (outbound)                 server sidecar (inbound)
//!   SpiffeServerVerifier:                     SpiffeClientVerifier:
//!     chain ends at the mesh root               chain ends at the mesh root
//!     valid now, usable for server auth         valid now, usable for client auth
//!     URI SAN == the identity expected          URI SAN is a SPIFFE ID of our
//!       for the endpoint chosen                   trust domain -> the peer's Identity
//! ```
//!
//! Envoy does the same for Istio: `match_typed_subject_alt_names` on the
//! client side, and on the server side the peer's SPIFFE ID becomes the
//! `source.principal` that AuthorizationPolicy matches and
//! `x-forwarded-client-cert` carries. Only TLS 1.3 is offered, as between
//! Istio's sidecars.
//!
//! Not wired into the listeners yet: the next step builds a [`server_config`]
//! and one [`client_config`] per expected identity from each new
//! [`CertifiedKey`] the worker publishes.

use std::sync::Arc;

use mesh_api::identity::Identity;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::identity::CertifiedKey;

/// Why a TLS config could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("the trust bundle is unusable: {0}")]
    TrustBundle(String),
    #[error("the workload certificate or key is unusable: {0}")]
    Certificate(String),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The mesh's roots, as webpki trust anchors.
#[derive(Debug)]
struct Roots {
    anchors: Vec<rustls::pki_types::TrustAnchor<'static>>,
}

impl Roots {
    fn from_pem(bundle: &[String]) -> Result<Roots, TlsError> {
        let mut anchors = Vec::new();
        for pem in bundle {
            for der in pem_certs(pem)? {
                let anchor = webpki::anchor_from_trusted_cert(&der)
                    .map_err(|e| TlsError::TrustBundle(format!("{e:?}")))?
                    .to_owned();
                anchors.push(anchor);
            }
        }
        if anchors.is_empty() {
            return Err(TlsError::TrustBundle("no root certificate in it".into()));
        }
        Ok(Roots { anchors })
    }

    /// The chain from `end_entity` through `intermediates` ends at one of
    /// our roots, every certificate valid `now`, the leaf usable for `usage`.
    fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: webpki::KeyUsage,
        algorithms: &WebPkiSupportedAlgorithms,
    ) -> Result<(), rustls::Error> {
        let cert = webpki::EndEntityCert::try_from(end_entity).map_err(webpki_error)?;
        cert.verify_for_usage(
            algorithms.all,
            &self.anchors,
            intermediates,
            now,
            usage,
            None,
            None,
        )
        .map(|_| ())
        .map_err(webpki_error)
    }
}

/// webpki's reasons, in rustls's words (an expired certificate is told
/// apart from an unknown issuer in the logs).
fn webpki_error(error: webpki::Error) -> rustls::Error {
    use webpki::Error as E;
    let reason = match error {
        E::CertExpired { .. } => CertificateError::Expired,
        E::CertNotValidYet { .. } => CertificateError::NotValidYet,
        E::UnknownIssuer => CertificateError::UnknownIssuer,
        E::InvalidSignatureForPublicKey => CertificateError::BadSignature,
        other => CertificateError::Other(rustls::OtherError(Arc::new(WebpkiReason(format!(
            "{other:?}"
        ))))),
    };
    rustls::Error::InvalidCertificate(reason)
}

#[derive(Debug)]
struct WebpkiReason(String);

impl std::fmt::Display for WebpkiReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for WebpkiReason {}

/// The SPIFFE ID in a certificate: its only URI SAN, parsed. A certificate
/// with none, several, or one that is not a SPIFFE ID has no identity.
pub fn identity_of(cert: &CertificateDer<'_>) -> Option<Identity> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let (_, parsed) = X509Certificate::from_der(cert.as_ref()).ok()?;
    let sans = parsed.subject_alternative_name().ok()??;
    let mut uris = sans.value.general_names.iter().filter_map(|n| match n {
        GeneralName::URI(uri) => Some(*uri),
        _ => None,
    });
    let uri = uris.next()?;
    if uris.next().is_some() {
        return None;
    }
    uri.parse().ok()
}

fn pem_certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Certificate(format!("{e:?}")))
}

// === SpiffeServerVerifier ===

/// The client side's check of a server: the mesh's chain, and exactly the
/// identity expected for the endpoint this connection goes to.
#[derive(Debug)]
pub struct SpiffeServerVerifier {
    roots: Roots,
    expected: Identity,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        // The DNS name is not what a mesh checks; the SPIFFE ID is.
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.roots.verify(
            end_entity,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
            &self.algorithms,
        )?;
        match identity_of(end_entity) {
            Some(found) if found == self.expected => Ok(ServerCertVerified::assertion()),
            found => {
                tracing::warn!(expected = %self.expected, found = ?found.map(|i| i.to_string()),
                    "refused a server: not the identity expected for this endpoint");
                Err(rustls::Error::InvalidCertificate(
                    CertificateError::NotValidForName,
                ))
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

// === SpiffeClientVerifier ===

/// The server side's check of a client: the mesh's chain and a SPIFFE ID
/// in our trust domain. Which client may call is AuthorizationPolicy's
/// decision, made later with [`peer_identity`].
#[derive(Debug)]
pub struct SpiffeClientVerifier {
    roots: Roots,
    trust_domain: String,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.roots.verify(
            end_entity,
            intermediates,
            now,
            webpki::KeyUsage::client_auth(),
            &self.algorithms,
        )?;
        match identity_of(end_entity) {
            Some(found) if found.trust_domain == self.trust_domain => {
                Ok(ClientCertVerified::assertion())
            }
            found => {
                tracing::warn!(trust_domain = self.trust_domain, found = ?found.map(|i| i.to_string()),
                    "refused a client: no SPIFFE ID of this trust domain");
                Err(rustls::Error::InvalidCertificate(
                    CertificateError::ApplicationVerificationFailure,
                ))
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The verified peer's identity after a handshake (either side).
pub fn peer_identity(certificates: Option<&[CertificateDer<'_>]>) -> Option<Identity> {
    identity_of(certificates?.first()?)
}

// === configs ===

fn chain_and_key(
    certified: &CertifiedKey,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let mut chain = Vec::new();
    for pem in &certified.chain_pem {
        chain.extend(pem_certs(pem)?);
    }
    // The root is the peer's to have already; send the leaf (and any
    // intermediates) only.
    let roots = Roots::from_pem(&certified.trust_bundle_pem)?;
    if chain.len() > 1 {
        let last = chain.last().expect("len > 1");
        let is_root = roots.anchors.iter().any(|a| {
            webpki::anchor_from_trusted_cert(last)
                .is_ok_and(|b| b.subject.as_ref() == a.subject.as_ref())
        });
        if is_root {
            chain.pop();
        }
    }
    let key = PrivateKeyDer::Pkcs8(certified.key_der.clone().into());
    Ok((chain, key))
}

/// The inbound side: present the workload's certificate, require a mesh
/// client certificate of `trust_domain`.
pub fn server_config(
    certified: &CertifiedKey,
    trust_domain: &str,
) -> Result<rustls::ServerConfig, TlsError> {
    let provider = provider();
    let verifier = SpiffeClientVerifier {
        roots: Roots::from_pem(&certified.trust_bundle_pem)?,
        trust_domain: trust_domain.to_string(),
        algorithms: provider.signature_verification_algorithms,
    };
    let (chain, key) = chain_and_key(certified)?;
    rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Certificate(e.to_string()))?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Certificate(e.to_string()))
}

/// The outbound side, toward an endpoint that must be `expected`: present
/// the workload's certificate, accept only that server identity.
pub fn client_config(
    certified: &CertifiedKey,
    expected: Identity,
) -> Result<rustls::ClientConfig, TlsError> {
    let provider = provider();
    let verifier = SpiffeServerVerifier {
        roots: Roots::from_pem(&certified.trust_bundle_pem)?,
        expected,
        algorithms: provider.signature_verification_algorithms,
    };
    let (chain, key) = chain_and_key(certified)?;
    rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Certificate(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(chain, key)
        .map_err(|e| TlsError::Certificate(e.to_string()))
}

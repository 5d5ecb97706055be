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
//! [`MeshTls`] holds the configs the listeners and pools use: one server
//! config and one client config per expected identity, built from the
//! newest [`CertifiedKey`] the worker published and the newest trust
//! bundle, and rebuilt when either changes (a rotation). A handshake takes
//! the config current at its start; a connection already open keeps its
//! session, so rotation never cuts one.
//!
//! Which roots? Exactly the trust bundle of the last snapshot
//! ([`MeshTls::set_trust_bundle`]), as Envoy trusts the `ROOTCA` istiod
//! pushes; before the first snapshot brings one, the bundle that came with
//! the certificate. The snapshot is what carries a root rotation to every
//! proxy at once (`mesh/control/src/ca.rs`): a second root is trusted
//! before any peer presents a leaf of it, and a retired root stops being
//! trusted when the control plane drops it.
//!
//! ALPN between sidecars, as Istio sets it: the client offers
//! `istio-http/1.1` or `istio-h2` (Istio's ALPN filter marks in-mesh
//! traffic so); the server accepts those and plain `h2` and `http/1.1`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use mesh_api::identity::Identity;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::identity::{CertifiedKey, Current};

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
/// client certificate of `trust_domain`, chained to the certificate's own
/// trust bundle.
pub fn server_config(
    certified: &CertifiedKey,
    trust_domain: &str,
) -> Result<rustls::ServerConfig, TlsError> {
    server_config_trusting(certified, &certified.trust_bundle_pem, trust_domain)
}

/// [`server_config`], trusting the roots of `bundle`.
fn server_config_trusting(
    certified: &CertifiedKey,
    bundle: &[String],
    trust_domain: &str,
) -> Result<rustls::ServerConfig, TlsError> {
    let provider = provider();
    let verifier = SpiffeClientVerifier {
        roots: Roots::from_pem(bundle)?,
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
/// the workload's certificate, accept only that server identity, chained
/// to the certificate's own trust bundle.
pub fn client_config(
    certified: &CertifiedKey,
    expected: Identity,
) -> Result<rustls::ClientConfig, TlsError> {
    client_config_trusting(certified, &certified.trust_bundle_pem, expected)
}

/// [`client_config`], trusting the roots of `bundle`.
pub fn client_config_trusting(
    certified: &CertifiedKey,
    bundle: &[String],
    expected: Identity,
) -> Result<rustls::ClientConfig, TlsError> {
    let provider = provider();
    let verifier = SpiffeServerVerifier {
        roots: Roots::from_pem(bundle)?,
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

// === ALPN ===

/// The protocol a client sidecar will speak inside the TLS session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Alpn {
    Http1,
    H2,
}

impl Alpn {
    /// What the client offers: Istio's in-mesh names.
    fn offer(self) -> Vec<Vec<u8>> {
        match self {
            Alpn::Http1 => vec![b"istio-http/1.1".to_vec()],
            Alpn::H2 => vec![b"istio-h2".to_vec()],
        }
    }
}

/// What the server accepts, in its order of preference.
fn server_alpn() -> Vec<Vec<u8>> {
    ["istio-h2", "istio-http/1.1", "h2", "http/1.1"]
        .map(|p| p.as_bytes().to_vec())
        .to_vec()
}

// === MeshTls ===

/// The proxy's TLS configs, following its current certificate and the
/// snapshot's trust bundle.
pub struct MeshTls {
    current: Current,
    trust_domain: String,
    /// The last snapshot's roots; `None` until a snapshot brought some.
    bundle: Mutex<Option<Arc<Vec<String>>>>,
    configs: Mutex<Configs>,
}

/// The configs made from one certificate and one bundle; thrown away when
/// either changes.
#[derive(Default)]
struct Configs {
    from: Option<Arc<CertifiedKey>>,
    bundle: Option<Arc<Vec<String>>>,
    server: Option<Arc<rustls::ServerConfig>>,
    clients: HashMap<(Identity, Alpn), Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for MeshTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshTls")
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

impl MeshTls {
    /// Configs that follow `current`, for peers of `trust_domain`.
    pub fn new(current: Current, trust_domain: &str) -> MeshTls {
        MeshTls {
            current,
            trust_domain: trust_domain.to_string(),
            bundle: Mutex::new(None),
            configs: Mutex::new(Configs::default()),
        }
    }

    /// Trust exactly `bundle` (a snapshot's roots, PEM) from the next
    /// handshake on. An empty bundle (a control plane without a CA, a
    /// snapshot written by hand) goes back to the certificate's own. A
    /// bundle with no usable root is refused and the last one kept.
    pub fn set_trust_bundle(&self, bundle: &[String]) -> Result<(), TlsError> {
        let next = if bundle.is_empty() {
            None
        } else {
            Roots::from_pem(bundle)?;
            Some(Arc::new(bundle.to_vec()))
        };
        let mut current = self.bundle.lock().unwrap_or_else(|e| e.into_inner());
        // Every snapshot carries the bundle; the configs are only made
        // anew when it changed.
        if current.as_deref() != next.as_deref() {
            tracing::info!(
                roots = next.as_ref().map_or(0, |b| b.len()),
                "trust bundle changed"
            );
            *current = next;
        }
        Ok(())
    }

    /// The roots trusted now: the snapshot's, else the certificate's.
    pub fn trust_bundle(&self) -> Option<Vec<String>> {
        let bundle = self
            .bundle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        match bundle {
            Some(bundle) => Some(bundle.to_vec()),
            None => self.certified().map(|c| c.trust_bundle_pem.clone()),
        }
    }

    /// The certificate in use now, if the proxy holds one.
    pub fn certified(&self) -> Option<Arc<CertifiedKey>> {
        self.current.borrow().clone()
    }

    /// The configs of the current certificate (made anew after a rotation).
    /// The lock is held for a map lookup, or once per rotation and peer
    /// identity for building a config; never across a handshake.
    fn with_configs<T>(
        &self,
        f: impl FnOnce(&CertifiedKey, &[String], &mut Configs) -> Result<T, TlsError>,
    ) -> Result<Option<T>, TlsError> {
        let Some(certified) = self.certified() else {
            return Ok(None);
        };
        let bundle = self
            .bundle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut configs = self.configs.lock().unwrap_or_else(|e| e.into_inner());
        let same_certificate = configs
            .from
            .as_ref()
            .is_some_and(|from| Arc::ptr_eq(from, &certified));
        let same_bundle = match (&configs.bundle, &bundle) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        if !same_certificate || !same_bundle {
            *configs = Configs {
                from: Some(certified.clone()),
                bundle: bundle.clone(),
                ..Configs::default()
            };
        }
        let roots = bundle
            .as_deref()
            .map_or(certified.trust_bundle_pem.as_slice(), Vec::as_slice);
        f(&certified, roots, &mut configs).map(Some)
    }

    /// The inbound config: `None` while the proxy has no certificate.
    pub fn server(&self) -> Result<Option<Arc<rustls::ServerConfig>>, TlsError> {
        let trust_domain = &self.trust_domain;
        self.with_configs(|certified, roots, configs| {
            if let Some(server) = &configs.server {
                return Ok(server.clone());
            }
            let mut config = server_config_trusting(certified, roots, trust_domain)?;
            config.alpn_protocols = server_alpn();
            let config = Arc::new(config);
            configs.server = Some(config.clone());
            Ok(config)
        })
    }

    /// The outbound config toward a server that must be `expected`:
    /// `None` while the proxy has no certificate.
    pub fn client(
        &self,
        expected: &Identity,
        alpn: Alpn,
    ) -> Result<Option<Arc<rustls::ClientConfig>>, TlsError> {
        self.with_configs(|certified, roots, configs| {
            let key = (expected.clone(), alpn);
            if let Some(client) = configs.clients.get(&key) {
                return Ok(client.clone());
            }
            let mut config = client_config_trusting(certified, roots, expected.clone())?;
            config.alpn_protocols = alpn.offer();
            let config = Arc::new(config);
            configs.clients.insert(key, config.clone());
            Ok(config)
        })
    }
}

// === the two ends of a connection ===

/// What the server side learnt of a mutual-TLS client in the handshake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerCertificate {
    /// The client's SPIFFE identity (the verifier made sure it has one).
    pub identity: Identity,
    /// The same identity as text (`spiffe://cluster.local/ns/default/sa/x`),
    /// written once per handshake: the metrics' `source_principal` and the
    /// span's tag share it with every request on the connection.
    pub spiffe_id: Arc<str>,
    /// SHA-256 of the client's leaf certificate (DER), lower-case hex:
    /// the `Hash` of `x-forwarded-client-cert`.
    pub hash: String,
}

impl PeerCertificate {
    /// From a finished handshake's peer certificates.
    pub fn of(certificates: Option<&[CertificateDer<'_>]>) -> Option<PeerCertificate> {
        let leaf = certificates?.first()?;
        let identity = identity_of(leaf)?;
        Some(PeerCertificate {
            spiffe_id: identity.to_string().into(),
            identity,
            hash: sha256_hex(leaf.as_ref()),
        })
    }
}

/// `x-forwarded-client-cert` as the server sidecar hands it to its app:
/// whatever the request carried is removed (only this proxy terminated the
/// client's TLS), then, on a mutual-TLS connection, set as Envoy writes it
/// for Istio (`forward_client_cert_details: SANITIZE_SET`):
/// `By=<this workload's SPIFFE ID>;Hash=<SHA-256 of the client's
/// certificate>;URI=<the client's SPIFFE ID>`.
pub fn set_forwarded_client_cert(
    headers: &mut http::HeaderMap,
    own: Option<&Identity>,
    peer: Option<&PeerCertificate>,
) {
    let name = http::HeaderName::from_static("x-forwarded-client-cert");
    headers.remove(&name);
    let (Some(own), Some(peer)) = (own, peer) else {
        return;
    };
    let value = format!("By={own};Hash={};URI={}", peer.hash, peer.identity);
    // SPIFFE IDs and hex are visible ASCII: always a valid header value.
    if let Ok(value) = http::HeaderValue::from_str(&value) {
        headers.insert(name, value);
    }
}

/// SHA-256, through the hash rustls's ring provider already carries.
fn sha256_hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let suite = rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256;
    let hash = suite
        .tls13()
        .expect("a TLS 1.3 suite")
        .common
        .hash_provider
        .hash(bytes);
    hash.as_ref().iter().fold(String::new(), |mut hex, b| {
        let _ = write!(hex, "{b:02x}");
        hex
    })
}

/// Whether the first byte a client sent opens a TLS handshake record
/// (content type 22): how a PERMISSIVE listener tells TLS from plaintext,
/// as Envoy's `tls_inspector` does. No HTTP request starts with it.
pub fn looks_like_tls(first: u8) -> bool {
    first == 0x16
}

/// Client side: a TLS session over `tcp` to a server that must prove the
/// identity `config` expects.
pub async fn connect<S>(
    config: Arc<rustls::ClientConfig>,
    tcp: S,
) -> std::io::Result<tokio_rustls::client::TlsStream<S>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    // Our verifier checks the SPIFFE ID, not this name; rustls wants one.
    let name = ServerName::try_from("mesh.invalid").expect("a valid DNS name");
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
}

#[cfg(test)]
mod runtime_tests {
    use super::*;

    #[test]
    fn sha256_is_the_standard_one() {
        // FIPS 180-2's "abc" example.
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn forwarded_client_cert_is_replaced_and_only_set_for_a_mutual_tls_peer() {
        let own = Identity::new("default", "helloworld-service");
        let peer = PeerCertificate {
            identity: Identity::new("default", "guestbook-ui"),
            spiffe_id: "spiffe://cluster.local/ns/default/sa/guestbook-ui".into(),
            hash: "ab12".into(),
        };
        let spoofed = || {
            let mut headers = http::HeaderMap::new();
            headers.insert(
                "x-forwarded-client-cert",
                "By=x;URI=spiffe://cluster.local/ns/default/sa/admin"
                    .parse()
                    .unwrap(),
            );
            headers
        };
        let mut plaintext = spoofed();
        set_forwarded_client_cert(&mut plaintext, Some(&own), None);
        assert!(plaintext.get("x-forwarded-client-cert").is_none());
        let mut mutual = spoofed();
        set_forwarded_client_cert(&mut mutual, Some(&own), Some(&peer));
        assert_eq!(
            mutual
                .get_all("x-forwarded-client-cert")
                .iter()
                .collect::<Vec<_>>(),
            [
                "By=spiffe://cluster.local/ns/default/sa/helloworld-service;Hash=ab12;\
                 URI=spiffe://cluster.local/ns/default/sa/guestbook-ui"
            ]
        );
    }

    #[test]
    fn tls_is_told_from_http_by_its_first_byte() {
        assert!(looks_like_tls(0x16));
        for plaintext in [b'G', b'P', b'H', b'D', b'O', b'C'] {
            assert!(!looks_like_tls(plaintext));
        }
    }
}

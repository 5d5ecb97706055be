//! The control plane's secure port: the same API over mutual TLS, where a
//! proxy's client certificate says who is asking (istiod's port 15012).
//!
//! ```text
//! proxy (holds spiffe://cluster.local/ns/default/sa/reviews)
//!   TLS 1.3 --client cert--> :15012   the chain must end at the mesh root
//!   <--server cert--                  spiffe://cluster.local/ns/default/sa/mesh-control
//!   PUT /v1/proxies/reviews-v1-x      guard: the announce is for the certificate's
//!   GET /v1/proxies/reviews-v1-x/snapshot   identity, and the instance is bound to it
//! ```
//!
//! A proxy starts on the plaintext port (15010): it announces with the write
//! token and asks the CA for its first certificate with its bootstrap token.
//! The announce's answer names this port and the control plane's identity
//! (`AnnounceResponse::secure`); from then on the proxy announces, watches
//! and ACKs here, and the control plane records the identity the
//! certificate proves (`ProxyAnnounce::identity`, `meshctl get proxies`).
//! [`guard`] then holds each instance to that identity on both ports:
//!
//! - an announce on this port must be for the certificate's own workload
//!   (locally: the service is the service account, as `meshctl up` names
//!   them; with the Kubernetes source endpoints come from EndpointSlices, so
//!   only the instance's binding is checked), else 403;
//! - an instance announced here is bound to that identity: its announces,
//!   watches, ACKs and leave from another identity are refused (403), and
//!   so are its announces, watches and ACKs on the plaintext port, where
//!   nobody proves anything (removing it there takes the write token, as
//!   `meshctl up` does with a killed run's leftovers);
//! - an identity a proxy claims on the plaintext port is dropped: the SPIFFE
//!   ID the control plane shows is always one a certificate proved.
//!
//! The server certificate is the control plane's own workload certificate
//! from its CA, reissued at half-life like any proxy's. It names a SPIFFE
//! ID (`sa/mesh-control`) rather than istiod's DNS names: the proxies
//! already verify peers by SPIFFE ID (mesh/proxy/src/tls.rs), and the name
//! then reads the same locally and in a cluster.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use mesh_api::identity::Identity;
use mesh_api::xds::{ProxyAnnounce, SecureControl};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::{self, pki_types};
use tokio_util::sync::CancellationToken;

use crate::api::ApiFailure;
use crate::ca::{Ca, CaError};
use crate::state::Shared;

/// The control plane's service account: its identity is
/// `spiffe://<trust domain>/ns/<namespace>/sa/mesh-control`.
pub const CONTROL_SERVICE_ACCOUNT: &str = "mesh-control";

/// How long a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest announce the guard reads (a real one is well under 4 KiB).
const MAX_ANNOUNCE: usize = 64 * 1024;

/// Why the secure port could not start.
#[derive(Debug, thiserror::Error)]
pub enum SecureError {
    #[error("the control plane's own certificate: {0}")]
    Certificate(#[from] CaError),
    #[error("the secure port's TLS settings: {0}")]
    Tls(String),
}

/// The identity a request's client certificate proved; present on every
/// request served on the secure port, absent on the plaintext one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer(pub Identity);

// === TLS ===

/// The TLS side of the secure port: our certificate (reissued at
/// half-life), client certificates required and chained to the mesh root.
pub fn acceptor(shared: Arc<Shared>, identity: Identity) -> Result<TlsAcceptor, SecureError> {
    let Some(ca) = &shared.ca else {
        return Err(SecureError::Tls("this control plane runs no CA".into()));
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let bundle = ca.trust_bundle();
    let verifier = BundleVerifier {
        shared: shared.clone(),
        current: Mutex::new((bundle.clone(), client_verifier(&bundle, &provider)?)),
        provider: provider.clone(),
    };
    let resolver = ControlCert::new(shared.clone(), identity, provider.clone())?;
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| SecureError::Tls(e.to_string()))?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_cert_resolver(Arc::new(resolver));
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// webpki's client verifier for the roots of `bundle`.
fn client_verifier(
    bundle: &[String],
    provider: &Arc<rustls::crypto::CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, SecureError> {
    let mut roots = rustls::RootCertStore::empty();
    for pem in bundle {
        for der in pem_certs(pem)? {
            roots
                .add(der)
                .map_err(|e| SecureError::Tls(format!("the mesh root: {e}")))?;
        }
    }
    rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| SecureError::Tls(e.to_string()))
}

/// Client certificates chained to any root of the CA's trust bundle now:
/// during a root rotation (`ca.rs`) a proxy may hold a leaf of either. The
/// webpki verifier is made again when the bundle changes.
struct BundleVerifier {
    shared: Arc<Shared>,
    provider: Arc<rustls::crypto::CryptoProvider>,
    current: Mutex<(
        Vec<String>,
        Arc<dyn rustls::server::danger::ClientCertVerifier>,
    )>,
}

impl std::fmt::Debug for BundleVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BundleVerifier").finish_non_exhaustive()
    }
}

impl BundleVerifier {
    fn verifier(&self) -> Arc<dyn rustls::server::danger::ClientCertVerifier> {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(ca) = &self.shared.ca {
            let bundle = ca.trust_bundle();
            if bundle != current.0 {
                match client_verifier(&bundle, &self.provider) {
                    Ok(verifier) => *current = (bundle, verifier),
                    Err(error) => tracing::warn!(%error, "secure port: keeping the last roots"),
                }
            }
        }
        current.1.clone()
    }
}

impl rustls::server::danger::ClientCertVerifier for BundleVerifier {
    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &pki_types::CertificateDer<'_>,
        intermediates: &[pki_types::CertificateDer<'_>],
        now: pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        self.verifier()
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.verifier().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.verifier().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.verifier().supported_verify_schemes()
    }
}

fn pem_certs(pem: &str) -> Result<Vec<pki_types::CertificateDer<'static>>, SecureError> {
    use pki_types::pem::PemObject;
    pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| SecureError::Tls(format!("a PEM certificate: {e:?}")))
}

/// The control plane's own certificate, signed by its CA, made again when
/// half of its life has passed (a 2 s test TTL included).
struct ControlCert {
    shared: Arc<Shared>,
    identity: Identity,
    provider: Arc<rustls::crypto::CryptoProvider>,
    current: Mutex<(Arc<rustls::sign::CertifiedKey>, SystemTime)>,
}

impl std::fmt::Debug for ControlCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlCert")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl ControlCert {
    fn new(
        shared: Arc<Shared>,
        identity: Identity,
        provider: Arc<rustls::crypto::CryptoProvider>,
    ) -> Result<ControlCert, SecureError> {
        let first = issue(&shared, &identity, &provider)?;
        Ok(ControlCert {
            shared,
            identity,
            provider,
            current: Mutex::new(first),
        })
    }
}

/// A new key and certificate for `identity`, and when to renew them.
fn issue(
    shared: &Shared,
    identity: &Identity,
    provider: &rustls::crypto::CryptoProvider,
) -> Result<(Arc<rustls::sign::CertifiedKey>, SystemTime), SecureError> {
    let ca: &Ca = shared
        .ca
        .as_ref()
        .ok_or_else(|| SecureError::Tls("this control plane runs no CA".into()))?;
    let (issued, key_der) = ca.issue_own(identity)?;
    let mut chain = pem_certs(&issued.leaf_pem)?;
    chain.extend(pem_certs(&issued.root_pem)?);
    let key = provider
        .key_provider
        .load_private_key(pki_types::PrivateKeyDer::Pkcs8(key_der.into()))
        .map_err(|e| SecureError::Tls(e.to_string()))?;
    let life = issued
        .not_after
        .duration_since(issued.not_before)
        .unwrap_or_default();
    Ok((
        Arc::new(rustls::sign::CertifiedKey::new(chain, key)),
        issued.not_before + life / 2,
    ))
}

impl rustls::server::ResolvesServerCert for ControlCert {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        // A poisoned lock only means another handshake panicked mid-renewal;
        // the pair inside is still a whole (key, renew time).
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if SystemTime::now() >= current.1 {
            match issue(&self.shared, &self.identity, &self.provider) {
                Ok(next) => *current = next,
                // The old one still serves until it expires.
                Err(error) => {
                    tracing::warn!(%error, "could not renew the secure port's certificate")
                }
            }
        }
        Some(current.0.clone())
    }
}

/// The SPIFFE ID of a verified client certificate: its one URI SAN, which
/// must be in our trust domain.
pub fn identity_of(cert: &pki_types::CertificateDer<'_>, trust_domain: &str) -> Option<Identity> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let (_, parsed) = X509Certificate::from_der(cert.as_ref()).ok()?;
    let sans = parsed.subject_alternative_name().ok()??;
    let mut uris = sans.value.general_names.iter().filter_map(|n| match n {
        GeneralName::URI(uri) => Some(*uri),
        _ => None,
    });
    let identity: Identity = uris.next()?.parse().ok()?;
    (uris.next().is_none() && identity.trust_domain == trust_domain).then_some(identity)
}

// === serving ===

/// Serve `app` on `listener` over mutual TLS until `shutdown`; every request
/// carries the [`Peer`] its connection's certificate proved.
pub async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    app: Router,
    trust_domain: String,
    shutdown: CancellationToken,
) {
    loop {
        let (stream, remote) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "secure port: accept failed");
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        let trust_domain = trust_domain.clone();
        let shutdown = shutdown.clone();
        // Each connection ends on its own at shutdown (below); the server
        // task does not wait for them, as axum::serve's graceful shutdown
        // does not wait for idle keep-alive connections either.
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(error)) => {
                    tracing::info!(%remote, %error, "secure port: handshake refused");
                    return;
                }
                Err(_) => return,
            };
            let peer = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(|leaf| identity_of(leaf, &trust_domain));
            // The verifier required a certificate of the mesh root; one that
            // names no SPIFFE ID of ours proves no workload.
            let Some(peer) = peer else {
                tracing::info!(%remote, "secure port: the client certificate names no identity of this mesh");
                return;
            };
            let app = app.layer(axum::Extension(Peer(peer)));
            let service = hyper::service::service_fn(move |request| {
                tower::ServiceExt::oneshot(app.clone(), request)
            });
            let builder =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            let connection = builder.serve_connection(hyper_util::rt::TokioIo::new(tls), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                _ = shutdown.cancelled() => {
                    // Long-polls answer at once on shutdown (watch.rs).
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
    }
}

/// What the announce's answer tells proxies about this port.
pub fn advertised(addr: SocketAddr, identity: Identity) -> SecureControl {
    SecureControl {
        port: addr.port(),
        identity,
    }
}

// === guard ===

/// Hold each proxy instance to the identity that proved it (see the
/// module's list). A middleware on both ports' API.
pub async fn guard(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    let Some((instance, rest)) = proxy_route(request.uri().path()) else {
        return next.run(request).await;
    };
    let peer = request.extensions().get::<Peer>().cloned();
    let bound = {
        let model = shared.lock().await;
        model
            .registry
            .get(&instance)
            .and_then(|i| i.announce.identity.clone())
    };
    if let Some(bound) = &bound {
        match &peer {
            Some(Peer(peer)) if peer == bound => {}
            Some(Peer(peer)) => {
                return refuse(format!(
                    "instance {instance} belongs to {bound}, but this client certificate is \
                     {peer}: a proxy may only announce and watch as its own identity"
                ));
            }
            // Removing an instance is an operator's act (meshctl clears a
            // killed run's leftovers this way), and the plaintext port's
            // token layer has already checked the write token: that token
            // can apply any routing rule, so letting it also remove an
            // endpoint gives it no new power. Announces and watches stay
            // held to the certificate.
            None if request.method() == Method::DELETE && rest.is_empty() => {}
            None => {
                return refuse(format!(
                    "instance {instance} proved its identity {bound} on the control plane's \
                     secure port; its announces and watches are only served there (mutual TLS, \
                     port {})",
                    shared
                        .secure
                        .get()
                        .map_or(mesh_api::xds::ports::SECURE_CONTROL, |s| s.port)
                ));
            }
        }
    }
    if request.method() != Method::PUT || !rest.is_empty() {
        return next.run(request).await;
    }
    // An announce: the identity in it is the certificate's, or none.
    let (parts, body) = request.into_parts();
    let bytes = match to_bytes(body, MAX_ANNOUNCE).await {
        Ok(bytes) => bytes,
        Err(_) => {
            return ApiFailure::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("an announce is at most {MAX_ANNOUNCE} bytes"),
            )
            .into_response();
        }
    };
    let Ok(mut announce) = serde_json::from_slice::<ProxyAnnounce>(&bytes) else {
        // Not an announce: the handler says what is wrong with it.
        return next
            .run(Request::from_parts(parts, Body::from(bytes)))
            .await;
    };
    match peer {
        Some(Peer(peer)) => {
            if let Some(claimed) = &announce.identity
                && *claimed != peer
            {
                return refuse(format!(
                    "the announce of {instance} names {claimed}, but this client certificate is \
                     {peer}"
                ));
            }
            let local_registry = shared.settings.kubernetes.is_none();
            if local_registry && announce.service != peer.service_account {
                return refuse(format!(
                    "{peer} may not announce an instance of service {:?}: locally a workload's \
                     service account is its service's name, and a proxy announces only its own \
                     workload",
                    announce.service
                ));
            }
            announce.identity = Some(peer);
        }
        // Nobody proved anything on the plaintext port.
        None => announce.identity = None,
    }
    let body = serde_json::to_vec(&announce).unwrap_or_else(|_| bytes.to_vec());
    next.run(Request::from_parts(parts, Body::from(body))).await
}

/// `/v1/proxies/{instance}[/rest]` -> (instance, rest).
fn proxy_route(path: &str) -> Option<(String, String)> {
    let rest = path.strip_prefix("/v1/proxies/")?;
    let (instance, rest) = rest.split_once('/').unwrap_or((rest, ""));
    (!instance.is_empty()).then(|| (instance.to_string(), rest.to_string()))
}

fn refuse(message: String) -> Response {
    tracing::warn!("{message}");
    ApiFailure::new(StatusCode::FORBIDDEN, message).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_routes_name_their_instance() {
        assert_eq!(
            proxy_route("/v1/proxies/reviews-v1-x"),
            Some(("reviews-v1-x".into(), "".into()))
        );
        assert_eq!(
            proxy_route("/v1/proxies/reviews-v1-x/snapshot"),
            Some(("reviews-v1-x".into(), "snapshot".into()))
        );
        assert_eq!(proxy_route("/v1/proxies"), None);
        assert_eq!(proxy_route("/v1/proxies/"), None);
        assert_eq!(proxy_route("/v1/services"), None);
    }
}

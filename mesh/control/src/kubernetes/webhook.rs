//! The admission webhooks. Validating: `kubectl apply -f` of a
//! VirtualService, DestinationRule or Gateway is checked by exactly the code
//! `meshctl validate` runs, before the API server stores it. Mutating: a pod
//! created in a namespace labelled for injection gets its sidecar from
//! `mesh_inject::patch`, the function behind `meshctl inject`.
//!
//! ```text
//! kubectl apply -f canary.yaml
//!   -> API server: schema (spec kept as written, see crd.rs)
//!   -> POST https://mesh-control.mesh-system.svc:443/validate   AdmissionReview{request}
//!        config::validate(object)   the same ConfigSet::parse as meshctl validate
//!   <- AdmissionReview{response: allowed, or denied with meshctl's words}
//!   -> stored in etcd -> the watch in source.rs -> a new snapshot version
//! ```
//!
//! istiod serves the same webhook (`istiod.istio-system.svc:443/validate`)
//! with a certificate it makes itself, and writes its CA into the webhook
//! configuration's `caBundle` so the API server trusts it. So do we:
//! [`ServingCertificate::generate`] makes a small CA and a serving
//! certificate for the Service's DNS names at every start (rcgen), and
//! [`publish_ca_bundle`] patches it into the `mesh-validator` and
//! `mesh-sidecar-injector` webhook configurations. Nothing to mount, nothing to rotate: a
//! restarted control plane makes a new pair and publishes it again.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::routing::post;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use mesh_api::config::Kind;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::{self, pki_types};
use tokio_util::sync::CancellationToken;

use super::config::{ObjectKey, validate};

/// Istio's webhook port; the Service maps 443 to it.
pub const WEBHOOK_PORT: u16 = 15017;

/// The ValidatingWebhookConfiguration whose caBundle mesh-control keeps current.
pub const VALIDATING_CONFIGURATION: &str = "mesh-validator";

/// The MutatingWebhookConfiguration (sidecar injection) likewise.
pub const MUTATING_CONFIGURATION: &str = "mesh-sidecar-injector";

/// Why the webhook could not start.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("cannot make the webhook's serving certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("the webhook's TLS settings are invalid: {0}")]
    Tls(#[from] rustls::Error),
    #[error(
        "the webhook cannot listen on {addr}: {error}; choose another address with \
         --webhook-listen or MESH_WEBHOOK_LISTEN (`off` runs without it)"
    )]
    Bind {
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error(
        "cannot write the webhooks' CA into the webhook configuration {name}: {error}; \
         is it applied (kubectl apply -k k8s/overlays/kind), and may mesh-control's \
         ServiceAccount get and patch it?"
    )]
    CaBundle { name: String, error: kube::Error },
}

// === the serving certificate ===

/// A CA made at start, and the serving certificate it signed.
pub struct ServingCertificate {
    /// The CA, PEM: what goes into `caBundle`.
    pub ca_pem: String,
    /// The CA, DER (tests trust it directly).
    pub ca_der: pki_types::CertificateDer<'static>,
    chain: Vec<pki_types::CertificateDer<'static>>,
    key: pki_types::PrivatePkcs8KeyDer<'static>,
}

impl ServingCertificate {
    /// A fresh CA and a certificate for `dns_names`
    /// (`mesh-control.mesh-system.svc`, ...).
    pub fn generate(dns_names: &[String]) -> Result<Self, WebhookError> {
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca.distinguished_name
            .push(DnType::CommonName, "micromesh webhook CA");
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate()?)?;

        let mut leaf = CertificateParams::new(dns_names.to_vec())?;
        leaf.distinguished_name.push(
            DnType::CommonName,
            dns_names.first().cloned().unwrap_or_default(),
        );
        let leaf_key = KeyPair::generate()?;
        let leaf_cert = leaf.signed_by(&leaf_key, &ca)?;

        Ok(ServingCertificate {
            ca_pem: ca.pem(),
            ca_der: ca.der().clone(),
            chain: vec![leaf_cert.der().clone(), ca.der().clone()],
            key: pki_types::PrivatePkcs8KeyDer::from(leaf_key.serialize_der()),
        })
    }

    fn acceptor(&self) -> Result<TlsAcceptor, WebhookError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), self.key.clone_key().into())?;
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}

/// The DNS names the API server uses for a webhook behind Service
/// `service` in `namespace`.
pub fn service_dns_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
        format!("{service}.{namespace}"),
    ]
}

// === the review ===

/// Answer one AdmissionReview: allow a valid Istio resource, deny an
/// invalid one with every error, as `meshctl validate` words it.
pub fn review(review: AdmissionReview<DynamicObject>) -> AdmissionReview<DynamicObject> {
    let request: AdmissionRequest<DynamicObject> = match review.try_into() {
        Ok(request) => request,
        Err(e) => {
            return AdmissionResponse::invalid(format!(
                "not an AdmissionReview with a request: {e}"
            ))
            .into_review();
        }
    };
    let response = AdmissionResponse::from(&request);
    let (Some(kind), Some(object)) = (
        Kind::ALL
            .into_iter()
            .find(|k| k.as_str() == request.kind.kind),
        request.object.as_ref(),
    ) else {
        // Not one of ours (the configuration sends only ours), or a DELETE:
        // a resource that no longer validates must still be deletable.
        return response.into_review();
    };
    if !matches!(request.operation, Operation::Create | Operation::Update) {
        return response.into_review();
    }
    let key = ObjectKey {
        kind,
        namespace: request
            .namespace
            .clone()
            .or_else(|| object.metadata.namespace.clone())
            .unwrap_or_else(|| "default".into()),
        name: object
            .metadata
            .name
            .clone()
            .unwrap_or_else(|| request.name.clone()),
    };
    match validate(&key, object) {
        Ok(_) => response.into_review(),
        Err(errors) => {
            tracing::info!("refused {}: {errors}", key.id());
            response
                .deny(format!(
                    "micromesh refused it (as `meshctl validate` would):\n{errors}"
                ))
                .into_review()
        }
    }
}

/// Answer one pod's AdmissionReview with the sidecar as a JSON Patch, the
/// same change `meshctl inject` prints. A pod the mesh cannot serve is
/// refused with the reason, as istiod's injector refuses it.
pub fn inject_review(
    review: AdmissionReview<DynamicObject>,
    settings: &mesh_inject::Settings,
) -> AdmissionReview<DynamicObject> {
    let request: AdmissionRequest<DynamicObject> = match review.try_into() {
        Ok(request) => request,
        Err(e) => {
            return AdmissionResponse::invalid(format!(
                "not an AdmissionReview with a request: {e}"
            ))
            .into_review();
        }
    };
    let response = AdmissionResponse::from(&request);
    let Some(object) = request.object.as_ref() else {
        return response.into_review();
    };
    let mut object = serde_json::to_value(object).expect("a DynamicObject serializes");
    // The API server may send the pod before it has a name (generateName);
    // injection only needs its namespace for messages.
    if object["metadata"]["namespace"].is_null()
        && let Some(namespace) = &request.namespace
    {
        object["metadata"]["namespace"] = json!(namespace);
    }
    match mesh_inject::patch(&object, settings) {
        Ok(patch) if patch.0.is_empty() => response.into_review(),
        Ok(patch) => match response.with_patch(patch) {
            Ok(patched) => patched.into_review(),
            Err(e) => AdmissionResponse::invalid(e.to_string()).into_review(),
        },
        Err(e) => {
            tracing::info!("refused to inject a pod: {e}");
            AdmissionResponse::from(&request)
                .deny(format!("micromesh cannot add its sidecar: {e}"))
                .into_review()
        }
    }
}

async fn validate_handler(
    Json(body): Json<AdmissionReview<DynamicObject>>,
) -> Json<AdmissionReview<DynamicObject>> {
    Json(review(body))
}

/// `POST /validate` and `POST /inject`.
pub fn router(inject: mesh_inject::Settings) -> Router {
    let inject = Arc::new(inject);
    Router::new()
        .route("/validate", post(validate_handler))
        .route(
            "/inject",
            post(
                move |Json(body): Json<AdmissionReview<DynamicObject>>| async move {
                    Json(inject_review(body, &inject))
                },
            ),
        )
}

// === serving ===

/// Bind the webhook's port now (so a taken port fails the start).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, WebhookError> {
    TcpListener::bind(addr)
        .await
        .map_err(|error| WebhookError::Bind { addr, error })
}

/// Serve HTTPS on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    certificate: &ServingCertificate,
    inject: mesh_inject::Settings,
    shutdown: CancellationToken,
) -> Result<(), WebhookError> {
    let acceptor = certificate.acceptor()?;
    let app = router(inject);
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!("webhook accept failed: {e}");
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let tls = match acceptor.accept(stream).await {
                Ok(tls) => tls,
                Err(e) => {
                    tracing::debug!(%peer, "webhook TLS handshake failed: {e}");
                    return;
                }
            };
            let service = hyper::service::service_fn(move |request| {
                tower::ServiceExt::oneshot(app.clone(), request)
            });
            let builder =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            if let Err(e) = builder
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .await
            {
                tracing::debug!(%peer, "webhook connection ended: {e}");
            }
        });
    }
}

/// Write the CA into every webhook of both configurations (a strategic
/// merge patch keyed by webhook name, so nothing else changes).
pub async fn publish_ca_bundle(client: kube::Client, ca_pem: &str) -> Result<(), WebhookError> {
    let bundle = ByteString(ca_pem.as_bytes().to_vec());
    let validating: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    let names = validating
        .get(VALIDATING_CONFIGURATION)
        .await
        .map_err(|error| ca_bundle_error(VALIDATING_CONFIGURATION, error))?
        .webhooks
        .into_iter()
        .flatten()
        .map(|w| w.name);
    patch_bundle(&validating, VALIDATING_CONFIGURATION, names, &bundle).await?;
    let mutating: Api<MutatingWebhookConfiguration> = Api::all(client);
    let names = mutating
        .get(MUTATING_CONFIGURATION)
        .await
        .map_err(|error| ca_bundle_error(MUTATING_CONFIGURATION, error))?
        .webhooks
        .into_iter()
        .flatten()
        .map(|w| w.name);
    patch_bundle(&mutating, MUTATING_CONFIGURATION, names, &bundle).await?;
    tracing::info!(
        "published the webhooks' CA in {VALIDATING_CONFIGURATION} and {MUTATING_CONFIGURATION}"
    );
    Ok(())
}

fn ca_bundle_error(name: &str, error: kube::Error) -> WebhookError {
    WebhookError::CaBundle {
        name: name.to_string(),
        error,
    }
}

async fn patch_bundle<K>(
    api: &Api<K>,
    name: &str,
    webhooks: impl Iterator<Item = String>,
    bundle: &ByteString,
) -> Result<(), WebhookError>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let webhooks: Vec<_> = webhooks
        .map(|name| json!({"name": name, "clientConfig": {"caBundle": bundle}}))
        .collect();
    let patch = Patch::Strategic(json!({ "webhooks": webhooks }));
    api.patch(name, &PatchParams::default(), &patch)
        .await
        .map_err(|error| ca_bundle_error(name, error))?;
    Ok(())
}

//! The proxy's identity worker: its key, its certificate, and their renewal.
//!
//! ```text
//! start:       make a key (ECDSA P-256; it never leaves this process)
//!              CSR {its SPIFFE ID} --POST /v1/certificates (bootstrap token)--> control plane CA
//!              <-- chain [leaf, root], trust bundle, validity
//!              publish CertifiedKey on a watch channel
//! half-life:   a new key, a new CSR, publish again (on failure: retry with backoff,
//!              the current certificate keeps serving until it expires)
//! ```
//!
//! One task owns the schedule, as ztunnel's `SecretManager` does, and
//! every reader (the TLS configs in `tls.rs`, the admin's `/certs`) takes
//! the latest [`CertifiedKey`] from a `tokio::sync::watch` receiver without a
//! lock held across a handshake. The CA is behind the small [`CaClient`]
//! trait: the proxy uses [`HttpCa`], tests a fake with paused time.
//!
//! Istio renews at half of the certificate's life too (its
//! `SECRET_GRACE_PERIOD_RATIO` is 0.5), and makes a new key each time.
//!
//! The bootstrap token comes either as a value (`MESH_IDENTITY_TOKEN`, what
//! `meshctl up` hands each proxy) or as a file (`MESH_IDENTITY_TOKEN_FILE`,
//! on a cluster: the projected service-account token the injector mounts,
//! Istio's `istio-token`). The kubelet rewrites that file before the token
//! expires (an hour), so [`BootstrapToken::read`] opens it again for every
//! CSR instead of keeping the first token it saw.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mesh_api::identity::{CertificateRequest, CertificateResponse, Identity};
use rcgen::{CertificateParams, KeyPair, SanType};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// First retry delay after a failed request; doubles up to [`RETRY_MAX`].
pub const RETRY_MIN: Duration = Duration::from_millis(200);
pub const RETRY_MAX: Duration = Duration::from_secs(10);

/// Why a certificate could not be had.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot make a key or CSR: {0}")]
    Key(String),
    #[error("the CA at {url} refused: {status}: {message}")]
    Refused {
        url: String,
        status: u16,
        message: String,
    },
    #[error("cannot reach the CA at {url}: {error}")]
    Unreachable { url: String, error: String },
    #[error("the CA's answer is unusable: {0}")]
    BadAnswer(String),
    #[error(
        "cannot read the bootstrap token from {path} ({error}); on a cluster the kubelet \
         mounts it (the injected `istio-token` volume): check the pod has that volume"
    )]
    TokenFile { path: String, error: String },
}

/// What proves this proxy's identity to the CA, and where it comes from.
#[derive(Clone, PartialEq, Eq)]
pub enum BootstrapToken {
    /// A token given once (`MESH_IDENTITY_TOKEN`).
    Value(String),
    /// A file read again at each CSR (`MESH_IDENTITY_TOKEN_FILE`): the
    /// kubelet rotates a projected service-account token in place.
    File(std::path::PathBuf),
}

impl BootstrapToken {
    /// The token to send now.
    pub async fn read(&self) -> Result<String, IdentityError> {
        match self {
            BootstrapToken::Value(token) => Ok(token.clone()),
            BootstrapToken::File(path) => {
                let fail = |error: String| IdentityError::TokenFile {
                    path: path.display().to_string(),
                    error,
                };
                let text = tokio::fs::read_to_string(path)
                    .await
                    .map_err(|e| fail(e.to_string()))?;
                let token = text.trim();
                // A JWT is base64url parts joined by dots; anything else
                // would not even make a valid header.
                let fits = |b: u8| b.is_ascii_alphanumeric() || b"-_.".contains(&b);
                if token.is_empty() || !token.bytes().all(fits) {
                    return Err(fail("the file does not hold a token".into()));
                }
                Ok(token.to_string())
            }
        }
    }
}

impl From<String> for BootstrapToken {
    fn from(token: String) -> Self {
        BootstrapToken::Value(token)
    }
}

impl std::fmt::Debug for BootstrapToken {
    /// Never print the token itself.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BootstrapToken::Value(_) => f.write_str("BootstrapToken::Value(hidden)"),
            BootstrapToken::File(path) => write!(f, "BootstrapToken::File({})", path.display()),
        }
    }
}

/// The current key and certificate: what a TLS config serves.
pub struct CertifiedKey {
    pub identity: Identity,
    /// PKCS#8 DER of the private key.
    pub key_der: Vec<u8>,
    /// The chain as PEM, leaf first (for `/certs` and `meshctl identity`).
    pub chain_pem: Vec<String>,
    /// The roots a peer's chain must end at, PEM.
    pub trust_bundle_pem: Vec<String>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// When the worker will renew it.
    pub renew_at: SystemTime,
}

impl std::fmt::Debug for CertifiedKey {
    /// Never print the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertifiedKey")
            .field("identity", &self.identity)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// What the proxy's readers hold: `None` until the first certificate.
pub type Current = watch::Receiver<Option<Arc<CertifiedKey>>>;

/// A proxy without a certificate (no CA offered, or no bootstrap token).
pub fn none() -> Current {
    watch::channel(None).1
}

/// `GET /certs` on the admin port (`admin.rs`), for `meshctl identity`.
pub fn describe(current: &Current, enabled: bool) -> mesh_api::identity::WorkloadCerts {
    let ms = |t: SystemTime| {
        t.duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    };
    match current.borrow().as_ref() {
        Some(certified) => mesh_api::identity::WorkloadCerts {
            identity: Some(certified.identity.clone()),
            reason: None,
            cert_chain: certified.chain_pem.clone(),
            trust_bundle: certified.trust_bundle_pem.clone(),
            not_before_ms: ms(certified.not_before),
            not_after_ms: ms(certified.not_after),
            renew_at_ms: ms(certified.renew_at),
        },
        None => mesh_api::identity::WorkloadCerts {
            reason: Some(if enabled {
                "no certificate yet: the CA has not answered (see this proxy's log)".into()
            } else {
                "this proxy keeps no certificate: it was started without MESH_IDENTITY_TOKEN or \
                 MESH_IDENTITY_TOKEN_FILE (meshctl up hands one to each proxy it starts)"
                    .into()
            }),
            ..Default::default()
        },
    }
}

/// A certificate authority that signs CSRs.
pub trait CaClient: Send + Sync + 'static {
    fn sign(
        &self,
        request: CertificateRequest,
    ) -> impl Future<Output = Result<CertificateResponse, IdentityError>> + Send;
}

// === HttpCa ===

/// The control plane's CA over its HTTP API.
pub struct HttpCa {
    pub http: reqwest::Client,
    /// `http://127.0.0.1:15010`
    pub base: String,
    /// The bootstrap token that proves this proxy's identity
    /// (`MESH_IDENTITY_TOKEN`, `mesh_api::identity::bootstrap_token`, or the
    /// service-account token file of `MESH_IDENTITY_TOKEN_FILE`).
    pub bootstrap_token: BootstrapToken,
}

impl CaClient for HttpCa {
    async fn sign(
        &self,
        request: CertificateRequest,
    ) -> Result<CertificateResponse, IdentityError> {
        let url = format!("{}/v1/certificates", self.base);
        let token = self.bootstrap_token.read().await?;
        let response = self
            .http
            .post(&url)
            // Replaces the write token the client sends by default.
            .bearer_auth(&token)
            .json(&request)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .map_err(|e| IdentityError::Unreachable {
                url: url.clone(),
                error: e.to_string(),
            })?;
        let status = response.status();
        if !status.is_success() {
            let message = response.text().await.unwrap_or_default();
            return Err(IdentityError::Refused {
                url,
                status: status.as_u16(),
                message: message.trim().to_string(),
            });
        }
        response
            .json()
            .await
            .map_err(|e| IdentityError::BadAnswer(e.to_string()))
    }
}

// === the worker ===

/// Start the worker; the receiver sees each new certificate.
pub fn start<C: CaClient>(
    identity: Identity,
    ca: C,
    shutdown: CancellationToken,
) -> (Current, tokio::task::JoinHandle<()>) {
    let (tx, rx) = watch::channel(None);
    let task = tokio::spawn(run(identity, ca, tx, shutdown));
    (rx, task)
}

async fn run<C: CaClient>(
    identity: Identity,
    ca: C,
    tx: watch::Sender<Option<Arc<CertifiedKey>>>,
    shutdown: CancellationToken,
) {
    let mut failures = 0u32;
    loop {
        let delay = match fetch(&identity, &ca).await {
            Ok(certified) => {
                failures = 0;
                let wait = certified
                    .renew_at
                    .duration_since(SystemTime::now())
                    .unwrap_or(Duration::ZERO);
                tracing::info!(
                    %identity,
                    valid_for_s = certified.not_after.duration_since(SystemTime::now()).map_or(0, |d| d.as_secs()),
                    renew_in_s = wait.as_secs(),
                    "workload certificate issued"
                );
                tx.send_replace(Some(Arc::new(certified)));
                wait
            }
            Err(error) => {
                failures += 1;
                let delay = RETRY_MIN
                    .saturating_mul(1 << (failures - 1).min(16))
                    .min(RETRY_MAX);
                // The first failure is news; then every doubling.
                if failures.is_power_of_two() {
                    tracing::warn!(%identity, failures, %error, retry_in_ms = delay.as_millis() as u64,
                        "no workload certificate; the current one (if any) keeps serving");
                }
                delay
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// A new key, a CSR for it, the CA's answer checked against them.
async fn fetch<C: CaClient>(identity: &Identity, ca: &C) -> Result<CertifiedKey, IdentityError> {
    let key = KeyPair::generate().map_err(|e| IdentityError::Key(e.to_string()))?;
    let mut params = CertificateParams::default();
    params.subject_alt_names =
        vec![SanType::URI(identity.spiffe_id().try_into().map_err(
            |e: rcgen::Error| IdentityError::Key(e.to_string()),
        )?)];
    let csr = params
        .serialize_request(&key)
        .and_then(|csr| csr.pem())
        .map_err(|e| IdentityError::Key(e.to_string()))?;
    let answer = ca
        .sign(CertificateRequest {
            identity: identity.clone(),
            csr,
        })
        .await?;
    if answer.cert_chain.is_empty() || answer.trust_bundle.is_empty() {
        return Err(IdentityError::BadAnswer(
            "no certificate chain or no trust bundle".into(),
        ));
    }
    let not_before = UNIX_EPOCH + Duration::from_millis(answer.not_before_ms);
    let not_after = UNIX_EPOCH + Duration::from_millis(answer.not_after_ms);
    // Half of what is left of its life, from now (its validity starts a
    // little in the past to allow for clock skew).
    let now = SystemTime::now();
    let left = not_after.duration_since(now).unwrap_or(Duration::ZERO);
    Ok(CertifiedKey {
        identity: identity.clone(),
        key_der: key.serialize_der(),
        chain_pem: answer.cert_chain,
        trust_bundle_pem: answer.trust_bundle,
        not_before,
        not_after,
        renew_at: now + left / 2,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A CA that records each CSR and answers with a certificate valid for
    /// `ttl` from now; the first `fail_first` calls fail.
    #[derive(Clone)]
    struct FakeCa {
        ttl: Duration,
        calls: Arc<AtomicU32>,
        fail_first: u32,
        csrs: Arc<Mutex<Vec<String>>>,
    }

    impl CaClient for FakeCa {
        async fn sign(
            &self,
            request: CertificateRequest,
        ) -> Result<CertificateResponse, IdentityError> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            self.csrs.lock().unwrap().push(request.csr.clone());
            if n < self.fail_first {
                return Err(IdentityError::Unreachable {
                    url: "fake".into(),
                    error: "down".into(),
                });
            }
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_millis() as u64;
            Ok(CertificateResponse {
                cert_chain: vec![format!("leaf {n}"), "root".into()],
                trust_bundle: vec!["root".into()],
                not_before_ms: now,
                not_after_ms: now + self.ttl.as_millis() as u64,
            })
        }
    }

    fn fake(ttl: Duration, fail_first: u32) -> FakeCa {
        FakeCa {
            ttl,
            calls: Arc::default(),
            fail_first,
            csrs: Arc::default(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_certificate_is_published_and_renewed_at_half_life() {
        let ca = fake(Duration::from_secs(3600), 0);
        let reviews = Identity::new("default", "reviews");
        let (mut current, _task) = start(reviews.clone(), ca.clone(), CancellationToken::new());

        current.changed().await.unwrap();
        let first = current.borrow().clone().unwrap();
        assert_eq!(first.identity, reviews);
        assert_eq!(first.chain_pem[0], "leaf 0");
        // The CSR names the identity and carries the public key only: the
        // private key stays here.
        let csr = ca.csrs.lock().unwrap()[0].clone();
        let parsed = rcgen::CertificateSigningRequestParams::from_pem(&csr);
        assert!(parsed.is_ok(), "a valid, self-signed CSR");
        assert!(!csr.contains("PRIVATE KEY"));

        // Paused time: the next renewal comes at half of the hour, not before.
        tokio::time::sleep(Duration::from_secs(1700)).await;
        assert_eq!(
            ca.calls.load(Ordering::SeqCst),
            1,
            "no renewal before half-life"
        );
        current.changed().await.unwrap();
        let second = current.borrow().clone().unwrap();
        assert_eq!(second.chain_pem[0], "leaf 1");
        assert_ne!(
            first.key_der, second.key_der,
            "each renewal makes a new key"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_ca_that_is_down_is_retried_with_backoff() {
        let ca = fake(Duration::from_secs(3600), 3);
        let (mut current, _task) = start(
            Identity::new("default", "reviews"),
            ca.clone(),
            CancellationToken::new(),
        );
        current.changed().await.unwrap();
        assert_eq!(
            ca.calls.load(Ordering::SeqCst),
            4,
            "three failures, then a certificate"
        );
        assert_eq!(current.borrow().as_ref().unwrap().chain_pem[0], "leaf 3");
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_stops_the_worker() {
        let ca = fake(Duration::from_secs(10), 0);
        let shutdown = CancellationToken::new();
        let (mut current, task) = start(Identity::new("default", "a"), ca, shutdown.clone());
        current.changed().await.unwrap();
        shutdown.cancel();
        task.await.unwrap();
    }
}

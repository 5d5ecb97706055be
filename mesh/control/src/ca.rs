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
//!
//! ## Rotating the root
//!
//! `POST /v1/ca/rotate` (write token; `meshctl rotate-root`) replaces the
//! root without failing a request, in the order Istio's "plug-in CA certificate rotation" guide
//! has an operator follow by hand: trust first, then sign, then forget.
//!
//! ```text
//! 1. announce  a new root is made; the trust bundle every snapshot carries
//!              becomes [new, old], still signed with the old. Wait until
//!              every live proxy has ACKed that version (at most 10 s):
//!              now every peer trusts a leaf of either root.
//! 2. switch    the new root signs; the old one stays in the bundle until
//!              its last leaf expires (now + the leaf lifetime). Proxies
//!              move to leaves of the new root as they renew (half-life).
//! 3. retire    that time passed: the bundle is [new] again, and a leaf
//!              of the old root is refused everywhere.
//! ```
//!
//! The old root, while it retires, is kept beside the current one: locally
//! in `ca-retiring.json` (its certificate and when it retires). Rotation
//! is a local-mode operation for now: on a cluster the Secret
//! `mesh-ca-root` is read with the same optional `ca-retiring.json` key,
//! but the endpoint refuses (replace the Secret's keys by hand, as Istio's
//! `cacerts`, and restart the control plane).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
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
/// The roots being retired (`[{certPem, untilMs}]`), beside the current one.
pub const RETIRING_FILE: &str = "ca-retiring.json";

/// How long a rotation waits for every proxy to ACK the bundle with the
/// new root before the new root signs anyway.
pub const ROTATION_ACK_WAIT: Duration = Duration::from_secs(10);

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
    #[error("{0}")]
    Rotation(String),
}

/// An issued certificate, ready to send.
#[derive(Clone, Debug)]
pub struct Issued {
    pub leaf_pem: String,
    /// The root that signed it (during a rotation, not every root).
    pub root_pem: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

/// The mesh's roots (the one that signs, and any being rotated in or
/// out), and how long leaves live.
pub struct Ca {
    roots: RwLock<Roots>,
    ttl: Duration,
    trust_domain: String,
    /// Where the roots are kept locally; `None` on a cluster (a Secret).
    dir: Option<PathBuf>,
    /// Wakes the retirement task when a rotation sets a new deadline.
    pub changed: tokio::sync::Notify,
}

/// The roots at one moment.
struct Roots {
    signer: Arc<Signer>,
    /// Announced, not yet signing (step 1 of a rotation).
    next: Option<Arc<Signer>>,
    retiring: Vec<Retiring>,
}

/// A root with its key.
struct Signer {
    issuer: Issuer<'static, KeyPair>,
    root_pem: String,
}

/// A root that signs no more, trusted until its last leaf expires.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Retiring {
    pub cert_pem: String,
    pub until_ms: u64,
}

/// What a rotation did, for the operator.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rotation {
    /// The new root, PEM.
    pub root: String,
    /// When the old root leaves the trust bundle (ms since 1970).
    pub old_root_retires_at_ms: u64,
    /// Proxies that had not ACKed the bundle with the new root when it
    /// started signing (none, unless one is stuck or gone).
    pub late_proxies: Vec<String>,
}

impl Roots {
    fn bundle(&self) -> Vec<String> {
        self.next
            .iter()
            .map(|n| n.root_pem.clone())
            .chain([self.signer.root_pem.clone()])
            .chain(self.retiring.iter().map(|r| r.cert_pem.clone()))
            .collect()
    }
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
        Ok(Ca::with(
            Signer::generate(trust_domain)?,
            Vec::new(),
            ttl,
            trust_domain,
            None,
        ))
    }

    fn with(
        signer: Signer,
        retiring: Vec<Retiring>,
        ttl: Duration,
        trust_domain: &str,
        dir: Option<PathBuf>,
    ) -> Ca {
        Ca {
            roots: RwLock::new(Roots {
                signer: Arc::new(signer),
                next: None,
                retiring,
            }),
            ttl,
            trust_domain: trust_domain.to_string(),
            dir,
            changed: tokio::sync::Notify::new(),
        }
    }

    /// A root kept as PEM (the state directory's files, or a Secret's
    /// keys), and the roots it is retiring.
    pub fn from_pem(
        cert_pem: &str,
        key_pem: &str,
        retiring: Vec<Retiring>,
        ttl: Duration,
    ) -> Result<Ca, String> {
        let signer = Signer::from_pem(cert_pem, key_pem)?;
        let trust_domain = mesh_api::identity::DEFAULT_TRUST_DOMAIN;
        Ok(Ca::with(signer, retiring, ttl, trust_domain, None))
    }
}

// === impl Signer ===

impl Signer {
    fn generate(trust_domain: &str) -> Result<Signer, CaError> {
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
        Ok(Signer {
            root_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Signer, String> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| format!("the key: {e}"))?;
        let issuer =
            Issuer::from_ca_cert_pem(cert_pem, key).map_err(|e| format!("the certificate: {e}"))?;
        Ok(Signer {
            issuer,
            root_pem: cert_pem.to_string(),
        })
    }
}

// === impl Ca ===

impl Ca {
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
            let bad = |reason| CaError::BadRoot {
                dir: dir.to_path_buf(),
                reason,
            };
            let retiring_path = dir.join(RETIRING_FILE);
            let retiring = match std::fs::read_to_string(&retiring_path) {
                Ok(text) => {
                    serde_json::from_str(&text).map_err(|e| bad(format!("{RETIRING_FILE}: {e}")))?
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                Err(e) => return Err(io("read", &retiring_path, e)),
            };
            let signer = Signer::from_pem(&cert, &key).map_err(bad)?;
            let ca = Ca::with(signer, retiring, ttl, trust_domain, Some(dir.to_path_buf()));
            ca.retire_expired(SystemTime::now())?;
            return Ok(ca);
        }
        let signer = Signer::generate(trust_domain)?;
        // The certificate first: a crash between the two leaves no key
        // without its certificate (the key's presence means "made").
        std::fs::write(&cert_path, &signer.root_pem).map_err(|e| io("write", &cert_path, e))?;
        write_private(&key_path, &signer.issuer.key().serialize_pem())?;
        tracing::info!(dir = %dir.display(), "made the mesh's root CA");
        Ok(Ca::with(
            signer,
            Vec::new(),
            ttl,
            trust_domain,
            Some(dir.to_path_buf()),
        ))
    }

    fn roots(&self) -> std::sync::RwLockReadGuard<'_, Roots> {
        // A poisoned lock only means a panic elsewhere mid-read; every
        // write below replaces whole fields.
        self.roots.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The signing root's private key (PEM), for the Secret that keeps it
    /// (`kubernetes/ca_root.rs`).
    pub fn key_pem(&self) -> String {
        self.roots().signer.issuer.key().serialize_pem()
    }

    /// The root that signs now (PEM).
    pub fn root_pem(&self) -> String {
        self.roots().signer.root_pem.clone()
    }

    /// The roots proxies trust, PEM, newest first: what every snapshot
    /// carries (`watch.rs`) and every CSR's answer. One root, or two
    /// during a rotation.
    pub fn trust_bundle(&self) -> Vec<String> {
        self.roots().bundle()
    }

    /// The roots being retired, and until when.
    pub fn retiring(&self) -> Vec<Retiring> {
        self.roots().retiring.clone()
    }

    // --- rotation (see the module docs) ---

    /// Step 1: a new root joins the bundle; the current one still signs.
    pub fn announce_next(&self) -> Result<(), CaError> {
        if self.dir.is_none() {
            return Err(CaError::Rotation(
                "rotating the root is a local-mode operation for now: on a cluster, replace \
                 ca-cert.pem and ca-key.pem in the Secret mesh-ca-root (keep the old \
                 certificate in ca-retiring.json) and restart mesh-control"
                    .into(),
            ));
        }
        let next = Signer::generate(&self.trust_domain)?;
        let mut roots = self.roots.write().unwrap_or_else(|e| e.into_inner());
        if roots.next.is_some() {
            return Err(CaError::Rotation(
                "a rotation is already under way; wait for it to finish".into(),
            ));
        }
        roots.next = Some(Arc::new(next));
        Ok(())
    }

    /// Step 2: the announced root signs; the old one retires when its
    /// last leaf expires. Kept on disk before it takes effect.
    pub fn switch_to_next(&self) -> Result<Retiring, CaError> {
        let mut roots = self.roots.write().unwrap_or_else(|e| e.into_inner());
        let Some(next) = roots.next.clone() else {
            return Err(CaError::Rotation("no new root was announced".into()));
        };
        let retiring = Retiring {
            cert_pem: roots.signer.root_pem.clone(),
            // Every leaf of the old root was issued before now and lives
            // `ttl`: none is valid after this.
            until_ms: unix_ms(SystemTime::now() + self.ttl),
        };
        let mut all = roots.retiring.clone();
        all.push(retiring.clone());
        self.persist(&next, &all)?;
        roots.signer = next;
        roots.next = None;
        roots.retiring = all;
        drop(roots);
        self.changed.notify_one();
        tracing::info!(
            until_ms = retiring.until_ms,
            "the new root signs; the old one retires"
        );
        Ok(retiring)
    }

    /// A rotation that could not finish: the announced root is forgotten.
    pub fn abandon_next(&self) {
        self.roots.write().unwrap_or_else(|e| e.into_inner()).next = None;
    }

    /// Step 3: drop the roots whose last leaf has expired by `now`.
    /// Returns whether the bundle changed.
    pub fn retire_expired(&self, now: SystemTime) -> Result<bool, CaError> {
        let mut roots = self.roots.write().unwrap_or_else(|e| e.into_inner());
        let now_ms = unix_ms(now);
        let kept: Vec<Retiring> = roots
            .retiring
            .iter()
            .filter(|r| r.until_ms > now_ms)
            .cloned()
            .collect();
        if kept.len() == roots.retiring.len() {
            return Ok(false);
        }
        if let Some(dir) = &self.dir {
            write_retiring(dir, &kept)?;
        }
        roots.retiring = kept;
        tracing::info!("a retired root left the trust bundle");
        Ok(true)
    }

    /// When the next retiring root leaves the bundle.
    pub fn next_retirement(&self) -> Option<SystemTime> {
        self.roots()
            .retiring
            .iter()
            .map(|r| UNIX_EPOCH + Duration::from_millis(r.until_ms))
            .min()
    }

    /// Write `signer` as the current root and `retiring` beside it. The
    /// retiring list first (it names the old root, still on disk as the
    /// current one), then the certificate and the key, each by rename; a
    /// crash between those two renames leaves a pair that does not match,
    /// which the next start reports (`BadRoot`).
    fn persist(&self, signer: &Signer, retiring: &[Retiring]) -> Result<(), CaError> {
        let Some(dir) = &self.dir else {
            return Ok(());
        };
        write_retiring(dir, retiring)?;
        let cert_path = dir.join(CERT_FILE);
        let key_path = dir.join(KEY_FILE);
        let cert_new = dir.join(format!("{CERT_FILE}.new"));
        let key_new = dir.join(format!("{KEY_FILE}.new"));
        let _ = std::fs::remove_file(&key_new);
        std::fs::write(&cert_new, &signer.root_pem).map_err(|e| io_error("write", &cert_new, e))?;
        write_private(&key_new, &signer.issuer.key().serialize_pem())?;
        std::fs::rename(&cert_new, &cert_path).map_err(|e| io_error("rename", &cert_path, e))?;
        std::fs::rename(&key_new, &key_path).map_err(|e| io_error("rename", &key_path, e))?;
        Ok(())
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
        let signer = self.roots().signer.clone();
        let leaf = params
            .signed_by(&csr.public_key, &signer.issuer)
            .map_err(|e| CaError::Sign(e.to_string()))?;
        tracing::info!(%identity, ttl_s = self.ttl.as_secs(), "issued a workload certificate");
        Ok(Issued {
            leaf_pem: leaf.pem(),
            root_pem: signer.root_pem.clone(),
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
            cert_chain: vec![issued.leaf_pem.clone(), issued.root_pem.clone()],
            trust_bundle: self.trust_bundle(),
            not_before_ms: unix_ms(issued.not_before),
            not_after_ms: unix_ms(issued.not_after),
        }
    }
}

fn io_error(action: &'static str, path: &Path, error: std::io::Error) -> CaError {
    CaError::Io {
        action,
        path: path.to_path_buf(),
        error,
    }
}

/// A file only this user may read (a root's key).
fn write_private(path: &Path, text: &str) -> Result<(), CaError> {
    use std::io::Write;
    let mut file = private_file(path).map_err(|e| io_error("create", path, e))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| io_error("write", path, e))
}

fn write_retiring(dir: &Path, retiring: &[Retiring]) -> Result<(), CaError> {
    let path = dir.join(RETIRING_FILE);
    let text = serde_json::to_string_pretty(retiring).map_err(|e| CaError::Sign(e.to_string()))?;
    let new = dir.join(format!("{RETIRING_FILE}.new"));
    std::fs::write(&new, text).map_err(|e| io_error("write", &new, e))?;
    std::fs::rename(&new, &path).map_err(|e| io_error("rename", &path, e))
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
        .route("/v1/ca/rotate", post(rotate))
        .with_state(shared)
}

// === POST /v1/ca/rotate ===

/// Rotate the root (module docs): announce, wait for the ACKs, switch.
/// Behind the write token, checked here (this router is not behind the
/// token layer, for the CSR endpoint's sake).
async fn rotate(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
) -> Result<Pretty<Rotation>, ApiFailure> {
    let allowed = shared
        .token
        .as_ref()
        .is_some_and(|token| token.accepts(headers.get(header::AUTHORIZATION)));
    if !allowed {
        return Err(ApiFailure::new(
            StatusCode::UNAUTHORIZED,
            "rotating the mesh's root takes the write token as `Authorization: Bearer` \
             (meshctl keeps it in the run's state directory)",
        ));
    }
    let Some(ca) = &shared.ca else {
        return Err(ApiFailure::new(
            StatusCode::NOT_FOUND,
            "this control plane runs without a CA: there is no root to rotate",
        ));
    };
    let refused = |e: CaError| {
        tracing::warn!(error = %e, "root rotation refused");
        ApiFailure::new(StatusCode::CONFLICT, e.to_string())
    };
    // 1. announce: every proxy trusts both roots before a leaf of the new
    //    one exists.
    ca.announce_next().map_err(refused)?;
    let announced = {
        let mut model = shared.lock().await;
        shared.trust_bundle_changed(&mut model, ca.trust_bundle())
    };
    tracing::info!(version = announced, "a new root joins the trust bundle");
    let deadline = tokio::time::Instant::now() + ROTATION_ACK_WAIT;
    let mut versions = shared.subscribe();
    let late_proxies = loop {
        // Registered before looking, so an ACK between the look and the
        // wait is not missed.
        let acked = shared.acks.notified();
        tokio::pin!(acked);
        acked.as_mut().enable();
        let late: Vec<String> = {
            let model = shared.lock().await;
            model
                .registry
                .proxies(std::time::Instant::now())
                .into_iter()
                .filter(|p| p.live && p.acked_version.is_none_or(|v| v < announced))
                .map(|p| p.announce.instance)
                .collect()
        };
        if late.is_empty() || tokio::time::Instant::now() >= deadline {
            break late;
        }
        // Look again at the next ACK (or a proxy that leaves: a version).
        tokio::select! {
            _ = &mut acked => {}
            _ = versions.changed() => {}
            _ = tokio::time::sleep_until(deadline) => {}
            _ = shared.shutdown.cancelled() => {
                ca.abandon_next();
                return Err(ApiFailure::new(StatusCode::SERVICE_UNAVAILABLE, "shutting down"));
            }
        }
    };
    if !late_proxies.is_empty() {
        tracing::warn!(
            ?late_proxies,
            "the new root signs though these proxies have not ACKed it"
        );
    }
    // 2. switch: the new root signs, the old one retires.
    let retiring = ca.switch_to_next().map_err(|e| {
        ca.abandon_next();
        ApiFailure::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    })?;
    {
        let mut model = shared.lock().await;
        shared.trust_bundle_changed(&mut model, ca.trust_bundle());
    }
    Ok(Pretty(Rotation {
        root: ca.root_pem(),
        old_root_retires_at_ms: retiring.until_ms,
        late_proxies,
    }))
}

/// Step 3 of every rotation, in the background: when a retiring root's
/// last leaf has expired, it leaves the trust bundle (a new version).
pub async fn retire_roots(shared: Arc<Shared>) {
    let Some(ca) = &shared.ca else {
        return;
    };
    loop {
        let wait = ca.next_retirement().map(|at| {
            at.duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO)
        });
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            // A rotation set a new deadline.
            _ = ca.changed.notified() => continue,
            _ = async {
                match wait {
                    Some(wait) => tokio::time::sleep(wait).await,
                    None => std::future::pending().await,
                }
            } => {}
        }
        match ca.retire_expired(SystemTime::now()) {
            Ok(true) => {
                let mut model = shared.lock().await;
                shared.trust_bundle_changed(&mut model, ca.trust_bundle());
            }
            Ok(false) => {}
            Err(error) => {
                tracing::warn!(%error, "could not retire a root; trying again in a second");
                tokio::select! {
                    _ = shared.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }
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
    fn a_rotation_trusts_first_then_signs_is_kept_on_disk_and_retires_the_old_root() {
        let dir = tempfile::tempdir().unwrap();
        let ttl = Duration::from_secs(10);
        let ca = Ca::load_or_create(dir.path(), "cluster.local", ttl).unwrap();
        let old = ca.root_pem();
        assert_eq!(ca.trust_bundle(), vec![old.clone()]);

        // 1. announced: trusted, not signing yet.
        ca.announce_next().unwrap();
        let bundle = ca.trust_bundle();
        assert_eq!(bundle.len(), 2);
        assert_eq!(bundle[1], old);
        assert_eq!(ca.root_pem(), old, "the old root still signs");
        assert!(ca.announce_next().is_err(), "one rotation at a time");

        // 2. switched: the new root signs, the old one retires in `ttl`.
        let retiring = ca.switch_to_next().unwrap();
        let new = ca.root_pem();
        assert_eq!(new, bundle[0]);
        assert_eq!(ca.trust_bundle(), [new.clone(), old.clone()]);
        assert_eq!(retiring.cert_pem, old);
        let reviews = Identity::new("default", "reviews");
        let (issued, _) = ca.issue_own(&reviews).unwrap();
        assert_eq!(issued.root_pem, new, "a leaf names the root that signed it");

        // A restart reads both roots back.
        let again = Ca::load_or_create(dir.path(), "cluster.local", ttl).unwrap();
        assert_eq!(again.trust_bundle(), ca.trust_bundle());
        assert_eq!(again.root_pem(), new);

        // 3. retired once its last leaf has expired, on disk too.
        let now = SystemTime::now();
        assert!(!ca.retire_expired(now).unwrap());
        assert!(
            ca.retire_expired(now + ttl + Duration::from_secs(1))
                .unwrap()
        );
        assert_eq!(ca.trust_bundle(), vec![new.clone()]);
        let again = Ca::load_or_create(dir.path(), "cluster.local", ttl).unwrap();
        assert_eq!(again.trust_bundle(), [new]);
    }

    #[test]
    fn a_root_from_a_secret_is_not_rotated_by_the_endpoint() {
        let made = Ca::generate("cluster.local", DEFAULT_CERT_TTL).unwrap();
        let ca = Ca::from_pem(
            &made.root_pem(),
            &made.key_pem(),
            Vec::new(),
            DEFAULT_CERT_TTL,
        )
        .unwrap();
        let refused = ca.announce_next().unwrap_err().to_string();
        assert!(refused.contains("mesh-ca-root"), "{refused}");
        assert_eq!(ca.trust_bundle().len(), 1);
    }

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

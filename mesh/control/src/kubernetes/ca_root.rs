//! The mesh's root CA kept in a Secret, so it outlives the control plane's pod.
//!
//! Locally the root is two files in the state directory (`ca.rs`). A pod's
//! scratch directory dies with the pod, and a new root would make every
//! sidecar's certificate worthless at once, so on a cluster the root lives
//! in the Secret `mesh-ca-root` of the control plane's own namespace, as
//! istiod keeps its self-signed root in `istio-ca-secret` (same keys:
//! `ca-cert.pem`, `ca-key.pem`):
//!
//! ```text
//! start: GET secret mesh-ca-root  -> found: use it
//!                                 -> 404: make a root, POST the Secret
//!                                          -> 409 AlreadyExists (another replica won): GET it, use that
//! ```
//!
//! A third, optional key, `ca-retiring.json`, lists roots still trusted
//! while they retire (`ca.rs`, root rotation); a Secret without it has one
//! root, as before.
//!
//! RBAC: `get` on that one Secret by name, and `create` on secrets (the API
//! server cannot restrict `create` by name: the name is not known before the
//! object exists). See k8s/base/mesh-control.yaml.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, PostParams};

use crate::ca::{Ca, CaError};

/// The Secret's name.
pub const SECRET_NAME: &str = "mesh-ca-root";
const CERT_KEY: &str = "ca-cert.pem";
const KEY_KEY: &str = "ca-key.pem";
const RETIRING_KEY: &str = crate::ca::RETIRING_FILE;

/// The root in the Secret, or a new one stored there at the first start.
pub async fn load_or_create(
    client: kube::Client,
    namespace: &str,
    trust_domain: &str,
    ttl: Duration,
) -> Result<Ca, CaError> {
    let api: Api<Secret> = Api::namespaced(client, namespace);
    let fail = |reason: String| CaError::RootSecret {
        secret: format!("{namespace}/{SECRET_NAME}"),
        reason,
    };
    if let Some(secret) = api
        .get_opt(SECRET_NAME)
        .await
        .map_err(|e| fail(e.to_string()))?
    {
        return from_secret(&secret, ttl).map_err(fail);
    }
    let ca = Ca::generate(trust_domain, ttl)?;
    let data = BTreeMap::from([
        (
            CERT_KEY.to_string(),
            ByteString(ca.root_pem().as_bytes().to_vec()),
        ),
        (KEY_KEY.to_string(), ByteString(ca.key_pem().into_bytes())),
    ]);
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(SECRET_NAME.into()),
            namespace: Some(namespace.into()),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some(data),
        ..Default::default()
    };
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => {
            tracing::info!(secret = %format!("{namespace}/{SECRET_NAME}"), "made the mesh's root CA");
            Ok(ca)
        }
        // Another replica stored its root first: everyone uses that one.
        Err(kube::Error::Api(status)) if status.code == 409 => {
            let secret = api
                .get(SECRET_NAME)
                .await
                .map_err(|e| fail(e.to_string()))?;
            from_secret(&secret, ttl).map_err(fail)
        }
        Err(e) => Err(fail(e.to_string())),
    }
}

fn from_secret(secret: &Secret, ttl: Duration) -> Result<Ca, String> {
    let field = |key: &str| {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .and_then(|b| String::from_utf8(b.0.clone()).ok())
            .ok_or_else(|| {
                format!(
                    "it has no {key}; delete the Secret to have a new root made (every workload \
                     then needs a new certificate)"
                )
            })
    };
    // Roots being retired: an optional key (`ca.rs`), absent in a Secret
    // written before rotation existed, which therefore reads as before.
    let retiring = match secret.data.as_ref().and_then(|d| d.get(RETIRING_KEY)) {
        Some(bytes) => serde_json::from_slice(&bytes.0)
            .map_err(|e| format!("its {RETIRING_KEY} is unreadable: {e}"))?,
        None => Vec::new(),
    };
    Ca::from_pem(&field(CERT_KEY)?, &field(KEY_KEY)?, retiring, ttl)
}

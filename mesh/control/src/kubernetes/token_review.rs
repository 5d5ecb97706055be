//! Who a pod is, proven by its service-account token: the Kubernetes
//! bootstrap of a sidecar's first certificate, as istiod's CA does it.
//!
//! ```text
//! sidecar: reads its projected token (audience istio-ca, mounted by the injector)
//!   POST /v1/certificates {identity, csr}   Authorization: Bearer <that token>
//! control plane (ca.rs -> here):
//!   POST authentication.k8s.io/v1 TokenReview {token, audiences: [istio-ca]}
//!   <- status {authenticated: true, user.username: system:serviceaccount:<ns>:<sa>,
//!              audiences: [istio-ca]}
//!   identity = spiffe://cluster.local/ns/<ns>/sa/<sa>; the CSR may name only it
//! ```
//!
//! The audience matters: a token minted for `istio-ca` cannot be replayed
//! against the API server, and the pod's default token (audience: the API
//! server) is not accepted here. The review's answer must name the audience
//! back, else the API server did not check it (the field's own advice).
//! The control plane needs RBAC `create tokenreviews` (k8s/base).

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use kube::api::{Api, PostParams};
use mesh_api::identity::Identity;

/// The audience a sidecar's token is minted for: istiod's.
pub const AUDIENCE: &str = "istio-ca";

/// What a service account's username starts with.
const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";

/// Why a token proves no workload identity.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("the TokenReview could not be made: {0}")]
    Api(#[from] kube::Error),
    #[error("the token was not accepted by the API server: {0}")]
    NotAuthenticated(String),
    #[error(
        "the token is not for audience {AUDIENCE} (its audiences: {0:?}); the injector mounts \
         one with that audience at /var/run/secrets/tokens/istio-token"
    )]
    WrongAudience(Vec<String>),
    #[error("the token's user {0:?} is not a service account (system:serviceaccount:NS:SA)")]
    NotServiceAccount(String),
}

/// Ask the API server who `token` belongs to.
pub async fn review(client: kube::Client, token: &str) -> Result<Identity, ReviewError> {
    let request = TokenReview {
        spec: TokenReviewSpec {
            token: token.to_string(),
            audiences: Some(vec![AUDIENCE.to_string()]),
        },
        ..Default::default()
    };
    let reviewed = Api::<TokenReview>::all(client)
        .create(&PostParams::default(), &request)
        .await?;
    identity_of(reviewed.status.unwrap_or_default())
}

/// The identity a review's answer proves, or why it proves none.
pub fn identity_of(status: TokenReviewStatus) -> Result<Identity, ReviewError> {
    if status.authenticated != Some(true) {
        return Err(ReviewError::NotAuthenticated(
            status.error.unwrap_or_else(|| "unknown token".into()),
        ));
    }
    let audiences = status.audiences.unwrap_or_default();
    if !audiences.iter().any(|a| a == AUDIENCE) {
        return Err(ReviewError::WrongAudience(audiences));
    }
    let username = status.user.and_then(|u| u.username).unwrap_or_default();
    let parts: Vec<&str> = username
        .strip_prefix(SERVICE_ACCOUNT_PREFIX)
        .map(|rest| rest.split(':').collect())
        .unwrap_or_default();
    match parts[..] {
        [namespace, service_account] if !namespace.is_empty() && !service_account.is_empty() => {
            Ok(Identity::new(namespace, service_account))
        }
        _ => Err(ReviewError::NotServiceAccount(username)),
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::authentication::v1::UserInfo;

    use super::*;

    fn status(authenticated: bool, username: &str, audiences: &[&str]) -> TokenReviewStatus {
        TokenReviewStatus {
            authenticated: Some(authenticated),
            audiences: Some(audiences.iter().map(|a| a.to_string()).collect()),
            user: Some(UserInfo {
                username: Some(username.into()),
                ..Default::default()
            }),
            error: None,
        }
    }

    #[test]
    fn a_service_account_token_for_istio_ca_proves_its_identity() {
        let identity = identity_of(status(
            true,
            "system:serviceaccount:guestbook:guestbook-ui",
            &[AUDIENCE],
        ))
        .unwrap();
        assert_eq!(
            identity.spiffe_id(),
            "spiffe://cluster.local/ns/guestbook/sa/guestbook-ui"
        );
    }

    #[test]
    fn anything_else_proves_nothing() {
        let sa = "system:serviceaccount:guestbook:guestbook-ui";
        assert!(matches!(
            identity_of(status(false, sa, &[AUDIENCE])),
            Err(ReviewError::NotAuthenticated(_))
        ));
        // The pod's default token: the API server's audience, not ours.
        assert!(matches!(
            identity_of(status(true, sa, &["https://kubernetes.default.svc"])),
            Err(ReviewError::WrongAudience(_))
        ));
        assert!(matches!(
            identity_of(status(true, sa, &[])),
            Err(ReviewError::WrongAudience(_))
        ));
        for user in [
            "kubernetes-admin",
            "system:serviceaccount:guestbook",
            "system:serviceaccount::x",
            "system:serviceaccount:a:b:c",
        ] {
            assert!(
                matches!(
                    identity_of(status(true, user, &[AUDIENCE])),
                    Err(ReviewError::NotServiceAccount(_))
                ),
                "{user}"
            );
        }
    }
}

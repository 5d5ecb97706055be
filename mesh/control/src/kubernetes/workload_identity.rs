//! Who a sidecar is on a cluster: its pod's service account, as Istio's
//! SPIFFE identity `spiffe://cluster.local/ns/<namespace>/sa/<service account>`.
//!
//! istiod signs a sidecar's certificate for the service account of the pod
//! the sidecar runs in, never for a name the sidecar picks: the pod (name,
//! namespace) is what the sidecar proves (with its service account token),
//! and the identity follows from the Pod object. These functions do that
//! step on the Pods the Kubernetes source already watches (`source.rs`), so
//! the certificate authority and the token check use the same rule the
//! model does, with no extra API call and no extra RBAC.

use k8s_openapi::api::core::v1::Pod;
use mesh_api::identity::Identity;

use super::discovery;

/// The identity of the workload `pod` runs as; `None` for a Pod object that
/// names no namespace (the API server always sets one).
pub fn pod_identity(pod: &Pod) -> Option<Identity> {
    let namespace = pod.metadata.namespace.as_deref()?;
    Some(Identity::new(namespace, discovery::service_account(pod)))
}

/// The identity of pod `namespace/name` among `pods` (a reflector's store,
/// or any list); `None` when no such pod is known (yet, or any more): a
/// caller then refuses, as istiod does for a pod it cannot find.
pub fn identity_of<'a>(
    pods: impl IntoIterator<Item = &'a Pod>,
    namespace: &str,
    name: &str,
) -> Option<Identity> {
    pods.into_iter()
        .find(|pod| {
            pod.metadata.name.as_deref() == Some(name)
                && pod.metadata.namespace.as_deref() == Some(namespace)
        })
        .and_then(pod_identity)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(namespace: &str, name: &str, service_account: Option<&str>) -> Pod {
        let mut spec = json!({"containers": []});
        if let Some(sa) = service_account {
            spec["serviceAccountName"] = json!(sa);
        }
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec
        }))
        .unwrap()
    }

    #[test]
    fn a_pods_identity_is_its_service_account_in_its_namespace() {
        let ui = pod("guestbook", "guestbook-ui-v1-abc", Some("guestbook-ui"));
        let identity = pod_identity(&ui).unwrap();
        assert_eq!(
            identity.to_string(),
            "spiffe://cluster.local/ns/guestbook/sa/guestbook-ui"
        );
        // No serviceAccountName: Kubernetes runs the pod as `default`.
        let bare = pod("guestbook", "bare", None);
        assert_eq!(
            pod_identity(&bare).unwrap().to_string(),
            "spiffe://cluster.local/ns/guestbook/sa/default"
        );
    }

    #[test]
    fn the_lookup_finds_the_pod_by_namespace_and_name_only() {
        let pods = [
            pod("guestbook", "hw-v1-a", Some("helloworld-service")),
            pod("other", "hw-v1-a", Some("intruder")),
        ];
        assert_eq!(
            identity_of(&pods, "guestbook", "hw-v1-a").map(|i| i.service_account),
            Some("helloworld-service".to_string())
        );
        assert_eq!(
            identity_of(&pods, "other", "hw-v1-a").map(|i| i.namespace),
            Some("other".to_string())
        );
        // A pod that is not (or no longer) there has no identity.
        assert_eq!(identity_of(&pods, "guestbook", "hw-v1-gone"), None);
    }
}

//! Host names in Istio resources, and how they resolve to mesh services.
//!
//! Istio reads a short host like `reviews` in a VirtualService as
//! `reviews.<the resource's namespace>.svc.cluster.local`, and a sidecar
//! answers to every form of that name. micromesh serves one namespace:
//! `default` locally, the namespace mesh-control serves on a cluster
//! (`--namespace guestbook`). In it, `guestbook-ui`, `guestbook-ui.guestbook`,
//! `guestbook-ui.guestbook.svc` and `guestbook-ui.guestbook.svc.cluster.local`
//! all name the service `guestbook-ui`; `guestbook-ui.default` names a
//! service in another namespace, which is not in the mesh (Istio would route
//! it, micromesh does not). Anything else (`example.com`) is a host outside
//! the mesh's registry: a Gateway may serve it, but no sidecar can route to it
//! (Istio would need a ServiceEntry).

/// The one namespace micromesh routes.
pub const ROUTED_NAMESPACE: &str = "default";

/// The service a host names, if it is one of the mesh's host forms.
///
/// ```
/// use mesh_api::config::service_of_host;
/// assert_eq!(service_of_host("guestbook-ui"), Some("guestbook-ui"));
/// assert_eq!(service_of_host("guestbook-ui.default.svc.cluster.local"), Some("guestbook-ui"));
/// assert_eq!(service_of_host("guestbook-ui.other"), None);
/// assert_eq!(service_of_host("*"), None);
/// ```
pub fn service_of_host(host: &str) -> Option<&str> {
    service_in_namespace(host, ROUTED_NAMESPACE)
}

/// The service a host names when the mesh's services live in `namespace`:
/// the short name (a short host in a rule is in the rule's namespace, and
/// micromesh reads rules only from the mesh's namespace), or
/// `name.<namespace>`, `name.<namespace>.svc`,
/// `name.<namespace>.svc.cluster.local`.
///
/// ```
/// use mesh_api::config::service_in_namespace;
/// let ns = "guestbook";
/// assert_eq!(service_in_namespace("helloworld-service", ns), Some("helloworld-service"));
/// assert_eq!(service_in_namespace("helloworld-service.guestbook", ns), Some("helloworld-service"));
/// assert_eq!(service_in_namespace("helloworld-service.default", ns), None);
/// ```
pub fn service_in_namespace<'a>(host: &'a str, namespace: &str) -> Option<&'a str> {
    let (name, rest) = match host.split_once('.') {
        Some((name, rest)) => (name, rest),
        None => return is_dns_label(host).then_some(host),
    };
    if !is_dns_label(name) {
        return None;
    }
    let suffix = rest.strip_prefix(namespace)?;
    matches!(suffix, "" | ".svc" | ".svc.cluster.local").then_some(name)
}

/// Every name a sidecar answers to for `service` in `namespace`, the forms
/// [`service_in_namespace`] resolves, short name first.
pub fn names_of_service(service: &str, namespace: &str) -> [String; 4] {
    [
        service.to_string(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
    ]
}

/// Whether a host pattern (`*`, `*.example.com`, `example.com`) matches a
/// concrete or wildcard host, the way Istio intersects Gateway server hosts
/// with VirtualService hosts. Returns the narrower of the two when they meet.
pub fn intersect_hosts<'a>(a: &'a str, b: &'a str) -> Option<&'a str> {
    fn covers(pattern: &str, host: &str) -> bool {
        if pattern == "*" {
            return true;
        }
        match pattern.strip_prefix('*') {
            // `*.example.com` covers `a.example.com` and `*.b.example.com`.
            Some(suffix) => host.len() > suffix.len() && host.ends_with(suffix),
            None => pattern.eq_ignore_ascii_case(host),
        }
    }
    if covers(a, b) {
        Some(b)
    } else if covers(b, a) {
        Some(a)
    } else {
        None
    }
}

/// RFC 1123 label: lower case letters, digits and `-`, at most 63, starting
/// and ending with a letter or digit (Kubernetes names, subset names).
pub(crate) fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// RFC 1123 subdomain: dot-separated labels, at most 253 (resource names).
pub(crate) fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// Check a host as written in `hosts`, `host` or `destination.host`.
/// `wildcards` allows `*` and `*.suffix`. The error says what to write.
pub(crate) fn check_host(host: &str, wildcards: bool) -> Result<(), String> {
    if host.is_empty() {
        return Err("a host must not be empty; name a service, like `guestbook-ui`".into());
    }
    let (rest, is_wildcard) = match host.strip_prefix('*') {
        Some("") => ("", true),
        Some(rest) => match rest.strip_prefix('.') {
            Some(rest) => (rest, true),
            None => {
                return Err(format!(
                    "`{host}` is not a valid host: a wildcard is `*` or `*.` followed by a domain, like `*.example.com`"
                ));
            }
        },
        None => (host, false),
    };
    if is_wildcard && !wildcards {
        return Err(format!(
            "`{host}` is a wildcard; a destination must name one service, like `guestbook-ui`"
        ));
    }
    if rest.is_empty() {
        return Ok(());
    }
    if rest.contains(|c: char| c.is_ascii_uppercase()) {
        return Err(format!(
            "`{host}` has upper-case letters; hosts are lower-case DNS names: write `{}`",
            host.to_ascii_lowercase()
        ));
    }
    if rest.contains("://") || rest.contains('/') || rest.contains(':') {
        return Err(format!(
            "`{host}` is not a host name: write only the name, without scheme, path or port (like `guestbook-ui`)"
        ));
    }
    if !is_dns_subdomain(rest) {
        return Err(format!(
            "`{host}` is not a valid DNS name: use lower-case letters, digits, `-` and `.`"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_forms_resolve_to_the_service() {
        for host in [
            "helloworld-service",
            "helloworld-service.default",
            "helloworld-service.default.svc",
            "helloworld-service.default.svc.cluster.local",
        ] {
            assert_eq!(service_of_host(host), Some("helloworld-service"), "{host}");
        }
        assert_eq!(service_of_host("helloworld-service.istio-system"), None);
        assert_eq!(service_of_host("www.example.com"), None);
        assert_eq!(service_of_host("*.default.svc.cluster.local"), None);
    }

    #[test]
    fn kubernetes_names_resolve_in_the_mesh_namespace_only() {
        // On a cluster mesh-control serves `guestbook`: every Kubernetes form
        // of the name there is the service, and so is the short name.
        for host in names_of_service("helloworld-service", "guestbook") {
            assert_eq!(
                service_in_namespace(&host, "guestbook"),
                Some("helloworld-service"),
                "{host}"
            );
        }
        // The same service name in another namespace is another service,
        // and a namespace that merely starts like ours is not ours.
        for host in [
            "helloworld-service.default",
            "helloworld-service.default.svc.cluster.local",
            "helloworld-service.guestbook2",
            "helloworld-service.guestbook.svc.example.com",
            "helloworld-service.guestbook.cluster.local",
        ] {
            assert_eq!(service_in_namespace(host, "guestbook"), None, "{host}");
        }
        // Locally the namespace is `default`: the old forms still resolve.
        assert_eq!(
            service_in_namespace("helloworld-service.default.svc", ROUTED_NAMESPACE),
            Some("helloworld-service")
        );
        assert_eq!(service_in_namespace("Helloworld", "guestbook"), None);
    }

    #[test]
    fn host_intersection_keeps_the_narrower_host() {
        assert_eq!(
            intersect_hosts("*", "guestbook.example.com"),
            Some("guestbook.example.com")
        );
        assert_eq!(
            intersect_hosts("guestbook.example.com", "*"),
            Some("guestbook.example.com")
        );
        assert_eq!(
            intersect_hosts("*.example.com", "a.example.com"),
            Some("a.example.com")
        );
        assert_eq!(intersect_hosts("*.example.com", "example.com"), None);
        assert_eq!(intersect_hosts("a.example.com", "b.example.com"), None);
        assert_eq!(intersect_hosts("*", "*"), Some("*"));
    }

    #[test]
    fn host_checks_explain_the_fix() {
        assert!(check_host("guestbook-ui", false).is_ok());
        assert!(check_host("*", true).is_ok());
        assert!(check_host("*.example.com", true).is_ok());
        assert!(check_host("*", false).unwrap_err().contains("wildcard"));
        assert!(
            check_host("Guestbook-UI", true)
                .unwrap_err()
                .contains("write `guestbook-ui`")
        );
        assert!(
            check_host("http://guestbook-ui:8080", true)
                .unwrap_err()
                .contains("without scheme")
        );
        assert!(check_host("*foo", true).is_err());
        assert!(check_host("", true).is_err());
        assert!(check_host("a..b", true).is_err());
    }
}

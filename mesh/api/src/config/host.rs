//! Host names in Istio resources, and how they resolve to mesh services.
//!
//! Istio reads a short host like `reviews` in a VirtualService as
//! `reviews.<the resource's namespace>.svc.cluster.local`. micromesh has one
//! namespace, `default`, so `guestbook-ui`, `guestbook-ui.default`,
//! `guestbook-ui.default.svc` and `guestbook-ui.default.svc.cluster.local` all
//! name the service `guestbook-ui`. Anything else (`example.com`) is a host
//! outside the mesh's registry: a Gateway may serve it, but no sidecar can
//! route to it (Istio would need a ServiceEntry).

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
    let (name, rest) = match host.split_once('.') {
        Some((name, rest)) => (name, Some(rest)),
        None => (host, None),
    };
    if !is_dns_label(name) {
        return None;
    }
    match rest {
        None | Some("default") | Some("default.svc") | Some("default.svc.cluster.local") => {
            Some(name)
        }
        Some(_) => None,
    }
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

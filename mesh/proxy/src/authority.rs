//! One authority per request: the host (and port) the request is for,
//! settled before routing, so the route and the upstream see the same one.
//!
//! A request can name its authority twice: in the request target
//! (`GET http://helloworld-service:8080/hello HTTP/1.1`, as an app sends it
//! to its HTTP proxy; `:authority` in HTTP/2) and in the `Host` header. If
//! the proxy routed by one and forwarded the other, a client could reach a
//! service the route table never chose for it. The rules, from RFC 9112
//! section 3.2, RFC 9110 section 7.2 and RFC 9113 section 8.3.1:
//!
//! - An absolute-form target's authority wins: `Host` is replaced by it
//!   (a proxy "MUST generate a new Host field value based on the received
//!   request-target rather than forward the received Host").
//! - The authority-form (`GET internal.example HTTP/1.1`) is CONNECT's
//!   alone: anything else written that way is 400.
//! - Two `Host` lines, or none in an HTTP/1.1 origin-form request, is 400.
//!   (An absolute-form target without `Host` is served, as Envoy does: the
//!   target names the authority, and it is the one used either way.)
//! - A `Host` (or target authority) must be a valid `host[:port]`; userinfo
//!   (`Host: a@b`) is 400: it is deprecated in `http` URIs (RFC 9110 4.2.4)
//!   and only serves to confuse what the host is.
//! - HTTP/2: `:authority` and `host` must name the same host and port
//!   (compared case-insensitively, `:80` being the default); if they do,
//!   `host` is dropped and `:authority` is the one (RFC 9113 8.3.1: a
//!   server "SHOULD treat a request as malformed" when they differ, so it
//!   is 400). Without `:authority`, `host` gives it; with neither, 400.
//! - `Host` is never hop-by-hop: a `Connection: host` must not make the
//!   proxy remove it (the request would be routed as if it had none), so
//!   `host` is taken out of the `Connection` list.
//!
//! The result: at most one `Host` header, equal to the target's authority
//! when the target has one, and [`crate::route::authority_of`] reads it.

use http::header::{CONNECTION, HOST};
use http::{HeaderMap, HeaderValue, Method, Uri, Version};

/// Why a request's authority is refused (400).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthorityError {
    #[error("the request has {count} Host headers: send exactly one (RFC 9112 section 3.2)")]
    SeveralHosts { count: usize },
    #[error(
        "the HTTP/1.1 request has no Host header: add `Host: <service>:<port>` \
         (RFC 9112 section 3.2)"
    )]
    MissingHost,
    #[error(
        "the HTTP/2 request has neither :authority nor host: send :authority \
         (RFC 9113 section 8.3.1)"
    )]
    MissingAuthority,
    #[error(
        "the request target {target:?} is in authority-form, which only CONNECT may use: \
         send a path (/hello) with a Host header, or an absolute URL (http://{target}/hello)"
    )]
    AuthorityForm { target: String },
    #[error("the request target's scheme {scheme:?} is not one the mesh carries: use http://")]
    Scheme { scheme: String },
    #[error("the {place} {value:?} is not a valid host[:port]: {why}")]
    Invalid {
        place: &'static str,
        value: String,
        why: &'static str,
    },
    #[error(
        "the HTTP/2 request's :authority {authority:?} and host {host:?} name different \
         hosts: send one, or the same in both (RFC 9113 section 8.3.1)"
    )]
    Disagree { authority: String, host: String },
}

/// Settle the request's one authority, in place (see the module docs).
/// Nothing is allocated for a well-formed request whose `Host` already
/// equals its target's authority (what HTTP clients send).
pub fn settle<B>(req: &mut http::Request<B>) -> Result<(), AuthorityError> {
    let version = req.version();
    let connect = req.method() == Method::CONNECT;
    // The target is read while the headers change: it leaves the request
    // for the while (a move, not a copy).
    let uri = std::mem::take(req.uri_mut());
    let result = settle_head(version, connect, &uri, req.headers_mut());
    *req.uri_mut() = uri;
    result
}

fn settle_head(
    version: Version,
    connect: bool,
    uri: &Uri,
    headers: &mut HeaderMap,
) -> Result<(), AuthorityError> {
    keep_host_end_to_end(headers);
    let hosts = headers.get_all(HOST).iter().count();
    if hosts > 1 {
        return Err(AuthorityError::SeveralHosts { count: hosts });
    }
    let host = match headers.get(HOST) {
        Some(value) => Some(check("Host header", value.as_bytes())?),
        None => None,
    };
    if connect {
        // CONNECT names its tunnel's far end in the target; the listener
        // answers it (the mesh does not tunnel HTTPS).
        return Ok(());
    }
    let target = match uri.authority() {
        Some(authority) => Some(check(
            if version == Version::HTTP_2 {
                ":authority"
            } else {
                "request target's authority"
            },
            authority.as_str().as_bytes(),
        )?),
        None => None,
    };
    if version == Version::HTTP_2 {
        return match (target, host) {
            (Some(target), Some(host)) if !target.same_as(&host) => Err(AuthorityError::Disagree {
                authority: target.text.to_string(),
                host: host.text.to_string(),
            }),
            // They agree: `:authority` is the one.
            (Some(_), Some(_)) => {
                headers.remove(HOST);
                Ok(())
            }
            (Some(_), None) => Ok(()),
            // No :authority: the host header gives it (RFC 9113 8.3.1
            // allows it).
            (None, Some(_)) => Ok(()),
            (None, None) => Err(AuthorityError::MissingAuthority),
        };
    }
    match (target, uri.scheme_str()) {
        (Some(target), None) => Err(AuthorityError::AuthorityForm {
            target: target.text.to_string(),
        }),
        (Some(target), Some(scheme)) => {
            if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
                return Err(AuthorityError::Scheme {
                    scheme: scheme.to_string(),
                });
            }
            // Absolute form: the target's authority is the one; Host
            // follows it (already does, from a well-behaved client).
            if host.is_some_and(|host| host.text == target.text) {
                return Ok(());
            }
            let value =
                HeaderValue::from_str(target.text).map_err(|_| AuthorityError::Invalid {
                    place: "request target's authority",
                    value: target.text.to_string(),
                    why: "not a header value",
                })?;
            headers.insert(HOST, value);
            Ok(())
        }
        (None, _) => match host {
            Some(_) => Ok(()),
            None if version == Version::HTTP_11 => Err(AuthorityError::MissingHost),
            // HTTP/1.0 had no Host: routed by the wildcard host, if any.
            None => Ok(()),
        },
    }
}

/// A checked `host[:port]`, borrowed from the request.
#[derive(Clone, Copy, Debug)]
struct HostPort<'a> {
    text: &'a str,
    host: &'a str,
    port: Option<u16>,
}

impl HostPort<'_> {
    /// The same host and port, as RFC 3986 6.2.3's scheme-based
    /// normalization compares them: the host case-insensitively, an absent
    /// port as 80.
    fn same_as(&self, other: &HostPort<'_>) -> bool {
        self.host.eq_ignore_ascii_case(other.host)
            && self.port.unwrap_or(80) == other.port.unwrap_or(80)
    }
}

/// A valid `host[:port]` (RFC 3986 3.2.2: a registered name or an IP
/// literal in brackets, then an optional port), without userinfo.
fn check<'a>(place: &'static str, value: &'a [u8]) -> Result<HostPort<'a>, AuthorityError> {
    let invalid = |why| AuthorityError::Invalid {
        place,
        value: String::from_utf8_lossy(value).into_owned(),
        why,
    };
    if value.is_empty() {
        return Err(invalid(
            "it is empty; name the service, as in helloworld-service:8080",
        ));
    }
    if value.contains(&b'@') {
        return Err(invalid(
            "userinfo (`user@`) is not allowed; send the host alone",
        ));
    }
    let characters = "it has characters a host cannot have";
    let text = std::str::from_utf8(value).map_err(|_| invalid(characters))?;
    let (host, rest) = if let Some(literal) = text.strip_prefix('[') {
        let end = literal
            .find(']')
            .ok_or_else(|| invalid("an IPv6 address is not closed with `]`"))?;
        let address = &literal[..end];
        if address.is_empty()
            || !address
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return Err(invalid(characters));
        }
        text.split_at(end + 2)
    } else {
        let split = text.rfind(':').unwrap_or(text.len());
        let (host, rest) = text.split_at(split);
        if !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=".contains(&b))
        {
            return Err(invalid(characters));
        }
        (host, rest)
    };
    if host.is_empty() {
        return Err(invalid("it has a port but no host"));
    }
    let port = match rest.strip_prefix(':') {
        None if rest.is_empty() => None,
        None => return Err(invalid(characters)),
        // `host:` is allowed (RFC 3986: port = *DIGIT) and means no port.
        Some("") => None,
        Some(digits) => Some(
            digits
                .bytes()
                .all(|b| b.is_ascii_digit())
                .then(|| digits.parse::<u16>().ok())
                .flatten()
                .ok_or_else(|| invalid("the port is not a number from 0 to 65535"))?,
        ),
    };
    Ok(HostPort { text, host, port })
}

/// Take `host` out of `Connection`, so the hop-by-hop strip keeps `Host`.
fn keep_host_end_to_end(headers: &mut HeaderMap) {
    let names_host = headers.get_all(CONNECTION).iter().any(|value| {
        value
            .to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("host")))
    });
    if !names_host {
        return;
    }
    let rest: Vec<String> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty() && !t.eq_ignore_ascii_case("host"))
        .map(str::to_string)
        .collect();
    headers.remove(CONNECTION);
    if !rest.is_empty()
        && let Ok(value) = HeaderValue::from_str(&rest.join(", "))
    {
        headers.insert(CONNECTION, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request head as hyper hands it over: `target` parsed as hyper
    /// parses a request line, `headers` in order.
    fn head(
        method: &str,
        target: &str,
        version: Version,
        headers: &[(&str, &str)],
    ) -> http::Request<()> {
        let mut builder = http::Request::builder()
            .method(method)
            .uri(target)
            .version(version);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap()
    }

    fn settled(req: &mut http::Request<()>) -> Result<Vec<String>, AuthorityError> {
        settle(req)?;
        Ok(req
            .headers()
            .get_all(HOST)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect())
    }

    const H11: Version = Version::HTTP_11;

    #[test]
    fn an_absolute_targets_authority_replaces_host() {
        let mut p = head(
            "GET",
            "http://helloworld-service:8080/hello",
            H11,
            &[("host", "admin-service:8080")],
        );
        assert_eq!(settled(&mut p).unwrap(), ["helloworld-service:8080"]);
        assert_eq!(crate::route::authority_of(&p), "helloworld-service:8080");
        // Without Host: the target's authority is written as Host.
        let mut p = head("GET", "http://hw/", H11, &[]);
        assert_eq!(settled(&mut p).unwrap(), ["hw"]);
    }

    #[test]
    fn origin_form_keeps_its_one_host() {
        let mut p = head("GET", "/hello", H11, &[("host", "hw:8080")]);
        assert_eq!(settled(&mut p).unwrap(), ["hw:8080"]);
        // HTTP/1.0 may omit it.
        let mut p = head("GET", "/hello", Version::HTTP_10, &[]);
        assert_eq!(settled(&mut p).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn two_hosts_or_none_on_http_1_1_are_refused() {
        let mut p = head("GET", "/", H11, &[("host", "a"), ("host", "b")]);
        assert_eq!(
            settle(&mut p),
            Err(AuthorityError::SeveralHosts { count: 2 })
        );
        // Even when the target would replace them.
        let mut p = head("GET", "http://a/", H11, &[("host", "a"), ("host", "a")]);
        assert!(matches!(
            settle(&mut p),
            Err(AuthorityError::SeveralHosts { .. })
        ));
        let mut p = head("GET", "/", H11, &[]);
        assert_eq!(settle(&mut p), Err(AuthorityError::MissingHost));
        assert!(
            AuthorityError::MissingHost
                .to_string()
                .contains("add `Host:")
        );
    }

    #[test]
    fn authority_form_is_for_connect_only() {
        let mut p = head("GET", "internal.example", H11, &[("host", "hw")]);
        let error = settle(&mut p).unwrap_err();
        assert!(
            matches!(error, AuthorityError::AuthorityForm { .. }),
            "{error}"
        );
        assert!(error.to_string().contains("only CONNECT"));
        let mut p = head(
            "CONNECT",
            "internal.example:443",
            H11,
            &[("host", "internal.example:443")],
        );
        assert!(
            settle(&mut p).is_ok(),
            "CONNECT is the listener's to answer"
        );
    }

    #[test]
    fn invalid_hosts_are_refused_with_the_reason() {
        for (host, why) in [
            ("a@b", "userinfo"),
            ("user:pw@hw:8080", "userinfo"),
            ("", "empty"),
            (":8080", "no host"),
            ("hw:99999", "port"),
            ("hw:http", "port"),
            ("h w", "characters"),
            ("[::1", "IPv6"),
            ("[db8::zz]:80", "characters"),
            ("hw:+1", "port"),
            ("hw:80x", "port"),
        ] {
            let mut p = head("GET", "/", H11, &[("host", host)]);
            let error = settle(&mut p).unwrap_err();
            assert!(
                matches!(error, AuthorityError::Invalid { .. }) && error.to_string().contains(why),
                "{host:?}: {error}"
            );
        }
        let mut p = head("GET", "http://a@hw/", H11, &[("host", "hw")]);
        assert!(
            settle(&mut p)
                .unwrap_err()
                .to_string()
                .contains("request target")
        );
        let mut p = head("GET", "ftp://hw/", H11, &[("host", "hw")]);
        assert!(matches!(settle(&mut p), Err(AuthorityError::Scheme { .. })));
        // IPv6 literals and ports are fine.
        for host in [
            "[::1]",
            "hw:",
            "10.0.0.1:8080",
            "my-svc.default.svc.cluster.local:8080",
        ] {
            let mut p = head("GET", "/", H11, &[("host", host)]);
            assert!(settle(&mut p).is_ok(), "{host}");
        }
        let mut p = head("GET", "/", H11, &[("host", "[::1]:8080")]);
        assert!(settle(&mut p).is_ok());
    }

    #[test]
    fn http2_authority_and_host_must_agree_and_become_one() {
        let h2 = Version::HTTP_2;
        let mut p = head("GET", "http://hw:8080/", h2, &[("host", "HW:8080")]);
        assert_eq!(
            settled(&mut p).unwrap(),
            Vec::<String>::new(),
            "host dropped"
        );
        assert_eq!(p.uri().authority().unwrap(), "hw:8080");
        let mut p = head("GET", "http://hw/", h2, &[("host", "hw:80")]);
        assert!(settle(&mut p).is_ok(), ":80 is http's default port");
        let mut p = head("GET", "http://hw/", h2, &[("host", "admin")]);
        let error = settle(&mut p).unwrap_err();
        assert!(matches!(error, AuthorityError::Disagree { .. }), "{error}");
        // Only host (no :authority): host gives it.
        let mut p = head("GET", "/", h2, &[("host", "hw")]);
        assert_eq!(settled(&mut p).unwrap(), ["hw"]);
        let mut p = head("GET", "/", h2, &[]);
        assert_eq!(settle(&mut p), Err(AuthorityError::MissingAuthority));
    }

    #[test]
    fn connection_host_does_not_make_host_hop_by_hop() {
        let mut p = head(
            "GET",
            "/",
            H11,
            &[("host", "hw"), ("connection", "keep-alive, Host, x-debug")],
        );
        assert_eq!(settled(&mut p).unwrap(), ["hw"]);
        assert_eq!(p.headers()["connection"], "keep-alive, x-debug");
        crate::outbound::strip_hop_by_hop(p.headers_mut());
        assert_eq!(p.headers()["host"], "hw", "still there after the strip");
        let mut p = head("GET", "/", H11, &[("host", "hw"), ("connection", "host")]);
        settle(&mut p).unwrap();
        assert!(!p.headers().contains_key("connection"));
    }
}

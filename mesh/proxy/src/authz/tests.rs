//! The evaluator's tests: each matcher on its own, Istio's documented
//! corner cases, then a truth table of generated policies and requests
//! checked against a small reference model written here, independently of
//! the evaluator (regexes for the value forms, a decision table for the
//! order).

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};

use http::HeaderMap;
use mesh_api::config::authorization_policy::{
    Action, AuthorizationPolicy, Condition, ConditionKey, Operation, Rule, Source,
};
use regex::Regex;

use super::*;

const UI: &str = "cluster.local/ns/default/sa/guestbook-ui";
const TEST_NS: &str = "cluster.local/ns/test/sa/loadgen";
const OTHER_DOMAIN: &str = "other.example/ns/default/sa/guestbook-ui";

fn request<'a>(
    principal: Option<&'a str>,
    method: &'a str,
    path: &'a str,
    headers: &'a HeaderMap,
) -> Request<'a> {
    Request {
        principal,
        method,
        host: "guestbook-service:8080",
        path,
        port: 8080,
        headers,
        source_ip: LOCAL,
        remote_ip: LOCAL,
    }
}

const LOCAL: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

/// A policy in namespace `default` (where a bare service account is).
fn policy_matches(policy: &AuthorizationPolicy, request: &Request) -> bool {
    super::policy_matches(policy, "default", request)
}

fn strings(values: &[&str]) -> Vec<String> {
    values.iter().map(|v| v.to_string()).collect()
}

fn policy(action: Action, rules: Vec<Rule>) -> AuthorizationPolicy {
    AuthorizationPolicy {
        selector: None,
        action,
        rules,
    }
}

fn decide(policies: &[AuthorizationPolicy], request: &Request) -> Decision {
    evaluate(
        policies.iter().map(|spec| Policy {
            name: "default/p",
            spec,
        }),
        request,
    )
}

// === matchers ===

#[test]
fn values_match_in_istios_four_forms() {
    assert!(matches_value("/admin", "/admin"));
    assert!(!matches_value("/admin", "/admin/x"), "exact is exact");
    assert!(matches_value("/admin*", "/admin/x"), "prefix");
    assert!(
        matches_value("/admin*", "/admin"),
        "a prefix matches itself"
    );
    assert!(
        !matches_value("/admin*", "/Admin"),
        "paths are case-sensitive"
    );
    assert!(matches_value("*/info", "/api/info"), "suffix");
    assert!(!matches_value("*/info", "/api/info/x"));
    assert!(matches_value("*", "anything"), "presence");
    assert!(!matches_value("*", ""), "presence needs a non-empty value");
}

#[test]
fn hosts_compare_case_insensitively_methods_do_not() {
    let headers = HeaderMap::new();
    let mut r = request(None, "GET", "/", &headers);
    r.host = "GuestBook-Service:8080";
    let op = |operation: Operation| AuthorizationPolicy {
        rules: vec![Rule {
            to: vec![operation],
            ..Rule::default()
        }],
        ..AuthorizationPolicy::default()
    };
    let hosts = op(Operation {
        hosts: strings(&["guestbook-service*"]),
        ..Operation::default()
    });
    assert!(policy_matches(&hosts, &r));
    let not_hosts = op(Operation {
        not_hosts: strings(&["GUESTBOOK-SERVICE:8080"]),
        ..Operation::default()
    });
    assert!(!policy_matches(&not_hosts, &r));
    let methods = op(Operation {
        methods: strings(&["get"]),
        ..Operation::default()
    });
    assert!(
        !policy_matches(&methods, &r),
        "HTTP methods are case-sensitive"
    );
    let ports = op(Operation {
        ports: vec![8080],
        ..Operation::default()
    });
    assert!(policy_matches(&ports, &r));
    let not_ports = op(Operation {
        not_ports: vec![8080],
        ..Operation::default()
    });
    assert!(!policy_matches(&not_ports, &r));
}

#[test]
fn the_query_is_not_part_of_the_path() {
    let headers = HeaderMap::new();
    let exact = AuthorizationPolicy {
        rules: vec![Rule {
            to: vec![Operation {
                paths: strings(&["/admin"]),
                ..Operation::default()
            }],
            ..Rule::default()
        }],
        ..AuthorizationPolicy::default()
    };
    assert!(policy_matches(
        &exact,
        &request(None, "GET", "/admin?x=1", &headers)
    ));
    assert!(policy_matches(
        &exact,
        &request(None, "GET", "/admin#top", &headers)
    ));
    assert!(!policy_matches(
        &exact,
        &request(None, "GET", "/admin/", &headers)
    ));
}

#[test]
fn plaintext_matches_no_principal_or_namespace_and_every_not_form() {
    assert_eq!(namespace_of(UI), Some("default"));
    assert_eq!(namespace_of("cluster.local/sa/x"), None);
    assert!(principal_matches(UI, Some(UI)));
    assert!(principal_matches("*", Some(UI)));
    assert!(
        !principal_matches("*", None),
        "`*` means: any authenticated peer"
    );
    assert!(namespace_matches("def*", Some(UI)));
    assert!(!namespace_matches("*", None));

    let headers = HeaderMap::new();
    let source = |source: Source| AuthorizationPolicy {
        rules: vec![Rule {
            from: vec![source],
            ..Rule::default()
        }],
        ..AuthorizationPolicy::default()
    };
    let not_ui = source(Source {
        not_principals: strings(&[UI]),
        ..Source::default()
    });
    assert!(policy_matches(
        &not_ui,
        &request(None, "GET", "/", &headers)
    ));
    assert!(policy_matches(
        &not_ui,
        &request(Some(TEST_NS), "GET", "/", &headers)
    ));
    assert!(!policy_matches(
        &not_ui,
        &request(Some(UI), "GET", "/", &headers)
    ));
    let not_test = source(Source {
        not_namespaces: strings(&["test"]),
        ..Source::default()
    });
    assert!(policy_matches(
        &not_test,
        &request(None, "GET", "/", &headers)
    ));
    assert!(!policy_matches(
        &not_test,
        &request(Some(TEST_NS), "GET", "/", &headers)
    ));
}

#[test]
fn service_accounts_and_trust_domains_read_the_identitys_parts() {
    // A bare name is in the policy's namespace (`default` here).
    assert!(service_account_matches("guestbook-ui", "default", Some(UI)));
    assert!(service_account_matches(
        "default/guestbook-ui",
        "other",
        Some(UI)
    ));
    assert!(!service_account_matches("guestbook-ui", "test", Some(UI)));
    assert!(
        !service_account_matches("guestbook", "default", Some(UI)),
        "exact, not prefix"
    );
    assert!(!service_account_matches("ns/default", "default", Some(UI)));
    assert!(!service_account_matches("guestbook-ui", "default", None));
    // Istio's regex allows segments between `ns/<ns>` and `sa/<sa>`.
    assert!(service_account_matches(
        "default/x",
        "default",
        Some("cluster.local/ns/default/k/v/sa/x")
    ));
    assert!(trust_domain_matches("cluster.local", Some(UI)));
    assert!(trust_domain_matches("*.local", Some(UI)));
    assert!(trust_domain_matches("*", Some(UI)));
    assert!(!trust_domain_matches("other.example", Some(UI)));
    assert!(
        !trust_domain_matches("*", None),
        "plaintext has no trust domain"
    );
}

#[test]
fn address_blocks_match_the_peer_and_the_original_client() {
    let headers = HeaderMap::new();
    let mut r = request(Some(UI), "GET", "/", &headers);
    r.source_ip = "10.1.2.3".parse().unwrap();
    r.remote_ip = "203.0.113.7".parse().unwrap();
    let block = |t: &str| t.parse::<IpBlock>().unwrap();
    let from = |source: Source| AuthorizationPolicy {
        rules: vec![Rule {
            from: vec![source],
            ..Rule::default()
        }],
        ..AuthorizationPolicy::default()
    };
    let peer_in = |b: &str| Source {
        ip_blocks: vec![block(b)],
        ..Source::default()
    };
    assert!(policy_matches(&from(peer_in("10.0.0.0/8")), &r));
    assert!(
        !policy_matches(&from(peer_in("203.0.113.0/24")), &r),
        "ipBlocks is the peer, not the client"
    );
    let remote_in = |b: &str| Source {
        remote_ip_blocks: vec![block(b)],
        ..Source::default()
    };
    assert!(policy_matches(&from(remote_in("203.0.113.0/24")), &r));
    assert!(!policy_matches(&from(remote_in("10.0.0.0/8")), &r));
    let not_remote = Source {
        not_remote_ip_blocks: vec![block("203.0.113.7")],
        ..Source::default()
    };
    assert!(!policy_matches(&from(not_remote), &r));
    let when = |key: ConditionKey, values: &[&str]| AuthorizationPolicy {
        rules: vec![Rule {
            when: vec![Condition {
                key,
                values: strings(values),
                not_values: vec![],
            }],
            ..Rule::default()
        }],
        ..AuthorizationPolicy::default()
    };
    assert!(policy_matches(
        &when(ConditionKey::SourceIp, &["10.1.2.3/32"]),
        &r
    ));
    assert!(!policy_matches(
        &when(ConditionKey::SourceIp, &["10.1.2.4/32"]),
        &r
    ));
    assert!(policy_matches(
        &when(ConditionKey::RemoteIp, &["203.0.0.0/8"]),
        &r
    ));
}

#[test]
fn path_templates_match_whole_segments() {
    // `{*}`: one non-empty segment.
    assert!(template_matches("/api/{*}/info", "/api/v1/info"));
    assert!(!template_matches("/api/{*}/info", "/api/v1/v2/info"));
    assert!(!template_matches("/api/{*}/info", "/api//info"));
    assert!(template_matches("/files/{*}", "/files/a.txt"));
    assert!(!template_matches("/files/{*}", "/files/a/b"));
    // `{**}`: anything, `/` included.
    assert!(template_matches("/{**}/admin", "/x/admin"));
    assert!(template_matches("/{**}/admin", "/x/y/z/admin"));
    assert!(!template_matches("/{**}/admin", "/x/admin/y"));
    assert!(template_matches("/files/{**}", "/files/a/b/c"));
    assert!(template_matches("/a/{*}/{**}", "/a/b/c/d"));
    assert!(!template_matches("/a/{*}/{**}", "/a/b"));
    // Literal everywhere else; the query was cut off before.
    assert!(!template_matches("/api/{*}/info", "/API/v1/info"));
    let headers = HeaderMap::new();
    let paths = AuthorizationPolicy {
        rules: vec![Rule {
            to: vec![Operation {
                paths: strings(&["/api/{*}/info"]),
                ..Operation::default()
            }],
            ..Rule::default()
        }],
        ..AuthorizationPolicy::default()
    };
    assert!(policy_matches(
        &paths,
        &request(None, "GET", "/api/v1/info?x=/y", &headers)
    ));
    assert!(!policy_matches(
        &paths,
        &request(None, "GET", "/api/v1/info/x", &headers)
    ));
}

#[test]
fn pseudo_headers_name_the_request_line() {
    let headers = HeaderMap::new();
    let r = request(None, "POST", "/admin?x=1", &headers);
    let when = |name: &str, values: &[&str]| AuthorizationPolicy {
        rules: vec![Rule {
            when: vec![Condition {
                key: ConditionKey::RequestHeader(name.into()),
                values: strings(values),
                not_values: vec![],
            }],
            ..Rule::default()
        }],
        ..AuthorizationPolicy::default()
    };
    assert!(policy_matches(&when(":method", &["POST"]), &r));
    assert!(!policy_matches(&when(":method", &["GET"]), &r));
    assert!(policy_matches(&when(":path", &["/admin*"]), &r));
    assert!(policy_matches(
        &when(":authority", &["guestbook-service*"]),
        &r
    ));
}

#[test]
fn conditions_read_headers_ports_and_the_peer() {
    let mut headers = HeaderMap::new();
    headers.append("x-user", "alice".parse().unwrap());
    headers.append("x-user", "bob".parse().unwrap());
    let when = |key: ConditionKey, values: &[&str], not: &[&str]| AuthorizationPolicy {
        rules: vec![Rule {
            when: vec![Condition {
                key,
                values: strings(values),
                not_values: strings(not),
            }],
            ..Rule::default()
        }],
        ..AuthorizationPolicy::default()
    };
    let r = request(Some(UI), "GET", "/", &headers);
    let user = || ConditionKey::RequestHeader("x-user".into());
    // Two values are joined with `,` as Envoy's header matcher sees them.
    assert!(policy_matches(&when(user(), &["alice,bob"], &[]), &r));
    assert!(policy_matches(&when(user(), &["alice*"], &[]), &r));
    assert!(!policy_matches(&when(user(), &["*"], &["*bob"]), &r));
    let none = HeaderMap::new();
    let bare = request(Some(UI), "GET", "/", &none);
    assert!(
        !policy_matches(&when(user(), &["*"], &[]), &bare),
        "absent is not present"
    );
    assert!(policy_matches(&when(user(), &[], &["alice"]), &bare));
    assert!(policy_matches(
        &when(ConditionKey::DestinationPort, &["8080"], &[]),
        &r
    ));
    assert!(!policy_matches(
        &when(ConditionKey::DestinationPort, &["9090"], &[]),
        &r
    ));
    assert!(policy_matches(
        &when(ConditionKey::SourceNamespace, &["default"], &[]),
        &r
    ));
    assert!(policy_matches(
        &when(ConditionKey::SourcePrincipal, &["*/sa/guestbook-ui"], &[]),
        &r
    ));
    let plaintext = request(None, "GET", "/", &headers);
    assert!(!policy_matches(
        &when(ConditionKey::SourcePrincipal, &["*"], &[]),
        &plaintext
    ));
    assert!(policy_matches(
        &when(ConditionKey::SourcePrincipal, &[], &[UI]),
        &plaintext
    ));
}

// === Istio's documented corner cases ===

#[test]
fn an_allow_policy_without_rules_denies_everything_one_empty_rule_allows_everything() {
    let headers = HeaderMap::new();
    let r = request(Some(UI), "GET", "/", &headers);
    let deny_all = decide(&[policy(Action::Allow, vec![])], &r);
    assert!(!deny_all.allowed);
    assert_eq!(deny_all.reason, "no ALLOW policy matched");
    let allow_all = decide(&[policy(Action::Allow, vec![Rule::default()])], &r);
    assert!(allow_all.allowed);
    assert!(decide(&[], &r).allowed, "no policy: allow");
    // A DENY policy without rules denies nothing.
    assert!(decide(&[policy(Action::Deny, vec![])], &r).allowed);
}

#[test]
fn deny_wins_over_allow_and_audit_changes_nothing() {
    let headers = HeaderMap::new();
    let r = request(Some(UI), "GET", "/admin", &headers);
    let everything = vec![Rule::default()];
    let decision = decide(
        &[
            policy(Action::Allow, everything.clone()),
            policy(Action::Deny, everything.clone()),
        ],
        &r,
    );
    assert!(!decision.allowed);
    assert_eq!(decision.reason, "denied by default/p");
    let audited = decide(&[policy(Action::Audit, everything)], &r);
    assert!(audited.allowed, "an AUDIT policy is not an ALLOW policy");
    assert_eq!(audited.audited_by, ["default/p"]);
}

// === the truth table ===

/// xorshift64*: deterministic cases, no dependency.
struct Cases(u64);

impl Cases {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[self.below(from.len())]
    }
    /// Zero to two values, each often absent, so most fields stay unset.
    fn values(&mut self, from: &[&str]) -> Vec<String> {
        let n = [0, 0, 0, 1, 1, 2][self.below(6)];
        (0..n).map(|_| self.pick(from).to_string()).collect()
    }
}

const PRINCIPALS: &[&str] = &[
    UI,
    TEST_NS,
    "*",
    "*/sa/guestbook-ui",
    "cluster.local/ns/default/*",
];
const NAMESPACES: &[&str] = &["default", "test", "*", "te*", "*lt"];
const METHODS: &[&str] = &["GET", "POST", "*", "P*"];
const PATHS: &[&str] = &["/admin", "/admin*", "*/info", "/", "*", "/api/*"];
const HOSTS: &[&str] = &["guestbook-service:8080", "GUESTBOOK-*", "*:9090", "*"];
const USERS: &[&str] = &["alice", "bob", "a*", "*", "*ob"];
const ACCOUNTS: &[&str] = &[
    "guestbook-ui",
    "default/guestbook-ui",
    "test/loadgen",
    "loadgen",
];
const DOMAINS: &[&str] = &[
    "cluster.local",
    "*",
    "cluster.*",
    "*.local",
    "other.example",
];

fn generate_policy(cases: &mut Cases) -> AuthorizationPolicy {
    let action = [Action::Allow, Action::Deny, Action::Audit][cases.below(3)];
    let rules = (0..cases.below(3))
        .map(|_| Rule {
            from: (0..cases.below(3))
                .map(|_| Source {
                    principals: cases.values(PRINCIPALS),
                    not_principals: cases.values(PRINCIPALS),
                    namespaces: cases.values(NAMESPACES),
                    not_namespaces: cases.values(NAMESPACES),
                    service_accounts: cases.values(ACCOUNTS),
                    not_service_accounts: cases.values(ACCOUNTS),
                    trust_domains: cases.values(DOMAINS),
                    not_trust_domains: cases.values(DOMAINS),
                    ..Source::default()
                })
                .collect(),
            to: (0..cases.below(3))
                .map(|_| Operation {
                    hosts: cases.values(HOSTS),
                    not_hosts: cases.values(HOSTS),
                    ports: (0..cases.below(2))
                        .map(|_| [8080, 9090][cases.below(2)])
                        .collect(),
                    not_ports: (0..cases.below(2))
                        .map(|_| [8080, 9090][cases.below(2)])
                        .collect(),
                    methods: cases.values(METHODS),
                    not_methods: cases.values(METHODS),
                    paths: cases.values(PATHS),
                    not_paths: cases.values(PATHS),
                })
                .collect(),
            when: (0..cases.below(2))
                .map(|_| {
                    let key = [
                        ConditionKey::RequestHeader("x-user".into()),
                        ConditionKey::SourceNamespace,
                        ConditionKey::SourcePrincipal,
                        ConditionKey::DestinationPort,
                        ConditionKey::SourceServiceAccount,
                        ConditionKey::SourceTrustDomain,
                    ][cases.below(6)]
                    .clone();
                    let pool: &[&str] = match key {
                        ConditionKey::RequestHeader(_) => USERS,
                        ConditionKey::SourceNamespace => NAMESPACES,
                        ConditionKey::SourcePrincipal => PRINCIPALS,
                        ConditionKey::DestinationPort => &["8080", "9090"],
                        ConditionKey::SourceServiceAccount => ACCOUNTS,
                        ConditionKey::SourceTrustDomain => DOMAINS,
                        ConditionKey::SourceIp | ConditionKey::RemoteIp => {
                            unreachable!("not generated: addresses have their own test")
                        }
                    };
                    Condition {
                        key,
                        values: cases.values(pool),
                        not_values: cases.values(pool),
                    }
                })
                .collect(),
        })
        .collect();
    policy(action, rules)
}

/// The reference model: every attribute of the request as an optional
/// string, every pattern as a regex, and Istio's order as a table.
struct Model<'c> {
    attributes: BTreeMap<&'static str, Option<String>>,
    /// Compiled patterns, shared by every case (compiling is the slow part).
    regexes: &'c RefCell<HashMap<String, Regex>>,
}

impl<'c> Model<'c> {
    fn of(request: &Request, regexes: &'c RefCell<HashMap<String, Regex>>) -> Model<'c> {
        let namespace = request
            .principal
            .and_then(|p| p.split("/ns/").nth(1))
            .and_then(|rest| rest.split('/').next())
            .map(str::to_string);
        let user = request
            .headers
            .get_all("x-user")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect::<Vec<_>>();
        let attributes = [
            ("principal", request.principal.map(str::to_string)),
            ("namespace", namespace),
            ("method", Some(request.method.to_string())),
            (
                "path",
                Some(request.path.split('?').next().unwrap().to_string()),
            ),
            ("host", Some(request.host.to_lowercase())),
            ("port", Some(request.port.to_string())),
            ("x-user", (!user.is_empty()).then(|| user.join(","))),
        ]
        .into();
        Model {
            attributes,
            regexes,
        }
    }

    /// A pattern as a regex: `*` alone is `.+`; a leading or trailing `*`
    /// is `.*`; the rest is literal.
    fn matches(&self, attribute: &str, pattern: &str) -> bool {
        let Some(value) = &self.attributes[attribute] else {
            return false;
        };
        let (pattern, value) = if attribute == "host" {
            (pattern.to_lowercase(), value.clone())
        } else {
            (pattern.to_string(), value.clone())
        };
        let regex = if pattern == "*" {
            "^.+$".to_string()
        } else if let Some(p) = pattern.strip_suffix('*') {
            format!("^{}.*$", regex::escape(p))
        } else if let Some(s) = pattern.strip_prefix('*') {
            format!("^.*{}$", regex::escape(s))
        } else {
            format!("^{}$", regex::escape(&pattern))
        };
        let mut regexes = self.regexes.borrow_mut();
        let regex = regexes
            .entry(regex)
            .or_insert_with_key(|r| Regex::new(r).unwrap());
        regex.is_match(&value)
    }

    /// A positive list (empty: no constraint) and a negative one.
    fn list(&self, attribute: &str, values: &[String], not: &[String]) -> bool {
        let positive = values.is_empty() || values.iter().any(|v| self.matches(attribute, v));
        let negative = not.iter().all(|v| !self.matches(attribute, v));
        positive && negative
    }

    /// The SPIFFE URI against a regex written the way Istio's generator
    /// writes it for a service account or a trust domain
    /// (pilot/pkg/security/authz/model/generator.go).
    fn uri_matches(&self, attribute: &str, value: &str) -> bool {
        let Some(principal) = &self.attributes["principal"] else {
            return false;
        };
        let uri = format!("spiffe://{principal}");
        let regex = if attribute == "account" {
            let (ns, sa) = value.split_once('/').unwrap_or(("default", value));
            format!(
                "^spiffe://.+/ns/{}/(.+/|)sa/{}(/.+)?$",
                regex::escape(ns),
                regex::escape(sa)
            )
        } else if value == "*" {
            "^spiffe://.*$".to_string()
        } else if !value.contains('*') {
            format!("^spiffe://{}/.*$", regex::escape(value))
        } else {
            let (a, b) = value.split_once('*').unwrap();
            format!(
                "^spiffe://{}[^/]*{}/.*$",
                regex::escape(a),
                regex::escape(b)
            )
        };
        let mut regexes = self.regexes.borrow_mut();
        let regex = regexes
            .entry(regex)
            .or_insert_with_key(|r| Regex::new(r).unwrap());
        regex.is_match(&uri)
    }

    fn uri_list(&self, attribute: &str, values: &[String], not: &[String]) -> bool {
        let positive = values.is_empty() || values.iter().any(|v| self.uri_matches(attribute, v));
        let negative = not.iter().all(|v| !self.uri_matches(attribute, v));
        positive && negative
    }

    fn rule(&self, rule: &Rule) -> bool {
        let from = rule.from.is_empty()
            || rule.from.iter().any(|s| {
                self.list("principal", &s.principals, &s.not_principals)
                    && self.list("namespace", &s.namespaces, &s.not_namespaces)
                    && self.uri_list("account", &s.service_accounts, &s.not_service_accounts)
                    && self.uri_list("domain", &s.trust_domains, &s.not_trust_domains)
            });
        let to = rule.to.is_empty()
            || rule.to.iter().any(|o| {
                let ports = |p: &[u16]| p.iter().map(u16::to_string).collect::<Vec<_>>();
                self.list("host", &o.hosts, &o.not_hosts)
                    && self.list("method", &o.methods, &o.not_methods)
                    && self.list("path", &o.paths, &o.not_paths)
                    && self.list("port", &ports(&o.ports), &ports(&o.not_ports))
            });
        let when = rule.when.iter().all(|c| {
            let attribute = match c.key {
                ConditionKey::RequestHeader(_) => "x-user",
                ConditionKey::SourceNamespace => "namespace",
                ConditionKey::SourcePrincipal => "principal",
                ConditionKey::DestinationPort => "port",
                ConditionKey::SourceServiceAccount => {
                    return self.uri_list("account", &c.values, &c.not_values);
                }
                ConditionKey::SourceTrustDomain => {
                    return self.uri_list("domain", &c.values, &c.not_values);
                }
                ConditionKey::SourceIp | ConditionKey::RemoteIp => unreachable!(),
            };
            self.list(attribute, &c.values, &c.not_values)
        });
        from && to && when
    }

    /// Istio's order as a table over (a DENY matches, an ALLOW exists, an
    /// ALLOW matches).
    fn allowed(&self, policies: &[AuthorizationPolicy]) -> bool {
        let matched = |action| {
            policies
                .iter()
                .any(|p| p.action == action && p.rules.iter().any(|r| self.rule(r)))
        };
        let exists = |action| policies.iter().any(|p| p.action == action);
        match (
            matched(Action::Deny),
            exists(Action::Allow),
            matched(Action::Allow),
        ) {
            (true, _, _) => false,
            (false, false, _) => true,
            (false, true, true) => true,
            (false, true, false) => false,
        }
    }
}

#[test]
fn generated_policies_decide_as_the_reference_model() {
    let mut cases = Cases(0x9E37_79B9_7F4A_7C15);
    let regexes = RefCell::new(HashMap::new());
    let mut outcomes: BTreeMap<&str, usize> = BTreeMap::new();
    for case in 0..20_000 {
        let policies: Vec<AuthorizationPolicy> = (0..cases.below(4))
            .map(|_| generate_policy(&mut cases))
            .collect();
        let mut headers = HeaderMap::new();
        for _ in 0..cases.below(3) {
            headers.append("x-user", cases.pick(&["alice", "bob"]).parse().unwrap());
        }
        let principal = [None, Some(UI), Some(TEST_NS), Some(OTHER_DOMAIN)][cases.below(4)];
        let request = Request {
            principal,
            method: cases.pick(&["GET", "POST"]),
            host: cases.pick(&["guestbook-service:8080", "Guestbook-Service:9090"]),
            path: cases.pick(&["/", "/admin", "/admin/x", "/api/info", "/api/v1?x=1"]),
            port: [8080, 9090][cases.below(2)],
            headers: &headers,
            source_ip: LOCAL,
            remote_ip: LOCAL,
        };
        let expected = Model::of(&request, &regexes).allowed(&policies);
        let decision = decide(&policies, &request);
        assert_eq!(
            decision.allowed, expected,
            "case {case}: {request:?}\npolicies: {policies:#?}\nevaluator said: {}",
            decision.reason
        );
        let branch = match decision.reason.as_str() {
            r if r.starts_with("denied by") => "deny matched",
            r if r.starts_with("allowed by") => "allow matched",
            "no ALLOW policy applies" => "no allow policy",
            _ => "no allow matched",
        };
        *outcomes.entry(branch).or_default() += 1;
    }
    // Every branch of the order was exercised many times, so the table
    // above proves something about each.
    for branch in [
        "deny matched",
        "allow matched",
        "no allow policy",
        "no allow matched",
    ] {
        assert!(
            outcomes.get(branch).copied().unwrap_or(0) >= 500,
            "{outcomes:?}"
        );
    }
}

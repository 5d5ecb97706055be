//! The fixtures in `tests/fixtures/`: YAML a learner might apply, from the
//! talk's era and from today's Istio, and exactly what micromesh answers.
//!
//! Each fixture is either accepted (and these resources come out) or
//! rejected with these errors: file, resource, field path, and the words
//! that tell the learner what to write instead. Every `.yaml` fixture must
//! appear in the table, so a new fixture cannot go untested.

use std::collections::BTreeSet;
use std::path::PathBuf;

use mesh_api::config::{ConfigError, ConfigSet, Kind, SourceFile, Spec};

fn fixture(name: &str) -> SourceFile {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let content = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read fixture {}: {e}", path.display()));
    SourceFile {
        name: name.to_string(),
        content,
    }
}

/// What a fixture must produce.
enum Expect {
    /// Accepted: these resource ids, in file order.
    Accepted(&'static [&'static str]),
    /// Rejected: exactly these errors (resource, field, words in the message).
    Rejected(&'static [(&'static str, &'static str, &'static [&'static str])]),
}

use Expect::*;

const TABLE: &[(&str, Expect)] = &[
    (
        "canary-v1alpha3.yaml",
        Accepted(&[
            "DestinationRule default/guestbook-ui",
            "VirtualService default/guestbook-ui",
        ]),
    ),
    (
        "gateway.yaml",
        Accepted(&["Gateway default/guestbook-gateway"]),
    ),
    (
        "chrome-header-routing.yaml",
        Accepted(&[
            "VirtualService default/helloworld-service",
            "DestinationRule default/helloworld-service",
        ]),
    ),
    (
        "delay-current.yaml",
        Accepted(&["VirtualService default/guestbook-ui"]),
    ),
    (
        "retries.yaml",
        Accepted(&["VirtualService default/guestbook-service"]),
    ),
    (
        "peer-authentication.yaml",
        Accepted(&[
            "PeerAuthentication istio-system/default",
            "PeerAuthentication default/default",
            "PeerAuthentication default/guestbook-service",
        ]),
    ),
    (
        "authorization-policy.yaml",
        Accepted(&[
            "AuthorizationPolicy istio-system/allow-nothing",
            "AuthorizationPolicy default/allow-all",
            "AuthorizationPolicy default/guestbook-service-viewers",
            "AuthorizationPolicy default/deny-admin",
            "AuthorizationPolicy default/audit-writes",
        ]),
    ),
    (
        "destination-rule-tls.yaml",
        Accepted(&["DestinationRule default/guestbook-service"]),
    ),
    (
        "security-unimplemented.yaml",
        Rejected(&[
            (
                "AuthorizationPolicy default/ext-authz",
                "spec.provider",
                &["does not implement `provider`", "CUSTOM"],
            ),
            (
                "AuthorizationPolicy default/ext-authz",
                "spec.action",
                &["does not implement `CUSTOM`", "ALLOW, DENY or AUDIT"],
            ),
            (
                "AuthorizationPolicy default/ext-authz",
                "spec.rules[0].from[0].source.requestPrincipals",
                &["does not implement `requestPrincipals`", "JWT"],
            ),
            (
                "AuthorizationPolicy default/ext-authz",
                "spec.rules[1].when[0].key",
                &["request.auth.claims[groups]", "JWT"],
            ),
            (
                "AuthorizationPolicy default/ext-authz",
                "spec.rules[1].when[1].key",
                &[
                    "does not implement the condition `connection.sni`",
                    "TLS server name",
                ],
            ),
            (
                "PeerAuthentication default/default",
                "spec.mtls.mode",
                &["not an mTLS mode", "write `STRICT`"],
            ),
            (
                "PeerAuthentication default/default",
                "spec.portLevelMtls",
                &["needs a `selector`"],
            ),
            (
                "DestinationRule default/api-example-com",
                "spec.trafficPolicy.tls.clientCertificate",
                &[
                    "does not implement `clientCertificate`",
                    "until egress TLS exists",
                ],
            ),
            (
                "DestinationRule default/api-example-com",
                "spec.trafficPolicy.tls.mode",
                &["does not implement `MUTUAL`", "ISTIO_MUTUAL"],
            ),
        ]),
    ),
    (
        "circuit-breaker-current.yaml",
        Accepted(&["DestinationRule default/helloworld-service"]),
    ),
    (
        "empty-documents.yaml",
        Accepted(&["VirtualService default/helloworld-service"]),
    ),
    (
        "delay-old-percent.yaml",
        Rejected(&[(
            "VirtualService default/guestbook-ui",
            "spec.http[0].fault.delay.percent",
            &[
                "`percent`",
                "still accepts it",
                "deprecated",
                "percentage: {value: 100}",
            ],
        )]),
    ),
    (
        "abort-old-percent.yaml",
        Rejected(&[(
            "VirtualService default/guestbook-service",
            "spec.http[0].fault.abort.percent",
            &["`percent`", "no longer has it", "percentage: {value: 100}"],
        )]),
    ),
    (
        "circuit-breaker-old.yaml",
        Rejected(&[(
            "DestinationRule default/helloworld-service",
            "spec.trafficPolicy.outlierDetection.http",
            &[
                "Istio 1.0 moved its fields up one level",
                "consecutive5xxErrors",
            ],
        )]),
    ),
    (
        "circuit-breaker-consecutive-errors.yaml",
        Rejected(&[(
            "DestinationRule default/helloworld-service",
            "spec.trafficPolicy.outlierDetection.consecutiveErrors",
            &[
                "deprecated",
                "502, 503 and 504",
                "consecutive5xxErrors: N",
                "consecutiveGatewayErrors: N",
            ],
        )]),
    ),
    (
        "mixer-denier.yaml",
        Rejected(&[
            (
                "denier istio-system/refuse-all",
                "kind",
                &[
                    "Mixer",
                    "removed in Istio 1.8",
                    "security.istio.io/v1 AuthorizationPolicy",
                ],
            ),
            (
                "checknothing istio-system/empty-check",
                "kind",
                &["Mixer", "AuthorizationPolicy"],
            ),
            (
                "rule istio-system/refuse-guestbook-service",
                "kind",
                &["Mixer", "AuthorizationPolicy"],
            ),
        ]),
    ),
    (
        "rbac-config.yaml",
        Rejected(&[
            (
                "RbacConfig default/default",
                "kind",
                &[
                    "rbac.istio.io",
                    "removed in Istio 1.6",
                    "security.istio.io/v1 AuthorizationPolicy",
                ],
            ),
            (
                "ServiceRole default/backend-caller",
                "kind",
                &["removed in Istio 1.6"],
            ),
            (
                "ServiceRoleBinding default/ui-calls-backend",
                "kind",
                &["removed in Istio 1.6"],
            ),
        ]),
    ),
    (
        "service-entry.yaml",
        Rejected(&[(
            "ServiceEntry default/package-mirror",
            "kind",
            &["ServiceEntry is not implemented by micromesh yet"],
        )]),
    ),
    (
        "unimplemented-fields.yaml",
        Rejected(&[
            (
                "VirtualService default/guestbook-ui",
                "spec.exportTo",
                &[
                    "micromesh does not implement `exportTo` (Istio does: it",
                    "remove it",
                ],
            ),
            (
                "VirtualService default/guestbook-ui",
                "spec.tcp",
                &["does not implement `tcp`"],
            ),
            (
                "VirtualService default/guestbook-ui",
                "spec.http[0].redirect",
                &["does not implement `redirect`", "301/302"],
            ),
            (
                "VirtualService default/guestbook-ui",
                "spec.http[0].route",
                &["missing required field `route`"],
            ),
            (
                "VirtualService default/guestbook-ui",
                "spec.http[1].corsPolicy",
                &["does not implement `corsPolicy`"],
            ),
            (
                "DestinationRule default/guestbook-ui",
                "spec.trafficPolicy.loadBalancer.consistentHash",
                &["does not implement `consistentHash`"],
            ),
            (
                "DestinationRule default/guestbook-ui",
                "spec.trafficPolicy.tls.mode",
                &["does not implement `SIMPLE`", "until egress TLS exists"],
            ),
            (
                "DestinationRule default/guestbook-ui",
                "spec.trafficPolicy.portLevelSettings[0].loadBalancer",
                &["does not implement `loadBalancer`", "one port"],
            ),
        ]),
    ),
    (
        "many-mistakes.yaml",
        Rejected(&[
            (
                "VirtualService default/helloworld-service",
                "spec.http[0].retry",
                &["unknown field `retry`", "did you mean `retries`?"],
            ),
            (
                "VirtualService default/helloworld-service",
                "spec.http[0].match[0].uri",
                &["exactly one of", "`exact` and `prefix`"],
            ),
            (
                "VirtualService default/helloworld-service",
                "spec.http[0].route[0].destination.subset",
                &["`V2` is not a subset name"],
            ),
            (
                "VirtualService default/helloworld-service",
                "spec.http[0].route[1].weight",
                &["negative"],
            ),
            (
                "VirtualService default/helloworld-service",
                "spec.http[0].fault.abort.httpStatus",
                &["700", "200..=599"],
            ),
            (
                "VirtualService default/helloworld-service",
                "spec.http[0].fault.abort.percentage.value",
                &["150", "0..=100"],
            ),
            (
                "VirtualService default/helloworld-service",
                "spec.http[0].timeout",
                &["no unit", "`5s`"],
            ),
            (
                "DestinationRule default/Helloworld_Service",
                "metadata.name",
                &["not a valid name"],
            ),
            (
                "DestinationRule default/Helloworld_Service",
                "spec.trafficPolicy.loadBalancer.simple",
                &["`FASTEST`", "ROUND_ROBIN, LEAST_REQUEST or RANDOM"],
            ),
            (
                "DestinationRule default/Helloworld_Service",
                "spec.trafficPolicy.outlierDetection.interval",
                &["negative"],
            ),
        ]),
    ),
    (
        "syntax-error.yaml",
        Rejected(&[(
            "document 2 (line 9)",
            "",
            &["YAML syntax error", "line 16 column 7", "line 15 column 10"],
        )]),
    ),
    (
        "wrong-kinds.yaml",
        Rejected(&[
            (
                "Deployment default/guestbook-ui",
                "apiVersion",
                &["not an Istio resource", "kubectl"],
            ),
            (
                "virtualservice default/lower-case",
                "kind",
                &["case-sensitive", "kind: VirtualService"],
            ),
            (
                "Gateway default/future",
                "apiVersion",
                &[
                    "networking.istio.io/v2",
                    "apiVersion: networking.istio.io/v1",
                ],
            ),
            (
                "RequestAuthentication default/jwt",
                "kind",
                &["not implemented by micromesh yet", "JWT"],
            ),
        ]),
    ),
];

fn check(name: &str, expect: &Expect) -> Result<(), String> {
    let result = ConfigSet::parse(&[fixture(name)]);
    match (expect, result) {
        (Accepted(ids), Ok(resources)) => {
            let got: Vec<String> = resources.iter().map(|r| r.id()).collect();
            if got != *ids {
                return Err(format!("{name}: accepted {got:?}, expected {ids:?}"));
            }
        }
        (Accepted(_), Err(errors)) => return Err(format!("{name}: rejected:\n{errors}")),
        (Rejected(_), Ok(resources)) => {
            return Err(format!(
                "{name}: accepted {} resources, expected errors",
                resources.len()
            ));
        }
        (Rejected(expected), Err(errors)) => {
            let got = &errors.errors;
            if got.len() != expected.len() {
                return Err(format!(
                    "{name}: {} errors, expected {}:\n{errors}",
                    got.len(),
                    expected.len()
                ));
            }
            for (error, (resource, field, words)) in got.iter().zip(expected.iter()) {
                let ConfigError {
                    file,
                    resource: r,
                    field: f,
                    message,
                } = error;
                if file != name || r != resource || f != field {
                    return Err(format!(
                        "{name}: got ({file}, {r}, {f}), expected ({name}, {resource}, {field}):\n{errors}"
                    ));
                }
                if let Some(word) = words.iter().find(|w| !message.contains(*w)) {
                    return Err(format!(
                        "{name}: {field}: message lacks {word:?}: {message}"
                    ));
                }
            }
        }
    }
    Ok(())
}

#[test]
fn every_fixture_is_accepted_or_rejected_as_expected() {
    let failures: Vec<String> = TABLE
        .iter()
        .filter_map(|(name, expect)| check(name, expect).err())
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn every_fixture_is_in_the_table() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let on_disk: BTreeSet<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    let in_table: BTreeSet<String> = TABLE.iter().map(|(n, _)| n.to_string()).collect();
    assert_eq!(on_disk, in_table);
}

#[test]
fn one_bad_file_rejects_the_whole_request() {
    let errors = ConfigSet::parse(&[fixture("gateway.yaml"), fixture("delay-old-percent.yaml")])
        .expect_err("the old `percent` must reject the request");
    // Only the bad file is named, but nothing of the good one is returned.
    assert_eq!(errors.errors.len(), 1);
    assert_eq!(errors.errors[0].file, "delay-old-percent.yaml");
}

#[test]
fn the_same_resource_twice_in_one_request_is_an_error() {
    let errors = ConfigSet::parse(&[fixture("delay-current.yaml"), fixture("delay-current.yaml")])
        .expect_err("duplicate resources");
    assert_eq!(errors.errors.len(), 1);
    let error = &errors.errors[0];
    assert_eq!(error.resource, "VirtualService default/guestbook-ui");
    assert_eq!(error.field, "metadata.name");
    assert!(error.message.contains("defined twice"), "{}", error.message);
    assert!(
        error.message.contains("delay-current.yaml, document 1"),
        "{}",
        error.message
    );
}

#[test]
fn an_empty_request_is_an_error() {
    let empty = SourceFile {
        name: "empty.yaml".into(),
        content: "# nothing here\n---\n".into(),
    };
    let errors = ConfigSet::parse(&[empty]).expect_err("no resources");
    assert!(errors.errors[0].message.contains("no resources found"));
}

#[test]
fn deleting_by_file_needs_only_the_identity() {
    // The talk's file no longer validates, but `meshctl delete -f` with it
    // must still find the resource by kind, namespace and name.
    let resources = ConfigSet::parse_identities(&[fixture("delay-old-percent.yaml")]).unwrap();
    assert_eq!(resources[0].id(), "VirtualService default/guestbook-ui");
    // Kinds that were never accepted are still errors.
    assert!(ConfigSet::parse_identities(&[fixture("mixer-denier.yaml")]).is_err());
}

#[test]
fn accepted_fixtures_decode_to_what_they_say() {
    let resources = ConfigSet::parse(&[fixture("circuit-breaker-current.yaml")]).unwrap();
    let Spec::DestinationRule(dr) = Spec::of(&resources[0]).unwrap() else {
        panic!("a DestinationRule");
    };
    let v1 = dr.policy_for(Some("v1"));
    let outlier = v1.outlier_detection.unwrap();
    assert_eq!(outlier.consecutive_5xx_errors, 3);
    assert_eq!(outlier.interval_ms, 30_000);
    assert_eq!(outlier.base_ejection_time_ms, 120_000);
    assert_eq!(outlier.max_ejection_percent, 100);
    assert_eq!(v1.connection_pool.max_requests_per_connection, Some(5));

    let resources = ConfigSet::parse(&[fixture("canary-v1alpha3.yaml")]).unwrap();
    assert_eq!(
        resources[1].api_version, "networking.istio.io/v1alpha3",
        "kept as written"
    );
    assert_eq!(Kind::parse(&resources[1].kind), Ok(Kind::VirtualService));
    let Spec::VirtualService(vs) = Spec::of(&resources[1]).unwrap() else {
        panic!("a VirtualService");
    };
    assert!(!vs.binds_mesh(), "bound to the gateway only");
    let weights: Vec<Option<u32>> = vs.http[0].route.iter().map(|r| r.weight).collect();
    assert_eq!(weights, vec![Some(80), Some(20)]);
}

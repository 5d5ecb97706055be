//! Analysis: config that is valid YAML but will not do what it says.
//!
//! Each test applies a little config, analyses it against a registry, and
//! checks the exact finding (level, code, resource, field) a learner would
//! see from `meshctl analyze`, where Istio would answer with a silent 503.

use std::collections::BTreeMap;

use mesh_api::config::{ConfigSet, Diagnostic, SourceFile};
use mesh_api::xds::{ProxyAnnounce, ProxyMode};

/// Apply each YAML text in turn (so earlier ones are older).
fn config(texts: &[&str]) -> ConfigSet {
    texts
        .iter()
        .enumerate()
        .fold(ConfigSet::default(), |set, (i, text)| {
            let resources = ConfigSet::parse(&[SourceFile {
                name: format!("{i}.yaml"),
                content: text.to_string(),
            }])
            .unwrap_or_else(|e| panic!("test YAML {i} is invalid:\n{e}"));
            set.apply(resources).0
        })
}

fn services(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

fn sidecar(service: &str, version: &str) -> ProxyAnnounce {
    ProxyAnnounce {
        identity: None,
        instance: format!("{service}-{version}-1"),
        mode: ProxyMode::Sidecar,
        service: service.into(),
        version: version.into(),
        labels: BTreeMap::new(),
        address: "127.0.0.1:1".into(),
        ready: true,
        admin_address: String::new(),
    }
}

fn ingress() -> ProxyAnnounce {
    ProxyAnnounce {
        instance: "ingressgateway-1".into(),
        mode: ProxyMode::Gateway,
        service: "ingressgateway".into(),
        labels: [("istio".to_string(), "ingressgateway".to_string())].into(),
        ..ProxyAnnounce::default()
    }
}

/// `(level, code, resource, field)` of each finding, for exact comparison.
fn summary(diagnostics: &[Diagnostic]) -> Vec<(String, String, String, String)> {
    diagnostics
        .iter()
        .map(|d| {
            (
                d.level.clone(),
                d.code.clone(),
                d.resource.clone(),
                d.field.clone(),
            )
        })
        .collect()
}

fn finding(
    level: &str,
    code: &str,
    resource: &str,
    field: &str,
) -> (String, String, String, String) {
    (level.into(), code.into(), resource.into(), field.into())
}

const HW_SUBSETS: &str = "
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: helloworld-service}
spec:
  host: helloworld-service
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
";

#[test]
fn a_clean_canary_has_nothing_to_report() {
    let set = config(&[
        HW_SUBSETS,
        "
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: helloworld-service}
spec:
  hosts: [helloworld-service]
  http:
  - route:
    - {destination: {host: helloworld-service, subset: v1}, weight: 80}
    - {destination: {host: helloworld-service, subset: v2}, weight: 20}
",
    ]);
    let proxies = [
        sidecar("helloworld-service", "v1"),
        sidecar("helloworld-service", "v2"),
    ];
    assert_eq!(set.analyze_proxies(&proxies), vec![]);
    assert_eq!(set.analyze(&services(&["helloworld-service"])), vec![]);
}

#[test]
fn a_route_to_an_undefined_subset_is_an_error_that_explains_the_503() {
    let set = config(&[
        HW_SUBSETS,
        "
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: helloworld-service}
spec:
  hosts: [helloworld-service]
  http:
  - route:
    - {destination: {host: helloworld-service, subset: v1}, weight: 50}
    - {destination: {host: helloworld-service, subset: v3}, weight: 50}
    mirror: {host: helloworld-service, subset: canary}
",
    ]);
    let diagnostics = set.analyze(&services(&["helloworld-service"]));
    assert_eq!(
        summary(&diagnostics),
        vec![
            finding(
                "Error",
                "ReferencedResourceNotFound",
                "VirtualService default/helloworld-service",
                "spec.http[0].route[1].destination.subset"
            ),
            finding(
                "Error",
                "ReferencedResourceNotFound",
                "VirtualService default/helloworld-service",
                "spec.http[0].mirror.subset"
            ),
        ]
    );
    let message = &diagnostics[0].message;
    assert!(message.contains("subset `v3` is not defined"), "{message}");
    assert!(message.contains("defines `v1`, `v2`"), "{message}");
    assert!(message.contains("503"), "{message}");
}

#[test]
fn hosts_without_a_service_are_warnings() {
    let set = config(&["
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: typo}
spec:
  hosts: [helloworld-servce]
  http:
  - route: [{destination: {host: helloworld-servce}}]
  - route: [{destination: {host: www.example.com}}]
"]);
    let diagnostics = set.analyze(&services(&["helloworld-service"]));
    assert_eq!(
        summary(&diagnostics),
        vec![
            finding(
                "Warning",
                "ReferencedResourceNotFound",
                "VirtualService default/typo",
                "spec.hosts[0]"
            ),
            finding(
                "Warning",
                "ReferencedResourceNotFound",
                "VirtualService default/typo",
                "spec.http[0].route[0].destination.host"
            ),
            finding(
                "Warning",
                "ReferencedResourceNotFound",
                "VirtualService default/typo",
                "spec.http[1].route[0].destination.host"
            ),
            finding(
                "Warning",
                "VirtualServiceUnreachableRule",
                "VirtualService default/typo",
                "spec.http[1]"
            ),
        ]
    );
    assert!(
        diagnostics[1]
            .message
            .contains("registered: `helloworld-service`")
    );
    assert!(diagnostics[2].message.contains("ServiceEntry"));
}

#[test]
fn two_virtual_services_for_one_host_name_the_winner() {
    let older = "
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: first}
spec:
  hosts: [helloworld-service]
  http: [{route: [{destination: {host: helloworld-service}}]}]
";
    let newer = "
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: second}
spec:
  hosts: [helloworld-service.default.svc.cluster.local]
  http: [{route: [{destination: {host: helloworld-service}}]}]
";
    let set = config(&[older, newer]);
    let diagnostics = set.analyze(&services(&["helloworld-service"]));
    assert_eq!(
        summary(&diagnostics),
        vec![finding(
            "Warning",
            "ConflictingMeshGatewayVirtualServiceHosts",
            "VirtualService default/second",
            "spec.hosts[0]"
        )]
    );
    assert!(
        diagnostics[0]
            .message
            .contains("VirtualService default/first")
    );
    assert!(diagnostics[0].message.contains("older, so it wins"));
    // Reapplying the older one does not make it younger.
    let set = config(&[older, newer, older]);
    assert_eq!(
        set.analyze(&services(&["helloworld-service"]))[0].resource,
        "VirtualService default/second"
    );
}

const GATEWAY: &str = "
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: guestbook-gateway}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: [guestbook.example.com]}]
";

#[test]
fn gateway_references_are_checked_both_ways() {
    let set = config(&[
        GATEWAY,
        "
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ui}
spec:
  hosts: [guestbook.example.com, admin.example.com]
  gateways: [guestbook-gateway, edge-gateway]
  http: [{route: [{destination: {host: guestbook-ui}}]}]
",
    ]);
    let diagnostics = set.analyze_proxies(&[sidecar("guestbook-ui", "v1"), ingress()]);
    assert_eq!(
        summary(&diagnostics),
        vec![
            finding(
                "Error",
                "ReferencedResourceNotFound",
                "VirtualService default/ui",
                "spec.gateways[1]"
            ),
            finding(
                "Warning",
                "VirtualServiceHostNotFoundInGateway",
                "VirtualService default/ui",
                "spec.hosts[1]"
            ),
        ]
    );
    assert!(
        diagnostics[0]
            .message
            .contains("no Gateway `default/edge-gateway`")
    );
    assert!(
        diagnostics[0].message.contains("`guestbook-gateway`"),
        "lists what exists"
    );
}

#[test]
fn a_gateway_nobody_binds_or_no_proxy_runs_is_reported() {
    let other = GATEWAY.replace("ingressgateway", "egressgateway");
    let set = config(&[&other]);
    let diagnostics = set.analyze_proxies(&[ingress()]);
    assert_eq!(
        summary(&diagnostics),
        vec![
            finding(
                "Warning",
                "GatewayHasNoRoutes",
                "Gateway default/guestbook-gateway",
                ""
            ),
            finding(
                "Warning",
                "GatewaySelectsNoProxy",
                "Gateway default/guestbook-gateway",
                "spec.selector"
            ),
        ]
    );
    assert!(diagnostics[1].message.contains("istio: ingressgateway"));
    // Without knowing the proxies, the selector is not judged.
    assert_eq!(set.analyze(&[]).len(), 1);
}

#[test]
fn a_subset_no_running_instance_has_is_reported_with_what_runs() {
    // The talk labelled versions "1.0" and "2.0"; micromesh's instances say v1, v2.
    let set = config(&["
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata: {name: guestbook-ui}
spec:
  host: guestbook-ui
  subsets:
  - {name: v1, labels: {version: '1.0'}}
  - {name: v2, labels: {version: v2}}
"]);
    let diagnostics =
        set.analyze_proxies(&[sidecar("guestbook-ui", "v1"), sidecar("guestbook-ui", "v2")]);
    assert_eq!(
        summary(&diagnostics),
        vec![finding(
            "Warning",
            "SubsetSelectsNoInstances",
            "DestinationRule default/guestbook-ui",
            "spec.subsets[0].labels"
        )]
    );
    let message = &diagnostics[0].message;
    assert!(
        message.contains("`version: 1.0`") && message.contains("`version=v1`, `version=v2`"),
        "{message}"
    );
}

#[test]
fn quiet_semantics_are_explained_as_info() {
    let set = config(&["
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: hw}
spec:
  hosts: [helloworld-service]
  http:
  - match: [{headers: {x-test: {exact: abort}}}]
    route: [{destination: {host: helloworld-service}}]
    fault: {abort: {httpStatus: 503}}
    retries: {attempts: 3}
  - route: [{destination: {host: helloworld-service}}]
    retries: {perTryTimeout: 1s}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: hw}
spec:
  host: helloworld-service
  trafficPolicy: {loadBalancer: {simple: LEAST_CONN}}
"]);
    let diagnostics = set.analyze(&services(&["helloworld-service"]));
    assert_eq!(
        summary(&diagnostics),
        vec![
            finding(
                "Info",
                "FaultInjectsNothing",
                "VirtualService default/hw",
                "spec.http[0].fault.abort"
            ),
            finding(
                "Info",
                "RetriesDisabled",
                "VirtualService default/hw",
                "spec.http[0].retries"
            ),
            finding(
                "Info",
                "RetriesDisabled",
                "VirtualService default/hw",
                "spec.http[1].retries"
            ),
            finding(
                "Info",
                "Deprecated",
                "DestinationRule default/hw",
                "spec.trafficPolicy.loadBalancer.simple"
            ),
        ]
    );
    assert!(diagnostics[0].message.contains("percentage: {value: 100}"));
}

#[test]
fn resources_outside_default_are_stored_but_flagged() {
    let set = config(&["
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: hw, namespace: staging}
spec:
  hosts: [helloworld-service]
  http: [{route: [{destination: {host: helloworld-service, subset: nowhere}}]}]
"]);
    assert_eq!(set.len(), 1);
    let diagnostics = set.analyze(&services(&["helloworld-service"]));
    assert_eq!(
        summary(&diagnostics),
        vec![finding(
            "Warning",
            "NamespaceNotRouted",
            "VirtualService staging/hw",
            "metadata.namespace"
        )]
    );
}

#[test]
fn diagnostics_print_like_istioctl() {
    let set = config(&[GATEWAY]);
    let line = set.analyze(&[])[0].to_string();
    assert!(
        line.starts_with("Warning [GatewayHasNoRoutes] Gateway default/guestbook-gateway: no VirtualService binds"),
        "{line}"
    );
}

// === several rules for one host (issue 18) ===

/// `(level, code, resource, field)` of the findings with one of `codes`.
fn only(diagnostics: &[Diagnostic], codes: &[&str]) -> Vec<(String, String, String, String)> {
    let kept: Vec<Diagnostic> = diagnostics
        .iter()
        .filter(|d| codes.contains(&d.code.as_str()))
        .cloned()
        .collect();
    summary(&kept)
}

#[test]
fn two_mesh_virtual_services_for_one_host_name_both_and_the_winner() {
    // Applied in this order: `b-first` is older although its name sorts
    // later, so creation order, not the name, picks the winner.
    let set = config(&[
        "
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: b-first}
spec:
  hosts: [helloworld-service]
  http: [{route: [{destination: {host: helloworld-service}}]}]
",
        "
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: a-second}
spec:
  hosts: [helloworld-service]
  http: [{route: [{destination: {host: helloworld-service}}], timeout: 2s}]
",
    ]);
    let diagnostics = set.analyze(&services(&["helloworld-service"]));
    assert_eq!(
        summary(&diagnostics),
        vec![finding(
            "Warning",
            "ConflictingMeshGatewayVirtualServiceHosts",
            "VirtualService default/a-second",
            "spec.hosts[0]"
        )]
    );
    let message = &diagnostics[0].message;
    for needle in [
        "VirtualService default/b-first and VirtualService default/a-second",
        "VirtualService default/b-first is older, so it wins",
        "applied first",
        "IST0109",
    ] {
        assert!(message.contains(needle), "{needle:?} missing in: {message}");
    }
    // The MERGED column says the same in a few words.
    let merges = set.merges();
    assert_eq!(
        merges["VirtualService default/b-first"],
        vec!["mesh helloworld-service: used (older than a-second)"]
    );
    assert_eq!(
        merges["VirtualService default/a-second"],
        vec!["mesh helloworld-service: not used (b-first is older)"]
    );
}

const INGRESS_A: &str = "
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gateway-a}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ['*']}]
";

const INGRESS_B: &str = "
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gateway-b}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ['*']}]
";

const MESSAGES_VS: &str = "
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: a-messages}
spec:
  hosts: ['*']
  gateways: [gateway-a]
  http:
  - match: [{uri: {prefix: /messages}}]
    route: [{destination: {host: guestbook-service}}]
";

const HELLO_VS: &str = "
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: b-hello}
spec:
  hosts: ['*']
  gateways: [gateway-b]
  http:
  - match: [{uri: {prefix: /hello}}]
    route: [{destination: {host: helloworld-service}}]
";

#[test]
fn gateway_virtual_services_through_two_gateways_of_one_ingress_are_merged_and_said_so() {
    // The case the issue names: two Gateway resources select the same
    // ingress, each with a VirtualService for `*`. Istio merges them; so
    // does micromesh, and analysis says in which order.
    let set = config(&[INGRESS_A, INGRESS_B, MESSAGES_VS, HELLO_VS]);
    let codes = [
        "GatewayVirtualServicesMerged",
        "GatewayCatchAllShadowed",
        "ConflictingMeshGatewayVirtualServiceHosts",
    ];
    let expected = vec![finding(
        "Info",
        "GatewayVirtualServicesMerged",
        "VirtualService default/b-hello",
        "spec.hosts",
    )];
    // Without proxies (the Gateways' selectors decide) and with a running
    // ingress whose labels both select: the same finding.
    let offline = set.analyze(&services(&["guestbook-service", "helloworld-service"]));
    assert_eq!(only(&offline, &codes), expected);
    let live = set.analyze_proxies(&[
        sidecar("guestbook-service", "v1"),
        sidecar("helloworld-service", "v1"),
        ingress(),
    ]);
    assert_eq!(only(&live, &codes), expected);
    let message = &live
        .iter()
        .find(|d| d.code == "GatewayVirtualServicesMerged")
        .unwrap()
        .message;
    assert!(
        message.contains("host `*` merges the rules of default/a-messages, default/b-hello"),
        "{message}"
    );
    assert!(
        message.contains("after VirtualService default/a-messages's"),
        "{message}"
    );
    assert_eq!(
        set.merges()["VirtualService default/b-hello"],
        vec!["gateway *: 2 of 2 (a-messages + b-hello)"]
    );

    // A Gateway for another ingress does not merge.
    let other = INGRESS_B.replace("ingressgateway", "other-ingress");
    let set = config(&[INGRESS_A, &other, MESSAGES_VS, HELLO_VS]);
    let diagnostics = set.analyze(&services(&["guestbook-service", "helloworld-service"]));
    assert_eq!(only(&diagnostics, &codes), vec![]);
    assert!(set.merges().is_empty());
}

#[test]
fn a_second_catch_all_for_a_gateway_host_is_reported_as_never_running() {
    let catch_all = |name: &str, service: &str| {
        format!(
            "
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {name}}}
spec:
  hosts: ['*']
  gateways: [gateway-a]
  http:
  - match: [{{uri: {{prefix: /{service}}}}}]
    route: [{{destination: {{host: {service}}}}}]
  - route: [{{destination: {{host: {service}}}}}]
"
        )
    };
    let older = catch_all("ui", "guestbook-ui");
    let newer = catch_all("hello", "helloworld-service");
    let set = config(&[INGRESS_A, &older, &newer]);
    let diagnostics = set.analyze(&services(&["guestbook-ui", "helloworld-service"]));
    assert_eq!(
        only(
            &diagnostics,
            &[
                "GatewayCatchAllShadowed",
                "GatewayVirtualServicesMerged",
                "VirtualServiceUnreachableRule"
            ]
        ),
        vec![
            finding(
                "Info",
                "GatewayVirtualServicesMerged",
                "VirtualService default/hello",
                "spec.hosts"
            ),
            finding(
                "Warning",
                "GatewayCatchAllShadowed",
                "VirtualService default/hello",
                "spec.http[1]"
            ),
        ]
    );
    let message = &diagnostics
        .iter()
        .find(|d| d.code == "GatewayCatchAllShadowed")
        .unwrap()
        .message;
    assert!(
        message.contains("rule 1 of VirtualService default/ui, which is older"),
        "{message}"
    );
    assert!(
        message.contains("only the first one takes effect"),
        "{message}"
    );
}

#[test]
fn destination_rules_for_one_host_merge_and_only_real_conflicts_are_warnings() {
    let v1 = "
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: hw-v1}
spec:
  host: helloworld-service
  trafficPolicy: {loadBalancer: {simple: RANDOM}}
  subsets: [{name: v1, labels: {version: v1}}]
";
    let v2 = "
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: hw-v2}
spec:
  host: helloworld-service.default.svc.cluster.local
  subsets: [{name: v2, labels: {version: v2}}]
";
    let to_v2 = "
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: hw}
spec:
  hosts: [helloworld-service]
  http: [{route: [{destination: {host: helloworld-service, subset: v2}}]}]
";
    // Different subsets: both apply, so the route to v2 (defined only by the
    // newer rule) is not a missing subset; the merge is noted as Info.
    let set = config(&[v1, v2, to_v2]);
    let running = [
        sidecar("helloworld-service", "v1"),
        sidecar("helloworld-service", "v2"),
    ];
    assert_eq!(
        summary(&set.analyze_proxies(&running)),
        vec![finding(
            "Info",
            "DestinationRulesMerged",
            "DestinationRule default/hw-v2",
            "spec.host"
        )]
    );
    assert_eq!(
        set.merges()["DestinationRule default/hw-v2"],
        vec!["helloworld-service: 2 of 2 (hw-v1 + hw-v2)"]
    );

    // A third rule that repeats subset v1 and sets its own top-level
    // policy: both are ignored, and each is a warning naming the older rule.
    let again = "
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: hw-again}
spec:
  host: helloworld-service
  trafficPolicy: {loadBalancer: {simple: LEAST_REQUEST}}
  subsets: [{name: v1, labels: {version: v2}}]
";
    let set = config(&[v1, v2, to_v2, again]);
    let diagnostics = set.analyze_proxies(&running);
    assert_eq!(
        only(&diagnostics, &["ConflictingDestinationRulesHost"]),
        vec![
            finding(
                "Warning",
                "ConflictingDestinationRulesHost",
                "DestinationRule default/hw-again",
                "spec.subsets[0]"
            ),
            finding(
                "Warning",
                "ConflictingDestinationRulesHost",
                "DestinationRule default/hw-again",
                "spec.trafficPolicy"
            ),
        ]
    );
    assert!(
        diagnostics
            .iter()
            .filter(|d| d.code == "ConflictingDestinationRulesHost")
            .all(|d| d.message.contains("DestinationRule default/hw-v1")),
        "{diagnostics:#?}"
    );
}

#[test]
fn a_newer_gateway_rule_an_older_file_already_takes_is_reported() {
    // Two files route /hello at the same gateway host: the older one is
    // tried first, so the newer one's rule never runs.
    let older = "
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: z-hello}
spec:
  hosts: ['*']
  gateways: [gateway-a]
  http:
  - match: [{uri: {prefix: /hello}}]
    route: [{destination: {host: helloworld-service}}]
";
    let newer = "
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: a-hello-beta}
spec:
  hosts: ['*']
  gateways: [gateway-a]
  http:
  - match: [{uri: {prefix: /hello/beta}, headers: {x-beta: {exact: '1'}}}]
    route: [{destination: {host: guestbook-ui}}]
  - match: [{uri: {prefix: /ui}}]
    route: [{destination: {host: guestbook-ui}}]
";
    let set = config(&[INGRESS_A, older, newer]);
    let diagnostics = set.analyze(&services(&["guestbook-ui", "helloworld-service"]));
    assert_eq!(
        only(&diagnostics, &["GatewayRuleShadowed"]),
        vec![finding(
            "Warning",
            "GatewayRuleShadowed",
            "VirtualService default/a-hello-beta",
            "spec.http[0]"
        )]
    );
    let message = &diagnostics
        .iter()
        .find(|d| d.code == "GatewayRuleShadowed")
        .unwrap()
        .message;
    assert!(
        message.contains("rule 0 of VirtualService default/z-hello, which is older"),
        "{message}"
    );

    // Applied the other way round, the narrower rule is older and runs
    // first: nothing to report.
    let set = config(&[INGRESS_A, newer, older]);
    let diagnostics = set.analyze(&services(&["guestbook-ui", "helloworld-service"]));
    assert_eq!(only(&diagnostics, &["GatewayRuleShadowed"]), vec![]);
}

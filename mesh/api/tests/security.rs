//! The security kinds through the whole config API: applied, stored and
//! loaded again, resolved per workload (which mTLS mode, which
//! AuthorizationPolicies), and analysed for policies that lock callers out.

use std::collections::BTreeMap;

use mesh_api::config::{ConfigSet, Diagnostic, Kind, MtlsMode, SourceFile};
use mesh_api::xds::{ProxyAnnounce, ProxyMode};

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

fn labels(app: &str) -> BTreeMap<String, String> {
    [("app".to_string(), app.to_string())].into()
}

fn sidecar(service: &str) -> ProxyAnnounce {
    ProxyAnnounce {
        instance: format!("{service}-v1-1"),
        mode: ProxyMode::Sidecar,
        service: service.into(),
        version: "v1".into(),
        address: "127.0.0.1:1".into(),
        ready: true,
        ..ProxyAnnounce::default()
    }
}

fn codes(diagnostics: &[Diagnostic]) -> Vec<(&str, &str, &str)> {
    diagnostics
        .iter()
        .map(|d| (d.code.as_str(), d.resource.as_str(), d.field.as_str()))
        .collect()
}

const MESH_STRICT: &str = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: istio-system}\nspec: {mtls: {mode: STRICT}}\n";
const SERVICE_PERMISSIVE_PORT: &str = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: gs}\nspec:\n  selector: {matchLabels: {app: guestbook-service}}\n  portLevelMtls: {9090: {mode: PERMISSIVE}}\n";
const NAMESPACE_DISABLE: &str = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default}\nspec: {mtls: {mode: DISABLE}}\n";

#[test]
fn the_effective_mode_follows_istios_precedence() {
    // Nothing applied: Istio's default, PERMISSIVE.
    assert_eq!(
        ConfigSet::default().effective_mtls(&labels("x")).mode,
        MtlsMode::Permissive
    );

    let set = config(&[MESH_STRICT, SERVICE_PERMISSIVE_PORT]);
    let service = set.effective_mtls(&labels("guestbook-service"));
    assert_eq!(
        service.mode,
        MtlsMode::Strict,
        "the workload policy is UNSET: the mesh's"
    );
    assert_eq!(service.for_port(9090), MtlsMode::Permissive);
    assert_eq!(service.for_port(8080), MtlsMode::Strict);
    assert_eq!(
        set.effective_mtls(&labels("guestbook-ui")).mode,
        MtlsMode::Strict
    );

    // The namespace level beats the mesh level, whatever the order.
    let set = config(&[NAMESPACE_DISABLE, MESH_STRICT]);
    assert_eq!(
        set.effective_mtls(&labels("guestbook-ui")).mode,
        MtlsMode::Disable
    );
}

#[test]
fn policies_apply_by_namespace_and_selector_and_survive_a_restart() {
    let set = config(&[
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: mesh-deny, namespace: istio-system}\nspec: {action: DENY, rules: [{to: [{operation: {paths: [\"/admin*\"]}}]}]}\n",
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: gs-only}\nspec: {selector: {matchLabels: {app: guestbook-service}}, rules: [{}]}\n",
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: elsewhere, namespace: other}\nspec: {}\n",
    ]);
    let names = |app: &str| -> Vec<String> {
        set.authorization_policies_for(&labels(app))
            .iter()
            .map(|(r, _)| r.metadata.name.clone())
            .collect()
    };
    assert_eq!(names("guestbook-service"), ["mesh-deny", "gs-only"]);
    assert_eq!(
        names("guestbook-ui"),
        ["mesh-deny"],
        "another namespace's policy applies to nothing here"
    );

    // The control plane persists the set as JSON and loads it again.
    let stored = serde_json::to_string(&set).unwrap();
    let loaded: ConfigSet = serde_json::from_str(&stored).unwrap();
    assert_eq!(loaded, set);
    assert_eq!(loaded.list(Some("ap")).len(), 3);
    assert_eq!(loaded.list(Some("peerauthentications")).len(), 0);
    assert_eq!(Kind::parse("pa"), Ok(Kind::PeerAuthentication));
}

#[test]
fn an_allow_policy_without_rules_is_reported_as_locking_everyone_out() {
    let set = config(&[
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: allow-nothing}\nspec: {}\n",
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: allow-all}\nspec: {rules: [{}]}\n",
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-nothing}\nspec: {action: DENY}\n",
    ]);
    let found = set.analyze_proxies(&[sidecar("guestbook-service")]);
    assert_eq!(
        codes(&found),
        [(
            "AuthorizationPolicyAllowsNothing",
            "AuthorizationPolicy default/allow-nothing",
            "spec.rules"
        )]
    );
    assert!(
        found[0]
            .message
            .contains("every workload of namespace `default`"),
        "{}",
        found[0].message
    );
    assert!(
        found[0].message.contains("rules: [{}]"),
        "{}",
        found[0].message
    );
}

#[test]
fn rules_no_request_can_match_are_reported() {
    let contradiction = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: never}\nspec:\n  rules:\n  - to: [{operation: {methods: [GET], notMethods: [GET]}}]\n";
    let identities_over_plaintext = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: ui-only}\nspec:\n  selector: {matchLabels: {app: guestbook-service}}\n  rules:\n  - from: [{source: {principals: [cluster.local/ns/default/sa/guestbook-ui]}}]\n";
    let set = config(&[contradiction, identities_over_plaintext, NAMESPACE_DISABLE]);
    let found = set.analyze_proxies(&[sidecar("guestbook-service")]);
    assert_eq!(
        codes(&found),
        [
            (
                "AuthorizationPolicyRuleNeverMatches",
                "AuthorizationPolicy default/never",
                "spec.rules[0]"
            ),
            (
                "AuthorizationPolicyRuleNeverMatches",
                "AuthorizationPolicy default/ui-only",
                "spec.rules[0].from"
            ),
        ]
    );
    assert!(
        found[0]
            .message
            .contains("`GET` is in both `methods` and `notMethods`")
    );
    assert!(found[1].message.contains("DISABLE"));

    // With mTLS on, the identity rule can match: nothing to report on it.
    let set = config(&[identities_over_plaintext]);
    assert_eq!(
        codes(&set.analyze_proxies(&[sidecar("guestbook-service")])),
        []
    );
}

#[test]
fn strict_toward_a_workload_without_a_sidecar_is_reported() {
    let strict_legacy = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: legacy}\nspec:\n  selector: {matchLabels: {app: legacy-db}}\n  mtls: {mode: STRICT}\n";
    let set = config(&[strict_legacy]);
    let found = set.analyze_proxies(&[sidecar("guestbook-service")]);
    assert_eq!(
        codes(&found),
        [(
            "StrictMtlsWithoutSidecar",
            "PeerAuthentication default/legacy",
            "spec.selector"
        )]
    );
    assert!(
        found[0].message.contains("app=legacy-db"),
        "{}",
        found[0].message
    );
    // Once an instance with a sidecar has the labels, the finding goes.
    assert_eq!(codes(&set.analyze_proxies(&[sidecar("legacy-db")])), []);
}

#[test]
fn mesh_wide_policies_in_the_root_namespace_are_not_reported_as_unrouted() {
    let set = config(&[MESH_STRICT]);
    assert_eq!(
        codes(&set.analyze_proxies(&[sidecar("guestbook-service")])),
        []
    );
}

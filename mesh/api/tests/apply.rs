//! apply / delete / list, as `kubectl` does them, and the stored form.
//!
//! Identity is (kind, namespace, name); apply answers created, configured
//! or unchanged; delete answers deleted or not found; list takes what a user
//! types (`vs`, `destinationrules`, ...); what `get -o yaml` prints applies
//! again unchanged.

use std::path::PathBuf;

use mesh_api::config::{ConfigSet, Kind, Resource, SourceFile};

fn fixture(name: &str) -> SourceFile {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    SourceFile {
        name: name.to_string(),
        content: std::fs::read_to_string(&path).unwrap(),
    }
}

fn applied(names: &[&str]) -> ConfigSet {
    let files: Vec<SourceFile> = names.iter().map(|n| fixture(n)).collect();
    ConfigSet::default()
        .apply(ConfigSet::parse(&files).unwrap())
        .0
}

const ACCEPTED: &[&str] = &[
    "gateway.yaml",
    "canary-v1alpha3.yaml",
    "chrome-header-routing.yaml",
    "retries.yaml",
];

#[test]
fn list_takes_what_a_user_types_and_sorts_by_name() {
    let set = applied(ACCEPTED);
    let names =
        |kind: Option<&str>| -> Vec<String> { set.list(kind).iter().map(Resource::id).collect() };
    let virtual_services = vec![
        "VirtualService default/guestbook-service",
        "VirtualService default/guestbook-ui",
        "VirtualService default/helloworld-service",
    ];
    for spelling in [
        "vs",
        "VirtualService",
        "virtualservices",
        "VIRTUALSERVICE",
        "virtualservice.networking.istio.io",
    ] {
        assert_eq!(names(Some(spelling)), virtual_services, "{spelling}");
    }
    assert_eq!(
        names(Some("dr")),
        vec![
            "DestinationRule default/guestbook-ui",
            "DestinationRule default/helloworld-service"
        ]
    );
    assert_eq!(names(Some("gw")), vec!["Gateway default/guestbook-gateway"]);
    assert_eq!(names(None).len(), 6, "every kind, VirtualServices first");
    assert_eq!(names(None)[0], "VirtualService default/guestbook-service");
    assert!(
        names(Some("pods")).is_empty(),
        "an unknown kind lists nothing"
    );
    assert!(
        Kind::parse("pods").is_err(),
        "and meshctl can tell it apart"
    );
}

#[test]
fn apply_and_delete_speak_kubectl() {
    let (set, changes) =
        ConfigSet::default().apply(ConfigSet::parse(&[fixture("delay-current.yaml")]).unwrap());
    let lines: Vec<String> = changes.iter().map(ToString::to_string).collect();
    assert_eq!(
        lines,
        vec!["virtualservice.networking.istio.io/guestbook-ui created"]
    );

    // The same name with another spec: configured, still one resource.
    let (set, changes) = set.apply(ConfigSet::parse(&[fixture("canary-v1alpha3.yaml")]).unwrap());
    let actions: Vec<(&str, &str)> = changes
        .iter()
        .map(|c| (c.kind.as_str(), c.action.as_str()))
        .collect();
    assert_eq!(
        actions,
        vec![
            ("DestinationRule", "created"),
            ("VirtualService", "configured")
        ]
    );
    assert_eq!(set.len(), 2);

    let (set, changes) =
        set.delete(&ConfigSet::parse_identities(&[fixture("canary-v1alpha3.yaml")]).unwrap());
    let lines: Vec<String> = changes.iter().map(ToString::to_string).collect();
    assert_eq!(
        lines,
        vec![
            "destinationrule.networking.istio.io/guestbook-ui deleted",
            "virtualservice.networking.istio.io/guestbook-ui deleted",
        ]
    );
    assert!(set.is_empty());
    let (_, changes) = set.delete(&[Resource::reference(
        Kind::Gateway,
        "default",
        "guestbook-gateway",
    )]);
    assert_eq!(changes[0].action, "not found");
}

#[test]
fn the_namespace_is_part_of_the_identity() {
    let staging = SourceFile {
        name: "staging.yaml".into(),
        content: fixture("gateway.yaml").content.replace(
            "name: guestbook-gateway",
            "name: guestbook-gateway\n  namespace: staging",
        ),
    };
    let set = applied(&["gateway.yaml"]);
    let (set, changes) = set.apply(ConfigSet::parse(&[staging]).unwrap());
    assert_eq!(changes[0].action, "created");
    assert_eq!(set.list(Some("gw")).len(), 2);
    assert_eq!(set.list(Some("gw"))[1].metadata.namespace, "staging");
}

#[test]
fn what_get_prints_applies_again_unchanged() {
    let set = applied(ACCEPTED);
    for resource in set.list(None) {
        let printed = serde_yaml::to_string(&resource).unwrap();
        let again = ConfigSet::parse(&[SourceFile {
            name: "printed.yaml".into(),
            content: printed.clone(),
        }])
        .unwrap_or_else(|e| {
            panic!(
                "{} printed as\n{printed}\ndoes not apply:\n{e}",
                resource.id()
            )
        });
        let (_, changes) = set.apply(again);
        assert_eq!(changes[0].action, "unchanged", "{printed}");
    }
}

/// The stored form (what the control plane writes to its state dir) reads
/// back equal, oldest resource first. This is a serde round trip only: the
/// store across a real control-plane restart is
/// `a_restart_keeps_registrations_and_config_and_moves_the_version_up` in
/// mesh/control/tests/control.rs.
#[test]
fn the_stored_form_round_trips_in_creation_order() {
    let set = applied(ACCEPTED);
    let stored = serde_json::to_string_pretty(&set).unwrap();
    let loaded: ConfigSet = serde_json::from_str(&stored).unwrap();
    assert_eq!(loaded, set);
    let order: Vec<String> = loaded.entries().map(|(r, _)| r.id()).collect();
    assert_eq!(
        order[0], "Gateway default/guestbook-gateway",
        "oldest first, not sorted"
    );
}

// === header operations ===

/// A VirtualService whose route sets `headers` (already YAML, indented for
/// `requestHeaders`).
fn header_ops(ops: &str) -> SourceFile {
    SourceFile {
        name: "headers.yaml".into(),
        content: format!(
            r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: helloworld-service
spec:
  hosts: [helloworld-service]
  http:
  - route:
    - destination: {{host: helloworld-service}}
    headers:
      request:
{ops}
"#
        ),
    }
}

/// Parse `file`, expecting it rejected: (field, message) of each error.
fn rejected(file: SourceFile) -> Vec<(String, String)> {
    let errors = ConfigSet::parse(&[file]).expect_err("the file is rejected");
    errors
        .errors
        .into_iter()
        .map(|e| (e.field, e.message))
        .collect()
}

#[test]
fn header_operations_take_only_valid_names_and_one_line_values() {
    // Well-formed: accepted.
    ConfigSet::parse(&[header_ops(
        "        set: {x-request-source: mesh}\n        add: {x-tag: a}\n        remove: [x-debug]",
    )])
    .expect("valid header operations are accepted");

    // A space is not allowed in a header name (RFC 9110 token), in any of
    // set, add and remove.
    for (op, yaml) in [
        ("set", "        set: {\"x bad\": v}"),
        ("add", "        add: {\"x bad\": v}"),
        ("remove", "        remove: [\"x bad\"]"),
    ] {
        let errors = rejected(header_ops(yaml));
        assert_eq!(errors.len(), 1, "{op}: {errors:?}");
        let (field, message) = &errors[0];
        assert_eq!(field, &format!("spec.http[0].headers.request.{op}"));
        assert!(
            message.contains("`x bad` is not a header name")
                && message.contains("x-request-source"),
            "{op}: the message names the bad name and shows a good one: {message}"
        );
    }

    // A CR or LF in a value would split the header (response splitting).
    for value in ["a\\rb", "a\\nb", "a\\r\\nx-injected: 1"] {
        let errors = rejected(header_ops(&format!("        set: {{x-ok: \"{value}\"}}")));
        assert_eq!(errors.len(), 1, "{value}: {errors:?}");
        let (field, message) = &errors[0];
        assert_eq!(field, "spec.http[0].headers.request.set");
        assert!(message.contains("holds a line break"), "{message}");
    }
}

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

//! The admission webhooks, fed AdmissionReview fixtures built from the
//! suite's own YAML: the validating webhook gives the same verdict, in the
//! same words, as `meshctl validate` on the same file; the mutating webhook's
//! JSON Patch, applied, gives what `meshctl inject` prints.
//!
//! ```text
//! cargo test -p mesh-control --test webhook
//! ```

use std::path::{Path, PathBuf};

use kube::api::DynamicObject;
use kube::core::admission::AdmissionReview;
use mesh_api::config::{ConfigSet, Kind, NETWORKING_GROUP, SourceFile};
use mesh_control::kubernetes::webhook;
use serde_json::{Value, json};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every YAML file in `dir`, sorted.
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
}

/// What the API server sends for `kubectl apply` of `object` (CREATE).
fn admission_review(object: &Value, resource: &str) -> AdmissionReview<DynamicObject> {
    let api_version = object["apiVersion"].as_str().unwrap_or("v1");
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let namespace = object["metadata"]["namespace"]
        .as_str()
        .unwrap_or("guestbook");
    let mut object = object.clone();
    // What the API server has filled in by the time admission runs.
    object["metadata"]["namespace"] = json!(namespace);
    object["metadata"]["uid"] = json!("8f1d1c3e-0000-4000-8000-000000000001");
    object["metadata"]["creationTimestamp"] = json!("2026-12-07T04:00:00Z");
    object["metadata"]["managedFields"] = json!([{"manager": "kubectl-client-side-apply"}]);
    serde_json::from_value(json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": group, "version": version, "kind": object["kind"]},
            "resource": {"group": group, "version": version, "resource": resource},
            "name": object["metadata"]["name"],
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {"username": "learner"},
            "object": object,
            "oldObject": null,
            "dryRun": false
        }
    }))
    .expect("a well-formed AdmissionReview")
}

fn response_of(review: &AdmissionReview<DynamicObject>) -> Value {
    serde_json::to_value(review).unwrap()["response"].clone()
}

#[test]
fn the_validating_webhook_says_what_meshctl_validate_says() {
    let (compared, denied) = compare_with_meshctl_validate(&repo().join("mesh/api/tests/fixtures"));
    assert!(compared >= 15, "only {compared} resources compared");
    assert!(denied >= 5, "only {denied} invalid resources compared");
}

/// The conformance step (scripts/conformance.sh runs it with
/// `MESH_TALK_YAML=../shared/talk-yaml`): the talk's own files, each Istio
/// resource sent as `kubectl apply` sends it, get the webhook's verdict and
/// message that `meshctl validate` gives. Not part of the suite (a user's
/// clone has no talk files); run without the variable, it fails saying so.
#[test]
#[ignore = "conformance step: needs MESH_TALK_YAML (scripts/conformance.sh)"]
fn the_talks_yaml_gets_the_same_verdict_from_the_webhook_as_from_meshctl() {
    let dir = std::env::var_os("MESH_TALK_YAML").unwrap_or_else(|| {
        panic!(
            "MESH_TALK_YAML is not set: point it at the talk's YAML directory \
             (scripts/conformance.sh ../shared sets it to ../shared/talk-yaml)"
        )
    });
    let (compared, denied) = compare_with_meshctl_validate(Path::new(&dir));
    // The talk's files hold both kinds: rules micromesh takes as they are,
    // and `percent`-era ones it refuses with what to write today.
    assert!(compared > 0, "no Istio resource found in {dir:?}");
    assert!(
        denied > 0,
        "no talk resource was refused: was {dir:?} the talk's YAML?"
    );
    assert!(denied < compared, "every talk resource was refused");
    eprintln!("talk YAML: {compared} resources compared, {denied} refused by both");
}

/// Send every Istio resource of every YAML file in `dir` through the
/// validating webhook and check its answer against `meshctl validate`'s on
/// the same document. Returns (resources compared, of which refused).
fn compare_with_meshctl_validate(dir: &Path) -> (usize, usize) {
    let mut compared = 0;
    let mut denied = 0;
    for path in yaml_files(dir) {
        let text = std::fs::read_to_string(&path).unwrap();
        // A file kubectl cannot parse never reaches an API server.
        let Ok(documents) = serde_yaml::Deserializer::from_str(&text)
            .map(<serde_yaml::Value as serde::Deserialize>::deserialize)
            .collect::<Result<Vec<_>, _>>()
        else {
            continue;
        };
        for document in documents {
            let object: Value = serde_json::to_value(&document).unwrap();
            // The webhook configuration sends only our group's three kinds.
            let ours = object["apiVersion"]
                .as_str()
                .is_some_and(|v| v.starts_with(&format!("{NETWORKING_GROUP}/")))
                && Kind::ALL.iter().any(|k| object["kind"] == k.as_str());
            if !ours || !object["metadata"]["name"].is_string() {
                continue;
            }
            let kind = Kind::parse(object["kind"].as_str().unwrap()).unwrap();
            let answer = response_of(&webhook::review(admission_review(&object, kind.plural())));
            assert_eq!(answer["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");

            // meshctl validate on the same document, as a file of its own.
            let file = SourceFile {
                name: path.file_name().unwrap().to_string_lossy().into(),
                content: serde_yaml::to_string(&document).unwrap(),
            };
            let name = format!("{} {}", path.display(), object["metadata"]["name"]);
            match ConfigSet::parse(&[file]) {
                Ok(_) => assert_eq!(answer["allowed"], true, "{name}: {answer:#}"),
                Err(errors) => {
                    denied += 1;
                    assert_eq!(answer["allowed"], false, "{name}: {answer:#}");
                    let message = answer["status"]["message"].as_str().unwrap();
                    for error in &errors.errors {
                        let line = format!("{}: {}", error.field, error.message);
                        let line = line.trim_start_matches(": ");
                        assert!(
                            message.contains(line),
                            "{name}: the webhook's message lacks meshctl's line\n  {line}\nin\n{message}"
                        );
                    }
                    assert_eq!(
                        message.lines().count(),
                        errors.errors.len() + 1,
                        "{name}: one line per error after the heading:\n{message}"
                    );
                }
            }
            compared += 1;
        }
    }
    (compared, denied)
}

/// The talk's `percent`, as `kubectl apply` sends it, is refused with the
/// explanation meshctl gives: what to write today.
#[test]
fn the_talks_percent_is_refused_with_what_to_write_today() {
    let object: Value = serde_yaml::from_str(
        "apiVersion: networking.istio.io/v1alpha3\nkind: VirtualService\n\
         metadata: {name: helloworld-service, creationTimestamp: null}\n\
         spec:\n  hosts: [helloworld-service]\n  http:\n  - route:\n\
         \x20   - destination: {host: helloworld-service, subset: v1}\n      percent: 80\n\
         \x20   - destination: {host: helloworld-service, subset: v2}\n      percent: 20\n",
    )
    .unwrap();
    let answer = response_of(&webhook::review(admission_review(
        &object,
        "virtualservices",
    )));
    assert_eq!(answer["allowed"], false);
    let message = answer["status"]["message"].as_str().unwrap();
    assert!(
        message.contains("VirtualService guestbook/helloworld-service"),
        "{message}"
    );
    assert!(
        message.contains("spec.http[0].route[0].percent"),
        "{message}"
    );
    assert!(message.contains("weight"), "{message}");
}

#[test]
fn the_mutating_webhooks_patch_gives_what_meshctl_inject_prints() {
    let settings = mesh_inject::Settings::default();
    let dir = repo().join("mesh/ctl/tests/inject");
    let mut patched = 0;
    for path in yaml_files(&dir) {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if name.ends_with(".out.yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let Ok(documents) = serde_yaml::Deserializer::from_str(&text)
            .map(<serde_yaml::Value as serde::Deserialize>::deserialize)
            .collect::<Result<Vec<_>, _>>()
        else {
            continue;
        };
        for document in documents {
            let object: Value = serde_json::to_value(&document).unwrap();
            // The webhook sees pods: a workload's pod as its controller
            // creates it from the template.
            let Some(template) = object.pointer("/spec/template").cloned() else {
                continue;
            };
            let mut pod = json!({"apiVersion": "v1", "kind": "Pod",
                                 "metadata": template["metadata"], "spec": template["spec"]});
            pod["metadata"]["name"] = json!(format!(
                "{}-x7k2p",
                object["metadata"]["name"].as_str().unwrap()
            ));
            let answer = response_of(&webhook::inject_review(
                admission_review(&pod, "pods"),
                &settings,
            ));
            let mut sent: Value =
                serde_json::to_value(admission_review(&pod, "pods")).unwrap()["request"]["object"]
                    .clone();
            match mesh_inject::inject(&sent, &settings) {
                Ok(mesh_inject::Outcome::Injected(expected)) => {
                    assert_eq!(answer["allowed"], true, "{name}: {answer:#}");
                    assert_eq!(answer["patchType"], "JSONPatch", "{name}");
                    // Go's []byte: kube-rs writes the JSON array of bytes, which
                    // the API server decodes as it decodes base64.
                    let bytes: Vec<u8> = match &answer["patch"] {
                        Value::String(b64) => {
                            serde_json::from_value::<k8s_openapi::ByteString>(json!(b64))
                                .unwrap()
                                .0
                        }
                        array => serde_json::from_value(array.clone()).expect("patch bytes"),
                    };
                    let patch: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
                    json_patch::patch(&mut sent, &patch).unwrap();
                    assert_eq!(
                        sent, expected,
                        "{name}: the patched pod is meshctl inject's"
                    );
                    patched += 1;
                }
                Ok(mesh_inject::Outcome::Unchanged(_)) => {
                    assert_eq!(answer["allowed"], true, "{name}");
                    assert!(answer["patch"].is_null(), "{name}: nothing to change");
                }
                Err(e) => {
                    assert_eq!(answer["allowed"], false, "{name}");
                    let message = answer["status"]["message"].as_str().unwrap();
                    assert!(
                        message.contains(&e.problem.to_string()),
                        "{name}: {message}"
                    );
                }
            }
        }
    }
    assert!(patched >= 2, "only {patched} pods were injected");
}

//! Issue 17's bypass corpus: thousands of spellings of a path under
//! `/admin`, generated from parts (`//`, `%2F`, `%5C`, `\`, `..`, `%2e`,
//! escapes in either case, `;` parameters, queries, `#fragments`, and their
//! combinations), sent byte for byte to a real inbound listener whose
//! workload has one policy, Istio's YAML:
//!
//! ```yaml
//! action: DENY
//! rules: [{to: [{operation: {paths: ["/admin*"]}}]}]
//! ```
//!
//! Behind the sidecar a recording app keeps every request that reaches it.
//! Two properties, each checked without trusting the proxy's own
//! normalization:
//!
//! 1. **No bypass**: nothing that reaches the app resolves to `/admin...`
//!    the way a lenient app server would read it (every escape decoded once,
//!    `\` as `/`, slashes merged, dot segments removed: [`app_view`], written
//!    here independently of `normalize.rs`). And no request whose target
//!    resolves to `/admin...` that way reaches the app.
//! 2. **Agreement**: every answer is what Istio's `DECODE_AND_MERGE_SLASHES`
//!    reading of the target predicts: 403 `RBAC: access denied` for
//!    `/admin...`, 400 for a target that is not a path or has a broken
//!    escape, else 200 with exactly that normalized path (and the query as
//!    sent) at the app: the path decided on is the path sent upstream.
//!
//! A `;` parameter is data to Istio and to micromesh (`/;x/admin` is not
//! `/admin`); an app that strips them (Tomcat's `..;`) needs its own
//! policy, as Istio's security best practices say. [`app_view`] reads `;`
//! as data too.

mod edge_support;

use std::collections::HashMap;
use std::sync::Arc;

use edge_support::{RecordingApp, raw, sidecar_snapshot};
use mesh_api::config::{ConfigSet, SourceFile};
use mesh_api::snapshot::AppliedAuthorizationPolicy;
use mesh_proxy::normalize::{PathNormalization, normalize_path};
use mesh_proxy::{Config, Proxy, ProxyHandle};

const DENY_ADMIN: &str = "\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: deny-admin
  namespace: default
spec:
  selector:
    matchLabels:
      app: hw
  action: DENY
  rules:
  - to:
    - operation:
        paths: [\"/admin*\"]
";

/// What comes before the slash of `/admin`: nothing, or a detour that
/// climbs back to the root.
const LEADS: &[&str] = &[
    "",
    "/public/..",
    "/public/%2e%2e",
    "/public/.%2E",
    "/public%2F..",
    "/public%5c%2e%2e",
    "/public\\..",
    "/a/b/../..",
    "/public/..;x",
    "/%2e",
    "//",
];

/// The slash itself.
const SLASHES: &[&str] = &[
    "/", "//", "%2F", "%2f", "/%2F", "%5C", "%5c", "\\", "/./", "/%2E/",
];

/// `admin`, plainly and with escapes of unreserved letters in both cases,
/// and spellings that are not `admin` (which must then pass).
const NAMES: &[&str] = &[
    "admin",
    "%61dmin",
    "ad%6Din",
    "ad%6din",
    "%61%64%6d%69%6E",
    "admin%2e",
    "ADMIN",
    "%2561dmin",
];

/// What follows: nothing, a deeper path, parameters, a query, a fragment,
/// and a climb back out of `/admin`.
const TAILS: &[&str] = &[
    "",
    "/users",
    "%2Fusers",
    ";jsessionid=1",
    "?next=/public",
    "#/../../public",
    "/..",
    "/.%2e/public",
];

/// The targets: every combination, plus a few that are not paths at all.
fn corpus() -> Vec<String> {
    let mut targets = Vec::new();
    for lead in LEADS {
        for slash in SLASHES {
            for name in NAMES {
                for tail in TAILS {
                    targets.push(format!("{lead}{slash}{name}{tail}"));
                }
            }
        }
    }
    // Not a path: refused before any decision.
    targets.extend(["%2Fadmin", "admin", "\\admin", "*", "#/admin", "?/admin"].map(String::from));
    targets
}

/// How a lenient app server resolves a target's path, written without
/// `normalize.rs`: the query and fragment cut off, every `%XX` decoded
/// once, `\` read as `/`, dot segments removed, empty segments dropped.
fn app_view(target: &str) -> String {
    let path = target.split(['?', '#']).next().unwrap_or_default();
    let bytes = path.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            decoded.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        decoded.push(bytes[i]);
        i += 1;
    }
    let text = String::from_utf8_lossy(&decoded).replace('\\', "/");
    let mut segments: Vec<&str> = Vec::new();
    for segment in text.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            other => segments.push(other),
        }
    }
    format!("/{}", segments.join("/"))
}

fn is_admin(path: &str) -> bool {
    path.starts_with("/admin")
}

/// What the sidecar must do with `target`, from Istio's reading of it.
#[derive(Debug, PartialEq)]
enum Expect {
    /// 400 at the door: not a path, or an escape that is not one.
    Refused,
    /// 403 `RBAC: access denied`.
    Denied,
    /// 200, and the app receives this target.
    Arrives(String),
}

fn expect(target: &str) -> Expect {
    // `http::Uri` ends the target at `#`: the fragment never gets further.
    let target = target.split('#').next().unwrap_or_default();
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    };
    if !path.starts_with('/') {
        return Expect::Refused;
    }
    match normalize_path(path, PathNormalization::DecodeAndMergeSlashes) {
        Err(_) => Expect::Refused,
        Ok(normal) if is_admin(&normal) => Expect::Denied,
        Ok(normal) => Expect::Arrives(match query {
            Some(query) => format!("{normal}?{query}"),
            None => normal.into_owned(),
        }),
    }
}

/// A sidecar of `hw` in front of `app`, with the DENY policy applied as the
/// control plane would: parsed and validated from the YAML, picked for the
/// workload's labels.
async fn guarded_sidecar(app: &RecordingApp) -> ProxyHandle {
    let config = Config::local_sidecar("hw", app.addr);
    let resources = ConfigSet::parse(&[SourceFile {
        name: "deny-admin.yaml".into(),
        content: DENY_ADMIN.into(),
    }])
    .expect("the policy validates");
    let (set, _) = ConfigSet::default().apply(resources);
    let policies = set
        .authorization_policies_for(&config.labels)
        .into_iter()
        .map(|(resource, spec)| AppliedAuthorizationPolicy {
            name: format!("{}/{}", resource.metadata.namespace, resource.metadata.name),
            spec: spec.clone(),
        })
        .collect::<Vec<_>>();
    assert_eq!(policies.len(), 1, "the policy selects app: hw");
    let mut snapshot = sidecar_snapshot(app.addr);
    snapshot.inbound.authorization_policies = policies;
    let proxy = Proxy::start(config).await.unwrap();
    proxy.apply_snapshot(snapshot).unwrap();
    proxy
}

#[tokio::test]
async fn no_spelling_of_admin_gets_past_a_deny_policy() {
    let app = RecordingApp::start().await;
    let proxy = guarded_sidecar(&app).await;
    let inbound = proxy.inbound_addr().unwrap();
    let targets = corpus();
    tracing::info!(cases = targets.len(), "sending the corpus");
    assert!(targets.len() > 5000, "{} cases", targets.len());

    // Each request carries its case number, so what arrived is matched to
    // what was sent while many are in flight.
    let targets = Arc::new(targets);
    let mut answers: HashMap<usize, (u16, String)> = HashMap::new();
    for chunk in (0..targets.len()).collect::<Vec<_>>().chunks(32) {
        let mut tasks = Vec::new();
        for &case in chunk {
            let targets = targets.clone();
            tasks.push(tokio::spawn(async move {
                let request = format!(
                    "GET {} HTTP/1.1\r\nHost: hw\r\nx-case: {case}\r\nConnection: close\r\n\r\n",
                    targets[case]
                );
                let rsp = raw(inbound, &request).await;
                (case, rsp.status, rsp.body)
            }));
        }
        for task in tasks {
            let (case, status, body) = task.await.unwrap();
            answers.insert(case, (status, body));
        }
    }
    let arrived: HashMap<usize, String> = app
        .all()
        .into_iter()
        .map(|a| (a.header("x-case").unwrap().parse().unwrap(), a.target))
        .collect();

    // Every case is judged; the failures are counted by kind and shown
    // together, so a broken proxy reports how many bypasses it lets by.
    let (mut denied, mut refused, mut passed) = (0, 0, 0);
    let mut bypasses = Vec::new();
    let mut wrong = Vec::new();
    for (case, target) in targets.iter().enumerate() {
        let (status, body) = &answers[&case];
        let reached = arrived.get(&case);
        let context =
            format!("case {case}: GET {target} -> {status} {body:?}, app got {reached:?}");
        // 1. No bypass, judged by the app's reading alone.
        let admin_at_app = reached.is_some_and(|at_app| is_admin(&app_view(at_app)));
        let admin_sent = target.starts_with('/') && is_admin(&app_view(target));
        if admin_at_app || (admin_sent && reached.is_some()) {
            bypasses.push(context.clone());
        }
        // 2. The answer Istio's reading predicts.
        let as_predicted = match expect(target) {
            Expect::Denied => {
                denied += 1;
                *status == 403 && body == "RBAC: access denied" && reached.is_none()
            }
            Expect::Refused => {
                refused += 1;
                *status == 400 && reached.is_none()
            }
            Expect::Arrives(normal) => {
                passed += 1;
                // The path decided on is the path the app got.
                *status == 200 && reached == Some(&normal)
            }
        };
        if !as_predicted {
            wrong.push(format!("{context}, expected {:?}", expect(target)));
        }
    }
    println!(
        "{} targets: {denied} denied, {refused} refused at the door, {passed} passed; \
         {} bypasses, {} answers not as predicted",
        targets.len(),
        bypasses.len(),
        wrong.len()
    );
    let first = |list: &[String]| list.iter().take(10).cloned().collect::<Vec<_>>().join("\n");
    assert!(
        bypasses.is_empty(),
        "{} BYPASSES, the first:\n{}",
        bypasses.len(),
        first(&bypasses)
    );
    assert!(
        wrong.is_empty(),
        "{} answers not as predicted, the first:\n{}",
        wrong.len(),
        first(&wrong)
    );
    // The corpus exercises all three outcomes in earnest.
    assert!(
        denied > 1000 && passed > 1000 && refused > 100,
        "{denied} {passed} {refused}"
    );
    proxy.shutdown().await;
}

/// The oracle of this file agrees with itself on the obvious cases, so a
/// bug in it cannot hide a bypass.
#[test]
fn the_app_view_resolves_like_a_lenient_server() {
    assert_eq!(app_view("/public/%2e%2e%2Fadmin"), "/admin");
    assert_eq!(app_view("/public\\..\\admin?x"), "/admin");
    assert_eq!(app_view("//admin#x"), "/admin");
    assert_eq!(app_view("/%61dmin"), "/admin");
    assert_eq!(app_view("/%2561dmin"), "/%61dmin", "decoded once");
    assert_eq!(app_view("/;x/admin"), "/;x/admin", "parameters are data");
    assert_eq!(expect("/x#/../admin"), Expect::Arrives("/x".into()));
    assert_eq!(expect("/x/..%2fadmin"), Expect::Denied);
    assert_eq!(expect("%2Fadmin"), Expect::Refused);
    assert_eq!(
        expect("/ADMIN?a=/admin"),
        Expect::Arrives("/ADMIN?a=/admin".into())
    );
}

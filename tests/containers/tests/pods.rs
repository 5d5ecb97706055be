//! The Guestbook as pods of containers: what the issue's "Pods as
//! containers" promises, checked end to end through the gateway.
//!
//! Each test builds its own mesh (network, control plane, gateway, pods; see
//! `containers_tests::pods`) from the images `scripts/build-offline-images.sh`
//! makes, and drives it the way a workshop attendee would: a browser on the
//! gateway, `meshctl apply` on the control plane's API, `docker stop` and
//! `docker kill` on containers. No Docker Engine is a failure, not a skip.
//!
//!     cargo test -p containers-tests --test pods
//!     cargo test -p containers-tests --test pods -- canary    # one test

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use containers_tests::pods::{
    Mesh, PATIENCE, PodSpec, endpoints_of, greeting_version, retry_until_ok, routes_for,
};
use containers_tests::runner::{self, Test};
use mesh_testkit::{assert_binomial, wait_until};

fn main() -> ExitCode {
    const TESTS: &[Test] = &[
        ("guestbook_page_messages_and_a_fault", || {
            Box::pin(guestbook_page_messages_and_a_fault())
        }),
        ("canary_control_plane_outage_and_a_lost_instance", || {
            Box::pin(canary_control_plane_outage_and_a_lost_instance())
        }),
    ];
    runner::main(TESTS)
}

const ABORT_GUESTBOOK: &str = "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: guestbook-service
spec:
  hosts:
  - guestbook-service
  http:
  - fault:
      abort:
        httpStatus: 503
        percentage:
          value: 100
    route:
    - destination:
        host: guestbook-service
";

const SUBSETS: &str = "\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: helloworld-service
spec:
  host: helloworld-service
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
";

const CANARY_80_20: &str = "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: helloworld-service
spec:
  hosts:
  - helloworld-service
  http:
  - route:
    - destination:
        host: helloworld-service
        subset: v1
      weight: 80
    - destination:
        host: helloworld-service
        subset: v2
      weight: 20
";

const ALL_V2: &str = "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: helloworld-service
spec:
  hosts:
  - helloworld-service
  http:
  - route:
    - destination:
        host: helloworld-service
        subset: v2
";

/// The whole Guestbook: the page shows the greeting, a posted message comes
/// back with its sentiment, and a 503 abort on guestbook-service turns the
/// messages into the UI's fallback until the fault is removed.
async fn guestbook_page_messages_and_a_fault() {
    let mut mesh = Mesh::start("guestbook").await;
    for spec in [
        PodSpec::new("guestbook-ui", "v1"),
        PodSpec::new("helloworld-service", "v1"),
        PodSpec::new("guestbook-service", "v1"),
        PodSpec::new("sentiment-service", "v1"),
    ] {
        mesh.add_pod(spec).await;
    }
    mesh.wait_for_endpoints(&[
        ("guestbook-ui", 1),
        ("helloworld-service", 1),
        ("guestbook-service", 1),
        ("sentiment-service", 1),
    ])
    .await;

    // The page, through the gateway: gateway -> ui -> helloworld and
    // guestbook-service, every hop through a sidecar.
    let page = page_where(&mesh, "the greeting from helloworld-service v1", |page| {
        greeting_version(page) == Some("v1") && page.contains("Hello")
    })
    .await;
    assert!(
        page.contains("No messages yet"),
        "a new guestbook is empty:\n{page}"
    );

    // Sign it: ui -> guestbook-service -> sentiment-service, then stored.
    let status = mesh
        .post_form("/greet", "name=ray&message=I+love+this+talk")
        .await
        .expect("the gateway answers a post");
    assert_eq!(status, 303, "signing redirects back to the page");
    let page = page_where(&mesh, "the message with its sentiment", |page| {
        page.contains("I love this talk")
    })
    .await;
    assert!(
        page.contains(r#"class="tag positive""#),
        "sentiment-service called the message positive:\n{page}"
    );

    // Fault injection: every call to guestbook-service fails with 503 in
    // the ui's sidecar, before it leaves the pod.
    mesh.apply("guestbook-abort-100.yaml", ABORT_GUESTBOOK)
        .await;
    mesh.wait_for_snapshot(
        "guestbook-ui-v1",
        "the 503 abort on guestbook-service",
        |s| {
            routes_for(s, "guestbook-service").is_some_and(|r| {
                r.iter().any(|r| {
                    r.fault
                        .as_ref()
                        .and_then(|f| f.abort.as_ref())
                        .is_some_and(|a| a.http_status == 503)
                })
            })
        },
    )
    .await;
    let page = fetch_page(&mesh).await;
    assert!(
        page.contains("No messages.") && page.contains("503"),
        "the UI falls back and says guestbook-service answered 503:\n{page}"
    );
    assert!(
        !page.contains("I love this talk"),
        "no messages while the fault is on:\n{page}"
    );
    assert_eq!(
        greeting_version(&page),
        Some("v1"),
        "the rest of the page still works:\n{page}"
    );

    // Remove the fault: the messages are back, nothing was lost.
    mesh.delete("guestbook-abort-100.yaml", ABORT_GUESTBOOK)
        .await;
    page_where(
        &mesh,
        "the messages again after the fault is removed",
        |page| page.contains("I love this talk") && !page.contains("No messages."),
    )
    .await;
}

/// helloworld-service v1 and v2 pods: an 80/20 split holds within the
/// binomial spread; with the control plane stopped traffic keeps flowing on
/// the last snapshot; started again, the proxies resync and a new rule takes
/// effect; an app container killed leaves the rotation while requests keep
/// succeeding, every one, sent throughout, from before the kill until after
/// the snapshot dropped it.
async fn canary_control_plane_outage_and_a_lost_instance() {
    let mut mesh = Mesh::start("canary").await;
    for spec in [
        PodSpec::new("guestbook-ui", "v1"),
        PodSpec::new("helloworld-service", "v1"),
        PodSpec::new("helloworld-service", "v2").env("GREETING", "Hola"),
    ] {
        mesh.add_pod(spec).await;
    }
    mesh.wait_for_endpoints(&[("guestbook-ui", 1), ("helloworld-service", 2)])
        .await;
    page_where(&mesh, "a greeting", |page| greeting_version(page).is_some()).await;

    // --- canary: 80/20 by weight, in the ui's sidecar ---
    let files = format!("{SUBSETS}---\n{CANARY_80_20}");
    mesh.apply("canary-80-20.yaml", &files).await;
    mesh.wait_for_snapshot(
        "guestbook-ui-v1",
        "the 80/20 split with both subsets populated",
        |s| {
            let weights: Vec<u32> = routes_for(s, "helloworld-service")
                .and_then(|r| r.first())
                .map(|r| r.destinations.iter().map(|d| d.weight).collect())
                .unwrap_or_default();
            weights == [80, 20]
                && endpoints_of(s, "helloworld-service|v1") == ["helloworld-service-v1"]
                && endpoints_of(s, "helloworld-service|v2") == ["helloworld-service-v2"]
        },
    )
    .await;
    // Weighted choice is a Bernoulli trial per request: v2 arrives
    // Binomial(n, 0.2) times. Allow 4 standard deviations (a false alarm
    // about once in 16 000 runs), computed, not guessed.
    let n = 400;
    let versions = greetings(&mesh, n).await;
    assert!(
        versions.iter().all(|v| v == "v1" || v == "v2"),
        "every request got a greeting: {versions:?}"
    );
    let v2 = versions.iter().filter(|v| *v == "v2").count() as u64;
    assert_binomial("requests served by v2 under 80/20", v2, n as u64, 0.2, 4.0);

    // --- control plane down: the sidecars keep their last good snapshot ---
    mesh.stop_control_plane().await;
    let versions = greetings(&mesh, 40).await;
    assert!(
        versions.iter().all(|v| v == "v1" || v == "v2"),
        "traffic keeps flowing without the control plane: {versions:?}"
    );

    // --- control plane back: the applied config survived (it is on disk),
    // the proxies announce themselves again, and a new rule reaches them ---
    mesh.start_control_plane().await;
    let kept: Vec<String> = mesh
        .config()
        .await
        .expect("the restarted control plane lists its config")
        .iter()
        .map(|r| format!("{}/{}", r.kind, r.metadata.name))
        .collect();
    assert!(
        kept.contains(&"VirtualService/helloworld-service".to_string())
            && kept.contains(&"DestinationRule/helloworld-service".to_string()),
        "the canary survived the restart: {kept:?}"
    );
    mesh.wait_for_endpoints(&[("guestbook-ui", 1), ("helloworld-service", 2)])
        .await;
    mesh.apply("all-v2.yaml", ALL_V2).await;
    mesh.wait_for_snapshot("guestbook-ui-v1", "every call to v2", |s| {
        routes_for(s, "helloworld-service")
            .and_then(|r| r.first())
            .is_some_and(|r| {
                r.destinations.len() == 1 && r.destinations[0].cluster == "helloworld-service|v2"
            })
    })
    .await;
    let versions = greetings(&mesh, 30).await;
    assert!(
        versions.iter().all(|v| v == "v2"),
        "the new rule took effect: {versions:?}"
    );

    // --- an instance lost: back to plain load balancing over v1 and v2,
    // then v1's app container is killed ---
    mesh.delete("all-v2.yaml", &format!("{SUBSETS}---\n{ALL_V2}"))
        .await;
    mesh.wait_for_snapshot(
        "guestbook-ui-v1",
        "helloworld-service balanced over both instances",
        |s| {
            let mut both = endpoints_of(s, "helloworld-service");
            both.sort();
            routes_for(s, "helloworld-service")
                .and_then(|r| r.first())
                .is_some_and(|r| {
                    r.destinations.len() == 1 && r.destinations[0].cluster == "helloworld-service"
                })
                && both == ["helloworld-service-v1", "helloworld-service-v2"]
        },
    )
    .await;
    // Requests flow the whole time, from before the kill until the snapshot
    // dropped the instance, and every one greets. The pod outlives its app
    // (its sidecar holds the network namespace, as a pod's pause container
    // does), so a request that meets the dead app is answered 503 by v1's
    // sidecar: refused by the app, or reset by the kill mid-request. 503 is
    // in Istio's default retriable-status-codes, and the retry avoids the
    // host already tried (previous_hosts), so it lands on v2. Nothing
    // Istio's default retry cannot cover is left, so the bound is zero.
    const CLIENTS: usize = 4;
    let load = Greeter::start(&mesh, CLIENTS);
    load.wait_for_more(20).await;
    let before_kill = load.sent();
    mesh.kill_app("helloworld-service-v1").await;
    mesh.wait_for_snapshot(
        "guestbook-ui-v1",
        "helloworld-service without the killed instance",
        |s| endpoints_of(s, "helloworld-service") == ["helloworld-service-v2"],
    )
    .await;
    let at_removal = load.sent();
    let window = load.finish().await;
    assert!(
        at_removal > before_kill,
        "the load ran between the kill and the instance's removal"
    );
    let lost: Vec<(usize, &String)> = window
        .iter()
        .enumerate()
        .filter(|(_, v)| *v != "v1" && *v != "v2")
        .collect();
    eprintln!(
        "pods: {} of {} pages lost around the kill (sent {before_kill} before the kill, \
         {at_removal} when the snapshot dropped the instance)",
        lost.len(),
        window.len()
    );
    assert!(
        lost.is_empty(),
        "every page greets through the kill: {} of {} lost (sent {before_kill} before the kill, \
         {at_removal} when the snapshot dropped the instance), (index, outcome): {lost:?}",
        lost.len(),
        window.len()
    );
    let versions = greetings(&mesh, 40).await;
    assert!(
        versions.iter().all(|v| v == "v2"),
        "every request succeeds on the remaining instance: {versions:?}"
    );
}

// === helpers ===

/// The Guestbook page through the gateway; panics unless it answers 200.
async fn fetch_page(mesh: &Mesh) -> String {
    let (status, page) = mesh.get("/").await.expect("the gateway answers");
    assert_eq!(status, 200, "the page answers 200:\n{page}");
    page
}

/// Polls the page until `check` holds (config and registry changes take a
/// moment to reach every sidecar), then returns it.
async fn page_where(mesh: &Mesh, what: &str, check: impl Fn(&str) -> bool) -> String {
    retry_until_ok(&format!("a page with {what}"), async || {
        let (status, page) = mesh.get("/").await?;
        anyhow::ensure!(status == 200 && check(&page), "HTTP {status}:\n{page}");
        Ok(page)
    })
    .await
}

/// Which helloworld version greeted on one page load through the gateway:
/// `"none"` when the page had no greeting, `"error"` or `"HTTP <code>"`
/// when the request failed.
async fn greet(client: &reqwest::Client, url: &str) -> String {
    match client.get(url).send().await {
        Ok(r) if r.status() == 200 => match r.text().await {
            Ok(page) => greeting_version(&page).unwrap_or("none").to_string(),
            Err(_) => "error".to_string(),
        },
        Ok(r) => format!("HTTP {}", r.status().as_u16()),
        Err(_) => "error".to_string(),
    }
}

fn plain_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .expect("a plain HTTP client builds")
}

/// Steady load on the page: `workers` loops load it back to back until
/// [`Greeter::finish`], recording every outcome in the order they end.
struct Greeter {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<String>>>,
    tasks: tokio::task::JoinSet<()>,
}

impl Greeter {
    fn start(mesh: &Mesh, workers: usize) -> Greeter {
        let url = Arc::new(mesh.gateway_url());
        let client = plain_client();
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..workers {
            let (url, client, stop, seen) =
                (url.clone(), client.clone(), stop.clone(), seen.clone());
            tasks.spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let version = greet(&client, &url).await;
                    seen.lock().expect("not poisoned").push(version);
                }
            });
        }
        Greeter { stop, seen, tasks }
    }

    /// Page loads finished so far.
    fn sent(&self) -> usize {
        self.seen.lock().expect("not poisoned").len()
    }

    /// Wait until `more` further page loads have finished.
    async fn wait_for_more(&self, more: usize) {
        let target = self.sent() + more;
        wait_until(&format!("{target} page loads"), PATIENCE, async || {
            Ok(self.sent() >= target)
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}; {} made", self.sent()));
    }

    /// Stop the loops and return every outcome.
    async fn finish(mut self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        while let Some(done) = self.tasks.join_next().await {
            done.expect("a load worker does not panic");
        }
        std::mem::take(&mut *self.seen.lock().expect("not poisoned"))
    }
}

/// Loads the page `n` times, 8 at a time, and returns which helloworld
/// version greeted on each (`"none"` when the page had no greeting, `"error"`
/// when the request failed).
async fn greetings(mesh: &Mesh, n: usize) -> Vec<String> {
    let url = Arc::new(mesh.gateway_url());
    let client = plain_client();
    let mut tasks = tokio::task::JoinSet::new();
    let workers = 8;
    for worker in 0..workers {
        let (url, client) = (url.clone(), client.clone());
        let count = n / workers + usize::from(worker < n % workers);
        tasks.spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..count {
                seen.push(greet(&client, &url).await);
            }
            seen
        });
    }
    let mut all = Vec::new();
    while let Some(seen) = tasks.join_next().await {
        all.extend(seen.expect("a request worker does not panic"));
    }
    all
}

//! The control-plane benchmark against the real mesh-control, in-process on
//! 127.0.0.1:0 and small: it keeps `mesh-bench control` honest about the
//! watch API (mesh/api/src/xds.rs) and the config API it drives, so the
//! full benchmark does not discover a changed contract after half an hour.

use std::time::Duration;

use mesh_bench::control::{self, ControlConfig};
use mesh_control::{Server, Settings};

#[test]
fn every_simulated_proxy_receives_every_applied_change() {
    let state_dir = std::env::temp_dir().join(format!(
        "mesh-bench-control-test-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    // The control plane serves from this runtime's worker threads while the
    // benchmark, which is plain blocking code, runs on the test thread.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut settings = Settings::local(&state_dir);
    // The silent endpoints announce once; they must outlive the test.
    settings.lease = Duration::from_secs(3600);
    let server = runtime.block_on(Server::start(settings)).unwrap();

    let report = control::run(&ControlConfig {
        control: server.addr(),
        pid: Some(std::process::id()),
        proxies: 5,
        endpoints: 30,
        services: 3,
        applies: 3,
        heartbeat: Duration::from_millis(250),
        wait: Duration::from_secs(2),
        idle: Duration::from_millis(300),
        deadline: Duration::from_secs(30),
    })
    .unwrap();

    assert_eq!(
        report.propagation.count,
        5 * 3,
        "one delay per proxy per apply"
    );
    assert_eq!(report.all_proxies.count, 3, "one time-to-all per apply");
    assert_eq!(report.errors, 0, "{:?}", report.first_error);
    assert_eq!(
        report.versions_while_idle, 0,
        "heartbeats with unchanged content must not push new versions"
    );
    assert!(report.snapshot_bytes > 0);
    assert!(report.all_proxies.max_us >= report.propagation.p50_us);
    let process = report.process.expect("pid given, so /proc was read");
    assert!(process.hwm_kb >= process.rss_kb_registered);

    runtime.block_on(server.shutdown()).unwrap();
    let _ = std::fs::remove_dir_all(&state_dir);
}

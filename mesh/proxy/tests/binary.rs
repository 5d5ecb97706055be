//! The `mesh-proxy` binary: settings errors name the variable; it serves
//! without a control plane, and leaves cleanly on SIGTERM.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_mesh-proxy");

#[test]
fn a_bad_setting_stops_the_binary_naming_the_variable() {
    let output = Command::new(BIN)
        .env_clear()
        .env("MESH_SERVICE", "hw")
        .env("MESH_INBOUND_ADDR", "15006")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("MESH_INBOUND_ADDR"), "{stderr}");
}

#[tokio::test]
async fn the_binary_runs_without_its_control_plane_and_stops_on_sigterm() {
    let admin = refused_addr().await;
    let control = refused_addr().await;
    let mut child = tokio::process::Command::new(BIN)
        .env_clear()
        .env("MESH_SERVICE", "hw")
        .env("MESH_CONTROL_URL", format!("http://{control}"))
        .env("MESH_ADMIN_ADDR", admin.to_string())
        .env("MESH_OUTBOUND_ADDR", "127.0.0.1:0")
        .env("MESH_INBOUND_ADDR", "127.0.0.1:0")
        .env("MESH_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    let client = direct_client();
    let url = format!("http://{admin}/ready");
    eventually(
        "the admin port answers",
        Duration::from_secs(10),
        async || client.get(&url).send().await.is_ok(),
    )
    .await;
    let ready = get(&client, &url).await;
    assert_eq!(ready.status, 503);
    assert!(ready.body.contains("no config from the control plane yet"));

    let pid = child.id().unwrap().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("the proxy exits after SIGTERM")
        .unwrap();
    assert!(status.success(), "{status}");

    let mut stderr = String::new();
    tokio::io::AsyncReadExt::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr)
        .await
        .unwrap();
    assert!(stderr.contains("control plane unreachable"), "{stderr}");
    // Sparse logging: a handful of warnings, not one per retry.
    assert!(
        stderr.matches("control plane unreachable").count() <= 8,
        "{stderr}"
    );
}

//! `<workdir>/run/up.json`: what a running `meshctl up` started, and where.
//!
//! `meshctl up` rewrites it after every change (start, scale, restart).
//! Other commands read it: `down` and `scale` find the supervisor's address
//! in it, `get` and `apply` the control plane's URL, and if `up` was killed
//! without a chance to clean up, `down` still finds every child's pid here.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::table::Table;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunState {
    /// The `meshctl up` process.
    pub pid: u32,
    /// `127.0.0.1:PORT` of its supervisor API (see `supervisor.rs`).
    pub supervisor: String,
    pub workdir: PathBuf,
    pub control_url: String,
    pub gateway_url: String,
    pub control_plane: Option<ProcessRecord>,
    pub gateway: Option<GatewayRecord>,
    pub instances: Vec<InstanceRecord>,
}

/// One child process.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessRecord {
    pub pid: u32,
    /// File name of the program (`mesh-proxy`, `python3`, `java`...).
    pub program: String,
    pub log: PathBuf,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayRecord {
    pub instance: String,
    pub port: u16,
    pub admin_port: u16,
    pub process: ProcessRecord,
}

/// One instance: an app process and its sidecar, like a pod's two containers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceRecord {
    pub service: String,
    pub version: String,
    pub instance: String,
    pub app_port: u16,
    pub outbound_port: u16,
    pub inbound_port: u16,
    pub admin_port: u16,
    pub app: ProcessRecord,
    pub sidecar: ProcessRecord,
}

impl RunState {
    pub fn path(workdir: &Path) -> PathBuf {
        workdir.join("run").join("up.json")
    }

    /// The run file of `workdir`, if `meshctl up` wrote one.
    pub fn load(workdir: &Path) -> Result<Option<RunState>> {
        let path = Self::path(workdir);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let state = serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is not a run file of this meshctl; if no `meshctl up` runs, delete it",
                path.display()
            )
        })?;
        Ok(Some(state))
    }

    /// Write atomically (a reader never sees half a file).
    pub fn save(&self, workdir: &Path) -> Result<()> {
        let path = Self::path(workdir);
        let dir = path.parent().expect("the run file sits in run/");
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let tmp = dir.join(format!("up.json.{}.tmp", std::process::id()));
        let json = serde_json::to_vec_pretty(self).expect("RunState serializes");
        std::fs::write(&tmp, json).with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(())
    }

    pub fn remove(workdir: &Path) {
        let _ = std::fs::remove_file(Self::path(workdir));
    }

    /// Every child with a label, control plane last (the order to stop them in).
    pub fn processes(&self) -> Vec<(String, &ProcessRecord)> {
        let mut all = Vec::new();
        if let Some(gateway) = &self.gateway {
            all.push((gateway.instance.clone(), &gateway.process));
        }
        for i in &self.instances {
            all.push((format!("{}.sidecar", i.instance), &i.sidecar));
            all.push((i.instance.clone(), &i.app));
        }
        if let Some(control) = &self.control_plane {
            all.push(("mesh-control".to_string(), control));
        }
        all
    }

    /// What runs where, as `meshctl up` prints it.
    pub fn table(&self) -> Table {
        let mut table = Table::new([
            "SERVICE", "VERSION", "INSTANCE", "APP", "OUTBOUND", "INBOUND", "ADMIN",
        ]);
        if self.control_plane.is_some() {
            let port = self.control_url.rsplit(':').next().unwrap_or("");
            table.row(["mesh-control", "-", "mesh-control", port, "-", "-", "-"]);
        }
        let mut instances: Vec<_> = self.instances.iter().collect();
        instances.sort_by(|a, b| {
            (&a.service, &a.version, &a.instance).cmp(&(&b.service, &b.version, &b.instance))
        });
        for i in instances {
            table.row([
                i.service.clone(),
                i.version.clone(),
                i.instance.clone(),
                i.app_port.to_string(),
                i.outbound_port.to_string(),
                i.inbound_port.to_string(),
                i.admin_port.to_string(),
            ]);
        }
        if let Some(gw) = &self.gateway {
            table.row([
                "ingressgateway".to_string(),
                "-".to_string(),
                gw.instance.clone(),
                gw.port.to_string(),
                "-".to_string(),
                "-".to_string(),
                gw.admin_port.to_string(),
            ]);
        }
        table
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> RunState {
        let record = |pid, program: &str| ProcessRecord {
            pid,
            program: program.into(),
            log: PathBuf::from(format!("/w/logs/{pid}.log")),
        };
        RunState {
            pid: 10,
            supervisor: "127.0.0.1:4000".into(),
            workdir: "/w".into(),
            control_url: "http://127.0.0.1:15010".into(),
            gateway_url: "http://localhost:8080".into(),
            control_plane: Some(record(11, "mesh-control")),
            gateway: Some(GatewayRecord {
                instance: "ingressgateway-1a2b3".into(),
                port: 8080,
                admin_port: 4100,
                process: record(12, "mesh-proxy"),
            }),
            instances: vec![InstanceRecord {
                service: "helloworld-service".into(),
                version: "v1".into(),
                instance: "helloworld-service-v1-abcde".into(),
                app_port: 4001,
                outbound_port: 4002,
                inbound_port: 4003,
                admin_port: 4004,
                app: record(13, "python3"),
                sidecar: record(14, "mesh-proxy"),
            }],
        }
    }

    #[test]
    fn processes_stop_gateway_first_and_control_plane_last() {
        let state = sample();
        let order: Vec<_> = state
            .processes()
            .into_iter()
            .map(|(name, p)| format!("{name}:{}", p.pid))
            .collect();
        assert_eq!(
            order,
            [
                "ingressgateway-1a2b3:12",
                "helloworld-service-v1-abcde.sidecar:14",
                "helloworld-service-v1-abcde:13",
                "mesh-control:11"
            ]
        );
    }

    #[test]
    fn table_shows_every_port() {
        let text = sample().table().render();
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(
            lines[0].split_whitespace().collect::<Vec<_>>(),
            [
                "SERVICE", "VERSION", "INSTANCE", "APP", "OUTBOUND", "INBOUND", "ADMIN"
            ]
        );
        assert_eq!(
            lines[2].split_whitespace().collect::<Vec<_>>(),
            [
                "helloworld-service",
                "v1",
                "helloworld-service-v1-abcde",
                "4001",
                "4002",
                "4003",
                "4004"
            ]
        );
        assert!(lines[1].starts_with("mesh-control"));
        assert!(lines[3].contains("ingressgateway-1a2b3"));
    }

    #[test]
    fn saves_and_loads() {
        let dir = std::env::temp_dir().join(format!(
            "meshctl-runfile-{}-{}",
            std::process::id(),
            fastrand::u32(..)
        ));
        assert_eq!(RunState::load(&dir).unwrap(), None);
        let state = sample();
        state.save(&dir).unwrap();
        assert_eq!(RunState::load(&dir).unwrap(), Some(state));
        RunState::remove(&dir);
        assert_eq!(RunState::load(&dir).unwrap(), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

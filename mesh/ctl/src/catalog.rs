//! The Guestbook's services, in one place: how `meshctl up` starts each one,
//! and what differs between its versions.
//!
//! In Kubernetes this knowledge lives in Deployments (image, env, labels per
//! version: `helloworld-service-v1`, `helloworld-service-v2`). Locally it lives
//! here. Every instance also gets the environment the mesh gives any pod:
//! `HOST`/`PORT` (where to listen), `VERSION`, `HOSTNAME` (its instance name,
//! like a pod name) and `HTTP_PROXY` (its own sidecar's outbound port); see
//! `supervisor.rs`.
//!
//! Besides the Guestbook, the catalog holds the gRPC demo of lab 09
//! (`hello-grpc` and an idle `hello-grpc-client` to `meshctl exec` into),
//! which `meshctl up` starts only when asked (`--grpc-demo`).

use std::fmt;
use std::str::FromStr;

/// How a service's process is started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Launch {
    /// A binary of this workspace, found beside `meshctl` itself.
    Binary(&'static str),
    /// `python3 <script>`, the script's path relative to the repository root.
    Python(&'static str),
    /// `java <file>`: the JDK compiles and runs a single source file (Java 11+;
    /// Sentiment.java needs 17, see `runtime.rs`).
    Java(&'static str),
}

/// How `meshctl up` tells that an instance's app is ready.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// `GET /health` answers 2xx (an HTTP readiness probe).
    Http,
    /// Its port accepts a connection (Kubernetes' `tcpSocket` probe): a gRPC
    /// server speaks HTTP/2 only, so a plain HTTP/1.1 GET cannot ask it.
    Tcp,
}

/// One version of a service: its `version` label and the environment that
/// makes it behave differently.
#[derive(Debug)]
pub struct Version {
    pub name: &'static str,
    pub env: &'static [(&'static str, &'static str)],
}

/// One service of the Guestbook.
#[derive(Debug)]
pub struct Service {
    /// The name apps call it by: `http://NAME:8080`.
    pub name: &'static str,
    pub launch: Launch,
    /// Versions `--with SERVICE@VERSION` and `scale` accept; the first one is
    /// what `meshctl up` runs by default.
    pub versions: &'static [Version],
    /// Environment variables whose value is a file in the work dir (the
    /// SQLite database): `(VARIABLE, file name)`.
    pub workdir_files: &'static [(&'static str, &'static str)],
    pub health: Health,
    /// Started by a plain `meshctl up` (the Guestbook), or only on request
    /// (the gRPC demo).
    pub by_default: bool,
}

/// Every service `meshctl up` knows, in start order (callees before callers,
/// so the page works as soon as the gateway does).
pub const CATALOG: &[Service] = &[
    Service {
        name: "sentiment-service",
        launch: Launch::Java("services/sentiment-service/Sentiment.java"),
        versions: &[Version {
            name: "v1",
            env: &[],
        }],
        workdir_files: &[],
        health: Health::Http,
        by_default: true,
    },
    Service {
        name: "guestbook-service",
        launch: Launch::Binary("guestbook-service"),
        versions: &[Version {
            name: "v1",
            env: &[],
        }],
        workdir_files: &[("DATABASE_PATH", "guestbook.db")],
        health: Health::Http,
        by_default: true,
    },
    Service {
        name: "helloworld-service",
        launch: Launch::Python("services/helloworld-service/helloworld.py"),
        versions: &[
            Version {
                name: "v1",
                env: &[],
            },
            // The canary of the talk: same code, a Spanish greeting.
            Version {
                name: "v2",
                env: &[("GREETING", "Hola")],
            },
        ],
        workdir_files: &[],
        health: Health::Http,
        by_default: true,
    },
    Service {
        name: "guestbook-ui",
        launch: Launch::Binary("guestbook-ui"),
        versions: &[
            Version {
                name: "v1",
                env: &[],
            },
            // v2 of the page looks different (green), so a user sees which
            // version served them.
            Version {
                name: "v2",
                env: &[("VERSION", "v2")],
            },
        ],
        workdir_files: &[],
        health: Health::Http,
        by_default: true,
    },
    // The gRPC demo (lab 09): a gRPC server answering with its instance...
    Service {
        name: "hello-grpc",
        launch: Launch::Python("services/hello-grpc/server.py"),
        versions: &[Version {
            name: "v1",
            env: &[],
        }],
        workdir_files: &[],
        health: Health::Tcp,
        by_default: false,
    },
    // ...and a meshed client instance that idles (`client.py` serving
    // /health only), like Istio's `sleep` sample: `meshctl exec
    // hello-grpc-client -- python3 services/hello-grpc/client.py` makes the
    // calls through its sidecar.
    Service {
        name: "hello-grpc-client",
        launch: Launch::Python("services/hello-grpc/client.py"),
        versions: &[Version {
            name: "v1",
            env: &[("HELLO_GRPC_CLIENT_MODE", "serve")],
        }],
        workdir_files: &[],
        health: Health::Http,
        by_default: false,
    },
];

/// The workloads `meshctl up --grpc-demo` adds: three gRPC servers (so the
/// spread shows) and one client instance.
pub const GRPC_DEMO: &[(&str, &str, u32)] =
    &[("hello-grpc", "v1", 3), ("hello-grpc-client", "v1", 1)];

/// The workload names of the catalog, for error messages.
pub fn names() -> String {
    CATALOG
        .iter()
        .map(|s| s.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The catalog entry for `name`, or an error listing what exists.
pub fn service(name: &str) -> Result<&'static Service, String> {
    CATALOG
        .iter()
        .find(|s| s.name == name)
        .ok_or_else(|| format!("unknown service {name:?}; the Guestbook has {}", names()))
}

impl Service {
    /// The version `meshctl up` runs when nothing else is asked.
    pub fn default_version(&self) -> &'static Version {
        // Every entry of CATALOG lists at least one version (a unit test checks).
        &self.versions[0]
    }

    pub fn version(&self, name: &str) -> Result<&'static Version, String> {
        self.versions
            .iter()
            .find(|v| v.name == name)
            .ok_or_else(|| {
                let known: Vec<_> = self.versions.iter().map(|v| v.name).collect();
                format!(
                    "{} has no version {name:?}; it has {}",
                    self.name,
                    known.join(", ")
                )
            })
    }
}

/// What `meshctl up` starts when asked for nothing else: every Guestbook
/// service at its default version, one instance each.
pub fn default_workloads() -> Vec<Workload> {
    CATALOG
        .iter()
        .filter(|s| s.by_default)
        .map(|s| Workload {
            service: s.name.to_string(),
            version: s.default_version().name.to_string(),
        })
        .collect()
}

// === Workload ===

/// `SERVICE@VERSION`: one version of one service (a Deployment in Kubernetes).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Workload {
    pub service: String,
    pub version: String,
}

impl Workload {
    /// Look both names up in the catalog.
    pub fn spec(&self) -> Result<(&'static Service, &'static Version), String> {
        let service = service(&self.service)?;
        let version = service.version(&self.version)?;
        Ok((service, version))
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.service, self.version)
    }
}

/// Parses `helloworld-service@v2`; both names must be in the catalog.
impl FromStr for Workload {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (name, version) = text.split_once('@').ok_or_else(|| {
            format!("{text:?} names no version; write SERVICE@VERSION, for example helloworld-service@v2")
        })?;
        let workload = Workload {
            service: name.to_string(),
            version: version.to_string(),
        };
        workload.spec()?;
        Ok(workload)
    }
}

// === Replicas ===

/// `SERVICE[@VERSION]=N`, as `--replicas` and `meshctl scale` take it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replicas {
    pub service: String,
    /// `None`: the version that runs (or the default one).
    pub version: Option<String>,
    pub count: u32,
}

/// How many instances of one workload `meshctl up` or `scale` may run: each is
/// two processes on a laptop.
pub const MAX_REPLICAS: u32 = 20;

impl FromStr for Replicas {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (target, count) = text.split_once('=').ok_or_else(|| {
            format!(
                "{text:?} has no count; write SERVICE[@VERSION]=N, for example helloworld-service=3"
            )
        })?;
        let count: u32 = count.trim().parse().map_err(|_| {
            format!("{count:?} in {text:?} is not a number of replicas; write SERVICE[@VERSION]=N, for example helloworld-service=3")
        })?;
        if count > MAX_REPLICAS {
            return Err(format!(
                "{count} replicas is more than a laptop needs (at most {MAX_REPLICAS})"
            ));
        }
        let (name, version) = match target.split_once('@') {
            Some((name, version)) => (name, Some(version)),
            None => (target, None),
        };
        let service = service(name)?;
        if let Some(version) = version {
            service.version(version)?;
        }
        Ok(Replicas {
            service: name.to_string(),
            version: version.map(str::to_string),
            count,
        })
    }
}

// === EnvOverride ===

/// `SERVICE[@VERSION]:NAME=VALUE`: an extra environment variable for the
/// instances of a service, for the labs (`helloworld-service@v2:FAILURE_RATE=0.5`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvOverride {
    pub service: String,
    pub version: Option<String>,
    pub name: String,
    pub value: String,
}

impl EnvOverride {
    pub fn applies_to(&self, workload: &Workload) -> bool {
        self.service == workload.service
            && self.version.as_ref().is_none_or(|v| *v == workload.version)
    }
}

impl FromStr for EnvOverride {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let usage = "write SERVICE[@VERSION]:NAME=VALUE, for example helloworld-service@v2:FAILURE_RATE=0.5";
        let (target, assignment) = text
            .split_once(':')
            .ok_or_else(|| format!("{text:?} names no service; {usage}"))?;
        let (name, value) = assignment
            .split_once('=')
            .ok_or_else(|| format!("{text:?} has no value; {usage}"))?;
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!(
                "{name:?} in {text:?} is not an environment variable name; {usage}"
            ));
        }
        let (service_name, version) = match target.split_once('@') {
            Some((s, v)) => (s, Some(v)),
            None => (target, None),
        };
        let service = service(service_name)?;
        if let Some(version) = version {
            service.version(version)?;
        }
        Ok(EnvOverride {
            service: service_name.to_string(),
            version: version.map(str::to_string),
            name: name.to_string(),
            value: value.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_service_has_a_default_version() {
        for service in CATALOG {
            assert!(
                !service.versions.is_empty(),
                "{} has no version",
                service.name
            );
            assert_eq!(service.default_version().name, "v1");
        }
    }

    #[test]
    fn versions_carry_the_talks_differences() {
        let hello = service("helloworld-service").unwrap();
        assert_eq!(hello.version("v2").unwrap().env, &[("GREETING", "Hola")]);
        assert!(hello.version("v1").unwrap().env.is_empty());
        let ui = service("guestbook-ui").unwrap();
        assert_eq!(ui.version("v2").unwrap().env, &[("VERSION", "v2")]);
    }

    #[test]
    fn default_workloads_start_callees_first() {
        let names: Vec<_> = default_workloads()
            .into_iter()
            .map(|w| w.to_string())
            .collect();
        assert_eq!(
            names,
            [
                "sentiment-service@v1",
                "guestbook-service@v1",
                "helloworld-service@v1",
                "guestbook-ui@v1"
            ]
        );
    }

    #[test]
    fn the_grpc_demo_is_in_the_catalog_but_not_started_by_default() {
        for (name, version, _) in GRPC_DEMO {
            let service = service(name).unwrap();
            assert!(!service.by_default, "{name}");
            service.version(version).unwrap();
        }
        assert_eq!(service("hello-grpc").unwrap().health, Health::Tcp);
        assert!(
            default_workloads()
                .iter()
                .all(|w| !w.service.starts_with("hello-grpc"))
        );
    }

    #[test]
    fn parses_a_workload() {
        let w: Workload = "helloworld-service@v2".parse().unwrap();
        assert_eq!(
            (w.service.as_str(), w.version.as_str()),
            ("helloworld-service", "v2")
        );
        let err = "helloworld-service".parse::<Workload>().unwrap_err();
        assert!(err.contains("SERVICE@VERSION"), "{err}");
        let err = "helloworld-service@v9".parse::<Workload>().unwrap_err();
        assert!(err.contains("it has v1, v2"), "{err}");
        let err = "reviews@v1".parse::<Workload>().unwrap_err();
        assert!(err.contains("unknown service \"reviews\""), "{err}");
    }

    #[test]
    fn parses_replicas_with_and_without_version() {
        assert_eq!(
            "helloworld-service=3".parse::<Replicas>().unwrap(),
            Replicas {
                service: "helloworld-service".into(),
                version: None,
                count: 3
            }
        );
        assert_eq!(
            "helloworld-service@v2=0".parse::<Replicas>().unwrap(),
            Replicas {
                service: "helloworld-service".into(),
                version: Some("v2".into()),
                count: 0
            }
        );
        for bad in [
            "helloworld-service",
            "helloworld-service=three",
            "helloworld-service=-1",
        ] {
            let err = bad.parse::<Replicas>().unwrap_err();
            assert!(err.contains("SERVICE[@VERSION]=N"), "{bad}: {err}");
        }
        assert!("helloworld-service=500".parse::<Replicas>().is_err());
        assert!("helloworld-service@v3=1".parse::<Replicas>().is_err());
        assert!("nope=1".parse::<Replicas>().is_err());
    }

    #[test]
    fn parses_env_overrides() {
        let e: EnvOverride = "helloworld-service@v2:FAILURE_RATE=0.5".parse().unwrap();
        assert_eq!(e.name, "FAILURE_RATE");
        assert_eq!(e.value, "0.5");
        let v1 = Workload {
            service: "helloworld-service".into(),
            version: "v1".into(),
        };
        let v2 = Workload {
            version: "v2".into(),
            ..v1.clone()
        };
        assert!(e.applies_to(&v2));
        assert!(!e.applies_to(&v1));

        let all: EnvOverride = "helloworld-service:DELAY_MS=".parse().unwrap();
        assert!(all.applies_to(&v1) && all.applies_to(&v2));
        assert_eq!(all.value, "");

        assert!("helloworld-service:=1".parse::<EnvOverride>().is_err());
        assert!("helloworld-service:A B=1".parse::<EnvOverride>().is_err());
        assert!("FAILURE_RATE=0.5".parse::<EnvOverride>().is_err());
    }
}

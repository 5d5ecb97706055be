//! guestbook-ui's configuration, read from the environment.
//!
//! Parsing goes through the small [`Strings`] trait (linkerd2-proxy's shape):
//! [`Env`] reads the process environment in `main`, and a `HashMap` stands in
//! for it in tests, so no test has to set process-wide variables.
//!
//! Each Guestbook service keeps its own copy of these few lines on purpose:
//! a service should be readable, and buildable, on its own.

use std::collections::HashMap;
use std::time::Duration;

/// Everything guestbook-ui reads from its environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// `HOST`: bind address, default `0.0.0.0`.
    pub host: String,
    /// `PORT`: listen port, default 8080 (0 picks a free port).
    pub port: u16,
    /// `VERSION`: this instance's version, shown in the footer; `v2` turns the page green.
    pub version: String,
    /// `HOSTNAME`: the instance name (a pod name in Kubernetes); default the OS hostname.
    pub hostname: String,
    /// `HELLOWORLD_URL`: default `http://helloworld-service:8080`.
    pub helloworld_url: String,
    /// `GUESTBOOK_URL`: default `http://guestbook-service:8080`.
    pub guestbook_url: String,
    /// `BACKEND_TIMEOUT_MS`: how long the page waits for each backend, default 3000 ms.
    pub backend_timeout: Duration,
}

/// A bad environment variable; the message names it and says what to write.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{name}={value:?} is not valid: {expected}")]
    Invalid {
        name: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("{name} is not valid UTF-8; set it to plain text")]
    NotUnicode { name: &'static str },
}

/// A source of configuration strings: the process environment or a map.
pub trait Strings {
    /// The value of `name`, or `None` when unset.
    fn get(&self, name: &'static str) -> Result<Option<String>, ConfigError>;
}

/// The process environment.
pub struct Env;

impl Strings for Env {
    fn get(&self, name: &'static str) -> Result<Option<String>, ConfigError> {
        match std::env::var(name) {
            Ok(value) => Ok(Some(value)),
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => Err(ConfigError::NotUnicode { name }),
        }
    }
}

impl Strings for HashMap<&'static str, &'static str> {
    fn get(&self, name: &'static str) -> Result<Option<String>, ConfigError> {
        Ok(HashMap::get(self, name).map(|v| v.to_string()))
    }
}

impl Config {
    /// Read the config; an empty variable counts as unset.
    pub fn from_strings(env: &dyn Strings) -> Result<Config, ConfigError> {
        let get = |name: &'static str| -> Result<Option<String>, ConfigError> {
            Ok(env.get(name)?.filter(|v| !v.trim().is_empty()))
        };
        let or = |name: &'static str, default: &str| -> Result<String, ConfigError> {
            Ok(get(name)?.unwrap_or_else(|| default.to_string()))
        };
        let url = |name: &'static str, default: &str, expected: &'static str| {
            let value = or(name, default)?;
            if !value.starts_with("http://") && !value.starts_with("https://") {
                return Err(ConfigError::Invalid {
                    name,
                    value,
                    expected,
                });
            }
            // A trailing slash would make `{url}/hello` ask for `//hello`.
            Ok(value.trim_end_matches('/').to_string())
        };

        let port = match get("PORT")? {
            None => 8080,
            Some(v) => v.trim().parse::<u16>().map_err(|_| ConfigError::Invalid {
                name: "PORT",
                value: v,
                expected: "a port number between 0 and 65535, like 8080",
            })?,
        };
        let backend_timeout = match get("BACKEND_TIMEOUT_MS")? {
            None => Duration::from_millis(3000),
            Some(v) => match v.trim().parse::<u64>() {
                Ok(ms) if ms > 0 => Duration::from_millis(ms),
                _ => {
                    return Err(ConfigError::Invalid {
                        name: "BACKEND_TIMEOUT_MS",
                        value: v,
                        expected: "a whole number of milliseconds above 0, like 3000",
                    });
                }
            },
        };

        Ok(Config {
            host: or("HOST", "0.0.0.0")?,
            port,
            version: or("VERSION", "v1")?,
            hostname: match get("HOSTNAME")? {
                Some(h) => h,
                None => os_hostname(),
            },
            helloworld_url: url(
                "HELLOWORLD_URL",
                "http://helloworld-service:8080",
                "an http:// URL, like http://helloworld-service:8080",
            )?,
            guestbook_url: url(
                "GUESTBOOK_URL",
                "http://guestbook-service:8080",
                "an http:// URL, like http://guestbook-service:8080",
            )?,
            backend_timeout,
        })
    }
}

/// The machine's name, for when `HOSTNAME` is not exported (Kubernetes and
/// meshctl always set it; an interactive shell often does not export it).
fn os_hostname() -> String {
    if let Ok(name) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        return name.trim().to_string();
    }
    // macOS has no /proc; the `hostname` command exists on every Unix.
    std::process::Command::new("hostname")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown-host".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&'static str, &'static str)]) -> Result<Config, ConfigError> {
        Config::from_strings(&pairs.iter().copied().collect::<HashMap<_, _>>())
    }

    #[test]
    fn defaults() {
        let c = parse(&[("HOSTNAME", "ui-1")]).unwrap();
        assert_eq!(
            c,
            Config {
                host: "0.0.0.0".into(),
                port: 8080,
                version: "v1".into(),
                hostname: "ui-1".into(),
                helloworld_url: "http://helloworld-service:8080".into(),
                guestbook_url: "http://guestbook-service:8080".into(),
                backend_timeout: Duration::from_millis(3000),
            }
        );
    }

    #[test]
    fn values_are_read() {
        let c = parse(&[
            ("HOST", "127.0.0.1"),
            ("PORT", "0"),
            ("VERSION", "v2"),
            ("HELLOWORLD_URL", "http://127.0.0.1:8081/"),
            ("GUESTBOOK_URL", "http://127.0.0.1:8082"),
            ("BACKEND_TIMEOUT_MS", "250"),
        ])
        .unwrap();
        assert_eq!(
            (c.host.as_str(), c.port, c.version.as_str()),
            ("127.0.0.1", 0, "v2")
        );
        assert_eq!(c.helloworld_url, "http://127.0.0.1:8081");
        assert_eq!(c.guestbook_url, "http://127.0.0.1:8082");
        assert_eq!(c.backend_timeout, Duration::from_millis(250));
        assert!(!c.hostname.is_empty(), "falls back to the OS hostname");
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (name, value) in [
            ("PORT", "http"),
            ("PORT", "-1"),
            ("BACKEND_TIMEOUT_MS", "3s"),
            ("BACKEND_TIMEOUT_MS", "0"),
            ("HELLOWORLD_URL", "helloworld-service:8080"),
            ("GUESTBOOK_URL", "ftp://guestbook"),
        ] {
            let err = parse(&[(name, value)]).unwrap_err().to_string();
            assert!(err.starts_with(name), "{name}={value}: {err}");
        }
    }
}

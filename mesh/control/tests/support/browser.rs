//! A real browser for the dashboard tests: Debian's `chromium`, headless,
//! driven through `chromedriver` (package `chromium-driver`) over WebDriver
//! with the fantoccini crate. Missing either program fails the test with
//! the packages to install.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::anyhow;
use fantoccini::{Client, ClientBuilder, Locator};
use mesh_testkit::retry_until_ok;
use serde_json::json;

/// How long the page gets to show something before the test fails.
pub const PAGE_TIMEOUT: Duration = Duration::from_secs(20);

/// A program on PATH, or a failure that names the Debian package.
pub fn require(program: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(program))
            .find(|candidate| candidate.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "the browser test needs `{program}`, which is not on PATH: install Debian's \
             `chromium` and `chromium-driver` packages (apt-get install chromium chromium-driver, \
             or run ./scripts/setup-test-machine.sh as root), then run the test again"
        )
    })
}

/// chromedriver in its own process group (it starts chromium as its child),
/// and a WebDriver session with headless chromium.
pub struct Browser {
    driver: Child,
    client: Option<Client>,
}

impl Browser {
    pub async fn start() -> Browser {
        let chromedriver = require("chromedriver");
        let chromium = require("chromium");
        let port = free_port();
        let mut command = Command::new(&chromedriver);
        command
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        #[cfg(unix)]
        {
            use std::os::unix::process::CommandExt;
            command.process_group(0);
        }
        let driver = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", chromedriver.display()));
        let mut browser = Browser {
            driver,
            client: None,
        };

        let webdriver = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        // Refused until it listens: retried.
        retry_until_ok("chromedriver to answer", Duration::from_secs(20), || {
            let http = http.clone();
            let url = format!("{webdriver}/status");
            async move {
                let status = http.get(&url).send().await?.status();
                anyhow::ensure!(status.is_success(), "/status answers {status}");
                Ok(())
            }
        })
        .await
        .unwrap();

        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium,
                "args": [
                    "--headless=new",
                    // As root in a container, Chromium's sandbox cannot start.
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    // 127.0.0.1 directly, whatever proxy the environment names.
                    "--no-proxy-server",
                    "--window-size=1600,1000",
                ]
            }),
        );
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&webdriver)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "chromedriver could not start chromium ({}): {e}",
                    chromium.display()
                )
            });
        browser.client = Some(client);
        browser
    }

    pub fn client(&self) -> &Client {
        self.client.as_ref().expect("connected in start")
    }

    pub async fn goto(&self, url: &str) {
        self.client()
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("open {url}: {e}"));
    }

    /// Wait for an element matching `css`.
    pub async fn element(&self, css: &str) -> fantoccini::elements::Element {
        self.client()
            .wait()
            .at_most(PAGE_TIMEOUT)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("the page never showed `{css}`: {e}"))
    }

    /// What the traffic graph shows on the edge matching `css`, once it
    /// carries traffic over at least `min_window` (the graph's rate window
    /// starts with one scrape; a wider one averages out the scrape timing).
    pub async fn edge_traffic(
        &self,
        css: &str,
        min_window: Duration,
        timeout: Duration,
    ) -> EdgeTraffic {
        retry_until_ok(
            &format!(
                "the edge `{css}` to carry traffic over {}s",
                min_window.as_secs_f64()
            ),
            timeout,
            || async {
                let edge = self.element(css).await;
                let attr = |name: &'static str| {
                    let edge = edge.clone();
                    async move {
                        edge.attr(name)
                            .await?
                            .unwrap_or_default()
                            .parse::<f64>()
                            .map_err(|e| anyhow!("{name}: {e}"))
                    }
                };
                let (rps, requests) = (attr("data-rps").await?, attr("data-requests").await?);
                if rps <= 0.0 {
                    return Err(anyhow!("data-rps is {rps}"));
                }
                let traffic = EdgeTraffic {
                    rps,
                    requests,
                    // Idle edges have no error rate; this one is busy.
                    error_rate: attr("data-error-rate").await?,
                    window: Duration::from_secs_f64(requests / rps),
                };
                if traffic.window < min_window {
                    return Err(anyhow!("{traffic:?}"));
                }
                Ok(traffic)
            },
        )
        .await
        .unwrap()
    }

    /// Save a screenshot under target/test-output/ and return its path.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.client().screenshot().await.expect("a screenshot");
        let dir = output_dir();
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, png).unwrap();
        path
    }

    pub async fn close(mut self) {
        if let Some(client) = self.client.take() {
            let _ = client.close().await;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // chromedriver and the chromium it started share its process group:
        // stop them all, also when an assertion failed half-way.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg("--")
            .arg(format!("-{}", self.driver.id()))
            .status();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// One edge of the traffic graph, as the page shows it.
#[derive(Clone, Debug)]
pub struct EdgeTraffic {
    pub rps: f64,
    /// Requests counted in the window (`data-requests`).
    pub requests: f64,
    /// Share of 5xx and no-answer responses.
    pub error_rate: f64,
    /// The time the rate is measured over: requests / rps.
    pub window: Duration,
}

impl EdgeTraffic {
    /// The failed requests in the window.
    pub fn errors(&self) -> u64 {
        (self.requests * self.error_rate).round() as u64
    }
}

/// `target/test-output`, beside the target directory's `tmp`.
pub fn output_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("CARGO_TARGET_TMPDIR is inside the target directory")
        .join("test-output")
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

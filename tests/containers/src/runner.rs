//! A small test runner for the pod tests (`harness = false`).
//!
//! The pod tests need three things before the first test starts, which
//! libtest's `#[test]` functions cannot give them:
//!
//! 1. a Docker Engine, or a clear failure saying so (never a skip);
//! 2. an engine that speaks testcontainers' API version: when it is older,
//!    the binary starts the version shim ([`crate::engine`]) and runs itself
//!    again as a child with `DOCKER_HOST` pointing at it (testcontainers reads
//!    `DOCKER_HOST` from the environment, and changing one's own environment
//!    is `unsafe` in Rust 2024, which this workspace forbids);
//! 3. the images, built once for all tests ([`crate::images`]).
//!
//! Then it runs the selected tests concurrently (each builds its own mesh)
//! and reports like libtest does, ending with the usual
//! `test result: ok. N passed; N failed; ...` line. It accepts what `cargo
//! test` and nextest pass: name filters, `--exact`, `--list`, `--ignored`.

use std::future::Future;
use std::pin::Pin;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::engine::{self, Engine};
use crate::images;

/// A test: its name and the future that runs it.
pub type Test = (
    &'static str,
    fn() -> Pin<Box<dyn Future<Output = ()> + Send>>,
);

/// Set in the child process that runs behind the shim.
const SHIM_ENV: &str = "MICROMESH_DOCKER_SHIM";

/// How long one test may take in all (a hang must fail, not stall CI).
const TEST_TIMEOUT: Duration = Duration::from_secs(600);

/// Runs `tests` as described in the module docs; call it from `main`.
pub fn main(tests: &[Test]) -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let exact = args.iter().any(|a| a == "--exact");
    // libtest options that take a value (`--test-threads 2`): the value is
    // not a name filter. `--skip NAME` leaves tests out.
    let mut filters = Vec::new();
    let mut skips = Vec::new();
    let mut words = args.iter();
    while let Some(arg) = words.next() {
        match arg.as_str() {
            "--skip" => skips.extend(words.next()),
            "--test-threads" | "--format" | "--color" | "--logfile" | "-Z" => {
                words.next();
            }
            a if a.starts_with('-') => {}
            _ => filters.push(arg),
        }
    }
    let matches = |name: &str, pattern: &str| {
        if exact {
            name == pattern
        } else {
            name.contains(pattern)
        }
    };
    let selected: Vec<&Test> = tests
        .iter()
        .filter(|(name, _)| filters.is_empty() || filters.iter().any(|f| matches(name, f)))
        .filter(|(name, _)| !skips.iter().any(|s| matches(name, s)))
        .collect();

    if args.iter().any(|a| a == "--list") {
        // None of these tests is ignored: `--list --ignored` lists nothing.
        if !args.iter().any(|a| a == "--ignored") {
            for (name, _) in &selected {
                println!("{name}: test");
            }
        }
        return ExitCode::SUCCESS;
    }
    if args.iter().any(|a| a == "--ignored") || selected.is_empty() {
        println!("\nrunning 0 tests\n");
        println!(
            "test result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; {} filtered out; finished in 0.00s\n",
            tests.len()
        );
        return ExitCode::SUCCESS;
    }

    if std::env::var_os(SHIM_ENV).is_none()
        && let Some(code) = rerun_behind_shim_if_needed(tests.len(), &selected)
    {
        return code;
    }
    run(tests.len(), &selected)
}

/// When the engine speaks an older API than testcontainers, serves the shim
/// and runs this binary again behind it; `None` when no shim is needed.
fn rerun_behind_shim_if_needed(total: usize, selected: &[&Test]) -> Option<ExitCode> {
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime starts");
    let Some(socket) = Engine::socket_from_env() else {
        // DOCKER_HOST names a TCP or SSH engine: use it as it is.
        return None;
    };
    let engine = match runtime.block_on(Engine::connect(&socket)) {
        Ok(engine) => engine,
        Err(e) => return Some(fail_all(total, selected, &e.to_string())),
    };
    let wanted = engine::client_api_version();
    if engine.api_version >= wanted {
        return None;
    }
    let shim = std::env::temp_dir().join(format!("micromesh-docker-{}.sock", std::process::id()));
    println!(
        "Docker Engine {} speaks API {} and testcontainers {wanted}: bridging through {} \
         (tests/containers/src/engine.rs)",
        engine.version,
        engine.api_version,
        shim.display()
    );
    if let Err(e) = runtime.block_on(engine::serve_shim(engine, shim.clone())) {
        return Some(fail_all(total, selected, &e.to_string()));
    }
    let exe = std::env::current_exe().expect("the test binary knows its own path");
    // The runtime keeps serving the shim on its worker threads while this
    // thread waits for the child.
    let status = std::process::Command::new(exe)
        .args(std::env::args().skip(1))
        .env("DOCKER_HOST", format!("unix://{}", shim.display()))
        .env(SHIM_ENV, &shim)
        .status();
    let _ = std::fs::remove_file(&shim);
    drop(runtime);
    Some(match status {
        Ok(status) if status.success() => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(e) => fail_all(
            total,
            selected,
            &format!("could not run the tests behind the shim: {e}"),
        ),
    })
}

/// Builds the images, then runs the selected tests concurrently.
fn run(total: usize, selected: &[&Test]) -> ExitCode {
    // Asked again in a child behind the shim: it answers /version as is.
    if let Some(socket) = Engine::socket_from_env() {
        let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime starts");
        if let Err(e) = runtime.block_on(Engine::connect(&socket)) {
            return fail_all(total, selected, &e.to_string());
        }
    }
    if let Err(e) = images::build_offline() {
        return fail_all(total, selected, &e.to_string());
    }

    println!("\nrunning {} tests", selected.len());
    let started = Instant::now();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime starts");
    let results: Vec<(&str, Result<Duration, String>)> = runtime.block_on(async {
        let handles: Vec<_> = selected
            .iter()
            .map(|(name, test)| {
                let future = test();
                (
                    *name,
                    tokio::spawn(async move {
                        let t0 = Instant::now();
                        match tokio::time::timeout(TEST_TIMEOUT, future).await {
                            Ok(()) => Ok(t0.elapsed()),
                            Err(_) => Err(format!("did not finish within {TEST_TIMEOUT:?}")),
                        }
                    }),
                )
            })
            .collect();
        let mut results = Vec::new();
        for (name, handle) in handles {
            let result = match handle.await {
                Ok(result) => result,
                Err(e) if e.is_panic() => Err(panic_message(e.into_panic())),
                Err(e) => Err(e.to_string()),
            };
            println!(
                "test {name} ... {}",
                match &result {
                    Ok(took) => format!("ok ({:.1}s)", took.as_secs_f64()),
                    Err(_) => "FAILED".to_string(),
                }
            );
            results.push((name, result));
        }
        results
    });
    // The containers are gone once every test future has been dropped.
    drop(runtime);
    report(total, &results, started.elapsed())
}

fn report(total: usize, results: &[(&str, Result<Duration, String>)], took: Duration) -> ExitCode {
    let failed: Vec<_> = results.iter().filter(|(_, r)| r.is_err()).collect();
    if !failed.is_empty() {
        println!("\nfailures:\n");
        for (name, result) in &failed {
            if let Err(message) = result {
                println!("---- {name} ----\n{message}\n");
            }
        }
    }
    let passed = results.len() - failed.len();
    println!(
        "\ntest result: {}. {passed} passed; {} failed; 0 ignored; 0 measured; {} filtered out; finished in {:.2}s\n",
        if failed.is_empty() { "ok" } else { "FAILED" },
        failed.len(),
        total - results.len(),
        took.as_secs_f64()
    );
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Every selected test fails with the same reason (no engine, no images).
fn fail_all(total: usize, selected: &[&Test], reason: &str) -> ExitCode {
    eprintln!("\nerror: {reason}\n");
    println!("\nrunning {} tests", selected.len());
    let results: Vec<(&str, Result<Duration, String>)> = selected
        .iter()
        .map(|(name, _)| (*name, Err(reason.to_string())))
        .collect();
    for (name, _) in &results {
        println!("test {name} ... FAILED");
    }
    report(total, &results, Duration::ZERO)
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "the test panicked".into())
}

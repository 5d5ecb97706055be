//! The language runtimes the Guestbook needs besides Rust: Python 3.8+ for
//! helloworld-service and Java 11+ for sentiment-service.
//!
//! `meshctl up` checks them before it starts anything, so a missing runtime is
//! one clear message with the install command, not a process that dies later
//! with its reason buried in a log file.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Result, bail};

/// The programs `meshctl up` starts the Python and Java services with.
#[derive(Clone, Debug, Default)]
pub struct Runtimes {
    pub python: Option<PathBuf>,
    pub java: Option<PathBuf>,
}

const PYTHON_MIN: (u32, u32) = (3, 8);
/// Java 11 brought the single-file source launcher (`java Sentiment.java`, JEP 330).
const JAVA_MIN: u32 = 11;

const PYTHON_INSTALL: &str =
    "install it: `sudo apt-get install python3` (Debian/Ubuntu) or `brew install python` (macOS)";
const JAVA_INSTALL: &str = "install a JDK (the source launcher needs the compiler module, a JRE is not enough): \
     `sudo apt-get install default-jdk-headless` (Debian/Ubuntu) or `brew install openjdk` (macOS)";

/// Check the runtimes that are needed; returns the programs to run.
pub fn check(need_python: bool, need_java: bool) -> Result<Runtimes> {
    let mut runtimes = Runtimes::default();
    if need_python {
        runtimes.python = Some(check_python()?);
    }
    if need_java {
        runtimes.java = Some(check_java()?);
    }
    Ok(runtimes)
}

fn check_python() -> Result<PathBuf> {
    let program = PathBuf::from("python3");
    let Ok(output) = Command::new(&program).arg("--version").output() else {
        bail!(
            "python3 is not installed (helloworld-service is written in Python); {PYTHON_INSTALL}"
        );
    };
    // Python 3.3 and earlier printed the version on stderr.
    let text = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    match parse_python_version(&text) {
        Some(v) if v >= PYTHON_MIN => Ok(program),
        Some((major, minor)) => bail!(
            "python3 is version {major}.{minor}; helloworld-service needs {}.{} or newer; {PYTHON_INSTALL}",
            PYTHON_MIN.0,
            PYTHON_MIN.1
        ),
        None => bail!(
            "`python3 --version` printed {:?}, not a Python version; {PYTHON_INSTALL}",
            text.trim()
        ),
    }
}

/// `JAVA_HOME/bin/java` when JAVA_HOME is set (how most JDK installs are
/// selected), else `java` on the PATH.
fn java_program() -> PathBuf {
    std::env::var_os("JAVA_HOME")
        .map(|home| PathBuf::from(home).join("bin").join("java"))
        .filter(|java| java.is_file())
        .unwrap_or_else(|| PathBuf::from("java"))
}

fn check_java() -> Result<PathBuf> {
    let program = java_program();
    let Ok(output) = Command::new(&program).arg("-version").output() else {
        bail!("java is not installed (sentiment-service is written in Java); {JAVA_INSTALL}");
    };
    // `java -version` prints on stderr.
    let text = String::from_utf8_lossy(&output.stderr).to_string()
        + &String::from_utf8_lossy(&output.stdout);
    let version = match parse_java_version(&text) {
        Some(v) if v >= JAVA_MIN => v,
        Some(v) => bail!(
            "{} is Java {v}; sentiment-service runs as `java Sentiment.java`, which needs Java {JAVA_MIN} or newer; {JAVA_INSTALL}",
            program.display()
        ),
        None => bail!(
            "`{} -version` printed {:?}, not a Java version; {JAVA_INSTALL}",
            program.display(),
            text.trim()
        ),
    };
    // A JRE runs classes but cannot compile a source file: the launcher needs
    // the jdk.compiler module.
    let lacks_compiler = Command::new(&program)
        .arg("--list-modules")
        .output()
        .is_ok_and(|m| {
            m.status.success() && !String::from_utf8_lossy(&m.stdout).contains("jdk.compiler")
        });
    if lacks_compiler {
        bail!(
            "{} is a Java {version} runtime without the compiler (jdk.compiler), so it cannot run Sentiment.java; {JAVA_INSTALL}",
            program.display()
        );
    }
    Ok(program)
}

/// `Python 3.11.7` -> (3, 11).
pub fn parse_python_version(text: &str) -> Option<(u32, u32)> {
    let version = text
        .split_whitespace()
        .skip_while(|w| *w != "Python")
        .nth(1)?;
    let mut parts = version.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts
        .next()?
        .trim_end_matches(|c: char| !c.is_ascii_digit())
        .parse()
        .ok()?;
    Some((major, minor))
}

/// The feature release of `java -version`'s first line:
/// `openjdk version "17.0.15" 2025-04-15` -> 17, `java version "1.8.0_292"` -> 8,
/// `openjdk version "21" 2023-09-19` -> 21.
pub fn parse_java_version(text: &str) -> Option<u32> {
    let line = text.lines().find(|l| l.contains("version \""))?;
    let quoted = line.split('"').nth(1)?;
    let mut parts = quoted.split(['.', '_', '-', '+']);
    let first: u32 = parts.next()?.parse().ok()?;
    if first == 1 {
        // Java 8 and earlier: "1.8.0_292".
        parts.next()?.parse().ok()
    } else {
        Some(first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_python_versions() {
        assert_eq!(parse_python_version("Python 3.11.7\n"), Some((3, 11)));
        assert_eq!(parse_python_version("Python 3.8.0"), Some((3, 8)));
        assert_eq!(parse_python_version("Python 3.13.0rc1"), Some((3, 13)));
        assert_eq!(parse_python_version("Python 2.7.18"), Some((2, 7)));
        assert_eq!(parse_python_version("command not found"), None);
        assert!(parse_python_version("Python 3.7.3").unwrap() < PYTHON_MIN);
    }

    #[test]
    fn reads_java_versions() {
        assert_eq!(
            parse_java_version(
                "openjdk version \"17.0.15\" 2025-04-15\nOpenJDK Runtime Environment (build 17.0.15+6)"
            ),
            Some(17)
        );
        assert_eq!(
            parse_java_version("java version \"1.8.0_292\"\nJava(TM) SE Runtime"),
            Some(8)
        );
        assert_eq!(
            parse_java_version("openjdk version \"21\" 2023-09-19"),
            Some(21)
        );
        assert_eq!(
            parse_java_version(
                "Picked up JAVA_TOOL_OPTIONS: -Xmx1g\nopenjdk version \"11.0.2\" 2019-01-15"
            ),
            Some(11)
        );
        assert_eq!(parse_java_version("nothing here"), None);
    }

    #[test]
    fn this_machine_has_what_the_guestbook_needs() {
        // The end-to-end test needs both runtimes too; failing here says why
        // in one line instead of a dead service later.
        check(true, true).expect("python3 >= 3.8 and a JDK >= 11 are needed to run the Guestbook");
    }
}

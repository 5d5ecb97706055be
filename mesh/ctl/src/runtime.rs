//! The language runtimes the Guestbook needs besides Rust: Python 3.8+ for
//! helloworld-service and a Java 17+ JDK for sentiment-service.
//!
//! Why Java 17: `Sentiment.java` uses records and pattern-matching
//! `instanceof` (final in Java 16), so Java 11 to 15 cannot compile it. 17 is
//! the oldest long-term-support release that has both, and the one most
//! laptops and Linux distributions ship today (Debian 12, Ubuntu 22.04 as
//! `openjdk-17-jdk-headless`); the container image builds with it too.
//!
//! `meshctl up` checks them before it starts anything, so a missing runtime is
//! one clear message with the install command, not a process that dies later
//! with its reason buried in a log file.

use std::ffi::OsStr;
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
/// The oldest Java that compiles `Sentiment.java`: Java 11 brought the
/// single-file launcher (`java Sentiment.java`, JEP 330), Java 16 the records
/// and pattern-matching `instanceof` it uses; 17 is the LTS release with all.
pub const JAVA_MIN: u32 = 17;

const PYTHON_INSTALL: &str =
    "install it: `sudo apt-get install python3` (Debian/Ubuntu) or `brew install python` (macOS)";
const JAVA_INSTALL: &str = "install a JDK 17 or newer (the source launcher needs the compiler module, a JRE is not enough): \
     `sudo apt-get install openjdk-17-jdk-headless` (Debian/Ubuntu; where the default JDK is 17 or newer, \
     `default-jdk-headless` does too) or `brew install openjdk@17` (macOS); \
     if several are installed, point JAVA_HOME at the newer one";

/// Check the runtimes that are needed; returns the programs to run.
pub fn check(need_python: bool, need_java: bool) -> Result<Runtimes> {
    let mut runtimes = Runtimes::default();
    if need_python {
        runtimes.python = Some(check_python()?);
    }
    if need_java {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let java_home = std::env::var_os("JAVA_HOME");
        runtimes.java = Some(check_java(&path, java_home.as_deref())?);
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
/// selected), else the first `java` on `path` (a PATH value), else plain
/// `java`. Resolving it here lets the messages name the very file that is too
/// old, and lets the tests pass their own PATH instead of changing ours.
fn java_program(path: &OsStr, java_home: Option<&OsStr>) -> PathBuf {
    java_home
        .map(|home| PathBuf::from(home).join("bin").join("java"))
        .filter(|java| java.is_file())
        .or_else(|| {
            std::env::split_paths(path)
                .map(|dir| dir.join("java"))
                .find(|java| java.is_file())
        })
        .unwrap_or_else(|| PathBuf::from("java"))
}

fn check_java(path: &OsStr, java_home: Option<&OsStr>) -> Result<PathBuf> {
    let program = java_program(path, java_home);
    let Ok(output) = Command::new(&program).arg("-version").output() else {
        bail!("java is not installed (sentiment-service is written in Java); {JAVA_INSTALL}");
    };
    // `java -version` prints on stderr.
    let text = String::from_utf8_lossy(&output.stderr).to_string()
        + &String::from_utf8_lossy(&output.stdout);
    let version = match parse_java_version(&text) {
        Some(v) if v >= JAVA_MIN => v,
        Some(v) => bail!(
            "{} is Java {v}; sentiment-service (`java Sentiment.java`) needs Java {JAVA_MIN} or newer \
             (it uses records and pattern-matching instanceof); {JAVA_INSTALL}",
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
        check(true, true).expect("python3 >= 3.8 and a JDK >= 17 are needed to run the Guestbook");
    }

    /// A directory holding a fake `java` that prints `version_line` to
    /// stderr for `-version`, as a real JDK does.
    fn fake_java(version_line: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!(
            "meshctl-fake-java-{}-{}",
            std::process::id(),
            fastrand::u32(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let java = dir.join("java");
        std::fs::write(
            &java,
            format!(
                "#!/bin/sh\necho '{version_line}' >&2\necho 'OpenJDK Runtime Environment' >&2\n"
            ),
        )
        .unwrap();
        std::fs::set_permissions(&java, std::fs::Permissions::from_mode(0o755)).unwrap();
        dir
    }

    /// A PATH with `dir` first, then this machine's PATH (where a real,
    /// newer java may well be: the fake one must win, as it would for a user).
    fn path_with(dir: &std::path::Path) -> std::ffi::OsString {
        let ours = std::env::var_os("PATH").unwrap_or_default();
        std::env::join_paths(std::iter::once(dir.to_path_buf()).chain(std::env::split_paths(&ours)))
            .unwrap()
    }

    #[test]
    fn a_java_older_than_17_is_refused_with_what_to_install() {
        // Java 11: what many company laptops still have, and what the
        // README promised before; Sentiment.java does not compile on it.
        let dir = fake_java("openjdk version \"11.0.22\" 2024-01-16");
        let err = check_java(&path_with(&dir), None).unwrap_err().to_string();
        let java = dir.join("java");
        assert!(
            err.starts_with(&format!("{} is Java 11;", java.display())),
            "names the java it ran and its version: {err}"
        );
        assert!(err.contains("needs Java 17 or newer"), "{err}");
        assert!(
            err.contains("records and pattern-matching instanceof"),
            "says why: {err}"
        );
        assert!(
            err.contains("openjdk-17-jdk-headless") && err.contains("brew install openjdk@17"),
            "says what to install: {err}"
        );

        // JAVA_HOME wins over PATH, as the check says.
        let home = dir.parent().unwrap().join(format!(
            "{}-home",
            dir.file_name().unwrap().to_string_lossy()
        ));
        std::fs::create_dir_all(&home).unwrap();
        std::fs::rename(&dir, home.join("bin")).unwrap();
        let err = check_java(OsStr::new(""), Some(home.as_os_str()))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(&format!("{} is Java 11;", home.join("bin/java").display())),
            "{err}"
        );
        std::fs::remove_dir_all(&home).unwrap();
    }

    #[test]
    fn java_16_is_still_too_old_and_java_8_reads_as_8() {
        for (line, version) in [
            ("openjdk version \"16.0.2\" 2021-07-20", 16),
            ("java version \"1.8.0_292\"", 8),
        ] {
            let dir = fake_java(line);
            let err = check_java(&path_with(&dir), None).unwrap_err().to_string();
            assert!(
                err.contains(&format!("is Java {version};")),
                "{line}: {err}"
            );
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }

    #[test]
    fn a_java_17_without_the_compiler_is_refused_as_a_jre() {
        // Version 17 passes the version check; `--list-modules` of this fake
        // lists no jdk.compiler, like a JRE's.
        let dir = fake_java("openjdk version \"17.0.15\" 2025-04-15");
        let err = check_java(&path_with(&dir), None).unwrap_err().to_string();
        assert!(
            err.contains("runtime without the compiler (jdk.compiler)"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

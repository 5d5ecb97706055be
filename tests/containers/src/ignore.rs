//! `.dockerignore`: which paths of the build context Docker leaves out.
//!
//! The rules follow Docker's (moby `patternmatcher`): one pattern a line,
//! `#` comments, a leading `/` ignored, `*` and `?` within one path segment,
//! `**` across any number of segments, `!` re-including what an earlier line
//! excluded, the last matching line winning, and a pattern that matches a
//! directory excluding everything below it.

/// The patterns of one `.dockerignore` file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DockerIgnore {
    /// (pattern split into segments, is an exception `!pattern`)
    rules: Vec<(Vec<String>, bool)>,
}

impl DockerIgnore {
    pub fn parse(text: &str) -> DockerIgnore {
        let rules = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|line| {
                let (pattern, exception) = match line.strip_prefix('!') {
                    Some(p) => (p.trim(), true),
                    None => (line, false),
                };
                let segments = pattern
                    .trim_start_matches('/')
                    .trim_end_matches('/')
                    .split('/')
                    .filter(|s| !s.is_empty() && *s != ".")
                    .map(str::to_string)
                    .collect();
                (segments, exception)
            })
            .collect();
        DockerIgnore { rules }
    }

    /// Whether Docker leaves `path` (relative to the context, `/`-separated)
    /// out of the build context.
    pub fn excludes(&self, path: &str) -> bool {
        let segments: Vec<&str> = path
            .split('/')
            .filter(|s| !s.is_empty() && *s != ".")
            .collect();
        // A path is out when it, or a directory above it, is matched by the
        // last rule that matches it.
        let mut excluded = false;
        for (pattern, exception) in &self.rules {
            let matched = (1..=segments.len()).any(|n| glob(pattern, &segments[..n]));
            if matched {
                excluded = !exception;
            }
        }
        excluded
    }
}

/// Matches path segments against pattern segments; `**` spans any number.
fn glob(pattern: &[String], path: &[&str]) -> bool {
    match pattern.split_first() {
        None => path.is_empty(),
        Some((first, rest)) if first == "**" => {
            (0..=path.len()).any(|skip| glob(rest, &path[skip..]))
        }
        Some((first, rest)) => match path.split_first() {
            Some((segment, path_rest)) => wildcard(first, segment) && glob(rest, path_rest),
            None => false,
        },
    }
}

/// `*` and `?` within one segment.
pub fn wildcard(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    // Classic two-pointer match with backtracking to the last `*`.
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excludes_like_docker() {
        let ignore = DockerIgnore::parse(
            "# build output\ntarget\n**/target\n.git\n**/*.db\n/docs/*.md\n!docs/keep.md\n",
        );
        assert!(ignore.excludes("target"));
        assert!(ignore.excludes("target/debug/mesh-proxy"));
        assert!(ignore.excludes("mesh/proxy/target/x"));
        assert!(ignore.excludes("services/guestbook-service/guestbook.db"));
        assert!(ignore.excludes("docs/a.md"));
        assert!(!ignore.excludes("docs/keep.md"));
        assert!(!ignore.excludes("mesh/proxy/src/main.rs"));
        assert!(!ignore.excludes("targets/x"));
        assert!(!ignore.excludes("Cargo.toml"));
    }

    #[test]
    fn wildcards_stay_within_a_segment() {
        assert!(wildcard("*.Dockerfile", "rust.Dockerfile"));
        assert!(wildcard("a?c", "abc"));
        assert!(!wildcard("*.db", "x.dbx"));
        assert!(wildcard("*", ""));
    }
}

//! A small Dockerfile reader: just enough of the format to check what a
//! Dockerfile takes from the build context and from its other stages.
//!
//! It understands what the micromesh Dockerfiles use and what commonly
//! appears next to it: comments, `\` line continuations, parser directives
//! (`# syntax=...`), `ARG` defaults substituted into `FROM` and `COPY`, named
//! and numbered stages, and `COPY`/`ADD` with flags in both the shell form
//! (`COPY a b dest/`) and the JSON form (`COPY ["a", "dest/"]`). It does not
//! run anything; Docker's own parser (moby/buildkit `frontend/dockerfile`)
//! is the reference for the rules followed here.

use std::collections::BTreeMap;

/// One instruction, continuation lines joined.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instruction {
    /// 1-based line where the instruction starts.
    pub line: usize,
    /// Upper-cased: `FROM`, `COPY`, `RUN`...
    pub keyword: String,
    /// Everything after the keyword, continuation lines joined by a space.
    pub args: String,
}

/// A `FROM` and the instructions up to the next one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stage {
    /// 0-based position; `COPY --from=0` refers to stages by it.
    pub index: usize,
    /// `AS name`, if given.
    pub name: Option<String>,
    /// The base as written (`${RUST_IMAGE}`, `scratch`, `build`).
    pub base_raw: String,
    /// The base with global `ARG` defaults substituted.
    pub base: String,
    pub line: usize,
    /// Instructions after the `FROM`.
    pub instructions: Vec<Instruction>,
}

/// A `COPY` or `ADD`, its flags separated from its paths.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Copy {
    pub line: usize,
    /// `COPY` or `ADD`.
    pub keyword: String,
    /// `--from=<stage or image>`.
    pub from: Option<String>,
    pub sources: Vec<String>,
    pub dest: String,
}

/// A parsed Dockerfile.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dockerfile {
    /// Parser directives found at the top (`syntax`, `escape`, `check`), lower-cased keys.
    pub directives: BTreeMap<String, String>,
    /// `ARG`s declared before the first `FROM`, with their defaults (if any).
    pub global_args: BTreeMap<String, Option<String>>,
    pub stages: Vec<Stage>,
}

/// Something the reader could not make sense of.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("line {line}: {message}")]
pub struct ParseError {
    pub line: usize,
    pub message: String,
}

impl Dockerfile {
    /// Reads a Dockerfile's text.
    pub fn parse(text: &str) -> Result<Dockerfile, ParseError> {
        let mut file = Dockerfile::default();
        let instructions = split_instructions(text, &mut file.directives)?;
        for inst in instructions {
            match inst.keyword.as_str() {
                "FROM" => {
                    let stage = file.parse_from(&inst)?;
                    file.stages.push(stage);
                }
                "ARG" if file.stages.is_empty() => {
                    let (name, default) = parse_arg(&inst.args);
                    file.global_args.insert(name, default);
                }
                _ => match file.stages.last_mut() {
                    Some(stage) => stage.instructions.push(inst),
                    None => {
                        return Err(ParseError {
                            line: inst.line,
                            message: format!(
                                "{} before the first FROM (only ARG may come first)",
                                inst.keyword
                            ),
                        });
                    }
                },
            }
        }
        if file.stages.is_empty() {
            return Err(ParseError {
                line: 1,
                message: "no FROM instruction".into(),
            });
        }
        Ok(file)
    }

    fn parse_from(&self, inst: &Instruction) -> Result<Stage, ParseError> {
        // FROM [--platform=...] image [AS name]
        let words: Vec<&str> = inst
            .args
            .split_whitespace()
            .filter(|w| !w.starts_with("--"))
            .collect();
        let (base_raw, name) = match words.as_slice() {
            [base] => (*base, None),
            [base, as_kw, name] if as_kw.eq_ignore_ascii_case("as") => {
                (*base, Some(name.to_string()))
            }
            _ => {
                return Err(ParseError {
                    line: inst.line,
                    message: format!("cannot read `FROM {}`", inst.args),
                });
            }
        };
        Ok(Stage {
            index: self.stages.len(),
            name,
            base_raw: base_raw.to_string(),
            base: self.expand(base_raw),
            line: inst.line,
            instructions: Vec::new(),
        })
    }

    /// Substitutes `$NAME` and `${NAME}` with global `ARG` defaults; a name
    /// without a default is left as written.
    pub fn expand(&self, text: &str) -> String {
        let mut out = String::new();
        let mut rest = text;
        while let Some(pos) = rest.find('$') {
            out.push_str(&rest[..pos]);
            let after = &rest[pos + 1..];
            let (name, len) = if let Some(inner) = after.strip_prefix('{') {
                match inner.find('}') {
                    Some(end) => (&inner[..end], end + 2),
                    None => ("", 0),
                }
            } else {
                let end = after
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(after.len());
                (&after[..end], end)
            };
            match self.global_args.get(name) {
                Some(Some(value)) if !name.is_empty() => out.push_str(value),
                _ => out.push_str(&rest[pos..pos + 1 + len]),
            }
            rest = &after[len..];
        }
        out.push_str(rest);
        out
    }

    /// The stage a `--from=` value names: a stage name, or a stage number.
    pub fn stage(&self, reference: &str) -> Option<&Stage> {
        self.stages
            .iter()
            .find(|s| s.name.as_deref() == Some(reference))
            .or_else(|| {
                reference
                    .parse::<usize>()
                    .ok()
                    .and_then(|i| self.stages.get(i))
            })
    }

    /// A stage by its `AS` name.
    pub fn named(&self, name: &str) -> Option<&Stage> {
        self.stages.iter().find(|s| s.name.as_deref() == Some(name))
    }
}

impl Stage {
    /// Every `COPY` and `ADD` of this stage.
    pub fn copies(&self) -> Vec<Copy> {
        self.instructions
            .iter()
            .filter(|i| i.keyword == "COPY" || i.keyword == "ADD")
            .map(parse_copy)
            .collect()
    }

    /// The instructions with this keyword.
    pub fn all<'a>(&'a self, keyword: &'a str) -> impl Iterator<Item = &'a Instruction> + 'a {
        self.instructions
            .iter()
            .filter(move |i| i.keyword == keyword)
    }

    /// A short name for messages: `stage 'build'` or `stage 2`.
    pub fn label(&self) -> String {
        match &self.name {
            Some(name) => format!("stage '{name}'"),
            None => format!("stage {}", self.index),
        }
    }
}

// === parsing helpers ===

/// Splits the text into instructions: drops comments and blank lines, joins
/// continuation lines, and collects parser directives from the top.
fn split_instructions(
    text: &str,
    directives: &mut BTreeMap<String, String>,
) -> Result<Vec<Instruction>, ParseError> {
    let mut out = Vec::new();
    let mut current: Option<(usize, String)> = None;
    // Directives are only directives before the first instruction, comment or
    // blank line that is not itself a directive.
    let mut in_directives = true;
    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        let trimmed = raw.trim();
        if in_directives {
            if let Some((key, value)) = directive(trimmed) {
                directives.insert(key, value);
                continue;
            }
            in_directives = false;
        }
        // Comments are removed before continuation handling, even between
        // the lines of a continued instruction (Docker does the same).
        if trimmed.starts_with('#') {
            continue;
        }
        // Blank lines separate nothing, not even inside a continuation.
        if trimmed.is_empty() {
            continue;
        }
        let (body, continues) = match trimmed.strip_suffix('\\') {
            Some(body) => (body.trim_end(), true),
            None => (trimmed, false),
        };
        match current.as_mut() {
            Some((_, text)) => {
                text.push(' ');
                text.push_str(body);
            }
            None => current = Some((line_no, body.to_string())),
        }
        if !continues {
            let (line, text) = current.take().expect("set just above");
            out.push(instruction(line, &text)?);
        }
    }
    if let Some((line, text)) = current {
        // A trailing backslash on the last line: Docker accepts it.
        out.push(instruction(line, &text)?);
    }
    Ok(out)
}

/// `# key=value` where key is a known directive name.
fn directive(line: &str) -> Option<(String, String)> {
    let rest = line.strip_prefix('#')?.trim();
    let (key, value) = rest.split_once('=')?;
    let key = key.trim().to_ascii_lowercase();
    matches!(key.as_str(), "syntax" | "escape" | "check").then(|| (key, value.trim().to_string()))
}

fn instruction(line: usize, text: &str) -> Result<Instruction, ParseError> {
    let (keyword, args) = text.split_once(char::is_whitespace).unwrap_or((text, ""));
    if keyword.is_empty() || !keyword.chars().all(|c| c.is_ascii_alphabetic()) {
        return Err(ParseError {
            line,
            message: format!("`{keyword}` is not an instruction"),
        });
    }
    Ok(Instruction {
        line,
        keyword: keyword.to_ascii_uppercase(),
        args: args.trim().to_string(),
    })
}

/// `ARG NAME` or `ARG NAME=default` (quotes around the default dropped).
fn parse_arg(args: &str) -> (String, Option<String>) {
    match args.split_once('=') {
        Some((name, value)) => (
            name.trim().to_string(),
            Some(
                value
                    .trim()
                    .trim_matches('"')
                    .trim_matches('\'')
                    .to_string(),
            ),
        ),
        None => (args.trim().to_string(), None),
    }
}

fn parse_copy(inst: &Instruction) -> Copy {
    let mut from = None;
    let mut rest = inst.args.trim();
    // Flags come first: --from=, --chown=, --chmod=, --link, --parents...
    while let Some(flagged) = rest.strip_prefix("--") {
        let (flag, after) = flagged
            .split_once(char::is_whitespace)
            .unwrap_or((flagged, ""));
        if let Some(value) = flag.strip_prefix("from=") {
            from = Some(value.to_string());
        }
        rest = after.trim_start();
    }
    let mut paths: Vec<String> = if rest.starts_with('[') {
        // JSON form; fall back to the shell form if it is not valid JSON.
        serde_json::from_str(rest)
            .unwrap_or_else(|_| rest.split_whitespace().map(str::to_string).collect())
    } else {
        rest.split_whitespace().map(str::to_string).collect()
    };
    let dest = paths.pop().unwrap_or_default();
    Copy {
        line: inst.line,
        keyword: inst.keyword.clone(),
        from,
        sources: paths,
        dest,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
# a comment
ARG BASE=rust:1-slim
ARG OTHER

FROM ${BASE} AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
RUN set -eux; \
    # a comment inside a continuation
    cargo build --release; \
    cp target/release/app /out/
FROM scratch AS app
COPY --from=build --chown=1:1 /out/app /usr/local/bin/app
COPY ["docs/a b.txt", "/doc/"]
USER 10001
ENTRYPOINT ["/usr/local/bin/app"]
"#;

    #[test]
    fn reads_stages_args_and_continuations() {
        let file = Dockerfile::parse(SAMPLE).unwrap();
        assert_eq!(file.global_args["BASE"].as_deref(), Some("rust:1-slim"));
        assert_eq!(file.global_args["OTHER"], None);
        assert_eq!(file.stages.len(), 2);
        let build = &file.stages[0];
        assert_eq!(build.name.as_deref(), Some("build"));
        assert_eq!(build.base, "rust:1-slim");
        let run = build.all("RUN").next().unwrap();
        assert_eq!(run.line, 9);
        assert!(
            run.args
                .contains("cargo build --release; cp target/release/app /out/"),
            "{}",
            run.args
        );
        assert_eq!(file.stage("0").unwrap().index, 0);
        assert_eq!(file.stage("app").unwrap().index, 1);
    }

    #[test]
    fn reads_copy_flags_and_json_form() {
        let file = Dockerfile::parse(SAMPLE).unwrap();
        let copies = file.stages[1].copies();
        assert_eq!(copies[0].from.as_deref(), Some("build"));
        assert_eq!(copies[0].sources, ["/out/app"]);
        assert_eq!(copies[0].dest, "/usr/local/bin/app");
        assert_eq!(copies[1].from, None);
        assert_eq!(copies[1].sources, ["docs/a b.txt"]);
        assert_eq!(copies[1].dest, "/doc/");
    }

    #[test]
    fn finds_directives_only_at_the_top() {
        let file = Dockerfile::parse("# syntax=docker/dockerfile:1\nFROM scratch\n").unwrap();
        assert_eq!(file.directives["syntax"], "docker/dockerfile:1");
        let file = Dockerfile::parse("FROM scratch\n# syntax=docker/dockerfile:1\n").unwrap();
        assert!(file.directives.is_empty());
    }

    #[test]
    fn expands_only_args_with_defaults() {
        let file = Dockerfile::parse("ARG A=x\nARG B\nFROM scratch\n").unwrap();
        assert_eq!(file.expand("${A}/$A/${B}/$C"), "x/x/${B}/$C");
    }

    #[test]
    fn rejects_an_instruction_before_from() {
        let err = Dockerfile::parse("COPY a b\nFROM scratch\n").unwrap_err();
        assert_eq!(err.line, 1);
    }
}

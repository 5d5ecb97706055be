//! A small decoder that walks one parsed YAML document and collects *every*
//! problem in it, each with the field path where it happened.
//!
//! Why not `#[derive(Deserialize)]`? serde stops at the first error, and its
//! messages speak Rust ("invalid type: integer, expected a string"). A learner
//! who pastes the talk's 2017 YAML deserves the whole list at once, in the
//! mesh's words, with what to write instead. So each resource module
//! describes its objects as [`Shape`]s (the fields micromesh reads, plus the
//! ones only Istio has) and reads values through [`Decoder`], which records
//! an error and carries on instead of returning early.
//!
//! Kubernetes does the same job with the CRD's OpenAPI schema on the API
//! server, and Istio's validating webhook adds the semantic checks.

use std::collections::BTreeMap;
use std::fmt;

use serde_yaml::{Mapping, Value};

use super::duration::parse_duration_ms;

// === Path ===

/// Where a value sits in a resource: `spec.http[0].fault.delay.percent`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Path(String);

impl Path {
    pub(crate) fn root(name: &str) -> Path {
        Path::default().field(name)
    }

    /// The path of a field (or a map key) below this one. Keys that are not
    /// plain identifiers (`app.kubernetes.io/name`) are written `["..."]`.
    pub(crate) fn field(&self, name: &str) -> Path {
        let plain = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        match (plain, self.0.is_empty()) {
            (true, true) => Path(name.to_string()),
            (true, false) => Path(format!("{}.{name}", self.0)),
            (false, _) => Path(format!("{}[{name:?}]", self.0)),
        }
    }

    pub(crate) fn index(&self, index: usize) -> Path {
        Path(format!("{}[{index}]", self.0))
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

// === Shape ===

/// Why a field Istio knows is refused.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Unsupported {
    /// Istio has the field and micromesh does not do what it asks. The text
    /// completes "Istio does: it ...".
    NotImplemented(&'static str),
    /// An old Istio field (or one set by the server): the text is the whole
    /// message, including what to write instead.
    Replaced(&'static str),
}

/// The fields one kind of object may have.
#[derive(Debug)]
pub(crate) struct Shape {
    /// How messages name the object: "an http route".
    pub(crate) what: &'static str,
    /// Fields micromesh reads.
    pub(crate) fields: &'static [&'static str],
    /// Fields Istio has (or had) that micromesh refuses, and why.
    pub(crate) istio_only: &'static [(&'static str, Unsupported)],
}

// === Decoder ===

/// One problem, before the parser adds the file and resource names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct FieldError {
    pub(crate) path: String,
    pub(crate) message: String,
}

/// Reads values and collects errors; every `Option` it returns is `None`
/// exactly when the value was absent or an error was recorded.
#[derive(Debug, Default)]
pub(crate) struct Decoder {
    pub(crate) errors: Vec<FieldError>,
}

/// A mapping whose keys were checked against its [`Shape`].
#[derive(Clone, Copy)]
pub(crate) struct Object<'v, 'p> {
    path: &'p Path,
    map: &'v Mapping,
}

impl<'v> Object<'v, '_> {
    /// A field's path and value; `None` when absent or `null` (Kubernetes
    /// treats `field: null` as not set).
    pub(crate) fn get(&self, key: &str) -> Option<(Path, &'v Value)> {
        self.map
            .get(key)
            .filter(|value| !value.is_null())
            .map(|value| (self.path.field(key), value))
    }

    /// Like `get`, and records "missing required field" when absent.
    pub(crate) fn required(
        &self,
        d: &mut Decoder,
        key: &str,
        example: &str,
    ) -> Option<(Path, &'v Value)> {
        let found = self.get(key);
        if found.is_none() {
            d.error(
                &self.path.field(key),
                format!("missing required field `{key}`; for example `{key}: {example}`"),
            );
        }
        found
    }

    pub(crate) fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }
}

impl Decoder {
    pub(crate) fn error(&mut self, path: &Path, message: impl Into<String>) {
        self.errors.push(FieldError {
            path: path.as_str().to_string(),
            message: message.into(),
        });
    }

    /// Check that `value` is a mapping whose every key `shape` knows; unknown
    /// and unimplemented keys are reported by name, never skipped silently.
    pub(crate) fn object<'v, 'p>(
        &mut self,
        path: &'p Path,
        value: &'v Value,
        shape: &Shape,
    ) -> Option<Object<'v, 'p>> {
        let Value::Mapping(map) = value else {
            self.error(
                path,
                format!(
                    "expected {} (a mapping of fields), found {}",
                    shape.what,
                    describe(value)
                ),
            );
            return None;
        };
        for key in map.keys() {
            let Some(key) = key.as_str() else {
                self.error(
                    path,
                    format!("field names are strings; found {}", describe(key)),
                );
                continue;
            };
            if shape.fields.contains(&key) {
                continue;
            }
            let field = path.field(key);
            match shape.istio_only.iter().find(|(name, _)| *name == key) {
                Some((_, Unsupported::NotImplemented(what))) => self.error(
                    &field,
                    format!(
                        "micromesh does not implement `{key}` (Istio does: it {what}); remove it"
                    ),
                ),
                Some((_, Unsupported::Replaced(message))) => self.error(&field, *message),
                None => self.error(&field, unknown_field(key, shape)),
            }
        }
        Some(Object { path, map })
    }

    pub(crate) fn string(&mut self, path: &Path, value: &Value) -> Option<String> {
        match value {
            Value::String(s) => Some(s.clone()),
            Value::Number(_) | Value::Bool(_) => {
                let text = scalar_text(value);
                self.error(
                    path,
                    format!(
                        "expected a string, found {}; quote it: \"{text}\"",
                        describe(value)
                    ),
                );
                None
            }
            other => {
                self.error(
                    path,
                    format!("expected a string, found {}", describe(other)),
                );
                None
            }
        }
    }

    /// A string that must not be empty.
    pub(crate) fn name(&mut self, path: &Path, value: &Value) -> Option<String> {
        let s = self.string(path, value)?;
        if s.trim().is_empty() {
            self.error(path, "must not be empty");
            return None;
        }
        Some(s)
    }

    /// A whole number in `min..=max`.
    pub(crate) fn integer(
        &mut self,
        path: &Path,
        value: &Value,
        min: i64,
        max: i64,
    ) -> Option<i64> {
        let n = match value {
            Value::Number(n) if n.is_i64() || n.is_u64() => n.as_i64().unwrap_or(i64::MAX),
            Value::Number(n) => {
                self.error(path, format!("expected a whole number, found {n}"));
                return None;
            }
            Value::String(s) if s.trim().parse::<i64>().is_ok() => {
                self.error(
                    path,
                    format!("expected a number, found the string \"{s}\"; remove the quotes"),
                );
                return None;
            }
            other => {
                self.error(
                    path,
                    format!("expected a whole number, found {}", describe(other)),
                );
                return None;
            }
        };
        if n < min || n > max {
            let message = if n < 0 && min >= 0 {
                format!("{n} is negative; expected {min}..={max}")
            } else {
                format!("{n} is out of range; expected {min}..={max}")
            };
            self.error(path, message);
            return None;
        }
        Some(n)
    }

    pub(crate) fn u32(&mut self, path: &Path, value: &Value, min: u32) -> Option<u32> {
        // Istio's fields are protobuf int32/uint32; int32 is the smaller bound.
        self.integer(path, value, i64::from(min), i64::from(i32::MAX))
            .map(|n| n as u32)
    }

    /// Any number (whole or not).
    pub(crate) fn number(&mut self, path: &Path, value: &Value) -> Option<f64> {
        match value {
            Value::Number(n) => match n.as_f64() {
                Some(f) if f.is_finite() => Some(f),
                _ => {
                    self.error(path, format!("expected a finite number, found {n}"));
                    None
                }
            },
            Value::String(s) if s.trim().parse::<f64>().is_ok() => {
                self.error(
                    path,
                    format!("expected a number, found the string \"{s}\"; remove the quotes"),
                );
                None
            }
            other => {
                self.error(
                    path,
                    format!("expected a number, found {}", describe(other)),
                );
                None
            }
        }
    }

    /// Istio's `Percent` message: `{value: 0..=100}`.
    pub(crate) fn percentage(&mut self, path: &Path, value: &Value) -> Option<f64> {
        if let Value::Number(n) = value {
            self.error(
                path,
                format!("a percentage is written as a mapping: `percentage: {{value: {n}}}`"),
            );
            return None;
        }
        let object = self.object(path, value, &PERCENT)?;
        let (value_path, v) = object.required(self, "value", "100")?;
        let percent = self.number(&value_path, v)?;
        if !(0.0..=100.0).contains(&percent) {
            self.error(
                &value_path,
                format!("{percent} is not a percentage; expected 0..=100"),
            );
            return None;
        }
        Some(percent)
    }

    /// An Istio duration (`5s`, `100ms`) in milliseconds.
    pub(crate) fn duration_ms(&mut self, path: &Path, value: &Value) -> Option<u64> {
        let text = match value {
            Value::String(s) => s.clone(),
            Value::Number(_) => scalar_text(value),
            other => {
                self.error(
                    path,
                    format!("expected a duration like `5s`, found {}", describe(other)),
                );
                return None;
            }
        };
        match parse_duration_ms(&text) {
            Ok(ms) => Some(ms),
            Err(message) => {
                self.error(path, message);
                None
            }
        }
    }

    /// Each item decoded by `item`; items with errors are left out (their
    /// errors are recorded).
    pub(crate) fn list<'v, T>(
        &mut self,
        path: &Path,
        value: &'v Value,
        mut item: impl FnMut(&mut Decoder, &Path, &'v Value) -> Option<T>,
    ) -> Option<Vec<T>> {
        let Value::Sequence(items) = value else {
            let hint = match value {
                Value::String(s) => format!("; write a list: `[{s}]`"),
                _ => String::new(),
            };
            self.error(
                path,
                format!("expected a list, found {}{hint}", describe(value)),
            );
            return None;
        };
        Some(
            items
                .iter()
                .enumerate()
                .filter_map(|(i, v)| item(self, &path.index(i), v))
                .collect(),
        )
    }

    pub(crate) fn string_list(&mut self, path: &Path, value: &Value) -> Option<Vec<String>> {
        self.list(path, value, |d, p, v| d.name(p, v))
    }

    /// A mapping with string keys, each value decoded by `item`.
    pub(crate) fn map<'v, T>(
        &mut self,
        path: &Path,
        value: &'v Value,
        mut item: impl FnMut(&mut Decoder, &Path, &str, &'v Value) -> Option<T>,
    ) -> Option<BTreeMap<String, T>> {
        let Value::Mapping(map) = value else {
            self.error(
                path,
                format!("expected a mapping, found {}", describe(value)),
            );
            return None;
        };
        let mut out = BTreeMap::new();
        for (key, v) in map {
            let Some(key) = key.as_str() else {
                self.error(path, format!("keys are strings; found {}", describe(key)));
                continue;
            };
            if let Some(decoded) = item(self, &path.field(key), key, v) {
                out.insert(key.to_string(), decoded);
            }
        }
        Some(out)
    }

    /// A mapping of strings to strings (labels, selectors, header values).
    pub(crate) fn string_map(
        &mut self,
        path: &Path,
        value: &Value,
    ) -> Option<BTreeMap<String, String>> {
        self.map(path, value, |d, p, _, v| d.string(p, v))
    }
}

pub(crate) const PERCENT: Shape = Shape {
    what: "a percentage",
    fields: &["value"],
    istio_only: &[],
};

/// "the number 5", "a list", ... for messages.
pub(crate) fn describe(value: &Value) -> String {
    match value {
        Value::Null => "nothing (null)".to_string(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => format!("the string {s:?}"),
        Value::Sequence(_) => "a list".to_string(),
        Value::Mapping(_) => "a mapping".to_string(),
        Value::Tagged(tagged) => format!("a value tagged `{}`", tagged.tag),
    }
}

fn scalar_text(value: &Value) -> String {
    match value {
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::String(s) => s.clone(),
        _ => String::new(),
    }
}

/// "unknown field `retry` in an http route; did you mean `retries`? ..."
fn unknown_field(key: &str, shape: &Shape) -> String {
    let known = shape
        .fields
        .iter()
        .chain(shape.istio_only.iter().map(|(name, _)| name));
    let suggestion = known
        .map(|name| {
            (
                edit_distance(&key.to_lowercase(), &name.to_lowercase()),
                *name,
            )
        })
        .filter(|(distance, name)| *distance <= 2.max(name.len() / 2))
        .min();
    let mut message = format!("unknown field `{key}` in {}", shape.what);
    if let Some((_, name)) = suggestion {
        message.push_str(&format!("; did you mean `{name}`?"));
    }
    message.push_str(&format!(
        " (micromesh reads: {})",
        shape
            .fields
            .iter()
            .map(|f| format!("`{f}`"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    message
}

/// Levenshtein distance, for "did you mean".
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current.push(substitution.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTE: Shape = Shape {
        what: "an http route",
        fields: &["match", "route", "retries"],
        istio_only: &[
            (
                "corsPolicy",
                Unsupported::NotImplemented("answers CORS preflight requests"),
            ),
            (
                "percent",
                Unsupported::Replaced("write `percentage: {value: N}`"),
            ),
        ],
    };

    fn yaml(text: &str) -> Value {
        serde_yaml::from_str(text).unwrap()
    }

    #[test]
    fn paths_read_like_the_yaml() {
        let p = Path::root("spec")
            .field("http")
            .index(0)
            .field("match")
            .index(1);
        assert_eq!(p.as_str(), "spec.http[0].match[1]");
        assert_eq!(
            Path::root("metadata")
                .field("labels")
                .field("app.kubernetes.io/name")
                .as_str(),
            "metadata.labels[\"app.kubernetes.io/name\"]"
        );
    }

    #[test]
    fn every_unknown_field_is_reported_with_a_reason() {
        let mut d = Decoder::default();
        let value = yaml("match: []\nretry: {}\ncorsPolicy: {}\npercent: 5\n");
        let path = Path::root("spec");
        assert!(d.object(&path, &value, &ROUTE).is_some());
        let messages: Vec<_> = d
            .errors
            .iter()
            .map(|e| (e.path.as_str(), e.message.as_str()))
            .collect();
        assert_eq!(messages.len(), 3, "{messages:?}");
        assert_eq!(messages[0].0, "spec.retry");
        assert!(
            messages[0].1.contains("did you mean `retries`?"),
            "{}",
            messages[0].1
        );
        assert_eq!(messages[1].0, "spec.corsPolicy");
        assert!(
            messages[1]
                .1
                .starts_with("micromesh does not implement `corsPolicy` (Istio does: it answers")
        );
        assert_eq!(messages[2].1, "write `percentage: {value: N}`");
    }

    #[test]
    fn scalars_explain_what_was_expected() {
        let mut d = Decoder::default();
        let p = Path::root("x");
        assert_eq!(d.string(&p, &yaml("1.0")), None);
        assert!(d.errors[0].message.contains("quote it: \"1.0\""));
        assert_eq!(d.integer(&p, &yaml("\"80\""), 0, 100), None);
        assert!(d.errors[1].message.contains("remove the quotes"));
        assert_eq!(d.integer(&p, &yaml("-1"), 0, 100), None);
        assert!(d.errors[2].message.contains("negative"));
        assert_eq!(d.percentage(&p, &yaml("50")), None);
        assert!(d.errors[3].message.contains("percentage: {value: 50}"));
        assert_eq!(d.percentage(&p, &yaml("value: 150")), None);
        assert_eq!(d.errors[4].path, "x.value");
        assert_eq!(d.percentage(&p, &yaml("value: 12.5")), Some(12.5));
        assert_eq!(d.duration_ms(&p, &yaml("5")), None);
        assert!(d.errors[5].message.contains("`5s`"));
        assert_eq!(d.errors.len(), 6);
    }

    #[test]
    fn null_fields_count_as_absent() {
        let mut d = Decoder::default();
        let value = yaml("match:\nroute: []\n");
        let path = Path::root("r");
        let object = d.object(&path, &value, &ROUTE).unwrap();
        assert!(object.get("match").is_none());
        assert!(object.get("route").is_some());
        assert!(
            object
                .required(&mut d, "retries", "{attempts: 3}")
                .is_none()
        );
        assert_eq!(d.errors[0].path, "r.retries");
    }

    #[test]
    fn edit_distance_counts_single_edits() {
        assert_eq!(edit_distance("retry", "retries"), 3);
        assert_eq!(edit_distance("route", "route"), 0);
        assert_eq!(edit_distance("", "abc"), 3);
    }
}

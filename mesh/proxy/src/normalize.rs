//! Path normalization: one spelling of a request's path, decided before the
//! route is matched, and the same one sent upstream.
//!
//! A route for `prefix: /public` must not become a way to reach `/admin`.
//! Without normalization, `/public/../admin`, `/public/%2e%2e/admin` and
//! `/public\..\admin` all match `/public`, while the app behind the route
//! (or the next proxy) resolves them to `/admin`. Envoy closes this gap with
//! `normalize_path: true`, which Istio turns on by default; micromesh does
//! the same, with Istio's `meshConfig.pathNormalization` choices as
//! `MESH_PATH_NORMALIZATION`:
//!
//! | mode | what it does | `/a/%2e%2e/b\c//d%2Fe` becomes |
//! | --- | --- | --- |
//! | `NONE` | nothing: the path as written | (unchanged) |
//! | `BASE` (default) | RFC 3986 6.2.2: percent-encoded unreserved characters decoded (`%2e` is `.`, `%41` is `A`), `\` read as `/`, dot segments removed (RFC 3986 5.2.4) | `/b/c//d%2Fe` |
//! | `MERGE_SLASHES` | `BASE`, then runs of `/` merged into one | `/b/c/d%2Fe` |
//! | `DECODE_AND_MERGE_SLASHES` | `%2F` and `%5C` (either case) decoded to `/` first, then `MERGE_SLASHES` | `/b/c/d/e` |
//!
//! `%2F` and `%5C` stay encoded in the first three modes: an encoded slash
//! is data inside one segment (a file name with a slash), and decoding it
//! would change which resource the app serves. The query is never touched.
//! A `%` that is not followed by two hex digits has no meaning to decode,
//! so in every mode but `NONE` it refuses the request (400) instead of
//! guessing.
//!
//! [`normalize_path`] is pure and public: the listeners call it through
//! `admit.rs`, and authorization (which must judge the same path the route
//! saw) calls it too.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

/// Istio's `meshConfig.pathNormalization.normalization`, as
/// `MESH_PATH_NORMALIZATION` spells it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PathNormalization {
    /// The path as written.
    None,
    /// RFC 3986 normalization: Envoy's `normalize_path: true` (Istio's default).
    #[default]
    Base,
    /// `Base`, then consecutive slashes merged (Envoy's `merge_slashes`).
    MergeSlashes,
    /// `%2F`/`%5C` decoded, then `MergeSlashes` (Envoy's
    /// `path_with_escaped_slashes_action: UNESCAPE_AND_FORWARD`).
    DecodeAndMergeSlashes,
}

impl PathNormalization {
    pub const NAMES: &'static str = "NONE, BASE, MERGE_SLASHES or DECODE_AND_MERGE_SLASHES";
}

impl FromStr for PathNormalization {
    type Err = String;

    /// Istio's names, in any case.
    fn from_str(text: &str) -> Result<Self, String> {
        match text.trim().to_ascii_uppercase().as_str() {
            "NONE" => Ok(PathNormalization::None),
            "BASE" | "DEFAULT" => Ok(PathNormalization::Base),
            "MERGE_SLASHES" => Ok(PathNormalization::MergeSlashes),
            "DECODE_AND_MERGE_SLASHES" => Ok(PathNormalization::DecodeAndMergeSlashes),
            _ => Err(format!(
                "expected {} (Istio's meshConfig.pathNormalization)",
                PathNormalization::NAMES
            )),
        }
    }
}

impl fmt::Display for PathNormalization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathNormalization::None => "NONE",
            PathNormalization::Base => "BASE",
            PathNormalization::MergeSlashes => "MERGE_SLASHES",
            PathNormalization::DecodeAndMergeSlashes => "DECODE_AND_MERGE_SLASHES",
        })
    }
}

/// A path that cannot be normalized.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error(
        "the request path {path:?} does not start with `/`: \
         send an origin-form target such as /hello (or an absolute URL to a proxy)"
    )]
    NotAbsolute { path: String },
    #[error(
        "the request path {path:?} has a `%` at byte {at} that is not followed by two hex \
         digits: percent-encode a literal `%` as %25"
    )]
    BadPercent { path: String, at: usize },
}

/// Normalize `path` (the path alone, without `?query`) as `mode` says.
/// Borrows when nothing changes, which is the common case.
pub fn normalize_path(path: &str, mode: PathNormalization) -> Result<Cow<'_, str>, PathError> {
    if mode == PathNormalization::None {
        return Ok(Cow::Borrowed(path));
    }
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute {
            path: path.to_string(),
        });
    }
    let merge = mode != PathNormalization::Base;
    // Most paths have nothing to normalize: no escapes, no backslashes, no
    // dot segments, no doubled slashes. One scan tells, without allocating.
    let bytes = path.as_bytes();
    let busy = bytes.iter().enumerate().any(|(i, &b)| {
        b == b'%'
            || b == b'\\'
            || (b == b'.' && bytes[i - 1] == b'/')
            || (merge && b == b'/' && bytes.get(i + 1) == Some(&b'/'))
    });
    if !busy {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode(path, mode == PathNormalization::DecodeAndMergeSlashes)?;
    let mut normal = remove_dot_segments(&decoded);
    if merge {
        merge_slashes(&mut normal);
    }
    Ok(if normal == path {
        Cow::Borrowed(path)
    } else {
        Cow::Owned(normal)
    })
}

/// Percent-decode the unreserved characters (RFC 3986 2.3: ALPHA, DIGIT,
/// `-`, `.`, `_`, `~`), and the slashes when `slashes`; read `\` as `/`.
/// Every other escape stays as written (`%2F` is not `/`, `%25` not `%`).
fn decode(path: &str, slashes: bool) -> Result<String, PathError> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let value = bytes
                    .get(i + 1..i + 3)
                    .and_then(|hex| std::str::from_utf8(hex).ok())
                    .filter(|hex| hex.bytes().all(|b| b.is_ascii_hexdigit()))
                    .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                    .ok_or_else(|| PathError::BadPercent {
                        path: path.to_string(),
                        at: i,
                    })?;
                if value.is_ascii_alphanumeric() || matches!(value, b'-' | b'.' | b'_' | b'~') {
                    out.push(char::from(value));
                } else if slashes && matches!(value, b'/' | b'\\') {
                    out.push('/');
                } else {
                    out.push_str(&path[i..i + 3]);
                }
                i += 3;
            }
            b'\\' => {
                out.push('/');
                i += 1;
            }
            _ => {
                // Copy the run up to the next byte of interest in one go
                // (the path is ASCII as hyper accepted it, but slicing at
                // these ASCII bytes is right for any UTF-8).
                let end = bytes[i..]
                    .iter()
                    .position(|&b| b == b'%' || b == b'\\')
                    .map_or(bytes.len(), |n| i + n);
                out.push_str(&path[i..end]);
                i = end;
            }
        }
    }
    Ok(out)
}

/// RFC 3986 section 5.2.4, for a path that starts with `/`: `.` segments
/// go, `..` removes the segment before it (never above the root).
fn remove_dot_segments(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    // The path starts with `/`, so the first piece is empty.
    let mut pieces = path.split('/').skip(1).peekable();
    let mut trailing_slash = false;
    while let Some(segment) = pieces.next() {
        let last = pieces.peek().is_none();
        match segment {
            "." => trailing_slash = last,
            ".." => {
                segments.pop();
                trailing_slash = last;
            }
            _ => {
                segments.push(segment);
                trailing_slash = false;
            }
        }
    }
    let mut out = String::with_capacity(path.len());
    for segment in &segments {
        out.push('/');
        out.push_str(segment);
    }
    // `/a/.` and `/a/..` name a directory: `/a/` and `/`.
    if trailing_slash || out.is_empty() {
        out.push('/');
    }
    out
}

/// Runs of `/` become one `/`.
fn merge_slashes(path: &mut String) {
    let mut previous_slash = false;
    path.retain(|c| {
        let keep = !(c == '/' && previous_slash);
        previous_slash = c == '/';
        keep
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    use PathNormalization::*;

    fn norm(path: &str, mode: PathNormalization) -> String {
        normalize_path(path, mode)
            .unwrap_or_else(|e| panic!("{path:?} under {mode}: {e}"))
            .into_owned()
    }

    #[test]
    fn the_issues_escapes_from_public_to_admin_all_become_admin() {
        for path in [
            "/public/../admin",
            "/public/%2e%2e/admin",
            "/public/%2E%2E/admin",
            "/public/.%2e/admin",
            "/public\\..\\admin",
            "/public/./../admin",
            "/../admin",
        ] {
            assert_eq!(norm(path, Base), "/admin", "{path}");
        }
        // NONE leaves them for whatever the app makes of them.
        assert_eq!(norm("/public/../admin", None), "/public/../admin");
    }

    #[test]
    fn rfc_3986_dot_segments() {
        // RFC 3986 5.2.4's own examples, and the edges of the root.
        assert_eq!(norm("/a/b/c/./../../g", Base), "/a/g");
        assert_eq!(norm("/mid/content=5/../6", Base), "/mid/6");
        assert_eq!(norm("/a/b/.", Base), "/a/b/");
        assert_eq!(norm("/a/b/..", Base), "/a/");
        assert_eq!(norm("/..", Base), "/");
        assert_eq!(norm("/.", Base), "/");
        assert_eq!(norm("/", Base), "/");
        // Dots inside a segment are just characters.
        assert_eq!(norm("/a..b/.c/d.", Base), "/a..b/.c/d.");
        assert_eq!(norm("/v1.2/..x", Base), "/v1.2/..x");
    }

    #[test]
    fn unreserved_escapes_are_decoded_and_others_kept() {
        assert_eq!(norm("/%61dmin", Base), "/admin");
        assert_eq!(norm("/a%7Eb%2d%5F", Base), "/a~b-_");
        // Reserved or unsafe bytes stay encoded, in the case written.
        assert_eq!(norm("/a%2Fb", Base), "/a%2Fb");
        assert_eq!(norm("/a%2fb%5Cc", Base), "/a%2fb%5Cc");
        assert_eq!(norm("/100%25", Base), "/100%25");
        assert_eq!(norm("/a%20b", Base), "/a%20b");
        // No double decoding: %252e is `%2e` as data, not a dot.
        assert_eq!(norm("/a/%252e%252e/b", Base), "/a/%252e%252e/b");
    }

    #[test]
    fn slashes_merge_only_when_asked() {
        assert_eq!(norm("//a///b", Base), "//a///b");
        assert_eq!(norm("//a///b", MergeSlashes), "/a/b");
        assert_eq!(norm("/a/%2F/b", MergeSlashes), "/a/%2F/b");
        assert_eq!(norm("/a\\\\b", MergeSlashes), "/a/b");
    }

    #[test]
    fn decode_and_merge_slashes_decodes_2f_and_5c_before_the_dots() {
        let mode = DecodeAndMergeSlashes;
        assert_eq!(norm("/a%2fb", mode), "/a/b");
        assert_eq!(norm("/a%5Cb", mode), "/a/b");
        assert_eq!(norm("/public%2F..%2Fadmin", mode), "/admin");
        assert_eq!(norm("/public%5c%2e%2e%5cadmin", mode), "/admin");
        assert_eq!(norm("/a%2F%2Fb", mode), "/a/b");
        // The same path under BASE keeps its encoded slashes: one segment.
        assert_eq!(norm("/public%2F..%2Fadmin", Base), "/public%2F..%2Fadmin");
    }

    #[test]
    fn the_module_docs_example_holds() {
        let path = "/a/%2e%2e/b\\c//d%2Fe";
        assert_eq!(norm(path, None), path);
        assert_eq!(norm(path, Base), "/b/c//d%2Fe");
        assert_eq!(norm(path, MergeSlashes), "/b/c/d%2Fe");
        assert_eq!(norm(path, DecodeAndMergeSlashes), "/b/c/d/e");
    }

    #[test]
    fn a_plain_path_is_borrowed_not_copied() {
        for path in ["/hello/ray", "/a.b/c", "/"] {
            assert!(matches!(
                normalize_path(path, DecodeAndMergeSlashes),
                Ok(Cow::Borrowed(_))
            ));
        }
        // Something to look at, nothing to change: still borrowed.
        assert!(matches!(
            normalize_path("/a%2Fb", Base),
            Ok(Cow::Borrowed(_))
        ));
    }

    #[test]
    fn what_cannot_be_normalized_is_an_error_that_says_why() {
        let error = normalize_path("admin", Base).unwrap_err();
        assert!(matches!(error, PathError::NotAbsolute { .. }));
        assert!(error.to_string().contains("does not start with `/`"));
        for (path, at) in [("/a%zzb", 2), ("/a%2", 2), ("/a%", 2), ("/%%41", 1)] {
            let error = normalize_path(path, Base).unwrap_err();
            assert_eq!(
                error,
                PathError::BadPercent {
                    path: path.into(),
                    at
                },
                "{path}"
            );
        }
        assert!(
            normalize_path("/a%zz", Base)
                .unwrap_err()
                .to_string()
                .contains("%25")
        );
        // NONE judges nothing.
        assert_eq!(norm("/a%zz", None), "/a%zz");
    }

    #[test]
    fn modes_read_istios_names() {
        assert_eq!("BASE".parse(), Ok(Base));
        assert_eq!("none".parse(), Ok(None));
        assert_eq!("MERGE_SLASHES".parse(), Ok(MergeSlashes));
        assert_eq!(
            "DECODE_AND_MERGE_SLASHES".parse(),
            Ok(DecodeAndMergeSlashes)
        );
        let error = "SLASHES".parse::<PathNormalization>().unwrap_err();
        assert!(error.contains("DECODE_AND_MERGE_SLASHES"), "{error}");
        for mode in [None, Base, MergeSlashes, DecodeAndMergeSlashes] {
            assert_eq!(mode.to_string().parse(), Ok(mode));
        }
    }
}

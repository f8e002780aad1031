//! Request path normalisation and the path patterns of a rule.
//!
//! `normalize_path` is the one place that decides what a path means (the proxy forwards
//! its output, the matcher judges it), so the two can never disagree. It must never
//! allocate for a path that is already normal, and never decode `/`, `\` or NUL.

use std::borrow::Cow;
use std::collections::HashSet;

use super::PathError;

/// Normalises a request path as SPEC.md says; returns the input unchanged when it is already normal.
///
/// Anything from `?` on is dropped; unreserved `%HH` escapes are decoded and the others
/// upper-cased; `.`/`..` segments are resolved (never above the root) and `//` merged; a
/// trailing slash is kept. `%2F`, `%5C` and `%00` are refused.
pub fn normalize_path(raw: &str) -> Result<Cow<'_, str>, PathError> {
    let path = raw.split_once('?').map_or(raw, |(p, _)| p);
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    let escapes_dirty = check_escapes(path.as_bytes())?;
    if !escapes_dirty && segments_clean(path) {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = if escapes_dirty {
        Cow::Owned(decode_unreserved(path))
    } else {
        Cow::Borrowed(path)
    };
    Ok(Cow::Owned(resolve_segments(&decoded)))
}

/// Validates every `%HH`; true when one must be rewritten (unreserved, or lowercase hex).
fn check_escapes(bytes: &[u8]) -> Result<bool, PathError> {
    let mut dirty = false;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            i += 1;
            continue;
        }
        let (Some(&hi), Some(&lo)) = (bytes.get(i + 1), bytes.get(i + 2)) else {
            return Err(PathError::BadEncoding);
        };
        let value = hex_pair(hi, lo).ok_or(PathError::BadEncoding)?;
        if matches!(value, b'/' | b'\\' | 0) {
            return Err(PathError::ForbiddenEncoding);
        }
        if is_unreserved(value) || hi.is_ascii_lowercase() || lo.is_ascii_lowercase() {
            dirty = true;
        }
        i += 3;
    }
    Ok(dirty)
}

/// True when no segment is empty (except a trailing one), `.` or `..`.
fn segments_clean(path: &str) -> bool {
    let mut segments = path[1..].split('/').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        if (segment.is_empty() && !last) || segment == "." || segment == ".." {
            return false;
        }
    }
    true
}

/// Decodes unreserved escapes and upper-cases the hex of the others (escapes already checked).
fn decode_unreserved(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        let escape = match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&hi), Some(&lo)) => hex_pair(hi, lo).map(|v| (hi, lo, v)),
            _ => None,
        };
        let Some((hi, lo, value)) = escape else {
            i += 1;
            continue;
        };
        out.push_str(&path[copied..i]);
        if is_unreserved(value) {
            out.push(char::from(value));
        } else {
            out.push('%');
            out.push(char::from(hi.to_ascii_uppercase()));
            out.push(char::from(lo.to_ascii_uppercase()));
        }
        i += 3;
        copied = i;
    }
    out.push_str(&path[copied..]);
    out
}

/// RFC 3986 `remove_dot_segments` plus `//` merging; keeps a trailing slash.
fn resolve_segments(path: &str) -> String {
    let mut stack: Vec<&str> = Vec::new();
    let mut segments = path.get(1..).unwrap_or("").split('/').peekable();
    let mut trailing = false;
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        match segment {
            "" | "." => {}
            ".." => {
                stack.pop();
            }
            s => stack.push(s),
        }
        if last {
            trailing = matches!(segment, "" | "." | "..");
        }
    }
    let mut out = String::with_capacity(path.len());
    for segment in &stack {
        out.push('/');
        out.push_str(segment);
    }
    if trailing || out.is_empty() {
        out.push('/');
    }
    out
}

fn hex_pair(hi: u8, lo: u8) -> Option<u8> {
    let digit = |c: u8| char::from(c).to_digit(16);
    Some((digit(hi)? * 16 + digit(lo)?) as u8)
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// One entry of `paths` or `not_paths`, as compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum PathPattern {
    /// `*` or `/*`: every path.
    Any,
    /// An exact path.
    Exact(Box<str>),
    /// `/p/*`, stored as `/p/`: the prefix itself and everything below.
    Prefix(Box<str>),
    /// `*.ext`, stored as `.ext`: the last segment ends with it.
    Suffix(Box<str>),
}

impl PathPattern {
    /// Parses a pattern; the error says what to write instead.
    pub fn parse(pattern: &str) -> Result<Self, String> {
        if pattern == "*" || pattern == "/*" {
            return Ok(Self::Any);
        }
        if let Some(ext) = pattern.strip_prefix('*') {
            if !ext.starts_with('.') || ext.len() < 2 || ext.contains(['*', '/', '?']) {
                return Err(format!(
                    "{pattern:?}: a leading '*' must be followed by an extension such as \"*.json\""
                ));
            }
            return Ok(Self::Suffix(ext.into()));
        }
        let (body, prefix) = match pattern.strip_suffix('*') {
            Some(body) if body.ends_with('/') => (body, true),
            _ => (pattern, false),
        };
        if body.contains('*') {
            return Err(format!(
                "{pattern:?}: '*' may only be a whole last segment (\"/p/*\"), \"*.ext\" or \"*\""
            ));
        }
        let normal = normalize_path(body).map_err(|e| format!("{pattern:?}: {e}"))?;
        if normal != body {
            let fixed = if prefix {
                format!("{normal}*")
            } else {
                normal.into_owned()
            };
            return Err(format!(
                "{pattern:?} is not a normalised path (requests are normalised before matching); write {fixed:?}"
            ));
        }
        Ok(if prefix {
            Self::Prefix(body.into())
        } else {
            Self::Exact(body.into())
        })
    }

    /// Whether the pattern matches the (normalised) path.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Exact(p) => path == &**p,
            Self::Prefix(p) => path.starts_with(&**p),
            Self::Suffix(ext) => path.ends_with(&**ext),
        }
    }
}

/// Above this many patterns a set hashes its exact paths and prefixes instead of scanning.
const LINEAR_MAX: usize = 8;

/// A compiled `paths` (or `not_paths`) list: cost independent of its length.
///
/// A short list (nearly every rule's) is scanned and holds each path once; only a long
/// list also keeps its exact paths and prefixes in hash sets.
#[derive(Debug, Default)]
pub(super) struct PathSet {
    /// In file order.
    patterns: Box<[PathPattern]>,
    /// Set for lists longer than `LINEAR_MAX`.
    hashed: Option<Box<Hashed>>,
}

/// The hashed form of a long list.
#[derive(Debug)]
struct Hashed {
    exact: HashSet<Box<str>>,
    prefixes: HashSet<Box<str>>,
    /// `*` and `*.ext` patterns, scanned.
    scanned: Box<[PathPattern]>,
}

impl PathSet {
    /// Builds the set; an empty list gives an empty set (the caller decides what that means).
    pub fn new(patterns: Vec<PathPattern>) -> Self {
        let hashed = (patterns.len() > LINEAR_MAX).then(|| Box::new(Hashed::new(&patterns)));
        Self {
            patterns: patterns.into_boxed_slice(),
            hashed,
        }
    }

    /// No patterns at all.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// The patterns as compiled, in file order.
    pub fn patterns(&self) -> &[PathPattern] {
        &self.patterns
    }

    /// Whether any pattern matches the (normalised) path.
    pub fn matches(&self, path: &str) -> bool {
        match &self.hashed {
            None => self.patterns.iter().any(|p| p.matches(path)),
            Some(hashed) => hashed.matches(path),
        }
    }
}

impl Hashed {
    fn new(patterns: &[PathPattern]) -> Self {
        let mut exact = HashSet::new();
        let mut prefixes = HashSet::new();
        let mut scanned = Vec::new();
        for p in patterns {
            match p {
                PathPattern::Exact(s) => {
                    exact.insert(s.clone());
                }
                PathPattern::Prefix(s) => {
                    prefixes.insert(s.clone());
                }
                PathPattern::Any | PathPattern::Suffix(_) => scanned.push(p.clone()),
            }
        }
        Self {
            exact,
            prefixes,
            scanned: scanned.into_boxed_slice(),
        }
    }

    fn matches(&self, path: &str) -> bool {
        if self.exact.contains(path) {
            return true;
        }
        // Every candidate prefix of `path` ends at a '/': one lookup per segment.
        let prefixed = !self.prefixes.is_empty()
            && path
                .bytes()
                .enumerate()
                .filter(|&(_, b)| b == b'/')
                .any(|(i, _)| self.prefixes.contains(&path[..=i]));
        prefixed || self.scanned.iter().any(|p| p.matches(path))
    }
}

impl std::fmt::Display for PathPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Any => f.write_str("*"),
            Self::Exact(p) => f.write_str(p),
            Self::Prefix(p) => write!(f, "{p}*"),
            Self::Suffix(ext) => write!(f, "*{ext}"),
        }
    }
}

//! Request path normalisation and the path patterns of a rule.
//!
//! `normalize_path` is the one place that decides what a path means (the proxy forwards
//! its output, the matcher judges it), so the two can never disagree. Its output is
//! canonical (one spelling per resource, a fixed point); it must never allocate for a path
//! that is already normal, never decode `/`, `\` or NUL, and never let a raw `\` or NUL through.

use std::borrow::Cow;
use std::collections::HashSet;

use super::PathError;

/// Normalises a request path as SPEC.md says; returns the input unchanged when it is already normal.
///
/// Anything from `?` on is dropped; unreserved `%HH` escapes are decoded and the others
/// upper-cased; every byte RFC 3986 does not allow raw in a path (non-ASCII, space, `"`,
/// `{`, control bytes, ...) is encoded as `%HH`; `.`/`..` segments are resolved (never
/// above the root) and `//` merged; a trailing slash is kept. `%2F`, `%5C`, `%00`, a raw
/// `\` or NUL, and a `.` or `..` segment with `;` parameters are refused.
pub fn normalize_path(raw: &str) -> Result<Cow<'_, str>, PathError> {
    let path = raw.split_once('?').map_or(raw, |(p, _)| p);
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    let rewritten = match check_bytes(path.as_bytes())? {
        true => Cow::Owned(rewrite_bytes(path)?),
        false => Cow::Borrowed(path),
    };
    if segments_clean(&rewritten)? {
        return Ok(rewritten);
    }
    Ok(Cow::Owned(resolve_segments(&rewritten)))
}

/// What normalisation does with one raw byte of a path.
#[derive(Clone, Copy)]
enum Class {
    /// Allowed raw by RFC 3986: unreserved, sub-delims, `:`, `@` and `/`.
    Keep,
    /// `%`, the start of an escape.
    Escape,
    /// Not allowed raw: written as `%HH`.
    Encode,
    /// `\` (some servers read it as `/`) and NUL (C strings end there): refused, raw
    /// as well as encoded.
    Refuse,
}

/// The class of every byte, so checking a path is one lookup per byte.
const CLASSES: [Class; 256] = classes();

const fn classes() -> [Class; 256] {
    let mut table = [Class::Encode; 256];
    let mut i = 0;
    while i < table.len() {
        table[i] = match i as u8 {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => Class::Keep,
            b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'=' => {
                Class::Keep
            }
            b':' | b'@' | b'/' => Class::Keep,
            b'%' => Class::Escape,
            b'\\' | 0 => Class::Refuse,
            _ => Class::Encode,
        };
        i += 1;
    }
    table
}

/// Validates every byte and `%HH`; true when one must be rewritten (an unreserved or
/// lower-case escape, or a byte to encode).
fn check_bytes(bytes: &[u8]) -> Result<bool, PathError> {
    let mut dirty = false;
    let mut i = 0;
    while i < bytes.len() {
        match CLASSES[usize::from(bytes[i])] {
            Class::Keep => i += 1,
            Class::Encode => {
                dirty = true;
                i += 1;
            }
            Class::Refuse => return Err(refusal(bytes[i])),
            Class::Escape => {
                let (value, upper) = escape_at(bytes, i)?;
                dirty |= is_unreserved(value) || !upper;
                i += 3;
            }
        }
    }
    Ok(dirty)
}

/// Why a raw byte of class [`Class::Refuse`] is refused.
fn refusal(byte: u8) -> PathError {
    match byte {
        b'\\' => PathError::Backslash,
        _ => PathError::Nul,
    }
}

/// The `%HH` at `bytes[i]`: the byte it stands for, and whether its hex is upper-case.
fn escape_at(bytes: &[u8], i: usize) -> Result<(u8, bool), PathError> {
    let Some(&[hi, lo]) = bytes.get(i + 1..i + 3) else {
        return Err(PathError::BadEncoding);
    };
    let value = hex_pair(hi, lo).ok_or(PathError::BadEncoding)?;
    if matches!(value, b'/' | b'\\' | 0) {
        return Err(PathError::ForbiddenEncoding);
    }
    Ok((value, !hi.is_ascii_lowercase() && !lo.is_ascii_lowercase()))
}

/// True when no segment is empty (except a trailing one), `.` or `..`. Refuses a `.` or
/// `..` segment with `;` parameters (raw or `%3B`): servlet containers drop a segment's
/// parameters before resolving dots, so `/public/..;/admin` is `/admin` to them while it
/// is a path below `/public/` to anyone else.
fn segments_clean(path: &str) -> Result<bool, PathError> {
    let mut clean = true;
    let mut segments = path[1..].split('/').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        if (segment.is_empty() && !last) || segment == "." || segment == ".." {
            clean = false;
        }
        if segment.starts_with('.') && is_dot_with_parameters(segment) {
            return Err(PathError::DotSegmentParameters);
        }
    }
    Ok(clean)
}

/// Whether `segment` is `.` or `..` followed by `;` (raw or `%3B`) and parameters.
fn is_dot_with_parameters(segment: &str) -> bool {
    let dots = segment.len() - segment.trim_start_matches('.').len();
    let rest = &segment[dots..];
    matches!(dots, 1 | 2) && (rest.starts_with(';') || rest.starts_with("%3B"))
}

/// Decodes unreserved escapes, upper-cases the others and encodes the bytes not allowed
/// raw; the result is ASCII.
fn rewrite_bytes(path: &str) -> Result<String, PathError> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len() + 8);
    let mut i = 0;
    while i < bytes.len() {
        let byte = bytes[i];
        i += match CLASSES[usize::from(byte)] {
            Class::Keep => {
                out.push(char::from(byte));
                1
            }
            Class::Encode => {
                push_escape(&mut out, byte);
                1
            }
            Class::Refuse => return Err(refusal(bytes[i])),
            Class::Escape => {
                let (value, _) = escape_at(bytes, i)?;
                if is_unreserved(value) {
                    out.push(char::from(value));
                } else {
                    push_escape(&mut out, value);
                }
                3
            }
        };
    }
    Ok(out)
}

/// Appends `%HH` with upper-case hex.
fn push_escape(out: &mut String, byte: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(char::from(HEX[usize::from(byte >> 4)]));
    out.push(char::from(HEX[usize::from(byte & 0x0F)]));
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
            // The extension as it ends a normalised path.
            let probe = format!("/x{ext}");
            let normal = normalize_path(&probe).map_err(|e| format!("{pattern:?}: {e}"))?;
            if normal != probe {
                let fixed = format!("*{}", normal.strip_prefix("/x").unwrap_or(&normal));
                return Err(format!(
                    "{pattern:?} is not a normalised extension (requests are normalised before matching); write {fixed:?}"
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

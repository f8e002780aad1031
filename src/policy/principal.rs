//! Principal patterns (`from`/`not_from`) and the index that finds a source's rules.
//!
//! Patterns match whole SPIFFE ID path segments, never raw string prefixes, and the
//! trust domain is always literal. The index answers "which rules can apply to this
//! source?" with hash lookups per segment; it must never scan every rule.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use crate::spiffe_id::{SpiffeId, TrustDomain};

/// One entry of `from` or `not_from`, as compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum PrincipalPattern {
    /// `*`: any authenticated peer.
    Any,
    /// A whole SPIFFE ID.
    Exact(SpiffeId),
    /// `spiffe://TD/a/*/b` or `spiffe://TD/a/*`: per-segment matching.
    Segments {
        /// The literal trust domain.
        trust_domain: Box<str>,
        /// The leading segments (a `*` in the middle is [`Segment::One`]).
        segments: Box<[Segment]>,
        /// The pattern ends in `/*`: one or more further segments.
        tail: bool,
    },
}

/// One segment of a [`PrincipalPattern::Segments`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Segment {
    /// Must equal this text.
    Literal(Box<str>),
    /// `*`: exactly one segment.
    One,
}

impl PrincipalPattern {
    /// Parses a pattern; the error says what is wrong and what to write instead.
    pub fn parse(pattern: &str) -> Result<Self, String> {
        if pattern == "*" {
            return Ok(Self::Any);
        }
        let Some(rest) = pattern.strip_prefix("spiffe://") else {
            return Err(format!(
                "{pattern:?}: expected a SPIFFE ID pattern such as \"spiffe://example.org/ns/*/sa/api\", or \"*\" for any peer"
            ));
        };
        let (td, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        if td.contains('*') {
            return Err(format!(
                "{pattern:?}: the trust domain is always literal; name it (\"spiffe://example.org/*\")"
            ));
        }
        TrustDomain::new(td).map_err(|e| format!("{pattern:?}: {e}"))?;
        if path.is_empty() {
            return Err(format!(
                "{pattern:?} names the trust domain itself, which no peer presents (a workload's ID has a path); write \"spiffe://{td}/*\" for any ID of it"
            ));
        }
        if !pattern.contains('*') {
            return SpiffeId::parse(pattern)
                .map(Self::Exact)
                .map_err(|e| format!("{pattern:?}: {e}"));
        }
        let raw: Vec<&str> = path.get(1..).unwrap_or("").split('/').collect();
        if let Some(bad) = raw.iter().find(|s| s.contains('*') && **s != "*") {
            return Err(format!(
                "{pattern:?}: partial-segment glob {bad:?}; '*' must be a whole segment (\"spiffe://{td}/ns/*/sa/api\" or \"spiffe://{td}/ns/web/*\")"
            ));
        }
        // Check the literal segments with the SPIFFE ID rules, '*' standing in for a segment.
        let probe = pattern.replace('*', "x");
        SpiffeId::parse(&probe).map_err(|e| format!("{pattern:?}: {e}"))?;
        let tail = raw.last() == Some(&"*");
        let body = if tail {
            &raw[..raw.len() - 1]
        } else {
            &raw[..]
        };
        let segments = body
            .iter()
            .map(|s| {
                if *s == "*" {
                    Segment::One
                } else {
                    Segment::Literal((*s).into())
                }
            })
            .collect();
        Ok(Self::Segments {
            trust_domain: td.into(),
            segments,
            tail,
        })
    }

    /// Whether the pattern matches this source.
    pub fn matches(&self, id: &SpiffeId) -> bool {
        match self {
            Self::Any => true,
            Self::Exact(exact) => exact.as_str() == id.as_str(),
            Self::Segments {
                trust_domain,
                segments,
                tail,
            } => {
                if id.trust_domain_name() != &**trust_domain {
                    return false;
                }
                let mut actual = id_segments(id);
                for want in segments {
                    match (want, actual.next()) {
                        (_, None) => return false,
                        (Segment::Literal(l), Some(s)) if &**l != s => return false,
                        _ => {}
                    }
                }
                actual.next().is_some() == *tail
            }
        }
    }
}

impl fmt::Display for PrincipalPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("*"),
            Self::Exact(id) => f.write_str(id.as_str()),
            Self::Segments {
                trust_domain,
                segments,
                tail,
            } => {
                write!(f, "spiffe://{trust_domain}")?;
                for s in segments {
                    match s {
                        Segment::Literal(l) => write!(f, "/{l}")?,
                        Segment::One => f.write_str("/*")?,
                    }
                }
                if *tail {
                    f.write_str("/*")?;
                }
                Ok(())
            }
        }
    }
}

type Segments<'a> = std::iter::Skip<std::str::Split<'a, char>>;

/// The path segments of an ID, without allocating (none for a bare trust domain).
fn id_segments(id: &SpiffeId) -> Segments<'_> {
    id.path().split('/').skip(1)
}

/// Maps principal patterns to values (rule buckets) and finds every value for a source.
#[derive(Debug, Default)]
pub(super) struct PrincipalIndex<T> {
    /// Keyed by the pattern's own text (shared, not copied).
    exact: HashMap<Arc<str>, T>,
    domains: HashMap<Box<str>, Node<T>>,
    any: T,
}

/// A trie node: one per literal segment (or `*`) below a trust domain.
#[derive(Debug, Default)]
struct Node<T> {
    children: HashMap<Box<str>, Node<T>>,
    star: Option<Box<Node<T>>>,
    /// Patterns that end exactly here.
    terminal: T,
    /// Patterns that end here with `/*` (one or more further segments).
    tail: T,
}

impl<T: Default> PrincipalIndex<T> {
    /// The value slot for a pattern, created empty when new.
    pub fn slot(&mut self, pattern: &PrincipalPattern) -> &mut T {
        match pattern {
            PrincipalPattern::Any => &mut self.any,
            PrincipalPattern::Exact(id) => self.exact.entry(id.to_shared_str()).or_default(),
            PrincipalPattern::Segments {
                trust_domain,
                segments,
                tail,
            } => {
                let mut node = self.domains.entry(trust_domain.clone()).or_default();
                for s in segments {
                    node = match s {
                        Segment::Literal(l) => node.children.entry(l.clone()).or_default(),
                        Segment::One => node.star.get_or_insert_with(Box::default),
                    };
                }
                if *tail {
                    &mut node.tail
                } else {
                    &mut node.terminal
                }
            }
        }
    }

    /// Calls `f` on every value whose pattern matches `id` (each matching slot once).
    pub fn for_each_match<'s>(&'s self, id: &SpiffeId, f: &mut impl FnMut(&'s T)) {
        f(&self.any);
        if let Some(value) = self.exact.get(id.as_str()) {
            f(value);
        }
        if let Some(root) = self.domains.get(id.trust_domain_name()) {
            walk(root, id_segments(id), f);
        }
    }

    /// Visits every value, for a final pass after all patterns are added.
    pub fn for_each_mut(&mut self, f: &mut impl FnMut(&mut T)) {
        f(&mut self.any);
        self.exact.values_mut().for_each(&mut *f);
        for root in self.domains.values_mut() {
            visit_mut(root, f);
        }
    }
}

fn walk<'s, T>(node: &'s Node<T>, rest: Segments<'_>, f: &mut impl FnMut(&'s T)) {
    let mut after = rest.clone();
    let Some(segment) = after.next() else {
        f(&node.terminal);
        return;
    };
    f(&node.tail);
    if let Some(child) = node.children.get(segment) {
        walk(child, after.clone(), f);
    }
    if let Some(star) = &node.star {
        walk(star, after, f);
    }
}

fn visit_mut<T>(node: &mut Node<T>, f: &mut impl FnMut(&mut T)) {
    f(&mut node.terminal);
    f(&mut node.tail);
    for child in node.children.values_mut() {
        visit_mut(child, f);
    }
    if let Some(star) = &mut node.star {
        visit_mut(star, f);
    }
}

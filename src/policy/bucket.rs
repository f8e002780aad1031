//! Rule buckets: the rules reachable from one principal slot, optionally indexed by path.
//!
//! A bucket holds rule numbers in file order. A big bucket (many rules for the same
//! source) is split further by exact path and path prefix, so the rules a request has
//! to look at stay few however large the file grows. It never decides a match itself.

use std::collections::HashMap;

use super::path::PathPattern;
use super::rule::Rule;

/// Buckets with more rules than this get a path index.
const INDEX_ABOVE: usize = 16;

/// The rules of one principal slot, in file order.
#[derive(Debug, Default)]
pub(super) struct Bucket {
    rules: Vec<u32>,
    by_path: Option<Box<PathIndex>>,
}

/// Rules of a big bucket split by the paths they can match.
#[derive(Debug, Default)]
struct PathIndex {
    exact: HashMap<Box<str>, Vec<u32>>,
    prefix: HashMap<Box<str>, Vec<u32>>,
    /// Rules with no paths, `*`, or a suffix pattern: always looked at.
    rest: Vec<u32>,
}

impl Bucket {
    /// Adds a rule; rules must be added in file order (a repeat is ignored).
    pub fn push(&mut self, rule: u32) {
        if self.rules.last() != Some(&rule) {
            self.rules.push(rule);
        }
    }

    /// Every rule of the bucket, in file order.
    pub fn rules(&self) -> &[u32] {
        &self.rules
    }

    /// Builds the path index when the bucket is big.
    pub fn finish(&mut self, rules: &[Rule]) {
        if self.rules.len() <= INDEX_ABOVE {
            return;
        }
        let mut index = PathIndex::default();
        for &n in &self.rules {
            let Some(rule) = rules.get(n as usize) else {
                continue;
            };
            let patterns = rule.paths.patterns();
            let unindexable = patterns.is_empty()
                || patterns
                    .iter()
                    .any(|p| matches!(p, PathPattern::Any | PathPattern::Suffix(_)));
            if unindexable {
                index.rest.push(n);
                continue;
            }
            for p in patterns {
                let list = match p {
                    PathPattern::Exact(s) => index.exact.entry(s.clone()).or_default(),
                    PathPattern::Prefix(s) => index.prefix.entry(s.clone()).or_default(),
                    PathPattern::Any | PathPattern::Suffix(_) => continue,
                };
                if list.last() != Some(&n) {
                    list.push(n);
                }
            }
        }
        self.by_path = Some(Box::new(index));
    }

    /// Calls `f` on lists (each in file order) that together hold every rule of this
    /// bucket that can match `path`.
    pub fn for_each_list<'s>(&'s self, path: &str, f: &mut impl FnMut(&'s [u32])) {
        let Some(index) = &self.by_path else {
            if !self.rules.is_empty() {
                f(&self.rules);
            }
            return;
        };
        f(&index.rest);
        if let Some(list) = index.exact.get(path) {
            f(list);
        }
        if !index.prefix.is_empty() {
            for (i, b) in path.bytes().enumerate() {
                if b == b'/' {
                    if let Some(list) = index.prefix.get(&path[..=i]) {
                        f(list);
                    }
                }
            }
        }
    }
}

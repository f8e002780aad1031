//! One compiled rule, laid out so a typical rule stays small.
//!
//! A policy holds thousands of rules for as long as it is in force, so the fields few
//! rules use (expires, not_from, not_paths, headers) live behind one optional box and
//! every list is an exact-size boxed slice. This module only holds data; it never
//! decides a match.

use std::sync::Arc;
use std::time::SystemTime;

use http::{HeaderName, HeaderValue, Method};
use time::OffsetDateTime;

use super::model::Action;
use super::path::{PathPattern, PathSet};
use super::principal::PrincipalPattern;

/// One rule, ready to match.
#[derive(Debug)]
pub(super) struct Rule {
    pub name: Arc<str>,
    pub action: Action,
    pub audit: bool,
    pub from: Box<[PrincipalPattern]>,
    pub methods: Box<[Method]>,
    pub paths: PathSet,
    /// `None` when the rule has none of the rarely used fields (see [`Rare::boxed`]).
    pub rare: Option<Box<Rare>>,
}

/// The fields few rules use.
#[derive(Debug, Default)]
pub(super) struct Rare {
    /// When the rule stops applying, as a clock reading and as written.
    pub expires: Option<(SystemTime, OffsetDateTime)>,
    pub not_from: Box<[PrincipalPattern]>,
    pub not_paths: PathSet,
    pub headers: Box<[(HeaderName, HeaderValue)]>,
}

impl Rare {
    /// Boxed, or `None` when every field is empty (most rules).
    pub fn boxed(self) -> Option<Box<Self>> {
        let empty = self.expires.is_none()
            && self.not_from.is_empty()
            && self.not_paths.is_empty()
            && self.headers.is_empty();
        (!empty).then(|| Box::new(self))
    }
}

impl Rule {
    /// When the rule stops applying, as a clock reading and as written.
    pub fn expires(&self) -> Option<(SystemTime, OffsetDateTime)> {
        self.rare.as_ref()?.expires
    }

    /// Not yet expired at `now` (a rule without `expires` never expires).
    pub fn is_live(&self, now: SystemTime) -> bool {
        self.expires().is_none_or(|(at, _)| now < at)
    }

    /// Sources excluded even when `from` matches them.
    pub fn not_from(&self) -> &[PrincipalPattern] {
        self.rare.as_ref().map_or(&[], |r| &r.not_from)
    }

    /// The `not_paths` patterns, in file order.
    pub fn not_paths(&self) -> &[PathPattern] {
        self.rare.as_ref().map_or(&[], |r| r.not_paths.patterns())
    }

    /// Whether `not_paths` excludes this (normalised) path.
    pub fn excludes_path(&self, path: &str) -> bool {
        self.rare
            .as_ref()
            .is_some_and(|r| r.not_paths.matches(path))
    }

    /// Headers a request must carry, each with this value.
    pub fn headers(&self) -> &[(HeaderName, HeaderValue)] {
        self.rare.as_ref().map_or(&[], |r| &r.headers)
    }
}

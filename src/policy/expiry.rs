//! When a policy's rules stop applying (`expires`), earliest first, so that long-lived
//! connections can be judged again at those instants and not only after a reload.
//!
//! Built once per compile; a query is a binary search and never allocates. This module
//! never judges a request: it only says when the answer may change.

use std::fmt::Write;
use std::time::SystemTime;

use time::format_description::well_known::Rfc3339;

use super::rule::Rule;

/// Every rule's `expires`, earliest first (file order on a tie), with the rule's index.
#[derive(Debug, Default)]
pub(super) struct Expiries(Box<[(SystemTime, u32)]>);

impl Expiries {
    /// The expiries of `rules` (indices fit in `u32`: `compile` refuses more rules).
    pub fn new(rules: &[Rule]) -> Self {
        let mut all: Vec<(SystemTime, u32)> = (0u32..)
            .zip(rules)
            .filter_map(|(n, rule)| Some((rule.expires()?.0, n)))
            .collect();
        all.sort_by_key(|&(at, _)| at);
        Self(all.into_boxed_slice())
    }

    /// No rule has `expires`.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The earliest `expires` after `now` (a rule is already gone at its expiry instant).
    pub fn next_after(&self, now: SystemTime) -> Option<SystemTime> {
        let first_later = self.0.partition_point(|&(at, _)| at <= now);
        self.0.get(first_later).map(|&(at, _)| at)
    }

    /// "rule NAME expired at TIME", for each rule of `rules` (the rules these expiries were
    /// built from) that expired after `since` and at or before `until`, joined with "; ";
    /// `None` when there is none.
    pub fn describe_between(
        &self,
        rules: &[Rule],
        since: SystemTime,
        until: SystemTime,
    ) -> Option<String> {
        let from = self.0.partition_point(|&(at, _)| at <= since);
        let to = self.0.partition_point(|&(at, _)| at <= until);
        let mut out = String::new();
        for rule in self
            .0
            .get(from..to)?
            .iter()
            .filter_map(|&(_, n)| rules.get(n as usize))
        {
            let Some((_, written)) = rule.expires() else {
                continue;
            };
            if !out.is_empty() {
                out.push_str("; ");
            }
            let when = written
                .format(&Rfc3339)
                .unwrap_or_else(|_| written.to_string());
            let _ = write!(out, "rule {} expired at {when}", rule.name);
        }
        (!out.is_empty()).then_some(out)
    }
}

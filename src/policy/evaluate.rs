//! Judging a request against compiled rules, and explaining the result to a human.
//!
//! The order is SPEC.md's: "if any `deny` rule matches, deny; else if any `allow` rule
//! matches, allow; else `default`". Only the rules the principal index yields for the
//! source are looked at; `evaluate` must never allocate or scan the whole rule list.

use std::fmt::{Display, Write};
use std::sync::Arc;
use std::time::SystemTime;

use time::format_description::well_known::Rfc3339;

use super::compile::Compiled;
use super::model::{Action, Mode};
use super::rule::Rule;
use super::{Decision, Request, Verdict};
use crate::spiffe_id::SpiffeId;

/// Earliest matching rule per (audit?, action): indices into `Best.0`.
const DENY: usize = 0;
const ALLOW: usize = 1;
const AUDIT_DENY: usize = 2;
const AUDIT_ALLOW: usize = 3;

fn slot_of(rule: &Rule) -> usize {
    match (rule.audit, rule.action) {
        (false, Action::Deny) => DENY,
        (false, Action::Allow) => ALLOW,
        (true, Action::Deny) => AUDIT_DENY,
        (true, Action::Allow) => AUDIT_ALLOW,
    }
}

impl Rule {
    /// No method, path or header condition: the rule judges the source alone.
    fn applies_to_every_request(&self) -> bool {
        self.methods.is_empty()
            && self.paths.is_empty()
            && self.not_paths().is_empty()
            && self.headers().is_empty()
    }

    /// Every field but `from` (the principal index has matched that already).
    fn matches_rest(&self, req: &Request<'_>) -> bool {
        !self.not_from().iter().any(|p| p.matches(req.source))
            && (self.methods.is_empty() || self.methods.iter().any(|m| m == req.method))
            && (self.paths.is_empty() || self.paths.matches(req.path))
            && !self.excludes_path(req.path)
            && self
                .headers()
                .iter()
                .all(|(name, want)| req.headers.get_all(name).iter().any(|v| v == want))
    }

    /// Why this rule does not match, field by field (empty when it matches and is enforced).
    fn failures(&self, req: &Request<'_>, now: SystemTime) -> Vec<String> {
        let mut out = Vec::new();
        if let Some((at, text)) = self.expires() {
            if now >= at {
                let when = text.format(&Rfc3339).unwrap_or_else(|_| text.to_string());
                out.push(format!("expired at {when}"));
            }
        }
        if !self.from.is_empty() && !self.from.iter().any(|p| p.matches(req.source)) {
            out.push(format!(
                "source {} not in from {}",
                req.source,
                list(&self.from)
            ));
        }
        if let Some(p) = self.not_from().iter().find(|p| p.matches(req.source)) {
            out.push(format!("source {} excluded by not_from {p}", req.source));
        }
        if !self.methods.is_empty() && !self.methods.iter().any(|m| m == req.method) {
            out.push(format!(
                "method {} not in {}",
                req.method,
                list(&self.methods)
            ));
        }
        if !self.paths.is_empty() && !self.paths.matches(req.path) {
            out.push(format!(
                "path {} not in {}",
                req.path,
                list(self.paths.patterns())
            ));
        }
        if let Some(p) = self.not_paths().iter().find(|p| p.matches(req.path)) {
            out.push(format!("path {} excluded by not_paths {p}", req.path));
        }
        for (name, want) in self.headers() {
            let want = String::from_utf8_lossy(want.as_bytes());
            let mut got = req.headers.get_all(name).iter().peekable();
            if got.peek().is_none() {
                out.push(format!("header {name} missing (needs {want:?})"));
            } else if !got.any(|v| v.as_bytes() == want.as_bytes()) {
                out.push(format!("header {name} is not {want:?}"));
            }
        }
        if self.audit {
            out.push("audit = true (dry run: it never decides)".into());
        }
        out
    }
}

fn list<T: Display>(items: &[T]) -> String {
    let mut out = String::from("[");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        let _ = write!(out, "{item}");
    }
    out.push(']');
    out
}

impl Compiled {
    /// Whether `source` may still get some request through: in audit mode every request
    /// does (a denial is only logged); otherwise an enforced allow rule can match it (or
    /// the default allows), and no enforced deny rule shuts it out whole. Used to end
    /// long-lived connections after a reload; cost grows with the source's rules.
    pub(super) fn admits(&self, source: &SpiffeId, now: SystemTime) -> bool {
        if self.mode == Mode::Audit {
            return true;
        }
        let mut allowed = self.default == Action::Allow;
        let mut shut_out = false;
        self.index.for_each_match(source, &mut |bucket| {
            for rule in bucket
                .rules()
                .iter()
                .filter_map(|&n| self.rules.get(n as usize))
            {
                if rule.audit
                    || !rule.is_live(now)
                    || rule.not_from().iter().any(|p| p.matches(source))
                {
                    continue;
                }
                match rule.action {
                    Action::Allow => allowed = true,
                    Action::Deny => shut_out |= rule.applies_to_every_request(),
                }
            }
        });
        allowed && !shut_out
    }

    /// The decision for `req` at `now`; `mode` says whether a deny is enforced.
    pub(super) fn decide(&self, req: &Request<'_>, now: SystemTime, mode: Mode) -> Decision {
        let mut best: [Option<u32>; 4] = [None; 4];
        let check_expiry = !self.expiries.is_empty();
        self.index.for_each_match(req.source, &mut |bucket| {
            bucket.for_each_list(req.path, &mut |rules| {
                for &n in rules {
                    let Some(rule) = self.rules.get(n as usize) else {
                        continue;
                    };
                    let slot = &mut best[slot_of(rule)];
                    if slot.is_some_and(|b| b <= n) || (check_expiry && !rule.is_live(now)) {
                        continue;
                    }
                    if rule.matches_rest(req) {
                        *slot = Some(n);
                    }
                }
            })
        });
        let name = |n: u32| self.rules.get(n as usize).map(|r| Arc::clone(&r.name));
        let (verdict, rule) = match (best[DENY], best[ALLOW]) {
            (Some(n), _) => (Verdict::Deny, Some(n)),
            (None, Some(n)) => (Verdict::Allow, Some(n)),
            (None, None) => match self.default {
                Action::Allow => (Verdict::Allow, None),
                Action::Deny => (Verdict::Deny, None),
            },
        };
        // What would have decided had audit rules been enforced.
        let earliest = |a: Option<u32>, b: Option<u32>| a.into_iter().chain(b).min();
        let would =
            earliest(best[DENY], best[AUDIT_DENY]).or(earliest(best[ALLOW], best[AUDIT_ALLOW]));
        let audit_rule = would
            .filter(|&n| self.rules.get(n as usize).is_some_and(|r| r.audit))
            .and_then(name);
        let verdict = if verdict == Verdict::Deny && mode == Mode::Audit {
            Verdict::AuditDeny
        } else {
            verdict
        };
        let break_glass = rule
            .and_then(|n| self.rules.get(n as usize))
            .is_some_and(|r| r.expires().is_some());
        Decision {
            verdict,
            rule: rule.and_then(name),
            audit_rule,
            break_glass,
        }
    }

    /// A one-line reason for `decision`; for a denial, the closest allow rule and what failed on it.
    pub(super) fn explain(
        &self,
        req: &Request<'_>,
        decision: &Decision,
        now: SystemTime,
    ) -> String {
        let find = |name: &str| self.rules.iter().find(|r| &*r.name == name);
        let mut out = match decision.rule.as_deref().and_then(find) {
            Some(rule) if rule.action == Action::Allow => {
                format!("rule {} allows this request", rule.name)
            }
            Some(rule) => format!(
                "deny rule {} matches (a matching deny rule wins over every allow rule)",
                rule.name
            ),
            None => format!("no rule matched; the default is {}", self.default.as_str()),
        };
        if decision.verdict != Verdict::Allow {
            out.push_str("; ");
            out.push_str(&self.closest_allow(req, now));
        }
        if decision.verdict == Verdict::AuditDeny {
            out.push_str(" (mode = \"audit\": logged as audit_deny, the request passes)");
        }
        if let Some(rule) = decision.audit_rule.as_deref().and_then(find) {
            let verb = match rule.action {
                Action::Allow => "allowed",
                Action::Deny => "denied",
            };
            let _ = write!(out, "; audit rule {} would have {verb} it", rule.name);
        }
        out
    }

    /// The allow rule with the fewest failing fields (first in file order on a tie).
    fn closest_allow(&self, req: &Request<'_>, now: SystemTime) -> String {
        let closest = self
            .rules
            .iter()
            .filter(|r| r.action == Action::Allow)
            .map(|r| (r, r.failures(req, now)))
            .min_by_key(|(_, failures)| failures.len());
        match closest {
            None => "the policy has no allow rules".into(),
            Some((rule, failures)) if failures.is_empty() => {
                format!("allow rule {} matches but a deny rule wins", rule.name)
            }
            Some((rule, failures)) => {
                format!("closest allow rule {}: {}", rule.name, failures.join("; "))
            }
        }
    }
}

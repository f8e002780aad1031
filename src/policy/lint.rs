//! Warnings about a policy that compiles but does not do what it says: rules already
//! expired, methods in lower case (which clients never send), allow rules a deny rule fully covers (shadowed), and rules or patterns that can
//! never match (a principal of a trust domain with no bundle, a rule excluding all it
//! includes). Used by `idgate validate`.
//!
//! Every "covers" test here is conservative: a warning is only given when coverage is
//! certain, so a warning is always worth reading. Duplicate rule names never get here:
//! compilation refuses them.

use std::time::SystemTime;

use time::format_description::well_known::Rfc3339;

use super::model::{Action, RawPolicy};
use super::path::PathPattern;
use super::principal::{PrincipalPattern, Segment};
use super::rule::Rule;
use super::Policy;
use crate::config::{FileError, SourceFile};

/// What `validate` knows about the deployment the policy runs in.
#[derive(Debug, Clone)]
pub struct LintContext {
    /// Rules expiring at or before this instant are reported as expired.
    pub now: SystemTime,
    /// Trust domains with a bundle (`None`: unknown, e.g. SPIRE delivers them at run time).
    pub trust_domains: Option<Vec<String>>,
}

/// Compiles `source` and returns its warnings, each naming file, line and field
/// (`rule[i].field`). `Err` when the policy does not compile at all.
pub fn lint(source: &SourceFile, context: &LintContext) -> Result<Vec<FileError>, FileError> {
    let policy = Policy::from_source(source)?;
    let raw: RawPolicy = source.parse()?;
    let rules = &policy.compiled.rules;
    let mut out = Vec::new();
    for (i, (rule, raw_rule)) in rules.iter().zip(&raw.rules).enumerate() {
        let at = |span: std::ops::Range<usize>, key: &str, msg: String| {
            source.error_at(span, &format!("rule[{i}].{key}"), msg)
        };
        if let (Some((when, text)), Some(raw_expires)) = (rule.expires(), &raw_rule.expires) {
            if when <= context.now {
                let text = text.format(&Rfc3339).unwrap_or_else(|_| text.to_string());
                out.push(at(
                    raw_expires.span(),
                    "expires",
                    format!("rule {:?} expired at {text} and no longer applies; remove it or move expires", rule.name),
                ));
            }
        }
        for (j, method) in raw_rule.methods.iter().enumerate() {
            let name = method.get_ref();
            if name.bytes().any(|b| b.is_ascii_lowercase()) {
                let upper = name.to_ascii_uppercase();
                out.push(at(method.span(), &format!("methods[{j}]"), format!(
                    "{name:?} has lower-case letters: methods are case-sensitive and clients send them in upper case, so it will not match {upper:?}; write {upper:?} if that is meant"
                )));
            }
        }
        if let Some(domains) = &context.trust_domains {
            for (j, (pattern, raw_from)) in rule.from.iter().zip(&raw_rule.from).enumerate() {
                let Some(td) = trust_domain(pattern) else {
                    continue;
                };
                if !domains.iter().any(|d| d == td) {
                    out.push(at(raw_from.span(), &format!("from[{j}]"), format!(
                        "{pattern} can never match: no trust bundle is configured for trust domain {td} (bundles: {}); add it under [identity.federation] or remove the pattern",
                        domains.join(", ")
                    )));
                }
            }
        }
        let sources = effective_from(rule);
        if !rule.not_from().is_empty()
            && sources
                .iter()
                .all(|p| rule.not_from().iter().any(|q| principal_covers(q, p)))
        {
            let span = raw_rule
                .not_from
                .first()
                .map_or(raw_rule.name.span(), |s| s.span());
            out.push(at(
                span,
                "not_from",
                format!(
                    "rule {:?} can never match: not_from excludes every source its from includes",
                    rule.name
                ),
            ));
        }
        let paths = effective_paths(rule);
        if !rule.not_paths().is_empty()
            && paths
                .iter()
                .all(|p| rule.not_paths().iter().any(|q| path_covers(q, p)))
        {
            let span = raw_rule
                .not_paths
                .first()
                .map_or(raw_rule.name.span(), |s| s.span());
            out.push(at(
                span,
                "not_paths",
                format!(
                    "rule {:?} can never match: not_paths excludes every path its paths include",
                    rule.name
                ),
            ));
        }
        if rule.action == Action::Allow && !rule.audit {
            let shadow = rules.iter().enumerate().find(|(_, d)| {
                d.action == Action::Deny
                    && !d.audit
                    && d.is_live(context.now)
                    && deny_covers(d, rule)
            });
            if let Some((k, deny)) = shadow {
                out.push(at(raw_rule.name.span(), "name", format!(
                    "allow rule {:?} is shadowed by deny rule {:?} (rule[{k}]): every request it matches is denied (deny rules win)",
                    rule.name, deny.name
                )));
            }
        }
    }
    Ok(out)
}

fn trust_domain(pattern: &PrincipalPattern) -> Option<&str> {
    match pattern {
        PrincipalPattern::Any => None,
        PrincipalPattern::Exact(id) => Some(id.trust_domain_name()),
        PrincipalPattern::Segments { trust_domain, .. } => Some(trust_domain),
    }
}

/// `from`, with an empty list meaning any peer.
fn effective_from(rule: &Rule) -> Vec<PrincipalPattern> {
    match rule.from.is_empty() {
        true => vec![PrincipalPattern::Any],
        false => rule.from.to_vec(),
    }
}

/// `paths`, with an empty list meaning every path.
fn effective_paths(rule: &Rule) -> Vec<PathPattern> {
    match rule.paths.is_empty() {
        true => vec![PathPattern::Any],
        false => rule.paths.patterns().to_vec(),
    }
}

/// Whether every request `allow` matches is matched by `deny` (for the whole life of `allow`).
fn deny_covers(deny: &Rule, allow: &Rule) -> bool {
    let lifetime = match (deny.expires(), allow.expires()) {
        (None, _) => true,
        (Some((d, _)), Some((a, _))) => a <= d,
        (Some(_), None) => false,
    };
    let deny_from = effective_from(deny);
    let sources = effective_from(allow)
        .iter()
        .all(|p| deny_from.iter().any(|q| principal_covers(q, p)))
        && deny
            .not_from()
            .iter()
            .all(|q| allow.not_from().iter().any(|p| principal_covers(p, q)));
    let methods = deny.methods.is_empty()
        || (!allow.methods.is_empty() && allow.methods.iter().all(|m| deny.methods.contains(m)));
    let deny_paths = effective_paths(deny);
    let paths = effective_paths(allow)
        .iter()
        .all(|p| deny_paths.iter().any(|q| path_covers(q, p)))
        && deny
            .not_paths()
            .iter()
            .all(|q| allow.not_paths().iter().any(|p| path_covers(p, q)));
    let headers = deny.headers().iter().all(|h| allow.headers().contains(h));
    lifetime && sources && methods && paths && headers
}

/// Whether `outer` matches every source `inner` matches.
fn principal_covers(outer: &PrincipalPattern, inner: &PrincipalPattern) -> bool {
    use PrincipalPattern::{Any, Exact, Segments};
    match (outer, inner) {
        (Any, _) => true,
        (_, Any) => false,
        (Exact(a), Exact(b)) => a.as_str() == b.as_str(),
        (Exact(_), Segments { .. }) => false,
        (Segments { .. }, Exact(id)) => outer.matches(id),
        (
            Segments {
                trust_domain: d1,
                segments: s1,
                tail: t1,
            },
            Segments {
                trust_domain: d2,
                segments: s2,
                tail: t2,
            },
        ) => {
            let each = s1.iter().zip(s2.iter()).all(|(o, i)| match (o, i) {
                (Segment::One, _) => true,
                (Segment::Literal(a), Segment::Literal(b)) => a == b,
                (Segment::Literal(_), Segment::One) => false,
            });
            let length = match t1 {
                false => !t2 && s1.len() == s2.len(),
                true => s2.len() > s1.len() || (*t2 && s2.len() == s1.len()),
            };
            d1 == d2 && s2.len() >= s1.len() && each && length
        }
    }
}

/// Whether `outer` matches every path `inner` matches.
fn path_covers(outer: &PathPattern, inner: &PathPattern) -> bool {
    use PathPattern::{Any, Exact, Prefix, Suffix};
    match (outer, inner) {
        (Any, _) => true,
        (_, Any) => false,
        (Exact(a), Exact(b)) => a == b,
        (Prefix(a), Exact(b) | Prefix(b)) => b.starts_with(&**a),
        (Suffix(a), Exact(b) | Suffix(b)) => b.ends_with(&**a),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lint_text(text: &str, domains: Option<&[&str]>) -> Vec<String> {
        let source = SourceFile {
            path: "p.toml".into(),
            text: text.into(),
        };
        let context = LintContext {
            now: SystemTime::now(),
            trust_domains: domains.map(|d| d.iter().map(|s| s.to_string()).collect()),
        };
        lint(&source, &context)
            .unwrap()
            .iter()
            .map(|e| e.to_string())
            .collect()
    }

    fn rule(name: &str, action: &str, body: &str) -> String {
        format!("[[rule]]\nname = {name:?}\naction = {action:?}\n{body}\n")
    }

    #[test]
    fn expired_rules() {
        let text = [
            rule("old", "allow", "expires = \"2020-01-01T00:00:00Z\""),
            rule("later", "allow", "expires = \"2999-01-01T00:00:00Z\""),
        ]
        .concat();
        assert_eq!(
            lint_text(&text, None),
            ["p.toml:4: rule[0].expires: rule \"old\" expired at 2020-01-01T00:00:00Z and no longer applies; remove it or move expires"]
        );
    }

    #[test]
    fn lower_case_methods() {
        let text = rule("purge", "deny", "methods = [\"GET\", \"purge\"]");
        assert_eq!(
            lint_text(&text, None),
            ["p.toml:4: rule[0].methods[1]: \"purge\" has lower-case letters: methods are case-sensitive and clients send them in upper case, so it will not match \"PURGE\"; write \"PURGE\" if that is meant"]
        );
    }

    #[test]
    fn shadowed_allow_rules() {
        let text = [
            rule("reads", "allow", "from = [\"spiffe://e.org/ns/a/sa/x\"]\nmethods = [\"GET\"]\npaths = [\"/admin/users\", \"/admin/*\"]"),
            rule("wide", "allow", "from = [\"spiffe://e.org/*\"]\npaths = [\"/admin/*\"]"),
            rule("other", "allow", "from = [\"spiffe://e.org/ns/a/sa/x\"]\npaths = [\"/api\"]"),
            rule("headers", "allow", "from = [\"spiffe://e.org/ns/a/sa/x\"]\npaths = [\"/admin\"]"),
            rule("no-admin", "deny", "from = [\"spiffe://e.org/ns/*/sa/x\", \"spiffe://e.org/ns/b/*\"]\npaths = [\"/admin\", \"/admin/*\"]"),
            rule("trial", "deny", "audit = true\npaths = [\"/api\"]"),
        ]
        .concat();
        let warnings = lint_text(&text, None);
        assert_eq!(
            warnings,
            ["p.toml:2: rule[0].name: allow rule \"reads\" is shadowed by deny rule \"no-admin\" (rule[4]): every request it matches is denied (deny rules win)",
             "p.toml:18: rule[3].name: allow rule \"headers\" is shadowed by deny rule \"no-admin\" (rule[4]): every request it matches is denied (deny rules win)"],
        );
    }

    #[test]
    fn patterns_that_never_match() {
        let text = [
            rule(
                "partner",
                "allow",
                "from = [\"spiffe://e.org/a\", \"spiffe://partner.org/*\"]",
            ),
            rule(
                "nobody",
                "allow",
                "from = [\"spiffe://e.org/ns/a/*\"]\nnot_from = [\"spiffe://e.org/ns/*\"]",
            ),
            rule(
                "nopath",
                "allow",
                "paths = [\"/a/b\"]\nnot_paths = [\"/a/*\"]",
            ),
        ]
        .concat();
        let warnings = lint_text(&text, Some(&["e.org"]));
        assert_eq!(warnings.len(), 3, "{warnings:#?}");
        assert!(warnings[0].starts_with("p.toml:4: rule[0].from[1]: spiffe://partner.org/* can never match: no trust bundle is configured for trust domain partner.org (bundles: e.org)"), "{}", warnings[0]);
        assert!(
            warnings[1].starts_with("p.toml:9: rule[1].not_from: rule \"nobody\" can never match"),
            "{}",
            warnings[1]
        );
        assert!(
            warnings[2]
                .starts_with("p.toml:14: rule[2].not_paths: rule \"nopath\" can never match"),
            "{}",
            warnings[2]
        );
        // Trust domains unknown (SPIRE): no trust-domain warnings.
        assert_eq!(lint_text(&text, None).len(), 2);
    }

    #[test]
    fn principal_and_path_coverage() {
        let p = |s: &str| PrincipalPattern::parse(s).unwrap();
        assert!(principal_covers(
            &p("spiffe://e.org/*"),
            &p("spiffe://e.org/a/*")
        ));
        assert!(principal_covers(
            &p("spiffe://e.org/ns/*/sa/x"),
            &p("spiffe://e.org/ns/a/sa/x")
        ));
        assert!(principal_covers(
            &p("spiffe://e.org/ns/*"),
            &p("spiffe://e.org/ns/a/sa/x")
        ));
        assert!(!principal_covers(
            &p("spiffe://e.org/ns/*"),
            &p("spiffe://e.org/ns")
        ));
        assert!(!principal_covers(
            &p("spiffe://e.org/ns/a"),
            &p("spiffe://e.org/ns/*")
        ));
        assert!(!principal_covers(
            &p("spiffe://e.org/ns/*/x"),
            &p("spiffe://e.org/ns/a/*")
        ));
        assert!(!principal_covers(
            &p("spiffe://f.org/*"),
            &p("spiffe://e.org/a")
        ));
        let q = |s: &str| PathPattern::parse(s).unwrap();
        assert!(path_covers(&q("/a/*"), &q("/a/b/*")));
        assert!(path_covers(&q("*.json"), &q("/a/b.json")));
        assert!(!path_covers(&q("/a/*"), &q("/a")));
        assert!(!path_covers(&q("/a/b"), &q("*")));
    }
}

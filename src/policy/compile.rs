//! Turning the file model into compiled rules and the principal index.
//!
//! Every semantic check lives here and names file, line and field through
//! `SourceFile::error_at`, so a policy that compiles is one the matcher can judge.
//! Compilation runs once per load; it must never run per request.

use std::collections::HashMap;
use std::time::SystemTime;

use http::{HeaderName, HeaderValue, Method};

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use toml::Spanned;

use super::bucket::Bucket;
use super::expiry::Expiries;
use super::model::{Action, Mode, RawPolicy, RawRule};
use super::path::{PathPattern, PathSet};
use super::principal::{PrincipalIndex, PrincipalPattern};
use super::rule::{Rare, Rule};
use super::stats::{RuleStats, DEFAULT_RULE};
use super::Policy;
use crate::config::{FileError, SourceFile};

/// Everything `Policy` holds, built from one file.
#[derive(Debug)]
pub(super) struct Compiled {
    pub mode: Mode,
    pub default: Action,
    pub version: String,
    pub rules: Vec<Rule>,
    pub index: PrincipalIndex<Bucket>,
    /// Every rule's `expires`, earliest first (empty: the clock never matters).
    pub expiries: Expiries,
    pub tcp_violation: Option<FileError>,
    pub stats: RuleStats,
}

/// Parses, checks and indexes a policy file.
pub(super) fn compile(source: &SourceFile) -> Result<Compiled, FileError> {
    let raw: RawPolicy = source.parse()?;
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut rules = Vec::with_capacity(raw.rules.len());
    let mut tcp_violation = None;
    for (i, r) in raw.rules.iter().enumerate() {
        let field = format!("rule[{i}]");
        let name = r.name.get_ref().as_str();
        if name.trim().is_empty() {
            return Err(source.error_at(
                r.name.span(),
                &format!("{field}.name"),
                "a rule needs a name",
            ));
        }
        if name == DEFAULT_RULE {
            return Err(source.error_at(
                r.name.span(),
                &format!("{field}.name"),
                format!(
                    "{name:?} is reserved: it names the policy's default in decisions and metrics"
                ),
            ));
        }
        if let Some(first) = names.insert(name, i) {
            return Err(source.error_at(
                r.name.span(),
                &format!("{field}.name"),
                format!(
                    "duplicate rule name {name:?} (also rule[{first}]); rule names must be unique"
                ),
            ));
        }
        if tcp_violation.is_none() {
            tcp_violation = tcp_only_violation(source, &field, r);
        }
        rules.push(compile_rule(source, &field, r)?);
    }
    let mut index = PrincipalIndex::<Bucket>::default();
    for (n, rule) in rules.iter().enumerate() {
        let n = u32::try_from(n).map_err(|_| FileError::file(&source.path, "too many rules"))?;
        if rule.from.is_empty() {
            index.slot(&PrincipalPattern::Any).push(n);
        }
        for pattern in &rule.from {
            index.slot(pattern).push(n);
        }
    }
    index.for_each_mut(&mut |bucket| bucket.finish(&rules));
    Ok(Compiled {
        mode: raw.mode,
        default: raw.default,
        version: Policy::version_of(&source.text),
        expiries: Expiries::new(&rules),
        stats: RuleStats::new(&rules),
        rules,
        index,
        tcp_violation,
    })
}

fn compile_rule(source: &SourceFile, field: &str, r: &RawRule) -> Result<Rule, FileError> {
    let principals = |list: &[Spanned<String>], key: &str| {
        list.iter()
            .enumerate()
            .map(|(j, p)| {
                PrincipalPattern::parse(p.get_ref())
                    .map_err(|e| source.error_at(p.span(), &format!("{field}.{key}[{j}]"), e))
            })
            .collect::<Result<Box<[_]>, _>>()
    };
    let paths = |list: &[Spanned<String>], key: &str| {
        list.iter()
            .enumerate()
            .map(|(j, p)| {
                PathPattern::parse(p.get_ref())
                    .map_err(|e| source.error_at(p.span(), &format!("{field}.{key}[{j}]"), e))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(PathSet::new)
    };
    let methods = r
        .methods
        .iter()
        .enumerate()
        .map(|(j, m)| {
            parse_method(m.get_ref())
                .map_err(|e| source.error_at(m.span(), &format!("{field}.methods[{j}]"), e))
        })
        .collect::<Result<Box<[_]>, _>>()?;
    let headers = r
        .headers
        .iter()
        .map(|(name, value)| {
            let at = |msg: String| {
                source.error_at(value.span(), &format!("{field}.headers.{name}"), msg)
            };
            let header = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| at(format!("{name:?} is not a valid header name")))?;
            let value = HeaderValue::from_str(value.get_ref())
                .map_err(|_| at(format!("{:?} is not a valid header value", value.get_ref())))?;
            Ok((header, value))
        })
        .collect::<Result<Box<[_]>, FileError>>()?;
    let expires = match &r.expires {
        None => None,
        Some(e) => Some(
            parse_expires(e.get_ref())
                .map_err(|msg| source.error_at(e.span(), &format!("{field}.expires"), msg))?,
        ),
    };
    let rare = Rare {
        expires,
        not_from: principals(&r.not_from, "not_from")?,
        not_paths: paths(&r.not_paths, "not_paths")?,
        headers,
    };
    Ok(Rule {
        name: r.name.get_ref().as_str().into(),
        action: r.action,
        audit: r.audit,
        from: principals(&r.from, "from")?,
        methods,
        paths: paths(&r.paths, "paths")?,
        rare: rare.boxed(),
    })
}

/// A method name as written (`http::Method` keeps standard and short names inline).
/// A rule's method as the policy file may write it: an RFC 9110 token, the standard
/// methods in upper case.
pub(super) fn parse_method(method: &str) -> Result<Method, String> {
    const KNOWN: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
    ];
    if method == "*" {
        return Err("\"*\" is not a wildcard here: leave `methods` out to match any method".into());
    }
    let upper = method.to_ascii_uppercase();
    if upper != method && KNOWN.contains(&upper.as_str()) {
        return Err(format!("methods are case-sensitive; write {upper:?}"));
    }
    // An RFC 9110 token, as `Method::from_bytes` checks it.
    Method::from_bytes(method.as_bytes())
        .map_err(|_| format!("{method:?} is not an HTTP method name"))
}

fn parse_expires(value: &toml::Value) -> Result<(SystemTime, OffsetDateTime), String> {
    let text = match value {
        toml::Value::String(s) => s.clone(),
        toml::Value::Datetime(d) => d.to_string(),
        _ => return Err("expected an RFC 3339 date-time such as \"2026-12-01T00:00:00Z\"".into()),
    };
    let at = OffsetDateTime::parse(&text, &Rfc3339).map_err(|e| {
        format!("{text:?} is not an RFC 3339 date-time with offset (such as \"2026-12-01T00:00:00Z\"): {e}")
    })?;
    Ok((SystemTime::from(at), at))
}

/// The first field that a TCP listener cannot judge (there is no method, path or header).
fn tcp_only_violation(source: &SourceFile, field: &str, r: &RawRule) -> Option<FileError> {
    let lists = [
        ("methods", &r.methods),
        ("paths", &r.paths),
        ("not_paths", &r.not_paths),
    ];
    let first = lists
        .iter()
        .find_map(|(key, list)| list.first().map(|v| (*key, v.span())))
        .or_else(|| r.headers.values().next().map(|v| ("headers", v.span())))?;
    Some(source.error_at(
        first.1,
        &format!("{field}.{}", first.0),
        "a TCP listener's policy may use only from, not_from and expires; remove this field or use protocol = \"http\"",
    ))
}

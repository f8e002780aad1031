//! Learning a least-privilege policy from observed flows (`idgate policy learn`).
//!
//! Paths are generalised the way a human would: numeric, UUID-like and long hex segments
//! become `/*` (a prefix, the only wildcard the path language has); literal routes stay
//! distinct. Rules group the patterns of one source that share exactly the same method
//! set, so a rule never allows a (method, path) pair that was not observed. It never reads
//! files: the CLI feeds it flows and writes the text it renders.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use super::normalize_path;
use super::path::PathPattern;
use crate::spiffe_id::SpiffeId;

/// Observed flows, accumulated per source, then rendered as a policy file.
#[derive(Debug, Default)]
pub struct Learner {
    /// Source ID -> path pattern -> method -> requests.
    http: BTreeMap<String, BTreeMap<String, BTreeMap<String, u64>>>,
    /// Source ID -> connections (TCP lines: identity only).
    tcp: BTreeMap<String, u64>,
}

/// The rendered policy and what the caller should tell the user.
#[derive(Debug)]
pub struct Learned {
    /// The policy file's text.
    pub text: String,
    /// Number of `[[rule]]` tables.
    pub rules: usize,
    /// Things left out, one sentence each.
    pub notes: Vec<String>,
}

impl Learner {
    /// Records one allowed HTTP request; `Err` says why it cannot be learned.
    pub fn add_http(&mut self, source: &SpiffeId, method: &str, path: &str) -> Result<(), String> {
        if method.is_empty() || !method.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!("method {method:?} is not an HTTP method name"));
        }
        if path.contains('*') || normalize_path(path).map_or(true, |n| n != path) {
            return Err(format!(
                "path {path:?} is not a normalised path without '*'; it cannot be a pattern"
            ));
        }
        let pattern = path_pattern(path);
        *self
            .http
            .entry(source.as_str().to_string())
            .or_default()
            .entry(pattern)
            .or_default()
            .entry(method.to_string())
            .or_default() += 1;
        Ok(())
    }

    /// Records one allowed TCP connection (no method or path: an identity-only flow).
    pub fn add_tcp(&mut self, source: &SpiffeId) {
        *self.tcp.entry(source.as_str().to_string()).or_default() += 1;
    }

    /// Renders the policy: `header` lines become comments at the top.
    pub fn render(mut self, header: &[String]) -> Learned {
        let mut notes = Vec::new();
        let mut out = String::new();
        for line in header {
            let _ = writeln!(out, "# {line}");
        }
        out.push_str("mode = \"enforce\"\ndefault = \"deny\"\n");
        let mut names = BTreeSet::new();
        let mut rules = 0;
        if !self.http.is_empty() && !self.tcp.is_empty() {
            let connections: u64 = self.tcp.values().sum();
            notes.push(format!(
                "{connections} TCP connection(s) skipped: the logs also hold HTTP requests, and an identity-only rule would allow every HTTP request of its source (learn one listener at a time with --listener)"
            ));
            self.tcp.clear();
        }
        for (source, connections) in &self.tcp {
            let name = unique(&mut names, base_name(source));
            let _ = write!(
                out,
                "\n# {source}: {connections} connection(s)\n[[rule]]\nname = {}\naction = \"allow\"\nfrom = [{}]\n",
                quote(&name),
                quote(source)
            );
            rules += 1;
        }
        for (source, patterns) in &mut self.http {
            prune_covered(patterns);
            let groups = group_by_methods(patterns);
            let base = base_name(source);
            let total: u64 = patterns.values().flat_map(|m| m.values()).sum();
            let _ = write!(out, "\n# {source}: {total} request(s)");
            for (methods, paths) in &groups {
                let name = match groups.len() {
                    1 => base.clone(),
                    _ => format!("{base}-{}", methods.join("-").to_ascii_lowercase()),
                };
                let name = unique(&mut names, sanitise(&name));
                let methods: Vec<String> = methods.iter().map(|m| quote(m)).collect();
                let _ = write!(
                    out,
                    "\n[[rule]]\nname = {}\naction = \"allow\"\nfrom = [{}]\nmethods = [{}]\npaths = [\n",
                    quote(&name),
                    quote(source),
                    methods.join(", ")
                );
                for (pattern, count) in paths {
                    let _ = writeln!(out, "  {},  # {count} request(s)", quote(pattern));
                }
                out.push_str("]\n");
                rules += 1;
            }
        }
        Learned {
            text: out,
            rules,
            notes,
        }
    }
}

/// The pattern a human would write for an observed (normalised) path: everything from the
/// first numeric, UUID-like or long hex segment on becomes `/*`. A path whose first
/// segment is variable stays exact (`/*` would allow every path).
pub fn path_pattern(path: &str) -> String {
    let segments: Vec<&str> = path.get(1..).unwrap_or("").split('/').collect();
    match segments.iter().position(|s| is_variable(s)) {
        Some(i) if i > 0 => format!("/{}/*", segments[..i].join("/")),
        _ => path.to_string(),
    }
}

/// Whether a path segment looks like an identifier rather than a route: all digits, a
/// UUID (8-4-4-4-12 hex), or at least 12 hex digits with at least one decimal digit.
pub fn is_variable(segment: &str) -> bool {
    let hex = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit());
    if !segment.is_empty() && segment.bytes().all(|b| b.is_ascii_digit()) {
        return true;
    }
    let parts: Vec<&str> = segment.split('-').collect();
    let uuid = parts.len() == 5
        && parts.iter().map(|p| p.len()).eq([8, 4, 4, 4, 12])
        && parts.iter().all(|p| hex(p));
    uuid || (segment.len() >= 12 && hex(segment) && segment.bytes().any(|b| b.is_ascii_digit()))
}

/// A rule name for a source: `NS-SA` for `.../ns/NS/sa/SA`, else its last two path
/// segments (the trust domain when it has none), sanitised to `[a-z0-9-]`.
pub fn base_name(source: &str) -> String {
    let rest = source.strip_prefix("spiffe://").unwrap_or(source);
    let (domain, path) = rest.split_once('/').unwrap_or((rest, ""));
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let picked = match segments.as_slice() {
        ["ns", ns, "sa", sa] => vec![*ns, *sa],
        [] => vec![domain],
        more => more[more.len().saturating_sub(2)..].to_vec(),
    };
    let name = sanitise(&picked.join("-"));
    if name.is_empty() {
        "source".into()
    } else {
        name
    }
}

/// Lowercase ASCII letters, digits and single dashes.
fn sanitise(raw: &str) -> String {
    let mut out = String::new();
    for c in raw.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
    }
    out.trim_end_matches('-').to_string()
}

/// `name`, or `name-2`, `name-3`, ... when taken; records the result.
fn unique(taken: &mut BTreeSet<String>, name: String) -> String {
    let mut candidate = name.clone();
    let mut n = 2;
    while taken.contains(&candidate) {
        candidate = format!("{name}-{n}");
        n += 1;
    }
    taken.insert(candidate.clone());
    candidate
}

/// Removes (pattern, method) pairs that a broader prefix pattern with the same method
/// already allows, adding their counts to the shortest such prefix (which stays).
fn prune_covered(patterns: &mut BTreeMap<String, BTreeMap<String, u64>>) {
    let pairs: Vec<(String, String)> = patterns
        .iter()
        .flat_map(|(p, methods)| methods.keys().map(move |m| (p.clone(), m.clone())))
        .collect();
    for (key, method) in pairs {
        let body = key.strip_suffix('*').unwrap_or(&key);
        let cover = patterns
            .iter()
            .filter_map(|(p, methods)| Some((p.strip_suffix('*')?, methods)))
            .filter(|(prefix, methods)| {
                body.starts_with(prefix) && *prefix != body && methods.contains_key(&method)
            })
            .map(|(prefix, _)| format!("{prefix}*"))
            .min_by_key(String::len);
        let Some(cover) = cover else {
            continue;
        };
        let moved = patterns
            .get_mut(&key)
            .and_then(|m| m.remove(&method))
            .unwrap_or(0);
        if let Some(count) = patterns.get_mut(&cover).and_then(|m| m.get_mut(&method)) {
            *count += moved;
        }
    }
    patterns.retain(|_, methods| !methods.is_empty());
}

/// Method set -> (pattern, requests), each pattern observed with exactly those methods.
fn group_by_methods(
    patterns: &BTreeMap<String, BTreeMap<String, u64>>,
) -> BTreeMap<Vec<String>, Vec<(String, u64)>> {
    let mut groups: BTreeMap<Vec<String>, Vec<(String, u64)>> = BTreeMap::new();
    for (pattern, methods) in patterns {
        if PathPattern::parse(pattern).is_err() {
            continue;
        }
        let set: Vec<String> = methods.keys().cloned().collect();
        groups
            .entry(set)
            .or_default()
            .push((pattern.clone(), methods.values().sum()));
    }
    groups
}

/// A TOML basic string (JSON string escapes are valid TOML escapes).
fn quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variable_segments() {
        for s in [
            "42",
            "0",
            "123e4567-e89b-12d3-a456-426614174000",
            "507f1f77bcf86cd799439011",
        ] {
            assert!(is_variable(s), "{s}");
        }
        for s in [
            "",
            "invoices",
            "v2",
            "deadbeefcafe",
            "abc123",
            "123e4567-e89b-12d3-a456",
            "12a",
        ] {
            assert!(!is_variable(s), "{s}");
        }
    }

    #[test]
    fn path_patterns() {
        assert_eq!(path_pattern("/api/invoices/42"), "/api/invoices/*");
        assert_eq!(path_pattern("/api/invoices/77"), "/api/invoices/*");
        assert_eq!(path_pattern("/api/invoices"), "/api/invoices");
        assert_eq!(
            path_pattern("/api/invoices/summary"),
            "/api/invoices/summary"
        );
        assert_eq!(path_pattern("/api/invoices/42/items/7"), "/api/invoices/*");
        assert_eq!(
            path_pattern("/u/123e4567-e89b-12d3-a456-426614174000/avatar"),
            "/u/*"
        );
        assert_eq!(path_pattern("/42"), "/42");
        assert_eq!(path_pattern("/"), "/");
        assert_eq!(path_pattern("/api/"), "/api/");
    }

    #[test]
    fn rule_names() {
        assert_eq!(
            base_name("spiffe://example.org/ns/shop/sa/frontend"),
            "shop-frontend"
        );
        assert_eq!(
            base_name("spiffe://example.org/svc/Web_API/v1"),
            "web-api-v1"
        );
        assert_eq!(base_name("spiffe://example.org/billing"), "billing");
        assert_eq!(base_name("spiffe://partner.org"), "partner-org");
        assert_eq!(base_name("spiffe://e.org/%%/__"), "source");
        let mut taken = BTreeSet::new();
        assert_eq!(unique(&mut taken, "a".into()), "a");
        assert_eq!(unique(&mut taken, "a".into()), "a-2");
        assert_eq!(unique(&mut taken, "a".into()), "a-3");
    }

    fn id(s: &str) -> SpiffeId {
        SpiffeId::parse(s).unwrap()
    }

    #[test]
    fn never_crosses_methods_and_paths() {
        let mut learner = Learner::default();
        let a = id("spiffe://e.org/ns/x/sa/a");
        learner.add_http(&a, "GET", "/a").unwrap();
        learner.add_http(&a, "POST", "/b").unwrap();
        learner.add_http(&a, "GET", "/c/1").unwrap();
        learner.add_http(&a, "GET", "/c/2").unwrap();
        learner.add_http(&a, "GET", "/c/2/more").unwrap();
        learner.add_http(&a, "DELETE", "/c/3/more").unwrap();
        let learned = learner.render(&["test".into()]);
        let text = &learned.text;
        assert!(
            text.starts_with("# test\nmode = \"enforce\"\ndefault = \"deny\"\n"),
            "{text}"
        );
        assert_eq!(learned.rules, 3, "{text}");
        assert!(text.contains("name = \"x-a-delete-get\"\naction = \"allow\"\nfrom = [\"spiffe://e.org/ns/x/sa/a\"]\nmethods = [\"DELETE\", \"GET\"]\npaths = [\n  \"/c/*\",  # 4 request(s)\n]\n"), "{text}");
        assert!(text.contains("name = \"x-a-get\"\naction = \"allow\"\nfrom = [\"spiffe://e.org/ns/x/sa/a\"]\nmethods = [\"GET\"]\npaths = [\n  \"/a\",  # 1 request(s)\n]\n"), "{text}");
        assert!(text.contains("name = \"x-a-post\""), "{text}");
    }

    #[test]
    fn prunes_patterns_a_broader_prefix_allows() {
        let mut patterns: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
        let mut add = |p: &str, m: &str, n: u64| {
            patterns.entry(p.into()).or_default().insert(m.into(), n);
        };
        add("/a/*", "POST", 1);
        add("/a/b/*", "GET", 2);
        add("/a/b/c", "GET", 3);
        add("/a/b/c", "PUT", 4);
        add("/a/b/d/*", "GET", 5);
        add("/a", "GET", 6);
        prune_covered(&mut patterns);
        let flat: Vec<(String, Vec<(String, u64)>)> = patterns
            .into_iter()
            .map(|(p, m)| (p, m.into_iter().collect()))
            .collect();
        let want = |p: &str, m: &[(&str, u64)]| {
            (
                p.to_string(),
                m.iter()
                    .map(|(m, n)| (m.to_string(), *n))
                    .collect::<Vec<_>>(),
            )
        };
        assert_eq!(
            flat,
            vec![
                want("/a", &[("GET", 6)]),
                want("/a/*", &[("POST", 1)]),
                want("/a/b/*", &[("GET", 10)]),
                want("/a/b/c", &[("PUT", 4)]),
            ]
        );
    }

    #[test]
    fn refuses_unlearnable_paths_and_mixed_tcp() {
        let mut learner = Learner::default();
        let a = id("spiffe://e.org/a");
        assert!(learner.add_http(&a, "GET", "/x/*").is_err());
        assert!(learner.add_http(&a, "GET", "/x/../y").is_err());
        assert!(learner.add_http(&a, "GET", "x").is_err());
        learner.add_tcp(&a);
        let tcp_only = Learner {
            tcp: learner.tcp.clone(),
            ..Learner::default()
        }
        .render(&[]);
        assert_eq!(tcp_only.rules, 1);
        assert!(tcp_only.text.contains("from = [\"spiffe://e.org/a\"]\n"));
        learner.add_http(&a, "GET", "/y").unwrap();
        let mixed = learner.render(&[]);
        assert_eq!(mixed.rules, 1);
        assert_eq!(mixed.notes.len(), 1);
    }
}

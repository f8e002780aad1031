//! Learning a least-privilege policy from observed flows (`idgate policy learn`).
//!
//! Paths are generalised the way a human would: numeric, UUID-like and long hex segments
//! become `/*` (a prefix, the only wildcard the path language has); literal routes stay
//! distinct. A method goes to `prefix/*` only when it was observed on every route below the
//! prefix (else those requests keep their exact paths), and rules group the patterns of one
//! source that share exactly the same method set, so a rule never allows a method on an
//! observed route it was not observed with. It never reads files: the CLI feeds it flows
//! and writes the text it renders.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::ops::Bound;

use super::compile::parse_method;
use super::normalize_path;
use super::path::PathPattern;
use crate::spiffe_id::SpiffeId;

/// Observed flows, accumulated per source, then rendered as a policy file.
#[derive(Debug, Default)]
pub struct Learner {
    /// Source ID -> observed (normalised) path -> method -> requests.
    http: BTreeMap<String, Paths>,
    /// Source ID -> connections (TCP lines: identity only).
    tcp: BTreeMap<String, u64>,
}

/// Path -> method -> requests (observed paths, or the patterns they became).
type Paths = BTreeMap<String, BTreeMap<String, u64>>;

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
        // As the policy loader itself judges a rule's method, so a learned policy loads.
        parse_method(method).map_err(|e| format!("method {method:?}: {e}"))?;
        if path.contains('*') || normalize_path(path).map_or(true, |n| n != path) {
            return Err(format!(
                "path {path:?} is not a normalised path without '*'; it cannot be a pattern"
            ));
        }
        *self
            .http
            .entry(source.as_str().to_string())
            .or_default()
            .entry(path.to_string())
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
        for (source, paths) in &self.http {
            let (patterns, kept_exact) = generalise(paths);
            for (prefix, count) in kept_exact {
                notes.push(format!(
                    "{source}: {count} path(s) below {prefix}* kept exact: the routes below it were not all observed with the same methods"
                ));
            }
            let groups = group_by_methods(&patterns);
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

/// An observed path with each identifier segment replaced by `*`: the route it took.
fn route(path: &str) -> String {
    path.split('/')
        .map(|s| if is_variable(s) { "*" } else { s })
        .collect::<Vec<_>>()
        .join("/")
}

/// Turns one source's observed paths into patterns: each (path, method) goes to the
/// broadest `prefix/*` that its path generalises under and whose every observed route
/// (distinct [`route`]) was seen with that method; otherwise it keeps its exact path.
/// Also returns, per prefix, how many observed paths had to stay exact below it.
fn generalise(paths: &Paths) -> (Paths, BTreeMap<String, usize>) {
    let prefixes: BTreeSet<String> = paths
        .keys()
        .filter_map(|p| path_pattern(p).strip_suffix('*').map(str::to_string))
        .collect();
    // Prefix -> the methods observed on every route below it.
    let common: BTreeMap<&str, BTreeSet<&str>> = prefixes
        .iter()
        .map(|prefix| {
            let mut routes: BTreeMap<String, BTreeSet<&str>> = BTreeMap::new();
            for (path, methods) in
                paths.range::<str, _>((Bound::Included(prefix.as_str()), Bound::Unbounded))
            {
                if !path.starts_with(prefix.as_str()) {
                    break;
                }
                routes
                    .entry(route(path))
                    .or_default()
                    .extend(methods.keys().map(String::as_str));
            }
            let mut sets = routes.into_values();
            let first = sets.next().unwrap_or_default();
            let common = sets.fold(first, |acc, set| &acc & &set);
            (prefix.as_str(), common)
        })
        .collect();
    let mut patterns = Paths::new();
    let mut kept_exact: BTreeMap<String, BTreeSet<&str>> = BTreeMap::new();
    for (path, methods) in paths {
        for (method, count) in methods {
            let cover = common
                .iter()
                .filter(|(prefix, ok)| path.starts_with(*prefix) && ok.contains(method.as_str()))
                .map(|(prefix, _)| *prefix)
                .min_by_key(|prefix| prefix.len());
            let pattern = match cover {
                Some(prefix) => format!("{prefix}*"),
                None => {
                    if let Some(own) = path_pattern(path).strip_suffix('*') {
                        kept_exact.entry(own.to_string()).or_default().insert(path);
                    }
                    path.clone()
                }
            };
            *patterns
                .entry(pattern)
                .or_default()
                .entry(method.clone())
                .or_default() += count;
        }
    }
    let kept_exact = kept_exact
        .into_iter()
        .map(|(p, set)| (p, set.len()))
        .collect();
    (patterns, kept_exact)
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
    use super::super::{Policy, Request, Verdict};
    use super::*;
    use crate::config::SourceFile;

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
        // DELETE was seen on /c/*/more only, so it does not go to /c/* (that would allow
        // DELETE /c/1); GET was seen on both routes below /c/.
        assert!(text.contains("name = \"x-a-delete\"\naction = \"allow\"\nfrom = [\"spiffe://e.org/ns/x/sa/a\"]\nmethods = [\"DELETE\"]\npaths = [\n  \"/c/3/more\",  # 1 request(s)\n]\n"), "{text}");
        assert!(text.contains("name = \"x-a-get\"\naction = \"allow\"\nfrom = [\"spiffe://e.org/ns/x/sa/a\"]\nmethods = [\"GET\"]\npaths = [\n  \"/a\",  # 1 request(s)\n  \"/c/*\",  # 3 request(s)\n]\n"), "{text}");
        assert!(text.contains("name = \"x-a-post\""), "{text}");
        assert_eq!(
            learned.notes,
            ["spiffe://e.org/ns/x/sa/a: 1 path(s) below /c/* kept exact: the routes below it were not all observed with the same methods"]
        );
    }

    /// The learned policy, compiled, judges `(method, path)` for source `a`.
    fn allows(learned: &Learned, a: &SpiffeId, method: &str, path: &str) -> bool {
        let source = SourceFile {
            path: "learned.toml".into(),
            text: learned.text.clone(),
        };
        let policy = Policy::from_source(&source).unwrap();
        let headers = http::HeaderMap::new();
        let request = Request {
            source: a,
            method,
            path,
            headers: &headers,
        };
        policy.evaluate_enforced(&request).verdict == Verdict::Allow
    }

    #[test]
    fn methods_of_one_route_do_not_spread_to_its_siblings() {
        let mut learner = Learner::default();
        let a = id("spiffe://e.org/ns/x/sa/a");
        learner.add_http(&a, "GET", "/users/42/profile").unwrap();
        learner
            .add_http(&a, "DELETE", "/users/42/sessions")
            .unwrap();
        learner.add_http(&a, "GET", "/api/invoices/42").unwrap();
        learner.add_http(&a, "DELETE", "/api/invoices/7").unwrap();
        learner.add_http(&a, "GET", "/api/invoices/7").unwrap();
        learner
            .add_http(&a, "POST", "/api/invoices/summary")
            .unwrap();
        let learned = learner.render(&[]);
        let seen = [
            ("GET", "/users/42/profile"),
            ("DELETE", "/users/42/sessions"),
            ("GET", "/api/invoices/42"),
            ("DELETE", "/api/invoices/7"),
            ("GET", "/api/invoices/7"),
            ("POST", "/api/invoices/summary"),
        ];
        for (method, path) in seen {
            assert!(
                allows(&learned, &a, method, path),
                "{method} {path}\n{}",
                learned.text
            );
        }
        let unseen = [
            ("DELETE", "/users/42/profile"),
            ("GET", "/users/42/sessions"),
            ("GET", "/api/invoices/summary"),
            ("POST", "/api/invoices/42"),
            ("DELETE", "/api/invoices/summary"),
        ];
        for (method, path) in unseen {
            assert!(
                !allows(&learned, &a, method, path),
                "{method} {path}\n{}",
                learned.text
            );
        }
    }

    #[test]
    fn a_prefix_takes_the_methods_every_route_below_it_has() {
        let mut paths = Paths::new();
        let mut add = |p: &str, m: &str, n: u64| {
            paths.entry(p.into()).or_default().insert(m.into(), n);
        };
        add("/a", "GET", 6);
        add("/a/1", "GET", 1);
        add("/a/1", "POST", 1);
        add("/a/2", "POST", 2);
        add("/a/b/3", "GET", 2);
        add("/a/b/3", "POST", 5);
        add("/a/b/c", "GET", 3);
        add("/a/b/c", "PUT", 4);
        add("/a/b/4/d", "GET", 5);
        let (patterns, kept_exact) = generalise(&paths);
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
        // Below /a/ the routes are /a/*, /a/b/*, /a/b/c and /a/b/*/d: each has GET (the
        // route /a/* through /a/1), not POST or PUT; below /a/b/ likewise. So only GET
        // goes to a prefix, the broadest one.
        assert_eq!(
            flat,
            vec![
                want("/a", &[("GET", 6)]),
                want("/a/*", &[("GET", 11)]),
                want("/a/1", &[("POST", 1)]),
                want("/a/2", &[("POST", 2)]),
                want("/a/b/3", &[("POST", 5)]),
                want("/a/b/c", &[("PUT", 4)]),
            ]
        );
        let kept: Vec<(String, usize)> = kept_exact.into_iter().collect();
        assert_eq!(kept, [("/a/".to_string(), 2), ("/a/b/".to_string(), 1)]);
    }

    #[test]
    fn skips_methods_a_policy_cannot_name() {
        let mut learner = Learner::default();
        let a = id("spiffe://e.org/a");
        let err = learner.add_http(&a, "GE{T", "/x").unwrap_err();
        assert_eq!(err, "method \"GE{T\": \"GE{T\" is not an HTTP method name");
        let err = learner.add_http(&a, "get", "/x").unwrap_err();
        assert!(err.contains("case-sensitive"), "{err}");
        assert!(learner.add_http(&a, "", "/x").is_err());
        assert!(learner.add_http(&a, "G\u{7f}T", "/x").is_err());
        learner.add_http(&a, "PURGE", "/x").unwrap();
        learner.add_http(&a, "GET", "/x").unwrap();
        let learned = learner.render(&[]);
        assert!(allows(&learned, &a, "PURGE", "/x"), "{}", learned.text);
        assert!(allows(&learned, &a, "GET", "/x"), "{}", learned.text);
        assert!(!learned.text.contains("GE{T"), "{}", learned.text);
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

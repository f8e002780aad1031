//! Learning a least-privilege policy from observed flows (`idgate policy learn`).
//!
//! Paths are generalised the way a human would: numeric, UUID-like and long hex segments
//! become `/*` (a prefix, the only wildcard the path language has); literal routes stay
//! distinct. A method goes to `prefix/*` only when it was observed on every route below the
//! prefix (else those requests keep their exact paths), and never to a prefix that would
//! allow an enforced denial of that source and method (then the broadest narrower prefix
//! that does not, or the exact path); rules group the patterns of one source that share
//! exactly the same method set, so a rule never allows a method on an observed route it
//! was not observed with. It never reads files: the CLI feeds it flows and writes the text
//! it renders.

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
    /// Source ID -> enforced-denied HTTP requests, which no pattern may allow.
    denied: BTreeMap<String, Denied>,
}

/// Path -> method -> requests (observed paths, or the patterns they became).
type Paths = BTreeMap<String, BTreeMap<String, u64>>;

/// (method, normalised path) of one source's enforced denials, sorted by method then path.
type Denied = BTreeSet<(String, String)>;

/// The rendered policy and what the caller should tell the user.
#[derive(Debug)]
pub struct Learned {
    /// The policy file's text.
    pub text: String,
    /// Number of `[[rule]]` tables.
    pub rules: usize,
    /// Number of (source, prefix) generalisations not made because they would allow an
    /// enforced denial.
    pub held_back: usize,
    /// Things left out, one sentence each.
    pub notes: Vec<String>,
}

impl Learner {
    /// Records one allowed HTTP request; `Err` says why it cannot be learned.
    pub fn add_http(&mut self, source: &SpiffeId, method: &str, path: &str) -> Result<(), String> {
        // As the policy loader itself judges a rule's method, so a learned policy loads.
        parse_method(method).map_err(|e| format!("method {method:?}: {e}"))?;
        if path.contains('*') || !is_normalised(path) {
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

    /// Records one enforced-denied HTTP request: no pattern learned for `source` and
    /// `method` may cover `path`. `Err` when the path is not normalised (the proxy logs
    /// normalised paths, and a pattern is matched against one).
    pub fn add_denial(
        &mut self,
        source: &SpiffeId,
        method: &str,
        path: &str,
    ) -> Result<(), String> {
        if !is_normalised(path) {
            return Err(format!("denied path {path:?} is not a normalised path"));
        }
        self.denied
            .entry(source.as_str().to_string())
            .or_default()
            .insert((method.to_string(), path.to_string()));
        Ok(())
    }

    /// Whether the TCP connections of `source` become an identity-only rule: only when no
    /// HTTP request (of any source) was learned and no HTTP request of `source` was denied
    /// (such a rule would allow every HTTP request of its source).
    pub fn learns_tcp(&self, source: &str) -> bool {
        self.http.is_empty() && !self.denied.contains_key(source)
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
        let mut held_back = 0;
        if !self.http.is_empty() && !self.tcp.is_empty() {
            let connections: u64 = self.tcp.values().sum();
            notes.push(format!(
                "{connections} TCP connection(s) skipped: the logs also hold HTTP requests, and an identity-only rule would allow every HTTP request of its source (learn one listener at a time with --listener)"
            ));
            self.tcp.clear();
        }
        for (source, connections) in &self.tcp {
            if !self.learns_tcp(source) {
                notes.push(format!(
                    "{source}: {connections} TCP connection(s) skipped: an identity-only rule would allow its enforced-denied HTTP requests"
                ));
                continue;
            }
            let name = unique(&mut names, base_name(source));
            let _ = write!(
                out,
                "\n# {source}: {connections} connection(s)\n[[rule]]\nname = {}\naction = \"allow\"\nfrom = [{}]\n",
                quote(&name),
                quote(source)
            );
            rules += 1;
        }
        let none = Denied::new();
        for (source, paths) in &self.http {
            let Generalised {
                patterns,
                kept_exact,
                held,
            } = generalise(paths, self.denied.get(source).unwrap_or(&none));
            for (prefix, count) in kept_exact {
                notes.push(format!(
                    "{source}: {count} path(s) below {prefix}* kept exact: the routes below it were not all observed with the same methods"
                ));
            }
            held_back += held.len();
            for (prefix, Held { paths, denial }) in held {
                notes.push(format!(
                    "{source}: {paths} path(s) below {prefix}* not generalised to it: it would allow {denial}, an enforced denial"
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
            held_back,
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

/// Whether `path` is already in the normalised form the proxy matches and logs.
fn is_normalised(path: &str) -> bool {
    normalize_path(path).is_ok_and(|n| n == path)
}

/// An observed path with each identifier segment replaced by `*`: the route it took.
fn route(path: &str) -> String {
    path.split('/')
        .map(|s| if is_variable(s) { "*" } else { s })
        .collect::<Vec<_>>()
        .join("/")
}

/// One source's patterns, and the generalisations left out.
#[derive(Debug)]
struct Generalised {
    /// Pattern (or exact path) -> method -> requests.
    patterns: Paths,
    /// Prefix -> observed paths below it kept exact: its routes differ in methods.
    kept_exact: BTreeMap<String, usize>,
    /// Prefix -> what was held back from it because it would allow an enforced denial.
    held: BTreeMap<String, Held>,
}

/// A prefix that requests were kept off because it covers an enforced denial.
#[derive(Debug, PartialEq, Eq)]
struct Held {
    /// Observed paths below the prefix that stayed exact or went to a narrower prefix.
    paths: usize,
    /// One denial it would allow, `METHOD path`.
    denial: String,
}

/// Turns one source's observed paths into patterns: each (path, method) goes to the
/// broadest `prefix/*` that its path generalises under, whose every observed route
/// (distinct [`route`]) was seen with that method and that covers none of the source's
/// `denied` requests of that method; otherwise it keeps its exact path. Also returns, per
/// prefix, how many observed paths had to stay exact below it (methods) or were held back
/// from it (denials).
fn generalise(paths: &Paths, denied: &Denied) -> Generalised {
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
    let mut held: BTreeMap<&str, (BTreeSet<&str>, String)> = BTreeMap::new();
    for (path, methods) in paths {
        for (method, count) in methods {
            let candidates: Vec<&str> = common
                .iter()
                .filter(|(prefix, ok)| path.starts_with(*prefix) && ok.contains(method.as_str()))
                .map(|(prefix, _)| *prefix)
                .collect();
            let broadest = candidates.iter().copied().min_by_key(|p| p.len());
            let cover = candidates
                .iter()
                .copied()
                .filter(|prefix| first_denial(denied, method, prefix).is_none())
                .min_by_key(|p| p.len());
            let blocked = broadest.filter(|w| cover != Some(*w));
            if let Some((wanted, denial)) =
                blocked.and_then(|w| Some((w, first_denial(denied, method, w)?)))
            {
                held.entry(wanted)
                    .or_insert_with(|| (BTreeSet::new(), format!("{method} {denial}")))
                    .0
                    .insert(path);
            }
            let pattern = match cover {
                Some(prefix) => format!("{prefix}*"),
                None => {
                    if broadest.is_none() {
                        if let Some(own) = path_pattern(path).strip_suffix('*') {
                            kept_exact.entry(own.to_string()).or_default().insert(path);
                        }
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
    Generalised {
        patterns,
        kept_exact: kept_exact
            .into_iter()
            .map(|(p, set)| (p, set.len()))
            .collect(),
        held: held
            .into_iter()
            .map(|(p, (set, denial))| {
                let paths = set.len();
                (p.to_string(), Held { paths, denial })
            })
            .collect(),
    }
}

/// The first path denied with `method` that `prefix*` would allow, if any.
fn first_denial<'a>(denied: &'a Denied, method: &str, prefix: &str) -> Option<&'a str> {
    denied
        .range((method.to_string(), prefix.to_string())..)
        .next()
        .filter(|(m, p)| m == method && p.starts_with(prefix))
        .map(|(_, p)| p.as_str())
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
        let Generalised {
            patterns,
            kept_exact,
            held,
        } = generalise(&paths, &Denied::new());
        assert!(held.is_empty());
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

    /// `Paths` from (method, path, requests).
    fn paths_of(flows: &[(&str, &str, u64)]) -> Paths {
        let mut paths = Paths::new();
        for (m, p, n) in flows {
            paths
                .entry(p.to_string())
                .or_default()
                .insert(m.to_string(), *n);
        }
        paths
    }

    /// `Denied` from (method, path).
    fn denied_of(flows: &[(&str, &str)]) -> Denied {
        flows
            .iter()
            .map(|(m, p)| (m.to_string(), p.to_string()))
            .collect()
    }

    #[test]
    fn a_prefix_never_covers_a_denial_of_its_method() {
        let paths = paths_of(&[
            ("GET", "/a/1", 1),
            ("GET", "/a/b/2", 2),
            ("GET", "/a/b/3", 3),
            ("GET", "/x/1", 1),
            ("GET", "/x/2", 1),
        ]);
        // GET /a/9 rules out /a/* for GET; GET /a (not below /a/), DELETE /x/3 (another
        // method) and GET /y/1 (no prefix of it was learned) rule out nothing.
        let denied = denied_of(&[
            ("GET", "/a"),
            ("GET", "/a/9"),
            ("DELETE", "/x/3"),
            ("GET", "/y/1"),
        ]);
        let got = generalise(&paths, &denied);
        let patterns: Vec<(&str, u64)> = got
            .patterns
            .iter()
            .map(|(p, m)| {
                assert_eq!(m.keys().collect::<Vec<_>>(), ["GET"], "{p}");
                (p.as_str(), m.values().sum())
            })
            .collect();
        // The narrowest prefix that excludes the denial (/a/b/*), else the exact path.
        assert_eq!(patterns, [("/a/1", 1), ("/a/b/*", 5), ("/x/*", 2)]);
        assert!(got.kept_exact.is_empty(), "{:?}", got.kept_exact);
        let held: Vec<(&str, &Held)> = got.held.iter().map(|(p, h)| (p.as_str(), h)).collect();
        let want = Held {
            paths: 3,
            denial: "GET /a/9".into(),
        };
        assert_eq!(held, [("/a/", &want)]);

        // Denied on the only prefix: every path stays exact.
        let denied = denied_of(&[("GET", "/x/3"), ("GET", "/x/99/z")]);
        let got = generalise(
            &paths_of(&[("GET", "/x/1", 1), ("GET", "/x/2", 1)]),
            &denied,
        );
        let patterns: Vec<&str> = got.patterns.keys().map(String::as_str).collect();
        assert_eq!(patterns, ["/x/1", "/x/2"]);
        assert_eq!(got.held["/x/"].denial, "GET /x/3");
    }

    #[test]
    fn a_denial_holds_back_only_its_own_source() {
        let mut learner = Learner::default();
        let a = id("spiffe://e.org/ns/a/sa/x");
        let b = id("spiffe://e.org/ns/b/sa/y");
        for source in [&a, &b] {
            learner.add_http(source, "GET", "/users/1").unwrap();
            learner.add_http(source, "GET", "/users/2").unwrap();
        }
        learner.add_denial(&a, "GET", "/users/999").unwrap();
        assert!(learner.add_denial(&a, "GET", "/users//9").is_err());
        let learned = learner.render(&[]);
        assert_eq!(learned.held_back, 1, "{}", learned.text);
        assert_eq!(
            learned.notes,
            ["spiffe://e.org/ns/a/sa/x: 2 path(s) below /users/* not generalised to it: it would allow GET /users/999, an enforced denial"]
        );
        for path in ["/users/1", "/users/2"] {
            assert!(
                allows(&learned, &a, "GET", path),
                "{path}\n{}",
                learned.text
            );
        }
        assert!(
            !allows(&learned, &a, "GET", "/users/999"),
            "{}",
            learned.text
        );
        assert!(!allows(&learned, &a, "GET", "/users/3"), "{}", learned.text);
        assert!(
            allows(&learned, &b, "GET", "/users/999"),
            "{}",
            learned.text
        );
    }

    #[test]
    fn no_identity_only_rule_for_a_source_with_denied_http_requests() {
        let mut learner = Learner::default();
        let a = id("spiffe://e.org/a");
        let b = id("spiffe://e.org/b");
        learner.add_tcp(&a);
        learner.add_tcp(&b);
        learner.add_denial(&a, "GET", "/admin").unwrap();
        assert!(!learner.learns_tcp(a.as_str()));
        assert!(learner.learns_tcp(b.as_str()));
        let learned = learner.render(&[]);
        assert_eq!(learned.rules, 1, "{}", learned.text);
        assert!(!allows(&learned, &a, "GET", "/admin"), "{}", learned.text);
        assert!(allows(&learned, &b, "", "/"), "{}", learned.text);
        assert_eq!(
            learned.notes,
            ["spiffe://e.org/a: 1 TCP connection(s) skipped: an identity-only rule would allow its enforced-denied HTTP requests"]
        );
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

use std::borrow::Cow;
use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderName, HeaderValue};

use super::path::PathPattern;
use super::principal::PrincipalPattern;
use super::*;

const TD: &str = "spiffe://example.org";

fn source(text: &str) -> SourceFile {
    SourceFile {
        path: "p.toml".into(),
        text: text.into(),
    }
}

fn policy(text: &str) -> Policy {
    Policy::from_source(&source(text)).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn load_error(text: &str) -> String {
    match Policy::from_source(&source(text)) {
        Ok(_) => panic!("loaded but should not:\n{text}"),
        Err(e) => e.to_string(),
    }
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (k, v) in pairs {
        map.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    map
}

/// Judges at a fixed time: 2025-06-01T00:00:00Z.
fn judge_full(p: &Policy, from: &str, method: &str, path: &str, hdrs: &[(&str, &str)]) -> Decision {
    let id = SpiffeId::parse(from).unwrap();
    let headers = headers(hdrs);
    let request = Request {
        source: &id,
        method,
        path,
        headers: &headers,
    };
    p.evaluate_at(&request, now())
}

fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_748_736_000)
}

fn judge(p: &Policy, from: &str, method: &str, path: &str) -> (Verdict, Option<String>) {
    let d = judge_full(p, from, method, path, &[]);
    (d.verdict, d.rule.map(|r| r.to_string()))
}

fn allow_rule(field: &str) -> String {
    format!("[[rule]]\nname = \"r\"\naction = \"allow\"\n{field}\n")
}

#[test]
fn principal_patterns() {
    let cases = [
        // exact
        (
            "spiffe://example.org/ns/a/sa/b",
            "spiffe://example.org/ns/a/sa/b",
            true,
        ),
        (
            "spiffe://example.org/ns/a/sa/b",
            "spiffe://example.org/ns/a/sa/bb",
            false,
        ),
        (
            "spiffe://example.org/ns/a/sa/b",
            "spiffe://example.org/ns/a/sa/b/c",
            false,
        ),
        (
            "spiffe://example.org/ns/a/sa/b",
            "spiffe://other.org/ns/a/sa/b",
            false,
        ),
        // '*' in the middle: exactly one segment
        (
            "spiffe://example.org/ns/*/sa/api",
            "spiffe://example.org/ns/x/sa/api",
            true,
        ),
        (
            "spiffe://example.org/ns/*/sa/api",
            "spiffe://example.org/ns/x/y/sa/api",
            false,
        ),
        (
            "spiffe://example.org/ns/*/sa/api",
            "spiffe://example.org/ns/sa/api",
            false,
        ),
        (
            "spiffe://example.org/ns/*/sa/api",
            "spiffe://example.org/ns/x/sa/web",
            false,
        ),
        // '*' last: one or more segments
        (
            "spiffe://example.org/ns/web/*",
            "spiffe://example.org/ns/web/sa/x",
            true,
        ),
        (
            "spiffe://example.org/ns/web/*",
            "spiffe://example.org/ns/web/x",
            true,
        ),
        (
            "spiffe://example.org/ns/web/*",
            "spiffe://example.org/ns/webhook/sa/x",
            false,
        ),
        (
            "spiffe://example.org/ns/web/*",
            "spiffe://example.org/ns/web",
            false,
        ),
        ("spiffe://example.org/*/*", "spiffe://example.org/a", false),
        (
            "spiffe://example.org/*/*",
            "spiffe://example.org/a/b/c",
            true,
        ),
        (
            "spiffe://example.org/ns/*/sa/*",
            "spiffe://example.org/ns/a/sa/b",
            true,
        ),
        (
            "spiffe://example.org/ns/*/sa/*",
            "spiffe://example.org/ns/a/xx/b",
            false,
        ),
        // any ID of a trust domain; the trust domain is literal
        (
            "spiffe://example.org/*",
            "spiffe://example.org/anything/at/all",
            true,
        ),
        (
            "spiffe://example.org/*",
            "spiffe://example.org.evil.com/a",
            false,
        ),
        (
            "spiffe://example.org/*",
            "spiffe://sub.example.org/a",
            false,
        ),
        ("spiffe://example.org/*", "spiffe://other.org/a", false),
        // any authenticated peer
        ("*", "spiffe://other.org/x", true),
        ("*", "spiffe://example.org/ns/a/sa/b", true),
    ];
    for (pattern, id, want) in cases {
        let compiled = PrincipalPattern::parse(pattern).unwrap();
        let parsed = SpiffeId::parse(id).unwrap();
        assert_eq!(
            compiled.matches(&parsed),
            want,
            "matches: {pattern} vs {id}"
        );
        assert_eq!(compiled.to_string(), pattern);
        // Through the index (from) and through not_from.
        let p = policy(&allow_rule(&format!("from = [{pattern:?}]")));
        let want_verdict = if want { Verdict::Allow } else { Verdict::Deny };
        assert_eq!(
            judge(&p, id, "GET", "/").0,
            want_verdict,
            "index: {pattern} vs {id}"
        );
        let p = policy(&allow_rule(&format!("not_from = [{pattern:?}]")));
        let want_verdict = if want { Verdict::Deny } else { Verdict::Allow };
        assert_eq!(
            judge(&p, id, "GET", "/").0,
            want_verdict,
            "not_from: {pattern} vs {id}"
        );
    }
}

#[test]
fn empty_from_is_any_peer() {
    let p = policy(&allow_rule("paths = [\"/x\"]"));
    assert_eq!(judge(&p, "spiffe://a.org/b", "GET", "/x").0, Verdict::Allow);
    assert_eq!(judge(&p, "spiffe://a.org/b", "GET", "/y").0, Verdict::Deny);
}

#[test]
fn several_from_patterns_are_ored() {
    let p = policy(&allow_rule(
        "from = [\"spiffe://example.org/ns/a/sa/x\", \"spiffe://example.org/ns/b/*\", \"spiffe://other.org/*\"]",
    ));
    for id in [
        "spiffe://example.org/ns/a/sa/x",
        "spiffe://example.org/ns/b/sa/y",
        "spiffe://other.org/q",
    ] {
        assert_eq!(judge(&p, id, "GET", "/").0, Verdict::Allow, "{id}");
    }
    assert_eq!(
        judge(&p, "spiffe://example.org/ns/c/sa/x", "GET", "/").0,
        Verdict::Deny
    );
}

#[test]
fn path_patterns() {
    let cases = [
        ("/a/b", "/a/b", true),
        ("/a/b", "/a/b/", false),
        ("/a/b", "/a/bc", false),
        ("/a/b", "/a", false),
        ("/p/*", "/p/", true),
        ("/p/*", "/p/x", true),
        ("/p/*", "/p/x/y", true),
        ("/p/*", "/p", false),
        ("/p/*", "/px", false),
        ("/p/*", "/px/y", false),
        ("/*", "/", true),
        ("/*", "/anything/at/all", true),
        ("*", "/", true),
        ("*", "/x/y", true),
        ("*.json", "/a/b.json", true),
        ("*.json", "/b.json", true),
        ("*.json", "/a.json/b", false),
        ("*.json", "/a/bjson", false),
        ("*.tar.gz", "/dl/x.tar.gz", true),
    ];
    for (pattern, path, want) in cases {
        let p = policy(&allow_rule(&format!("paths = [{pattern:?}]")));
        let want_verdict = if want { Verdict::Allow } else { Verdict::Deny };
        assert_eq!(
            judge(&p, TD_ID, "GET", path).0,
            want_verdict,
            "paths: {pattern} vs {path}"
        );
        let p = policy(&allow_rule(&format!("not_paths = [{pattern:?}]")));
        let want_verdict = if want { Verdict::Deny } else { Verdict::Allow };
        assert_eq!(
            judge(&p, TD_ID, "GET", path).0,
            want_verdict,
            "not_paths: {pattern} vs {path}"
        );
    }
}

const TD_ID: &str = "spiffe://example.org/ns/a/sa/b";

#[test]
fn big_path_lists_are_hashed_and_still_exact() {
    let exact: Vec<String> = (0..20).map(|i| format!("\"/e{i}\"")).collect();
    let prefixes: Vec<String> = (0..20).map(|i| format!("\"/p{i}/*\"")).collect();
    let p = policy(&allow_rule(&format!(
        "paths = [{}, {}, \"*.css\"]",
        exact.join(", "),
        prefixes.join(", ")
    )));
    let cases = [
        ("/e0", true),
        ("/e19", true),
        ("/e20", false),
        ("/e1/", false),
        ("/p7/", true),
        ("/p7/a/b", true),
        ("/p7", false),
        ("/p77/a", false),
        ("/x/site.css", true),
    ];
    for (path, want) in cases {
        let want = if want { Verdict::Allow } else { Verdict::Deny };
        assert_eq!(judge(&p, TD_ID, "GET", path).0, want, "{path}");
    }
}

#[test]
fn many_rules_for_one_source_keep_file_order() {
    // More rules than a bucket holds unindexed: the path index must give the same answers.
    let mut text = String::new();
    for i in 0..40 {
        text += &format!(
            "[[rule]]\nname = \"r{i}\"\naction = \"allow\"\nfrom = [\"{TD_ID}\"]\npaths = [\"/r{i}\", \"/shared/*\"]\n"
        );
    }
    text += &format!(
        "[[rule]]\nname = \"ext\"\naction = \"allow\"\nfrom = [\"{TD_ID}\"]\npaths = [\"*.txt\"]\n"
    );
    text += &format!("[[rule]]\nname = \"no-admin\"\naction = \"deny\"\nfrom = [\"{TD_ID}\"]\npaths = [\"/r7\"]\n");
    let p = policy(&text);
    let cases = [
        ("/r3", Verdict::Allow, Some("r3")),
        ("/r39", Verdict::Allow, Some("r39")),
        ("/shared/x", Verdict::Allow, Some("r0")),
        ("/r3/x.txt", Verdict::Allow, Some("ext")),
        ("/r7", Verdict::Deny, Some("no-admin")),
        ("/r40", Verdict::Deny, None),
    ];
    for (path, verdict, rule) in cases {
        assert_eq!(
            judge(&p, TD_ID, "GET", path),
            (verdict, rule.map(String::from)),
            "{path}"
        );
    }
    assert_eq!(
        judge(&p, "spiffe://example.org/other", "GET", "/r3"),
        (Verdict::Deny, None)
    );
}

#[test]
fn methods_are_case_sensitive_and_ored() {
    let p = policy(&allow_rule("methods = [\"GET\", \"POST\"]"));
    let cases = [
        ("GET", true),
        ("POST", true),
        ("DELETE", false),
        ("Get", false),
        ("PROPFIND", false),
    ];
    for (method, want) in cases {
        let want = if want { Verdict::Allow } else { Verdict::Deny };
        assert_eq!(judge(&p, TD_ID, method, "/").0, want, "{method}");
    }
    let any = policy(&allow_rule(""));
    assert_eq!(judge(&any, TD_ID, "PROPFIND", "/").0, Verdict::Allow);
}

#[test]
fn headers_match_names_case_insensitively_and_values_exactly() {
    let p = policy(&allow_rule(
        "headers = { \"X-Scan-Status\" = \"passed\", \"x-team\" = \"a\" }",
    ));
    let cases: [(&[(&str, &str)], bool); 7] = [
        (&[("x-scan-status", "passed"), ("x-team", "a")], true),
        (&[("X-SCAN-STATUS", "passed"), ("X-Team", "a")], true),
        (&[("x-scan-status", "Passed"), ("x-team", "a")], false),
        (&[("x-scan-status", "passed")], false),
        (&[("x-team", "a")], false),
        (
            &[
                ("x-scan-status", "failed"),
                ("x-scan-status", "passed"),
                ("x-team", "a"),
            ],
            true,
        ),
        (
            &[
                ("x-scan-status", "failed"),
                ("x-team", "a"),
                ("x-team", "b"),
            ],
            false,
        ),
    ];
    for (hdrs, want) in cases {
        let want = if want { Verdict::Allow } else { Verdict::Deny };
        assert_eq!(
            judge_full(&p, TD_ID, "GET", "/", hdrs).verdict,
            want,
            "{hdrs:?}"
        );
    }
}

#[test]
fn fields_are_anded() {
    let p = policy(&allow_rule(&format!(
        "from = [\"{TD}/ns/a/*\"]\nmethods = [\"GET\"]\npaths = [\"/api/*\"]\nnot_paths = [\"/api/admin/*\"]\nnot_from = [\"{TD}/ns/a/sa/evil\"]"
    )));
    let cases = [
        (TD_ID, "GET", "/api/x", Verdict::Allow),
        (TD_ID, "POST", "/api/x", Verdict::Deny),
        (TD_ID, "GET", "/other", Verdict::Deny),
        (TD_ID, "GET", "/api/admin/users", Verdict::Deny),
        (
            "spiffe://example.org/ns/a/sa/evil",
            "GET",
            "/api/x",
            Verdict::Deny,
        ),
        (
            "spiffe://example.org/ns/b/sa/b",
            "GET",
            "/api/x",
            Verdict::Deny,
        ),
    ];
    for (from, method, path, want) in cases {
        assert_eq!(
            judge(&p, from, method, path).0,
            want,
            "{from} {method} {path}"
        );
    }
}

#[test]
fn deny_overrides_allow_and_first_allow_wins() {
    let p = policy(&format!(
        r#"
[[rule]]
name = "all-reads"
action = "allow"
methods = ["GET"]
[[rule]]
name = "api"
action = "allow"
paths = ["/api/*"]
[[rule]]
name = "no-admin"
action = "deny"
from = ["{TD}/*"]
paths = ["/api/admin/*"]
[[rule]]
name = "no-admin-2"
action = "deny"
paths = ["/api/admin/*"]
"#
    ));
    let cases = [
        ("GET", "/api/x", Verdict::Allow, Some("all-reads")),
        ("POST", "/api/x", Verdict::Allow, Some("api")),
        ("GET", "/api/admin/x", Verdict::Deny, Some("no-admin")),
        ("POST", "/other", Verdict::Deny, None),
    ];
    for (method, path, verdict, rule) in cases {
        assert_eq!(
            judge(&p, TD_ID, method, path),
            (verdict, rule.map(String::from)),
            "{method} {path}"
        );
    }
}

#[test]
fn defaults() {
    let deny = policy("default = \"deny\"\n");
    assert_eq!(judge(&deny, TD_ID, "GET", "/"), (Verdict::Deny, None));
    let implicit = policy("");
    assert_eq!(judge(&implicit, TD_ID, "GET", "/"), (Verdict::Deny, None));
    let allow = policy(
        "default = \"allow\"\n[[rule]]\nname = \"x\"\naction = \"deny\"\npaths = [\"/x\"]\n",
    );
    assert_eq!(judge(&allow, TD_ID, "GET", "/"), (Verdict::Allow, None));
    assert_eq!(
        judge(&allow, TD_ID, "GET", "/x"),
        (Verdict::Deny, Some("x".into()))
    );
    assert_eq!(allow.default_action(), Action::Allow);
}

#[test]
fn audit_mode_passes_denials_but_enforced_evaluation_does_not() {
    let p =
        policy("mode = \"audit\"\n[[rule]]\nname = \"x\"\naction = \"allow\"\npaths = [\"/ok\"]\n");
    assert_eq!(p.mode(), Mode::Audit);
    assert_eq!(judge(&p, TD_ID, "GET", "/no"), (Verdict::AuditDeny, None));
    assert!(Verdict::AuditDeny.passes());
    assert_eq!(
        judge(&p, TD_ID, "GET", "/ok"),
        (Verdict::Allow, Some("x".into()))
    );
    let id = SpiffeId::parse(TD_ID).unwrap();
    let h = HeaderMap::new();
    let req = Request {
        source: &id,
        method: "GET",
        path: "/no",
        headers: &h,
    };
    assert_eq!(p.evaluate_enforced(&req).verdict, Verdict::Deny);
    assert_eq!(
        p.evaluate_with(&req, now(), Mode::Enforce).verdict,
        Verdict::Deny
    );
    assert_eq!(p.evaluate(&req).verdict, Verdict::AuditDeny);
}

/// A reload ends the connections of the peers a policy no longer admits; in audit mode
/// every request passes, so every peer is still admitted.
#[test]
fn audit_mode_admits_every_peer_its_rules_would_deny() {
    let rules =
        "[[rule]]\nname = \"x\"\naction = \"allow\"\nfrom = [\"spiffe://example.org/ns/a/*\"]\n";
    let other = SpiffeId::parse("spiffe://example.org/ns/b/sa/y").unwrap();
    assert!(!policy(rules).admits(&other), "enforced: shut out");
    let audit = policy(&format!("mode = \"audit\"\n{rules}"));
    assert!(audit.admits(&other), "audit: its requests pass");
}

#[test]
fn audit_rules_never_decide_but_are_reported() {
    let p = policy(
        r#"
[[rule]]
name = "dry-deny"
action = "deny"
audit = true
paths = ["/api/admin/*"]
[[rule]]
name = "api"
action = "allow"
paths = ["/api/*"]
[[rule]]
name = "dry-allow"
action = "allow"
audit = true
paths = ["/new/*"]
"#,
    );
    let d = judge_full(&p, TD_ID, "GET", "/api/admin/x", &[]);
    assert_eq!(
        (d.verdict, d.rule.as_deref(), d.audit_rule.as_deref()),
        (Verdict::Allow, Some("api"), Some("dry-deny"))
    );
    let d = judge_full(&p, TD_ID, "GET", "/new/x", &[]);
    assert_eq!(
        (d.verdict, d.rule.as_deref(), d.audit_rule.as_deref()),
        (Verdict::Deny, None, Some("dry-allow"))
    );
    let d = judge_full(&p, TD_ID, "GET", "/api/x", &[]);
    assert_eq!(
        (d.verdict, d.rule.as_deref(), d.audit_rule.as_deref()),
        (Verdict::Allow, Some("api"), None)
    );
}

#[test]
fn expired_rules_are_ignored() {
    let p = policy(
        r#"
[[rule]]
name = "break-glass"
action = "allow"
paths = ["/admin"]
expires = "2025-06-01T00:00:00Z"
[[rule]]
name = "later"
action = "allow"
paths = ["/later"]
expires = 2030-01-01T00:00:00+02:00
"#,
    );
    let id = SpiffeId::parse(TD_ID).unwrap();
    let h = HeaderMap::new();
    let req = |path| Request {
        source: &id,
        method: "GET",
        path,
        headers: &h,
    };
    let before = now() - Duration::from_secs(1);
    assert_eq!(
        p.evaluate_at(&req("/admin"), before).verdict,
        Verdict::Allow
    );
    // At the expiry instant the rule is already gone.
    assert_eq!(p.evaluate_at(&req("/admin"), now()).verdict, Verdict::Deny);
    assert_eq!(p.evaluate(&req("/admin")).verdict, Verdict::Deny);
    assert_eq!(p.evaluate_at(&req("/later"), now()).verdict, Verdict::Allow);
    let d = p.evaluate_at(&req("/admin"), now());
    let why = p.explain(&req("/admin"), &d, now());
    assert!(
        why.contains("closest allow rule break-glass: expired at 2025-06-01T00:00:00Z"),
        "{why}"
    );
}

#[test]
fn next_expiry_is_the_earliest_expires_after_now() {
    let p = policy(
        r#"
[[rule]]
name = "late"
action = "allow"
paths = ["/late"]
expires = "2025-06-01T02:00:00Z"
[[rule]]
name = "always"
action = "allow"
paths = ["/always"]
[[rule]]
name = "past"
action = "allow"
paths = ["/past"]
expires = "2025-05-01T00:00:00Z"
[[rule]]
name = "soon"
action = "deny"
paths = ["/soon"]
expires = 2025-06-01T03:00:00+02:00
[[rule]]
name = "also-soon"
action = "allow"
paths = ["/soon"]
expires = "2025-06-01T01:00:00Z"
"#,
    );
    let hour = Duration::from_secs(3600);
    // now() is 2025-06-01T00:00:00Z; "soon" and "also-soon" end an hour later.
    assert_eq!(p.next_expiry(now()), Some(now() + hour));
    assert_eq!(
        p.next_expiry(now() - 40 * 24 * hour),
        Some(now() - 31 * 24 * hour)
    );
    // A rule is gone at its expiry instant, so the next one is the one after.
    assert_eq!(p.next_expiry(now() + hour), Some(now() + 2 * hour));
    assert_eq!(p.next_expiry(now() + 2 * hour), None);
    assert_eq!(
        p.expired_between(now(), now() + hour).as_deref(),
        Some("rule soon expired at 2025-06-01T03:00:00+02:00; rule also-soon expired at 2025-06-01T01:00:00Z")
    );
    assert_eq!(
        p.expired_between(now() + hour, now() + hour + hour / 2),
        None
    );
    assert_eq!(
        p.expired_between(now() + hour, now() + 2 * hour).as_deref(),
        Some("rule late expired at 2025-06-01T02:00:00Z")
    );
    let none = policy("[[rule]]\nname = \"a\"\naction = \"allow\"\n");
    assert_eq!(none.next_expiry(SystemTime::UNIX_EPOCH), None);
    assert_eq!(none.expired_between(SystemTime::UNIX_EPOCH, now()), None);
}

#[test]
fn path_normalisation() {
    let cases: [(&str, Result<&str, PathError>); 39] = [
        ("/", Ok("/")),
        ("/a/b", Ok("/a/b")),
        ("/p/", Ok("/p/")),
        ("/a/./b//c/../d", Ok("/a/b/d")),
        ("/api/%2e%2e/admin", Ok("/admin")),
        ("/api/%2E%2E/admin", Ok("/admin")),
        ("/api/.%2e/admin", Ok("/admin")),
        ("/../../etc/passwd", Ok("/etc/passwd")),
        ("/a/..", Ok("/")),
        ("/a/b/..", Ok("/a/")),
        ("/a/.", Ok("/a/")),
        ("//a//b//", Ok("/a/b/")),
        ("/a?b=../c", Ok("/a")),
        ("/a/../b?x=%2f", Ok("/b")),
        ("/%7Euser/%41", Ok("/~user/A")),
        ("/a%20b", Ok("/a%20b")),
        ("/a%3ab", Ok("/a%3Ab")),
        ("/caf%C3%A9", Ok("/caf%C3%A9")),
        ("/a%2fb", Err(PathError::ForbiddenEncoding)),
        ("/a%2Fb", Err(PathError::ForbiddenEncoding)),
        ("/a%5cb", Err(PathError::ForbiddenEncoding)),
        ("/a%5Cb", Err(PathError::ForbiddenEncoding)),
        ("/a%00b", Err(PathError::ForbiddenEncoding)),
        ("/a\0b", Err(PathError::Nul)),
        ("/\0/\0/", Err(PathError::Nul)),
        ("/a%zz", Err(PathError::BadEncoding)),
        ("/a%2", Err(PathError::BadEncoding)),
        // Servlet containers drop `;` parameters before resolving dots.
        ("/public/..;/admin", Err(PathError::DotSegmentParameters)),
        ("/public/..;x=1/admin", Err(PathError::DotSegmentParameters)),
        ("/public/.;/admin", Err(PathError::DotSegmentParameters)),
        (
            "/public/%2e%2e;/admin",
            Err(PathError::DotSegmentParameters),
        ),
        ("/public/..%3b/admin", Err(PathError::DotSegmentParameters)),
        ("/public/..%3B", Err(PathError::DotSegmentParameters)),
        ("/public/a..;/b", Ok("/public/a..;/b")),
        ("/public/...;/b", Ok("/public/...;/b")),
        ("/public/;/b", Ok("/public/;/b")),
        ("/admin;jsessionid=1/users", Ok("/admin;jsessionid=1/users")),
        ("a/b", Err(PathError::NotAbsolute)),
        ("*", Err(PathError::NotAbsolute)),
    ];
    for (raw, want) in cases {
        assert_eq!(
            normalize_path(raw).as_deref().map_err(Clone::clone),
            want,
            "{raw}"
        );
    }
    assert_eq!(normalize_path(""), Err(PathError::NotAbsolute));
    assert_eq!(normalize_path("http://x/a"), Err(PathError::NotAbsolute));
    // Output is a fixed point.
    for raw in [
        "/a/./b//c/../d",
        "/api/%2e%2e/admin",
        "/a%3ab",
        "//x/",
        "/café/./menu",
        "/caf%c3%a9/%7e/..",
        "/a b/../{\"k\":[1]}",
        "/%2e%2E/\u{7f}\t/é%25e9/",
        "/x/%41%20é ~/.%2e",
    ] {
        let once = normalize_path(raw).unwrap().into_owned();
        assert_eq!(normalize_path(&once).unwrap(), once, "{raw}");
    }
}

#[test]
fn bytes_not_allowed_raw_are_percent_encoded() {
    let cases = [
        // one resource, three spellings, one normal form
        ("/café", "/caf%C3%A9"),
        ("/caf%C3%A9", "/caf%C3%A9"),
        ("/caf%c3%a9", "/caf%C3%A9"),
        ("/café/../thé/", "/th%C3%A9/"),
        ("/my report", "/my%20report"),
        ("/a\"b", "/a%22b"),
        ("/{\"k\":1}", "/%7B%22k%22:1%7D"),
        ("/a<b>c", "/a%3Cb%3Ec"),
        ("/a^b`c|d", "/a%5Eb%60c%7Cd"),
        ("/a[0]", "/a%5B0%5D"),
        ("/a#b", "/a%23b"),
        ("/a\tb\u{7f}", "/a%09b%7F"),
        // an encoded '%' stays encoded: nothing is decoded twice
        ("/100%25", "/100%25"),
        // allowed raw: unreserved, sub-delims, ':' and '@'
        ("/a-._~!$&'()*+,;=:@z", "/a-._~!$&'()*+,;=:@z"),
    ];
    for (raw, want) in cases {
        assert_eq!(normalize_path(raw).as_deref(), Ok(want), "{raw:?}");
    }
    for raw in ["/a\\b", "/a/..\\..\\etc", "/\\", "/é\\"] {
        assert_eq!(normalize_path(raw), Err(PathError::Backslash), "{raw:?}");
    }
    // The query is not part of the path: whatever it holds is left alone.
    assert_eq!(normalize_path("/a?q=\\é"), Ok(Cow::Borrowed("/a")));
}

#[test]
fn raw_and_encoded_spellings_are_judged_alike() {
    let p = policy(
        r#"
default = "allow"
[[rule]]
name = "no-cafe"
action = "deny"
paths = ["/caf%C3%A9/*"]
"#,
    );
    for raw in [
        "/caf%C3%A9/menu",
        "/café/menu",
        "/caf%c3%a9/menu",
        "/café/./x/../menu",
    ] {
        let path = normalize_path(raw).unwrap();
        assert_eq!(
            judge(&p, TD_ID, "GET", &path),
            (Verdict::Deny, Some("no-cafe".into())),
            "{raw}"
        );
    }
    assert_eq!(
        judge(&p, TD_ID, "GET", &normalize_path("/thé/menu").unwrap()).0,
        Verdict::Allow
    );
}

#[test]
fn normal_paths_are_borrowed() {
    for raw in [
        "/",
        "/a/b",
        "/p/",
        "/a%20b",
        "/a.b/c..d/.e",
        "/a?x=1",
        "/caf%C3%A9/menu",
        "/a-._~!$&'()*+,;=:@z",
        "/x.json?q=é",
    ] {
        assert!(matches!(normalize_path(raw), Ok(Cow::Borrowed(_))), "{raw}");
    }
    for raw in ["/a//b", "/café", "/a b", "/caf%c3%a9"] {
        assert!(matches!(normalize_path(raw), Ok(Cow::Owned(_))), "{raw}");
    }
}

#[test]
fn path_pattern_parsing() {
    assert_eq!(
        PathPattern::parse("/p/*"),
        Ok(PathPattern::Prefix("/p/".into()))
    );
    assert_eq!(
        PathPattern::parse("*.json"),
        Ok(PathPattern::Suffix(".json".into()))
    );
    assert_eq!(
        PathPattern::parse("*.caf%C3%A9"),
        Ok(PathPattern::Suffix(".caf%C3%A9".into()))
    );
    for bad in [
        "/p*", "/a/*/b", "*json", "api", "/a/../b", "/a//b", "/a%2fb", "/a?x", "**",
    ] {
        assert!(PathPattern::parse(bad).is_err(), "{bad}");
    }
    // A pattern no normalised request path can equal is refused, with the spelling to use.
    let hints = [
        ("/café", "write \"/caf%C3%A9\""),
        ("/café/*", "write \"/caf%C3%A9/*\""),
        ("/caf%c3%a9", "write \"/caf%C3%A9\""),
        ("/my report", "write \"/my%20report\""),
        ("/{id}", "write \"/%7Bid%7D\""),
        ("*.b%61k", "write \"*.bak\""),
        ("*.café", "write \"*.caf%C3%A9\""),
        ("*.a b", "write \"*.a%20b\""),
    ];
    for (bad, hint) in hints {
        let error = PathPattern::parse(bad).unwrap_err();
        assert!(error.contains("is not a normalised"), "{bad}: {error}");
        assert!(error.ends_with(hint), "{bad}: {error}");
    }
    for bad in ["/a\\b", "/a\\b/*", "*.a\\b", "*.a%5cb", "*.a%2Fb"] {
        assert!(PathPattern::parse(bad).is_err(), "{bad}");
    }
    assert!(PathPattern::parse("/a\\b")
        .unwrap_err()
        .contains("some servers read it as '/'"));
    // A suffix pattern that loads matches what normalisation makes of the request.
    let bak = PathPattern::parse("*.bak").unwrap();
    assert!(bak.matches(&normalize_path("/x.b%61k").unwrap()));
}

#[test]
fn load_errors_name_file_line_and_field() {
    let rule = "[[rule]]\nname = \"a\"\naction = \"allow\"\n";
    let cases = [
        (format!("{rule}acton = \"allow\"\n"), "p.toml:4: rule[0].acton: unknown field `acton`"),
        ("mdoe = \"audit\"\n".to_string(), "p.toml:1: mdoe: unknown field `mdoe`"),
        ("mode = \"enforcing\"\n".to_string(), "p.toml:1: mode: unknown variant `enforcing`"),
        (format!("{rule}{rule}"), "p.toml:5: rule[1].name: duplicate rule name \"a\" (also rule[0])"),
        (
            format!("{rule}from = [\"{TD}/a\", \"{TD}/ns/web*\"]\n"),
            "p.toml:4: rule[0].from[1]: \"spiffe://example.org/ns/web*\": partial-segment glob \"web*\"",
        ),
        (format!("{rule}\nnot_from = [\"{TD}/a b\"]\n"), "p.toml:5: rule[0].not_from[0]: \"spiffe://example.org/a b\": path segments"),
        (format!("{rule}from = [\"https://example.org/a\"]\n"), "p.toml:4: rule[0].from[0]: \"https://example.org/a\": expected a SPIFFE ID pattern"),
        (format!("{rule}from = [\"spiffe://Example.org/*\"]\n"), "p.toml:4: rule[0].from[0]: \"spiffe://Example.org/*\": the trust domain may hold"),
        (format!("{rule}from = [\"spiffe://*.org/a\"]\n"), "p.toml:4: rule[0].from[0]: \"spiffe://*.org/a\": the trust domain is always literal"),
        (format!("{rule}paths = [\"/ok\",\n  \"/p*\"]\n"), "p.toml:5: rule[0].paths[1]: \"/p*\": '*' may only be"),
        (format!("{rule}not_paths = [\"/a/../b\"]\n"), "p.toml:4: rule[0].not_paths[0]: \"/a/../b\" is not a normalised path"),
        (format!("{rule}paths = [\"/ok\", \"/café\"]\n"), "p.toml:4: rule[0].paths[1]: \"/café\" is not a normalised path (requests are normalised before matching); write \"/caf%C3%A9\""),
        (format!("{rule}paths = [\"*.b%61k\"]\n"), "p.toml:4: rule[0].paths[0]: \"*.b%61k\" is not a normalised extension (requests are normalised before matching); write \"*.bak\""),
        (format!("{rule}methods = [\"get\"]\n"), "p.toml:4: rule[0].methods[0]: methods are case-sensitive; write \"GET\""),
        (format!("{rule}methods = [\"\"]\n"), "p.toml:4: rule[0].methods[0]: \"\" is not an HTTP method name"),
        (format!("{rule}methods = [\"GET\", \"*\"]\n"), "p.toml:4: rule[0].methods[1]: \"*\" is not a wildcard here: leave `methods` out to match any method"),
        (format!("{rule}from = [\"{TD}\"]\n"), "p.toml:4: rule[0].from[0]: \"spiffe://example.org\" names the trust domain itself, which no peer presents (a workload's ID has a path); write \"spiffe://example.org/*\""),
        ("[[rule]]\nname = \"(default)\"\naction = \"deny\"\n".to_string(), "p.toml:2: rule[0].name: \"(default)\" is reserved: it names the policy's default in decisions and metrics"),
        (format!("{rule}headers = {{ \"bad name\" = \"x\" }}\n"), "p.toml:4: rule[0].headers.bad name: \"bad name\" is not a valid header name"),
        (format!("{rule}expires = \"next week\"\n"), "p.toml:4: rule[0].expires: \"next week\" is not an RFC 3339"),
        (format!("{rule}expires = 2026-01-01T00:00:00\n"), "p.toml:4: rule[0].expires: \"2026-01-01T00:00:00\" is not an RFC 3339"),
        ("[[rule]]\nname = \"a\"\n".to_string(), "p.toml:1: rule[0]: missing field `action`"),
        (format!("{rule}action = \"permit\"\n"), "p.toml:4: duplicate key"),
        ("[[rule]]\nname = \"a\"\naction = \"permit\"\n".to_string(), "p.toml:3: rule[0].action: unknown variant `permit`"),
    ];
    for (text, want) in cases {
        let got = load_error(&text);
        assert!(got.starts_with(want), "got  {got}\nwant {want}...\n{text}");
    }
}

#[test]
fn tcp_listeners_take_only_principal_rules() {
    let ok = policy(&format!(
        "[[rule]]\nname = \"a\"\naction = \"allow\"\nfrom = [\"{TD}/*\"]\nnot_from = [\"{TD}/x\"]\nexpires = \"2030-01-01T00:00:00Z\"\n"
    ));
    assert_eq!(ok.check_tcp_only(), Ok(()));
    let cases = [
        ("methods = [\"GET\"]", "p.toml:7: rule[1].methods:"),
        ("paths = [\"/a\"]", "p.toml:7: rule[1].paths:"),
        ("not_paths = [\"/a\"]", "p.toml:7: rule[1].not_paths:"),
        ("headers = { a = \"b\" }", "p.toml:7: rule[1].headers:"),
    ];
    for (field, want) in cases {
        let p = policy(&format!(
            "[[rule]]\nname = \"a\"\naction = \"allow\"\n[[rule]]\nname = \"b\"\naction = \"deny\"\n{field}\n"
        ));
        let err = p.check_tcp_only().unwrap_err().to_string();
        assert!(err.starts_with(want), "got {err}, want {want}");
    }
}

#[test]
fn explain_names_the_closest_allow_rule() {
    let p = policy(&format!(
        r#"
[[rule]]
name = "reads"
action = "allow"
from = ["{TD}/ns/other/*"]
methods = ["GET"]
[[rule]]
name = "payments-api"
action = "allow"
from = ["{TD}/ns/a/*"]
methods = ["GET", "POST"]
paths = ["/api/*"]
[[rule]]
name = "block"
action = "deny"
paths = ["/api/blocked"]
"#
    ));
    let id = SpiffeId::parse(TD_ID).unwrap();
    let h = HeaderMap::new();
    let why = |method, path| {
        let req = Request {
            source: &id,
            method,
            path,
            headers: &h,
        };
        let d = p.evaluate_at(&req, now());
        p.explain(&req, &d, now())
    };
    assert_eq!(
        why("DELETE", "/api/x"),
        "no rule matched; the default is deny; closest allow rule payments-api: method DELETE not in [GET, POST]"
    );
    assert_eq!(
        why("GET", "/api/x"),
        "rule payments-api allows this request"
    );
    assert!(
        why("GET", "/api/blocked").starts_with("deny rule block matches"),
        "{}",
        why("GET", "/api/blocked")
    );
}

#[test]
fn version_and_names() {
    let p = policy(
        "[[rule]]\nname = \"a\"\naction = \"allow\"\n[[rule]]\nname = \"b\"\naction = \"deny\"\n",
    );
    assert_eq!(p.version().len(), 12);
    assert!(p.version().bytes().all(|b| b.is_ascii_hexdigit()));
    assert_ne!(p.version(), policy("").version());
    assert_eq!(p.rule_names().collect::<Vec<_>>(), ["a", "b"]);
}

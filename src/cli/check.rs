//! `idgate check`: judge one request offline, exactly as the proxy would.
//!
//! Same path normalisation and rule order as the proxy; the policy's `mode` is ignored
//! (rules are judged as if enforced). Also holds the request-judging helper that
//! `idgate policy test` shares, so the two can never disagree. Never opens sockets.

use super::output::outln;
use std::path::PathBuf;
use std::time::SystemTime;

use http::{HeaderMap, HeaderName, HeaderValue, Uri};

use crate::policy::{normalize_path, Decision, Policy, Request, Verdict};
use crate::spiffe_id::SpiffeId;

/// Arguments of `idgate check`.
#[derive(Debug, Clone, clap::Args)]
pub struct CheckArgs {
    /// Policy file to judge against.
    #[arg(long, value_name = "PATH")]
    pub policy: PathBuf,
    /// The caller's SPIFFE ID.
    #[arg(long, value_name = "ID")]
    pub from: String,
    /// HTTP method (case-sensitive).
    #[arg(long, value_name = "M", default_value = "GET")]
    pub method: String,
    /// Request path as sent (normalised before matching; a query is dropped).
    #[arg(long, value_name = "P")]
    pub path: String,
    /// A request header, `name: value`; repeat for more (or for several values).
    #[arg(long = "header", value_name = "'k: v'")]
    pub headers: Vec<String>,
}

/// Runs `idgate check`; returns the exit code (0 allow, 1 deny, 2 error).
pub fn run(args: &CheckArgs) -> u8 {
    match check(args) {
        Ok(judged) => {
            outln!("decision: {}", judged.decision.verdict.as_str());
            outln!(
                "rule: {}",
                judged.decision.rule.as_deref().unwrap_or("(default)")
            );
            if judged.path != args.path {
                outln!("path: {} (normalised from {})", judged.path, args.path);
            }
            outln!("reason: {}", judged.reason);
            match judged.decision.verdict {
                Verdict::Allow => 0,
                Verdict::Deny | Verdict::AuditDeny => 1,
            }
        }
        Err(message) => {
            eprintln!("error: {message}");
            2
        }
    }
}

fn check(args: &CheckArgs) -> Result<Judged, String> {
    let policy = Policy::load(&args.policy).map_err(|e| e.to_string())?;
    let from = SpiffeId::parse(&args.from).map_err(|e| format!("--from {:?}: {e}", args.from))?;
    let headers = parse_headers(&args.headers)?;
    judge(&policy, &from, &args.method, &args.path, &headers)
}

/// One judged request: the decision, the normalised path and a human reason.
#[derive(Debug)]
pub struct Judged {
    /// The decision, as if the policy were enforced.
    pub decision: Decision,
    /// The path the rules saw.
    pub path: String,
    /// Why (for a denial, the closest allow rule and the field that failed on it).
    pub reason: String,
}

/// Judges a request with `check`'s semantics (normalised path, mode ignored, clock now).
pub fn judge(
    policy: &Policy,
    from: &SpiffeId,
    method: &str,
    raw_path: &str,
    headers: &HeaderMap,
) -> Result<Judged, String> {
    let target = request_target_path(raw_path)?;
    let path = normalize_path(target.path())
        .map_err(|e| format!("path {raw_path:?} is refused (the proxy answers 400): {e}"))?;
    let request = Request {
        source: from,
        method,
        path: &path,
        headers,
    };
    let now = SystemTime::now();
    let decision = policy.evaluate_enforced(&request);
    let reason = policy.explain(&request, &decision, now);
    Ok(Judged {
        decision,
        path: path.into_owned(),
        reason,
    })
}

/// A request target as the proxy reads it (`http::Uri`): an origin-form path, whose query
/// and fragment are not part of the path, or an absolute-form URL, whose path is judged.
fn request_target_path(raw: &str) -> Result<Uri, String> {
    if !raw.starts_with('/') && !raw.contains("://") {
        return Err(format!(
            "path {raw:?}: expected a path such as \"/api/v2\" or an absolute URL"
        ));
    }
    raw.parse::<Uri>()
        .map_err(|e| format!("path {raw:?} is refused (the proxy answers 400): {e}"))
}

/// Parses `name: value` header arguments.
pub fn parse_headers(raw: &[String]) -> Result<HeaderMap, String> {
    let mut map = HeaderMap::new();
    for h in raw {
        let Some((name, value)) = h.split_once(':') else {
            return Err(format!("--header {h:?}: expected 'name: value'"));
        };
        let name = HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| {
            format!(
                "--header {h:?}: {:?} is not a valid header name",
                name.trim()
            )
        })?;
        let value = HeaderValue::from_str(value.trim()).map_err(|_| {
            format!(
                "--header {h:?}: {:?} is not a valid header value",
                value.trim()
            )
        })?;
        map.append(name, value);
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(policy: PathBuf, from: &str, method: &str, path: &str, headers: &[&str]) -> CheckArgs {
        CheckArgs {
            policy,
            from: from.into(),
            method: method.into(),
            path: path.into(),
            headers: headers.iter().map(|h| h.to_string()).collect(),
        }
    }

    #[test]
    fn judges_the_path_the_proxy_judges() {
        // The proxy reads the target with `http::Uri`: no fragment, no query, and an
        // absolute-form target's path.
        let policy = Policy::from_source(&crate::config::SourceFile {
            path: "p.toml".into(),
            text: "default = \"allow\"\n[[rule]]\nname = \"no-admin\"\naction = \"deny\"\npaths = [\"/admin\"]\n".into(),
        })
        .unwrap();
        let from = SpiffeId::parse("spiffe://e.org/a").unwrap();
        for target in [
            "/admin",
            "/admin#x",
            "/admin?x=1",
            "http://h/admin",
            "/x/../admin",
        ] {
            let judged = judge(&policy, &from, "GET", target, &HeaderMap::new()).unwrap();
            assert_eq!(judged.path, "/admin", "{target}");
            assert!(!judged.decision.verdict.passes(), "{target}");
        }
        for bad in ["admin", "/a b", "/a%2Fb"] {
            assert!(
                judge(&policy, &from, "GET", bad, &HeaderMap::new()).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn exit_codes() {
        let dir = tempfile::tempdir().unwrap();
        let policy = dir.path().join("policy.toml");
        std::fs::write(
            &policy,
            "mode = \"audit\"\n[[rule]]\nname = \"api\"\naction = \"allow\"\nfrom = [\"spiffe://e.org/*\"]\nmethods = [\"GET\"]\nheaders = { x-ok = \"1\" }\n",
        )
        .unwrap();
        let id = "spiffe://e.org/a";
        assert_eq!(
            run(&args(policy.clone(), id, "GET", "/x/../y", &["X-Ok: 1"])),
            0
        );
        // Audit mode is ignored: judged as enforced.
        assert_eq!(
            run(&args(policy.clone(), id, "DELETE", "/y", &["x-ok: 1"])),
            1
        );
        assert_eq!(run(&args(policy.clone(), id, "GET", "/y", &[])), 1);
        assert_eq!(run(&args(policy.clone(), "nope", "GET", "/y", &[])), 2);
        assert_eq!(run(&args(policy.clone(), id, "GET", "/a%2fb", &[])), 2);
        assert_eq!(
            run(&args(policy.clone(), id, "GET", "/y", &["no-colon"])),
            2
        );
        assert_eq!(
            run(&args(dir.path().join("missing.toml"), id, "GET", "/y", &[])),
            2
        );
    }

    #[test]
    fn headers_parse() {
        let map = parse_headers(&["X-A: 1".into(), "x-a:2".into(), "b:  c d ".into()]).unwrap();
        assert_eq!(map.get_all("x-a").iter().count(), 2);
        assert_eq!(map.get("b").unwrap(), "c d");
        assert!(parse_headers(&["bad name: 1".into()]).is_err());
    }
}

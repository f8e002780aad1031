//! `idgate policy test`: run the cases of policy test files with `check`'s semantics.
//!
//! Each file names a policy (relative to itself) and `[[case]]` tables with the expected
//! decision. Failures and errors are printed one per line, then `N passed, N failed`.
//! It judges through `check::judge` only, so a test can never disagree with `check`.

use super::output::outln;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use http::{HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;
use toml::Spanned;

use super::check::judge;
use crate::config::{FileError, SourceFile};
use crate::policy::{Policy, Verdict};
use crate::spiffe_id::SpiffeId;

/// Arguments of `idgate policy test`.
#[derive(Debug, Clone, clap::Args)]
pub struct PolicyTestArgs {
    /// Policy test files (TOML: `policy = "..."` and `[[case]]` tables).
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestFile {
    policy: Spanned<PathBuf>,
    #[serde(default, rename = "case")]
    cases: Vec<Case>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    from: Spanned<String>,
    #[serde(default = "get")]
    method: String,
    path: Spanned<String>,
    #[serde(default)]
    headers: BTreeMap<String, Spanned<HeaderValues>>,
    expect: Expect,
}

fn get() -> String {
    "GET".into()
}

/// A header value, or several (a header sent more than once).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum HeaderValues {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Expect {
    Allow,
    Deny,
}

#[derive(Debug, Default)]
struct Tally {
    passed: usize,
    failed: usize,
    errors: usize,
}

/// Runs `idgate policy test`; returns the exit code (0 all pass, 1 a failure, 2 an error).
pub fn run(args: &PolicyTestArgs) -> u8 {
    let mut tally = Tally::default();
    for file in &args.files {
        if let Err(e) = run_file(file, &mut tally) {
            eprintln!("error: {e}");
            tally.errors += 1;
        }
    }
    outln!("{} passed, {} failed", tally.passed, tally.failed);
    if tally.errors > 0 {
        2
    } else if tally.failed > 0 {
        1
    } else {
        0
    }
}

fn run_file(path: &Path, tally: &mut Tally) -> Result<(), FileError> {
    let source = SourceFile::read(path)?;
    let file: TestFile = source.parse()?;
    let policy_path = source.resolve(file.policy.get_ref());
    let policy_source = SourceFile::read(&policy_path)
        .map_err(|e| source.error_at(file.policy.span(), "policy", e.to_string()))?;
    let policy = Policy::from_file(&policy_source)?;
    if file.cases.is_empty() {
        return Err(FileError::file(
            path,
            "no [[case]]: a test file that tests nothing cannot pass",
        ));
    }
    for (i, case) in file.cases.iter().enumerate() {
        match run_case(&source, &policy, i, case) {
            Ok(None) => tally.passed += 1,
            Ok(Some(failure)) => {
                outln!("FAIL {}: case {:?}: {failure}", path.display(), case.name);
                tally.failed += 1;
            }
            Err(e) => {
                eprintln!("error: {e}");
                tally.errors += 1;
            }
        }
    }
    Ok(())
}

/// `Ok(None)` when the case passes, `Ok(Some(why))` when it fails.
fn run_case(
    source: &SourceFile,
    policy: &Policy,
    i: usize,
    case: &Case,
) -> Result<Option<String>, FileError> {
    let field = |key: &str| format!("case[{i}].{key}");
    let from = SpiffeId::parse(case.from.get_ref()).map_err(|e| {
        source.error_at(
            case.from.span(),
            &field("from"),
            format!("{:?}: {e}", case.from.get_ref()),
        )
    })?;
    let headers = case_headers(source, i, &case.headers)?;
    let judged = judge(policy, &from, &case.method, case.path.get_ref(), &headers)
        .map_err(|e| source.error_at(case.path.span(), &field("path"), e))?;
    let got = match judged.decision.verdict {
        Verdict::Allow => Expect::Allow,
        Verdict::Deny | Verdict::AuditDeny => Expect::Deny,
    };
    if got == case.expect {
        return Ok(None);
    }
    Ok(Some(format!(
        "expected {}, got {} (rule: {}); {}",
        word(case.expect),
        word(got),
        judged.decision.rule.as_deref().unwrap_or("(default)"),
        judged.reason
    )))
}

fn word(e: Expect) -> &'static str {
    match e {
        Expect::Allow => "allow",
        Expect::Deny => "deny",
    }
}

fn case_headers(
    source: &SourceFile,
    i: usize,
    raw: &BTreeMap<String, Spanned<HeaderValues>>,
) -> Result<HeaderMap, FileError> {
    let mut map = HeaderMap::new();
    for (name, values) in raw {
        let at =
            |msg: String| source.error_at(values.span(), &format!("case[{i}].headers.{name}"), msg);
        let header = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| at(format!("{name:?} is not a valid header name")))?;
        let list = match values.get_ref() {
            HeaderValues::One(v) => std::slice::from_ref(v),
            HeaderValues::Many(vs) => vs.as_slice(),
        };
        for v in list {
            let value = HeaderValue::from_str(v)
                .map_err(|_| at(format!("{v:?} is not a valid header value")))?;
            map.append(header.clone(), value);
        }
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = r#"
mode = "audit"
[[rule]]
name = "payments-reads-invoices"
action = "allow"
from = ["spiffe://example.org/ns/payments/sa/payment-service"]
methods = ["GET", "POST"]
paths = ["/api/v2/invoices", "/api/v2/invoices/*"]
headers = { "x-scan-status" = "passed" }
"#;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn case(name: &str, method: &str, path: &str, headers: &str, expect: &str) -> String {
        format!(
            "[[case]]\nname = {name:?}\nfrom = \"spiffe://example.org/ns/payments/sa/payment-service\"\nmethod = {method:?}\npath = {path:?}\n{headers}\nexpect = {expect:?}\n"
        )
    }

    fn run_files(files: Vec<PathBuf>) -> u8 {
        run(&PolicyTestArgs { files })
    }

    #[test]
    fn passes_fails_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        write(dir.path(), "policy.toml", POLICY);
        let ok = [
            "policy = \"../policy.toml\"\n".to_string(),
            case(
                "reads",
                "GET",
                "/api/v2/invoices",
                "headers = { X-Scan-Status = \"passed\" }",
                "allow",
            ),
            case(
                "multi",
                "GET",
                "/api/v2/invoices/1",
                "headers = { x-scan-status = [\"no\", \"passed\"] }",
                "allow",
            ),
            case("unscanned", "GET", "/api/v2/invoices", "", "deny"),
            case(
                "delete",
                "DELETE",
                "/api/v2/invoices/1",
                "headers = { x-scan-status = \"passed\" }",
                "deny",
            ),
            case(
                "dots",
                "GET",
                "/api/v2/x/../invoices",
                "headers = { x-scan-status = \"passed\" }",
                "allow",
            ),
        ]
        .concat();
        let ok = write(&dir.path().join("sub"), "ok.toml", &ok);
        assert_eq!(run_files(vec![ok.clone()]), 0);

        let failing = [
            "policy = \"policy.toml\"\n".to_string(),
            case("wrong", "DELETE", "/api/v2/invoices", "", "allow"),
        ]
        .concat();
        let failing = write(dir.path(), "fail.toml", &failing);
        assert_eq!(run_files(vec![ok.clone(), failing.clone()]), 1);

        let bad_from = "policy = \"policy.toml\"\n[[case]]\nname = \"x\"\nfrom = \"nope\"\npath = \"/\"\nexpect = \"deny\"\n";
        assert_eq!(
            run_files(vec![
                ok.clone(),
                failing.clone(),
                write(dir.path(), "e1.toml", bad_from)
            ]),
            2
        );
        let unknown_key = "policy = \"policy.toml\"\n[[case]]\nname = \"x\"\nfrom = \"spiffe://a.org/b\"\npath = \"/\"\nexpect = \"deny\"\nexpected = 1\n";
        assert_eq!(
            run_files(vec![write(dir.path(), "e2.toml", unknown_key)]),
            2
        );
        let missing_policy = "policy = \"nope.toml\"\n";
        assert_eq!(
            run_files(vec![write(dir.path(), "e3.toml", missing_policy)]),
            2
        );
        assert_eq!(run_files(vec![dir.path().join("absent.toml")]), 2);
        let refused = "policy = \"policy.toml\"\n[[case]]\nname = \"x\"\nfrom = \"spiffe://a.org/b\"\npath = \"/a%2fb\"\nexpect = \"deny\"\n";
        assert_eq!(run_files(vec![write(dir.path(), "e4.toml", refused)]), 2);
        // A policy `run` and `check` refuse (empty), and a file without cases: errors,
        // never a pass.
        write(dir.path(), "empty.toml", "");
        let on_empty = "policy = \"empty.toml\"\n[[case]]\nname = \"x\"\nfrom = \"spiffe://a.org/b\"\npath = \"/\"\nexpect = \"deny\"\n";
        assert_eq!(run_files(vec![write(dir.path(), "e5.toml", on_empty)]), 2);
        let no_cases = "policy = \"policy.toml\"\n";
        assert_eq!(run_files(vec![write(dir.path(), "e6.toml", no_cases)]), 2);
    }

    #[test]
    fn case_errors_name_line_and_field() {
        let source = SourceFile {
            path: "t.toml".into(),
            text: "policy = \"p.toml\"\n[[case]]\nname = \"x\"\nfrom = \"spiffe://A/b\"\npath = \"/\"\nexpect = \"deny\"\n".into(),
        };
        let file: TestFile = source.parse().unwrap();
        let policy = Policy::from_source(&SourceFile {
            path: "p.toml".into(),
            text: String::new(),
        })
        .unwrap();
        let err = run_case(&source, &policy, 0, &file.cases[0])
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("t.toml:4: case[0].from: \"spiffe://A/b\": the trust domain"),
            "{err}"
        );
    }
}

//! Segment rules: the policy file format, its compiled form and the per-request decision.
//!
//! Plain data and pure functions: `Policy::evaluate` never does I/O, never allocates on
//! the hot path it can avoid, and costs the same whether the file has 10 or 10,000 rules
//! for other sources. This room never touches sockets or TLS.

mod bucket;
mod compile;
mod evaluate;
mod expiry;
mod handle;
mod learn;
mod lint;
mod model;
mod path;
mod principal;
mod rule;
mod stats;

use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use sha2::{Digest, Sha256};

use crate::config::{FileError, SourceFile};
use crate::spiffe_id::SpiffeId;
use compile::Compiled;

pub use handle::PolicyHandle;
pub use learn::{Learned, Learner};
pub use lint::{lint, LintContext};
pub use model::{Action, Mode};
pub use path::normalize_path;
pub use stats::{RuleHits, DEFAULT_RULE};

/// One request as the policy sees it.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The peer's verified SPIFFE ID.
    pub source: &'a SpiffeId,
    /// HTTP method, case-sensitive.
    pub method: &'a str,
    /// Normalised path (see [`normalize_path`]), without query.
    pub path: &'a str,
    /// Request headers.
    pub headers: &'a http::HeaderMap,
}

/// What happened to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Allowed.
    Allow,
    /// Denied.
    Deny,
    /// Would be denied, passed because of audit mode.
    AuditDeny,
}

impl Verdict {
    /// The decision log / metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
            Verdict::AuditDeny => "audit_deny",
        }
    }

    /// Whether the request goes on to the upstream.
    pub fn passes(self) -> bool {
        self != Verdict::Deny
    }
}

/// A decision and the rule that made it (`None` for the default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The outcome.
    pub verdict: Verdict,
    /// The deciding rule's name, `None` when the default decided.
    pub rule: Option<Arc<str>>,
    /// An `audit = true` rule that would have decided had it been enforced (it did not).
    pub audit_rule: Option<Arc<str>>,
    /// The deciding rule has `expires` (a break-glass rule).
    pub break_glass: bool,
}

impl Decision {
    /// Why the request was (or, in audit mode, would have been) denied, for logs;
    /// `None` when it was allowed.
    pub fn denial_reason(&self) -> Option<String> {
        let why = || match self.rule.as_deref() {
            Some(rule) => format!("denied by rule {rule}"),
            None => "no rule allows it (default deny)".to_string(),
        };
        match self.verdict {
            Verdict::Allow => None,
            Verdict::Deny => Some(why()),
            Verdict::AuditDeny => Some(format!("audit mode: {}", why())),
        }
    }
}

/// Why a request path is refused before any rule is looked at (answered with 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// `%2F`, `%5C` or `%00` (any case).
    #[error("encoded '/', '\\' or NUL in path")]
    ForbiddenEncoding,
    /// Empty, `*`, or an absolute URI instead of a path.
    #[error("path must start with '/'")]
    NotAbsolute,
    /// A `%` not followed by two hex digits.
    #[error("malformed percent-encoding")]
    BadEncoding,
    /// A raw `\`, which some servers read as `/`.
    #[error("'\\' in path (some servers read it as '/'); a path may not hold one, raw or encoded")]
    Backslash,
    /// A raw NUL byte (`%00` is [`PathError::ForbiddenEncoding`]).
    #[error("NUL byte in path")]
    Nul,
    /// A `.` or `..` segment with `;` parameters (`/a/..;/b`), which servlet containers
    /// resolve as `..`.
    #[error("'.' or '..' segment with ';' parameters (some servers resolve it as a dot segment)")]
    DotSegmentParameters,
}

/// A compiled policy, ready to judge requests.
#[derive(Debug)]
pub struct Policy {
    compiled: Compiled,
}

impl Policy {
    /// Reads, validates and compiles a policy file. A file with nothing in it but blanks
    /// and comments is refused: it would compile to "deny everything", and it is what a
    /// reload sees of a file caught mid-rewrite (`render > policy.toml` truncates first).
    pub fn load(path: &Path) -> Result<Self, FileError> {
        Self::from_file(&SourceFile::read(path)?)
    }

    /// Validates and compiles a policy file already read: [`Policy::from_source`], and a
    /// file that says nothing (empty, only comments) is refused.
    pub fn from_file(source: &SourceFile) -> Result<Self, FileError> {
        if let Some(what) = says_nothing(&source.text) {
            return Err(FileError::file(
                &source.path,
                format!("file {what}: a policy must say at least its default (default = \"deny\" or \"allow\")"),
            ));
        }
        Self::from_source(source)
    }

    /// Validates and compiles an already read policy file.
    pub fn from_source(source: &SourceFile) -> Result<Self, FileError> {
        compile::compile(source).map(|compiled| Self { compiled })
    }

    /// Judges one request (deny rules first, then allow rules, then the default).
    pub fn evaluate(&self, request: &Request<'_>) -> Decision {
        self.compiled
            .decide(request, self.now(), self.compiled.mode)
    }

    /// [`Policy::evaluate`] at a given time (rules whose `expires` is at or before `now` are ignored).
    pub fn evaluate_at(&self, request: &Request<'_>, now: SystemTime) -> Decision {
        self.compiled.decide(request, now, self.compiled.mode)
    }

    /// Judges as if `mode = "enforce"` (what `idgate check`, `policy test` and `policy diff` do).
    pub fn evaluate_enforced(&self, request: &Request<'_>) -> Decision {
        self.compiled.decide(request, self.now(), Mode::Enforce)
    }

    /// The general form: judge at `now` with the given mode instead of the file's.
    pub fn evaluate_with(&self, request: &Request<'_>, now: SystemTime, mode: Mode) -> Decision {
        self.compiled.decide(request, now, mode)
    }

    /// A one-line human reason for `decision` (for a denial: the closest allow rule and
    /// the field that failed on it). Slow: for CLIs, not the request path.
    pub fn explain(&self, request: &Request<'_>, decision: &Decision, now: SystemTime) -> String {
        self.compiled.explain(request, decision, now)
    }

    /// `enforce` or `audit`, as the file says.
    pub fn mode(&self) -> Mode {
        self.compiled.mode
    }

    /// What happens when no rule matches.
    pub fn default_action(&self) -> Action {
        self.compiled.default
    }

    /// Short content hash of the file (first 12 hex digits of its SHA-256), for logs.
    pub fn version(&self) -> &str {
        &self.compiled.version
    }

    /// The [`Policy::version`] a file of this text gets.
    pub fn version_of(text: &str) -> String {
        hex::encode(Sha256::digest(text.as_bytes()))[..12].to_string()
    }

    /// The rule names in file order.
    pub fn rule_names(&self) -> impl Iterator<Item = &str> {
        self.compiled.rules.iter().map(|r| &*r.name)
    }

    /// The `headers` condition of each rule that has one, in file order, as the header
    /// map that meets exactly that condition (for replaying logs, which hold no headers).
    pub fn header_conditions(&self) -> impl Iterator<Item = http::HeaderMap> + '_ {
        let with_headers = self
            .compiled
            .rules
            .iter()
            .filter(|r| !r.headers().is_empty());
        with_headers.map(|r| r.headers().iter().cloned().collect())
    }

    /// Whether `source` may still get any request through (for ending long-lived
    /// connections after a reload; not for judging requests).
    pub fn admits(&self, source: &SpiffeId) -> bool {
        self.compiled.admits(source, SystemTime::now())
    }

    /// The earliest rule `expires` after `now`: when a decision made at `now` may change
    /// without a reload (`None`: no rule expires after `now`). Long-lived connections wake
    /// then to be judged again. A binary search over a list built at load.
    pub fn next_expiry(&self, now: SystemTime) -> Option<SystemTime> {
        self.compiled.expiries.next_after(now)
    }

    /// "rule NAME expired at TIME" for each rule whose `expires` is after `since` and at or
    /// before `until` (joined with "; "), for the log line of a connection ended because
    /// of it; `None` when no rule expired then.
    pub fn expired_between(&self, since: SystemTime, until: SystemTime) -> Option<String> {
        let rules = &self.compiled.rules;
        self.compiled.expiries.describe_between(rules, since, until)
    }

    /// Refuses rules that a TCP listener cannot judge (methods, paths, not_paths, headers).
    pub fn check_tcp_only(&self) -> Result<(), FileError> {
        match &self.compiled.tcp_violation {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// The clock, read only when some rule can expire.
    fn now(&self) -> SystemTime {
        if !self.compiled.expiries.is_empty() {
            SystemTime::now()
        } else {
            SystemTime::UNIX_EPOCH
        }
    }
}

/// `Some("is empty")` or `Some("holds only comments")` when no line of `text` says
/// anything (TOML: every key and table header is on a line of its own that is neither
/// blank nor a comment).
fn says_nothing(text: &str) -> Option<&'static str> {
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    if text.trim().is_empty() {
        Some("is empty")
    } else if lines.all(|l| l.starts_with('#')) {
        Some("holds only comments")
    } else {
        None
    }
}

#[cfg(test)]
mod tests;

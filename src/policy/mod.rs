//! Segment rules: the policy file format, its compiled form and the per-request decision.
//!
//! Plain data and pure functions: `Policy::evaluate` never does I/O, never allocates on
//! the hot path it can avoid, and costs the same whether the file has 10 or 10,000 rules
//! for other sources. This room never touches sockets or TLS.

use std::borrow::Cow;
use std::path::Path;
use std::sync::Arc;

use crate::config::{FileError, SourceFile};
use crate::spiffe_id::SpiffeId;

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
}

/// Why a request path is refused before any rule is looked at (answered with 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("encoded '/', '\\' or NUL in path")]
    ForbiddenEncoding,
    #[error("path must start with '/'")]
    NotAbsolute,
    #[error("malformed percent-encoding")]
    BadEncoding,
}

/// Normalises a request path as SPEC.md says; returns the input unchanged when it is already normal.
pub fn normalize_path(_raw: &str) -> Result<Cow<'_, str>, PathError> {
    todo!("helper A")
}

/// A compiled policy, ready to judge requests.
#[derive(Debug)]
pub struct Policy {}

impl Policy {
    /// Reads, validates and compiles a policy file.
    pub fn load(path: &Path) -> Result<Self, FileError> {
        Self::from_source(&SourceFile::read(path)?)
    }

    /// Validates and compiles an already read policy file.
    pub fn from_source(_source: &SourceFile) -> Result<Self, FileError> {
        todo!("helper A")
    }

    /// Judges one request (deny rules first, then allow rules, then the default).
    pub fn evaluate(&self, _request: &Request<'_>) -> Decision {
        todo!("helper A")
    }
}

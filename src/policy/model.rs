//! The policy file as written: serde types only, with spans kept for later checks.
//!
//! Unknown keys are refused here (`deny_unknown_fields`) so a typo never silently widens
//! access. This module must never interpret a pattern: `compile` does that, with the
//! spans kept here, so every semantic error can name file, line and field.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

/// Whether a policy's denials are enforced or only logged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Denials are enforced (the default).
    #[default]
    Enforce,
    /// A denial is logged as `audit_deny` and the request passes.
    Audit,
}

/// What a rule (or the default) does to a request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Let the request through.
    Allow,
    /// Refuse the request (the default of `default`).
    #[default]
    Deny,
}

impl Action {
    /// The word used in the policy file.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
        }
    }
}

/// The whole policy file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPolicy {
    #[serde(default)]
    pub mode: Mode,
    #[serde(default)]
    pub default: Action,
    #[serde(default, rename = "rule")]
    pub rules: Vec<RawRule>,
}

/// One `[[rule]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRule {
    pub name: Spanned<String>,
    pub action: Action,
    #[serde(default)]
    pub from: Vec<Spanned<String>>,
    #[serde(default)]
    pub not_from: Vec<Spanned<String>>,
    #[serde(default)]
    pub methods: Vec<Spanned<String>>,
    #[serde(default)]
    pub paths: Vec<Spanned<String>>,
    #[serde(default)]
    pub not_paths: Vec<Spanned<String>>,
    #[serde(default)]
    pub headers: BTreeMap<String, Spanned<String>>,
    /// RFC 3339, as a string or a TOML offset date-time.
    #[serde(default)]
    pub expires: Option<Spanned<toml::Value>>,
    #[serde(default)]
    pub audit: bool,
}

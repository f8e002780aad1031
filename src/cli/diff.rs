//! `idgate policy diff`: replay logged requests against two policies and list what changes.
//!
//! Both policies judge every inbound line with `check::judge` (same normalisation, mode
//! ignored), so a diff can never disagree with `idgate check`. Changes are grouped by
//! source identity with identical requests aggregated; unchanged sources are not listed.

use std::collections::BTreeMap;
use std::path::PathBuf;

use http::HeaderMap;

use super::check::judge;
use super::decision_log::read_all;
use crate::policy::{Decision, Policy, Verdict};
use crate::spiffe_id::SpiffeId;

/// Arguments of `idgate policy diff`.
#[derive(Debug, Clone, clap::Args)]
pub struct DiffArgs {
    /// The policy in force.
    #[arg(long, value_name = "A")]
    pub old: PathBuf,
    /// The candidate policy.
    #[arg(long, value_name = "B")]
    pub new: PathBuf,
    /// Decision logs (JSON lines); repeat `--log` or list several files after it.
    #[arg(long = "log", value_name = "FILE", required = true, num_args = 1..)]
    pub logs: Vec<PathBuf>,
    /// Replay only lines of this listener (a log may hold several).
    #[arg(long, value_name = "NAME")]
    pub listener: Option<String>,
}

/// One aggregated change: request and both decisions.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Change {
    path: String,
    method: String,
    old: (Outcome, String),
    new: (Outcome, String),
}

/// `Verdict` with an order, for stable output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    Allow,
    Deny,
}

/// What the replay found.
#[derive(Debug, Default)]
pub struct Report {
    /// Source -> change -> count.
    changes: BTreeMap<String, BTreeMap<Change, u64>>,
    /// Requests judged by both policies.
    pub replayed: u64,
    /// Requests allowed before and denied now.
    pub newly_denied: u64,
    /// Requests denied before and allowed now.
    pub newly_allowed: u64,
    /// Lines not replayed, with why.
    pub skipped: Vec<String>,
}

/// Runs `idgate policy diff`; exit 0 no change, 1 changes, 2 error.
pub fn run(args: &DiffArgs) -> u8 {
    match diff(args) {
        Ok(report) => {
            print!("{}", report.render());
            for skipped in &report.skipped {
                eprintln!("skipped: {skipped}");
            }
            u8::from(report.newly_denied + report.newly_allowed > 0)
        }
        Err(message) => {
            eprintln!("error: {message}");
            2
        }
    }
}

fn diff(args: &DiffArgs) -> Result<Report, String> {
    let old = Policy::load(&args.old).map_err(|e| e.to_string())?;
    let new = Policy::load(&args.new).map_err(|e| e.to_string())?;
    let tcp_policies = old.check_tcp_only().is_ok() && new.check_tcp_only().is_ok();
    let lines = read_all(&args.logs).map_err(|e| e.to_string())?;
    let headers = HeaderMap::new();
    let mut report = Report::default();
    for line in &lines {
        let entry = &line.entry;
        if !entry.is_inbound()
            || args
                .listener
                .as_deref()
                .is_some_and(|want| entry.listener.as_deref() != Some(want))
        {
            continue;
        }
        let at = format!("{}:{}", line.file.display(), line.line);
        let Some(id) = entry
            .source
            .as_deref()
            .and_then(|s| SpiffeId::parse(s).ok())
        else {
            report
                .skipped
                .push(format!("{at}: no valid source identity"));
            continue;
        };
        let (method, path) = match (&entry.method, &entry.path) {
            (Some(m), Some(p)) => (m.as_str(), p.as_str()),
            // A TCP connection is judged by identity alone; only TCP policies can say.
            _ if tcp_policies => ("", "/"),
            _ => {
                report.skipped.push(format!(
                    "{at}: TCP connection, but a policy uses methods, paths or headers"
                ));
                continue;
            }
        };
        let judged = judge(&old, &id, method, path, &headers)
            .and_then(|o| judge(&new, &id, method, path, &headers).map(|n| (o, n)));
        let (before, after) = match judged {
            Ok(pair) => pair,
            Err(why) => {
                report.skipped.push(format!("{at}: {why}"));
                continue;
            }
        };
        let shown = if entry.is_tcp() { "(TCP)" } else { method };
        report.add(&id, shown, path, &before.decision, &after.decision);
    }
    Ok(report)
}

impl Report {
    fn add(&mut self, id: &SpiffeId, method: &str, path: &str, old: &Decision, new: &Decision) {
        self.replayed += 1;
        let (old, new) = (summary(old), summary(new));
        if old.0 == new.0 {
            return;
        }
        match new.0 {
            Outcome::Deny => self.newly_denied += 1,
            Outcome::Allow => self.newly_allowed += 1,
        }
        let change = Change {
            path: path.to_string(),
            method: method.to_string(),
            old,
            new,
        };
        *self
            .changes
            .entry(id.as_str().to_string())
            .or_default()
            .entry(change)
            .or_default() += 1;
    }

    /// The change list, grouped by source, and the one-line summary.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (source, changes) in &self.changes {
            out.push_str(source);
            out.push('\n');
            for (c, count) in changes {
                let request = match c.method.as_str() {
                    "(TCP)" => "TCP connection".to_string(),
                    m => format!("{m} {}", c.path),
                };
                out.push_str(&format!(
                    "  {count}x {request}: {} -> {} ({} -> {})\n",
                    word(c.old.0),
                    word(c.new.0),
                    c.old.1,
                    c.new.1
                ));
            }
        }
        out.push_str(&format!(
            "{} requests replayed, {} newly denied, {} newly allowed, {} sources affected\n",
            self.replayed,
            self.newly_denied,
            self.newly_allowed,
            self.changes.len()
        ));
        out
    }
}

fn summary(d: &Decision) -> (Outcome, String) {
    let verdict = match d.verdict {
        Verdict::Allow => Outcome::Allow,
        Verdict::Deny | Verdict::AuditDeny => Outcome::Deny,
    };
    let by = d
        .rule
        .as_deref()
        .map_or("default".to_string(), |r| format!("rule {r}"));
    (verdict, by)
}

fn word(v: Outcome) -> &'static str {
    match v {
        Outcome::Allow => "allow",
        Outcome::Deny => "deny",
    }
}

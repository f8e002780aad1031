//! `idgate policy diff`: replay logged requests against two policies and list what changes.
//!
//! Both policies judge every inbound line with `check::judge` (same normalisation, mode
//! ignored), so a diff can never disagree with `idgate check`. Changes are grouped by
//! source identity with identical requests aggregated; unchanged sources are not listed.
//! Decision lines carry no headers, so a line whose verdict a `headers` rule could change
//! is reported as undecidable, never judged as if no headers were sent.

use super::output::out;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use http::HeaderMap;

use super::check::judge;
use super::decision_log::read_all;
use crate::policy::{Decision, Policy, Request, Verdict};
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

/// One aggregated request whose verdict depends on headers: request and both sides.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Undecided {
    path: String,
    method: String,
    old: String,
    new: String,
}

/// What the replay found.
#[derive(Debug, Default)]
pub struct Report {
    /// Source -> change -> count.
    changes: BTreeMap<String, BTreeMap<Change, u64>>,
    /// Source -> request whose verdict depends on headers -> count.
    undecided: BTreeMap<String, BTreeMap<Undecided, u64>>,
    /// Requests judged by both policies.
    pub replayed: u64,
    /// Requests whose verdict, in either policy, depends on headers the log does not hold.
    pub undecidable: u64,
    /// Requests allowed before and denied now.
    pub newly_denied: u64,
    /// Requests denied before and allowed now.
    pub newly_allowed: u64,
    /// Lines not replayed, with why.
    pub skipped: Vec<String>,
    /// Decision lines read.
    pub read: u64,
    /// Outbound lines (no policy judges them).
    pub outbound: u64,
    /// Inbound lines of other listeners than `--listener`, and those listeners' names.
    pub other_listeners: BTreeMap<String, u64>,
}

/// Runs `idgate policy diff`; exit 0 no change, 1 changes, 2 error (including logs of
/// which no request could be replayed: a gate that judged nothing must not pass).
pub fn run(args: &DiffArgs) -> u8 {
    match diff(args) {
        Ok(report) => {
            out!("{}", report.render());
            for skipped in &report.skipped {
                eprintln!("skipped: {skipped}");
            }
            if report.replayed == 0 {
                eprintln!("error: {}", report.nothing_replayed(args));
                return 2;
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
    let old = Replayer::load(&args.old)?;
    let new = Replayer::load(&args.new)?;
    let tcp_policies = old.policy.check_tcp_only().is_ok() && new.policy.check_tcp_only().is_ok();
    let lines = read_all(&args.logs).map_err(|e| e.to_string())?;
    let mut report = Report {
        read: lines.len() as u64,
        ..Report::default()
    };
    for line in &lines {
        let entry = &line.entry;
        if !entry.is_inbound() {
            report.outbound += 1;
            continue;
        }
        if let Some(want) = args.listener.as_deref() {
            if entry.listener.as_deref() != Some(want) {
                let name = entry.listener.as_deref().unwrap_or("(none)");
                *report.other_listeners.entry(name.to_string()).or_default() += 1;
                continue;
            }
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
        let judged = old
            .replay(&id, method, path)
            .and_then(|o| new.replay(&id, method, path).map(|n| (o, n)));
        let (before, after) = match judged {
            Ok(pair) => pair,
            Err(why) => {
                report.skipped.push(format!("{at}: {why}"));
                continue;
            }
        };
        let shown = if entry.is_tcp() { "(TCP)" } else { method };
        report.add(&id, shown, path, &before, &after);
    }
    Ok(report)
}

/// A policy and, per rule with a `headers` condition, a header map that meets exactly
/// that condition.
struct Replayer {
    policy: Policy,
    header_sets: Vec<HeaderMap>,
}

/// How a policy judges a logged request whose headers are unknown.
enum Replayed {
    /// The same decision whatever headers were sent (as judged without headers).
    Decided(Decision),
    /// Without headers `base`; with some rule's headers `other`, of the other verdict.
    DependsOnHeaders { base: Decision, other: Decision },
}

impl Replayer {
    fn load(path: &Path) -> Result<Self, String> {
        let policy = Policy::load(path).map_err(|e| e.to_string())?;
        let header_sets = policy.header_conditions().collect();
        Ok(Self {
            policy,
            header_sets,
        })
    }

    /// Judges without headers, then with each header rule's headers: the verdicts any
    /// request can get are among these (a rule's own headers are the least that make it
    /// match, so they let it decide whenever any headers would).
    fn replay(&self, id: &SpiffeId, method: &str, path: &str) -> Result<Replayed, String> {
        let base = judge(&self.policy, id, method, path, &HeaderMap::new())?;
        let other = self.header_sets.iter().find_map(|headers| {
            let request = Request {
                source: id,
                method,
                path: &base.path,
                headers,
            };
            let decision = self.policy.evaluate_enforced(&request);
            (outcome(&decision) != outcome(&base.decision)).then_some(decision)
        });
        Ok(match other {
            None => Replayed::Decided(base.decision),
            Some(other) => Replayed::DependsOnHeaders {
                base: base.decision,
                other,
            },
        })
    }
}

impl Report {
    fn add(&mut self, id: &SpiffeId, method: &str, path: &str, old: &Replayed, new: &Replayed) {
        let (old, new) = match (old, new) {
            (Replayed::Decided(old), Replayed::Decided(new)) => (old, new),
            _ => {
                self.undecidable += 1;
                let undecided = Undecided {
                    path: path.to_string(),
                    method: method.to_string(),
                    old: describe(old),
                    new: describe(new),
                };
                *self
                    .undecided
                    .entry(id.as_str().to_string())
                    .or_default()
                    .entry(undecided)
                    .or_default() += 1;
                return;
            }
        };
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

    /// Why no request was replayed: how many lines were read and where each went.
    fn nothing_replayed(&self, args: &DiffArgs) -> String {
        if self.read == 0 {
            return "no request replayed: the logs hold no decision lines".into();
        }
        let mut why = Vec::new();
        if self.outbound > 0 {
            why.push(format!(
                "{} outbound (no policy judges them)",
                self.outbound
            ));
        }
        let other: u64 = self.other_listeners.values().sum();
        if other > 0 {
            let names: Vec<&str> = self.other_listeners.keys().map(String::as_str).collect();
            why.push(format!(
                "{other} of other listeners than --listener {} (listeners in the logs: {})",
                args.listener.as_deref().unwrap_or_default(),
                names.join(", ")
            ));
        }
        if !self.skipped.is_empty() {
            why.push(format!(
                "{} skipped (listed above: no source identity, refused path, TCP)",
                self.skipped.len()
            ));
        }
        if self.undecidable > 0 {
            why.push(format!(
                "{} undecidable (depend on headers)",
                self.undecidable
            ));
        }
        format!(
            "no request replayed: {} decision line(s) read, {}; nothing was compared",
            self.read,
            why.join(", ")
        )
    }

    /// The change list, grouped by source, the requests that depend on headers, and the
    /// one-line summary.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (source, changes) in &self.changes {
            out.push_str(source);
            out.push('\n');
            for (c, count) in changes {
                out.push_str(&format!(
                    "  {count}x {}: {} -> {} ({} -> {})\n",
                    request(&c.method, &c.path),
                    word(c.old.0),
                    word(c.new.0),
                    c.old.1,
                    c.new.1
                ));
            }
        }
        if !self.undecided.is_empty() {
            out.push_str("undecidable: depends on headers, not in the decision log (not counted as changes)\n");
        }
        for (source, undecided) in &self.undecided {
            out.push_str(&format!("  {source}\n"));
            for (u, count) in undecided {
                out.push_str(&format!(
                    "    {count}x {}: {} -> {}\n",
                    request(&u.method, &u.path),
                    u.old,
                    u.new
                ));
            }
        }
        out.push_str(&format!(
            "{} requests replayed, {} newly denied, {} newly allowed, {} sources affected",
            self.replayed,
            self.newly_denied,
            self.newly_allowed,
            self.changes.len()
        ));
        if self.undecidable > 0 {
            out.push_str(&format!(
                ", {} undecidable (depend on headers)",
                self.undecidable
            ));
        }
        out.push('\n');
        out
    }
}

/// How a request is shown: `METHOD /path`, or `TCP connection`.
fn request(method: &str, path: &str) -> String {
    match method {
        "(TCP)" => "TCP connection".to_string(),
        m => format!("{m} {path}"),
    }
}

/// One side of an undecidable line: `allow (rule r2)`, or both verdicts it can get.
fn describe(replayed: &Replayed) -> String {
    let one = |d: &Decision| {
        let (verdict, by) = summary(d);
        format!("{} ({by})", word(verdict))
    };
    match replayed {
        Replayed::Decided(d) => one(d),
        Replayed::DependsOnHeaders { base, other } => {
            format!(
                "{} without headers, {} with that rule's headers",
                one(base),
                one(other)
            )
        }
    }
}

/// Allow or deny (an audit denial is a denial).
fn outcome(d: &Decision) -> Outcome {
    summary(d).0
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

#[cfg(test)]
mod tests {
    use super::*;

    fn replayer(text: &str) -> Replayer {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.toml");
        std::fs::write(&path, text).unwrap();
        Replayer::load(&path).unwrap()
    }

    fn depends(r: &Replayer, path: &str) -> bool {
        let id = SpiffeId::parse("spiffe://e.org/a").unwrap();
        matches!(
            r.replay(&id, "GET", path).unwrap(),
            Replayed::DependsOnHeaders { .. }
        )
    }

    #[test]
    fn finds_every_header_rule_that_could_decide() {
        // Without headers and with every header at once the answer is deny; with x-a
        // alone it is allow.
        let r = replayer(
            "[[rule]]\nname = \"a\"\naction = \"allow\"\nfrom = [\"*\"]\nheaders = { x-a = \"1\" }\n\
             [[rule]]\nname = \"d\"\naction = \"deny\"\nfrom = [\"*\"]\npaths = [\"/p/*\"]\nheaders = { X-D = \"1\" }\n\
             [[rule]]\nname = \"never\"\naction = \"allow\"\nfrom = [\"spiffe://e.org/b\"]\nheaders = { x-b = \"1\" }\n\
             [[rule]]\nname = \"locked\"\naction = \"deny\"\nfrom = [\"*\"]\npaths = [\"/locked\"]\n",
        );
        assert!(depends(&r, "/p/x"));
        assert!(depends(&r, "/q"));
        // A deny rule without headers decides whatever is sent.
        assert!(!depends(&r, "/locked"));
        let plain = replayer(
            "[[rule]]\nname = \"a\"\naction = \"allow\"\nfrom = [\"*\"]\n\
             [[rule]]\nname = \"b\"\naction = \"allow\"\nfrom = [\"*\"]\nheaders = { x-b = \"1\" }\n",
        );
        // An allow that needs no header is not changed by another allow that does.
        assert!(!depends(&plain, "/q"));
    }
}

//! `idgate policy learn`: write a least-privilege policy from decision logs.
//!
//! Rows decided `allow` or `audit_deny` are learned; enforced `deny` rows are reported on
//! stderr, never learned, and handed to the learner so that no pattern allows them. The
//! grouping lives in `policy::learn`; this command reads the logs, reports what it left
//! out, and proves its output before writing it: every learned request is replayed through
//! `check::judge` and must be allowed, and every enforced denial must stay denied (unless
//! the same request was also logged allowed, which is learned and reported).

use super::output::out;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use http::HeaderMap;

use super::check::judge;
use super::decision_log::{read_all, Entry, Located};
use crate::config::SourceFile;
use crate::policy::{Learned, Learner, Policy, Verdict};
use crate::spiffe_id::SpiffeId;

/// Arguments of `idgate policy learn`.
#[derive(Debug, Clone, clap::Args)]
pub struct LearnArgs {
    /// Decision logs (JSON lines); repeat `--log` or list several files after it.
    #[arg(long = "log", value_name = "FILE", required = true, num_args = 1..)]
    pub logs: Vec<PathBuf>,
    /// Write the policy here instead of stdout.
    #[arg(long, value_name = "PATH")]
    pub out: Option<PathBuf>,
    /// Learn only lines of this listener (a log may hold several).
    #[arg(long, value_name = "NAME")]
    pub listener: Option<String>,
}

/// A logged inbound flow: its source and, for HTTP, (method, path); `None` for TCP.
type Flow = (SpiffeId, Option<(String, String)>);

/// What one line contributes.
enum Seen {
    /// An `allow` or `audit_deny` flow, to learn.
    Learn(Flow),
    /// An enforced denial, which the learned policy must keep denying.
    Denied(Flow),
}

/// What was read, learned and left out.
#[derive(Debug, Default)]
struct Tally {
    allow: u64,
    audit_deny: u64,
    /// Enforced denials: (source, request) -> count.
    denied: BTreeMap<(String, String), u64>,
    other_listener: u64,
    outbound: u64,
    skipped: Vec<String>,
    first_ts: Option<String>,
    last_ts: Option<String>,
}

/// Runs `idgate policy learn`; exit 0, or 2 when a log or the output cannot be used.
pub fn run(args: &LearnArgs) -> u8 {
    match learn(args) {
        Ok(()) => 0,
        Err(message) => {
            eprintln!("error: {message}");
            2
        }
    }
}

fn learn(args: &LearnArgs) -> Result<(), String> {
    let lines = read_all(&args.logs).map_err(|e| e.to_string())?;
    let mut tally = Tally::default();
    let mut learner = Learner::default();
    let mut learned: Vec<Flow> = Vec::new();
    let mut denials: BTreeSet<Flow> = BTreeSet::new();
    for line in &lines {
        let Some(seen) = consider(line, args.listener.as_deref(), &mut tally) else {
            continue;
        };
        let added = match &seen {
            Seen::Learn((id, Some((method, path)))) => learner.add_http(id, method, path),
            Seen::Learn((id, None)) => {
                learner.add_tcp(id);
                Ok(())
            }
            Seen::Denied((id, Some((method, path)))) => learner.add_denial(id, method, path),
            Seen::Denied((_, None)) => Ok(()),
        };
        match (seen, added) {
            (_, Err(why)) => {
                tally
                    .skipped
                    .push(format!("{}:{}: {why}", line.file.display(), line.line))
            }
            (Seen::Learn(flow), Ok(())) => learned.push(flow),
            (Seen::Denied(flow), Ok(())) => {
                denials.insert(flow);
            }
        }
    }
    learned.retain(|(id, request)| request.is_some() || learner.learns_tcp(id.as_str()));
    let header = header(args, &tally, learned.len());
    let policy = learner.render(&header);
    // A request logged both allowed and denied (the policy changed mid-log) is learned.
    let allowed: BTreeSet<&Flow> = learned.iter().collect();
    let (conflicts, denials): (Vec<&Flow>, Vec<&Flow>) =
        denials.iter().partition(|d| allowed.contains(d));
    verify(&policy.text, &learned, &denials)?;
    match &args.out {
        Some(path) => std::fs::write(path, &policy.text)
            .map_err(|e| format!("{}: cannot write the policy: {e}", path.display()))?,
        None => out!("{}", policy.text),
    }
    report(&tally, &policy, learned.len(), &conflicts);
    Ok(())
}

/// The flow of one line, if any, to learn or to keep denied.
fn consider(line: &Located, listener: Option<&str>, tally: &mut Tally) -> Option<Seen> {
    let entry: &Entry = &line.entry;
    if !entry.is_inbound() {
        tally.outbound += 1;
        return None;
    }
    if listener.is_some_and(|want| entry.listener.as_deref() != Some(want)) {
        tally.other_listener += 1;
        return None;
    }
    let at = format!("{}:{}", line.file.display(), line.line);
    let Some(source) = entry.source.as_deref() else {
        tally.skipped.push(format!("{at}: no source identity"));
        return None;
    };
    let id = match SpiffeId::parse(source) {
        Ok(id) => id,
        Err(e) => {
            tally.skipped.push(format!("{at}: source {source:?}: {e}"));
            return None;
        }
    };
    let request = match (&entry.method, &entry.path) {
        (Some(m), Some(p)) => Some((m.clone(), p.clone())),
        _ => None,
    };
    match entry.decision.as_str() {
        "allow" => tally.allow += 1,
        "audit_deny" => tally.audit_deny += 1,
        _ => {
            let what = describe(request.as_ref());
            *tally.denied.entry((source.to_string(), what)).or_default() += 1;
            return Some(Seen::Denied((id, request)));
        }
    }
    if let Some(ts) = &entry.ts {
        if tally.first_ts.as_ref().is_none_or(|f| ts < f) {
            tally.first_ts = Some(ts.clone());
        }
        if tally.last_ts.as_ref().is_none_or(|l| ts > l) {
            tally.last_ts = Some(ts.clone());
        }
    }
    Some(Seen::Learn((id, request)))
}

/// `METHOD path`, or `(TCP connection)`.
fn describe(request: Option<&(String, String)>) -> String {
    request.map_or("(TCP connection)".to_string(), |(m, p)| format!("{m} {p}"))
}

fn header(args: &LearnArgs, tally: &Tally, learned: usize) -> Vec<String> {
    let logs: Vec<String> = args.logs.iter().map(|p| p.display().to_string()).collect();
    let mut lines = vec![format!(
        "Learned by `idgate policy learn` from {}",
        logs.join(", ")
    )];
    if let Some(listener) = &args.listener {
        lines.push(format!("(listener {listener} only)"));
    }
    let span = match (&tally.first_ts, &tally.last_ts) {
        (Some(first), Some(last)) => format!(", seen {first} .. {last}"),
        _ => String::new(),
    };
    lines.push(format!(
        "{learned} request(s) learned (allow {}, audit_deny {}){span}.",
        tally.allow, tally.audit_deny
    ));
    let denied: u64 = tally.denied.values().sum();
    if denied > 0 {
        lines.push(format!("{denied} enforced denial(s) were not learned."));
    }
    lines.push(
        "Each rule allows only (method, route) pairs observed for its source; numeric,".into(),
    );
    lines.push(
        "UUID and long hex segments were generalised to /*, a prefix that also allows".into(),
    );
    lines.push("paths below it never seen. Review, then simulate with".into());
    lines.push("`idgate policy diff --old <policy in force> --new <this file> --log ...`.".into());
    lines
}

/// Replays every learned request against the output, which must allow each, and every
/// enforced denial, which it must deny.
fn verify(text: &str, learned: &[Flow], denials: &[&Flow]) -> Result<(), String> {
    let source = SourceFile {
        path: "<learned policy>".into(),
        text: text.to_string(),
    };
    let policy = Policy::from_source(&source)
        .map_err(|e| format!("internal error: the learned policy does not load: {e}"))?;
    let headers = HeaderMap::new();
    let expected = learned
        .iter()
        .map(|flow| (flow, true))
        .chain(denials.iter().map(|flow| (*flow, false)));
    for ((id, request), allow) in expected {
        // A TCP connection is judged as the proxy judges one: no method, path `/`.
        let (method, path) = request
            .as_ref()
            .map_or(("", "/"), |(m, p)| (m.as_str(), p.as_str()));
        let judged = judge(&policy, id, method, path, &headers)?;
        if (judged.decision.verdict == Verdict::Allow) != allow {
            let (does, what) = match allow {
                true => ("denies", "a learned request"),
                false => ("allows", "an enforced denial"),
            };
            return Err(format!(
                "internal error: the learned policy {does} {what} ({id} {method} {path}): {}",
                judged.reason
            ));
        }
    }
    Ok(())
}

fn report(tally: &Tally, policy: &Learned, learned: usize, conflicts: &[&Flow]) {
    let denied: u64 = tally.denied.values().sum();
    let held_back = match policy.held_back {
        0 => String::new(),
        n => format!("; {n} generalisation(s) held back by enforced denials"),
    };
    eprintln!(
        "learned {learned} request(s) into {} rule(s); {denied} enforced denial(s) not learned{held_back}",
        policy.rules
    );
    for ((source, what), count) in &tally.denied {
        eprintln!("  denied, not learned: {count}x {source} {what}");
    }
    for (id, request) in conflicts {
        let what = describe(request.as_ref());
        eprintln!("  allowed and denied: {id} {what} was also logged allowed, so it is learned");
    }
    if tally.outbound > 0 {
        eprintln!(
            "  {} outbound line(s) ignored (no policy judges them)",
            tally.outbound
        );
    }
    if tally.other_listener > 0 {
        eprintln!(
            "  {} line(s) of other listeners ignored",
            tally.other_listener
        );
    }
    for skipped in &tally.skipped {
        eprintln!("  skipped: {skipped}");
    }
    for note in &policy.notes {
        eprintln!("  note: {note}");
    }
}

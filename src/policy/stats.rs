//! Per-rule hit counters: which rule decided how many requests, and when it last did.
//!
//! Each compiled policy has one slot per rule (and one for the default) per worker,
//! allocated on the worker's first request, so [`Policy::record`] on the request path is
//! a hash lookup and two relaxed atomic writes to the worker's own slots: no lock, no
//! allocation, no cache line shared with another worker. [`RuleHits`] adds the workers'
//! slots up at scrape time for `idgate_rule_hits_total{rule,decision}` and for the admin
//! `GET /policy` listing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::model::Mode;
use super::rule::Rule;
use super::{Decision, Policy, Verdict};
use crate::per_worker::PerWorker;

/// The `decision` labels, in slot order; `dry_run` counts an `audit = true` rule that
/// would have decided.
const DECISIONS: [&str; 4] = ["allow", "deny", "audit_deny", "dry_run"];
const DRY_RUN: usize = 3;
/// The `rule` label of requests decided by `default`.
pub const DEFAULT_RULE: &str = "(default)";

/// Hit counters of one compiled policy.
#[derive(Debug)]
pub(super) struct RuleStats {
    /// Rule name (shared with the rule) -> slot (the default's slot is the last one).
    index: HashMap<Arc<str>, usize>,
    /// Each worker's slots, one per rule plus the default's.
    slots: PerWorker<Box<[Slot]>>,
    /// Slots per worker.
    len: usize,
    /// The policy these counters continue after a reload, counted live while requests
    /// may still record hits on it, then folded into the slots.
    predecessor: Mutex<Option<Predecessor>>,
}

/// A replaced policy whose hits still count as this one's.
#[derive(Debug)]
struct Predecessor {
    policy: Arc<Policy>,
    /// For each of this policy's slots, the predecessor's slot it continues, if any.
    continues: Box<[Option<usize>]>,
}

#[derive(Debug, Default)]
struct Slot {
    hits: [AtomicU64; 4],
    /// Milliseconds since the Unix epoch; 0 = never.
    last_hit_ms: AtomicU64,
}

impl Slot {
    fn hit(&self, decision: usize, now_ms: u64) {
        self.hits[decision].fetch_add(1, Ordering::Relaxed);
        self.last_hit_ms.store(now_ms, Ordering::Relaxed);
    }

    /// Adds `totals` (from a previous policy) to this slot.
    fn inherit(&self, totals: &Totals) {
        for (hits, n) in self.hits.iter().zip(totals.hits) {
            hits.fetch_add(n, Ordering::Relaxed);
        }
        self.last_hit_ms
            .fetch_max(totals.last_hit_ms, Ordering::Relaxed);
    }
}

/// One rule's hits over all workers.
#[derive(Debug, Default)]
struct Totals {
    hits: [u64; 4],
    /// Milliseconds since the Unix epoch; 0 = never.
    last_hit_ms: u64,
}

impl Totals {
    /// These totals and `other`'s.
    fn plus(mut self, other: &Totals) -> Self {
        for (total, hits) in self.hits.iter_mut().zip(other.hits) {
            *total += hits;
        }
        self.last_hit_ms = self.last_hit_ms.max(other.last_hit_ms);
        self
    }

    fn add(mut self, slot: &Slot) -> Self {
        for (total, hits) in self.hits.iter_mut().zip(&slot.hits) {
            *total += hits.load(Ordering::Relaxed);
        }
        self.last_hit_ms = self
            .last_hit_ms
            .max(slot.last_hit_ms.load(Ordering::Relaxed));
        self
    }

    fn last_hit(&self) -> Value {
        let ms = self.last_hit_ms;
        if ms == 0 {
            return Value::Null;
        }
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
            .ok()
            .and_then(|t| t.format(&Rfc3339).ok())
            .map_or(Value::Null, Value::String)
    }

    fn hits_json(&self) -> Value {
        let mut map = serde_json::Map::new();
        for (label, hits) in DECISIONS.iter().zip(self.hits) {
            map.insert((*label).to_string(), hits.into());
        }
        Value::Object(map)
    }
}

impl RuleStats {
    /// Counters for `rules` plus the default; each worker's slots are made (zeroed) on
    /// its first hit.
    pub(super) fn new(rules: &[Rule]) -> Self {
        let index = rules
            .iter()
            .enumerate()
            .map(|(i, r)| (Arc::clone(&r.name), i))
            .collect();
        Self {
            index,
            slots: PerWorker::default(),
            len: rules.len() + 1,
            predecessor: Mutex::default(),
        }
    }

    /// The slot of a rule (`None`: the default), if the policy has that rule.
    fn position(&self, rule: Option<&str>) -> Option<usize> {
        match rule {
            Some(name) => self.index.get(name).copied(),
            None => Some(self.len - 1),
        }
    }

    /// The calling worker's slot `n`.
    fn local(&self, n: usize) -> &Slot {
        let slots = self
            .slots
            .local_or_init(|| (0..self.len).map(|_| Slot::default()).collect());
        &slots[n]
    }

    /// The replaced policy this one continues, if any, folded in first when it can be.
    fn predecessor(&self) -> MutexGuard<'_, Option<Predecessor>> {
        let mut predecessor = self
            .predecessor
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Once no request holds the replaced policy (a swap turns the guards readers
        // still hold into references), none can hit it: its counts join these slots,
        // and it is freed.
        if let Some(replaced) = predecessor.take_if(|p| Arc::strong_count(&p.policy) == 1) {
            for (mine, theirs) in replaced.continues.iter().enumerate() {
                if let Some(theirs) = theirs {
                    self.local(mine)
                        .inherit(&replaced.policy.compiled.stats.totals(*theirs));
                }
            }
        }
        predecessor
    }

    /// Slot `n` over all workers, with what the slot continues of a replaced policy.
    fn totals(&self, n: usize) -> Totals {
        let predecessor = self.predecessor();
        let own = self
            .slots
            .iter()
            .fold(Totals::default(), |totals, slots| totals.add(&slots[n]));
        match predecessor
            .as_ref()
            .and_then(|p| Some((p, p.continues[n]?)))
        {
            Some((replaced, theirs)) => own.plus(&replaced.policy.compiled.stats.totals(theirs)),
            None => own,
        }
    }
}

fn verdict_slot(verdict: Verdict) -> usize {
    match verdict {
        Verdict::Allow => 0,
        Verdict::Deny => 1,
        Verdict::AuditDeny => 2,
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Policy {
    /// Counts a decision this policy made: the deciding rule (or the default) under the
    /// verdict, and an `audit = true` rule that would have decided under `dry_run`.
    /// Cheap enough for every request: no lock, no allocation.
    pub fn record(&self, decision: &Decision) {
        let stats = &self.compiled.stats;
        let now = now_ms();
        if let Some(n) = stats.position(decision.rule.as_deref()) {
            stats.local(n).hit(verdict_slot(decision.verdict), now);
        }
        if let Some(n) = decision
            .audit_rule
            .as_deref()
            .and_then(|r| stats.position(Some(r)))
        {
            stats.local(n).hit(DRY_RUN, now);
        }
    }

    /// Makes this policy's counters continue those of `previous` (the one it replaces
    /// at a reload), for rules with the same name and action, and for the default: hits
    /// `previous` records later (requests that loaded it before the swap) count too, so
    /// the counters never go down.
    pub fn inherit_stats(&self, previous: &Arc<Policy>) {
        let (mine, theirs) = (&self.compiled, &previous.compiled);
        let same_action = |name: &str| {
            let action = |c: &super::compile::Compiled| {
                c.rules.iter().find(|r| &*r.name == name).map(|r| r.action)
            };
            action(mine) == action(theirs)
        };
        let (old, new) = (&theirs.stats, &mine.stats);
        let mut continues = vec![None; new.len];
        for (name, &n) in &new.index {
            if same_action(name) {
                continues[n] = old.index.get(name).copied();
            }
        }
        continues[new.len - 1] = Some(old.len - 1);
        *new.predecessor
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Predecessor {
            policy: Arc::clone(previous),
            continues: continues.into(),
        });
    }

    /// Folds the counts of the policy this one replaced into its own once no request
    /// holds that one any more, which frees it; true when nothing is left to fold (the
    /// reloader calls it until then).
    pub fn settle_stats(&self) -> bool {
        self.compiled.stats.predecessor().is_none()
    }

    /// This policy's rules with their hits, as the admin `GET /policy` lists them.
    pub fn stats_json(&self, listener: &str) -> Value {
        let c = &self.compiled;
        let rules: Vec<Value> = c
            .rules
            .iter()
            .enumerate()
            .map(|(n, rule)| {
                let totals = c.stats.totals(n);
                let expires = rule.expires().and_then(|(_, at)| at.format(&Rfc3339).ok());
                json!({
                    "name": &*rule.name,
                    "action": rule.action.as_str(),
                    "audit": rule.audit,
                    "expires": expires,
                    "hits": totals.hits_json(),
                    "last_hit": totals.last_hit(),
                })
            })
            .collect();
        let default = c.stats.totals(c.stats.len - 1);
        json!({
            "listener": listener,
            "policy_version": c.version,
            "mode": match c.mode { Mode::Enforce => "enforce", Mode::Audit => "audit" },
            "default": {
                "action": c.default.as_str(),
                "hits": default.hits_json(),
                "last_hit": default.last_hit(),
            },
            "rules": rules,
        })
    }
}

/// Every inbound listener's live policy: the source of `idgate_rule_hits_total` and of
/// the admin `GET /policy` listing. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct RuleHits {
    listeners: Arc<[(String, Arc<ArcSwap<Policy>>)]>,
}

impl RuleHits {
    /// Watches these (listener name, policy in force) pairs; reloads are seen at once.
    pub fn new(listeners: Vec<(String, Arc<ArcSwap<Policy>>)>) -> Self {
        Self {
            listeners: listeners.into(),
        }
    }

    /// Registers `idgate_rule_hits_total{rule,decision}` (read from the policies at scrape).
    pub fn register(&self, registry: &mut Registry) {
        registry.register_collector(Box::new(self.clone()));
    }

    /// `{"listeners": [...]}`: for each listener its policy version, mode, default and
    /// rules with hits by decision and last-hit time (RFC 3339, or null if never hit).
    pub fn listing(&self) -> Value {
        let listeners: Vec<Value> = self
            .listeners
            .iter()
            .map(|(name, policy)| policy.load().stats_json(name))
            .collect();
        json!({ "listeners": listeners })
    }
}

impl Collector for RuleHits {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // Series with the same labels across listeners are summed into one.
        let family = Family::<Vec<(&'static str, String)>, Counter>::default();
        for (_, policy) in self.listeners.iter() {
            let policy = policy.load();
            let c = &policy.compiled;
            let names = c.rules.iter().map(|r| &*r.name).chain([DEFAULT_RULE]);
            for (n, name) in names.enumerate() {
                let totals = c.stats.totals(n);
                for (decision, hits) in DECISIONS.iter().zip(totals.hits) {
                    if hits > 0 {
                        let labels = vec![
                            ("rule", name.to_string()),
                            ("decision", (*decision).to_string()),
                        ];
                        family.get_or_create(&labels).inc_by(hits);
                    }
                }
            }
        }
        let metric = encoder.encode_descriptor(
            "idgate_rule_hits",
            "Requests decided per policy rule ((default) for the default), by decision",
            None,
            family.metric_type(),
        )?;
        family.encode(metric)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SourceFile;
    use crate::spiffe_id::SpiffeId;

    fn policy(text: &str) -> Policy {
        Policy::from_source(&SourceFile {
            path: "p.toml".into(),
            text: text.into(),
        })
        .unwrap()
    }

    const POLICY: &str = "mode = \"audit\"\n[[rule]]\nname = \"reads\"\naction = \"allow\"\nmethods = [\"GET\"]\n[[rule]]\nname = \"no-admin\"\naction = \"deny\"\npaths = [\"/admin\"]\n[[rule]]\nname = \"trial\"\naction = \"deny\"\naudit = true\nmethods = [\"GET\"]\npaths = [\"/x\"]\n[[rule]]\nname = \"unused\"\naction = \"allow\"\npaths = [\"/never\"]\n";

    fn judge(p: &Policy, method: &str, path: &str) -> Decision {
        let id = SpiffeId::parse("spiffe://e.org/a").unwrap();
        let headers = http::HeaderMap::new();
        let d = p.evaluate(&super::super::Request {
            source: &id,
            method,
            path,
            headers: &headers,
        });
        p.record(&d);
        d
    }

    #[test]
    fn counts_rules_default_and_dry_runs() {
        let p = policy(POLICY);
        judge(&p, "GET", "/a");
        judge(&p, "GET", "/x");
        judge(&p, "GET", "/admin");
        judge(&p, "POST", "/b");
        let listing = RuleHits::new(vec![("api".into(), Arc::new(ArcSwap::from_pointee(p)))]);
        let json = listing.listing();
        let l = &json["listeners"][0];
        assert_eq!(l["listener"], "api");
        assert_eq!(l["mode"], "audit");
        assert_eq!(l["policy_version"].as_str().unwrap().len(), 12);
        let rules = l["rules"].as_array().unwrap();
        let reads = &rules[0];
        assert_eq!(reads["name"], "reads");
        assert_eq!(reads["action"], "allow");
        assert_eq!(reads["hits"]["allow"], 2);
        assert!(reads["last_hit"].as_str().unwrap().ends_with('Z'));
        assert_eq!(rules[1]["hits"]["audit_deny"], 1);
        assert_eq!(rules[2]["hits"]["dry_run"], 1);
        assert_eq!(rules[3]["hits"]["allow"], 0);
        assert_eq!(rules[3]["last_hit"], Value::Null);
        assert_eq!(l["default"]["action"], "deny");
        assert_eq!(l["default"]["hits"]["audit_deny"], 1);

        let mut registry = Registry::default();
        listing.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "# TYPE idgate_rule_hits counter",
            "idgate_rule_hits_total{rule=\"reads\",decision=\"allow\"} 2",
            "idgate_rule_hits_total{rule=\"no-admin\",decision=\"audit_deny\"} 1",
            "idgate_rule_hits_total{rule=\"trial\",decision=\"dry_run\"} 1",
            "idgate_rule_hits_total{rule=\"(default)\",decision=\"audit_deny\"} 1",
        ] {
            assert!(text.contains(line), "{line} missing in\n{text}");
        }
        assert!(!text.contains("rule=\"unused\""), "{text}");
    }

    /// Runs `judge` as worker `index` would.
    fn on_worker(index: usize, judge: impl FnOnce() + Send) {
        std::thread::scope(|scope| {
            scope.spawn(|| {
                crate::per_worker::enter(index);
                judge();
            });
        });
    }

    #[test]
    fn hits_on_every_worker_add_up() {
        let p = policy(POLICY);
        judge(&p, "GET", "/a");
        on_worker(1, || {
            judge(&p, "GET", "/a");
            judge(&p, "GET", "/x");
        });
        on_worker(2, || {
            judge(&p, "POST", "/b");
        });
        let l = p.stats_json("api");
        assert_eq!(l["rules"][0]["hits"]["allow"], 3);
        assert_eq!(l["rules"][2]["hits"]["dry_run"], 1);
        assert_eq!(l["default"]["hits"]["audit_deny"], 1);
        assert!(l["rules"][0]["last_hit"].as_str().unwrap().ends_with('Z'));
    }

    #[test]
    fn reload_inherits_counts_of_unchanged_rules() {
        let old = Arc::new(policy(POLICY));
        judge(&old, "GET", "/a");
        on_worker(1, || {
            judge(&old, "POST", "/b");
        });
        // `reads` keeps its action; `no-admin` turns into an allow rule: not carried over.
        let new = policy(
            &POLICY
                .replace(
                    "deny\"\npaths = [\"/admin\"]",
                    "allow\"\npaths = [\"/admin\"]",
                )
                .replace("mode = \"audit\"", ""),
        );
        judge(&old, "GET", "/admin");
        new.inherit_stats(&old);
        judge(&new, "GET", "/c");
        let l = new.stats_json("api");
        assert_eq!(l["rules"][0]["hits"]["allow"], 2);
        assert_eq!(l["rules"][1]["hits"]["audit_deny"], 0);
        assert_eq!(l["default"]["hits"]["audit_deny"], 1);
    }

    /// Requests that loaded the old policy before the swap record their hits on it after
    /// the new one took over: they still count, before and after the old one is gone, so
    /// `idgate_rule_hits_total` never goes down across a reload.
    #[test]
    fn hits_on_the_replaced_policy_after_a_reload_still_count() {
        let old = Arc::new(policy(POLICY));
        judge(&old, "GET", "/a");
        let new = policy(POLICY);
        new.inherit_stats(&old);
        let reads = |p: &Policy| p.stats_json("api")["rules"][0]["hits"]["allow"].clone();
        assert_eq!(reads(&new), 1);
        // In flight across the swap: decided by the old policy, recorded there.
        judge(&old, "GET", "/b");
        on_worker(1, || {
            judge(&old, "GET", "/c");
        });
        assert_eq!(reads(&new), 3);
        judge(&new, "GET", "/d");
        drop(old);
        assert_eq!(
            reads(&new),
            4,
            "folded in once nothing holds the old policy"
        );
        assert_eq!(reads(&new), 4);
        // A second reload continues the first one's counters.
        let newer = Arc::new(policy(POLICY));
        newer.inherit_stats(&Arc::new(new));
        assert_eq!(reads(&newer), 4);
    }
}

//! Decision lines, with any values: each is one line of JSON, and every field reads back
//! as the value written.
#![no_main]

use arbitrary::Arbitrary;
use idgate::telemetry::{decision_line, DecisionRecord};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    ts: &'a str,
    listener: &'a str,
    source: Option<&'a str>,
    destination: Option<&'a str>,
    method: Option<&'a str>,
    path: Option<&'a str>,
    rule: Option<&'a str>,
    status: u16,
    duration_ms: f64,
    request_id: &'a str,
    reason: Option<&'a str>,
    policy_version: Option<&'a str>,
    audit_rule: Option<&'a str>,
    break_glass: bool,
    bytes_in: Option<u64>,
    bytes_out: Option<u64>,
}

fuzz_target!(|input: Input<'_>| {
    let record = DecisionRecord {
        listener: input.listener,
        direction: "inbound",
        source: input.source,
        destination: input.destination,
        method: input.method,
        path: input.path,
        decision: "deny",
        rule: input.rule,
        status: input.status,
        duration_ms: input.duration_ms,
        request_id: input.request_id,
        reason: input.reason,
        policy_version: input.policy_version,
        audit_rule: input.audit_rule,
        break_glass: input.break_glass,
        bytes_in: input.bytes_in,
        bytes_out: input.bytes_out,
    };
    let mut out = Vec::new();
    decision_line::write(input.ts, &record, &mut out);
    assert_eq!(out.last(), Some(&b'\n'));
    assert!(
        !out[..out.len() - 1].contains(&b'\n'),
        "a line break inside the line"
    );
    let line: Value = serde_json::from_slice(&out).expect("a decision line is JSON");
    let text = |key: &str| line.get(key).map(|v| v.as_str().map(str::to_owned));
    assert_eq!(text("ts"), Some(Some(input.ts.to_owned())));
    assert_eq!(text("listener"), Some(Some(input.listener.to_owned())));
    assert_eq!(text("request_id"), Some(Some(input.request_id.to_owned())));
    for (key, value) in [
        ("source", input.source),
        ("destination", input.destination),
        ("method", input.method),
        ("path", input.path),
        ("rule", input.rule),
    ] {
        assert_eq!(text(key), Some(value.map(str::to_owned)), "{key}");
    }
    for (key, value) in [
        ("reason", input.reason),
        ("policy_version", input.policy_version),
        ("audit_rule", input.audit_rule),
    ] {
        assert_eq!(text(key).flatten(), value.map(str::to_owned), "{key}");
    }
    assert_eq!(line["status"].as_u64(), Some(u64::from(input.status)));
    assert_eq!(line.get("break_glass").is_some(), input.break_glass);
    for (key, value) in [("bytes_in", input.bytes_in), ("bytes_out", input.bytes_out)] {
        assert_eq!(line.get(key).and_then(Value::as_u64), value, "{key}");
    }
});

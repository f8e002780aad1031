//! One decision as one JSON line, in SPEC.md's field order.
//!
//! Written by hand rather than through serde: the keys are fixed text, so only values
//! need escaping, and a value without `"`, `\` or control bytes (nearly all of them) is
//! copied as is. A value that does need escaping goes through serde_json, so every line is
//! exactly what serde_json would write.

use super::decisions::DecisionRecord;

/// `,"name":` for the field `name`, made at compile time (names are fixed ASCII words:
/// nothing to escape), so each key is one copy.
macro_rules! key {
    ($name:literal) => {
        concat!(",\"", $name, "\":").as_bytes()
    };
}

/// Appends `record`, stamped `ts`, to `out` as one JSON object and a newline.
pub fn write(ts: &str, record: &DecisionRecord<'_>, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"ts\":");
    string(out, ts);
    // SPEC's fields, null when absent.
    for (name, value) in [
        (key!("listener"), Some(record.listener)),
        (key!("direction"), Some(record.direction)),
        (key!("source"), record.source),
        (key!("destination"), record.destination),
        (key!("method"), record.method),
        (key!("path"), record.path),
        (key!("decision"), Some(record.decision)),
        (key!("rule"), record.rule),
    ] {
        out.extend_from_slice(name);
        optional_string(out, value);
    }
    out.extend_from_slice(key!("status"));
    number(out, record.status);
    out.extend_from_slice(key!("duration_ms"));
    number(out, record.duration_ms);
    out.extend_from_slice(key!("request_id"));
    string(out, record.request_id);
    // idgate's extra fields, only when they apply.
    for (name, value) in [
        (key!("reason"), record.reason),
        (key!("policy_version"), record.policy_version),
        (key!("audit_rule"), record.audit_rule),
    ] {
        if let Some(value) = value {
            out.extend_from_slice(name);
            string(out, value);
        }
    }
    if record.break_glass {
        out.extend_from_slice(key!("break_glass"));
        out.extend_from_slice(b"true");
    }
    for (name, value) in [
        (key!("bytes_in"), record.bytes_in),
        (key!("bytes_out"), record.bytes_out),
    ] {
        if let Some(value) = value {
            out.extend_from_slice(name);
            number(out, value);
        }
    }
    out.extend_from_slice(b"}\n");
}

fn optional_string(out: &mut Vec<u8>, value: Option<&str>) {
    match value {
        Some(value) => string(out, value),
        None => out.extend_from_slice(b"null"),
    }
}

fn string(out: &mut Vec<u8>, value: &str) {
    // A fold, not `all`: without an early exit the compiler checks many bytes at once.
    let special = value.bytes().fold(false, |special, byte| {
        special | (byte < 0x20) | (byte == b'"') | (byte == b'\\')
    });
    if !special {
        out.push(b'"');
        out.extend_from_slice(value.as_bytes());
        out.push(b'"');
    } else {
        // Writing to a Vec cannot fail.
        let _ = serde_json::to_writer(out, value);
    }
}

/// An integer, or a float (`null` when not finite), as serde_json writes it.
fn number(out: &mut Vec<u8>, value: impl serde::Serialize) {
    // Writing to a Vec cannot fail.
    let _ = serde_json::to_writer(out, &value);
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;

    fn record<'a>(text: &'a str) -> DecisionRecord<'a> {
        DecisionRecord {
            listener: text,
            direction: "inbound",
            source: Some(text),
            destination: None,
            method: Some("GET"),
            path: Some(text),
            decision: "deny",
            rule: Some(text),
            status: 403,
            duration_ms: 0.41,
            request_id: text,
            reason: Some(text),
            policy_version: None,
            audit_rule: Some(text),
            break_glass: true,
            bytes_in: Some(7),
            bytes_out: None,
        }
    }

    fn line(record: &DecisionRecord<'_>) -> String {
        let mut out = Vec::new();
        write("2026-11-26T10:00:00.123Z", record, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn a_line_has_specs_fields_in_order_and_the_optional_ones_only_when_set() {
        let mut plain = record("api");
        plain.reason = None;
        plain.audit_rule = None;
        plain.break_glass = false;
        plain.bytes_in = None;
        assert_eq!(
            line(&plain),
            concat!(
                r#"{"ts":"2026-11-26T10:00:00.123Z","listener":"api","direction":"inbound","#,
                r#""source":"api","destination":null,"method":"GET","path":"api","#,
                r#""decision":"deny","rule":"api","status":403,"duration_ms":0.41,"#,
                r#""request_id":"api"}"#,
                "\n"
            )
        );
    }

    #[test]
    fn every_value_reads_back_as_written_whatever_its_bytes() {
        for text in [
            "plain",
            "",
            "quote \" and backslash \\",
            "control \u{1} \n \t \r \u{1f}",
            "del \u{7f}, slash /, unicode é 日本 🦀",
            "</script>",
        ] {
            let written = line(&record(text));
            assert!(written.ends_with("}\n") && written.matches('\n').count() == 1);
            let parsed: Value = serde_json::from_str(&written).unwrap_or_else(|e| {
                panic!("{text:?} gave invalid JSON {written}: {e}");
            });
            for field in [
                "listener",
                "source",
                "path",
                "rule",
                "request_id",
                "reason",
                "audit_rule",
            ] {
                assert_eq!(parsed[field], json!(text), "{field} in {written}");
            }
            assert_eq!(parsed["break_glass"], json!(true));
            assert_eq!(parsed["bytes_in"], json!(7));
            assert_eq!(parsed["duration_ms"], json!(0.41));
            assert!(parsed.get("bytes_out").is_none() && parsed.get("policy_version").is_none());
            let mut escaped = Vec::new();
            serde_json::to_writer(&mut escaped, text).unwrap();
            let escaped = String::from_utf8(escaped).unwrap();
            assert!(
                written.contains(&format!("\"listener\":{escaped},")),
                "serde_json's escaping of {text:?}: {written}"
            );
        }
    }

    #[test]
    fn a_duration_that_is_not_a_number_is_null() {
        let mut odd = record("api");
        odd.duration_ms = f64::NAN;
        let parsed: Value = serde_json::from_str(&line(&odd)).unwrap();
        assert_eq!(parsed["duration_ms"], Value::Null);
    }
}

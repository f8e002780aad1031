//! YAML read and written the way kubectl reads it: YAML 1.1 (sigs.k8s.io/yaml, go-yaml v2),
//! not the YAML 1.2 of serde_yaml_ng.
//!
//! Reading: plain (unquoted) scalars that kubectl takes for something other than a string
//! (`on`, `yes`, `n`, octal `0644`, `1_000`) become that bool or number. Writing: every
//! string a YAML 1.1 reader would take for something else (`"on"`, `"0644"`, `"1:20"`,
//! `".nan"`) is quoted. Only the [`AMBIGUOUS`] table and a numeric-looking rule decide;
//! nothing here touches the document's structure.

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess, VariantAccess};
use serde_yaml_ng::value::{Tag, TaggedValue};
use serde_yaml_ng::{Mapping, Number, Value};

/// Plain scalars YAML 1.1 gives a non-string meaning that are not numeric-looking.
pub const AMBIGUOUS: &[&str] = &[
    "y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "true", "True", "TRUE", "false",
    "False", "FALSE", "on", "On", "ON", "off", "Off", "OFF", "~", "null", "Null", "NULL", "", "<<",
    "=", ".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF", "-.inf", "-.Inf", "-.INF", ".nan",
    ".NaN", ".NAN",
];

/// The bools go-yaml v2 reads that YAML 1.2 does not (true/false forms it shares).
const BOOLS: &[(&str, bool)] = &[
    ("y", true),
    ("Y", true),
    ("yes", true),
    ("Yes", true),
    ("YES", true),
    ("on", true),
    ("On", true),
    ("ON", true),
    ("n", false),
    ("N", false),
    ("no", false),
    ("No", false),
    ("NO", false),
    ("off", false),
    ("Off", false),
    ("OFF", false),
];

/// Characters of YAML 1.1 ints (binary, octal, hex, sexagesimal, `_`), floats and
/// timestamps: a string starting like a number and made only of these is quoted.
const NUMERIC: &str = "0123456789abcdefABCDEFxXoO_:.+-tTzZ ";

/// Whether a YAML 1.1 reader could take plain `s` for something other than a string.
pub fn is_ambiguous(s: &str) -> bool {
    if AMBIGUOUS.contains(&s) {
        return true;
    }
    let unsigned = s.strip_prefix(['-', '+']).unwrap_or(s);
    unsigned.starts_with(|c: char| c.is_ascii_digit() || c == '.')
        && unsigned.contains(|c: char| c.is_ascii_digit())
        && s.chars().all(|c| NUMERIC.contains(c))
}

/// What go-yaml v2 (kubectl) reads plain `s` as, when that differs from YAML 1.2.
fn resolve_plain(s: &str) -> Option<Value> {
    if let Some((_, b)) = BOOLS.iter().find(|(word, _)| *word == s) {
        return Some(Value::Bool(*b));
    }
    let (negative, unsigned) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if !unsigned.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    // go-yaml v2 drops every '_' of a number, then parses like Go's ParseInt(s, 0, 64).
    let digits = unsigned.replace('_', "");
    let (radix, body) = match digits.get(..2) {
        Some("0x" | "0X") => (16, &digits[2..]),
        Some("0o" | "0O") => (8, &digits[2..]),
        Some("0b" | "0B") => (2, &digits[2..]),
        _ if digits.len() > 1 && digits.starts_with('0') => (8, &digits[1..]),
        _ if digits.len() != unsigned.len() => (10, &digits[..]),
        _ => return None,
    };
    let parsed = i64::from_str_radix(body, radix).ok();
    match (parsed, radix) {
        (Some(n), _) => Some(Value::Number(Number::from(if negative { -n } else { n }))),
        // `09`: not octal, so go-yaml v2 reads a decimal float; so is `1_000.5` without
        // its '_'s (YAML 1.1's float: digits, one '.', an exponent).
        (None, 8) if body.bytes().all(|b| b.is_ascii_digit()) => float(negative, &digits),
        (None, 10) if body.bytes().all(|b| b"0123456789.eE+-".contains(&b)) => {
            float(negative, &digits)
        }
        (None, _) => None,
    }
}

/// `digits` (no sign, no '_') as a float, negated when `negative`.
fn float(negative: bool, digits: &str) -> Option<Value> {
    let n: f64 = digits.parse().ok()?;
    Some(Value::Number(Number::from(if negative { -n } else { n })))
}

/// Parses one YAML document as kubectl would (see the module doc).
pub fn from_str(text: &str) -> Result<Value, serde_yaml_ng::Error> {
    Node { source: text }.deserialize(serde_yaml_ng::Deserializer::from_str(text))
}

/// Builds a [`Value`], resolving plain scalars the YAML 1.1 way. serde_yaml_ng hands a
/// scalar's text as a slice of `source` when it can; a plain one is not enclosed in quotes.
#[derive(Clone, Copy)]
struct Node<'s> {
    source: &'s str,
}

impl Node<'_> {
    /// Whether `v`, a slice of the source, was written without quotes.
    fn is_plain(&self, v: &str) -> bool {
        let start = (v.as_ptr() as usize).wrapping_sub(self.source.as_ptr() as usize);
        let bytes = self.source.as_bytes();
        if start > bytes.len() || start + v.len() > bytes.len() {
            return false;
        }
        let before = start.checked_sub(1).map(|i| bytes[i]);
        let after = bytes.get(start + v.len()).copied();
        !(matches!(before, Some(b'\'' | b'"')) && before == after)
    }
}

impl<'de> DeserializeSeed<'de> for Node<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Node<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Value, E> {
        match self.is_plain(v).then(|| resolve_plain(v)).flatten() {
            Some(resolved) => Ok(resolved),
            None => Ok(Value::String(v.to_string())),
        }
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(self)? {
            items.push(item);
        }
        Ok(Value::Sequence(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut mapping = Mapping::new();
        while let Some(key) = map.next_key_seed(self)? {
            let value = map.next_value_seed(self)?;
            mapping.insert(key, value);
        }
        Ok(Value::Mapping(mapping))
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Value, A::Error> {
        let (tag, contents) = data.variant::<String>()?;
        let value = contents.newtype_variant_seed(self)?;
        Ok(Value::Tagged(Box::new(TaggedValue {
            tag: Tag::new(tag),
            value,
        })))
    }
}

/// Writes `value` as YAML that means the same to a YAML 1.1 reader: every ambiguous
/// string is quoted. `source` is the text it was read from (placeholders avoid it).
pub fn to_string(value: &Value, source: &str) -> Result<String, serde_yaml_ng::Error> {
    // serde_yaml_ng quotes what YAML 1.2 would misread; the rest goes through a
    // placeholder, a plain word found nowhere in the source, replaced once written.
    let mut prefix = String::from("idgate-yaml11-");
    while source.contains(&prefix) {
        prefix.push('q');
    }
    let mut quoted = Vec::new();
    let marked = mark(value, &prefix, &mut quoted)?;
    let mut text = serde_yaml_ng::to_string(&marked)?;
    for (i, s) in quoted.iter().enumerate().rev() {
        let json = serde_json::to_string(s).unwrap_or_default();
        text = text.replace(&format!("{prefix}{i}z"), &json);
    }
    Ok(text)
}

/// `value` with each string serde_yaml_ng would leave plain but YAML 1.1 misreads replaced
/// by `{prefix}{index}z` (index into `quoted`).
fn mark(
    value: &Value,
    prefix: &str,
    quoted: &mut Vec<String>,
) -> Result<Value, serde_yaml_ng::Error> {
    Ok(match value {
        Value::String(s) if is_ambiguous(s) && written_plain(s)? => {
            quoted.push(s.clone());
            Value::String(format!("{prefix}{}z", quoted.len() - 1))
        }
        Value::Sequence(items) => Value::Sequence(
            items
                .iter()
                .map(|v| mark(v, prefix, quoted))
                .collect::<Result<_, _>>()?,
        ),
        Value::Mapping(map) => {
            let mut out = Mapping::new();
            for (k, v) in map {
                out.insert(mark(k, prefix, quoted)?, mark(v, prefix, quoted)?);
            }
            Value::Mapping(out)
        }
        Value::Tagged(tagged) => Value::Tagged(Box::new(TaggedValue {
            tag: tagged.tag.clone(),
            value: mark(&tagged.value, prefix, quoted)?,
        })),
        other => other.clone(),
    })
}

/// Whether serde_yaml_ng writes `s` without quotes.
fn written_plain(s: &str) -> Result<bool, serde_yaml_ng::Error> {
    let text = serde_yaml_ng::to_string(s)?;
    Ok(!text.starts_with(['\'', '"']))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (plain scalar, what a YAML 1.1 reader (kubectl, PyYAML) sees, as a YAML 1.2 value).
    const READ: &[(&str, &str)] = &[
        ("on", "true"),
        ("Off", "false"),
        ("y", "true"),
        ("NO", "false"),
        ("0644", "420"),
        ("-010", "-8"),
        ("0o644", "420"),
        ("0x1F", "31"),
        ("0b101", "5"),
        ("1_000", "1000"),
        ("09", "9.0"),
        ("1_000.5", "1000.5"),
        ("-1_0.5e1", "-105.0"),
        ("1_0.5.5", "'1_0.5.5'"),
        ("'0644'", "'0644'"),
        ("\"on\"", "'on'"),
        ("onion", "onion"),
        ("10m", "10m"),
        ("1:20", "'1:20'"),
        ("8080", "8080"),
    ];

    #[test]
    fn plain_scalars_are_read_as_kubectl_reads_them() {
        for (plain, expected) in READ {
            let read = from_str(&format!("v: {plain}\n")).unwrap();
            let expected: Value = serde_yaml_ng::from_str(&format!("v: {expected}\n")).unwrap();
            assert_eq!(read, expected, "{plain}");
        }
        assert_eq!(from_str("# only a comment\n").unwrap(), Value::Null);
        let read = from_str("[yes, \"yes\", 'no', {on: 0755}]").unwrap();
        let expected: Value = serde_yaml_ng::from_str("[true, 'yes', 'no', {true: 493}]").unwrap();
        assert_eq!(read, expected);
    }

    /// Strings written quoted: each of these, written plain, is a bool, null, int, float,
    /// timestamp, merge or value key to PyYAML (checked with PyYAML 6), or, for `y` and `n`,
    /// a bool to go-yaml v2 (kubectl).
    const QUOTED: &[&str] = &[
        "on",
        "Off",
        "y",
        "n",
        "yes",
        "NO",
        "~",
        "null",
        "",
        "0644",
        "0x1F",
        "0b101",
        "1_000",
        "1:20",
        "190:20:30.15",
        ".inf",
        "-.INF",
        ".NaN",
        "1.5",
        "6.8523015e+5",
        "2001-12-14",
        "2001-12-14t21:59:43.10-05:00",
        "<<",
        "=",
        "+12",
        "-7",
    ];
    /// Strings written plain: strings to every YAML 1.1 reader.
    const PLAIN: &[&str] = &[
        "onion",
        "10m",
        "32Mi",
        "app",
        "Always",
        "yes-please",
        "x1:20",
    ];

    #[test]
    fn strings_a_yaml_1_1_reader_would_misread_are_quoted() {
        for s in QUOTED {
            let text = to_string(&Value::String(s.to_string()), "").unwrap();
            assert!(text.starts_with(['\'', '"']), "{s:?} written as {text}");
            assert_eq!(from_str(&text).unwrap(), Value::String(s.to_string()));
        }
        for s in PLAIN {
            let text = to_string(&Value::String(s.to_string()), "").unwrap();
            assert_eq!(text, format!("{s}\n"));
        }
        let map: Value = serde_yaml_ng::from_str("{on: yes, env: [{value: '0644'}]}").unwrap();
        let text = to_string(&map, "idgate-yaml11-").unwrap();
        assert_eq!(text, "\"on\": \"yes\"\nenv:\n- value: '0644'\n");
    }
}

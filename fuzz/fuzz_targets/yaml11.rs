//! YAML as kubectl reads it (`idgate inject`'s writer): any strings, written by
//! `yaml11::to_string` (as sequence items, mapping keys and values), read back by
//! `yaml11::from_str` as the very same strings: none comes back as a bool, a number or
//! null, and none changes.
#![no_main]

use idgate::k8s::yaml11;
use libfuzzer_sys::fuzz_target;
use serde_yaml_ng::{Mapping, Value};

fuzz_target!(|strings: Vec<String>| {
    let mut mapping = Mapping::new();
    for pair in strings.chunks(2) {
        let value = pair.get(1).cloned().unwrap_or_default();
        mapping.insert(Value::String(pair[0].clone()), Value::String(value));
    }
    let items = strings.iter().cloned().map(Value::String).collect();
    let document = Value::Sequence(vec![Value::Sequence(items), Value::Mapping(mapping)]);
    // The text the strings were "read from": the writer's placeholders avoid it.
    let source = strings.concat();
    let Ok(text) = yaml11::to_string(&document, &source) else {
        return;
    };
    let back = yaml11::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(back, document, "{text}");
});

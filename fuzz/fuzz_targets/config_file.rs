//! Config files, as any text: loading never panics, and an error points at a line of the
//! file (the policies a config names are read from disk and are absent here).
#![no_main]

use idgate::config::{Config, SourceFile};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let source = SourceFile {
        path: "/nonexistent/idgate-fuzz/idgate.toml".into(),
        text: text.to_owned(),
    };
    if let Err(e) = Config::from_source(&source) {
        assert!(!e.message.is_empty());
        if let Some(line) = e.line {
            assert!(
                (1..=text.lines().count() + 1).contains(&line),
                "line {line}: {e}"
            );
        }
    }
});

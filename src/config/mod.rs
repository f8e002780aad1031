//! Sidecar configuration: the TOML model, loading, and validation.

mod source;

pub use source::{FileError, SourceFile};

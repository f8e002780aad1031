//! Reading TOML files into typed values with errors that name file, line and field.
//!
//! Shared by the sidecar config and policy files. It only parses and locates; it must
//! never decide what a value means (that belongs to the type being deserialised).

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// An error in an input file, displayed as `file:line: field: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileError {
    /// The file the error is in.
    pub file: PathBuf,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// Dotted field path such as `inbound[0].upstream`, when known.
    pub field: Option<String>,
    /// What is wrong and, where possible, what to do.
    pub message: String,
}

impl FileError {
    /// An error about the whole file (unreadable, missing).
    pub fn file(file: &Path, message: impl Into<String>) -> Self {
        Self {
            file: file.to_path_buf(),
            line: None,
            field: None,
            message: message.into(),
        }
    }
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(field) = &self.field {
            write!(f, ": {field}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for FileError {}

/// A TOML file held in memory, so later checks can point back at its lines.
#[derive(Debug, Clone)]
pub struct SourceFile {
    /// Where the text came from (a path, or a label such as `$IDGATE_CONFIG_TOML`).
    pub path: PathBuf,
    /// The file's text.
    pub text: String,
}

impl SourceFile {
    /// Reads a file, naming it in the error when it cannot be read.
    pub fn read(path: &Path) -> Result<Self, FileError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| FileError::file(path, format!("cannot read file: {e}")))?;
        Ok(Self {
            path: path.to_path_buf(),
            text,
        })
    }

    /// Deserialises the whole file; unknown keys and bad values name their field and line.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, FileError> {
        let deserializer = toml::Deserializer::parse(&self.text).map_err(|e| FileError {
            line: e.span().map(|s| self.line_of(s.start)),
            ..FileError::file(&self.path, e.message().trim_end())
        })?;
        serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let path = field_path(e.path());
            let inner = e.into_inner();
            FileError {
                file: self.path.clone(),
                line: inner.span().map(|s| self.line_of(s.start)),
                field: (!path.is_empty()).then_some(path),
                message: inner.message().trim_end().to_string(),
            }
        })
    }

    /// An error about a field whose value was deserialised with its span.
    pub fn error_at(
        &self,
        span: Range<usize>,
        field: &str,
        message: impl Into<String>,
    ) -> FileError {
        FileError {
            file: self.path.clone(),
            line: Some(self.line_of(span.start)),
            field: Some(field.to_string()),
            message: message.into(),
        }
    }

    /// Resolves a path named in this file against the file's directory.
    pub fn resolve(&self, relative: &Path) -> PathBuf {
        match self.path.parent() {
            Some(dir) if relative.is_relative() => dir.join(relative),
            _ => relative.to_path_buf(),
        }
    }

    fn line_of(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }
}

/// `inbound[0].upstream`, skipping the internal names `toml::Spanned` adds on the way.
fn field_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } if key.starts_with("$__serde_spanned") => {}
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Unknown => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Doc {
        item: Vec<toml::Spanned<Item>>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Item {
        listen: std::net::SocketAddr,
    }

    fn source(text: &str) -> SourceFile {
        SourceFile {
            path: "dir/x.toml".into(),
            text: text.into(),
        }
    }

    #[test]
    fn names_file_line_and_field() {
        let err = source("[[item]]\nlisten = '127.0.0.1:1'\n[[item]]\nlisten = 'nope'\n")
            .parse::<Doc>()
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "dir/x.toml:4: item[1].listen: invalid socket address syntax"
        );
    }

    #[test]
    fn refuses_unknown_keys() {
        let err = source("[[item]]\nlisten = '127.0.0.1:1'\nlisen = 1\n")
            .parse::<Doc>()
            .unwrap_err();
        assert_eq!(err.line, Some(3));
        assert_eq!(err.field.as_deref(), Some("item[0].lisen"));
        assert!(err.message.contains("unknown field `lisen`"), "{err}");
    }

    #[test]
    fn syntax_errors_have_a_line() {
        let err = source("[[item]]\nlisten = \n").parse::<Doc>().unwrap_err();
        assert_eq!(err.line, Some(2), "{err}");
    }

    #[test]
    fn resolves_relative_to_the_file() {
        assert_eq!(
            source("").resolve(Path::new("a.pem")),
            PathBuf::from("dir/a.pem")
        );
        assert_eq!(
            source("").resolve(Path::new("/a.pem")),
            PathBuf::from("/a.pem")
        );
    }
}

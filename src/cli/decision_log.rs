//! Reading decision logs (one JSON object a line, SPEC.md's format) for `policy learn` and
//! `policy diff`.
//!
//! Only the fields the offline tools need are read; unknown fields are ignored so logs
//! from newer versions still load. Every error names `file:line:`. It never judges a
//! request: that is `check::judge`'s job.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Why a decision log could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The file could not be opened or read.
    #[error("{}: cannot read decision log: {source}", file.display())]
    Io {
        /// The log file.
        file: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A line is not a decision record.
    #[error("{}:{line}: {message} (expected one JSON decision record a line, as idgate writes them)", file.display())]
    Line {
        /// The log file.
        file: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        message: String,
    },
}

/// One decision line, as far as the offline tools care.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Entry {
    /// When it was logged (RFC 3339), if present.
    #[serde(default)]
    pub ts: Option<String>,
    /// Listener name.
    #[serde(default)]
    pub listener: Option<String>,
    /// `inbound` or `outbound`.
    #[serde(default)]
    pub direction: Option<String>,
    /// The client's SPIFFE ID.
    #[serde(default)]
    pub source: Option<String>,
    /// HTTP method; null for a TCP connection.
    #[serde(default)]
    pub method: Option<String>,
    /// Normalised path; null for a TCP connection.
    #[serde(default)]
    pub path: Option<String>,
    /// `allow`, `deny` or `audit_deny`.
    pub decision: String,
    /// The deciding rule; null for the default.
    #[serde(default)]
    pub rule: Option<String>,
    /// Response status.
    #[serde(default)]
    pub status: Option<u16>,
}

impl Entry {
    /// A TCP connection line (no method and no path).
    pub fn is_tcp(&self) -> bool {
        self.method.is_none() && self.path.is_none()
    }

    /// Judged by an inbound listener's policy (outbound lines carry no policy decision).
    pub fn is_inbound(&self) -> bool {
        self.direction.as_deref().is_none_or(|d| d == "inbound")
    }
}

/// A decision line and where it came from.
#[derive(Debug, Clone)]
pub struct Located {
    /// The log file.
    pub file: PathBuf,
    /// 1-based line number.
    pub line: usize,
    /// The record.
    pub entry: Entry,
}

/// Reads every non-blank line of every file, in order.
pub fn read_all(files: &[PathBuf]) -> Result<Vec<Located>, LogError> {
    let mut out = Vec::new();
    for file in files {
        read_file(file, &mut out)?;
    }
    Ok(out)
}

fn read_file(file: &Path, out: &mut Vec<Located>) -> Result<(), LogError> {
    let io = |source| LogError::Io {
        file: file.to_path_buf(),
        source,
    };
    let reader = BufReader::new(std::fs::File::open(file).map_err(io)?);
    for (n, line) in reader.lines().enumerate() {
        let line = line.map_err(io)?;
        if line.trim().is_empty() {
            continue;
        }
        let entry = parse_line(&line).map_err(|message| LogError::Line {
            file: file.to_path_buf(),
            line: n + 1,
            message,
        })?;
        out.push(Located {
            file: file.to_path_buf(),
            line: n + 1,
            entry,
        });
    }
    Ok(())
}

fn parse_line(line: &str) -> Result<Entry, String> {
    let entry: Entry = serde_json::from_str(line).map_err(|e| e.to_string())?;
    if !matches!(entry.decision.as_str(), "allow" | "deny" | "audit_deny") {
        return Err(format!(
            "decision {:?} is not allow, deny or audit_deny",
            entry.decision
        ));
    }
    if entry.method.is_some() != entry.path.is_some() {
        return Err("method and path must both be set (HTTP) or both null (TCP)".into());
    }
    Ok(entry)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_lines_and_names_bad_ones() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.log");
        std::fs::write(
            &good,
            "{\"ts\":\"2026-01-01T00:00:00.000Z\",\"listener\":\"api\",\"direction\":\"inbound\",\"source\":\"spiffe://e.org/a\",\"destination\":\"spiffe://e.org/b\",\"method\":\"GET\",\"path\":\"/x\",\"decision\":\"allow\",\"rule\":\"r\",\"status\":200,\"duration_ms\":0.1,\"request_id\":\"1\",\"extra\":1}\n\n{\"source\":\"spiffe://e.org/a\",\"method\":null,\"path\":null,\"decision\":\"deny\",\"rule\":null,\"bytes_in\":0}\n",
        )
        .unwrap();
        let read = read_all(std::slice::from_ref(&good)).unwrap();
        assert_eq!(read.len(), 2);
        assert_eq!(read[1].line, 3);
        assert!(read[1].entry.is_tcp());
        assert_eq!(read[0].entry.path.as_deref(), Some("/x"));

        let bad = dir.path().join("bad.log");
        std::fs::write(
            &bad,
            "{\"decision\":\"allow\",\"method\":\"GET\",\"path\":\"/\"}\nnot json\n",
        )
        .unwrap();
        let err = read_all(&[good.clone(), bad.clone()])
            .unwrap_err()
            .to_string();
        assert!(err.starts_with(&format!("{}:2: ", bad.display())), "{err}");
        std::fs::write(&bad, "{\"decision\":\"maybe\"}\n").unwrap();
        let err = read_all(std::slice::from_ref(&bad))
            .unwrap_err()
            .to_string();
        assert!(err.contains(":1: decision \"maybe\""), "{err}");
        let err = read_all(&[dir.path().join("none.log")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("none.log: cannot read decision log"), "{err}");
    }
}

//! Where the decision log's writer thread writes: stderr, stdout or a file, and reopening
//! that file on request (SIGHUP), for logrotate's `postrotate kill -HUP` (nginx's USR1).
//!
//! Only the writer thread touches a sink. A failed reopen keeps the handle it had: lines
//! are never written nowhere because a rotation went wrong.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use prometheus_client::metrics::counter::Counter;

/// The decision log's destination, and the path a file is reopened from.
pub struct Sink {
    out: Box<dyn Write + Send>,
    path: Option<PathBuf>,
}

impl Sink {
    /// `stderr`, `stdout` or a file path (created if missing, appended to).
    pub fn open(target: &str) -> io::Result<Self> {
        let (out, path): (Box<dyn Write + Send>, _) = match target {
            "stderr" => (Box::new(io::stderr()), None),
            "stdout" => (Box::new(io::stdout()), None),
            path => (
                Box::new(append(Path::new(path))?),
                Some(PathBuf::from(path)),
            ),
        };
        Ok(Self { out, path })
    }

    /// A sink that is no file (nothing to reopen).
    #[cfg(test)]
    pub fn writer(out: Box<dyn Write + Send>) -> Self {
        Self { out, path: None }
    }

    /// Opens the file's path anew and writes there from now on, after flushing what the
    /// old handle holds. If the path cannot be opened, keeps writing to the old handle,
    /// logs the error and counts it in `errors`. Streams are not reopened.
    pub fn reopen(&mut self, errors: &Counter) {
        let Some(path) = &self.path else {
            return;
        };
        match append(path) {
            Ok(file) => {
                if let Err(error) = self.out.flush() {
                    tracing::error!(%error, "cannot flush the decision log before reopening it");
                }
                self.out = Box::new(file);
                tracing::info!(path = %path.display(), "reopened the decision log");
            }
            Err(error) => {
                errors.inc();
                tracing::error!(path = %path.display(), %error, "cannot reopen the decision log; writing on to the file open before (idgate_decision_log_reopen_errors_total)");
            }
        }
    }
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.out.write(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.out.write_all(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// `path`, created if missing, opened for appending.
fn append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot open decision log {}: {e}", path.display()),
            )
        })
}

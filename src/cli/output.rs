//! The commands' standard output. Written through [`out!`] and [`outln!`], never
//! `print!`/`println!`: those panic when stdout is gone (a pipe whose reader quit, as in
//! `idgate inspect svid.pem | head -1`), and a panic aborts the release build (exit 134).
//!
//! The first failed write is kept and later output skipped; the command runs to its end
//! and [`finish`] turns the failure into its exit code. Never writes to stderr but there.

use std::fmt;
use std::io::{self, Write};
use std::sync::{Mutex, PoisonError};

/// The first write to stdout that failed, if any.
static FAILURE: Mutex<Option<io::Error>> = Mutex::new(None);

/// Writes `args` to stdout, unless an earlier write failed; a failure is kept for
/// [`finish`].
pub fn write_fmt(args: fmt::Arguments<'_>) {
    let mut failure = FAILURE.lock().unwrap_or_else(PoisonError::into_inner);
    if failure.is_none() {
        *failure = io::stdout().lock().write_fmt(args).err();
    }
}

/// The exit code of a command that ends with `code`, once its output is flushed: `code`
/// when every write succeeded, and also when stdout's reader went away (a broken pipe: the
/// reader took what it wanted, as `head` does, and the command's own outcome stands);
/// 2 with an `error:` line on stderr when a write failed otherwise (a full disk).
pub fn finish(code: u8) -> u8 {
    let flushed = io::stdout().lock().flush();
    let kept = FAILURE
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take();
    match kept.or(flushed.err()) {
        None => code,
        Some(error) if error.kind() == io::ErrorKind::BrokenPipe => code,
        Some(error) => {
            eprintln!("error: cannot write to stdout: {error}");
            2
        }
    }
}

/// `print!` to stdout through [`write_fmt`]: a failed write never panics.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cli::output::write_fmt(format_args!($($arg)*))
    };
}

/// `println!` to stdout through [`write_fmt`]: a failed write never panics.
macro_rules! outln {
    () => {
        $crate::cli::output::write_fmt(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::cli::output::write_fmt(format_args!("{}\n", format_args!($($arg)*)))
    };
}

pub(crate) use {out, outln};

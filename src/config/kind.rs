//! Which `timeouts` and `limits` keys mean something to which kind of listener.
//!
//! A key a listener would never use (`timeouts.handshake` on an outbound listener;
//! `timeouts.header`, `.response` and `.body`, `limits.max_header_bytes` and
//! `.max_concurrent_streams` on a TCP one) is refused where it is written, never silently
//! ignored. This module only judges keys; the tables' defaults live with the tables.

use std::fmt;

use toml::Spanned;

use super::{FileError, Protocol, SourceFile};

/// The kind of listener a `timeouts` or `limits` table belongs to.
#[derive(Debug, Clone, Copy)]
pub(super) struct ListenerKind {
    /// `[[inbound]]` (mTLS from peers) rather than `[[outbound]]` (plain from the app).
    pub inbound: bool,
    /// What the listener carries.
    pub protocol: Protocol,
}

impl fmt::Display for ListenerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.inbound, self.protocol) {
            (true, Protocol::Http) => write!(f, "an inbound listener"),
            (true, Protocol::Tcp) => write!(f, "an inbound protocol = \"tcp\" listener"),
            (false, Protocol::Http) => write!(f, "an outbound listener"),
            (false, Protocol::Tcp) => write!(f, "an outbound protocol = \"tcp\" listener"),
        }
    }
}

/// The keys of one listener's `timeouts` and `limits` tables, judged by its kind.
pub(super) struct ListenerKeys<'a> {
    kind: ListenerKind,
    source: &'a SourceFile,
    field: &'a str,
}

impl ListenerKeys<'_> {
    /// The value of `key` (`timeouts.body`), `None` when not written; refused at its line
    /// when this kind of listener would not use it.
    pub(super) fn written<T: Copy>(
        &self,
        key: &str,
        written: &Option<Spanned<T>>,
    ) -> Result<Option<T>, FileError> {
        let Some(written) = written else {
            return Ok(None);
        };
        match self.kind.unused(key) {
            None => Ok(Some(*written.get_ref())),
            Some(why) => Err(self.source.error_at(
                written.span(),
                &format!("{}.{key}", self.field),
                format!("does not apply to {}: {why}; remove it", self.kind),
            )),
        }
    }
}

impl ListenerKind {
    /// Judges the keys of listener `field` (`inbound[0]`) of this kind, written in `source`.
    pub(super) fn keys<'a>(self, source: &'a SourceFile, field: &'a str) -> ListenerKeys<'a> {
        ListenerKeys {
            kind: self,
            source,
            field,
        }
    }

    /// Why `key` means nothing to this kind of listener, if it does not.
    fn unused(self, key: &str) -> Option<&'static str> {
        match (key, self.inbound, self.protocol) {
            ("timeouts.handshake", false, _) => Some(
                "the app connects in plain text, and the mTLS handshake with the peer is bounded by `connect`",
            ),
            ("timeouts.header" | "limits.max_header_bytes", _, Protocol::Tcp) => {
                Some("it reads no HTTP request headers")
            }
            ("timeouts.response" | "timeouts.body", _, Protocol::Tcp) => {
                Some("it waits for no HTTP response (`idle` closes a relay that moves no bytes)")
            }
            ("limits.max_concurrent_streams", _, Protocol::Tcp) => {
                Some("it carries no HTTP/2 streams (`max_connections` bounds its connections)")
            }
            _ => None,
        }
    }
}

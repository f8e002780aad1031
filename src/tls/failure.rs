//! Handshake outcomes: one classifier from the `io::Error` tokio-rustls returns to a
//! short reason label, one human sentence per failure in the log, the
//! `idgate_tls_handshake_failures_total{listener,reason}` counter, and the count of
//! resumed sessions. It never retries or closes anything; callers decide what to do with
//! the connection.

use std::io;
use std::net::SocketAddr;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use rustls::{AlertDescription, CertificateError};
use rustls_pki_types::UnixTime;

use super::verify::PeerCertError;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    listener: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabel {
    listener: String,
}

/// Handshake failure counting and logging, `idgate_tls_handshake_failures_total{listener,reason}`,
/// and `idgate_tls_sessions_resumed_total{listener}`.
#[derive(Clone, Debug, Default)]
pub struct TlsMetrics {
    failures: Family<FailureLabels, Counter>,
    resumed: Family<ListenerLabel, Counter>,
}

impl TlsMetrics {
    /// Registers the TLS metrics.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            // prometheus-client appends `_total` to counters.
            "idgate_tls_handshake_failures",
            "TLS handshakes that failed, by listener and reason",
            metrics.failures.clone(),
        );
        registry.register(
            "idgate_tls_sessions_resumed",
            "TLS handshakes that resumed a session (no certificate exchanged), by listener",
            metrics.resumed.clone(),
        );
        metrics
    }

    /// The counter of resumed sessions for `listener`, for its connections to increment.
    pub fn resumed(&self, listener: &str) -> Counter {
        let labels = ListenerLabel {
            listener: listener.to_owned(),
        };
        self.resumed.get_or_create(&labels).clone()
    }

    /// Logs a failed handshake with its reason and counts it; returns the reason label.
    pub fn handshake_failed(
        &self,
        listener: &str,
        peer: SocketAddr,
        error: &io::Error,
    ) -> &'static str {
        let reason = failure_reason(error);
        tracing::warn!(
            listener,
            peer.addr = %peer,
            reason,
            "TLS handshake failed: {}",
            describe(error)
        );
        count(&self.failures, listener, reason);
        reason
    }

    /// What counts `listener`'s failed handshakes with the peers it dials (an outbound
    /// listener's, whose callers log the failure with the request or relay it fails).
    pub fn dialed(&self, listener: &str) -> DialFailures {
        DialFailures {
            listener: listener.to_owned(),
            failures: self.failures.clone(),
        }
    }

    /// How many handshakes failed on `listener` for `reason` so far (creates no series).
    pub fn failures(&self, listener: &str, reason: &'static str) -> u64 {
        let labels = FailureLabels {
            listener: listener.to_owned(),
            reason,
        };
        self.failures
            .get(&labels)
            .map_or(0, |counter| counter.get())
    }
}

fn count(failures: &Family<FailureLabels, Counter>, listener: &str, reason: &'static str) {
    failures
        .get_or_create(&FailureLabels {
            listener: listener.to_owned(),
            reason,
        })
        .inc();
}

/// Counts one listener's failed handshakes with the peers it dials in
/// `idgate_tls_handshake_failures_total{listener,reason}`, with the reasons of the
/// inbound's refusals (`unexpected_server_id`, `expired`, `unknown_ca`, `timeout` ...).
#[derive(Clone, Debug)]
pub struct DialFailures {
    listener: String,
    failures: Family<FailureLabels, Counter>,
}

impl DialFailures {
    /// Counts a handshake that failed with `error`; returns the reason label.
    pub fn count(&self, error: &io::Error) -> &'static str {
        let reason = failure_reason(error);
        count(&self.failures, &self.listener, reason);
        reason
    }
}

/// The reason label for a failed handshake (or a failure on a connection's first read,
/// where TLS 1.3 clients learn that the server refused them).
pub fn failure_reason(error: &io::Error) -> &'static str {
    match rustls_error(error) {
        Some(error) => tls_reason(error),
        None => match error.kind() {
            io::ErrorKind::TimedOut => "timeout",
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe => "eof",
            _ => "io",
        },
    }
}

/// One human sentence saying why the handshake failed.
pub fn describe(error: &io::Error) -> String {
    let Some(tls) = rustls_error(error) else {
        return match error.kind() {
            io::ErrorKind::TimedOut => "the handshake timed out".to_owned(),
            io::ErrorKind::UnexpectedEof => "the peer closed the connection mid-handshake".into(),
            _ => error.to_string(),
        };
    };
    match tls {
        rustls::Error::InvalidCertificate(cert) => match cert {
            CertificateError::ExpiredContext { not_after, .. } => {
                format!("certificate expired at {}", rfc3339(*not_after))
            }
            CertificateError::NotValidYetContext { not_before, .. } => {
                format!("certificate not valid before {}", rfc3339(*not_before))
            }
            CertificateError::UnknownIssuer => {
                "certificate not issued by a CA in its trust domain's bundle".to_owned()
            }
            CertificateError::Other(other) => other.to_string(),
            other => format!("certificate refused: {other}"),
        },
        rustls::Error::NoCertificatesPresented => "the client presented no certificate".into(),
        rustls::Error::AlertReceived(alert) => {
            format!("the peer aborted the handshake ({alert:?}); see its logs for why")
        }
        rustls::Error::InvalidMessage(_) => format!("the peer does not speak TLS ({tls})"),
        other => other.to_string(),
    }
}

fn rustls_error(error: &io::Error) -> Option<&rustls::Error> {
    error.get_ref()?.downcast_ref::<rustls::Error>()
}

/// The reason label for a TLS error.
pub(super) fn tls_reason(error: &rustls::Error) -> &'static str {
    match error {
        rustls::Error::InvalidCertificate(cert) => cert_reason(cert),
        rustls::Error::NoCertificatesPresented => "no_client_cert",
        rustls::Error::AlertReceived(AlertDescription::CloseNotify) => "eof",
        rustls::Error::AlertReceived(_) => "peer_rejected",
        rustls::Error::InvalidMessage(_)
        | rustls::Error::InappropriateMessage { .. }
        | rustls::Error::InappropriateHandshakeMessage { .. } => "not_tls",
        rustls::Error::PeerIncompatible(_) => "incompatible",
        rustls::Error::PeerMisbehaved(_) => "peer_misbehaved",
        rustls::Error::NoApplicationProtocol => "no_alpn",
        // rustls's words when our resolver has no SVID to present yet.
        rustls::Error::General(msg) if msg.contains("no server certificate") => "no_identity",
        _ => "tls_error",
    }
}

fn cert_reason(error: &CertificateError) -> &'static str {
    #[allow(deprecated)]
    match error {
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => "expired",
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            "not_yet_valid"
        }
        CertificateError::UnknownIssuer => "unknown_ca",
        CertificateError::BadSignature => "bad_signature",
        CertificateError::Revoked => "revoked",
        CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
            "bad_extended_key_usage"
        }
        CertificateError::Other(other) => other
            .0
            .downcast_ref::<PeerCertError>()
            .map_or("bad_certificate", PeerCertError::label),
        _ => "bad_certificate",
    }
}

/// RFC 3339 (UTC, seconds) for a rustls timestamp.
fn rfc3339(time: UnixTime) -> String {
    i64::try_from(time.as_secs())
        .ok()
        .and_then(|secs| time::OffsetDateTime::from_unix_timestamp(secs).ok())
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("{}s after the epoch", time.as_secs()))
}

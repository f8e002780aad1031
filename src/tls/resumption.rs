//! TLS session resumption that is never worth more than the full handshake it stands in
//! for.
//!
//! A resumed session skips certificate verification, so the sessions of one config live
//! in an *epoch*: the inbound's ticket key, or the outbound's session cache, made fresh
//! when the identity material changes (a new SVID or trust bundle: a removed trust anchor
//! must not ride a ticket), when the earliest peer certificate verified during the epoch
//! expires, and at the latest [`MAX_EPOCH`] after it began. A ticket of an older epoch no
//! longer decrypts (or is no longer found) and the peer goes through a full handshake.
//! Epochs alone cannot bind a ticket to the material its handshake was verified under (a
//! ticket made or read just after a change lands in the new epoch), so every resumed
//! connection is also verified again ([`super::PeerCheck`]). This file never verifies a
//! certificate; verifiers report each peer's expiry to it once the peer has proven it
//! holds the certificate's key ([`signed_by_peer`]): a certificate is public, and anyone
//! could show one about to expire to end the epoch of everyone's sessions.

use std::fmt;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::{ArcSwap, Guard};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::client::{ClientSessionStore, Tls12ClientSessionValue, Tls13ClientSessionValue};
use rustls::server::ProducesTickets;
use rustls::NamedGroup;
use rustls_pki_types::{CertificateDer, ServerName};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::session_cache::ClientSessions;
use crate::identity::{unix_seconds, IdentityHandle};

/// The longest an epoch lasts, whatever the certificates allow (HAProxy and nginx keep
/// sessions 5 minutes, Go and Envoy longer; SPIRE rotates SVIDs every 30 minutes or so).
const MAX_EPOCH: Duration = Duration::from_secs(60 * 60);

/// Told the expiry of each peer certificate a full handshake verified.
pub(super) trait RecordsPeerExpiry: Send + Sync {
    /// A peer whose leaf expires at `not_after` (Unix seconds) was verified.
    fn peer_verified(&self, not_after: i64);
}

/// The peer's handshake signature, checked by `verify`: once it passes, the peer holds
/// `leaf`'s key, and only then is the leaf's expiry reported to `sessions`.
pub(super) fn signed_by_peer(
    sessions: Option<&dyn RecordsPeerExpiry>,
    leaf: &CertificateDer<'_>,
    verify: impl FnOnce() -> Result<HandshakeSignatureValid, rustls::Error>,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    let valid = verify()?;
    if let Some(sessions) = sessions {
        // The verifier parsed it already: this cannot fail.
        if let Ok((_, leaf)) = X509Certificate::from_der(leaf) {
            sessions.peer_verified(leaf.validity().not_after.timestamp());
        }
    }
    Ok(valid)
}

/// The current epoch of one config's sessions, replaced when it no longer holds.
pub(super) struct Epochs<T> {
    identity: IdentityHandle,
    current: ArcSwap<Epoch<T>>,
    make: fn() -> T,
}

/// Sessions made under one identity generation, good until `ends_at`.
struct Epoch<T> {
    generation: Option<u64>,
    /// Unix seconds: the epoch's start plus [`MAX_EPOCH`], lowered to the expiry of every
    /// peer certificate verified in it.
    ends_at: AtomicI64,
    sessions: T,
}

impl<T> Epochs<T> {
    fn new(identity: IdentityHandle, make: fn() -> T) -> Self {
        let first = Epoch::begin(generation(&identity), make());
        Self {
            identity,
            current: ArcSwap::from_pointee(first),
            make,
        }
    }

    /// The epoch in force now, beginning a new one if the identity changed or the current
    /// one has ended.
    fn current(&self) -> Arc<Epoch<T>> {
        let epoch = self.current.load_full();
        let generation = generation(&self.identity);
        if epoch.generation == generation && unix_now() < epoch.ends_at.load(Ordering::Acquire) {
            return epoch;
        }
        let fresh = Arc::new(Epoch::begin(generation, (self.make)()));
        let previous = self.current.compare_and_swap(&epoch, fresh.clone());
        if Arc::ptr_eq(&previous, &epoch) {
            fresh
        } else {
            // Another handshake began the new epoch first: use that one.
            Guard::into_inner(previous)
        }
    }
}

impl<T: Send + Sync> RecordsPeerExpiry for Epochs<T> {
    fn peer_verified(&self, not_after: i64) {
        self.current()
            .ends_at
            .fetch_min(not_after, Ordering::AcqRel);
    }
}

impl<T> Epoch<T> {
    fn begin(generation: Option<u64>, sessions: T) -> Self {
        let max = i64::try_from(MAX_EPOCH.as_secs()).unwrap_or(i64::MAX);
        Self {
            generation,
            ends_at: AtomicI64::new(unix_now().saturating_add(max)),
            sessions,
        }
    }

    /// Whole seconds left (a ticket's lifetime), zero once ended.
    fn seconds_left(&self) -> u32 {
        let left = self
            .ends_at
            .load(Ordering::Acquire)
            .saturating_sub(unix_now());
        u32::try_from(left.max(0)).unwrap_or(u32::MAX)
    }
}

fn generation(identity: &IdentityHandle) -> Option<u64> {
    identity.current().map(|material| material.generation)
}

fn unix_now() -> i64 {
    unix_seconds(SystemTime::now())
}

impl<T> fmt::Debug for Epochs<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Epochs")
            .field("identity", &self.identity.source())
            .finish_non_exhaustive()
    }
}

/// The inbound's session tickets: stateless (the server keeps no per-session memory),
/// encrypted with a key that lives as long as its epoch. It is also where the inbound's
/// verifier reports each client's expiry.
pub(super) type EpochTicketer = Epochs<Option<Arc<dyn ProducesTickets>>>;

/// A ticketer following `identity`.
pub(super) fn bounded_ticketer(identity: IdentityHandle) -> Arc<EpochTicketer> {
    // `Ticketer::new` fails only when the system has no randomness; then no tickets.
    Arc::new(Epochs::new(identity, || {
        rustls::crypto::ring::Ticketer::new().ok()
    }))
}

impl ProducesTickets for EpochTicketer {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        self.current().seconds_left()
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let epoch = self.current();
        if epoch.seconds_left() == 0 {
            return None;
        }
        epoch.sessions.as_ref()?.encrypt(plain)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        self.current().sessions.as_ref()?.decrypt(cipher)
    }
}

/// The outbound's session cache, emptied with each new epoch. It is also where the
/// outbound's verifier reports each server's expiry.
pub(super) type EpochSessionStore = Epochs<ClientSessions>;

/// A session store following `identity`.
pub(super) fn bounded_session_store(identity: IdentityHandle) -> Arc<EpochSessionStore> {
    Arc::new(Epochs::new(identity, ClientSessions::default))
}

impl ClientSessionStore for EpochSessionStore {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        let epoch = self.current();
        epoch
            .sessions
            .update(server_name, |s| s.kx_hint = Some(group));
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        let epoch = self.current();
        epoch.sessions.with(server_name, |s| s.kx_hint).flatten()
    }

    fn set_tls12_session(&self, server_name: ServerName<'static>, value: Tls12ClientSessionValue) {
        let epoch = self.current();
        epoch
            .sessions
            .update(server_name, |s| s.tls12 = Some(value));
    }

    fn tls12_session(&self, server_name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        let epoch = self.current();
        epoch
            .sessions
            .with(server_name, |s| s.tls12.clone())
            .flatten()
    }

    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        let epoch = self.current();
        epoch.sessions.with(server_name, |s| s.tls12 = None);
    }

    fn insert_tls13_ticket(
        &self,
        server_name: ServerName<'static>,
        value: Tls13ClientSessionValue,
    ) {
        let epoch = self.current();
        epoch.sessions.update(server_name, |s| s.push_ticket(value));
    }

    fn take_tls13_ticket(
        &self,
        server_name: &ServerName<'static>,
    ) -> Option<Tls13ClientSessionValue> {
        let epoch = self.current();
        // The newest first, as rustls's own cache does: it has the most life left.
        epoch
            .sessions
            .with(server_name, |s| s.tls13.pop_back())
            .flatten()
    }
}

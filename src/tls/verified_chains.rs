//! The chains that passed verification, per identity generation: a client's chain at a
//! full handshake of an inbound, and a resumed session's chain verified again, so that a
//! peer connecting again and again with the same certificates (a pool reconnecting, a
//! client without keep-alive, one ticket per connection) costs one chain verification
//! per [`TRUSTED_FOR_SECS`], not one per connection. Its handshake signature is checked
//! every time: only the chain's verdict is remembered. It only remembers (what verifies:
//! [`super::PeerCheck`] and the inbound's client verifier), and forgets everything when
//! the material changes.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use rustls_pki_types::CertificateDer;
use sha2::{Digest, Sha256};

/// How long a verification is trusted at most, whatever the leaf allows: an intermediate
/// that expires before its leaf is noticed within this.
pub(super) const TRUSTED_FOR_SECS: i64 = 60;

/// Chains remembered at most (a burst of distinct peers beyond this starts afresh).
const CAPACITY: usize = 4096;

/// Chains verified under one generation of identity material.
#[derive(Debug, Default)]
pub(super) struct VerifiedChains(Mutex<Remembered>);

#[derive(Debug, Default)]
struct Remembered {
    generation: u64,
    /// SHA-256 of the chain's certificates -> Unix second until which it passes.
    until: HashMap<[u8; 32], i64>,
}

/// One chain's key: the SHA-256 of its certificates in order (leaf first).
fn digest<'a>(chain: impl IntoIterator<Item = &'a CertificateDer<'a>>) -> [u8; 32] {
    let mut hash = Sha256::new();
    for cert in chain {
        hash.update((cert.len() as u64).to_be_bytes());
        hash.update(cert.as_ref());
    }
    hash.finalize().into()
}

impl VerifiedChains {
    /// Runs `verify` on `chain` (leaf first) unless the same chain passed under
    /// `generation` and is still trusted at `now` (Unix seconds). A pass (`verify` returns
    /// the leaf's notAfter) is remembered until that, or [`TRUSTED_FOR_SECS`] from now if
    /// sooner; a failure is never remembered.
    pub fn verify_once<'a>(
        &self,
        generation: u64,
        chain: impl IntoIterator<Item = &'a CertificateDer<'a>>,
        now: i64,
        verify: impl FnOnce() -> Result<i64, rustls::Error>,
    ) -> Result<(), rustls::Error> {
        let key = digest(chain);
        if self.passed(generation, &key, now) {
            return Ok(());
        }
        let not_after = verify()?;
        let until = not_after.min(now.saturating_add(TRUSTED_FOR_SECS));
        self.remember(generation, key, until);
        Ok(())
    }

    /// Whether `chain` passed under `generation` and is still trusted at `now`.
    fn passed(&self, generation: u64, chain: &[u8; 32], now: i64) -> bool {
        let remembered = self.lock();
        remembered.generation == generation
            && remembered
                .until
                .get(chain)
                .is_some_and(|&until| now < until)
    }

    /// Remembers that `chain` passed under `generation`, trusted until `until`.
    fn remember(&self, generation: u64, chain: [u8; 32], until: i64) {
        let mut remembered = self.lock();
        if remembered.generation != generation || remembered.until.len() >= CAPACITY {
            remembered.until.clear();
            remembered.generation = generation;
        }
        remembered.until.insert(chain, until);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Remembered> {
        // Only an optimisation: a panic elsewhere must not stop verification.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

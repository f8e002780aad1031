//! Inbound TLS: the `ServerConfig`, a client-certificate verifier and a certificate
//! resolver that both read the current identity material at each handshake. Client
//! certificates are mandatory; sessions resume only through stateless tickets bounded as
//! [`super::resumption`] says. This file never looks at what the client sends after the
//! handshake.

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, NoServerSessionStorage, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::version::{TLS12, TLS13};
use rustls::{DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme};
use rustls_pki_types::{CertificateDer, UnixTime};

use super::peer::PeerCheck;
use super::resumption::{bounded_ticketer, signed_by_peer, RecordsPeerExpiry};
use crate::identity::IdentityHandle;

/// Builds the inbound config; see [`super::server_config`].
pub(super) fn build(
    identity: IdentityHandle,
    alpn: &[&[u8]],
    resumption: bool,
) -> Arc<ServerConfig> {
    let provider = super::provider();
    let ticketer = resumption.then(|| bounded_ticketer(identity.clone()));
    let verifier = Arc::new(SpiffeClientVerifier {
        chains: PeerCheck::clients(identity.clone()),
        algorithms: provider.signature_verification_algorithms,
        sessions: ticketer.clone().map(|t| t as Arc<dyn RecordsPeerExpiry>),
    });
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&TLS13, &TLS12])
        .expect("the ring provider supports TLS 1.2 and 1.3")
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(CurrentSvid(identity)));
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config.ignore_client_order = true;
    // Never a stateful cache: a session costs the server no memory.
    config.session_storage = Arc::new(NoServerSessionStorage {});
    // One ticket per connection, resumed or not: a client that opens N connections at
    // once soon holds N tickets, and no more than it uses.
    config.send_tls13_tickets = usize::from(ticketer.is_some());
    if let Some(ticketer) = ticketer {
        config.ticketer = ticketer;
    }
    Arc::new(config)
}

/// Verifies client SVIDs against the bundle of the client's trust domain.
struct SpiffeClientVerifier {
    /// Verifies client chains against the current material; a client that connects again
    /// with the same chain within 60 s (and before its leaf expires) skips the chain's
    /// verification (about a fifth of a full handshake's CPU); its CertificateVerify
    /// signature is still checked.
    chains: PeerCheck,
    algorithms: WebPkiSupportedAlgorithms,
    /// Where the expiry of each verified client goes (once it signed), when
    /// sessions resume.
    sessions: Option<Arc<dyn RecordsPeerExpiry>>,
}

impl fmt::Debug for SpiffeClientVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpiffeClientVerifier")
            .field("chains", &self.chains)
            .finish_non_exhaustive()
    }
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.chains.verify_chain(end_entity, intermediates, now)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        signed_by_peer(self.sessions.as_deref(), cert, || {
            rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
        })
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        signed_by_peer(self.sessions.as_deref(), cert, || {
            rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
        })
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Presents whatever SVID is current; `None` before the first one fails the handshake.
struct CurrentSvid(IdentityHandle);

impl fmt::Debug for CurrentSvid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("CurrentSvid")
            .field(&self.0.source())
            .finish()
    }
}

impl ResolvesServerCert for CurrentSvid {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.current().map(|m| m.svid.certified_key.clone())
    }
}

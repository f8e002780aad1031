//! Outbound TLS: the `ClientConfig`, a server verifier that checks the chain against the
//! server's trust domain bundle and then requires one of the expected SPIFFE IDs, and a
//! resolver presenting our current SVID. DNS names are never checked: the SPIFFE ID is
//! the server's name. Sessions resume from a cache bounded as [`super::resumption`] says,
//! when the outbound allows it.

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, Resumption};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme, SupportedProtocolVersion};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::peer::PeerCheck;
use super::resumption::{bounded_session_store, signed_by_peer, RecordsPeerExpiry};
use crate::identity::IdentityHandle;
use crate::spiffe_id::SpiffeId;

/// Builds the outbound config; see [`super::client_config`].
pub(super) fn build(
    identity: IdentityHandle,
    server_ids: Vec<SpiffeId>,
    alpn: &[&[u8]],
    versions: &[&'static SupportedProtocolVersion],
    provider: Arc<CryptoProvider>,
    resumption: bool,
) -> Arc<ClientConfig> {
    let store = resumption.then(|| bounded_session_store(identity.clone()));
    let verifier = Arc::new(SpiffeServerVerifier {
        chains: PeerCheck::servers(identity.clone(), &server_ids),
        algorithms: provider.signature_verification_algorithms,
        sessions: store.clone().map(|s| s as Arc<dyn RecordsPeerExpiry>),
    });
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .expect("the ring provider supports TLS 1.2 and 1.3")
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(Arc::new(ClientSvid(identity)));
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config.resumption = match store {
        Some(store) => Resumption::store(store),
        None => Resumption::disabled(),
    };
    Arc::new(config)
}

/// Verifies the server's SVID, then that its SPIFFE ID is one of `server_ids`.
struct SpiffeServerVerifier {
    /// Verifies server chains against the current material, then requires one of the
    /// expected IDs; a new connection to the same server within 60 s (and before its leaf
    /// expires) skips the chain's verification; its CertificateVerify signature is still
    /// checked.
    chains: PeerCheck,
    algorithms: WebPkiSupportedAlgorithms,
    /// Where the expiry of each verified server goes (once it signed), when
    /// sessions resume.
    sessions: Option<Arc<dyn RecordsPeerExpiry>>,
}

impl fmt::Debug for SpiffeServerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpiffeServerVerifier")
            .field("chains", &self.chains)
            .finish_non_exhaustive()
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.chains.verify_chain(end_entity, intermediates, now)?;
        Ok(ServerCertVerified::assertion())
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

/// Presents our current SVID when the server asks for a client certificate.
struct ClientSvid(IdentityHandle);

impl fmt::Debug for ClientSvid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ClientSvid").field(&self.0.source()).finish()
    }
}

impl ResolvesClientCert for ClientSvid {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.0.current().map(|m| m.svid.certified_key.clone())
    }

    fn has_certs(&self) -> bool {
        self.0.current().is_some()
    }
}

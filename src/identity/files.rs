//! The `files` identity source: SVID chain, key and bundles read from PEM files with
//! `rustls-pki-types`' `PemObject` (rustls-pemfile is unmaintained). Every error names the
//! file and says what is wrong. This module only loads; watching for changes and
//! publishing the result on the handle belong to the caller.

use std::path::{Path, PathBuf};

use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

use super::{IdentityError, Svid, TrustBundles};

/// Loads our SVID from `cert` (chain, leaf first) and `key` (PKCS#8, SEC1 or RSA), the
/// bundle of our SVID's trust domain from `bundle`, and each federated trust domain's
/// bundle from its file.
pub fn load(
    cert: &Path,
    key: &Path,
    bundle: &Path,
    federation: &[(String, PathBuf)],
) -> Result<(Svid, TrustBundles), IdentityError> {
    Contents::read(cert, key, bundle, federation)
        .load()
        .map(|loaded| (loaded.svid, loaded.bundles))
}

/// What [`Contents::load`] built, and the fingerprint of the very bytes it built it from
/// (not of the files as they are later: a reloader compares against this, so a rewrite
/// between loading and watching is still seen as a change).
pub struct Loaded {
    /// Our SVID.
    pub svid: Svid,
    /// Our own and the federated bundles.
    pub bundles: TrustBundles,
    /// [`Contents::fingerprint`] of what was loaded.
    pub fingerprint: Fingerprint,
}

/// A hash of the identity files' contents: cert, key, bundle, then each federated bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint([u8; 32]);

/// The identity files' bytes, each read once: what is fingerprinted is what is loaded.
pub struct Contents<'a> {
    cert: &'a Path,
    key: &'a Path,
    bundle: &'a Path,
    federation: &'a [(String, PathBuf)],
    /// In the order cert, key, bundle, federated bundles.
    bytes: Vec<Result<Vec<u8>, IdentityError>>,
    fingerprint: Fingerprint,
}

impl<'a> Contents<'a> {
    /// Reads the files as they are now.
    pub fn read(
        cert: &'a Path,
        key: &'a Path,
        bundle: &'a Path,
        federation: &'a [(String, PathBuf)],
    ) -> Self {
        let bytes = [cert, key, bundle]
            .into_iter()
            .chain(federation.iter().map(|(_, path)| path.as_path()))
            .map(|path| std::fs::read(path).map_err(|e| file_error(path, e.to_string())))
            .collect::<Vec<_>>();
        let mut hash = Sha256::new();
        for read in &bytes {
            let read = read.as_deref().unwrap_or_default();
            hash.update((read.len() as u64).to_le_bytes());
            hash.update(read);
        }
        Self {
            cert,
            key,
            bundle,
            federation,
            bytes,
            fingerprint: Fingerprint(hash.finalize().into()),
        }
    }

    /// The fingerprint of what was read; an unreadable file counts as empty, so a later
    /// write differs.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// Our SVID, our own bundle and the federated ones, from what was read; an unreadable
    /// file is the first error.
    pub fn load(self) -> Result<Loaded, IdentityError> {
        let Self {
            cert,
            key,
            bundle,
            federation,
            bytes,
            fingerprint,
        } = self;
        let contents = bytes.into_iter().collect::<Result<Vec<_>, _>>()?;
        let chain = certs_in(cert, &contents[0])?;
        let key_der = key_in(key, &contents[1])?;
        let svid = Svid::from_der(chain, key_der).map_err(|error| {
            let path = match error {
                IdentityError::BadKey(_) | IdentityError::KeyMismatch => key,
                _ => cert,
            };
            in_file(path, error)
        })?;
        let own = svid.spiffe_id.trust_domain_name().to_owned();
        let mut bundles = TrustBundles::default();
        let certs = certs_in(bundle, &contents[2])?;
        bundles
            .insert_der(&own, &certs)
            .map_err(|e| in_file(bundle, e))?;
        for ((trust_domain, path), bytes) in federation.iter().zip(&contents[3..]) {
            if trust_domain
                .strip_prefix("spiffe://")
                .unwrap_or(trust_domain)
                == own
            {
                let reason = format!(
                    "federation lists {own}, our own trust domain; its bundle is {}",
                    bundle.display()
                );
                return Err(file_error(path, reason));
            }
            let certs = certs_in(path, bytes)?;
            bundles
                .insert_der(trust_domain, &certs)
                .map_err(|e| in_file(path, e))?;
        }
        Ok(Loaded {
            svid,
            bundles,
            fingerprint,
        })
    }
}

/// Whether a newly loaded SVID from `cert` may replace `current` at `now` (seconds since
/// the Unix epoch). An expired one never may. One that is not valid yet (notBefore more
/// than [`super::NOT_BEFORE_SKEW`] ahead) may not while `current` is still valid; when
/// there is none, or it has expired too, it may: peers refuse both, and only the new one
/// will become good without another write.
pub fn check_replacement(
    cert: &Path,
    new: &Svid,
    current: Option<&Svid>,
    now: i64,
) -> Result<(), IdentityError> {
    let current_valid = current.is_some_and(|svid| svid.check_validity(now).is_ok());
    match new.check_validity(now) {
        Err(IdentityError::NotYetValid { .. }) if !current_valid => Ok(()),
        checked => checked.map_err(|e| in_file(cert, e)),
    }
}

/// Every certificate in a PEM file, in order; at least one.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, IdentityError> {
    let bytes = std::fs::read(path).map_err(|e| file_error(path, e.to_string()))?;
    certs_in(path, &bytes)
}

/// Every certificate in `bytes` (read from `path`), in order; at least one.
fn certs_in(path: &Path, bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, IdentityError> {
    let certs = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, e))?;
    if certs.is_empty() {
        return Err(file_error(path, "no certificate found"));
    }
    Ok(certs)
}

/// The first private key in `bytes` (read from `path`): PKCS#8, SEC1 or RSA.
fn key_in(path: &Path, bytes: &[u8]) -> Result<PrivateKeyDer<'static>, IdentityError> {
    PrivateKeyDer::from_pem_slice(bytes).map_err(|e| match e {
        pem::Error::NoItemsFound => file_error(
            path,
            "no private key found (expected PKCS#8, SEC1 or RSA PEM)",
        ),
        other => pem_error(path, other),
    })
}

fn pem_error(path: &Path, error: pem::Error) -> IdentityError {
    let reason = match error {
        pem::Error::Io(e) => e.to_string(),
        pem::Error::NoItemsFound => "no PEM section found".to_owned(),
        other => format!("not valid PEM: {other}"),
    };
    file_error(path, reason)
}

fn file_error(path: &Path, reason: impl Into<String>) -> IdentityError {
    IdentityError::File {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

fn in_file(path: &Path, error: IdentityError) -> IdentityError {
    IdentityError::InFile {
        path: path.to_owned(),
        error: Box::new(error),
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::devpki::{write_dev_pki, DevCa, LeafSpec};
    use crate::spiffe_id::{SpiffeId, TrustDomain};

    const API: &str = "spiffe://example.org/ns/billing/sa/api";

    fn dev_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        let td = TrustDomain::new("example.org").expect("td");
        let ids = [
            SpiffeId::parse(API).expect("id"),
            SpiffeId::parse("spiffe://example.org/ns/web/sa/web").expect("id"),
        ];
        write_dev_pki(dir.path(), &td, &ids).expect("dev pki");
        dir
    }

    #[test]
    fn loads_dev_pki_with_federation() {
        let dir = dev_dir();
        let d = dir.path();
        let partner = DevCa::new("partner.org").expect("ca");
        fs::write(d.join("partner.pem"), partner.root_pem()).expect("write");
        let federation = [("partner.org".to_owned(), d.join("partner.pem"))];
        let (svid, bundles) = load(
            &d.join("api.pem"),
            &d.join("api-key.pem"),
            &d.join("bundle.pem"),
            &federation,
        )
        .expect("load");
        assert_eq!(svid.spiffe_id.as_str(), API);
        assert!(!svid.serial.is_empty());
        assert_eq!(bundles.trust_domains(), ["example.org", "partner.org"]);
    }

    #[test]
    fn refuses_an_svid_whose_id_is_a_trust_domain_id() {
        let dir = dev_dir();
        let d = dir.path();
        let ca = DevCa::new("example.org").expect("ca");
        let mut spec = LeafSpec::svid(&SpiffeId::parse(API).expect("id"));
        spec.uris = vec!["spiffe://example.org".into()];
        let issued = ca.issue(&spec).expect("issue");
        fs::write(d.join("td.pem"), &issued.chain_pem).expect("write");
        fs::write(d.join("td-key.pem"), &issued.key_pem).expect("write");
        fs::write(d.join("td-bundle.pem"), ca.root_pem()).expect("write");
        let err = load(
            &d.join("td.pem"),
            &d.join("td-key.pem"),
            &d.join("td-bundle.pem"),
            &[],
        )
        .expect_err("refused");
        assert!(
            err.to_string()
                .contains("has no path: a trust domain ID names no workload"),
            "{err}"
        );
    }

    #[test]
    fn errors_name_the_file_and_the_problem() {
        let dir = dev_dir();
        let d = dir.path();
        let (cert, key, bundle) = (
            d.join("api.pem"),
            d.join("api-key.pem"),
            d.join("bundle.pem"),
        );
        let empty = d.join("empty.pem");
        fs::write(&empty, "").expect("write");
        let err = load(&empty, &key, &bundle, &[]).expect_err("refused");
        assert_eq!(
            err.to_string(),
            format!("{}: no certificate found", empty.display())
        );

        let err = load(&cert, &d.join("web-key.pem"), &bundle, &[]).expect_err("refused");
        let want = format!(
            "{}: key does not match certificate",
            d.join("web-key.pem").display()
        );
        assert_eq!(err.to_string(), want);

        let err = load(&cert, &cert, &bundle, &[]).expect_err("refused");
        assert!(err.to_string().contains("no private key found"), "{err}");

        let missing = d.join("missing.pem");
        let err = load(&missing, &key, &bundle, &[]).expect_err("refused");
        assert!(
            err.to_string().starts_with(&missing.display().to_string()),
            "{err}"
        );

        let own = [("example.org".to_owned(), bundle.clone())];
        let err = load(&cert, &key, &bundle, &own).expect_err("refused");
        assert!(err.to_string().contains("our own trust domain"), "{err}");
    }

    #[test]
    fn refuses_svid_without_spiffe_id() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = DevCa::new("example.org").expect("ca");
        let mut spec = LeafSpec::svid(&SpiffeId::parse(API).expect("id"));
        spec.uris.clear();
        let issued = ca.issue(&spec).expect("issue");
        let d = dir.path();
        fs::write(d.join("x.pem"), &issued.chain_pem).expect("write");
        fs::write(d.join("x-key.pem"), &issued.key_pem).expect("write");
        fs::write(d.join("bundle.pem"), ca.root_pem()).expect("write");
        let err = load(
            &d.join("x.pem"),
            &d.join("x-key.pem"),
            &d.join("bundle.pem"),
            &[],
        )
        .expect_err("refused");
        let want = format!(
            "{}: the SVID's SPIFFE ID: the certificate has no spiffe:// URI SAN",
            d.join("x.pem").display()
        );
        assert_eq!(err.to_string(), want);
    }
}

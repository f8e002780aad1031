//! An in-memory development PKI: a CA per trust domain, an optional intermediate, and
//! X.509-SVIDs issued on demand (rcgen, ring). `idgate certs dev`, the demo and the tests
//! use it. It owns no production trust decision: nothing here is ever consulted when a
//! peer is verified, and it must never be used to mint certificates outside dev and tests.

use std::collections::HashSet;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::identity::{IdentityError, Svid};
use crate::spiffe_id::{SpiffeId, SpiffeIdError, TrustDomain};

/// Validity of CAs and leaves written by [`write_dev_pki`]: 10 years, so that dev certs
/// committed to a repository keep working. Never use these files in production.
pub const DEV_FILE_VALIDITY: Duration = Duration::days(3650);

/// Default validity of a leaf issued by [`DevCa::issue`]: one day.
pub const LEAF_VALIDITY: Duration = Duration::days(1);

/// Backdating of notBefore, to tolerate clock skew between processes.
const BACKDATE: Duration = Duration::minutes(5);

/// Why dev certificates could not be made.
#[derive(Debug, thiserror::Error)]
pub enum DevPkiError {
    /// rcgen refused the parameters or could not sign.
    #[error("cannot generate certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// A trust domain or SPIFFE ID was not well formed.
    #[error("{0}")]
    SpiffeId(#[from] SpiffeIdError),
    /// An existing CA certificate or key could not be used.
    #[error("existing CA: {0}")]
    ExistingCa(String),
}

/// One CA (root, or root plus intermediate) that issues SVIDs.
pub struct DevCa {
    trust_domain: Option<TrustDomain>,
    root_der: CertificateDer<'static>,
    root_pem: String,
    root: Issuer<'static, KeyPair>,
    intermediate: Option<Intermediate>,
}

struct Intermediate {
    der: CertificateDer<'static>,
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// What a leaf should look like; [`LeafSpec::svid`] is a proper X.509-SVID and tests
/// override fields to make broken ones.
#[derive(Debug, Clone)]
pub struct LeafSpec {
    /// URI SANs, normally exactly the one SPIFFE ID (tests may leave none or several).
    pub uris: Vec<String>,
    /// DNS SANs (idgate ignores them; present for realism).
    pub dns: Vec<String>,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
    /// `true` makes the leaf a CA (basicConstraints CA:true), which peers must refuse.
    pub ca: bool,
    /// Key usages (default: digitalSignature only, as SPIFFE requires).
    pub key_usages: Vec<KeyUsagePurpose>,
}

/// A certificate issued by a [`DevCa`], with its key, as PEM and as DER.
pub struct IssuedCert {
    /// Leaf then intermediate (if any), PEM.
    pub chain_pem: String,
    /// The leaf's private key, PKCS#8 PEM.
    pub key_pem: String,
    /// Leaf then intermediate (if any), DER.
    pub chain_der: Vec<CertificateDer<'static>>,
    /// The leaf's private key, PKCS#8 DER.
    pub key_der: PrivateKeyDer<'static>,
}

/// What [`write_dev_pki`] did.
#[derive(Debug)]
pub struct DevPkiWritten {
    /// `true` when `ca.pem`/`ca-key.pem` already existed and were reused.
    pub reused_ca: bool,
    /// Every file written, in order.
    pub files: Vec<PathBuf>,
}

impl LeafSpec {
    /// A proper SVID for `id`: one URI SAN, CA:false, digitalSignature, server and client
    /// auth, valid from 5 minutes ago for [`LEAF_VALIDITY`].
    pub fn svid(id: &SpiffeId) -> Self {
        let now = OffsetDateTime::now_utc();
        Self {
            uris: vec![id.to_string()],
            dns: Vec::new(),
            not_before: now - BACKDATE,
            not_after: now + LEAF_VALIDITY,
            ca: false,
            key_usages: vec![KeyUsagePurpose::DigitalSignature],
        }
    }

    /// Same spec, valid from now (minus skew) for `validity`.
    pub fn valid_for(mut self, validity: Duration) -> Self {
        self.not_after = self.not_before + BACKDATE + validity;
        self
    }
}

impl DevCa {
    /// A new self-signed root CA for `trust_domain` (ECDSA P-256, valid 10 years and a
    /// day), carrying the trust domain's SPIFFE ID as URI SAN.
    pub fn new(trust_domain: &str) -> Result<Self, DevPkiError> {
        let trust_domain = TrustDomain::new(trust_domain)?;
        let params = ca_params(&trust_domain, &format!("idgate dev CA {trust_domain}"))?;
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Self {
            trust_domain: Some(trust_domain),
            root_der: cert.der().clone(),
            root_pem: cert.pem(),
            root: Issuer::new(params, key),
            intermediate: None,
        })
    }

    /// Reuses an existing CA from its PEM certificate and key. The trust domain is read
    /// from the certificate's `spiffe://` URI SAN when it has one.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, DevPkiError> {
        let root_der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| DevPkiError::ExistingCa(format!("certificate: {e}")))?;
        let key =
            KeyPair::from_pem(key_pem).map_err(|e| DevPkiError::ExistingCa(format!("key: {e}")))?;
        let (_, parsed) = X509Certificate::from_der(&root_der)
            .map_err(|e| DevPkiError::ExistingCa(format!("certificate: {e}")))?;
        if parsed.public_key().raw != key.subject_public_key_info() {
            return Err(DevPkiError::ExistingCa(
                "key does not match certificate".to_owned(),
            ));
        }
        let trust_domain = crate::tls::spiffe_id_of(&parsed)
            .ok()
            .map(|id| id.trust_domain());
        let root = Issuer::from_ca_cert_der(&root_der, key)?;
        Ok(Self {
            trust_domain,
            root_pem: cert_pem.to_owned(),
            root_der,
            root,
            intermediate: None,
        })
    }

    /// Adds an intermediate CA: later leaves are signed by it and their chains carry it.
    pub fn with_intermediate(mut self) -> Result<Self, DevPkiError> {
        let name = match &self.trust_domain {
            Some(td) => format!("idgate dev intermediate CA {td}"),
            None => "idgate dev intermediate CA".to_owned(),
        };
        let mut params = match &self.trust_domain {
            Some(td) => ca_params(td, &name)?,
            None => CertificateParams::default(),
        };
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.distinguished_name = dn(&name);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.root)?;
        self.intermediate = Some(Intermediate {
            der: cert.der().clone(),
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        });
        Ok(self)
    }

    /// The trust domain this CA serves, when known.
    pub fn trust_domain(&self) -> Option<&TrustDomain> {
        self.trust_domain.as_ref()
    }

    /// The root certificate (the trust bundle), DER.
    pub fn root_der(&self) -> &CertificateDer<'static> {
        &self.root_der
    }

    /// The root certificate (the trust bundle), PEM.
    pub fn root_pem(&self) -> String {
        self.root_pem.clone()
    }

    /// The root's private key, PKCS#8 PEM.
    pub fn root_key_pem(&self) -> String {
        self.root.key().serialize_pem()
    }

    /// Issues a leaf as `spec` says, signed by the intermediate if there is one.
    pub fn issue(&self, spec: &LeafSpec) -> Result<IssuedCert, DevPkiError> {
        let mut params = CertificateParams::default();
        let first_uri = spec.uris.first().cloned().unwrap_or_else(|| "leaf".into());
        params.distinguished_name = dn(&first_uri);
        for uri in &spec.uris {
            params
                .subject_alt_names
                .push(SanType::URI(uri.as_str().try_into()?));
        }
        for name in &spec.dns {
            params
                .subject_alt_names
                .push(SanType::DnsName(name.as_str().try_into()?));
        }
        params.is_ca = if spec.ca {
            IsCa::Ca(BasicConstraints::Unconstrained)
        } else {
            IsCa::ExplicitNoCa
        };
        params.key_usages = spec.key_usages.clone();
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = spec.not_before;
        params.not_after = spec.not_after;
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate()?;
        let issuer = self.intermediate.as_ref().map_or(&self.root, |i| &i.issuer);
        let leaf = params.signed_by(&key, issuer)?;
        let mut chain_der = vec![leaf.der().clone()];
        let mut chain_pem = leaf.pem();
        if let Some(intermediate) = &self.intermediate {
            chain_der.push(intermediate.der.clone());
            chain_pem.push_str(&intermediate.pem);
        }
        Ok(IssuedCert {
            chain_pem,
            key_pem: key.serialize_pem(),
            chain_der,
            key_der: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        })
    }

    /// Issues a proper SVID for `id` with the default spec.
    pub fn issue_svid(&self, id: &SpiffeId) -> Result<IssuedCert, DevPkiError> {
        self.issue(&LeafSpec::svid(id))
    }
}

impl IssuedCert {
    /// This certificate as idgate's own [`Svid`].
    pub fn svid(&self) -> Result<Svid, IdentityError> {
        Svid::from_der(self.chain_der.clone(), self.key_der.clone_key())
    }
}

/// Writes a dev PKI into `out` (created if missing): `ca.pem`, `ca-key.pem`, `bundle.pem`
/// and, per ID, `NAME.pem` (chain) and `NAME-key.pem`, NAME being the ID's last path
/// segment. An existing `ca.pem` + `ca-key.pem` in `out` is reused (only the leaves are
/// issued). Everything is valid for [`DEV_FILE_VALIDITY`]. Keys are written mode 0600.
pub fn write_dev_pki(
    out: &Path,
    trust_domain: &TrustDomain,
    ids: &[SpiffeId],
) -> io::Result<DevPkiWritten> {
    let names = leaf_names(trust_domain, ids)?;
    fs::create_dir_all(out).map_err(|e| at(out, e))?;
    let (ca_path, ca_key_path) = (out.join("ca.pem"), out.join("ca-key.pem"));
    let reused_ca = ca_path.exists() && ca_key_path.exists();
    let ca = if reused_ca {
        let cert = fs::read_to_string(&ca_path).map_err(|e| at(&ca_path, e))?;
        let key = fs::read_to_string(&ca_key_path).map_err(|e| at(&ca_key_path, e))?;
        let ca = DevCa::from_pem(&cert, &key).map_err(|e| invalid(&ca_path, e))?;
        if let Some(found) = ca.trust_domain().filter(|found| *found != trust_domain) {
            let msg = format!("belongs to trust domain {found}, not {trust_domain}");
            return Err(invalid(&ca_path, msg));
        }
        ca
    } else {
        DevCa::new(trust_domain.as_str()).map_err(|e| invalid(out, e))?
    };
    let mut files = Vec::new();
    if !reused_ca {
        write_file(&ca_path, &ca.root_pem(), false)?;
        write_file(&ca_key_path, &ca.root_key_pem(), true)?;
        files.extend([ca_path, ca_key_path]);
    }
    let bundle_path = out.join("bundle.pem");
    write_file(&bundle_path, &ca.root_pem(), false)?;
    files.push(bundle_path);
    for (id, name) in ids.iter().zip(names) {
        let spec = LeafSpec::svid(id).valid_for(DEV_FILE_VALIDITY);
        let issued = ca.issue(&spec).map_err(|e| invalid(out, e))?;
        let (cert_path, key_path) = (
            out.join(format!("{name}.pem")),
            out.join(format!("{name}-key.pem")),
        );
        write_file(&cert_path, &issued.chain_pem, false)?;
        write_file(&key_path, &issued.key_pem, true)?;
        files.extend([cert_path, key_path]);
    }
    Ok(DevPkiWritten { reused_ca, files })
}

/// Checks the IDs and returns their file names (last path segment), refusing duplicates.
fn leaf_names(trust_domain: &TrustDomain, ids: &[SpiffeId]) -> io::Result<Vec<String>> {
    let bad = |msg: String| io::Error::new(io::ErrorKind::InvalidInput, msg);
    if ids.is_empty() {
        return Err(bad("at least one SPIFFE ID is needed".into()));
    }
    // File stems in use: the CA files, then NAME and NAME-key per ID.
    let mut seen: HashSet<String> = ["ca", "ca-key", "bundle"].map(String::from).into();
    let mut names = Vec::with_capacity(ids.len());
    for id in ids {
        if id.trust_domain_name() != trust_domain.as_str() {
            return Err(bad(format!("{id} is not in trust domain {trust_domain}")));
        }
        let name = id
            .segments()
            .last()
            .ok_or_else(|| bad(format!("{id} has no path segment to name its files after")))?;
        if !seen.insert(name.to_owned()) || !seen.insert(format!("{name}-key")) {
            return Err(bad(format!(
                "{id}: {name}.pem or {name}-key.pem would overwrite another file of this PKI"
            )));
        }
        names.push(name.to_owned());
    }
    Ok(names)
}

fn ca_params(trust_domain: &TrustDomain, name: &str) -> Result<CertificateParams, DevPkiError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let uri = format!("spiffe://{trust_domain}");
    params.subject_alt_names = vec![SanType::URI(uri.as_str().try_into()?)];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + DEV_FILE_VALIDITY + Duration::days(1);
    Ok(params)
}

fn dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "idgate dev");
    dn.push(DnType::CommonName, common_name);
    dn
}

/// Writes `contents` to a temporary file next to `path`, then renames it into place,
/// so a watcher never sees a half-written file.
fn write_file(path: &Path, contents: &str, private: bool) -> io::Result<()> {
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{file_name}.tmp"));
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut file = options.open(&tmp).map_err(|e| at(&tmp, e))?;
    file.write_all(contents.as_bytes())
        .map_err(|e| at(&tmp, e))?;
    file.sync_all().map_err(|e| at(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| at(path, e))
}

fn at(path: &Path, error: io::Error) -> io::Error {
    io::Error::new(error.kind(), format!("{}: {error}", path.display()))
}

fn invalid(path: &Path, error: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{}: {error}", path.display()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(list: &[&str]) -> Vec<SpiffeId> {
        list.iter()
            .map(|s| SpiffeId::parse(s).expect("id"))
            .collect()
    }

    #[test]
    fn writes_ca_bundle_and_leaves_then_reuses_the_ca() {
        let dir = tempfile::tempdir().expect("tempdir");
        let td = TrustDomain::new("example.org").expect("td");
        let first = write_dev_pki(dir.path(), &td, &ids(&["spiffe://example.org/ns/a/sa/api"]))
            .expect("write");
        assert!(!first.reused_ca);
        let names: Vec<_> = first
            .files
            .iter()
            .filter_map(|p| p.file_name()?.to_str())
            .collect();
        assert_eq!(
            names,
            [
                "ca.pem",
                "ca-key.pem",
                "bundle.pem",
                "api.pem",
                "api-key.pem"
            ]
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.path().join("api-key.pem"))
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let ca_before = fs::read(dir.path().join("ca.pem")).expect("read");
        let second = write_dev_pki(dir.path(), &td, &ids(&["spiffe://example.org/ns/b/sa/web"]))
            .expect("write");
        assert!(second.reused_ca);
        assert_eq!(
            fs::read(dir.path().join("ca.pem")).expect("read"),
            ca_before
        );
        let (svid, bundles) = crate::identity::files::load(
            &dir.path().join("web.pem"),
            &dir.path().join("web-key.pem"),
            &dir.path().join("bundle.pem"),
            &[],
        )
        .expect("load");
        assert_eq!(svid.spiffe_id.as_str(), "spiffe://example.org/ns/b/sa/web");
        let ten_years = OffsetDateTime::now_utc() + Duration::days(3649);
        assert!(svid.not_after > ten_years.unix_timestamp());
        assert_eq!(bundles.trust_domains(), ["example.org"]);

        let other = TrustDomain::new("other.org").expect("td");
        let err = write_dev_pki(dir.path(), &other, &ids(&["spiffe://other.org/x"]))
            .expect_err("refused");
        assert!(
            err.to_string()
                .contains("belongs to trust domain example.org"),
            "{err}"
        );
    }

    #[test]
    fn refuses_bad_id_lists() {
        let dir = tempfile::tempdir().expect("tempdir");
        let td = TrustDomain::new("example.org").expect("td");
        let cases: [&[&str]; 6] = [
            &[],
            &["spiffe://other.org/a"],
            &["spiffe://example.org"],
            &["spiffe://example.org/a/api", "spiffe://example.org/b/api"],
            &[
                "spiffe://example.org/a/api",
                "spiffe://example.org/b/api-key",
            ],
            &["spiffe://example.org/a/ca"],
        ];
        for case in cases {
            assert!(
                write_dev_pki(dir.path(), &td, &ids(case)).is_err(),
                "{case:?}"
            );
        }
    }

    #[test]
    fn default_leaf_is_a_proper_svid() {
        let ca = DevCa::new("example.org").expect("ca");
        let id = SpiffeId::parse("spiffe://example.org/ns/a/sa/api").expect("id");
        let issued = ca.issue_svid(&id).expect("issue");
        let (_, leaf) = X509Certificate::from_der(&issued.chain_der[0]).expect("parse");
        assert_eq!(crate::tls::spiffe_id_of(&leaf).expect("spiffe id"), id);
        assert!(!leaf.is_ca());
        let svid = issued.svid().expect("svid");
        assert_eq!(svid.spiffe_id, id);
        let reloaded = DevCa::from_pem(&ca.root_pem(), &ca.root_key_pem()).expect("from pem");
        assert_eq!(
            reloaded.trust_domain().map(TrustDomain::as_str),
            Some("example.org")
        );
        let again = reloaded.issue_svid(&id).expect("issue");
        let anchor = webpki::anchor_from_trusted_cert(ca.root_der()).expect("anchor");
        let leaf = webpki::EndEntityCert::try_from(&again.chain_der[0]).expect("leaf");
        let algs = crate::tls::provider().signature_verification_algorithms.all;
        let now = rustls_pki_types::UnixTime::now();
        leaf.verify_for_usage(
            algs,
            &[anchor],
            &[],
            now,
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .expect("a leaf from the reloaded CA chains to the original root");
    }
}

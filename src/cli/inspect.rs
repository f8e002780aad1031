//! `idgate inspect FILE.pem`: print what each certificate in a PEM file says (SPIFFE ID,
//! subject, serial, validity in RFC 3339, CA flag) and its issuer chain as far as the
//! file shows it. Read-only and offline: it never judges trust, only describes.

use super::output::out;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::identity::files::read_certs;
use crate::tls::{spiffe_id_of, PeerCertError};

/// Arguments of `idgate inspect`.
#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// PEM file with one or more certificates (an SVID chain, a bundle, a CA).
    #[arg(value_name = "FILE.pem")]
    pub file: PathBuf,
}

/// Runs `inspect`: 0 when printed, 2 with one `error:` line when the file is unreadable.
pub fn run(args: &InspectArgs) -> u8 {
    match render(&args.file, OffsetDateTime::now_utc()) {
        Ok(text) => {
            out!("{text}");
            0
        }
        Err(error) => {
            eprintln!("error: {error}");
            2
        }
    }
}

/// The description of every certificate in `path`, as of `now`.
fn render(path: &Path, now: OffsetDateTime) -> Result<String, String> {
    let ders = read_certs(path).map_err(|e| e.to_string())?;
    let certs = ders
        .iter()
        .enumerate()
        .map(|(i, der)| {
            X509Certificate::from_der(der)
                .map(|(_, cert)| cert)
                .map_err(|e| {
                    format!(
                        "{}: certificate {} cannot be parsed: {e}",
                        path.display(),
                        i + 1
                    )
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut out = String::new();
    for i in 0..certs.len() {
        if i > 0 {
            out.push('\n');
        }
        describe(&mut out, i, &certs, now);
    }
    Ok(out)
}

fn describe(out: &mut String, index: usize, certs: &[X509Certificate<'_>], now: OffsetDateTime) {
    let cert = &certs[index];
    let validity = cert.validity();
    let (not_before, not_after) = (
        validity.not_before.to_datetime(),
        validity.not_after.to_datetime(),
    );
    let spiffe_id = match spiffe_id_of(cert) {
        Ok(id) => id.to_string(),
        Err(PeerCertError::NoSpiffeId) => "none".to_owned(),
        Err(e) => format!("invalid ({e})"),
    };
    let status = if now < not_before {
        "not yet valid".to_owned()
    } else if now > not_after {
        "EXPIRED".to_owned()
    } else {
        format!("valid, {} days left", (not_after - now).whole_days())
    };
    let _ = writeln!(out, "certificate {} of {}", index + 1, certs.len());
    let _ = writeln!(out, "  spiffe id:    {spiffe_id}");
    let _ = writeln!(out, "  subject:      {}", cert.subject());
    let _ = writeln!(out, "  serial:       {:x}", cert.serial);
    let _ = writeln!(out, "  not before:   {}", rfc3339(not_before));
    let _ = writeln!(out, "  not after:    {} ({status})", rfc3339(not_after));
    let _ = writeln!(
        out,
        "  ca:           {}",
        if cert.is_ca() { "yes" } else { "no" }
    );
    let _ = writeln!(out, "  issuer chain: {}", issuer_chain(index, certs));
}

/// `subject <- issuer <- ...`, following issuers through the file until a self-signed
/// certificate or one the file does not hold.
fn issuer_chain(index: usize, certs: &[X509Certificate<'_>]) -> String {
    let mut links = vec![certs[index].subject().to_string()];
    let mut current = &certs[index];
    for _ in 0..certs.len() {
        if current.subject() == current.issuer() {
            links.push("(self-signed)".to_owned());
            return links.join(" <- ");
        }
        match certs.iter().find(|c| c.subject() == current.issuer()) {
            Some(issuer) => {
                links.push(issuer.subject().to_string());
                current = issuer;
            }
            None => {
                links.push(format!("{} (not in this file)", current.issuer()));
                return links.join(" <- ");
            }
        }
    }
    links.push("(loop)".to_owned());
    links.join(" <- ")
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_else(|_| t.to_string())
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::devpki::DevCa;
    use crate::spiffe_id::SpiffeId;

    #[test]
    fn describes_a_chain_with_intermediate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = DevCa::new("example.org")
            .expect("ca")
            .with_intermediate()
            .expect("int");
        let id = SpiffeId::parse("spiffe://example.org/ns/a/sa/api").expect("id");
        let issued = ca.issue_svid(&id).expect("issue");
        let path = dir.path().join("api.pem");
        fs::write(&path, &issued.chain_pem).expect("write");
        let text = render(&path, OffsetDateTime::now_utc()).expect("render");
        assert!(text.contains("certificate 1 of 2"), "{text}");
        assert!(
            text.contains("spiffe id:    spiffe://example.org/ns/a/sa/api"),
            "{text}"
        );
        assert!(text.contains("ca:           no"), "{text}");
        assert!(
            text.contains("<- O=idgate dev, CN=idgate dev intermediate CA example.org <- "),
            "{text}"
        );
        assert!(
            text.contains("CN=idgate dev CA example.org (not in this file)"),
            "{text}"
        );
        assert!(text.contains("days left"), "{text}");
        assert_eq!(run(&InspectArgs { file: path }), 0);
    }

    #[test]
    fn unreadable_files_exit_2() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("missing.pem");
        assert_eq!(run(&InspectArgs { file: missing }), 2);
        let junk = dir.path().join("junk.pem");
        fs::write(&junk, "not pem").expect("write");
        let err = render(&junk, OffsetDateTime::now_utc()).expect_err("refused");
        assert!(err.ends_with("junk.pem: no certificate found"), "{err}");
    }
}

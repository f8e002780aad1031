//! `idgate certs dev`: write a development CA, trust bundle and one SVID per SPIFFE ID
//! into a directory, reusing a CA already there. The files are for development only
//! (valid 10 years, so they can be committed next to a dev config); this command must
//! never be the way production SVIDs are made.

use super::output::out;
use std::path::{Path, PathBuf};

use crate::devpki::{write_dev_pki, DevPkiWritten};
use crate::spiffe_id::{SpiffeId, TrustDomain};

/// Arguments of `idgate certs dev`.
#[derive(Debug, clap::Args)]
pub struct CertsDevArgs {
    /// Directory to write into (created if missing; an existing ca.pem + ca-key.pem there is reused).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Trust domain of the CA and every ID, e.g. example.org.
    #[arg(long, value_name = "TD", value_parser = parse_trust_domain)]
    pub trust_domain: TrustDomain,
    /// SPIFFE ID to issue an SVID for (repeatable); files are named after its last segment.
    #[arg(long = "id", value_name = "SPIFFE_ID", required = true, num_args = 1.., value_parser = parse_id)]
    pub ids: Vec<SpiffeId>,
}

/// Runs `certs dev`: 0 when written, 2 with one `error:` line on stderr otherwise.
pub fn run(args: &CertsDevArgs) -> u8 {
    match write_dev_pki(&args.out, &args.trust_domain, &args.ids) {
        Ok(written) => {
            out!("{}", summary(args, &written));
            0
        }
        Err(error) => {
            eprintln!("error: {error}");
            2
        }
    }
}

/// What was written, for stdout.
fn summary(args: &CertsDevArgs, written: &DevPkiWritten) -> String {
    let out = args.out.display();
    let mut text = if written.reused_ca {
        format!("reused the existing CA in {out}/ca.pem; issued only the SVIDs\n")
    } else {
        format!(
            "new dev CA for {} in {out} (valid 10 years; development only, ca-key.pem is a secret)\n",
            args.trust_domain
        )
    };
    for path in &written.files {
        text.push_str(&format!("  wrote {}{}\n", path.display(), note(path, args)));
    }
    text
}

/// Which SPIFFE ID a leaf file holds, for the summary.
fn note(path: &Path, args: &CertsDevArgs) -> String {
    let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
        return String::new();
    };
    match stem {
        "ca" => "  (CA certificate)".into(),
        "ca-key" => "  (CA private key)".into(),
        "bundle" => format!("  (trust bundle of {})", args.trust_domain),
        _ => args
            .ids
            .iter()
            .find(|id| id.segments().last() == Some(stem))
            .map(|id| format!("  (SVID {id})"))
            .unwrap_or_default(),
    }
}

fn parse_trust_domain(s: &str) -> Result<TrustDomain, String> {
    TrustDomain::new(s).map_err(|e| format!("{s:?}: {e}"))
}

fn parse_id(s: &str) -> Result<SpiffeId, String> {
    SpiffeId::parse(s).map_err(|e| format!("{s:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(out: &Path, ids: &[&str]) -> CertsDevArgs {
        CertsDevArgs {
            out: out.to_owned(),
            trust_domain: TrustDomain::new("example.org").expect("td"),
            ids: ids
                .iter()
                .map(|s| SpiffeId::parse(s).expect("id"))
                .collect(),
        }
    }

    #[test]
    fn writes_then_reuses_the_ca() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = args(dir.path(), &["spiffe://example.org/ns/a/sa/api"]);
        let written = write_dev_pki(&first.out, &first.trust_domain, &first.ids).expect("write");
        let text = summary(&first, &written);
        assert!(text.starts_with("new dev CA for example.org"), "{text}");
        assert!(
            text.contains("api.pem  (SVID spiffe://example.org/ns/a/sa/api)"),
            "{text}"
        );
        let second = args(dir.path(), &["spiffe://example.org/ns/b/sa/web"]);
        assert_eq!(run(&second), 0);
        assert!(dir.path().join("web-key.pem").exists());
    }

    #[test]
    fn foreign_trust_domain_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(
            run(&args(dir.path(), &["spiffe://other.org/ns/a/sa/api"])),
            2
        );
    }

    #[test]
    fn parses_arguments() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            args: CertsDevArgs,
        }
        let cli = Cli::try_parse_from([
            "certs",
            "--out",
            "d",
            "--trust-domain",
            "example.org",
            "--id",
            "spiffe://example.org/a",
            "--id",
            "spiffe://example.org/b",
        ])
        .expect("parse");
        assert_eq!(cli.args.ids.len(), 2);
        assert!(
            Cli::try_parse_from(["certs", "--out", "d", "--trust-domain", "example.org"]).is_err()
        );
        let bad = [
            "certs",
            "--out",
            "d",
            "--trust-domain",
            "Example.org",
            "--id",
            "spiffe://x/a",
        ];
        assert!(Cli::try_parse_from(bad).is_err());
    }
}

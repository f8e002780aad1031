//! `idgate validate`: load a config and every policy it names, print a summary, and warn
//! (exit still 0) about rules that cannot do what they say: expired, shadowed by a deny
//! rule, or naming a trust domain with no bundle. A config `run` would refuse (including
//! identity files that exist but do not load) is an error, exit 2. The analysis is `policy::lint`'s; this
//! command only finds the trust domains and prints `warning: file:line: rule[i].field: ...`.

use super::output::outln;
use std::path::Path;
use std::time::SystemTime;

use crate::config::{Config, IdentityConfig, Protocol, SourceFile};
use crate::identity::{files, IdentityError};
use crate::policy::{lint, LintContext};

/// Runs `validate`; exit 0 valid, 2 invalid.
pub fn run(path: Option<&Path>) -> u8 {
    let config = match Config::load_default(path) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("error: {error}");
            return 2;
        }
    };
    // The config loader has loaded a files identity already; this reads it again for its
    // trust domains, and files replaced in between are an error, not a note.
    let (trust_domains, why) = match trust_domains(&config.identity) {
        Ok(found) => found,
        Err(error) => {
            eprintln!(
                "error: {}: identity: {error} (the identity files changed while validating)",
                config.path.display()
            );
            return 2;
        }
    };
    outln!("{}: valid", config.path.display());
    match &config.identity {
        IdentityConfig::Files {
            cert, federation, ..
        } => {
            outln!(
                "  identity: files ({}), {} federated trust domain(s)",
                cert.display(),
                federation.len()
            );
        }
        IdentityConfig::Spire {
            socket, spiffe_id, ..
        } => {
            let id = spiffe_id
                .as_ref()
                .map_or("agent default".to_string(), |id| id.to_string());
            outln!("  identity: spire ({socket}), SVID: {id}");
        }
    }
    for l in &config.inbound {
        outln!(
            "  inbound  {:<12} {} -> {} ({}), policy {} (version {}){}",
            l.name,
            l.listen,
            l.upstream,
            protocol(l.protocol),
            l.policy_path.display(),
            l.policy.version(),
            resumption(l.session_resumption)
        );
    }
    for l in &config.outbound {
        let ids: Vec<String> = l.server_ids.iter().map(|id| id.to_string()).collect();
        outln!(
            "  outbound {:<12} {} -> {} ({}), server must be one of [{}]{}",
            l.name,
            l.listen,
            l.target,
            protocol(l.protocol),
            ids.join(", "),
            resumption(l.session_resumption)
        );
    }
    outln!("  admin    {}", config.admin.listen);
    outln!("  runtime  {} worker thread(s)", config.runtime.workers);
    if let Some(why) = why {
        outln!("  note: {why}");
    }
    let context = LintContext {
        now: SystemTime::now(),
        trust_domains,
    };
    let mut warnings = 0;
    for l in &config.inbound {
        let found = SourceFile::read(&l.policy_path).and_then(|source| lint(&source, &context));
        match found {
            Ok(found) => {
                for warning in &found {
                    eprintln!("warning: {warning}");
                }
                warnings += found.len();
            }
            Err(error) => {
                eprintln!("warning: {error} (the policy changed since it was loaded?)");
                warnings += 1;
            }
        }
    }
    outln!("  {warnings} warning(s)");
    0
}

/// The trust domains peers can come from (`None` with the reason when they are not known
/// offline); `Err` when the identity files do not load.
fn trust_domains(
    identity: &IdentityConfig,
) -> Result<(Option<Vec<String>>, Option<String>), IdentityError> {
    match identity {
        IdentityConfig::Files {
            cert,
            key,
            bundle,
            federation,
        } => {
            let (_, bundles) = files::load(cert, key, bundle, federation)?;
            let mut domains: Vec<String> =
                bundles.trust_domains().into_iter().map(String::from).collect();
            domains.sort();
            Ok((Some(domains), None))
        }
        IdentityConfig::Spire { .. } => Ok((
            None,
            Some("identity source is spire: trust bundles come from the agent at run time, so from patterns are not checked against them".into()),
        )),
    }
}

fn protocol(p: Protocol) -> &'static str {
    match p {
        Protocol::Http => "http",
        Protocol::Tcp => "tcp",
    }
}

/// What the summary says about a listener's TLS session resumption: only when it is off.
fn resumption(on: bool) -> &'static str {
    if on {
        ""
    } else {
        ", TLS session resumption off"
    }
}

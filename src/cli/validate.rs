//! `idgate validate`: load a config and every policy it names, print a summary.

use std::path::Path;

use crate::config::{Config, IdentityConfig, Protocol};

/// Runs `validate`; exit 0 valid, 2 invalid.
pub fn run(path: Option<&Path>) -> u8 {
    let config = match Config::load_default(path) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("error: {error}");
            return 2;
        }
    };
    println!("{}: valid", config.path.display());
    match &config.identity {
        IdentityConfig::Files {
            cert, federation, ..
        } => {
            println!(
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
            println!("  identity: spire ({socket}), SVID: {id}");
        }
    }
    for l in &config.inbound {
        println!(
            "  inbound  {:<12} {} -> {} ({}), policy {} (version {})",
            l.name,
            l.listen,
            l.upstream,
            protocol(l.protocol),
            l.policy_path.display(),
            l.policy.version()
        );
    }
    for l in &config.outbound {
        let ids: Vec<String> = l.server_ids.iter().map(|id| id.to_string()).collect();
        println!(
            "  outbound {:<12} {} -> {} ({}), server must be one of [{}]",
            l.name,
            l.listen,
            l.target,
            protocol(l.protocol),
            ids.join(", ")
        );
    }
    println!("  admin    {}", config.admin.listen);
    0
}

fn protocol(p: Protocol) -> &'static str {
    match p {
        Protocol::Http => "http",
        Protocol::Tcp => "tcp",
    }
}

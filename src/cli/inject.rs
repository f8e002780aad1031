//! `idgate inject [-f FILE|-]`: reads Kubernetes YAML and writes it to stdout with the
//! idgate sidecar added to pods annotated `idgate.io/inject: "true"`.
//!
//! Only reads and writes streams; the injection itself is [`crate::k8s::inject_yaml`],
//! shared with the webhook so both give the same pod spec.

use std::io::Read;
use std::path::PathBuf;

/// Arguments of `idgate inject`.
#[derive(Debug, clap::Args)]
pub struct InjectArgs {
    /// YAML file to read (multi-document; `-` or absent: standard input).
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    pub file: Option<PathBuf>,
}

/// Runs `inject`: 0 when written, 2 with one `error:` line on stderr otherwise.
pub fn run(args: &InjectArgs) -> u8 {
    let (name, text) = match read(args) {
        Ok(read) => read,
        Err((name, error)) => {
            eprintln!("error: {name}: {error}");
            return 2;
        }
    };
    match crate::k8s::inject_yaml(&text) {
        Ok(out) => {
            super::output::out!("{out}");
            0
        }
        Err(error) => {
            eprintln!("error: {name}: {error}");
            2
        }
    }
}

fn read(args: &InjectArgs) -> Result<(String, String), (String, std::io::Error)> {
    match &args.file {
        Some(path) if path.as_os_str() != "-" => {
            let name = path.display().to_string();
            std::fs::read_to_string(path)
                .map(|text| (name.clone(), text))
                .map_err(|e| (name, e))
        }
        _ => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map(|_| ("<stdin>".to_string(), text))
                .map_err(|e| ("<stdin>".to_string(), e))
        }
    }
}

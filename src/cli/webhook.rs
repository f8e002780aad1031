//! `idgate webhook --listen ADDR --cert PEM --key PEM`: the mutating admission webhook
//! (`POST /mutate`, AdmissionReview v1 answered with a JSONPatch; `GET /healthz`).
//!
//! Wiring only: the review logic is [`crate::k8s::webhook`], the HTTPS server
//! [`crate::k8s::server`]. Runs until SIGTERM or SIGINT.

use std::net::SocketAddr;
use std::path::PathBuf;

use tokio_util::sync::CancellationToken;

use crate::k8s::server::{self, CertFiles};

/// Arguments of `idgate webhook`.
#[derive(Debug, clap::Args)]
pub struct WebhookArgs {
    /// Address to serve HTTPS on.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,
    /// Serving certificate chain (PEM), re-read when it changes.
    #[arg(long, value_name = "PEM")]
    pub cert: PathBuf,
    /// Its private key (PEM).
    #[arg(long, value_name = "PEM")]
    pub key: PathBuf,
}

/// Runs the webhook: 0 after SIGTERM/SIGINT, 2 when the certificate or address is unusable.
pub fn run(args: &WebhookArgs) -> u8 {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let certs = match CertFiles::load(&args.cert, &args.key) {
        Ok(certs) => certs,
        Err(error) => {
            eprintln!("error: {error}");
            return 2;
        }
    };
    super::block_on(async {
        let mut signals = match crate::app::ShutdownSignals::install() {
            Ok(signals) => signals,
            Err(error) => {
                eprintln!("error: cannot watch SIGTERM/SIGINT: {error}");
                return 1;
            }
        };
        let listener = match tokio::net::TcpListener::bind(args.listen).await {
            Ok(listener) => listener,
            Err(error) => {
                eprintln!("error: cannot listen on {}: {error}", args.listen);
                return 2;
            }
        };
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            signals.recv().await;
            stop.cancel();
        });
        tracing::info!(listen = %args.listen, "idgate webhook serving POST /mutate");
        match server::serve(listener, certs, shutdown).await {
            Ok(()) => 0,
            Err(error) => {
                eprintln!("error: {error}");
                2
            }
        }
    })
}

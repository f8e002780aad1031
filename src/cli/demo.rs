//! `idgate demo`: a whole mesh on loopback in one process, and a scripted tour of it.
//!
//! Three workloads with dev SVIDs: `billing` (an echo app behind an inbound sidecar),
//! and `frontend` and `reports` (each with an outbound sidecar to billing). Every piece
//! is the real thing (config files, policy file, mTLS, decision log); only the
//! workloads share one process.

use super::output::outln;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::app::{self, App};
use crate::config::Config;
use crate::devpki::write_dev_pki;
use crate::spiffe_id::{SpiffeId, TrustDomain};

const TRUST_DOMAIN: &str = "example.org";
const BILLING: &str = "spiffe://example.org/ns/billing/sa/billing";
const FRONTEND: &str = "spiffe://example.org/ns/shop/sa/frontend";
const REPORTS: &str = "spiffe://example.org/ns/analytics/sa/reports";

/// The demo's policy for billing: the sample policy of `config/`, so both tell one story.
const BILLING_POLICY: &str = include_str!("../../config/billing-policy.toml");

/// Arguments of `idgate demo`.
#[derive(clap::Args)]
pub struct DemoArgs {
    /// Exit after the scripted tour instead of serving until Ctrl-C.
    #[arg(long)]
    pub once: bool,
}

/// Runs the demo; exit 0, or 1 when the mesh cannot start.
pub fn run(args: &DemoArgs) -> u8 {
    super::block_on(async {
        match demo(args.once).await {
            Ok(()) => 0,
            Err(error) => {
                eprintln!("error: demo: {error:#}");
                1
            }
        }
    })
}

/// One scripted call.
struct Call {
    from: &'static str,
    method: &'static str,
    path: &'static str,
}

const TOUR: &[Call] = &[
    Call {
        from: "frontend",
        method: "GET",
        path: "/api/invoices",
    },
    Call {
        from: "frontend",
        method: "POST",
        path: "/api/invoices",
    },
    Call {
        from: "frontend",
        method: "DELETE",
        path: "/api/invoices/42",
    },
    Call {
        from: "reports",
        method: "GET",
        path: "/api/invoices/42?fields=total",
    },
    Call {
        from: "reports",
        method: "POST",
        path: "/api/invoices",
    },
    Call {
        from: "reports",
        method: "GET",
        path: "/api/%2e%2e/admin/users",
    },
    Call {
        from: "frontend",
        method: "GET",
        path: "/admin/users",
    },
];

struct Mesh {
    dir: PathBuf,
    apps: Vec<App>,
    frontend: SocketAddr,
    reports: SocketAddr,
    billing: SocketAddr,
}

async fn demo(once: bool) -> anyhow::Result<()> {
    let mut signals = app::ShutdownSignals::install()?;
    let mesh = start_mesh().await?;
    outln!("idgate demo: three workloads on loopback (trust domain {TRUST_DOMAIN})");
    outln!(
        "  billing   {BILLING}   inbound mTLS {} -> echo app",
        mesh.billing
    );
    outln!(
        "  frontend  {FRONTEND}  outbound {} -> billing",
        mesh.frontend
    );
    outln!(
        "  reports   {REPORTS}  outbound {} -> billing",
        mesh.reports
    );
    outln!(
        "  policy    {}\n",
        mesh.dir.join("billing-policy.toml").display()
    );
    tour(&mesh).await?;
    if !once {
        outln!("\nThe mesh keeps running. Try (Ctrl-C to stop):");
        outln!("  curl -i http://{}/api/invoices", mesh.frontend);
        outln!(
            "  curl -i -X DELETE http://{}/api/invoices/42",
            mesh.frontend
        );
        outln!("  curl -i http://{}/api/invoices/7", mesh.reports);
        outln!(
            "  decision log: {}",
            mesh.dir.join("billing-decisions.log").display()
        );
        signals.recv().await;
    }
    for app in mesh.apps {
        app.drain().await;
    }
    let _ = std::fs::remove_dir_all(&mesh.dir);
    Ok(())
}

async fn start_mesh() -> anyhow::Result<Mesh> {
    let dir = std::env::temp_dir().join(format!("idgate-demo-{}", std::process::id()));
    let ids =
        [BILLING, FRONTEND, REPORTS].map(|id| SpiffeId::parse(id).expect("demo IDs are valid"));
    write_dev_pki(&dir, &TrustDomain::new(TRUST_DOMAIN)?, &ids)
        .context("writing dev certificates")?;
    std::fs::write(dir.join("billing-policy.toml"), BILLING_POLICY)?;
    let echo = super::echo::spawn(([127, 0, 0, 1], 0).into()).await?;

    let billing_toml = format!(
        "{identity}\n[[inbound]]\nname = \"billing\"\nlisten = \"127.0.0.1:0\"\nupstream = \"http://{echo}\"\npolicy = \"billing-policy.toml\"\n{tail}",
        identity = identity_toml("billing"),
        tail = tail_toml("billing"),
    );
    let billing = start_app(&dir, "billing", &billing_toml).await?;
    let billing_addr = billing.inbound[0];
    let client_toml = |name: &str| {
        format!(
            "{identity}\n[[outbound]]\nname = \"to-billing\"\nlisten = \"127.0.0.1:0\"\ntarget = \"{billing_addr}\"\nserver_ids = [\"{BILLING}\"]\n{tail}",
            identity = identity_toml(name),
            tail = tail_toml(name),
        )
    };
    let frontend = start_app(&dir, "frontend", &client_toml("frontend")).await?;
    let reports = start_app(&dir, "reports", &client_toml("reports")).await?;
    Ok(Mesh {
        frontend: frontend.outbound[0],
        reports: reports.outbound[0],
        billing: billing_addr,
        apps: vec![billing, frontend, reports],
        dir,
    })
}

fn identity_toml(name: &str) -> String {
    format!("[identity]\nsource = \"files\"\ncert = \"{name}.pem\"\nkey = \"{name}-key.pem\"\nbundle = \"bundle.pem\"\n")
}

fn tail_toml(name: &str) -> String {
    format!("[admin]\nlisten = \"127.0.0.1:0\"\n[log]\ndecisions = \"{name}-decisions.log\"\n")
}

async fn start_app(dir: &Path, name: &str, toml: &str) -> anyhow::Result<App> {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, toml)?;
    let config = Config::load(&path)?;
    app::start(config)
        .await
        .with_context(|| format!("starting {name}"))
}

async fn tour(mesh: &Mesh) -> anyhow::Result<()> {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    outln!(
        "{:<9} {:<8} {:<36} {:<6} {:<11} WHY",
        "FROM",
        "TO",
        "REQUEST",
        "STATUS",
        "DECISION"
    );
    for (n, call) in TOUR.iter().enumerate() {
        let outbound = match call.from {
            "frontend" => mesh.frontend,
            _ => mesh.reports,
        };
        let request_id = format!("demo-{}-{n}", std::process::id());
        let request = Request::builder()
            .method(call.method)
            .uri(format!("http://{outbound}{}", call.path))
            .header("x-request-id", &request_id)
            .body(Full::new(Bytes::new()))?;
        let response = client
            .request(request)
            .await
            .context("calling the outbound sidecar")?;
        let status = response.status().as_u16();
        let _ = response.into_body().collect().await;
        let line = decision_line(&mesh.dir.join("billing-decisions.log"), &request_id).await;
        let (decision, why) = describe(line.as_ref());
        let request = format!("{} {}", call.method, call.path);
        outln!(
            "{:<9} {:<8} {:<36} {:<6} {:<11} {}",
            call.from,
            "billing",
            request,
            status,
            decision,
            why
        );
    }
    Ok(())
}

/// Waits (up to 2 s) for billing's decision line about one request.
async fn decision_line(log: &Path, request_id: &str) -> Option<serde_json::Value> {
    for _ in 0..40 {
        if let Ok(text) = tokio::fs::read_to_string(log).await {
            let found = text
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find(|v| v["request_id"] == request_id);
            if found.is_some() {
                return found;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

fn describe(line: Option<&serde_json::Value>) -> (String, String) {
    let Some(line) = line else {
        return ("?".into(), "no decision logged".into());
    };
    let decision = line["decision"].as_str().unwrap_or("?").to_string();
    let path = line["path"].as_str().unwrap_or("");
    let why = match (line["rule"].as_str(), line["reason"].as_str()) {
        (Some(rule), _) if decision == "allow" => format!("rule {rule} (path {path})"),
        (_, Some(reason)) => format!("{reason} (path {path})"),
        (Some(rule), None) => format!("rule {rule} (path {path})"),
        (None, None) => format!("default (path {path})"),
    };
    (decision, why)
}

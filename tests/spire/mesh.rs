//! The two-sidecar mesh most SPIRE tests start from (server sidecar in front of the echo
//! app, client sidecar with a pooled HTTP outbound and a TCP outbound), a pooled-request
//! load, and small log helpers.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use tokio::task::JoinHandle;

use super::{free_addr, Idgate, Spire};

/// The server workload's SPIFFE ID.
pub const SERVER_ID: &str = "spiffe://example.org/ns/billing/sa/api";
/// The client workload's SPIFFE ID.
pub const CLIENT_ID: &str = "spiffe://example.org/ns/shop/sa/frontend";

/// A policy that admits [`CLIENT_ID`] to everything and denies everyone else.
pub const ALLOW_CLIENT: &str = r#"
mode = "enforce"
default = "deny"

[[rule]]
name = "frontend"
action = "allow"
from = ["spiffe://example.org/ns/shop/sa/frontend"]
"#;

/// An `[[inbound]]` listener named `api` on `listen`, forwarding to `upstream` (`host:port`)
/// and judged by `policy.toml`.
pub fn inbound_toml(listen: SocketAddr, upstream: &str) -> String {
    format!("[[inbound]]\nname = \"api\"\nlisten = \"{listen}\"\nupstream = \"http://{upstream}\"\npolicy = \"policy.toml\"\n")
}

/// How many lines of `log` contain `text`.
pub fn lines_with(log: &str, text: &str) -> usize {
    log.lines().filter(|l| l.contains(text)).count()
}

/// The echo app and, in front of it, a server sidecar (uid `uid`) with an inbound
/// listener judged by `policy`; returns the sidecar (not waited for) and its inbound address.
pub async fn spawn_server(spire: &Spire, uid: u32, policy: &str) -> (Idgate, SocketAddr) {
    let echo = idgate::cli::echo::spawn(([127, 0, 0, 1], 0).into())
        .await
        .expect("echo");
    let inbound = free_addr();
    let server = Idgate::spawn(
        spire,
        "server",
        uid,
        &inbound_toml(inbound, &echo.to_string()),
        &[("policy.toml", policy)],
    );
    (server, inbound)
}

/// SPIRE with entries for [`SERVER_ID`] and [`CLIENT_ID`], the echo app, and two ready
/// sidecars: `server` (inbound on `inbound` in front of the echo app, judged by the given
/// policy) and `client` with two outbound listeners to it: `http_out` (HTTP, pooled
/// connections to the peer) and `tcp_out` (TCP, one new mTLS handshake per app connection,
/// so each one shows which SVID is in use right now).
///
/// Fields drop in order: the sidecars before SPIRE.
pub struct TwoSidecars {
    pub client: Idgate,
    pub server: Idgate,
    pub spire: Spire,
    pub inbound: SocketAddr,
    pub http_out: SocketAddr,
    pub tcp_out: SocketAddr,
}

impl TwoSidecars {
    /// Starts SPIRE with `ttl` (server default and both entries), registers the server
    /// under `server_uid` and the client under `client_uid`, spawns everything and waits
    /// until both sidecars are ready.
    pub async fn start(ttl: u32, server_uid: u32, client_uid: u32, policy: &str) -> Self {
        let spire = tokio::task::block_in_place(|| {
            let spire = Spire::start(ttl);
            spire.register(SERVER_ID, server_uid, ttl);
            spire.register(CLIENT_ID, client_uid, ttl);
            spire
        });
        let (server, inbound) = spawn_server(&spire, server_uid, policy).await;
        let (http_out, tcp_out) = (free_addr(), free_addr());
        let client = Idgate::spawn(
            &spire,
            "client",
            client_uid,
            &format!(
                "[[outbound]]\nname = \"pooled\"\nlisten = \"{http_out}\"\ntarget = \"{inbound}\"\nserver_ids = [\"{SERVER_ID}\"]\n\n\
                 [[outbound]]\nname = \"fresh\"\nlisten = \"{tcp_out}\"\ntarget = \"{inbound}\"\nserver_ids = [\"{SERVER_ID}\"]\nprotocol = \"tcp\"\n"
            ),
            &[],
        );
        server.ready().await;
        client.ready().await;
        Self {
            client,
            server,
            spire,
            inbound,
            http_out,
            tcp_out,
        }
    }
}

/// Workers sending `GET`s over pooled connections until stopped; every reply that is not
/// 200 is recorded as a failure.
pub struct PooledLoad {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    workers: Vec<JoinHandle<Vec<String>>>,
}

impl PooledLoad {
    /// One worker per URL, each with its own client, pausing `pause` after every request
    /// (`None`: no pause).
    pub fn start(urls: Vec<String>, pause: Option<Duration>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let workers = urls
            .into_iter()
            .map(|url| {
                let (stop, sent) = (stop.clone(), sent.clone());
                tokio::spawn(async move {
                    let http = crate::support::plain_client();
                    let mut failures = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let reply =
                            crate::support::send(&http, "GET", &url, &[], Bytes::new()).await;
                        sent.fetch_add(1, Ordering::Relaxed);
                        if reply.status != StatusCode::OK {
                            failures.push(format!("{}: {}", reply.status, reply.text()));
                        }
                        if let Some(pause) = pause {
                            tokio::time::sleep(pause).await;
                        }
                    }
                    failures
                })
            })
            .collect();
        Self {
            stop,
            sent,
            workers,
        }
    }

    /// Stops the workers and waits for them: all failures and the number of requests sent.
    pub async fn stop(self) -> (Vec<String>, u64) {
        self.stop.store(true, Ordering::Relaxed);
        let mut failures = Vec::new();
        for worker in self.workers {
            failures.extend(worker.await.expect("load worker"));
        }
        (failures, self.sent.load(Ordering::Relaxed))
    }
}

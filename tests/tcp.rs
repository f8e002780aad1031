//! TCP (L4) mode: identity-only authorisation, byte relay with half-close, Unix upstreams.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;

use sha2::{Digest, Sha256};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixListener};

const TCP_POLICY: &str = r#"
default = "deny"
[[rule]]
name = "frontend-may-connect"
action = "allow"
from = ["spiffe://example.org/ns/shop/sa/frontend"]
"#;

async fn tcp_mesh(upstream: &str) -> (Mesh, Sidecar, Sidecar) {
    let mesh = Mesh::start_tcp(TCP_POLICY, upstream).await;
    let frontend = mesh
        .client_with("frontend", FRONTEND_ID, &[SERVER_ID], "protocol = \"tcp\"")
        .await;
    let reports = mesh
        .client_with("reports", REPORTS_ID, &[SERVER_ID], "protocol = \"tcp\"")
        .await;
    (mesh, frontend, reports)
}

/// Sends `size` bytes, half-closes, reads the echo to EOF; returns (sent hash, received hash, received len).
async fn round_trip(addr: SocketAddr, size: usize) -> (Vec<u8>, Vec<u8>, usize) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let sender = tokio::spawn(async move {
        let mut hash = Sha256::new();
        let mut chunk = vec![0u8; 64 * 1024];
        let mut sent = 0;
        let mut n = 0u8;
        while sent < size {
            let len = chunk.len().min(size - sent);
            for b in &mut chunk[..len] {
                *b = n;
                n = n.wrapping_mul(31).wrapping_add(7);
            }
            writer.write_all(&chunk[..len]).await.unwrap();
            hash.update(&chunk[..len]);
            sent += len;
        }
        writer.shutdown().await.unwrap();
        hash.finalize().to_vec()
    });
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut received = 0;
    loop {
        let n = reader.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        received += n;
    }
    (sender.await.unwrap(), hash.finalize().to_vec(), received)
}

/// `idgate_requests_total` of `sidecar` for the connection `line` (its decision line) describes.
async fn counted(sidecar: &Sidecar, line: &serde_json::Value) -> f64 {
    let label = |name: &str| line[name].as_str().unwrap().to_string();
    let series = format!(
        "idgate_requests_total{{listener=\"{}\",direction=\"{}\",source=\"{}\",decision=\"{}\"}}",
        label("listener"),
        label("direction"),
        label("source"),
        label("decision"),
    );
    metric(&sidecar.admin("/metrics").await.text(), &series)
}

#[tokio::test]
async fn large_transfers_survive_both_ways_with_half_close() {
    let (echo, _) = tcp_echo().await;
    let (mesh, frontend, _) = tcp_mesh(&format!("tcp://{echo}")).await;
    let size = 100 * 1024 * 1024;
    let (sent, received, len) = round_trip(frontend.outbound(), size).await;
    assert_eq!(len, size);
    assert_eq!(sent, received, "payload changed on the way");
    let lines = mesh.server.decision_lines(1).await;
    let line = &lines[0];
    assert_eq!(line["decision"], "allow");
    assert_eq!(line["rule"], "frontend-may-connect");
    assert_eq!(line["method"], serde_json::Value::Null);
    assert_eq!(line["path"], serde_json::Value::Null);
    assert_eq!(line["bytes_in"], size as u64);
    assert_eq!(line["bytes_out"], size as u64);
    assert!(line["duration_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(
        counted(&mesh.server, line).await,
        1.0,
        "a connection is a request"
    );
    let outbound = &frontend.decision_lines(1).await[0];
    assert_eq!(counted(&frontend, outbound).await, 1.0);
}

#[tokio::test]
async fn denied_identity_is_cut_before_the_upstream_sees_a_byte() {
    let (echo, accepted) = tcp_echo().await;
    let (mesh, _, reports) = tcp_mesh(&format!("tcp://{echo}")).await;
    let mut stream = TcpStream::connect(reports.outbound()).await.unwrap();
    let _ = stream.write_all(b"secret").await;
    let mut buf = [0u8; 16];
    let n = stream.read(&mut buf).await.unwrap_or(0);
    assert_eq!(n, 0, "a denied connection must be closed without data");
    let lines = mesh.server.decision_lines(1).await;
    assert_eq!(lines[0]["decision"], "deny");
    assert_eq!(lines[0]["source"], REPORTS_ID);
    assert_eq!(lines[0]["bytes_in"], 0);
    assert_eq!(
        counted(&mesh.server, &lines[0]).await,
        1.0,
        "denials are counted"
    );
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        0,
        "the upstream must never be contacted"
    );
}

#[tokio::test]
async fn tcp_listener_policy_may_not_use_http_fields() {
    let pki = Pki::new(TD);
    std::fs::write(
        pki.path("policy.toml"),
        "[[rule]]\nname = \"x\"\naction = \"allow\"\npaths = [\"/a\"]\n",
    )
    .unwrap();
    let toml = format!(
        "{}\n[[inbound]]\nname = \"db\"\nlisten = \"127.0.0.1:0\"\nupstream = \"tcp://127.0.0.1:5432\"\nprotocol = \"tcp\"\npolicy = \"policy.toml\"\n",
        pki.identity_toml("server", SERVER_ID)
    );
    let path = pki.path("tcp.toml");
    std::fs::write(&path, toml).unwrap();
    let err = idgate::config::Config::load(&path).unwrap_err().to_string();
    assert!(
        err.contains("policy.toml:4") && err.contains("paths"),
        "{err}"
    );
}

async fn unix_echo_http(path: &Path) {
    let listener = UnixListener::bind(path).unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    |req: http::Request<hyper::body::Incoming>| async move {
                        let body = format!("unix saw {}", req.uri().path());
                        Ok::<_, std::convert::Infallible>(http::Response::new(
                            http_body_util::Full::new(bytes::Bytes::from(body)),
                        ))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}

#[tokio::test]
async fn unix_socket_upstream_for_http() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("app.sock");
    unix_echo_http(&socket).await;
    let mesh = Mesh::start_upstream(
        "default = \"allow\"\n",
        &format!("unix://{}", socket.display()),
        "",
    )
    .await;
    let client = mesh.client("frontend", FRONTEND_ID, &[SERVER_ID]).await;
    let reply = get(&client.url("/via/unix"), &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.text(), "unix saw /via/unix");
}

#[tokio::test]
async fn unix_socket_upstream_for_tcp() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("echo.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = stream.into_split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    let (_mesh, frontend, _) = tcp_mesh(&format!("unix://{}", socket.display())).await;
    let (sent, received, len) = round_trip(frontend.outbound(), 1024 * 1024).await;
    assert_eq!(len, 1024 * 1024);
    assert_eq!(sent, received);
}

/// `at` as RFC 3339, as a policy file writes `expires`.
fn rfc3339(at: time::OffsetDateTime) -> String {
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

/// Writes `ping` on `stream` and reads it back: the relay is running.
async fn ping(stream: &mut TcpStream) {
    stream.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    stream.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
}

#[tokio::test]
async fn a_break_glass_rule_ends_the_relays_it_admitted_when_it_expires() {
    let (echo, _) = tcp_echo().await;
    let lifetime = std::time::Duration::from_secs(2);
    let expires = time::OffsetDateTime::now_utc() + lifetime;
    let expires_at = std::time::Instant::now() + lifetime;
    let policy = format!(
        "default = \"deny\"\n\
         [[rule]]\nname = \"bg\"\naction = \"allow\"\nfrom = [\"{FRONTEND_ID}\"]\nexpires = \"{}\"\n\
         [[rule]]\nname = \"reports\"\naction = \"allow\"\nfrom = [\"{REPORTS_ID}\"]\n",
        rfc3339(expires)
    );
    let mesh = Mesh::start_tcp(&policy, &format!("tcp://{echo}")).await;
    let tcp = "protocol = \"tcp\"";
    let frontend = mesh
        .client_with("frontend", FRONTEND_ID, &[SERVER_ID], tcp)
        .await;
    let reports = mesh
        .client_with("reports", REPORTS_ID, &[SERVER_ID], tcp)
        .await;
    let mut glass = TcpStream::connect(frontend.outbound()).await.unwrap();
    ping(&mut glass).await;
    let mut kept = TcpStream::connect(reports.outbound()).await.unwrap();
    ping(&mut kept).await;
    assert!(
        std::time::Instant::now() < expires_at,
        "the test set up too slowly: the rule expired before the relay was open"
    );
    // Idle until idgate closes it: at most 5 s after the rule expired.
    let mut rest = [0u8; 16];
    let bound = expires_at + std::time::Duration::from_secs(5);
    let read = tokio::time::timeout_at(bound.into(), glass.read(&mut rest)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "the relay admitted by the expired rule must be closed: {read:?}"
    );
    assert!(
        std::time::Instant::now() + std::time::Duration::from_millis(50) >= expires_at,
        "closed before the rule expired"
    );
    ping(&mut kept).await;
    let lines = mesh.server.decision_lines(1).await;
    let ended = lines
        .iter()
        .find(|l| l["decision"] == "deny")
        .expect("a deny line for the relay the expired rule admitted");
    assert_eq!(ended["source"], FRONTEND_ID, "{ended}");
    assert_eq!(ended["rule"], "bg", "{ended}");
    assert_eq!(ended["break_glass"], true, "{ended}");
    let reason = ended["reason"].as_str().unwrap();
    assert!(
        reason.contains("revoked") && reason.contains("rule bg expired at"),
        "{ended}"
    );
    assert!(
        lines.iter().all(|l| l["source"] != REPORTS_ID),
        "the relay of the non-expiring rule must still be open: {lines:?}"
    );
}

/// Pings through `stream`, then waits (in paused time) for idgate to close the relay as
/// idle, expected after `idle`; returns how long after the last byte that was. Fails once
/// the paused clock has passed `idle` by a second without a close (later would fail
/// [`assert_idle_for`] anyway).
async fn closed_when_idle(
    stream: &mut TcpStream,
    idle: std::time::Duration,
) -> std::time::Duration {
    ping(stream).await;
    let last_byte = tokio::time::Instant::now();
    let mut rest = [0u8; 16];
    let paused_bound = idle + std::time::Duration::from_secs(1);
    let read = tokio::time::timeout(paused_bound, stream.read(&mut rest)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "the idle relay must be closed within {paused_bound:?} of its last byte: {read:?}"
    );
    last_byte.elapsed()
}

/// The real time a test's part in paused time may take. The paused clock moves only when
/// every task waits (then it jumps to the next timer, the sidecars' 1 s health ticks
/// among them): a relay that never settled would stop it, and no paused timeout would
/// ever fire.
const REAL_TIME_BOUND: std::time::Duration = std::time::Duration::from_secs(10);

/// Runs `paused` (a test's part in paused time), failing after [`REAL_TIME_BOUND`] of real
/// time (a thread's sleep, which the paused clock does not touch), whatever that clock did.
async fn within_real_time<T>(paused: impl std::future::Future<Output = T>) -> T {
    let (fire, fired) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        std::thread::sleep(REAL_TIME_BOUND);
        let _ = fire.send(());
    });
    let started = tokio::time::Instant::now();
    tokio::select! {
        done = paused => done,
        _ = fired => panic!(
            "still waiting after {REAL_TIME_BOUND:?} of real time ({:?} of paused time)",
            started.elapsed()
        ),
    }
}

/// Asserts `quiet` (from the last byte to the close) is `idle`, to within a second.
#[track_caller]
fn assert_idle_for(quiet: std::time::Duration, idle: std::time::Duration) {
    assert!(
        quiet >= idle && quiet < idle + std::time::Duration::from_secs(1),
        "closed {quiet:?} after the last byte, expected {idle:?}"
    );
}

/// The decision line of the relay that ended idle, with its bytes.
fn assert_idle_line(line: &serde_json::Value, bytes: u64) {
    assert_eq!(line["decision"], "allow", "{line}");
    assert_eq!(line["bytes_in"], bytes, "{line}");
    assert_eq!(line["bytes_out"], bytes, "{line}");
    let reason = line["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("idle"), "{line}");
}

#[tokio::test]
async fn a_relay_that_moves_no_byte_for_an_hour_is_closed_by_default() {
    let (echo, _) = tcp_echo().await;
    // The inbound waits longer: the outbound's default is what ends the relay.
    let inbound = "protocol = \"tcp\"\ntimeouts = { idle = \"3h\" }";
    let mesh = Mesh::start_upstream(TCP_POLICY, &format!("tcp://{echo}"), inbound).await;
    let frontend = mesh
        .client_with("frontend", FRONTEND_ID, &[SERVER_ID], "protocol = \"tcp\"")
        .await;
    let mut stream = TcpStream::connect(frontend.outbound()).await.unwrap();
    ping(&mut stream).await;
    let hour = std::time::Duration::from_secs(3600);
    tokio::time::pause();
    let quiet = within_real_time(async {
        // Bytes every 50 minutes keep it open for hours.
        for _ in 0..3 {
            tokio::time::sleep(std::time::Duration::from_secs(50 * 60)).await;
            ping(&mut stream).await;
        }
        closed_when_idle(&mut stream, hour).await
    })
    .await;
    tokio::time::resume();
    assert_idle_for(quiet, hour);
    let line = &frontend.decision_lines(1).await[0];
    assert_idle_line(line, 5 * 4);
    assert_eq!(counted(&frontend, line).await, 1.0);
}

#[tokio::test]
async fn a_tcp_listeners_idle_timeout_overrides_the_hour() {
    let (echo, _) = tcp_echo().await;
    let inbound = "protocol = \"tcp\"\ntimeouts = { idle = \"5m\" }";
    let mesh = Mesh::start_upstream(TCP_POLICY, &format!("tcp://{echo}"), inbound).await;
    let frontend = mesh
        .client_with("frontend", FRONTEND_ID, &[SERVER_ID], "protocol = \"tcp\"")
        .await;
    let mut stream = TcpStream::connect(frontend.outbound()).await.unwrap();
    tokio::time::pause();
    let idle = std::time::Duration::from_secs(5 * 60);
    let quiet = within_real_time(closed_when_idle(&mut stream, idle)).await;
    tokio::time::resume();
    assert_idle_for(quiet, idle);
    let line = &mesh.server.decision_lines(1).await[0];
    assert_idle_line(line, 4);
    assert_eq!(line["source"], FRONTEND_ID, "{line}");
}

//! Limits and timeouts that keep a listener honest under slow, greedy or long-lived clients.

mod support;

use std::time::{Duration, Instant};

use idgate::devpki::LeafSpec;
use idgate::spiffe_id::SpiffeId;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ALLOW_ALL: &str = "default = \"allow\"\n";

fn frontend_config(mesh: &Mesh) -> std::sync::Arc<rustls::ClientConfig> {
    let cert = mesh.pki.svid(FRONTEND_ID);
    tls_client(&mesh.pki.ca.root_pem(), Some(&cert), &[b"http/1.1"])
}

/// Reads until EOF or error; the time it took.
async fn until_closed<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    limit: Duration,
) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(
            limit.saturating_sub(started.elapsed()),
            stream.read(&mut buf),
        )
        .await
        {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => continue,
            Err(_) => return None,
        }
    }
}

#[tokio::test]
async fn slowloris_is_cut_at_the_header_timeout_while_others_are_served() {
    let mesh = Mesh::start_with(ALLOW_ALL, "timeouts = { header = \"1s\" }").await;
    let mut slow = mtls_connect(mesh.server.inbound(), frontend_config(&mesh))
        .await
        .unwrap();
    let request = b"GET /slow HTTP/1.1\r\nHost: localhost\r\nX-Drip: ";
    let started = Instant::now();
    let mut cut = false;
    for byte in request.iter().chain(b"aaaaaaaa".iter()) {
        if slow.write_all(&[*byte]).await.is_err() || slow.flush().await.is_err() {
            cut = true;
            break;
        }
        // Meanwhile a normal client is served.
        let reply = mtls_send(
            mesh.server.inbound(),
            frontend_config(&mesh),
            "GET",
            "/fast",
            &[],
        )
        .await
        .unwrap();
        assert_eq!(reply.status, 200);
        if started.elapsed() > Duration::from_secs(4) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    if !cut {
        let closed = until_closed(&mut slow, Duration::from_secs(3)).await;
        assert!(closed.is_some(), "a client dripping headers must be cut");
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "cut near the 1 s header timeout"
    );
}

/// CPU time this process has used (user + system), from `/proc/self/stat`.
fn cpu_used() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    let after_name = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = after_name.split(' ').collect();
    // utime and stime, fields 14 and 15 of proc(5), in ticks of 1/100 s.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

#[tokio::test]
async fn app_connections_that_stop_before_telling_their_protocol_are_closed_when_idle() {
    // The outbound tells a plain connection's protocol by peeking at its first bytes. One
    // that sends nothing, or only a piece of the HTTP/2 preface, is waited for without
    // spinning and closed after the idle timeout.
    let mesh = Mesh::start(ALLOW_ALL).await;
    let extra = "timeouts = { idle = \"1s\" }";
    let client = mesh
        .client_with("frontend", FRONTEND_ID, &[SERVER_ID], extra)
        .await;
    for first in [&b""[..], b"PRI * HTTP/2"] {
        let mut stalled = TcpStream::connect(client.outbound()).await.unwrap();
        stalled.write_all(first).await.unwrap();
        let cpu_before = cpu_used();
        let closed = until_closed(&mut stalled, Duration::from_secs(4)).await;
        let cpu = cpu_used() - cpu_before;
        let closed = closed.expect("a connection that never tells its protocol must be closed");
        assert!(
            closed >= Duration::from_millis(900),
            "{first:?}: closed after {closed:?}"
        );
        assert!(
            cpu < Duration::from_millis(300),
            "{first:?}: {cpu:?} of CPU while waiting"
        );
    }
}

#[tokio::test]
async fn connections_over_the_limit_are_closed_not_left_hanging() {
    let mesh = Mesh::start_with(ALLOW_ALL, "limits = { max_connections = 2 }").await;
    let config = frontend_config(&mesh);
    let held: Vec<_> = futures_join(vec![
        mtls_connect(mesh.server.inbound(), config.clone()),
        mtls_connect(mesh.server.inbound(), config.clone()),
    ])
    .await;
    assert!(held.iter().all(Result::is_ok));
    let mut third = TcpStream::connect(mesh.server.inbound()).await.unwrap();
    let closed = until_closed(&mut third, Duration::from_secs(2)).await;
    assert!(
        closed.is_some(),
        "the third connection should be closed promptly"
    );
    let metrics = mesh.server.admin("/metrics").await.text();
    assert_eq!(
        metric(
            &metrics,
            "idgate_connections_refused_total{listener=\"api\"}"
        ),
        1.0,
        "{metrics}"
    );
    drop(held);
    let mut ok = false;
    for _ in 0..40 {
        if mtls_send(mesh.server.inbound(), config.clone(), "GET", "/", &[])
            .await
            .is_ok()
        {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok, "a slot frees up when a held connection closes");
}

async fn futures_join<T>(futures: Vec<impl std::future::Future<Output = T>>) -> Vec<T> {
    let mut out = Vec::new();
    for f in futures {
        out.push(f.await);
    }
    out
}

#[tokio::test]
async fn oversized_headers_are_refused() {
    let mesh = Mesh::start_with(ALLOW_ALL, "limits = { max_header_bytes = 16384 }").await;
    let big = "x".repeat(32 * 1024);
    let result = mtls_send(
        mesh.server.inbound(),
        frontend_config(&mesh),
        "GET",
        "/",
        &[("x-big", &big)],
    )
    .await;
    match result {
        Ok(reply) => assert_eq!(reply.status, 431),
        Err(error) => assert!(!error.is_empty()),
    }
    let small = mtls_send(
        mesh.server.inbound(),
        frontend_config(&mesh),
        "GET",
        "/",
        &[("x-small", "1")],
    )
    .await
    .unwrap();
    assert_eq!(small.status, 200);
}

#[tokio::test]
async fn connections_end_at_their_maximum_age() {
    let mesh = Mesh::start_with(ALLOW_ALL, "limits = { max_connection_age = \"600ms\" }").await;
    let (mut sender, connection) =
        h1_connection(mesh.server.inbound(), frontend_config(&mesh)).await;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) && !connection.is_finished() {
        let request = empty_get("/busy");
        if sender.send_request(request).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ended = tokio::time::timeout(Duration::from_secs(1), connection)
        .await
        .is_ok();
    assert!(ended, "a busy connection must still end at its maximum age");
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn a_connection_ends_when_the_peer_certificate_expires() {
    let mesh = Mesh::start(ALLOW_ALL).await;
    let mut spec = LeafSpec::svid(&SpiffeId::parse(FRONTEND_ID).unwrap());
    spec.dns = vec!["localhost".into()];
    spec.not_after = time::OffsetDateTime::now_utc() + time::Duration::seconds(2);
    let cert = mesh.pki.ca.issue(&spec).unwrap();
    let config = tls_client(&mesh.pki.ca.root_pem(), Some(&cert), &[b"http/1.1"]);
    let (mut sender, connection) = h1_connection(mesh.server.inbound(), config).await;
    let request = empty_get("/");
    assert_eq!(sender.send_request(request).await.unwrap().status(), 200);
    let ended = tokio::time::timeout(Duration::from_secs(5), connection)
        .await
        .is_ok();
    assert!(
        ended,
        "the connection must close once the client certificate has expired"
    );
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_aborted_handshakes_leak_nothing() {
    let mesh = Mesh::start(ALLOW_ALL).await;
    let addr = mesh.server.inbound();
    // Warm up: one full request so lazily created state exists before the baseline.
    mtls_send(addr, frontend_config(&mesh), "GET", "/", &[])
        .await
        .unwrap();
    let baseline = open_fds();
    for i in 0..10_000u32 {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        if i % 2 == 0 {
            // The start of a TLS record, then gone.
            let _ = tcp.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).await;
        }
        drop(tcp);
    }
    let mut active = f64::MAX;
    let mut fds = usize::MAX;
    for _ in 0..100 {
        let metrics = mesh.server.admin("/metrics").await.text();
        active = metric(&metrics, "idgate_connections_active{listener=\"api\"}");
        fds = open_fds();
        if active == 0.0 && fds <= baseline + 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(active, 0.0, "every connection task must have ended");
    assert!(
        fds <= baseline + 4,
        "file descriptors leaked: {baseline} before, {fds} after"
    );
}

#[tokio::test]
async fn http2_streams_beyond_the_limit_wait_their_turn() {
    let mesh = Mesh::start_with(ALLOW_ALL, "limits = { max_concurrent_streams = 1 }").await;
    let cert = mesh.pki.svid(FRONTEND_ID);
    let config = tls_client(&mesh.pki.ca.root_pem(), Some(&cert), &[b"h2"]);
    let (sender, _connection) = h2_connection(mesh.server.inbound(), config).await;
    // One call first, so the client has the server's SETTINGS (streams opened before it
    // arrives may be refused with REFUSED_STREAM, which clients retry).
    let first = empty_get("/");
    assert_eq!(
        sender.clone().send_request(first).await.unwrap().status(),
        200
    );
    let started = Instant::now();
    let calls: Vec<_> = (0..3)
        .map(|_| {
            let mut sender = sender.clone();
            tokio::spawn(async move {
                let request = empty_get("/slow?delay_ms=300");
                sender.send_request(request).await.map(|r| r.status())
            })
        })
        .collect();
    for call in calls {
        assert_eq!(call.await.unwrap().unwrap(), 200);
    }
    // One stream at a time: three 300 ms calls take at least 900 ms (in parallel, ~300 ms).
    assert!(
        started.elapsed() >= Duration::from_millis(850),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn drain_sends_goaway_to_http2_clients_after_their_streams_finish() {
    let mesh = Mesh::start(ALLOW_ALL).await;
    let cert = mesh.pki.svid(FRONTEND_ID);
    let config = tls_client(&mesh.pki.ca.root_pem(), Some(&cert), &[b"h2"]);
    let (mut sender, connection) = h2_connection(mesh.server.inbound(), config).await;
    let request = empty_get("/slow?delay_ms=400");
    let in_flight =
        tokio::spawn(async move { sender.send_request(request).await.map(|r| r.status()) });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let Mesh { server, .. } = mesh;
    assert!(server.app.drain().await);
    assert_eq!(
        in_flight.await.unwrap().unwrap(),
        200,
        "the open stream completes"
    );
    let ended = tokio::time::timeout(Duration::from_secs(2), connection).await;
    assert!(
        ended.is_ok(),
        "GOAWAY ends the connection once its streams are done"
    );
}

#[tokio::test]
async fn drain_lets_tcp_relays_finish() {
    let (upstream, _) = tcp_echo().await;
    let mesh = Mesh::start_tcp(ALLOW_ALL, &format!("tcp://{upstream}")).await;
    let client = mesh
        .client_with("frontend", FRONTEND_ID, &[SERVER_ID], "protocol = \"tcp\"")
        .await;
    let mut stream = TcpStream::connect(client.outbound()).await.unwrap();
    stream.write_all(b"before").await.unwrap();
    let mut buf = [0u8; 6];
    stream.read_exact(&mut buf).await.unwrap();
    let Mesh { server, .. } = mesh;
    let drain = tokio::spawn(async move { server.app.drain().await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    stream.write_all(b"during").await.unwrap();
    stream.read_exact(&mut buf).await.unwrap();
    assert_eq!(
        &buf, b"during",
        "a relay keeps working while the sidecar drains"
    );
    stream.shutdown().await.unwrap();
    let closed = until_closed(&mut stream, Duration::from_secs(3)).await;
    assert!(closed.is_some(), "the relay ends after both sides are done");
    assert!(
        drain.await.unwrap(),
        "the drain ends once the relay is done"
    );
}

#[tokio::test]
async fn request_heads_within_the_default_limit_cross_both_sidecars() {
    // 48 KiB of headers: under max_header_bytes (64 KiB) at the outbound, then the HTTP/2
    // hop, then the inbound.
    let mesh = Mesh::start(ALLOW_ALL).await;
    let client = mesh.client("frontend", FRONTEND_ID, &[SERVER_ID]).await;
    let big = "x".repeat(48 * 1024);
    let reply = get(&client.url("/"), &[("x-big", &big)]).await;
    assert_eq!(reply.status, 200);
    let echoed = reply.echoed()["headers"]["x-big"][0].as_str().map(str::len);
    assert_eq!(
        echoed,
        Some(big.len()),
        "the app did not get the whole header"
    );
}

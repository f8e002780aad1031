//! Connection reuse to the local app: client -> outbound -> mTLS -> inbound -> an HTTP/1.1
//! app that counts the connections it accepts and closes them the way real apps do.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Response;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use support::*;

/// How the app treats a connection once it has answered.
#[derive(Clone, Copy)]
enum AppKeepAlive {
    /// Keeps it open for the next request.
    Open,
    /// Closes it after every response.
    Never,
    /// Closes it after this long without a request.
    IdleFor(Duration),
}

/// An HTTP/1.1 app answering 200 with a 1 KiB body; returns its address and the number of
/// connections it has accepted.
async fn counting_app(keep_alive: AppKeepAlive) -> (SocketAddr, Arc<AtomicUsize>) {
    counting_server(move |stream| async move {
        let mut builder = http1::Builder::new();
        builder.timer(TokioTimer::new());
        match keep_alive {
            AppKeepAlive::Open => {}
            AppKeepAlive::Never => {
                builder.keep_alive(false);
            }
            AppKeepAlive::IdleFor(idle) => {
                builder.header_read_timeout(idle);
            }
        }
        let service = service_fn(|_| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(vec![b'x'; 1024]))))
        });
        let _ = builder
            .serve_connection(TokioIo::new(stream), service)
            .await;
    })
    .await
}

async fn mesh_in_front_of(keep_alive: AppKeepAlive) -> (Mesh, Sidecar, Arc<AtomicUsize>) {
    let (app, accepted) = counting_app(keep_alive).await;
    let mesh = Mesh::start_upstream(ALLOW_ALL_FRONTEND, &format!("http://{app}"), "").await;
    let client = mesh.client("frontend", FRONTEND_ID, &[SERVER_ID]).await;
    (mesh, client, accepted)
}

async fn get_ok(client: &Sidecar, path: &str) {
    let reply = get(&client.url(path), &[]).await;
    assert_ok(path, &reply);
}

fn assert_ok(path: &str, reply: &Reply) {
    assert_eq!(reply.status, 200, "{path}: {}", reply.text());
    assert_eq!(reply.body.len(), 1024, "{path}: the whole body");
}

/// GETs every path through `client` at once; the replies in the order of `paths`.
async fn get_at_once(client: &Arc<Sidecar>, paths: &[String]) -> Vec<Reply> {
    let requests: Vec<_> = paths
        .iter()
        .map(|path| {
            let (client, path) = (client.clone(), path.clone());
            tokio::spawn(async move { get(&client.url(&path), &[]).await })
        })
        .collect();
    let mut replies = Vec::new();
    for request in requests {
        replies.push(request.await.expect("request task"));
    }
    replies
}

#[tokio::test]
async fn sequential_requests_reuse_one_connection_to_the_app() {
    let (_mesh, client, accepted) = mesh_in_front_of(AppKeepAlive::Open).await;
    for i in 0..20 {
        get_ok(&client, &format!("/seq/{i}")).await;
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn concurrent_requests_open_no_more_connections_than_requests_in_flight() {
    let (_mesh, client, accepted) = mesh_in_front_of(AppKeepAlive::Open).await;
    let client = Arc::new(client);
    for round in 0..5 {
        let paths: Vec<String> = (0..8).map(|i| format!("/par/{round}/{i}")).collect();
        for (path, reply) in paths.iter().zip(get_at_once(&client, &paths).await) {
            assert_ok(path, &reply);
        }
    }
    let opened = accepted.load(Ordering::SeqCst);
    assert!(
        (1..=8).contains(&opened),
        "40 requests, 8 at a time, opened {opened} connections"
    );
}

#[tokio::test]
async fn an_app_that_closes_after_every_response_loses_no_request() {
    let (_mesh, client, accepted) = mesh_in_front_of(AppKeepAlive::Never).await;
    for i in 0..10 {
        get_ok(&client, &format!("/close/{i}")).await;
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 10);
}

#[tokio::test]
async fn an_app_that_closes_idle_connections_loses_no_request() {
    let idle = Duration::from_millis(100);
    let (_mesh, client, accepted) = mesh_in_front_of(AppKeepAlive::IdleFor(idle)).await;
    for i in 0..4 {
        get_ok(&client, &format!("/idle/{i}")).await;
        tokio::time::sleep(idle * 3).await;
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        4,
        "each request after an idle close needs a new connection"
    );
}

/// A peer that accepts TCP and then never says a word (a hung process, a black hole).
async fn silent_peer() -> SocketAddr {
    let (addr, _) = counting_server(|stream| async move {
        // Holds the connection open, silent, until the test ends.
        let _held = stream;
        std::future::pending::<()>().await;
    })
    .await;
    addr
}

#[tokio::test]
async fn requests_waiting_for_a_connect_that_times_out_share_its_outcome() {
    let mesh = Mesh::start(ALLOW_ALL_FRONTEND).await;
    let peer = silent_peer().await;
    let toml = format!(
        "{}\n[[outbound]]\nname = \"to-silence\"\nlisten = \"127.0.0.1:0\"\ntarget = \"{peer}\"\nserver_ids = [\"{SERVER_ID}\"]\ntimeouts = {{ connect = \"300ms\" }}\n",
        mesh.pki.identity_toml("frontend", FRONTEND_ID)
    );
    let client = Arc::new(Sidecar::start(mesh.pki.dir.path(), "frontend", &toml).await);
    let started = std::time::Instant::now();
    let paths: Vec<String> = (0..6).map(|i| format!("/wait/{i}")).collect();
    for reply in get_at_once(&client, &paths).await {
        assert_eq!(reply.status, 504, "{}", reply.text());
    }
    // One attempt's timeout for all six, not six timeouts one after another (1.8 s).
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(1000),
        "six waiting requests took {took:?}"
    );
}

async fn mesh_with_inbound(extra: &str) -> (Mesh, Sidecar) {
    let mesh = Mesh::start_with(ALLOW_ALL_FRONTEND, extra).await;
    let client = mesh.client("frontend", FRONTEND_ID, &[SERVER_ID]).await;
    (mesh, client)
}

#[tokio::test]
async fn the_peer_closing_the_idle_http2_connection_loses_no_request() {
    let (_mesh, client) = mesh_with_inbound("timeouts = { idle = \"200ms\" }").await;
    for i in 0..4 {
        let reply = get(&client.url(&format!("/after-idle/{i}")), &[]).await;
        assert_eq!(reply.status, 200, "request {i}: {}", reply.text());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test]
async fn the_peer_ending_busy_http2_connections_at_their_age_loses_no_request() {
    let (_mesh, client) = mesh_with_inbound("limits = { max_connection_age = \"300ms\" }").await;
    let client = Arc::new(client);
    let started = std::time::Instant::now();
    let mut sent = 0;
    while started.elapsed() < Duration::from_millis(1500) {
        let paths: Vec<String> = (0..4).map(|i| format!("/aging/{i}")).collect();
        for reply in get_at_once(&client, &paths).await {
            assert_eq!(reply.status, 200, "after {sent} requests: {}", reply.text());
            sent += 1;
        }
    }
    assert!(sent >= 40, "the load ran ({sent} requests)");
}

/// An HTTP/1.1 app whose every response carries one header of `bytes` bytes.
async fn app_with_a_header_of(bytes: usize) -> SocketAddr {
    let (app, _) = counting_server(move |stream| async move {
        let service = service_fn(move |_| async move {
            Ok::<_, Infallible>(
                Response::builder()
                    .header("x-large", "a".repeat(bytes))
                    .body(Full::new(Bytes::new()))
                    .expect("response"),
            )
        });
        let _ = http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service)
            .await;
    })
    .await;
    app
}

#[tokio::test]
async fn response_heads_up_to_64_kib_pass_and_larger_ones_get_502() {
    // The app's HTTP/1.1 response, then HTTP/2 between the sidecars: both take 64 KiB
    // heads (README: On the wire); hyper's HTTP/2 client alone would stop at 16 KiB.
    for (bytes, status) in [(48 * 1024, 200), (80 * 1024, 502)] {
        let app = app_with_a_header_of(bytes).await;
        let mesh = Mesh::start_upstream(ALLOW_ALL_FRONTEND, &format!("http://{app}"), "").await;
        let client = mesh.client("frontend", FRONTEND_ID, &[SERVER_ID]).await;
        let reply = get(&client.url("/"), &[]).await;
        assert_eq!(reply.status, status, "a {bytes}-byte header");
        if status == 200 {
            assert_eq!(reply.headers["x-large"].len(), bytes);
        }
    }
}

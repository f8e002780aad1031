//! `[runtime] workers = 2` on both sidecars: connections are spread over the worker
//! threads, each worker keeps its own connections to the upstream, and the threads end
//! with the sidecar.

mod support;

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::Response;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use support::*;

const TWO_WORKERS: &str = "\n[runtime]\nworkers = 2\n";

/// Threads of this process named `idgate-worker-*`.
fn worker_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with("idgate-worker-"))
        .count()
}

/// `idgate_connections_active` of `listener`, from the admin endpoint.
async fn active_connections(sidecar: &Sidecar, listener: &str) -> String {
    let metrics = sidecar.admin("/metrics").await.text();
    let prefix = format!("idgate_connections_active{{listener=\"{listener}\"}} ");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {prefix} in {metrics}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_serve_connections_each_with_its_own_upstream_connections() {
    // An app slow enough that two requests sent together overlap.
    let (app, accepted) = counting_server(|stream| async move {
        let service = service_fn(|_| async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
        });
        let _ = http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service)
            .await;
    })
    .await;
    let mesh =
        Mesh::start_upstream(ALLOW_ALL_FRONTEND, &format!("http://{app}"), TWO_WORKERS).await;
    let client = mesh
        .client_with("frontend", FRONTEND_ID, &[SERVER_ID], TWO_WORKERS)
        .await;
    // A thread names itself once it runs (std sets `comm` from the new thread).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while worker_threads() < 2 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(worker_threads(), 2, "one extra thread per sidecar");

    // Two connections at once to the outbound: one per worker. Each worker opens its own
    // HTTP/2 connection to the inbound, which again gives one to each of its workers.
    let http = plain_client();
    for round in 0..3 {
        let requests: Vec<_> = (0..2)
            .map(|i| {
                let (http, url) = (http.clone(), client.url(&format!("/r{round}/{i}")));
                tokio::spawn(async move { send(&http, "GET", &url, &[], Bytes::new()).await })
            })
            .collect();
        for request in requests {
            let reply = request.await.expect("request task");
            assert_eq!(reply.status, 200, "{}", reply.text());
            assert_eq!(reply.body, "ok");
        }
    }
    assert_eq!(active_connections(&client, "to-api").await, "2");
    assert_eq!(
        active_connections(&mesh.server, "api").await,
        "2",
        "one HTTP/2 connection from each outbound worker"
    );
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        2,
        "each inbound worker reuses its own connection to the app"
    );

    let Mesh { server, pki: _pki } = mesh;
    assert!(client.app.drain().await);
    assert!(server.app.drain().await);
    for _ in 0..50 {
        if worker_threads() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "{} worker threads outlived their sidecars",
        worker_threads()
    );
}

//! A tiny upstream app for the demo and the tests: it reports the request it got.
//!
//! `GET` (and any method but `POST`) answers JSON with the method, path, query and
//! headers it received; `POST` streams the request body straight back, so bodies can be
//! checked end to end. A `delay_ms=N` query parameter makes it wait N ms before
//! answering (for timeout and drain tests). It is an app, not part of the proxy.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// Binds `addr` and serves the echo app in the background; returns the bound address.
pub async fn spawn(addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        let builder = auto::Builder::new(TokioExecutor::new());
        while let Ok((stream, _)) = listener.accept().await {
            let builder = builder.clone();
            tokio::spawn(async move {
                let service = service_fn(|request| async move {
                    if let Some(delay) = delay_of(&request) {
                        tokio::time::sleep(delay).await;
                    }
                    Ok::<_, Infallible>(echo(request))
                });
                let _ = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(local)
}

fn delay_of(request: &Request<Incoming>) -> Option<Duration> {
    let query = request.uri().query()?;
    let ms = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("delay_ms="))?;
    ms.parse().ok().map(Duration::from_millis)
}

fn echo(request: Request<Incoming>) -> Response<Either<Incoming, Full<Bytes>>> {
    let mut headers: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (name, value) in request.headers() {
        headers
            .entry(name.as_str())
            .or_default()
            .push(value.to_str().unwrap_or("<binary>"));
    }
    let report = serde_json::json!({
        "method": request.method().as_str(),
        "path": request.uri().path(),
        "query": request.uri().query(),
        "version": format!("{:?}", request.version()),
        "headers": headers,
    })
    .to_string();
    let builder = Response::builder().header(
        "x-echo-request",
        header::HeaderValue::from_str(&report).unwrap_or(header::HeaderValue::from_static("{}")),
    );
    let response = if request.method() == Method::POST {
        builder.body(Either::Left(request.into_body()))
    } else {
        builder
            .header(header::CONTENT_TYPE, "application/json")
            .body(Either::Right(Full::new(Bytes::from(report))))
    };
    response.expect("static parts make a valid response")
}

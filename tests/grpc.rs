//! Real gRPC (tonic client and server) through outbound -> mTLS -> inbound over HTTP/2.
//!
//! No code generation and no protoc: the messages are hand-written prost structs and the
//! service plumbing is what tonic's generated code does (a `tower::Service` routing method
//! paths to `tonic::server::Grpc::unary` / `streaming`, and `tonic::client::Grpc` calls with
//! a static `PathAndQuery`). The app speaks h2c; the client talks h2c to its outbound
//! listener; the sidecars do the mTLS in between.

mod support;

use std::convert::Infallible;
use std::future::{ready, Future, Ready};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use http::uri::PathAndQuery;
use support::*;
use tonic::client::Grpc as GrpcClient;
use tonic::server::{Grpc as GrpcServer, StreamingService, UnaryService};
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Endpoint, Server};
use tonic::{Code, Request, Response, Status, Streaming};
use tonic_prost::ProstCodec;

const POLICY: &str = r#"
default = "deny"

[[rule]]
name = "frontend-echo"
action = "allow"
from = ["spiffe://example.org/ns/shop/sa/frontend"]
paths = ["/echo.Echo/Say", "/echo.Echo/Chat", "/echo.Echo/Find"]
"#;

const SAY: &str = "/echo.Echo/Say";
const CHAT: &str = "/echo.Echo/Chat";
const FIND: &str = "/echo.Echo/Find";
/// Implemented by the app but not allowed by the policy.
const SECRET: &str = "/echo.Echo/Secret";

/// `message EchoRequest { string message = 1; }`
#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoRequest {
    #[prost(string, tag = "1")]
    pub message: String,
}

/// `message EchoReply { string message = 1; uint32 length = 2; }`
#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoReply {
    #[prost(string, tag = "1")]
    pub message: String,
    #[prost(uint32, tag = "2")]
    pub length: u32,
}

fn request(message: impl Into<String>) -> EchoRequest {
    EchoRequest {
        message: message.into(),
    }
}

fn reply(request: EchoRequest) -> EchoReply {
    EchoReply {
        length: request.message.len() as u32,
        message: format!("echo: {}", request.message),
    }
}

// ---- server side -------------------------------------------------------------------------

/// `rpc Say(EchoRequest) returns (EchoReply)`
struct Say;

impl UnaryService<EchoRequest> for Say {
    type Response = EchoReply;
    type Future = Ready<Result<Response<EchoReply>, Status>>;

    fn call(&mut self, request: Request<EchoRequest>) -> Self::Future {
        ready(Ok(Response::new(reply(request.into_inner()))))
    }
}

/// `rpc Find(EchoRequest) returns (EchoReply)`: always an error status (trailers-only).
struct Find;

impl UnaryService<EchoRequest> for Find {
    type Response = EchoReply;
    type Future = Ready<Result<Response<EchoReply>, Status>>;

    fn call(&mut self, request: Request<EchoRequest>) -> Self::Future {
        let name = request.into_inner().message;
        ready(Err(Status::not_found(format!(
            "no echo named \"{name}\": 100% gone, désolé"
        ))))
    }
}

/// `rpc Secret(EchoRequest) returns (EchoReply)`: counts the calls that reach the app.
struct Secret(Arc<AtomicUsize>);

impl UnaryService<EchoRequest> for Secret {
    type Response = EchoReply;
    type Future = Ready<Result<Response<EchoReply>, Status>>;

    fn call(&mut self, request: Request<EchoRequest>) -> Self::Future {
        self.0.fetch_add(1, Ordering::SeqCst);
        ready(Ok(Response::new(reply(request.into_inner()))))
    }
}

type ChatStream = Pin<Box<dyn Stream<Item = Result<EchoReply, Status>> + Send>>;

/// `rpc Chat(stream EchoRequest) returns (stream EchoReply)`: one echo per message as it
/// arrives; the message "boom" ends the call with FAILED_PRECONDITION in the trailers.
struct Chat;

impl StreamingService<EchoRequest> for Chat {
    type Response = EchoReply;
    type ResponseStream = ChatStream;
    type Future = Ready<Result<Response<ChatStream>, Status>>;

    fn call(&mut self, request: Request<Streaming<EchoRequest>>) -> Self::Future {
        let replies = request.into_inner().map(|m| match m {
            Ok(m) if m.message == "boom" => Err(Status::failed_precondition("boom rejected")),
            Ok(m) => Ok(reply(m)),
            Err(status) => Err(status),
        });
        ready(Ok(Response::new(Box::pin(replies) as ChatStream)))
    }
}

/// The `echo.Echo` service, routed by method path as generated code does it.
#[derive(Clone, Default)]
struct EchoService {
    secret_calls: Arc<AtomicUsize>,
}

impl tower::Service<http::Request<tonic::body::Body>> for EchoService {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let secret_calls = self.secret_calls.clone();
        Box::pin(async move {
            let mut grpc = GrpcServer::new(ProstCodec::<EchoReply, EchoRequest>::default());
            Ok(match req.uri().path() {
                SAY => grpc.unary(Say, req).await,
                FIND => grpc.unary(Find, req).await,
                SECRET => grpc.unary(Secret(secret_calls), req).await,
                CHAT => grpc.streaming(Chat, req).await,
                _ => Status::unimplemented("").into_http(),
            })
        })
    }
}

/// A tonic server (h2c) on 127.0.0.1:0; returns its address and the Secret call counter.
async fn echo_app() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = EchoService::default();
    let secret_calls = service.secret_calls.clone();
    tokio::spawn(Server::builder().serve_with_incoming(service, TcpIncoming::from(listener)));
    (addr, secret_calls)
}

// ---- client side -------------------------------------------------------------------------

struct Setup {
    mesh: Mesh,
    /// Frontend's sidecar, kept running for the test's duration.
    _client_sidecar: Sidecar,
    grpc: GrpcClient<Channel>,
    secret_calls: Arc<AtomicUsize>,
}

impl Setup {
    /// App behind the server sidecar, frontend's client sidecar, and a tonic client on an
    /// h2c channel to the client sidecar's outbound listener.
    async fn new() -> Self {
        let (app, secret_calls) = echo_app().await;
        let mesh = Mesh::start_upstream(POLICY, &format!("http://{app}"), "").await;
        let client_sidecar = mesh.client("frontend", FRONTEND_ID, &[SERVER_ID]).await;
        let channel = Endpoint::from_shared(format!("http://{}", client_sidecar.outbound()))
            .unwrap()
            .timeout(Duration::from_secs(10))
            .connect()
            .await
            .expect("h2c connection to the outbound listener");
        Self {
            mesh,
            _client_sidecar: client_sidecar,
            grpc: GrpcClient::new(channel),
            secret_calls,
        }
    }

    async fn unary(
        &mut self,
        request: Request<EchoRequest>,
        path: &'static str,
    ) -> Result<Response<EchoReply>, Status> {
        self.grpc.ready().await.expect("channel ready");
        self.grpc
            .unary(
                request,
                PathAndQuery::from_static(path),
                ProstCodec::<EchoRequest, EchoReply>::default(),
            )
            .await
    }

    /// Opens a Chat call; messages sent on the returned sender go out as the stream.
    async fn chat(
        &mut self,
        first: EchoRequest,
    ) -> (
        tokio::sync::mpsc::Sender<EchoRequest>,
        Result<Response<Streaming<EchoReply>>, Status>,
    ) {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<EchoRequest>(4);
        tx.send(first).await.unwrap();
        let outgoing = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
        self.grpc.ready().await.expect("channel ready");
        let response = self
            .grpc
            .streaming(
                Request::new(outgoing),
                PathAndQuery::from_static(CHAT),
                ProstCodec::<EchoRequest, EchoReply>::default(),
            )
            .await;
        (tx, response)
    }
}

/// Next message of a response stream, failing the test after 5 s.
async fn next(stream: &mut Streaming<EchoReply>, what: &str) -> Result<Option<EchoReply>, Status> {
    tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within 5 s"))
}

#[tokio::test]
async fn unary_call_through_both_sidecars() {
    let mut setup = Setup::new().await;
    let mut call = Request::new(request("hello"));
    call.metadata_mut()
        .insert("x-request-id", "grpc-say-1".parse().unwrap());
    let response = setup.unary(call, SAY).await.expect("Say is allowed");
    let trailers = response.metadata().clone();
    assert_eq!(
        response.into_inner(),
        EchoReply {
            message: "echo: hello".into(),
            length: 5
        }
    );
    // tonic merges the trailers into the unary response's metadata.
    assert_eq!(
        trailers.get("grpc-status").map(|v| v.to_str().unwrap()),
        Some("0"),
        "grpc-status trailer must survive both sidecars: {trailers:?}"
    );
    let line = setup.mesh.server.decision("grpc-say-1").await;
    assert_eq!(line["decision"], "allow", "{line}");
    assert_eq!(line["source"], FRONTEND_ID, "{line}");

    // A message far larger than the default HTTP/2 windows (64 KiB) crosses both hops.
    let big = "x".repeat(1 << 20);
    let response = setup
        .unary(Request::new(request(big.clone())), SAY)
        .await
        .expect("a 1 MiB Say is allowed");
    let response = response.into_inner();
    assert_eq!(response.length, 1 << 20);
    assert_eq!(response.message, format!("echo: {big}"));
}

#[tokio::test]
async fn bidirectional_streaming_call_through_both_sidecars() {
    const N: usize = 50;
    let mut setup = Setup::new().await;
    let (tx, response) = setup.chat(request("message 0")).await;
    let mut replies = response.expect("Chat is allowed").into_inner();
    // Ping-pong: each message is sent only after the previous echo arrived, so this only
    // passes if both sidecars relay the call as a stream (neither buffers a whole body).
    for i in 0..N {
        if i > 0 {
            tx.send(request(format!("message {i}"))).await.unwrap();
        }
        let echo = next(&mut replies, &format!("echo {i}"))
            .await
            .unwrap_or_else(|s| panic!("echo {i}: status {s:?}"))
            .unwrap_or_else(|| panic!("echo {i}: the stream ended early"));
        assert_eq!(echo.message, format!("echo: message {i}"));
    }
    drop(tx); // half-close: the server's stream ends, and it sends grpc-status 0
    let end = next(&mut replies, "end of stream").await;
    assert!(
        matches!(end, Ok(None)),
        "the call must end cleanly with OK, got {end:?}"
    );
    let trailers = replies
        .trailers()
        .await
        .expect("trailers")
        .expect("trailers must survive both sidecars");
    assert_eq!(
        trailers.get("grpc-status").map(|v| v.to_str().unwrap()),
        Some("0"),
        "{trailers:?}"
    );
}

#[tokio::test]
async fn a_call_the_policy_denies_gets_permission_denied() {
    let mut setup = Setup::new().await;
    let mut call = Request::new(request("let me in"));
    call.metadata_mut()
        .insert("x-request-id", "grpc-secret-1".parse().unwrap());
    let status = setup
        .unary(call, SECRET)
        .await
        .expect_err("Secret is not allowed by the policy");
    assert_eq!(
        status.code(),
        Code::PermissionDenied,
        "a denied call must be a gRPC PERMISSION_DENIED, not a transport error: {status:?}"
    );
    assert_eq!(status.message(), "access denied");
    assert_eq!(
        setup.secret_calls.load(Ordering::SeqCst),
        0,
        "a denied call must not reach the app"
    );
    let line = setup.mesh.server.decision("grpc-secret-1").await;
    assert_eq!(line["decision"], "deny", "{line}");
    assert_eq!(line["source"], FRONTEND_ID, "{line}");

    // The same channel still works for allowed calls afterwards.
    let response = setup
        .unary(Request::new(request("after")), SAY)
        .await
        .expect("Say after a denial");
    assert_eq!(response.into_inner().message, "echo: after");
}

#[tokio::test]
async fn error_statuses_from_the_app_reach_the_client() {
    let mut setup = Setup::new().await;
    // Trailers-only response: grpc-status and grpc-message in the only HEADERS frame.
    let status = setup
        .unary(Request::new(request("ghost")), FIND)
        .await
        .expect_err("Find always fails");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert_eq!(
        status.message(),
        "no echo named \"ghost\": 100% gone, désolé",
        "grpc-message (percent-encoded) must pass unchanged"
    );

    // An error after data: grpc-status in real trailers following a message.
    let (tx, response) = setup.chat(request("fine")).await;
    let mut replies = response.expect("Chat is allowed").into_inner();
    let echo = next(&mut replies, "echo of 'fine'").await.unwrap().unwrap();
    assert_eq!(echo.message, "echo: fine");
    tx.send(request("boom")).await.unwrap();
    let status = next(&mut replies, "status after 'boom'")
        .await
        .expect_err("'boom' ends the call with an error status");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert_eq!(status.message(), "boom rejected");
}

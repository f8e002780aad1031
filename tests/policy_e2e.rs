//! Segment rules enforced by a real inbound sidecar, judged on real requests.

mod support;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const POLICY: &str = r#"
default = "deny"

[[rule]]
name = "frontend-reads-api"
action = "allow"
from = ["spiffe://example.org/ns/shop/sa/frontend"]
methods = ["GET"]
paths = ["/api/*"]

[[rule]]
name = "analytics-namespace-reports"
action = "allow"
from = ["spiffe://example.org/ns/analytics/*"]
paths = ["/reports/*"]

[[rule]]
name = "whole-domain-health"
action = "allow"
from = ["spiffe://example.org/*"]
paths = ["/health"]

[[rule]]
name = "scanned-uploads"
action = "allow"
from = ["spiffe://example.org/ns/shop/sa/frontend"]
methods = ["POST"]
paths = ["/uploads"]
headers = { "x-scan-status" = "passed" }

[[rule]]
name = "no-admin"
action = "deny"
paths = ["/api/admin", "/api/admin/*"]
"#;

struct Case {
    client: &'static str,
    method: &'static str,
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
    status: u16,
    rule: Option<&'static str>,
    upstream_path: Option<&'static str>,
}

const fn case(
    client: &'static str,
    method: &'static str,
    path: &'static str,
    status: u16,
    rule: Option<&'static str>,
) -> Case {
    Case {
        client,
        method,
        path,
        headers: &[],
        status,
        rule,
        upstream_path: None,
    }
}

#[tokio::test]
async fn rules_are_enforced_in_order_on_normalised_paths() {
    let mesh = Mesh::start(POLICY).await;
    let frontend = mesh.client("frontend", FRONTEND_ID, &[SERVER_ID]).await;
    let reports = mesh.client("reports", REPORTS_ID, &[SERVER_ID]).await;
    let cases = [
        // allow by exact ID + method + prefix
        Case {
            upstream_path: Some("/api/items"),
            ..case(
                "frontend",
                "GET",
                "/api/items",
                200,
                Some("frontend-reads-api"),
            )
        },
        // method not allowed -> default deny
        case("frontend", "DELETE", "/api/items", 403, None),
        // deny overrides allow
        case("frontend", "GET", "/api/admin", 403, Some("no-admin")),
        case("frontend", "GET", "/api/admin/users", 403, Some("no-admin")),
        // path tricks are normalised before matching and forwarded normalised
        case("frontend", "GET", "/api/x/../admin", 403, Some("no-admin")),
        case(
            "frontend",
            "GET",
            "/api/%2e%2e/api/admin",
            403,
            Some("no-admin"),
        ),
        case(
            "frontend",
            "GET",
            "/api/%2E%2E/api/./admin",
            403,
            Some("no-admin"),
        ),
        case("frontend", "GET", "//api//admin", 403, Some("no-admin")),
        Case {
            upstream_path: Some("/api/items"),
            ..case(
                "frontend",
                "GET",
                "/api//x/..//items?admin=1",
                200,
                Some("frontend-reads-api"),
            )
        },
        // forbidden encodings are refused outright
        case("frontend", "GET", "/api/a%2Fb", 400, None),
        case("frontend", "GET", "/api/a%5cb", 400, None),
        case("frontend", "GET", "/api/a%00b", 400, None),
        // servlet containers would resolve these to /admin
        case("frontend", "GET", "/api/..;/admin", 400, None),
        case("frontend", "GET", "/api/%2e%2e;x=1/admin", 400, None),
        // trailing-segment principal pattern, any method
        case(
            "reports",
            "POST",
            "/reports/daily",
            200,
            Some("analytics-namespace-reports"),
        ),
        case("reports", "GET", "/api/items", 403, None),
        // trust-domain principal
        case(
            "reports",
            "GET",
            "/health",
            200,
            Some("whole-domain-health"),
        ),
        case(
            "frontend",
            "GET",
            "/health",
            200,
            Some("whole-domain-health"),
        ),
        // header conditions: name case-insensitive, value exact
        Case {
            headers: &[("X-Scan-Status", "passed")],
            ..case("frontend", "POST", "/uploads", 200, Some("scanned-uploads"))
        },
        Case {
            headers: &[("x-scan-status", "failed")],
            ..case("frontend", "POST", "/uploads", 403, None)
        },
        case("frontend", "POST", "/uploads", 403, None),
    ];
    for (n, c) in cases.iter().enumerate() {
        let sidecar = if c.client == "frontend" {
            &frontend
        } else {
            &reports
        };
        let request_id = format!("policy-{n}");
        let mut headers = vec![("x-request-id", request_id.as_str())];
        headers.extend_from_slice(c.headers);
        let reply = send(
            &plain_client(),
            c.method,
            &sidecar.url(c.path),
            &headers,
            bytes::Bytes::new(),
        )
        .await;
        let what = format!("case {n}: {} {} {}", c.client, c.method, c.path);
        assert_eq!(reply.status.as_u16(), c.status, "{what}: {}", reply.text());
        if c.status == 403 {
            assert_eq!(reply.text(), "access denied", "{what}");
            assert_eq!(reply.headers["x-request-id"], request_id.as_str(), "{what}");
        }
        if let Some(path) = c.upstream_path {
            assert_eq!(reply.echoed()["path"], path, "{what}");
        }
        let line = mesh.server.decision(&request_id).await;
        let decision = if c.status == 200 { "allow" } else { "deny" };
        assert_eq!(line["decision"], decision, "{what}: {line}");
        assert_eq!(line["rule"].as_str(), c.rule, "{what}: {line}");
        assert_eq!(line["status"], c.status, "{what}: {line}");
    }
}

#[tokio::test]
async fn denied_grpc_calls_get_permission_denied() {
    let mesh = Mesh::start(POLICY).await;
    let frontend = mesh.client("frontend", FRONTEND_ID, &[SERVER_ID]).await;
    let reply = send(
        &h2c_client(),
        "POST",
        &frontend.url("/pkg.Service/Method"),
        &[("content-type", "application/grpc"), ("te", "trailers")],
        bytes::Bytes::new(),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.headers["grpc-status"], "7");
}

#[tokio::test]
async fn raw_and_encoded_spellings_of_a_path_are_judged_alike() {
    // hyper sends a raw UTF-8 (or `"`, `{`, `\`) path as it is, as other clients do.
    let policy = r#"
default = "allow"

[[rule]]
name = "no-cafe"
action = "deny"
paths = ["/caf%C3%A9/*"]
"#;
    let mesh = Mesh::start(policy).await;
    let cert = mesh.pki.svid(FRONTEND_ID);
    let config = tls_client(&mesh.pki.ca.root_pem(), Some(&cert), &[b"http/1.1"]);
    let cases = [
        ("/caf%C3%A9/menu", 403, Some("no-cafe"), None),
        ("/café/menu", 403, Some("no-cafe"), None),
        ("/caf%c3%a9/menu", 403, Some("no-cafe"), None),
        ("/x/../café/menu", 403, Some("no-cafe"), None),
        ("/thé/menu", 200, None, Some("/th%C3%A9/menu")),
        ("/{\"k\":1}?q=é", 200, None, Some("/%7B%22k%22:1%7D")),
        ("/a\\b", 400, None, None),
    ];
    for (n, (path, status, rule, upstream_path)) in cases.into_iter().enumerate() {
        let request_id = format!("spelling-{n}");
        let reply = mtls_send(
            mesh.server.inbound(),
            config.clone(),
            "GET",
            path,
            &[("x-request-id", &request_id)],
        )
        .await
        .unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(reply.status, status, "{path}: {}", reply.text());
        if let Some(upstream_path) = upstream_path {
            assert_eq!(reply.echoed()["path"], upstream_path, "{path}");
        }
        let line = mesh.server.decision(&request_id).await;
        assert_eq!(line["rule"].as_str(), rule, "{path}: {line}");
        assert_eq!(line["status"], status, "{path}: {line}");
    }
}

const DENY_ADMIN_HOST: &str = r#"
default = "allow"

[[rule]]
name = "no-admin-host"
action = "deny"
from = ["*"]
headers = { host = "admin.example" }
"#;

/// Sends `target` with `hosts` straight to the inbound, on a new connection speaking
/// `alpn`; the status and the Host headers the app received (none when it did not answer).
async fn host_judged(mesh: &Mesh, alpn: &[u8], target: &str, hosts: &[&str]) -> (u16, Vec<String>) {
    let cert = mesh.pki.svid(FRONTEND_ID);
    let config = tls_client(&mesh.pki.ca.root_pem(), Some(&cert), &[alpn]);
    let mut request = http::Request::get(target);
    for host in hosts {
        request = request.header("host", *host);
    }
    let request = request.body(http_body_util::Empty::new()).unwrap();
    let response = if alpn == b"h2" {
        let (mut sender, _connection) = h2_connection(mesh.server.inbound(), config).await;
        sender.send_request(request).await.unwrap()
    } else {
        let (mut sender, _connection) = h1_connection(mesh.server.inbound(), config).await;
        sender.send_request(request).await.unwrap()
    };
    let received = response.headers().get("x-echo-request").map(|report| {
        let report: serde_json::Value = serde_json::from_slice(report.as_bytes()).unwrap();
        let hosts = report["headers"]["host"].as_array().cloned();
        let hosts = hosts.unwrap_or_default().into_iter();
        hosts.map(|h| h.as_str().unwrap().to_string()).collect()
    });
    (response.status().as_u16(), received.unwrap_or_default())
}

#[tokio::test]
async fn a_host_rule_judges_the_host_the_app_receives() {
    let mesh = Mesh::start(DENY_ADMIN_HOST).await;
    let h1 = &b"http/1.1"[..];
    /// Protocol, target, Host headers sent, status, Host the app receives.
    type HostCase = (
        &'static [u8],
        &'static str,
        &'static [&'static str],
        u16,
        &'static [&'static str],
    );
    let cases: [HostCase; 11] = [
        (h1, "/x", &["admin.example"], 403, &[]),
        (h1, "/x", &["public.example"], 200, &["public.example"]),
        (
            h1,
            "/x",
            &["public.example:8443"],
            200,
            &["public.example:8443"],
        ),
        // RFC 9112 3.2: HTTP/1.1 needs a Host, and one that is host[:port].
        (h1, "/x", &[], 400, &[]),
        (h1, "/x", &["user@admin.example"], 400, &[]),
        (h1, "/x", &["admin.example/x"], 400, &[]),
        (h1, "/x", &["admin.example:https"], 400, &[]),
        // An absolute-form target or an HTTP/2 :authority is the host (RFC 9112 3.2.2).
        (h1, "https://admin.example/x", &[], 403, &[]),
        (b"h2", "https://admin.example/x", &[], 403, &[]),
        (
            h1,
            "https://public.example/x",
            &["admin.example"],
            200,
            &["public.example"],
        ),
        (
            b"h2",
            "https://public.example/x",
            &["admin.example"],
            200,
            &["public.example"],
        ),
    ];
    for (alpn, target, hosts, status, received) in cases {
        let what = format!("{} {target} {hosts:?}", String::from_utf8_lossy(alpn));
        let judged = host_judged(&mesh, alpn, target, hosts).await;
        assert_eq!(
            judged,
            (status, received.iter().map(|h| h.to_string()).collect()),
            "{what}"
        );
    }
}

#[tokio::test]
async fn a_request_with_two_host_headers_or_none_gets_400_on_both_sidecars() {
    let mesh = Mesh::start(DENY_ADMIN_HOST).await;
    let cert = mesh.pki.svid(FRONTEND_ID);
    let config = tls_client(&mesh.pki.ca.root_pem(), Some(&cert), &[b"http/1.1"]);
    let (mut sender, _connection) = h1_connection(mesh.server.inbound(), config).await;
    let request = http::Request::get("/x")
        .header("host", "public.example")
        .header("host", "admin.example")
        .header("x-request-id", "two-hosts-in")
        .body(http_body_util::Empty::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 400);
    let line = mesh.server.decision("two-hosts-in").await;
    assert_eq!(
        (&line["decision"], &line["status"]),
        (&"deny".into(), &400.into()),
        "{line}"
    );

    let client = mesh.client("frontend", FRONTEND_ID, &[SERVER_ID]).await;
    let hosts = [
        ("host", "public.example"),
        ("host", "admin.example"),
        ("x-request-id", "two-hosts-out"),
    ];
    let reply = get(&client.url("/x"), &hosts).await;
    assert_eq!(reply.status, 400, "{}", reply.text());
    assert_eq!(client.decision("two-hosts-out").await["status"], 400);

    // Written by hand: HTTP clients add a Host.
    let mut app = tokio::net::TcpStream::connect(client.outbound())
        .await
        .unwrap();
    app.write_all(b"GET /x HTTP/1.1\r\nx-request-id: no-host-out\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0; 12];
    app.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 400");
    let line = client.decision("no-host-out").await;
    assert_eq!(line["status"], 400, "{line}");
    assert_eq!(
        line["reason"], "HTTP/1.1 request without a Host header",
        "{line}"
    );
}

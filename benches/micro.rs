//! Micro-benchmarks of the per-request (and per-connection) work on idgate's data path:
//! policy decisions at 10, 1,000 and 10,000 rules, path normalisation, SPIFFE ID parsing,
//! XFCC building, the header pass and the decision-log line. `cargo bench` runs them with criterion (means and
//! confidence intervals); after criterion, a plain timing loop prints p50/p99/p99.9 per
//! decision, since the issue's targets are percentiles.
//!
//! `IDGATE_BENCH_QUICK=1` shortens criterion's measurement (for smoke runs).

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, BenchmarkId, Criterion};
use http::{HeaderMap, HeaderValue};

use idgate::config::SourceFile;
use idgate::devpki::DevCa;
use idgate::policy::{normalize_path, Policy, Request};
use idgate::proxy::headers::{set_xfcc, strip_hop_by_hop, xfcc_value};
use idgate::proxy::request_id::ensure_request_id;
use idgate::spiffe_id::SpiffeId;
use idgate::telemetry::{decision_line, DecisionRecord};
use idgate::tls::PeerIdentity;

const TD: &str = "spiffe://example.org";

/// A policy of `n` rules mixing what real files hold: exact source IDs with exact and
/// prefix paths, `ns/*/sa/x` and `ns/x/*` principal patterns, trust-domain-wide rules,
/// `*.ext` suffix patterns, method lists, header conditions and a few deny rules.
fn policy_text(n: usize) -> String {
    let mut text = String::from("mode = \"enforce\"\ndefault = \"deny\"\n");
    for i in 0..n {
        let ns = i % 97;
        let (from, paths) = match i % 10 {
            0..=3 => (
                format!("{TD}/ns/ns{ns}/sa/svc{i}"),
                format!("\"/api/v1/res{i}\", \"/api/v1/res{i}/*\""),
            ),
            4 | 5 => (
                format!("{TD}/ns/ns{ns}/*"),
                format!("\"/api/v2/items{i}/*\""),
            ),
            6 => (format!("{TD}/ns/*/sa/svc{i}"), format!("\"/reports/r{i}\"")),
            7 => (format!("{TD}/*"), format!("\"/shared/doc{i}\"")),
            8 => (
                format!("{TD}/ns/ns{ns}/sa/svc{i}"),
                format!("\"*.json\", \"/static{i}/*\""),
            ),
            _ => (format!("{TD}/ns/ns{ns}/sa/svc{i}"), "\"/*\"".to_string()),
        };
        let action = if i % 25 == 24 { "deny" } else { "allow" };
        text.push_str(&format!(
            "\n[[rule]]\nname = \"r{i}\"\naction = \"{action}\"\nfrom = [\"{from}\"]\npaths = [{paths}]\n"
        ));
        if i % 3 == 0 {
            text.push_str("methods = [\"GET\", \"POST\"]\n");
        }
        if i % 10 == 9 {
            text.push_str("headers = { \"x-scan-status\" = \"passed\" }\n");
        }
    }
    text
}

fn load_policy(n: usize) -> Policy {
    let source = SourceFile {
        path: format!("bench-{n}.toml").into(),
        text: policy_text(n),
    };
    Policy::from_source(&source).unwrap_or_else(|e| panic!("bench policy does not load: {e}"))
}

/// Requests that hit every kind of rule, miss, and come from unknown sources.
fn requests(n: usize) -> Vec<(SpiffeId, &'static str, String)> {
    let mut out = Vec::new();
    for k in 0..64 {
        let i = (k * 7919) % n.max(1);
        let ns = i % 97;
        let (from, path) = match k % 8 {
            0 => (
                format!("{TD}/ns/ns{ns}/sa/svc{i}"),
                format!("/api/v1/res{i}"),
            ),
            1 => (
                format!("{TD}/ns/ns{ns}/sa/svc{i}"),
                format!("/api/v1/res{i}/sub/42"),
            ),
            2 => (
                format!("{TD}/ns/ns{ns}/sa/other"),
                format!("/api/v2/items{i}/x"),
            ),
            3 => (
                format!("{TD}/ns/anything/sa/svc{i}"),
                format!("/reports/r{i}"),
            ),
            4 => (format!("{TD}/ns/nsx/sa/nobody"), format!("/shared/doc{i}")),
            5 => (
                format!("{TD}/ns/ns{ns}/sa/svc{i}"),
                "/data/file.json".into(),
            ),
            6 => (
                format!("{TD}/ns/unknown/sa/svc-none"),
                "/api/v1/nothing".into(),
            ),
            _ => (
                "spiffe://other.org/ns/x/sa/y".to_string(),
                "/api/v1/res1".into(),
            ),
        };
        let method = if k % 5 == 0 { "DELETE" } else { "GET" };
        out.push((SpiffeId::parse(&from).expect("valid id"), method, path));
    }
    out
}

fn bench_policy(c: &mut Criterion) {
    let mut headers = HeaderMap::new();
    headers.insert("x-scan-status", HeaderValue::from_static("passed"));
    headers.insert("user-agent", HeaderValue::from_static("bench/1"));
    let mut group = c.benchmark_group("policy_evaluate");
    for n in [10, 1_000, 10_000] {
        let policy = load_policy(n);
        let reqs = requests(n);
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            let mut k = 0;
            b.iter(|| {
                let (id, method, path) = &reqs[k % reqs.len()];
                k += 1;
                black_box(policy.evaluate(&Request {
                    source: black_box(id),
                    method,
                    path,
                    headers: &headers,
                }))
            })
        });
    }
    group.finish();
}

const PATHS: [&str; 4] = [
    "/api/v2/invoices/42",
    "/api/v2/invoices/42?expand=lines&page=3",
    "/api/%7Euser/./docs/../invoices//42",
    "/a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p",
];

fn bench_paths(c: &mut Criterion) {
    let mut group = c.benchmark_group("normalize_path");
    for (label, path) in ["clean", "query", "dirty", "deep"].iter().zip(PATHS) {
        group.bench_function(*label, |b| {
            b.iter(|| black_box(normalize_path(black_box(path))))
        });
    }
    group.finish();
}

fn bench_spiffe_id(c: &mut Criterion) {
    let id = "spiffe://example.org/ns/payments/sa/payment-service";
    c.bench_function("spiffe_id_parse", |b| {
        b.iter(|| black_box(SpiffeId::parse(black_box(id))))
    });
}

fn bench_xfcc(c: &mut Criterion) {
    let own = "spiffe://example.org/ns/billing/sa/api";
    let peer = "spiffe://example.org/ns/payments/sa/payment-service";
    let hash = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
    c.bench_function("xfcc_value (per connection)", |b| {
        b.iter(|| black_box(xfcc_value(black_box(own), black_box(hash), black_box(peer))))
    });
    let value = xfcc_value(own, hash, peer).expect("valid header");
    let mut template = HeaderMap::new();
    for (k, v) in [
        ("host", "billing.internal"),
        ("user-agent", "curl/8.5.0"),
        ("accept", "*/*"),
        ("x-forwarded-client-cert", "URI=spiffe://evil/x"),
        ("connection", "keep-alive"),
    ] {
        template.insert(k, HeaderValue::from_static(v));
    }
    c.bench_function(
        "header pass (per request: request id, hop-by-hop, xfcc)",
        |b| {
            b.iter_batched_ref(
                || template.clone(),
                |headers| {
                    let id = ensure_request_id(headers);
                    strip_hop_by_hop(headers);
                    set_xfcc(headers, value.clone());
                    black_box(id)
                },
                criterion::BatchSize::SmallInput,
            )
        },
    );
    let ca = DevCa::new("example.org").expect("dev CA");
    let leaf = ca
        .issue_svid(&SpiffeId::parse(peer).expect("valid id"))
        .expect("dev SVID");
    c.bench_function("peer identity from leaf (per connection)", |b| {
        b.iter(|| black_box(PeerIdentity::from_certs(black_box(&leaf.chain_der))))
    });
}

fn bench_decision_line(c: &mut Criterion) {
    let record = DecisionRecord {
        listener: "api",
        direction: "inbound",
        source: Some("spiffe://example.org/ns/payments/sa/payment-service"),
        destination: Some("spiffe://example.org/ns/billing/sa/api"),
        method: Some("GET"),
        path: Some("/api/v2/invoices"),
        decision: "allow",
        rule: Some("payments-reads-invoices"),
        status: 200,
        duration_ms: 0.412,
        request_id: "3f2a9c1b7d4e8f60a1b2c3d4e5f60718",
        reason: None,
        policy_version: Some("0123456789ab"),
        audit_rule: None,
        break_glass: false,
        bytes_in: None,
        bytes_out: None,
    };
    c.bench_function("decision-log line (per request)", |b| {
        b.iter(|| {
            let mut line = Vec::with_capacity(512);
            decision_line::write("2026-11-26T10:00:00.123Z", black_box(&record), &mut line);
            black_box(line)
        })
    });
}

/// Per-call latency percentiles of `policy.evaluate`, measured one call at a time (so the
/// numbers include one `Instant::now()` pair, about 20-40 ns here).
fn policy_percentiles() {
    let mut headers = HeaderMap::new();
    headers.insert("x-scan-status", HeaderValue::from_static("passed"));
    println!("\npolicy decision latency, one call at a time (includes timer overhead):");
    println!(
        "{:>8} {:>9} {:>9} {:>9} {:>9}",
        "rules", "p50 ns", "p99 ns", "p99.9 ns", "max ns"
    );
    let calls = 200_000;
    for n in [10, 1_000, 10_000] {
        let policy = load_policy(n);
        let reqs = requests(n);
        let mut samples = Vec::with_capacity(calls);
        for k in 0..calls + 10_000 {
            let (id, method, path) = &reqs[k % reqs.len()];
            let request = Request {
                source: id,
                method,
                path,
                headers: &headers,
            };
            let start = Instant::now();
            black_box(policy.evaluate(black_box(&request)));
            let took = start.elapsed();
            if k >= 10_000 {
                samples.push(took.as_nanos() as u64);
            }
        }
        samples.sort_unstable();
        let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
        println!(
            "{:>8} {:>9} {:>9} {:>9} {:>9}",
            n,
            at(0.50),
            at(0.99),
            at(0.999),
            samples[samples.len() - 1]
        );
    }
}

fn config() -> Criterion {
    let quick = std::env::var_os("IDGATE_BENCH_QUICK").is_some();
    let (warm, measure) = if quick { (200, 500) } else { (1_000, 2_000) };
    Criterion::default()
        .warm_up_time(Duration::from_millis(warm))
        .measurement_time(Duration::from_millis(measure))
        .sample_size(if quick { 20 } else { 50 })
        .configure_from_args()
}

criterion_group! {
    name = micro;
    config = config();
    targets = bench_policy, bench_paths, bench_spiffe_id, bench_xfcc, bench_decision_line
}

fn main() {
    micro();
    Criterion::default().configure_from_args().final_summary();
    // Only under `cargo bench` (not the `cargo test --benches` smoke run).
    if std::env::args().any(|a| a == "--bench") {
        policy_percentiles();
    }
}

//! `idgate inject` and `idgate webhook`: golden files for every workload kind, idempotence,
//! untouched documents, schema validation against the real Kubernetes schemas
//! (tests/k8s/validate.sh, which fails when the validator is missing), the webhook over
//! HTTPS giving the same pod as `inject`, and static checks of the deployment files
//! (docker/compose.yaml, the systemd unit, the webhook manifests).
//!
//! Regenerate the golden files with `IDGATE_BLESS=1 cargo test --test inject`, then read
//! the diff before committing it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/k8s");
const KINDS: &[&str] = &[
    "pod",
    "pod-unannotated",
    "deployment",
    "statefulset",
    "daemonset",
    "job",
    "cronjob",
    "list",
    "multi",
];

fn fixture(name: &str) -> PathBuf {
    Path::new(FIXTURES).join(name)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Runs `idgate inject` with `args`, feeding `stdin`; returns stdout, panics on failure.
fn inject(args: &[&str], stdin: &str) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_idgate"))
        .arg("inject")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("idgate runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "idgate inject {args:?}: {stderr}");
    String::from_utf8(out.stdout).unwrap()
}

fn inject_file(name: &str) -> String {
    inject(
        &["-f", fixture(&format!("{name}.yaml")).to_str().unwrap()],
        "",
    )
}

#[test]
fn golden_output_for_every_kind() {
    let bless = std::env::var_os("IDGATE_BLESS").is_some();
    for kind in KINDS {
        let out = inject_file(kind);
        let golden = fixture(&format!("golden/{kind}.yaml"));
        if bless {
            std::fs::create_dir_all(golden.parent().unwrap()).unwrap();
            std::fs::write(&golden, &out).unwrap();
        }
        assert_eq!(
            out,
            read(&golden),
            "{kind}: output differs from {}",
            golden.display()
        );
        assert_eq!(
            out,
            idgate::k8s::inject_yaml(&read(&fixture(&format!("{kind}.yaml")))).unwrap()
        );
    }
}

#[test]
fn injecting_twice_is_injecting_once() {
    for kind in KINDS {
        let once = inject_file(kind);
        let twice = inject(&["-f", "-"], &once);
        assert_eq!(twice, once, "{kind}");
        assert_eq!(inject(&[], &once), once, "{kind} (stdin by default)");
    }
}

#[test]
fn pods_without_the_annotation_and_other_objects_are_untouched() {
    let input = read(&fixture("pod-unannotated.yaml"));
    assert_eq!(inject_file("pod-unannotated"), input);

    // Every document but the annotated Deployment comes back byte for byte.
    let input = read(&fixture("multi.yaml"));
    let out = inject_file("multi");
    let docs_in: Vec<&str> = input.split("\n---").collect();
    let docs_out: Vec<&str> = out.split("\n---").collect();
    assert_eq!(docs_in.len(), docs_out.len());
    for (i, (a, b)) in docs_in.iter().zip(&docs_out).enumerate() {
        let injected = a.contains("idgate.io/inject: \"true\"");
        assert_eq!(
            a == b,
            !injected,
            "document {i}:\n{a}\n---- became ----\n{b}"
        );
    }
    assert!(out.contains("selector: {app: billing}   # flow style and comments survive"));
    assert!(out.contains("--- # the workload\n"));
    assert_eq!(out.matches("name: idgate\n").count(), 1);
}

#[test]
fn the_sidecar_is_a_hardened_native_sidecar() {
    let out: Value = serde_yaml_ng::from_str(&inject_file("pod")).unwrap();
    let spec = &out["spec"];
    let sidecar = &spec["initContainers"][0];
    assert_eq!(sidecar["name"], "idgate");
    assert_eq!(sidecar["restartPolicy"], "Always");
    assert_eq!(sidecar["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(sidecar["livenessProbe"]["httpGet"]["path"], "/healthz");
    let sc = &sidecar["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["capabilities"]["drop"][0], "ALL");
    assert!(sidecar["resources"]["requests"]["cpu"].is_string());
    let config = sidecar["env"][0]["value"].as_str().unwrap();
    assert_eq!(sidecar["env"][0]["name"], "IDGATE_CONFIG_TOML");
    assert!(config.contains("source = \"spire\""));
    assert!(config.contains("socket = \"unix:///spiffe-workload-api/spire-agent.sock\""));
    assert!(config.contains("listen = \"0.0.0.0:8443\""));
    assert!(config.contains("upstream = \"http://127.0.0.1:8080\""));
    let volumes = spec["volumes"].as_array().unwrap();
    assert!(volumes
        .iter()
        .any(|v| v["csi"]["driver"] == "csi.spiffe.io"));
    assert!(volumes
        .iter()
        .any(|v| v["configMap"]["name"] == "billing-policy"));
    // The app container is left alone.
    assert_eq!(spec["containers"].as_array().unwrap().len(), 1);
    assert!(spec["containers"][0].get("volumeMounts").is_none());

    let sts: Value = serde_yaml_ng::from_str(&inject_file("statefulset")).unwrap();
    let volumes = sts["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap();
    assert!(volumes
        .iter()
        .any(|v| v["hostPath"]["path"] == "/run/spire/agent-sockets"));
}

#[test]
fn bad_annotations_are_refused_with_the_object_named() {
    let bad = read(&fixture("pod.yaml")).replace(
        "idgate.io/upstream-port: \"8080\"",
        "idgate.io/upstream-port: \"eighty\"",
    );
    let stderr = inject_refused(&bad);
    assert!(
        stderr.contains("Pod shop/billing") && stderr.contains("idgate.io/upstream-port"),
        "{stderr}"
    );
}

#[test]
fn a_document_written_on_its_separator_line_is_injected() {
    // `--- {...}` puts the whole document on the separator's line: it was passed through
    // untouched, uninjected, without a word.
    let pod = "--- {apiVersion: v1, kind: Pod, metadata: {name: p, annotations: {idgate.io/inject: \"true\"}}, spec: {containers: [{name: app, image: x, ports: [{containerPort: 8080}]}]}}\n";
    let other = "--- {apiVersion: v1, kind: ConfigMap, metadata: {name: c}}\n";
    let out = inject(&[], &format!("a: 1\n{pod}{other}"));
    assert!(
        out.starts_with("a: 1\n---\napiVersion: v1\nkind: Pod\n"),
        "{out}"
    );
    assert_eq!(out.matches("- name: idgate\n").count(), 1, "{out}");
    assert!(out.ends_with(other), "{out}");
    assert_eq!(inject(&[], &out), out);
}

#[test]
fn directives_stay_with_their_document_and_merge_keys_are_resolved() {
    let pod = read(&fixture("pod.yaml"));
    let injected = inject_file("pod");
    let input = format!("%YAML 1.1\n---\n{pod}");
    assert_eq!(inject(&[], &input), format!("%YAML 1.1\n---\n{injected}"));
    let input = format!("{pod}...\n%YAML 1.1\n--- # second\n{pod}");
    let out = inject(&[], &input);
    assert_eq!(out.matches("- name: idgate\n").count(), 2, "{out}");
    assert!(out.contains("...\n%YAML 1.1\n--- # second\n"), "{out}");
    assert_eq!(inject(&[], &out), out);

    // Annotations (and a whole spec) brought in by `<<:` merge keys are seen.
    let list = "apiVersion: v1
kind: List
items:
  - apiVersion: v1
    kind: Pod
    metadata:
      name: a
      annotations: &idgate
        idgate.io/inject: \"true\"
    spec: &spec
      containers:
        - name: app
          image: app:1
          ports:
            - containerPort: 8080
  - apiVersion: v1
    kind: Pod
    metadata:
      name: b
      annotations:
        <<: *idgate
        team: shop
    spec:
      <<: *spec
";
    let out: Value = serde_yaml_ng::from_str(&inject(&[], list)).unwrap();
    for item in out["items"].as_array().unwrap() {
        let spec = &item["spec"];
        assert_eq!(spec["initContainers"][0]["name"], "idgate", "{item}");
        assert_eq!(spec["containers"][0]["name"], "app", "{item}");
    }
    assert_eq!(out["items"][1]["metadata"]["annotations"]["team"], "shop");
}

/// A pod whose values mean different things in YAML 1.1 (kubectl) and YAML 1.2.
const YAML_1_1_POD: &str = "apiVersion: v1
kind: Pod
metadata:
  name: app
  annotations:
    idgate.io/inject: \"true\"
spec:
  containers:
    - name: app
      image: app:1
      ports:
        - containerPort: 8080
      env:
        - {name: A, value: \"on\"}
        - {name: B, value: \"0644\"}
        - {name: C, value: \"1:20\"}
        - {name: D, value: \"y\"}
        - {name: E, value: \".nan\"}
        - {name: F, value: \"2001-12-14\"}
        - {name: G, value: '1_000'}
  volumes:
    - name: config
      configMap: {name: app, defaultMode: 0644}
";

#[test]
fn inject_output_means_the_same_to_kubectl_yaml_1_1() {
    let out = inject(&[], YAML_1_1_POD);
    for (name, value) in [
        ("A", "on"),
        ("B", "0644"),
        ("C", "1:20"),
        ("D", "y"),
        ("E", ".nan"),
        ("F", "2001-12-14"),
        ("G", "1_000"),
    ] {
        let quoted = [format!("value: \"{value}\""), format!("value: '{value}'")];
        let line = format!("name: {name}\n");
        let at = out.find(&line).unwrap_or_else(|| panic!("{name}: {out}"));
        let next = out[at + line.len()..].lines().next().unwrap().trim();
        assert!(quoted.iter().any(|q| q == next), "{name}: {next}");
    }
    // defaultMode 0644 is octal to kubectl: 420.
    assert!(out.contains("defaultMode: 420\n"), "{out}");
    assert_eq!(inject(&[], &out), out);

    // Cross-check with a real YAML 1.1 reader when one is installed.
    let script = "import sys, json, yaml; \
        d = yaml.safe_load(sys.stdin); c = d['spec']['containers'][0]; \
        print(json.dumps([{e['name']: e['value'] for e in c['env']}, d['spec']['volumes'][0]]))";
    let Ok(mut child) = Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        return eprintln!("SKIPPED the PyYAML cross-check: python3 is not installed");
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(out.as_bytes())
        .unwrap();
    let result = child.wait_with_output().unwrap();
    if String::from_utf8_lossy(&result.stderr).contains("No module named 'yaml'") {
        return eprintln!("SKIPPED the PyYAML cross-check: python3 has no yaml module");
    }
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    let read: Value = serde_json::from_slice(&result.stdout).unwrap();
    assert_eq!(
        read[0],
        json!({"A": "on", "B": "0644", "C": "1:20", "D": "y", "E": ".nan", "F": "2001-12-14", "G": "1_000"})
    );
    assert_eq!(read[1]["configMap"]["defaultMode"], 420);
}

/// Runs `idgate inject` on `stdin`, expecting it to refuse: returns stderr.
fn inject_refused(stdin: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_idgate"))
        .args(["inject", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            child.stdin.take().unwrap().write_all(stdin.as_bytes())?;
            child.wait_with_output()
        })
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(out.stdout.is_empty());
    stderr
}

#[test]
fn a_users_container_or_volume_named_like_the_sidecars_is_refused_not_replaced() {
    let pod = read(&fixture("pod.yaml"));
    let app = "    - name: app\n";
    for (added, clash) in [
        (
            "    - name: idgate\n      image: mine:1\n",
            "spec.containers[0]",
        ),
        (
            "  initContainers:\n    - name: idgate\n      image: mine:1\n",
            "spec.initContainers[0]",
        ),
        (
            "  volumes:\n    - name: idgate-spiffe\n      emptyDir: {}\n",
            "spec.volumes[0]",
        ),
        (
            "  volumes:\n    - name: idgate-policy\n      emptyDir: {}\n",
            "spec.volumes[0]",
        ),
    ] {
        let input = match added.starts_with("    -") {
            true => pod.replacen(app, &format!("{added}{app}"), 1),
            false => format!("{pod}{added}"),
        };
        assert_ne!(input, pod);
        let stderr = inject_refused(&input);
        assert!(
            stderr.contains("Pod shop/billing")
                && stderr.contains(clash)
                && stderr.contains("idgate.io/inject")
                && stderr.contains("rename"),
            "{clash}: {stderr}"
        );
    }
    // A sidecar idgate injected earlier (it carries IDGATE_CONFIG_TOML) is replaced, even
    // from `containers`, where it sat before idgate used native sidecars.
    let once: Value = serde_yaml_ng::from_str(&inject_file("pod")).unwrap();
    let mut legacy = once.clone();
    let sidecar = legacy["spec"]["initContainers"][0].clone();
    legacy["spec"]["initContainers"] = json!([]);
    legacy["spec"]["containers"]
        .as_array_mut()
        .unwrap()
        .push(sidecar);
    let again: Value =
        serde_yaml_ng::from_str(&inject(&[], &serde_yaml_ng::to_string(&legacy).unwrap())).unwrap();
    assert_eq!(again, once);
}

#[test]
fn sidecar_ports_a_container_declares_are_refused() {
    let pod = read(&fixture("pod.yaml"));
    let ports = "      ports:\n        - containerPort: 8080\n";
    let with_ports = |extra: &[u16]| {
        let more: String = extra
            .iter()
            .map(|p| format!("        - containerPort: {p}\n"))
            .collect();
        pod.replacen(ports, &format!("{ports}{more}"), 1)
    };
    // App ports [8080, 8443, 15000]: the default inbound port, then the admin port.
    let stderr = inject_refused(&with_ports(&[8443, 15000]));
    assert!(
        stderr.contains("idgate.io/inbound-port: port 8443"),
        "{stderr}"
    );
    let input = with_ports(&[8443, 15000]).replace(
        "    idgate.io/inject: \"true\"\n",
        "    idgate.io/inject: \"true\"\n    idgate.io/inbound-port: \"9443\"\n",
    );
    let stderr = inject_refused(&input);
    assert!(
        stderr.contains("idgate.io/admin-port: port 15000"),
        "{stderr}"
    );
    // Upstream 8080 while the app also declares 8443.
    let stderr = inject_refused(&with_ports(&[8443]));
    assert!(
        stderr.contains("idgate.io/inbound-port: port 8443"),
        "{stderr}"
    );
    // Another container (an init container too) holding an outbound local port.
    let input = format!(
        "{}  initContainers:\n    - name: warm\n      image: w:1\n      ports:\n        - containerPort: 15001\n",
        pod.replace(
            "    idgate.io/inject: \"true\"\n",
            "    idgate.io/inject: \"true\"\n    idgate.io/outbound: \"15001=a:8443@spiffe://example.org/a\"\n",
        )
    );
    let stderr = inject_refused(&input);
    assert!(
        stderr.contains("idgate.io/outbound: port 15001") && stderr.contains("\"warm\""),
        "{stderr}"
    );
}

/// Validates files with the real Kubernetes schemas; fails (never skips) without the
/// validator: CI installs it with `tests/k8s/validate.sh --install`.
fn validate(files: &[PathBuf]) {
    let out = Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/k8s/validate.sh"
    ))
    .args(files)
    .output()
    .expect("tests/k8s/validate.sh runs");
    assert!(
        out.status.success(),
        "schema validation failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn output_validates_against_kubernetes_schemas() {
    let dir = tempfile::tempdir().unwrap();
    let files: Vec<PathBuf> = KINDS
        .iter()
        .map(|kind| {
            let path = dir.path().join(format!("{kind}.yaml"));
            std::fs::write(&path, inject_file(kind)).unwrap();
            path
        })
        .collect();
    validate(&files);
}

#[test]
fn webhook_manifests_validate_against_kubernetes_schemas() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("docker/k8s");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty());
    validate(&files);
}

/// Every object of every YAML file in docker/k8s/.
fn deployment_objects() -> Vec<Value> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("docker/k8s");
    let mut objects = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let text = read(&entry.unwrap().path());
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let object: Value = serde::Deserialize::deserialize(doc).unwrap();
            objects.push(object);
        }
    }
    objects
}

#[test]
fn a_network_policy_lets_only_the_webhook_port_in_and_nothing_out() {
    let objects = deployment_objects();
    let deployment = objects
        .iter()
        .find(|o| o["kind"] == "Deployment" && o["metadata"]["name"] == "idgate-webhook")
        .unwrap();
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let port = &container["ports"][0]["containerPort"];
    let policy = objects
        .iter()
        .find(|o| o["kind"] == "NetworkPolicy")
        .expect("docker/k8s has a NetworkPolicy for the webhook");
    assert_eq!(
        policy["metadata"]["namespace"],
        deployment["metadata"]["namespace"]
    );
    let spec = &policy["spec"];
    for (key, value) in spec["podSelector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(
            &labels[key], value,
            "podSelector must select the webhook pods"
        );
    }
    assert_eq!(spec["policyTypes"], json!(["Ingress", "Egress"]));
    assert_eq!(
        spec["ingress"],
        json!([{"ports": [{"protocol": "TCP", "port": port}]}])
    );
    assert_eq!(spec["egress"], json!([]));
}

/// A self-signed serving certificate for `localhost`, written to `dir`.
fn serving_cert(dir: &Path) -> (PathBuf, PathBuf, CertificateDer<'static>) {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    let der = CertificateDer::from_pem_file(&cert).unwrap();
    (cert, key, der)
}

/// A TLS connection to the webhook at `addr`, whose certificate `ca` issued.
async fn webhook_connection(
    addr: std::net::SocketAddr,
    ca: CertificateDer<'static>,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(idgate::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap()
}

/// Posts `body` to `/mutate`; returns the status and the body.
async fn post_mutate(
    addr: std::net::SocketAddr,
    ca: CertificateDer<'static>,
    body: String,
) -> (http::StatusCode, Bytes) {
    let tls = webhook_connection(addr, ca).await;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let request = http::Request::post("/mutate")
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status();
    (
        status,
        response.into_body().collect().await.unwrap().to_bytes(),
    )
}

async fn post_review(
    addr: std::net::SocketAddr,
    ca: CertificateDer<'static>,
    body: String,
) -> Value {
    let (status, bytes) = post_mutate(addr, ca, body).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&bytes));
    serde_json::from_slice(&bytes).unwrap()
}

/// An AdmissionReview of a pod without idgate annotations whose JSON is about `size` bytes
/// (one app container with many env variables, the usual way pods get big).
fn big_unannotated_review(size: usize) -> String {
    let entry = |i: usize| json!({"name": format!("VAR_{i}"), "value": "x".repeat(100)});
    let count = size / entry(0).to_string().len();
    let env: Vec<Value> = (0..count).map(entry).collect();
    json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "big", "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "object": {
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "big", "namespace": "shop", "annotations": {"team": "shop"}},
                "spec": {"containers": [{"name": "app", "image": "app:1", "env": env,
                    "ports": [{"containerPort": 8080}]}]}
            }
        }
    })
    .to_string()
}

/// `VmHWM` (peak resident memory) of process `pid`, in bytes.
fn peak_rss(pid: u32) -> usize {
    let status = read(Path::new(&format!("/proc/{pid}/status")));
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: usize = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// Kills the child on drop, so a failed assertion leaves no webhook running.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A big review of a pod that does not ask for injection is answered (allowed, no patch)
/// by the real `idgate webhook` without its memory growing by many times the body: the
/// annotations are read before anything is converted. The API server's largest request
/// fits under the body limit; a bigger body is refused.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn webhook_big_unannotated_review_costs_little_and_oversize_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, ca) = serving_cert(dir.path());
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_idgate"))
        .args(["webhook", "--listen", &addr.to_string(), "--cert"])
        .arg(&cert)
        .arg("--key")
        .arg(&key)
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let child = Child(child);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "webhook did not listen"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // Warm up (TLS, HTTP, first allocations), then measure the big review alone.
    let small = big_unannotated_review(10_000);
    post_review(addr, ca.clone(), small).await;
    let before = peak_rss(child.0.id());

    let body = big_unannotated_review(3 << 20);
    assert!(
        body.len() <= idgate::k8s::server::MAX_BODY,
        "{}",
        body.len()
    );
    let answer = post_review(addr, ca.clone(), body.clone()).await;
    assert_eq!(answer["response"], json!({"uid": "big", "allowed": true}));
    let grown = peak_rss(child.0.id()).saturating_sub(before);
    // Parsing the JSON costs about 8 times its size (24 MB here); converting the whole
    // object to YAML and back and diffing it, as before, cost about 20 times (62 MB).
    assert!(
        grown < 12 * body.len(),
        "peak RSS grew by {} MB for a {} MB review",
        grown >> 20,
        body.len() >> 20
    );

    let oversize = big_unannotated_review(4 << 20);
    assert!(oversize.len() > idgate::k8s::server::MAX_BODY);
    let (status, _) = post_mutate(addr, ca, oversize).await;
    assert!(
        status == 400 || status == 413,
        "a body over the limit gets {status}"
    );
    drop(child);
}

#[tokio::test]
async fn webhook_patch_over_https_equals_inject_output() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, ca) = serving_cert(dir.path());
    let certs = idgate::k8s::server::CertFiles::load(&cert, &key).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(idgate::k8s::server::serve(
        listener,
        certs,
        shutdown.clone(),
    ));

    let review_text = read(&fixture("admission-review.json"));
    let review: Value = serde_json::from_str(&review_text).unwrap();
    let answer = post_review(addr, ca.clone(), review_text).await;
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(answer["kind"], "AdmissionReview");
    let response = &answer["response"];
    assert_eq!(response["uid"], review["request"]["uid"]);
    assert_eq!(response["allowed"], true);
    assert_eq!(response["patchType"], "JSONPatch");

    use base64::Engine;
    let patch_bytes = base64::engine::general_purpose::STANDARD
        .decode(response["patch"].as_str().unwrap())
        .unwrap();
    let patch: json_patch::Patch = serde_json::from_slice(&patch_bytes).unwrap();
    let mut patched = review["request"]["object"].clone();
    json_patch::patch(&mut patched, &patch).unwrap();

    // `idgate inject` on the very same pod, written as YAML.
    let pod_yaml = serde_yaml_ng::to_string(&review["request"]["object"]).unwrap();
    let injected: Value = serde_yaml_ng::from_str(&inject(&["-f", "-"], &pod_yaml)).unwrap();
    assert_eq!(patched, injected);
    assert_eq!(patched["spec"]["initContainers"][0]["name"], "idgate");

    // The injected pod comes back with no patch: the webhook is idempotent too.
    let mut again = review.clone();
    again["request"]["object"] = patched;
    let answer = post_review(addr, ca.clone(), again.to_string()).await;
    assert_eq!(answer["response"]["allowed"], true);
    assert!(answer["response"].get("patch").is_none(), "{answer}");

    // A body that never arrives does not hold a review's turn.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut trickle = webhook_connection(addr, ca).await;
    let head = "POST /mutate HTTP/1.1\r\nhost: localhost\r\ncontent-length: 100\r\n\r\n{";
    trickle.write_all(head.as_bytes()).await.unwrap();
    let mut status = [0; 12];
    let answered = tokio::time::timeout(
        std::time::Duration::from_secs(15),
        trickle.read_exact(&mut status),
    );
    answered.await.expect("answered").unwrap();
    assert_eq!(&status, b"HTTP/1.1 408");

    shutdown.cancel();
    server.await.unwrap().unwrap();
}

#[test]
fn compose_file_is_valid() {
    let compose = concat!(env!("CARGO_MANIFEST_DIR"), "/docker/compose.yaml");
    for profile in [None, Some("files")] {
        let mut command = Command::new("docker-compose");
        command.args(["-f", compose]);
        if let Some(profile) = profile {
            command.args(["--profile", profile]);
        }
        let out = command.args(["config", "--quiet"]).output().expect(
            "docker-compose (Debian package docker-compose) is installed; .ci/run installs it",
        );
        assert!(
            out.status.success(),
            "docker-compose config ({profile:?}): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn systemd_unit_verifies() {
    let out = Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/k8s/check-systemd.sh"
    ))
    .env("IDGATE_BIN", env!("CARGO_BIN_EXE_idgate"))
    .output()
    .expect("tests/k8s/check-systemd.sh runs");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn compose_mesh_configs_validate() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        root.join("docker/mesh/billing-policy.toml"),
        dir.path().join("billing-policy.toml"),
    )
    .unwrap();
    for name in ["billing", "frontend", "billing-files", "frontend-files"] {
        // The containers mount certs-dev/ at /certs.
        let text = read(&root.join(format!("docker/mesh/{name}.toml")))
            .replace("\"/certs/", &format!("\"{}/certs-dev/", root.display()));
        let path = dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, text).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_idgate"))
            .args(["validate", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// GitHub's anchor for a Markdown heading: lower case, spaces to '-', punctuation dropped.
fn anchor(heading: &str) -> String {
    heading
        .trim_start_matches('#')
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

#[test]
fn deployment_files_point_only_at_docs_that_exist() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = read(&root.join("README.md"));
    let anchors: Vec<String> = readme
        .lines()
        .filter(|l| l.starts_with('#') && l.contains("# "))
        .map(anchor)
        .collect();
    let mut files: Vec<PathBuf> = std::fs::read_dir(root.join("docker/k8s"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.push(root.join("config/systemd/idgate.service"));
    for file in files {
        let text = read(&file);
        let name = file.display();
        for word in text.split(|c: char| c.is_whitespace() || "()`,;".contains(c)) {
            let word = word.trim_end_matches(['.', ':']);
            if let Some(fragment) = word.strip_prefix("README.md#") {
                assert!(
                    anchors.iter().any(|a| a == fragment),
                    "{name}: README.md has no section #{fragment}"
                );
            } else if word.contains("docs/") || word.ends_with(".md") {
                let path = word.rsplit("file://").next().unwrap_or(word);
                let local = root.join(path.trim_start_matches("/usr/share/doc/idgate/"));
                assert!(local.exists(), "{name}: {word} does not exist");
            }
        }
    }
}

//! The `idgate` binary: exit codes and error messages of SPEC.md.

mod support;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use support::process::RunningIdgate;

fn idgate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_idgate"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("IDGATE_CONFIG")
        .env_remove("IDGATE_CONFIG_TOML")
        .output()
        .expect("run idgate")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A copy of the sample billing config with one line changed, in a temp dir that also
/// holds the policy (the certs are referenced absolutely).
fn broken_config(dir: &Path, from: &str, to: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("config/idgate.toml"))
        .unwrap()
        .replace(
            "../certs-dev",
            &root.join("certs-dev").display().to_string(),
        );
    assert!(text.contains(from), "sample config no longer has {from:?}");
    std::fs::copy(
        root.join("config/billing-policy.toml"),
        dir.join("billing-policy.toml"),
    )
    .unwrap();
    let path = dir.join("bad.toml");
    std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
    path.display().to_string()
}

#[test]
fn sample_configs_validate() {
    for config in ["config/idgate.toml", "config/frontend.toml"] {
        let out = idgate(&["validate", "--config", config]);
        assert_eq!(out.status.code(), Some(0), "{config}: {}", stderr(&out));
        assert!(stdout(&out).contains("valid"), "{}", stdout(&out));
    }
}

#[test]
fn unknown_key_is_refused_with_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = broken_config(dir.path(), "protocol = \"http\"", "protocl = \"http\"");
    for command in ["validate", "run"] {
        let out = idgate(&[command, "--config", &path]);
        assert_eq!(out.status.code(), Some(2), "{command}");
        let err = stderr(&out);
        assert!(
            err.starts_with(&format!(
                "error: {path}:15: inbound[0].protocl: unknown field"
            )),
            "{command}: {err}"
        );
    }
}

#[test]
fn bad_address_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = broken_config(
        dir.path(),
        "listen = \"127.0.0.1:8443\"",
        "listen = \"127.0.0.1:http\"",
    );
    let out = idgate(&["run", "--config", &path]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains(&format!(
            "{path}:13: inbound[0].listen: invalid socket address"
        )),
        "{}",
        stderr(&out)
    );
}

#[test]
fn bad_upstream_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = broken_config(dir.path(), "http://127.0.0.1:8080", "127.0.0.1:8080");
    let out = idgate(&["validate", "--config", &path]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains(&format!(
            "{path}:14: inbound[0].upstream: expected http://host:port"
        )),
        "{}",
        stderr(&out)
    );
}

#[test]
fn session_resumption_is_a_boolean_and_validate_shows_it_off() {
    let dir = tempfile::tempdir().unwrap();
    let off = "policy = \"billing-policy.toml\"\nsession_resumption = false";
    let path = broken_config(dir.path(), "policy = \"billing-policy.toml\"", off);
    let out = idgate(&["validate", "--config", &path]);
    assert!(out.status.success(), "{}", stderr(&out));
    let summary = String::from_utf8_lossy(&out.stdout);
    let inbound = summary.lines().find(|l| l.contains("inbound  billing-api"));
    assert!(
        inbound.is_some_and(|l| l.ends_with(", TLS session resumption off")),
        "{summary}"
    );
    let outbound = summary.lines().find(|l| l.contains("outbound to-frontend"));
    assert!(
        outbound.is_some_and(|l| !l.contains("resumption")),
        "on by default: {summary}"
    );

    let bad = "policy = \"billing-policy.toml\"\nsession_resumption = \"no\"";
    let path = broken_config(dir.path(), "policy = \"billing-policy.toml\"", bad);
    let out = idgate(&["validate", "--config", &path]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains(&format!("{path}:17: inbound[0].session_resumption:")),
        "{}",
        stderr(&out)
    );
}

#[test]
fn missing_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = broken_config(dir.path(), "billing-key.pem", "no-such-key.pem");
    let out = idgate(&["run", "--config", &path]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("{path}:8: identity.key: cannot read"))
            && err.contains("no-such-key.pem"),
        "{err}"
    );
}

/// An empty policy file would deny everything; at start-up it is a config error (exit 2),
/// as it is on reload, where it is what a file caught mid-rewrite looks like.
#[test]
fn an_empty_policy_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = broken_config(dir.path(), "listen", "listen");
    let policy = dir.path().join("billing-policy.toml");
    for text in ["", "# rendered by the deploy job\n\n"] {
        std::fs::write(&policy, text).unwrap();
        for command in ["run", "validate"] {
            let (out, _) = idgate_within(&[command, "--config", &path], Duration::from_secs(10));
            assert_eq!(out.status.code(), Some(2), "{command} {text:?}");
            let err = stderr(&out);
            assert!(
                err.contains(&format!("{}: file ", policy.display()))
                    && err.contains("a policy must say at least its default"),
                "{err}"
            );
        }
    }
}

#[test]
fn unusable_identity_files_are_refused_with_file_line_and_field() {
    let certs = Path::new(env!("CARGO_MANIFEST_DIR")).join("certs-dev");
    // (file replaced, its line, field, what the loader says); the replacement exists but
    // holds no PEM, or the wrong PEM.
    let cases = [
        ("billing.pem", 7, "cert", "no certificate found"),
        ("billing-key.pem", 8, "key", "no private key found"),
        ("bundle.pem", 9, "bundle", "no certificate found"),
    ];
    for (file, line, field, message) in cases {
        let dir = tempfile::tempdir().unwrap();
        let original = certs.join(file).display().to_string();
        let path = broken_config(dir.path(), &original, file);
        let bad = dir.path().join(file);
        let content = if field == "bundle" {
            std::fs::read_to_string(certs.join("billing-key.pem")).unwrap()
        } else {
            "not PEM at all\n".to_string()
        };
        std::fs::write(&bad, content).unwrap();
        let want = format!(
            "error: {path}:{line}: identity.{field}: {}: {message}",
            bad.display()
        );
        for command in ["validate", "run"] {
            let out = idgate(&[command, "--config", &path]);
            let err = stderr(&out);
            assert_eq!(out.status.code(), Some(2), "{command}: {err}");
            assert!(err.starts_with(&want), "{command}: {err}\nwant: {want}");
            assert!(
                !stdout(&out).contains("valid"),
                "{command}: {}",
                stdout(&out)
            );
        }
    }
}

#[test]
fn missing_config_file_is_refused() {
    let out = idgate(&["run", "--config", "/nonexistent/idgate.toml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("/nonexistent/idgate.toml: cannot read file"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn config_from_environment() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(env!("CARGO_BIN_EXE_idgate"))
        .args(["validate"])
        .current_dir(root)
        .env("IDGATE_CONFIG", "config/frontend.toml")
        .env_remove("IDGATE_CONFIG_TOML")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("config/frontend.toml"));
}

#[test]
fn demo_once_shows_allowed_and_denied_calls() {
    let out = idgate(&["demo", "--once"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains(" allow ") && text.contains(" deny "),
        "{text}"
    );
    assert!(
        text.contains("nobody-uses-admin"),
        "the reason for a denial is shown: {text}"
    );
    assert!(
        text.contains("default deny") || text.contains("no rule allows"),
        "{text}"
    );
}

#[test]
fn certs_dev_then_inspect() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().display().to_string();
    let out = idgate(&[
        "certs",
        "dev",
        "--out",
        &out_dir,
        "--trust-domain",
        "example.org",
        "--id",
        "spiffe://example.org/ns/a/sa/web",
        "--id",
        "spiffe://example.org/ns/b/sa/db",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    for file in [
        "ca.pem",
        "ca-key.pem",
        "bundle.pem",
        "web.pem",
        "web-key.pem",
        "db.pem",
        "db-key.pem",
    ] {
        assert!(dir.path().join(file).exists(), "{file}");
    }
    let out = idgate(&["inspect", &dir.path().join("web.pem").display().to_string()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("spiffe://example.org/ns/a/sa/web"),
        "{}",
        stdout(&out)
    );
    let out = idgate(&["inspect", "/nonexistent.pem"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn check_exit_codes() {
    let policy = "config/billing-policy.toml";
    let frontend = "spiffe://example.org/ns/shop/sa/frontend";
    let allow = idgate(&[
        "check",
        "--policy",
        policy,
        "--from",
        frontend,
        "--path",
        "/api/invoices",
    ]);
    assert_eq!(
        allow.status.code(),
        Some(0),
        "{}{}",
        stdout(&allow),
        stderr(&allow)
    );
    assert!(stdout(&allow).contains("frontend-reads-invoices"));
    let deny = idgate(&[
        "check",
        "--policy",
        policy,
        "--from",
        frontend,
        "--method",
        "DELETE",
        "--path",
        "/api/invoices/1",
    ]);
    assert_eq!(deny.status.code(), Some(1), "{}", stdout(&deny));
    let bad_id = idgate(&[
        "check", "--policy", policy, "--from", "frontend", "--path", "/",
    ]);
    assert_eq!(bad_id.status.code(), Some(2));
    let bad_path = idgate(&[
        "check", "--policy", policy, "--from", frontend, "--path", "/a%2fb",
    ]);
    assert_eq!(bad_path.status.code(), Some(2));
}

#[test]
fn policy_test_runs_the_sample_cases() {
    let out = idgate(&["policy", "test", "config/billing-policy.test.toml"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(
        stdout(&out).contains("4 passed, 0 failed"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn zero_workers_is_refused_with_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = broken_config(dir.path(), "workers = 1", "workers = 0");
    let out = idgate(&["validate", "--config", &path]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains(&format!(
            "{path}:32: runtime.workers: invalid value: integer `0`, expected a nonzero usize"
        )),
        "{}",
        stderr(&out)
    );
}

/// `idgate ARGS`, killed if it has not exited within `limit` (its output up to then).
fn idgate_within(args: &[&str], limit: Duration) -> (Output, bool) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_idgate"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("IDGATE_CONFIG")
        .env_remove("IDGATE_CONFIG_TOML")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run idgate");
    let deadline = std::time::Instant::now() + limit;
    let mut exited = false;
    while std::time::Instant::now() < deadline {
        if child.try_wait().expect("wait").is_some() {
            exited = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if !exited {
        let _ = child.kill();
    }
    (child.wait_with_output().expect("output"), exited)
}

#[test]
fn values_that_would_crash_a_connection_are_refused_before_binding() {
    // Each loaded and bound, then panicked (an abort in release) on the first connection,
    // or (max_connections) when the listener started accepting.
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "limits = { max_connections = 9223372036854775807 }",
            "inbound[0].limits.max_connections: expected 1 to 1048576",
        ),
        (
            "limits = { max_connection_age = \"18446744073709551615s\" }",
            "inbound[0].limits.max_connection_age: \"18446744073709551615s\" is too long: at most 365 days",
        ),
        (
            "timeouts = { idle = \"307445734561825861m\" }",
            "inbound[0].timeouts.idle: \"307445734561825861m\" is too long: at most 365 days",
        ),
    ];
    for (extra, expected) in cases {
        let path = broken_config(
            dir.path(),
            "protocol = \"http\"",
            &format!("protocol = \"http\"\n{extra}"),
        );
        // Port 0 everywhere, in case the sidecar starts after all.
        let text = ["127.0.0.1:8443", "127.0.0.1:15002", "127.0.0.1:15000"]
            .iter()
            .fold(std::fs::read_to_string(&path).unwrap(), |text, addr| {
                text.replace(addr, "127.0.0.1:0")
            });
        std::fs::write(&path, text).unwrap();
        for command in ["validate", "run"] {
            let (out, exited) =
                idgate_within(&[command, "--config", &path], Duration::from_secs(20));
            assert!(exited, "{command} {extra}: still running: {}", stderr(&out));
            assert_eq!(
                out.status.code(),
                Some(2),
                "{command} {extra}: {}",
                stderr(&out)
            );
            let err = stderr(&out);
            assert!(
                err.starts_with(&format!("error: {path}:16: {expected}"))
                    && err.lines().count() == 1,
                "{command} {extra}: {err}"
            );
        }
    }
}

#[cfg(unix)]
#[test]
fn run_drains_and_exits_zero_on_sigterm() {
    // One worker serves on the main thread alone, more start worker threads: both must
    // run and drain, and write the decision log's last line before exiting.
    for workers in [1, 2] {
        run_then_sigterm(workers);
    }
}

/// One plain HTTP/1.1 request, read to the end of the response.
#[cfg(unix)]
fn get(address: std::net::SocketAddr, request_id: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).expect("connect");
    write!(
        stream,
        "GET /last HTTP/1.1\r\nHost: x\r\nx-request-id: {request_id}\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    response
}

#[cfg(unix)]
fn run_then_sigterm(workers: usize) {
    let dir = tempfile::tempdir().unwrap();
    let path = broken_config(
        dir.path(),
        "listen = \"127.0.0.1:8443\"",
        "listen = \"127.0.0.1:0\"",
    );
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("127.0.0.1:15002", "127.0.0.1:0")
        .replace("127.0.0.1:15000", "127.0.0.1:0")
        .replace("workers = 1", &format!("workers = {workers}"));
    std::fs::write(&path, text).unwrap();
    let mut idgate = RunningIdgate::start(Path::new(&path));
    assert!(
        idgate.started.contains(&format!("workers={workers}")),
        "{}",
        idgate.started
    );
    // Nothing listens on the outbound's target: a 502, and a decision line for it
    // (`decisions = "stderr"`), still queued when the signal comes.
    let request_id = format!("last-before-sigterm-{workers}");
    let response = get(idgate.address("outbound"), &request_id);
    assert!(response.starts_with("HTTP/1.1 502"), "{response}");
    idgate.signal("TERM");
    assert_eq!(idgate.wait().code(), Some(0));
    assert!(
        idgate
            .wait_for(
                &format!("\"request_id\":\"{request_id}\""),
                Duration::from_secs(1)
            )
            .is_some(),
        "the decision line of the last request was lost at exit"
    );
}

#[cfg(unix)]
#[test]
fn sighup_reloads_a_policy_the_watcher_cannot_see() {
    // The config names a symlink whose target lives in a directory nobody watches, so
    // only SIGHUP can bring the edit in.
    let dir = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let path = broken_config(
        dir.path(),
        "listen = \"127.0.0.1:8443\"",
        "listen = \"127.0.0.1:0\"",
    );
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("127.0.0.1:15002", "127.0.0.1:0")
        .replace("127.0.0.1:15000", "127.0.0.1:0");
    std::fs::write(&path, text).unwrap();
    let target = elsewhere.path().join("real-policy.toml");
    std::fs::rename(dir.path().join("billing-policy.toml"), &target).unwrap();
    std::os::unix::fs::symlink(&target, dir.path().join("billing-policy.toml")).unwrap();
    let mut idgate = RunningIdgate::start(Path::new(&path));
    std::fs::write(&target, "default = \"allow\"\n").unwrap();
    idgate.signal("HUP");
    let reloaded = idgate.wait_for("policy reloaded", Duration::from_secs(10));
    idgate.signal("TERM");
    let _ = idgate.wait();
    assert!(reloaded.is_some(), "SIGHUP should reload the policy");
}

/// Runs `idgate ARGS` with stdout a pipe whose reader has already quit (`| head -1` once
/// head has what it wanted): every write to stdout fails with a broken pipe.
fn idgate_into_closed_pipe(args: &[&str]) -> Output {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    Command::new(env!("CARGO_BIN_EXE_idgate"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("IDGATE_CONFIG")
        .env_remove("IDGATE_CONFIG_TOML")
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .expect("run idgate")
}

#[test]
fn output_into_a_closed_pipe_ends_quietly_with_the_commands_own_exit_code() {
    let check = |method: &str| {
        idgate_into_closed_pipe(&[
            "check",
            "--policy",
            "config/billing-policy.toml",
            "--from",
            "spiffe://example.org/ns/shop/sa/frontend",
            "--method",
            method,
            "--path",
            "/api/invoices/1",
        ])
    };
    let cases = [
        (
            "inspect",
            idgate_into_closed_pipe(&["inspect", "certs-dev/billing.pem"]),
            0,
        ),
        (
            "validate",
            idgate_into_closed_pipe(&["validate", "--config", "config/idgate.toml"]),
            0,
        ),
        (
            "policy test",
            idgate_into_closed_pipe(&["policy", "test", "config/billing-policy.test.toml"]),
            0,
        ),
        ("check allow", check("GET"), 0),
        ("check deny", check("DELETE"), 1),
    ];
    for (command, out, code) in cases {
        assert_eq!(out.status.code(), Some(code), "{command}: {}", stderr(&out));
        assert!(stderr(&out).is_empty(), "{command}: {}", stderr(&out));
    }
}

#[test]
fn a_long_output_whose_reader_quits_after_one_line_ends_quietly() {
    // Kubernetes YAML far larger than a pipe holds: `inject` passes it through.
    let yaml: String = (0..3_000)
        .map(|i| format!("---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: config-{i}\ndata:\n  key: value-{i}\n"))
        .collect();
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("many.yaml");
    std::fs::write(&file, yaml).expect("write yaml");
    let mut child = Command::new(env!("CARGO_BIN_EXE_idgate"))
        .args(["inject", "-f"])
        .arg(&file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn idgate");
    let mut stdout = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut first = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut first).expect("first line");
    assert!(!first.is_empty());
    drop(stdout);
    let out = child.wait_with_output().expect("wait for idgate");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).is_empty(), "{}", stderr(&out));
}

#[test]
fn output_to_a_full_disk_is_an_error_with_exit_code_2() {
    let full = std::fs::File::options()
        .write(true)
        .open("/dev/full")
        .expect("/dev/full");
    let out = Command::new(env!("CARGO_BIN_EXE_idgate"))
        .args(["inspect", "certs-dev/billing.pem"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(full)
        .output()
        .expect("run idgate");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).starts_with("error: cannot write to stdout:"),
        "{}",
        stderr(&out)
    );
}

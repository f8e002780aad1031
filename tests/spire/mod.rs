//! A real SPIRE for the integration tests: server + agent on temporary Unix sockets, and
//! idgate sidecars run as separate `idgate run` processes under their own uid.
//!
//! SPIRE v1.13.3 comes from `tests/spire/install.sh` (cached; a test FAILS when it cannot be
//! installed). Workloads are told apart by `unix:uid` selectors; every process started here
//! is killed when its handle drops, and on a failing test the logs are printed. A test
//! binary using this module also declares `mod support;` (the HTTP clients of `mesh`).
#![allow(dead_code)] // each test binary uses a different part of the harness

mod mesh;
mod sidecar;

pub use mesh::*;
pub use sidecar::*;

use std::fs;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// Our trust domain in every test.
pub const TD: &str = "example.org";
const SERVER_CONF: &str = include_str!("server.conf.in");
const AGENT_CONF: &str = include_str!("agent.conf.in");

/// The directory holding `spire-server` and `spire-agent`, installed once per test binary.
pub fn spire_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let bin = match std::env::var_os("IDGATE_SPIRE_BIN") {
            Some(dir) => PathBuf::from(dir),
            None => {
                let home = std::env::var_os("HOME")
                    .expect("SPIRE: neither $IDGATE_SPIRE_BIN nor $HOME is set");
                Path::new(&home).join(".cache/idgate/spire-1.13.3")
            }
        };
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/spire/install.sh");
        let out = Command::new("bash")
            .arg(&script)
            .arg(&bin)
            .output()
            .unwrap_or_else(|e| panic!("SPIRE: cannot run {}: {e}", script.display()));
        assert!(
            out.status.success() && bin.join("spire-server").is_file() && bin.join("spire-agent").is_file(),
            "SPIRE v1.13.3 could not be installed into {} by {} (needs Go and the Go module proxy):\n{}{}",
            bin.display(),
            script.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        bin
    })
}

/// A free loopback address (bound, read, released).
pub fn free_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local addr")
}

/// A description written when shown, so a timeout message carries a log as it is at the
/// timeout rather than when the wait began.
pub struct WhenShown<F>(pub F);

impl<F: Fn() -> String> std::fmt::Display for WhenShown<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&(self.0)())
    }
}

/// Polls `check` every 100 ms until it returns `Some` or `timeout` passes.
pub async fn eventually<T, F, Fut>(
    what: impl std::fmt::Display,
    timeout: Duration,
    mut check: F,
) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A running SPIRE server and agent in a temporary directory.
pub struct Spire {
    pub dir: TempDir,
    server: Child,
    agent: Option<Child>,
    port: u16,
    /// The join token the agent attested with.
    pub token: String,
    /// Whether the agent has attested (later starts use its stored SVID, not the token).
    attested: bool,
}

impl Spire {
    /// Starts server and agent with `default_x509_svid_ttl = ttl_secs` and waits until both
    /// pass their health checks.
    pub fn start(ttl_secs: u32) -> Self {
        let bin = spire_bin();
        let dir = tempfile::tempdir().expect("temp dir");
        // Workloads run under other uids: they must reach the agent socket and configs.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
        let port = free_addr().port();
        let fill = |template: &str| {
            template
                .replace("@DIR@", &dir.path().display().to_string())
                .replace("@PORT@", &port.to_string())
                .replace("@TTL@", &ttl_secs.to_string())
        };
        fs::write(dir.path().join("server.conf"), fill(SERVER_CONF)).expect("server.conf");
        fs::write(dir.path().join("agent.conf"), fill(AGENT_CONF)).expect("agent.conf");
        let server = spawn_logged(
            Command::new(bin.join("spire-server"))
                .args(["run", "-config"])
                .arg(dir.path().join("server.conf")),
            &dir.path().join("server.log"),
        );
        let mut spire = Self {
            dir,
            server,
            agent: None,
            port,
            token: String::new(),
            attested: false,
        };
        spire.wait_healthy("spire-server", &spire.server_socket());
        let out = spire.server_cli(&[
            "token",
            "generate",
            "-spiffeID",
            "spiffe://example.org/idgate-test-node",
        ]);
        spire.token = out
            .lines()
            .find_map(|l| l.strip_prefix("Token:"))
            .map(|t| t.trim().to_string())
            .unwrap_or_else(|| panic!("no token in {out:?}"));
        spire.start_agent();
        spire
    }

    fn server_socket(&self) -> String {
        self.dir.path().join("server.sock").display().to_string()
    }

    fn agent_socket_path(&self) -> String {
        self.dir.path().join("agent.sock").display().to_string()
    }

    /// The Workload API address for idgate's `[identity] socket`.
    pub fn socket(&self) -> String {
        format!("unix://{}", self.agent_socket_path())
    }

    /// The SPIFFE ID of the agent, parent of every workload entry.
    pub fn agent_id(&self) -> String {
        format!("spiffe://{TD}/spire/agent/join_token/{}", self.token)
    }

    /// Starts the agent (first time with the join token, later from its stored SVID).
    pub fn start_agent(&mut self) {
        assert!(self.agent.is_none(), "agent already running");
        let bin = spire_bin();
        let mut command = Command::new(bin.join("spire-agent"));
        command
            .args(["run", "-config"])
            .arg(self.dir.path().join("agent.conf"));
        if !self.attested {
            command.args(["-joinToken", &self.token]);
            self.attested = true;
        }
        self.agent = Some(spawn_logged(
            &mut command,
            &self.dir.path().join("agent.log"),
        ));
        self.wait_healthy("spire-agent", &self.agent_socket_path());
    }

    /// Kills the agent (SIGKILL, as a crash would).
    pub fn kill_agent(&mut self) {
        if let Some(mut agent) = self.agent.take() {
            let _ = agent.kill();
            let _ = agent.wait();
        }
    }

    fn wait_healthy(&self, binary: &str, socket: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ok = Command::new(spire_bin().join(binary))
                .args(["healthcheck", "-socketPath", socket])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{binary} not healthy after 60 s:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Runs `spire-server ARGS -socketPath ...`, panics on failure, returns stdout.
    pub fn server_cli(&self, args: &[&str]) -> String {
        let out = Command::new(spire_bin().join("spire-server"))
            .args(args)
            .args(["-socketPath", &self.server_socket()])
            .output()
            .expect("run spire-server");
        assert!(
            out.status.success(),
            "spire-server {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Registers `spiffe_id` for processes of `uid` on our agent; returns the entry ID.
    pub fn register(&self, spiffe_id: &str, uid: u32, ttl_secs: u32) -> String {
        self.register_with(spiffe_id, uid, ttl_secs, &[])
    }

    /// Like [`Spire::register`], with extra `entry create` flags (e.g.
    /// `["-federatesWith", "spiffe://partner.org"]`).
    pub fn register_with(
        &self,
        spiffe_id: &str,
        uid: u32,
        ttl_secs: u32,
        extra: &[&str],
    ) -> String {
        let (parent, selector, ttl) = (
            self.agent_id(),
            format!("unix:uid:{uid}"),
            ttl_secs.to_string(),
        );
        let mut args = vec![
            "entry",
            "create",
            "-parentID",
            &parent,
            "-spiffeID",
            spiffe_id,
            "-selector",
            &selector,
            "-x509SVIDTTL",
            &ttl,
        ];
        args.extend_from_slice(extra);
        let out = self.server_cli(&args);
        out.lines()
            .find_map(|l| l.strip_prefix("Entry ID"))
            .and_then(|rest| rest.split(':').nth(1))
            .map(|id| id.trim().to_string())
            .unwrap_or_else(|| panic!("no entry ID in {out:?}"))
    }

    /// Deletes a registration entry.
    pub fn delete_entry(&self, entry_id: &str) {
        self.server_cli(&["entry", "delete", "-entryID", entry_id]);
    }

    /// Our trust domain's X.509 bundle (`spire-server bundle show -format pem`).
    pub fn bundle_pem(&self) -> String {
        self.server_cli(&["bundle", "show", "-format", "pem"])
    }

    /// Stores `roots_pem` as the federated bundle of `trust_domain` (`bundle set`).
    pub fn set_federated_bundle(&self, trust_domain: &str, roots_pem: &str) {
        let path = self
            .dir
            .path()
            .join(format!("federated-{trust_domain}.pem"));
        fs::write(&path, roots_pem).expect("write federated bundle");
        self.server_cli(&[
            "bundle",
            "set",
            "-format",
            "pem",
            "-id",
            &format!("spiffe://{trust_domain}"),
            "-path",
            &path.display().to_string(),
        ]);
    }

    /// Deletes the federated bundle of `trust_domain`; `mode` is `bundle delete -mode`
    /// (`dissociate` also drops it from the entries that federate with it).
    pub fn delete_federated_bundle(&self, trust_domain: &str, mode: &str) {
        self.server_cli(&[
            "bundle",
            "delete",
            "-id",
            &format!("spiffe://{trust_domain}"),
            "-mode",
            mode,
        ]);
    }

    /// Server and agent logs (tails), for failure messages.
    pub fn logs(&self) -> String {
        ["server.log", "agent.log"]
            .iter()
            .map(|f| format!("--- {f}\n{}", tail(&self.dir.path().join(f), 40)))
            .collect()
    }

    /// A directory for a workload's files, readable by any uid.
    pub fn workload_dir(&self, name: &str) -> PathBuf {
        let dir = self.dir.path().join(name);
        fs::create_dir_all(&dir).expect("workload dir");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("chmod");
        dir
    }
}

impl Drop for Spire {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("SPIRE logs:\n{}", self.logs());
        }
        self.kill_agent();
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

pub(crate) fn spawn_logged(command: &mut Command, log: &Path) -> Child {
    let file = fs::File::create(log).expect("log file");
    let err = file.try_clone().expect("log file");
    command
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"))
}

pub(crate) fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

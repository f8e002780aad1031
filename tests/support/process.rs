//! `idgate run` as a real child process, for tests of what only the binary does (signals,
//! the allocator, exit codes).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::Duration;

/// A running `idgate run`; killed when dropped. A thread drains its stderr (so the pipe
/// never fills) and hands each line to [`RunningIdgate::wait_for`].
pub struct RunningIdgate {
    child: Child,
    lines: Receiver<String>,
    /// Set: the thread stops reading stderr, as a stalled log reader would.
    stalled: Arc<AtomicBool>,
    /// The "idgate running" line (addresses, workers, SPIFFE ID).
    pub started: String,
}

impl RunningIdgate {
    /// `idgate run` with one inbound listener, `api`, in front of an echo server (policy:
    /// [`super::ALLOW_ALL_FRONTEND`]), an admin listener, and `extra` TOML after them.
    pub async fn start_inbound_to_echo(pki: &super::Pki, extra: &str) -> Self {
        Self::start_inbound_with_policy(pki, super::ALLOW_ALL_FRONTEND, extra).await
    }

    /// [`RunningIdgate::start_inbound_to_echo`] with `policy` (written to the PKI
    /// directory's `policy.toml`) instead.
    pub async fn start_inbound_with_policy(pki: &super::Pki, policy: &str, extra: &str) -> Self {
        let echo = idgate::cli::echo::spawn(([127, 0, 0, 1], 0).into())
            .await
            .expect("echo");
        Self::start_inbound_to(pki, echo, policy, extra)
    }

    /// [`RunningIdgate::start_inbound_with_policy`] in front of the app at `upstream`.
    pub fn start_inbound_to(
        pki: &super::Pki,
        upstream: std::net::SocketAddr,
        policy: &str,
        extra: &str,
    ) -> Self {
        std::fs::write(pki.path("policy.toml"), policy).expect("write policy");
        let config = pki.path("idgate.toml");
        let toml = format!(
            "{}\n[[inbound]]\nname = \"api\"\nlisten = \"127.0.0.1:0\"\nupstream = \"http://{upstream}\"\npolicy = \"policy.toml\"\n[admin]\nlisten = \"127.0.0.1:0\"\n{extra}\n",
            pki.identity_toml("server", super::SERVER_ID),
        );
        std::fs::write(&config, toml).expect("write config");
        Self::start(&config)
    }

    /// Starts `idgate run --config CONFIG` with `RUST_LOG=info` and waits (up to 30 s) for
    /// its "idgate running" line.
    pub fn start(config: &Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_idgate"))
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn idgate");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = std::sync::mpsc::channel();
        let stalled = Arc::new(AtomicBool::new(false));
        let stop = stalled.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
                while stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        });
        let mut running = Self {
            child,
            lines,
            stalled,
            started: String::new(),
        };
        running.started = running
            .wait_for("idgate running", Duration::from_secs(30))
            .expect("idgate did not report it was running");
        running
    }

    /// Stops reading the process's stderr (after the line being read): once the pipe is
    /// full, its writes would block.
    pub fn stall_stderr(&self) {
        self.stalled.store(true, Ordering::Relaxed);
    }

    /// The next log line containing `needle`, if one comes within `timeout`.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> Option<String> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return Some(line),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }

    /// Sends `signal` (`TERM`, `HUP`, ...) with kill(1).
    pub fn signal(&self, signal: &str) {
        let sent = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -{signal} failed");
    }

    /// Waits for the process to exit.
    pub fn wait(&mut self) -> ExitStatus {
        self.child.wait().expect("wait for idgate")
    }

    /// The first address of `direction` (`inbound` or `outbound`) in the "idgate
    /// running" line.
    pub fn address(&self, direction: &str) -> SocketAddr {
        self.started
            .split(&format!("{direction}=["))
            .nth(1)
            .and_then(|rest| rest.split(']').next())
            .and_then(|addr| addr.parse().ok())
            .unwrap_or_else(|| panic!("no {direction} address in: {}", self.started))
    }

    /// The admin listener's address in the "idgate running" line.
    pub fn admin(&self) -> SocketAddr {
        self.started
            .split("admin=")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|addr| addr.parse().ok())
            .unwrap_or_else(|| panic!("no admin address in: {}", self.started))
    }

    /// The process ID (for reading /proc).
    pub fn id(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for RunningIdgate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

//! idgate sidecars as separate `idgate run` processes under their own uid, and the small
//! HTTP clients the SPIRE tests use (admin polls, fresh HTTP/2 connections, XFCC fields).
//!
//! Each process is killed when its handle drops; on a failing test its log is printed.

use std::fs;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use super::{eventually, free_addr, spawn_logged, tail, Spire, WhenShown};

/// An `idgate run` process under its own uid, with its admin address.
pub struct Idgate {
    child: Child,
    pub name: String,
    pub admin: SocketAddr,
    log: PathBuf,
}

impl Idgate {
    /// Writes a config (identity from `spire`'s agent with `expiry_margin = "1s"`, then
    /// `listeners`, admin on a free port) and runs `idgate run` as `uid`.
    pub fn spawn(
        spire: &Spire,
        name: &str,
        uid: u32,
        listeners: &str,
        files: &[(&str, &str)],
    ) -> Self {
        let dir = spire.workload_dir(name);
        for (file, text) in files {
            write_readable(&dir.join(file), text);
        }
        let admin = free_addr();
        let config = format!(
            "[identity]\nsource = \"spire\"\nsocket = \"{}\"\nexpiry_margin = \"1s\"\n\n{listeners}\n[admin]\nlisten = \"{admin}\"\n",
            spire.socket()
        );
        let path = dir.join("idgate.toml");
        write_readable(&path, &config);
        let log = dir.join("idgate.log");
        let mut command = Command::new(binary_for_any_uid());
        command
            .args(["run", "--config"])
            .arg(&path)
            .env("RUST_LOG", "info")
            .env_remove("SPIFFE_ENDPOINT_SOCKET")
            .uid(uid)
            .gid(uid);
        let child = spawn_logged(&mut command, &log);
        Self {
            child,
            name: name.to_string(),
            admin,
            log,
        }
    }

    /// `GET` on the admin endpoint: status and body, `None` while it does not answer.
    pub async fn admin_get(&self, path: &str) -> Option<(StatusCode, String)> {
        let reply = http1_once(self.admin, path).await.ok()?;
        Some((reply.0, String::from_utf8_lossy(&reply.1).into_owned()))
    }

    /// Waits until `/readyz` is 200 (an SVID from SPIRE arrived and every listener is bound).
    pub async fn ready(&self) {
        eventually(
            WhenShown(|| format!("{} ready; log:\n{}", self.name, self.log())),
            Duration::from_secs(60),
            || async {
                match self.admin_get("/readyz").await {
                    Some((StatusCode::OK, _)) => Some(()),
                    _ => None,
                }
            },
        )
        .await
    }

    /// `/identity` as JSON.
    pub async fn identity(&self) -> serde_json::Value {
        let (status, body) = self.admin_get("/identity").await.expect("admin answers");
        assert_eq!(status, StatusCode::OK, "{body}");
        serde_json::from_str(&body).expect("identity JSON")
    }

    /// The serial of the SVID in use now.
    pub async fn serial(&self) -> String {
        self.identity().await["serial"]
            .as_str()
            .expect("serial")
            .to_string()
    }

    /// One sample from `/metrics`.
    pub async fn metric(&self, name: &str) -> f64 {
        let (_, body) = self.admin_get("/metrics").await.expect("admin answers");
        body.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
            .unwrap_or_else(|| panic!("no {name} in /metrics"))
    }

    /// Everything the process logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log contains `text`.
    pub async fn logged(&self, text: &str, timeout: Duration) {
        eventually(
            WhenShown(|| format!("{:?} in {}'s log:\n{}", text, self.name, self.log())),
            timeout,
            || async { self.log().contains(text).then_some(()) },
        )
        .await
    }
}

impl Drop for Idgate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- {} log (tail)\n{}", self.name, tail(&self.log, 60));
        }
    }
}

fn write_readable(path: &Path, text: &str) {
    let mut file = fs::File::create(path).expect("create file");
    file.write_all(text.as_bytes()).expect("write file");
    fs::set_permissions(path, fs::Permissions::from_mode(0o644)).expect("chmod");
}

/// One HTTP/1.1 GET on a fresh connection: status and body.
pub async fn http1_once(addr: SocketAddr, path: &str) -> Result<(StatusCode, Bytes), String> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(conn);
    let request = Request::get(path)
        .header("host", addr.to_string())
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?;
    Ok((status, body.to_bytes()))
}

/// One request over a fresh HTTP/2 (prior knowledge) connection to `addr`: a TCP outbound
/// listener makes a new mTLS handshake for each. Returns status and the echo app's XFCC.
pub async fn h2_once(addr: SocketAddr, path: &str) -> Result<(StatusCode, Option<String>), String> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .map_err(|e| format!("h2 handshake: {e}"))?;
    tokio::spawn(conn);
    let request = Request::get(format!("http://{addr}{path}"))
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = response.status();
    let xfcc = echoed_xfcc(response.headers());
    response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?;
    Ok((status, xfcc))
}

/// The `x-forwarded-client-cert` the echo app received, from its `x-echo-request` report.
pub fn echoed_xfcc(headers: &http::HeaderMap) -> Option<String> {
    let report: serde_json::Value =
        serde_json::from_slice(headers.get("x-echo-request")?.as_bytes()).ok()?;
    report["headers"]["x-forwarded-client-cert"][0]
        .as_str()
        .map(str::to_string)
}

/// One field (`By`, `Hash`, `URI`) of an XFCC element.
pub fn xfcc_field<'a>(xfcc: &'a str, key: &str) -> Option<&'a str> {
    xfcc.split(';')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

/// A copy of the idgate binary that any uid may run. The build directory may sit under a
/// home directory other users cannot enter (CI builds in `/root/.cache/...`), and the
/// sidecars run under their own uids so SPIRE can tell them apart. One copy per build
/// (named by the binary's size and modification time), shared by every test process;
/// making one removes the copies of earlier builds (170 MB each), once they are an hour old.
fn binary_for_any_uid() -> &'static Path {
    static COPY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    COPY.get_or_init(|| {
        let binary = Path::new(env!("CARGO_BIN_EXE_idgate"));
        let meta = fs::metadata(binary).expect("the idgate binary");
        let built = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        let dir = std::env::temp_dir().join(format!("idgate-bin-{}-{built}", meta.len()));
        let copy = dir.join("idgate");
        if copy.exists() {
            return copy;
        }
        remove_stale_copies(&dir);
        fs::create_dir_all(&dir).expect("binary dir");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("chmod binary dir");
        // Copied under a name of its own, then renamed: test processes running at the same
        // time never exec a half-written file.
        let partial = dir.join(format!("idgate.{}", std::process::id()));
        fs::copy(binary, &partial).expect("copy the idgate binary");
        fs::set_permissions(&partial, fs::Permissions::from_mode(0o755)).expect("chmod idgate");
        fs::rename(&partial, &copy).expect("rename the idgate copy");
        copy
    })
}

/// Removes `idgate-bin-*` directories beside `current` last changed over an hour ago (no
/// test run takes that long, so none is still in use).
fn remove_stale_copies(current: &Path) {
    let Some(parent) = current.parent() else {
        return;
    };
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let ours = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("idgate-bin-"));
        let age = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok());
        if ours && path != current && age.is_some_and(|age| age > Duration::from_secs(3600)) {
            let _ = fs::remove_dir_all(&path);
        }
    }
}

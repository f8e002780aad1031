//! A real PostgreSQL server behind an inbound TCP listener, and `psql` through an outbound one.
//!
//! Needs Debian's `postgresql` package (`.ci/run` installs it); the server runs as the
//! `postgres` user in a temporary directory on a free loopback port.

mod support;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::Duration;

use support::*;

/// A throwaway PostgreSQL cluster, stopped on drop.
struct Postgres {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

fn pg_bin(tool: &str) -> PathBuf {
    let found = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is not installed: apt-get install postgresql (.ci/run does)")
        .filter_map(Result::ok)
        .map(|e| e.path().join("bin").join(tool))
        .find(|p| p.exists());
    found.unwrap_or_else(|| panic!("{tool} not found under /usr/lib/postgresql"))
}

fn postgres_ids() -> (u32, u32) {
    let out = Command::new("id")
        .args(["-u", "postgres"])
        .output()
        .expect("id");
    let uid = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("a postgres user");
    let out = Command::new("id")
        .args(["-g", "postgres"])
        .output()
        .expect("id");
    let gid = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("a postgres group");
    (uid, gid)
}

fn as_postgres(program: &Path) -> Command {
    let (uid, gid) = postgres_ids();
    let mut command = Command::new(program);
    command.uid(uid).gid(gid).env_clear().env("LANG", "C");
    command
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Postgres {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (uid, gid) = postgres_ids();
        std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
        let data = dir.path().join("data");
        let init = as_postgres(&pg_bin("initdb"))
            .args([
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
            ])
            .output()
            .unwrap();
        assert!(
            init.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&init.stderr)
        );
        let port = free_port();
        let log = dir.path().join("postgres.log");
        let log_file = std::fs::File::create(&log).unwrap();
        std::os::unix::fs::chown(&log, Some(uid), Some(gid)).unwrap();
        let child = as_postgres(&pg_bin("postgres"))
            .args([
                "-D",
                data.to_str().unwrap(),
                "-p",
                &port.to_string(),
                "-c",
                "listen_addresses=127.0.0.1",
            ])
            .args([
                "-c",
                &format!("unix_socket_directories={}", dir.path().display()),
            ])
            .args(["-c", "log_connections=on"])
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .unwrap();
        let pg = Self {
            child,
            port,
            log,
            _dir: dir,
        };
        for _ in 0..100 {
            if psql(pg.port, "select 1").status.success() {
                return pg;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "PostgreSQL did not start: {}",
            std::fs::read_to_string(&pg.log).unwrap_or_default()
        );
    }

    fn connections_received(&self) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .matches("connection received")
            .count()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn psql(port: u16, sql: &str) -> Output {
    Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "postgres",
            "-d",
            "postgres",
        ])
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .env("PGCONNECT_TIMEOUT", "5")
        .output()
        .expect("psql is installed")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_reaches_postgres_only_with_an_allowed_identity() {
    let pg = tokio::task::spawn_blocking(Postgres::start).await.unwrap();
    let policy = format!(
        "[[rule]]\nname = \"app-reads-db\"\naction = \"allow\"\nfrom = [\"{FRONTEND_ID}\"]\n"
    );
    let mesh = Mesh::start_tcp(&policy, &format!("tcp://127.0.0.1:{}", pg.port)).await;
    let allowed = mesh
        .client_with("frontend", FRONTEND_ID, &[SERVER_ID], "protocol = \"tcp\"")
        .await;
    let denied = mesh
        .client_with("reports", REPORTS_ID, &[SERVER_ID], "protocol = \"tcp\"")
        .await;

    let port = allowed.outbound().port();
    let out = tokio::task::spawn_blocking(move || psql(port, "select 6 * 7"))
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "psql through idgate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42");

    let before = pg.connections_received();
    let port = denied.outbound().port();
    let out = tokio::task::spawn_blocking(move || psql(port, "select 1"))
        .await
        .unwrap();
    assert!(
        !out.status.success(),
        "a denied identity must not reach the database"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        pg.connections_received(),
        before,
        "PostgreSQL must not see a denied connection"
    );

    let lines = mesh.server.decision_lines(2).await;
    assert!(lines.iter().any(|l| l["decision"] == "allow"
        && l["source"] == FRONTEND_ID
        && l["bytes_in"].as_u64() > Some(0)));
    assert!(lines
        .iter()
        .any(|l| l["decision"] == "deny" && l["source"] == REPORTS_ID && l["bytes_in"] == 0));
}

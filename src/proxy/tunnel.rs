//! Upgraded connections (WebSocket): the byte tunnel an accepted upgrade becomes.
//!
//! An HTTP/1.1 connection that upgrades leaves its HTTP server once the `101` is written,
//! but it is still the client's connection: the tunnel runs in that connection's own task
//! (held in a [`TunnelSlot`] until then), so it keeps the connection's place under
//! `max_connections` and ends at the connection's deadline (maximum age, peer certificate
//! expiry), as the connection would have, or at the upstream peer sidecar's certificate
//! expiry when that comes first; and once no byte has crossed it either way for the
//! listener's `body` timeout (as Envoy's stream idle timeout bounds an upgraded stream).
//! Never reads or judges what the tunnel carries.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use super::copy::{self, Ended};
use super::serve::{never_revoked, Revoked};

/// An accepted upgrade: both sides' upgraded connections (once hyper hands them over), and
/// what revokes it.
pub struct Tunnel {
    client: OnUpgrade,
    server: OnUpgrade,
    revoked: Revoked,
    /// The server side's own deadline (a peer sidecar's certificate expiry).
    server_close_at: Option<Instant>,
    /// Closed once no byte has crossed either way for this long (the listener's `body`).
    idle: Duration,
}

impl Tunnel {
    /// The tunnel between `client`'s and `server`'s upgraded connections, closed early when
    /// `revoked` (if any) completes, `server_close_at` (if any) passes or no byte crosses
    /// it for `idle`.
    pub fn new(
        client: OnUpgrade,
        server: OnUpgrade,
        revoked: Option<Revoked>,
        server_close_at: Option<Instant>,
        idle: Duration,
    ) -> Self {
        Self {
            client,
            server,
            revoked: revoked.unwrap_or_else(never_revoked),
            server_close_at,
            idle,
        }
    }

    /// Relays bytes between the two upgraded connections until both are done, `close_at`
    /// (the client connection's deadline) or the server side's deadline passes, no byte
    /// has crossed for its idle timeout, or the policy revokes the tunnel (a reload, or the
    /// expiry of the break-glass rule that allowed it).
    pub async fn run(self, close_at: Option<Instant>) {
        let Self {
            client,
            server,
            revoked,
            server_close_at,
            idle,
        } = self;
        let close_at = close_at.into_iter().chain(server_close_at).min();
        let relay = async {
            let (client, server) = match tokio::try_join!(client, server) {
                Ok(pair) => pair,
                Err(error) => {
                    tracing::debug!(%error, "upgrade did not complete");
                    return;
                }
            };
            let (mut client, mut server) = (TokioIo::new(client), TokioIo::new(server));
            let mut transfer = copy::BothWays::new(idle);
            let ended = transfer.run(&mut client, &mut server).await;
            let (up, down) = transfer.copied();
            match ended {
                Ok(Ended::Done) => tracing::debug!(up, down, "upgraded connection closed"),
                Ok(Ended::Idle) => tracing::info!(
                    up,
                    down,
                    "closing upgraded connection: no bytes either way for {idle:?} (timeouts.body)"
                ),
                Err(error) => tracing::debug!(%error, "upgraded connection ended with an error"),
            }
        };
        let deadline = async {
            match close_at {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = relay => {}
            reason = revoked => tracing::info!("closing upgraded connection: {reason}"),
            () = deadline => tracing::info!(
                "closing upgraded connection: maximum age or peer certificate expiry reached"
            ),
        }
    }
}

/// Where a connection's accepted upgrade waits until the connection's HTTP server has
/// handed the connection over (HTTP/1.1 upgrades at most once per connection).
#[derive(Default)]
pub struct TunnelSlot(Mutex<Option<Tunnel>>);

impl TunnelSlot {
    /// Keeps `tunnel` for the connection's task.
    pub fn put(&self, tunnel: Tunnel) {
        *self.lock() = Some(tunnel);
    }

    /// Runs the connection's tunnel, if it upgraded, until it ends or `close_at` passes:
    /// called by the connection's task once its HTTP server is done.
    pub async fn run(&self, close_at: Option<Instant>) {
        let tunnel = self.lock().take();
        if let Some(tunnel) = tunnel {
            // Boxed: the relay's state would otherwise size every connection's task.
            Box::pin(tunnel.run(close_at)).await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Tunnel>> {
        // Nothing panics while holding it; a poisoned lock still holds a whole value.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

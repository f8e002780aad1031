//! The outbound's remembered TLS sessions, per server name: the key-exchange hint, the
//! latest TLS 1.2 session and up to [`TICKETS_PER_SERVER`] TLS 1.3 tickets (rustls's own
//! cache keeps 8, so a burst of more new connections than that fell back to full
//! handshakes). It only stores; [`super::resumption`] decides how long sessions live.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard, PoisonError};

use rustls::client::{Tls12ClientSessionValue, Tls13ClientSessionValue};
use rustls::NamedGroup;
use rustls_pki_types::ServerName;

/// TLS 1.3 tickets kept per server: as many connections may open at once and all resume.
/// Each ticket is used once; an inbound gives one per connection, so an outbound holds
/// about as many as it ever opened at once (a ticket is about 2 KiB).
const TICKETS_PER_SERVER: usize = 32;

/// Server names remembered (an outbound dials one; the oldest is forgotten first).
const SERVERS: usize = 4;

/// Sessions by server name.
#[derive(Default)]
pub(super) struct ClientSessions {
    servers: Mutex<VecDeque<(ServerName<'static>, ServerSessions)>>,
}

/// What is remembered about one server.
#[derive(Default)]
pub(super) struct ServerSessions {
    pub kx_hint: Option<NamedGroup>,
    pub tls12: Option<Tls12ClientSessionValue>,
    /// Oldest first.
    pub tls13: VecDeque<Tls13ClientSessionValue>,
}

impl ClientSessions {
    /// Runs `f` on `name`'s sessions, remembering the server if it is new.
    pub fn update<R>(
        &self,
        name: ServerName<'static>,
        f: impl FnOnce(&mut ServerSessions) -> R,
    ) -> R {
        let mut servers = self.lock();
        let index = match servers.iter().position(|(known, _)| *known == name) {
            Some(index) => index,
            None => {
                if servers.len() == SERVERS {
                    servers.pop_front();
                }
                servers.push_back((name, ServerSessions::default()));
                servers.len() - 1
            }
        };
        f(&mut servers[index].1)
    }

    /// Runs `f` on `name`'s sessions if the server is known.
    pub fn with<R>(
        &self,
        name: &ServerName<'_>,
        f: impl FnOnce(&mut ServerSessions) -> R,
    ) -> Option<R> {
        let mut servers = self.lock();
        let (_, sessions) = servers.iter_mut().find(|(known, _)| known == name)?;
        Some(f(sessions))
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<(ServerName<'static>, ServerSessions)>> {
        // Sessions are only an optimisation: a panic elsewhere must not end them.
        self.servers.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl ServerSessions {
    /// Keeps a ticket, forgetting the oldest beyond [`TICKETS_PER_SERVER`].
    pub fn push_ticket(&mut self, ticket: Tls13ClientSessionValue) {
        if self.tls13.len() == TICKETS_PER_SERVER {
            self.tls13.pop_front();
        }
        self.tls13.push_back(ticket);
    }
}

//! Every session by client id: who holds it now, and the state of offline sessions.
//!
//! The registry's lock is a std `Mutex` taken only around map operations (no await):
//! connects, disconnects and expiry sweeps, never per message.

use super::{OutboxLimits, SessionCore, SessionState};
use crate::session::Outbox;
use crate::stats::Stats;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Sent to the connection that holds a session when a new connection claims its client id
/// [MQTT-3.1.4-3]: the old connection answers with the session state and closes.
pub struct TakeOver {
    pub reply: oneshot::Sender<SessionState>,
}

struct Owner {
    connection_id: u64,
    kick: oneshot::Sender<TakeOver>,
}

struct Entry {
    core: Arc<SessionCore>,
    parked: Option<SessionState>,
    owner: Option<Owner>,
    /// When an offline session expires.
    expires_at: Option<Instant>,
    /// The connection that attached last, to tell whether a client came back.
    last_connection_id: u64,
}

/// What became of a session when its connection ended.
pub enum Detached {
    /// Kept for its expiry interval.
    Parked,
    /// Ended with the connection; the router must remove its subscriptions.
    Removed(Arc<SessionCore>, SessionState),
    /// Another connection took the session over meanwhile: the state goes to it.
    NotOwner(SessionState),
}

/// How a connection obtains its session.
pub enum Attached {
    /// The state is here; `present` tells CONNACK's Session Present [MQTT-3.2.2-2].
    Ready {
        core: Arc<SessionCore>,
        state: SessionState,
        present: bool,
        /// Subscriptions of a discarded session, for the router to remove.
        discarded: Option<Box<(Arc<SessionCore>, SessionState)>>,
    },
    /// Another connection holds the session; its state arrives on `state` once it closed.
    TakingOver {
        core: Arc<SessionCore>,
        state: oneshot::Receiver<SessionState>,
        clean_start: bool,
    },
}

pub struct Registry {
    sessions: Mutex<HashMap<Arc<str>, Entry>>,
    next_session_id: AtomicU64,
    stats: Arc<Stats>,
    events: crate::events::Events,
}

impl Registry {
    pub fn new(stats: Arc<Stats>, events: crate::events::Events) -> Registry {
        Registry {
            sessions: Mutex::new(HashMap::new()),
            next_session_id: AtomicU64::new(1),
            stats,
            events,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Entry>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn new_core(&self, client_id: Arc<str>, limits: OutboxLimits) -> Arc<SessionCore> {
        Arc::new(SessionCore {
            id: self.next_session_id.fetch_add(1, Ordering::Relaxed),
            outbox: Outbox::new(
                limits,
                self.stats.clone(),
                self.events.clone(),
                client_id.clone(),
            ),
            client_id,
        })
    }

    /// Claims the session of `client_id` for a new connection. With `clean_start` any
    /// existing session is discarded [MQTT-3.1.2-4]; otherwise it is resumed.
    pub fn attach(
        &self,
        client_id: Arc<str>,
        clean_start: bool,
        connection_id: u64,
        kick: oneshot::Sender<TakeOver>,
        limits: OutboxLimits,
    ) -> Attached {
        let mut sessions = self.lock();
        let owner = Owner {
            connection_id,
            kick,
        };
        if let Some(entry) = sessions.get_mut(&client_id) {
            entry.last_connection_id = connection_id;
            if let Some(previous) = entry.owner.replace(owner) {
                let (reply, state) = oneshot::channel();
                // If the old connection is already gone its state was parked (or the
                // send fails and the caller falls back to the parked state).
                let _ = previous.kick.send(TakeOver { reply });
                return Attached::TakingOver {
                    core: entry.core.clone(),
                    state,
                    clean_start,
                };
            }
            entry.expires_at = None;
            let parked = entry.parked.take().unwrap_or_default();
            if clean_start {
                let old_core = entry.core.clone();
                let core = self.new_core(client_id, limits);
                entry.core = core.clone();
                return Attached::Ready {
                    core,
                    state: SessionState::default(),
                    present: false,
                    discarded: Some(Box::new((old_core, parked))),
                };
            }
            return Attached::Ready {
                core: entry.core.clone(),
                state: parked,
                present: true,
                discarded: None,
            };
        }
        let core = self.new_core(client_id.clone(), limits);
        sessions.insert(
            client_id,
            Entry {
                core: core.clone(),
                parked: None,
                owner: Some(owner),
                expires_at: None,
                last_connection_id: connection_id,
            },
        );
        Stats::add(&self.stats.sessions, 1);
        Attached::Ready {
            core,
            state: SessionState::default(),
            present: false,
            discarded: None,
        }
    }

    /// Puts back a session recovered from storage, offline, expiring after `expires_in`
    /// (`None`: never).
    pub fn restore(
        &self,
        client_id: Arc<str>,
        state: SessionState,
        expires_in: Option<Duration>,
        limits: OutboxLimits,
    ) -> Arc<SessionCore> {
        let core = self.new_core(client_id.clone(), limits);
        core.outbox.set_online(false);
        let entry = Entry {
            core: core.clone(),
            parked: Some(state),
            owner: None,
            expires_at: expires_in.and_then(|d| Instant::now().checked_add(d)),
            last_connection_id: 0,
        };
        if self.lock().insert(client_id, entry).is_none() {
            Stats::add(&self.stats.sessions, 1);
        }
        core
    }

    /// Takes the parked state of a session whose previous connection did not answer a
    /// take-over (it had already ended).
    pub fn take_parked(&self, client_id: &str) -> Option<SessionState> {
        self.lock().get_mut(client_id)?.parked.take()
    }

    /// Replaces the core of a session (clean start after a take-over).
    pub fn replace_core(&self, client_id: &str, core: Arc<SessionCore>) {
        if let Some(entry) = self.lock().get_mut(client_id) {
            entry.core = core;
        }
    }

    /// A connection ended. If it still holds the session, the session is parked for
    /// `expiry` or, with zero expiry, removed and returned so that the router drops its
    /// subscriptions. A connection that was taken over gets its state back, to hand to the
    /// new connection.
    pub fn detach(
        &self,
        client_id: &str,
        connection_id: u64,
        state: SessionState,
        expiry: Duration,
    ) -> Detached {
        let mut sessions = self.lock();
        let Some(entry) = sessions.get_mut(client_id) else {
            return Detached::NotOwner(state);
        };
        if entry.owner.as_ref().map(|o| o.connection_id) != Some(connection_id) {
            return Detached::NotOwner(state);
        }
        entry.owner = None;
        if expiry.is_zero() {
            if let Some(entry) = sessions.remove(client_id) {
                self.stats.sessions.fetch_sub(1, Ordering::Relaxed);
                return Detached::Removed(entry.core, state);
            }
            return Detached::Parked;
        }
        entry.expires_at = Instant::now().checked_add(expiry);
        entry.parked = Some(state);
        Detached::Parked
    }

    /// Removes offline sessions whose expiry has passed; returns them for the router.
    pub fn expire(&self, now: Instant) -> Vec<(Arc<SessionCore>, SessionState)> {
        let mut sessions = self.lock();
        let expired: Vec<Arc<str>> = sessions
            .iter()
            .filter(|(_, e)| e.owner.is_none() && e.expires_at.is_some_and(|at| at <= now))
            .map(|(id, _)| id.clone())
            .collect();
        expired
            .into_iter()
            .filter_map(|id| sessions.remove(&id))
            .map(|entry| {
                self.stats.sessions.fetch_sub(1, Ordering::Relaxed);
                (entry.core, entry.parked.unwrap_or_default())
            })
            .collect()
    }

    /// Whether a connection other than `connection_id` attached to this client id since
    /// (a reconnect cancels a delayed will [MQTT-3.1.3-9]).
    pub fn reconnected_since(&self, client_id: &str, connection_id: u64) -> bool {
        self.lock()
            .get(client_id)
            .is_some_and(|e| e.last_connection_id != connection_id)
    }

    /// Runs `f` on the parked state of a session nobody reconnected to since connection
    /// `connection_id` (0: since the start); `None` if there is no such state.
    pub fn with_parked<R>(
        &self,
        client_id: &str,
        connection_id: u64,
        f: impl FnOnce(&mut SessionState) -> R,
    ) -> Option<R> {
        let mut sessions = self.lock();
        let entry = sessions.get_mut(client_id)?;
        if entry.last_connection_id != connection_id {
            return None;
        }
        entry.parked.as_mut().map(f)
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// New queue limits for every session, online or offline (a reload); a queue over
    /// a lowered limit takes no more until it is below it (`drop_oldest`: its oldest
    /// go first).
    pub fn set_limits_all(&self, limits: OutboxLimits) {
        for entry in self.lock().values() {
            entry.core.outbox.set_limits(limits);
        }
    }

    /// Messages queued in memory across all sessions (the outboxes' mirrored counts: no
    /// outbox lock taken), for `/metrics`.
    pub fn queued_messages(&self) -> u64 {
        self.lock()
            .values()
            .map(|e| e.core.outbox.queued() as u64)
            .sum()
    }
}
